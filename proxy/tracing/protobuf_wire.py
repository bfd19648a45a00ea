"""The protobuf wire format, the few pieces an OTLP export needs: varints, length-delimited
fields (strings, bytes, embedded messages), fixed32 and fixed64. Messages are built
innermost first as bytes and embedded whole, so no sizes are computed twice.

Why by hand: an OTLP trace request is a handful of fixed message shapes; encoding them here
keeps the `protobuf` package (and its C extension, which may take the GIL on 3.14t) off the
export path, and adds no dependency. Tests decode what this writes with the
`opentelemetry-proto` package's classes (an independent implementation).

Must not: do I/O or keep state.
"""

from __future__ import annotations

__all__ = ["varint", "tag", "length_delimited", "string", "fixed32", "fixed64", "uint"]

_SMALL = [bytes([i]) for i in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def length_delimited(field: int, data: bytes) -> bytes:
    """A bytes, string or embedded-message field (wire type 2)."""
    return varint(field << 3 | 2) + varint(len(data)) + data


def string(field: int, text: str) -> bytes:
    """A string field; empty strings are proto3 defaults and are not written."""
    if not text:
        return b""
    return length_delimited(field, text.encode("utf-8", "replace"))


def uint(field: int, n: int) -> bytes:
    """A varint field (uint32/uint64/enum); 0 is not written."""
    return varint(field << 3) + varint(n) if n else b""


def fixed32(field: int, n: int) -> bytes:
    return varint(field << 3 | 5) + n.to_bytes(4, "little")


def fixed64(field: int, n: int) -> bytes:
    return varint(field << 3 | 1) + n.to_bytes(8, "little")
