"""The mux wire format: frames of `kind (1 byte) | stream id (u32) | length (u32) | payload`.

Kinds: HEADERS / HEADERS_END (headers; _END: the sender's side of the stream ends with them),
DATA / DATA_END, TRAILERS (ends the sender's side), RESET (the stream is abandoned; payload: a
reason), GOAWAY (stream id 0: no new streams). A header block is `name: value\\n` lines;
requests carry `:method`, `:path`, `:authority`, responses `:status`.
"""

from __future__ import annotations

import struct

HEADERS, HEADERS_END, DATA, DATA_END, TRAILERS, RESET, GOAWAY = (
    b"H", b"h", b"D", b"d", b"T", b"R", b"G")
_HEAD = struct.Struct("!cII")


def frame(kind: bytes, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, stream_id, len(payload)) + payload


def header_block(fields) -> bytes:
    return b"".join(n + b": " + v + b"\n" for n, v in fields)


def parse_block(payload: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in payload.split(b"\n"):
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return out


class FrameReader:
    """Bytes in, whole frames out: (kind, stream id, payload)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes, int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= _HEAD.size:
            kind, sid, n = _HEAD.unpack_from(self.buf)
            if len(self.buf) < _HEAD.size + n:
                break
            out.append((kind, sid, self.buf[_HEAD.size:_HEAD.size + n]))
            self.buf = self.buf[_HEAD.size + n:]
        return out
