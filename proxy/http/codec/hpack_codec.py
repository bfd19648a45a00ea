"""HPACK (RFC 7541) for ftproxy's HTTP/2 connections: a decoder and an encoder with the
interface h2 uses of the `hpack` library's (`decode(data, raw=True)`, `encode(headers)`,
`header_table_size`, `max_header_list_size`, `max_allowed_table_size`), at a fraction of its
cost per header block. `hpack` stays the reference: its static table and Huffman code are used
here (one copy of the tables), its exception classes are raised (h2 turns them into
COMPRESSION_ERROR), and tests/unit/test_hpack_codec.py checks both directions against it.

Decoder: the whole of RFC 7541 (indexed fields, literals with, without and never indexing,
Huffman strings, dynamic table with eviction, size updates only at a block's start and within
`max_allowed_table_size`, `max_header_list_size` counted as hpack counts it).

Encoder: it never adds to the dynamic table, so the peer's stays empty and a field's bytes
do not depend on the connection's history: a field of the static table is one byte; any other
is a literal without indexing (never indexed for hpack's NeverIndexedHeaderTuple), its name by
static index when the table has it, strings raw (no Huffman). The name part of each literal is
kept in a per-process cache (names only: values, which may be secrets, are never kept
there); whole encoded fields in the encoder's own cache (per connection, bounded). A
SETTINGS_HEADER_TABLE_SIZE from the peer below the current size is announced with a dynamic
table size update at the start of the next block (RFC 7541 §4.2; nghttp2 requires it).

Pure: no I/O. Thread affinity: each object is one connection's (its worker's). The name cache
is shared: it maps a name to immutable bytes; two threads filling it at once write equal values.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError,
                              OversizedHeaderListError)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["Decoder", "Encoder", "install"]

_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)                     # 61
_DEFAULT_TABLE_SIZE = 4096
_DEFAULT_MAX_HEADER_LIST_SIZE = 2 ** 16        # hpack's default
_VARINT_MAX_BYTES = 10                         # past this an integer is refused (as hpack)


def _encode_int(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` with an N-bit prefix, `first` holding the byte's high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint(data: bytes, i: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an integer whose prefix was all ones (`value`), from data[i]:
    (the integer, the index after it)."""
    shift = 0
    start = i
    try:
        while True:
            b = data[i]
            i += 1
            value += (b & 0x7F) << shift
            if b < 128:
                return value, i
            shift += 7
            if i - start >= _VARINT_MAX_BYTES:
                raise HPACKDecodingError("Variable integer representation is too long")
    except IndexError:
        raise HPACKDecodingError("Unable to decode HPACK integer representation") from None


