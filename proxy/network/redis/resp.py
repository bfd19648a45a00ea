"""RESP2 (the Redis serialization protocol): values, an incremental decoder, an encoder.

Job: bytes in, values out, and back; no I/O. Values are Python objects:
bulk string `bytes`, simple string `SimpleString`, error `Error` (both `bytes` subclasses),
integer `int`, null `None` (a null bulk string `$-1` and a null array `*-1` both decode to it
and encode as `$-1`, as Envoy's codec does), array `list`.

The decoder takes a connection's reads as they come (a value may span any number of reads)
and calls back once per complete top-level value, in order. With `inline=True` (the downstream
side) a top-level value that does not start with a RESP type byte is an inline command: one
line up to CRLF, split as redis-server's sdssplitargs does (blanks separate; "double quoted"
with \\n \\r \\t \\b \\a \\\\ \\" \\xHH escapes; 'single quoted' with \\'), decoded to an array of
bulk strings. Anything malformed raises `ProtocolError`; the values before it in the same
read have been delivered.

Limits (the threat: a peer announcing sizes it never sends, or lines without end):
bulk strings up to 512 MiB and arrays up to 2,000,000 elements, as Envoy 1.40 accepts (one
more is a protocol error); simple strings, errors, integers and inline commands up to 1 MiB
per line (Envoy has no bound: a line it would keep waiting for is an error here); arrays
nested at most 64 deep.

Must not: do I/O or know about commands. Thread affinity: a decoder belongs to the connection
that feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SimpleString", "Error", "ProtocolError", "Decoder", "encode", "encode_request",
           "MAX_BULK", "MAX_ARRAY", "MAX_LINE", "MAX_DEPTH"]

MAX_BULK = 512 * 1024 * 1024
MAX_ARRAY = 2_000_000
MAX_LINE = 1024 * 1024
MAX_DEPTH = 64

_INTEGER = re.compile(rb"-?[0-9]+\Z")
_TYPES = frozenset(b"*$+-:")
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BLANKS = frozenset(b" \n\r\t\v\f\0")


class SimpleString(bytes):
    """A `+...` value."""
    __slots__ = ()


class Error(bytes):
    """A `-...` value."""
    __slots__ = ()


class ProtocolError(Exception):
    """The peer sent bytes that are not RESP (or exceed a limit)."""


class Decoder:
    """Incremental RESP decoder; `feed(data)` calls `on_value` for each complete value."""

    __slots__ = ("on_value", "inline", "_buf", "_stack", "_bulk")

    def __init__(self, on_value: Callable[[object], None], inline: bool = False) -> None:
        self.on_value = on_value
        self.inline = inline
        self._buf = bytearray()
        self._stack: list[list] = []   # open arrays: [items, expected count]
        self._bulk = -1                # a bulk string's announced length, its body pending

    @property
    def idle(self) -> bool:
        """Nothing partly received."""
        return not self._buf and not self._stack and self._bulk < 0

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while True:
                if self._bulk >= 0:
                    n = self._bulk
                    if len(buf) - pos < n + 2:
                        break
                    if buf[pos + n:pos + n + 2] != b"\r\n":
                        raise ProtocolError("expected CRLF after a bulk string")
                    value = bytes(buf[pos:pos + n])
                    pos += n + 2
                    self._bulk = -1
                    self._complete(value)
                    continue
                if pos >= len(buf):
                    break
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_LINE:
                        raise ProtocolError("line too long")
                    break
                if end - pos > MAX_LINE:
                    raise ProtocolError("line too long")
                kind = buf[pos]
                if kind == 42 and not self._stack:   # *: a whole array of bulk strings, at once
                    done = _bulk_array(buf, pos, end)
                    if done is not None:
                        pos = done[1]
                        self.on_value(done[0])
                        continue
                if kind not in _TYPES:
                    if not self.inline or self._stack:
                        raise ProtocolError("invalid value type")
                    args = split_inline(bytes(buf[pos:end]))
                    pos = end + 2
                    self._complete(args)
                    continue
                line = bytes(buf[pos + 1:end])
                pos = end + 2
                if kind == 43 or kind == 45:  # + -
                    if b"\r" in line:
                        raise ProtocolError("expected new line")
                    self._complete(SimpleString(line) if kind == 43 else Error(line))
                    continue
                if not _INTEGER.match(line):
                    raise ProtocolError("invalid integer")
                n = int(line)
                if kind == 58:   # :
                    self._complete(n)
                elif kind == 36:  # $
                    if n < 0:
                        if n != -1:
                            raise ProtocolError("invalid bulk string length")
                        self._complete(None)
                    elif n > MAX_BULK:
                        raise ProtocolError("bulk string too long")
                    else:
                        self._bulk = n
                else:            # *
                    if n < 0:
                        if n != -1:
                            raise ProtocolError("invalid array length")
                        self._complete(None)
                    elif n == 0:
                        self._complete([])
                    elif n > MAX_ARRAY:
                        raise ProtocolError("array too long")
                    elif len(self._stack) >= MAX_DEPTH:
                        raise ProtocolError("arrays nested too deep")
                    else:
                        self._stack.append([[], n])
        finally:
            del buf[:pos]

    def _complete(self, value: object) -> None:
        stack = self._stack
        while stack:
            top = stack[-1]
            top[0].append(value)
            if len(top[0]) < top[1]:
                return
            stack.pop()
            value = top[0]
        self.on_value(value)


def _bulk_array(buf: bytearray, pos: int, end: int) -> tuple[list, int] | None:
    """The common case in one pass: a complete array of bulk strings (a command) at `pos`,
    its header ending at `end`; None (nothing consumed) when it is anything else, malformed
    or not all there yet: the general path then decodes it, byte for byte the same."""
    line = buf[pos + 1:end]
    if not line.isdigit():
        return None
    n = int(line)
    if n == 0 or n > MAX_ARRAY:
        return None
    items = []
    append = items.append
    i = end + 2
    size = len(buf)
    for _ in range(n):
        if i >= size or buf[i] != 36:   # $
            return None
        e = buf.find(b"\r\n", i)
        if e < 0:
            return None
        digits = buf[i + 1:e]
        if not digits.isdigit():
            return None
        length = int(digits)
        start = e + 2
        stop = start + length
        if length > MAX_BULK or stop + 2 > size or buf[stop] != 13 or buf[stop + 1] != 10:
            return None
        append(bytes(buf[start:stop]))
        i = stop + 2
    return items, i


def split_inline(line: bytes) -> list[bytes]:
    """An inline command's arguments, split as redis-server's sdssplitargs does."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in inline command")
                c = line[i]
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur += _ESCAPES.get(line[i], bytes((line[i],)))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        raise ProtocolError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in inline command")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        raise ProtocolError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _BLANKS:
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


def encode(value: object, out: list) -> None:
    """Append `value`'s RESP bytes to `out` (a list of bytes pieces)."""
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n" % len(value))
        out.append(value)
        out.append(b"\r\n")
    elif t is SimpleString:
        out.append(b"+" + value + b"\r\n")
    elif t is Error:
        out.append(b"-" + value + b"\r\n")
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif value is None:
        out.append(b"$-1\r\n")
    elif t is list:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            encode(item, out)
    else:
        raise TypeError(f"not a RESP value: {t.__name__}")


def encode_request(args: list[bytes]) -> bytes:
    """A command as an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
