"""The protobuf wire format, the few pieces ftproxy's hand-written messages need (the OTLP
span export, ext_authz's CheckRequest/CheckResponse): writing varints, length-delimited fields
(strings, bytes, embedded messages), fixed32 and fixed64, and reading a message's fields.
Messages are built innermost first as bytes and embedded whole, so no sizes are computed twice.

Why by hand: those are a handful of fixed message shapes; encoding them here keeps the
`protobuf` package off the request and export paths (its upb backend takes the GIL on 3.14t,
its pure-Python one costs ~6x the bytecodes). Tests decode what this writes with protobuf's
generated classes (an independent implementation).

Must not: do I/O or keep state.
"""

from __future__ import annotations

__all__ = ["varint", "tag", "length_delimited", "string", "fixed32", "fixed64", "uint",
           "read_varint", "read_fields"]

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


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at `data[i:]` and the index after it."""
    b = data[i]
    if b < 0x80:
        return b, i + 1
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def read_fields(data: bytes) -> dict[int, list]:
    """One message's fields by number: varints as ints, length-delimited ones as bytes
    (fixed-width fields are skipped). ValueError on a malformed message."""
    out: dict[int, list] = {}
    i, n = 0, len(data)
    while i < n:
        key, i = read_varint(data, i)
        kind = key & 7
        if kind == 2:
            length, i = read_varint(data, i)
            end = i + length
            if end > n:
                raise ValueError("truncated field")
            value = data[i:end]
            i = end
        elif kind == 0:
            value, i = read_varint(data, i)
        elif kind == 1 or kind == 5:
            i += 8 if kind == 1 else 4
            continue
        else:
            raise ValueError(f"wire type {kind}")
        out.setdefault(key >> 3, []).append(value)
    if i != n:
        raise ValueError("truncated message")
    return out