class Decoder:
    __slots__ = ("dynamic", "table_bytes", "max_table_bytes", "max_header_list_size",
                 "max_allowed_table_size")

    def __init__(self, max_header_list_size: int = _DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self.dynamic: deque[tuple[bytes, bytes]] = deque()   # newest first (index 62)
        self.table_bytes = 0                   # RFC 7541 §4.1 sizes of the entries held
        self.max_table_bytes = _DEFAULT_TABLE_SIZE
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = _DEFAULT_TABLE_SIZE   # our acknowledged SETTINGS value

    @property
    def header_table_size(self) -> int:
        return self.max_table_bytes

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.max_table_bytes = value
        self._evict()

    def _evict(self) -> None:
        dynamic = self.dynamic
        while self.table_bytes > self.max_table_bytes and dynamic:
            n, v = dynamic.pop()
            self.table_bytes -= 32 + len(n) + len(v)

    def _add(self, name: bytes, value: bytes) -> None:
        size = 32 + len(name) + len(value)
        if size > self.max_table_bytes:   # larger than the table: it empties the table
            self.dynamic.clear()
            self.table_bytes = 0
            return
        self.dynamic.appendleft((name, value))
        self.table_bytes += size
        self._evict()

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        j = index - _STATIC_LEN - 1
        if 0 <= j < len(self.dynamic):
            return self.dynamic[j]
        raise InvalidTableIndex(f"Invalid table index {index}")

    def decode(self, data: bytes, raw: bool = False) -> list[Any]:
        headers: list[Any] = []
        append = headers.append
        end = len(data)
        i = 0
        inflated = 0
        limit = self.max_header_list_size
        while i < end:
            b = data[i]
            i += 1
            if b & 0x80:                                   # indexed field
                index = b & 0x7F
                if index == 0x7F:
                    index, i = _varint(data, i, index)
                field = _STATIC[index - 1] if 0 < index <= _STATIC_LEN else self._entry(index)
                append(field)
            elif b & 0x40 or not b & 0x20:                 # a literal
                if b & 0x40:
                    index, indexing, never = b & 0x3F, True, False
                    if index == 0x3F:
                        index, i = _varint(data, i, index)
                else:
                    index, indexing, never = b & 0x0F, False, bool(b & 0x10)
                    if index == 0x0F:
                        index, i = _varint(data, i, index)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, i = self._string(data, i, end)
                value, i = self._string(data, i, end)
                if indexing:
                    self._add(name, value)
                field = NeverIndexedHeaderTuple(name, value) if never else (name, value)
                append(field)
            else:                                          # dynamic table size update
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size = b & 0x1F
                if size == 0x1F:
                    size, i = _varint(data, i, size)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            inflated += 32 + len(field[0]) + len(field[1])
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        if self.max_table_bytes > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [HeaderTuple(n.decode("utf-8"), v.decode("utf-8")) for n, v in headers]
        except UnicodeDecodeError as e:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from e

    @staticmethod
    def _string(data: bytes, i: int, end: int) -> tuple[bytes, int]:
        if i >= end:
            raise HPACKDecodingError("Truncated header block")
        b = data[i]
        length = b & 0x7F
        i += 1
        if length == 0x7F:
            length, i = _varint(data, i, length)
        s = data[i:i + length]
        if len(s) != length:
            raise HPACKDecodingError("Truncated header block")
        i += length
        if b & 0x80:
            s = decode_huffman(s)
        return s, i


def _static_maps() -> tuple[dict[tuple[bytes, bytes], bytes], dict[bytes, int]]:
    full: dict[tuple[bytes, bytes], bytes] = {}
    names: dict[bytes, int] = {}
    for index, (n, v) in enumerate(_STATIC, 1):
        full.setdefault((n, v), _encode_int(index, 7, 0x80))
        names.setdefault(n, index)
    return full, names


_STATIC_FULL, _STATIC_NAME = _static_maps()
_NAME_CACHE: dict[tuple[bytes, bool], bytes] = {}   # (name, never indexed) -> literal's start
_NAME_CACHE_MAX = 4096


def _name_part(name: bytes, never: bool) -> bytes:
    first = 0x10 if never else 0x00
    index = _STATIC_NAME.get(name)
    if index is not None:
        part = _encode_int(index, 4, first)
    else:
        part = bytes((first,)) + _encode_int(len(name), 7, 0) + name
    if len(_NAME_CACHE) >= _NAME_CACHE_MAX:
        _NAME_CACHE.clear()
    _NAME_CACHE[(name, never)] = part
    return part


_FIELD_CACHE_MAX = 256


class Encoder:
    __slots__ = ("max_table_bytes", "pending_sizes", "fields")

    def __init__(self) -> None:
        self.max_table_bytes = _DEFAULT_TABLE_SIZE
        self.pending_sizes: list[int] = []   # size updates owed at the next block's start
        # This connection's encoded fields (plain bytes tuples, not never-indexed ones): a
        # field's bytes never depend on the history, so a field sent again is one lookup.
        # The connection's own, bounded, as an HPACK dynamic table would be.
        self.fields: dict[tuple[bytes, bytes], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self.max_table_bytes

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value != self.max_table_bytes:
            self.max_table_bytes = value
            self.pending_sizes.append(value)

    def encode(self, headers, huffman: bool = True) -> bytes:
        out: list[bytes] = []
        if self.pending_sizes:
            # The smallest size since the last block, then the final one (RFC 7541 §4.2).
            sizes = self.pending_sizes
            low, last = min(sizes), sizes[-1]
            out.extend(_encode_int(s, 5, 0x20) for s in ((low, last) if low < last else (last,)))
            self.pending_sizes = []
        full = _STATIC_FULL
        cache = _NAME_CACHE
        known = self.fields
        append = out.append
        for h in headers:
            if type(h) is tuple:
                one = known.get(h)
                if one is not None:
                    append(one)
                    continue
            name, value = h[0], h[1]
            if type(name) is not bytes:
                name = bytes(name, "utf-8") if isinstance(name, str) else bytes(name)
            if type(value) is not bytes:
                value = bytes(value, "utf-8") if isinstance(value, str) else bytes(value)
            never = isinstance(h, NeverIndexedHeaderTuple)
            if not never:
                one = full.get((name, value))
                if one is not None:
                    append(one)
                    continue
            part = cache.get((name, never))
            if part is None:
                part = _name_part(name, never)
            n = len(value)
            one = part + (bytes((n,)) if n < 0x7F else _encode_int(n, 7, 0)) + value
            append(one)
            if type(h) is tuple and type(h[0]) is bytes and type(h[1]) is bytes:
                if len(known) >= _FIELD_CACHE_MAX:
                    known.clear()
                known[h] = one
        return b"".join(out)


def install(conn) -> None:
    """Give an h2 `H2Connection` these codecs in place of hpack's, with the limits it set."""
    old = conn.decoder
    decoder = Decoder(old.max_header_list_size)
    decoder.max_allowed_table_size = old.max_allowed_table_size
    decoder.header_table_size = old.header_table_size
    conn.decoder = decoder
    encoder = Encoder()
    encoder.max_table_bytes = conn.encoder.header_table_size
    conn.encoder = encoder
