"""The gRPC-Web wire format (grpc/doc/PROTOCOL-WEB.md) as Envoy 1.40's grpc_web filter speaks it,
without I/O: what the filter (proxy/http/filters/grpc_web.py) needs to turn gRPC-Web into gRPC
and back.

- `REQUEST_TYPES` / `TEXT_TYPES`: the content-types that make a request gRPC-Web (exact,
  case-sensitive, no parameters: Envoy's set), and the base64 ("text") ones.
- `decode_base64(data)`: Envoy's Base64::decode, strict: the length a multiple of 4, at most
  two '=' and only at the end, no character outside the alphabet, and the bits the padding
  leaves over all zero ("QR==" is refused). None where Envoy's gives "" (an error).
- `TextRequestDecoder`: a base64 request body cut anywhere (HTTP/1.1 reads, HTTP/2 DATA
  frames): each call decodes every whole group of 4 characters it has and keeps the rest;
  the end of the stream with a partial group, or a group that does not decode, is
  `BadBase64` (Envoy answers 400; `details` is its response code detail).
- `TextResponseEncoder`: the response's gRPC messages, each re-encoded in base64 on its own
  (its 5-byte prefix included) once it is whole, as Envoy's filter does with Grpc::Decoder.
- `trailer_frame(trailers)`: the trailers as a body frame: flag 0x80, the big-endian length,
  then `name:value\r\n` per field in order.
- `percent_encode(message)`: Envoy's PercentEncoding::encode for grpc-message (bytes below
  0x20, from 0x7e up, and '%' as %XX, upper-case).

Thread affinity: none (pure functions; a decoder/encoder object belongs to one stream).
"""

from __future__ import annotations

import binascii
import re

__all__ = ["REQUEST_TYPES", "TEXT_TYPES", "GRPC_WEB_PROTO", "GRPC_WEB_TEXT_PROTO", "TRAILER_FLAG",
           "BadBase64", "decode_base64", "TextRequestDecoder", "TextResponseEncoder",
           "trailer_frame", "percent_encode", "BAD_SIZE", "BAD_DATA"]

GRPC_WEB = b"application/grpc-web"
GRPC_WEB_PROTO = b"application/grpc-web+proto"
GRPC_WEB_TEXT = b"application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = b"application/grpc-web-text+proto"
REQUEST_TYPES = frozenset((GRPC_WEB, GRPC_WEB_PROTO, GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO))
TEXT_TYPES = frozenset((GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO))
TRAILER_FLAG = 0x80
_COMPRESSED = 0x01  # the one flag a gRPC message may carry (Grpc::Decoder refuses others)

# Envoy's response code details for a request body that is not base64.
BAD_SIZE = "grpc_base_64_decode_failed_bad_size"
BAD_DATA = "grpc_base_64_decode_failed"

_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*")
_VALUE = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


class BadBase64(Exception):
    """A gRPC-Web-text request body that is not base64; `details` says how (Envoy's words)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


def decode_base64(data: bytes) -> bytes | None:
    """Envoy's Base64::decode (strict); None for what it refuses (it returns "")."""
    if not data or len(data) % 4:
        return None
    n = len(data)
    if data[n - 1] == 0x3D:  # '='
        n -= 1
        if data[n - 1] == 0x3D:
            n -= 1
    if n % 4 == 1 or _ALPHABET.fullmatch(data, 0, n) is None:
        return None
    left = n % 4
    if left:  # the last character's bits past the last whole byte must be zero
        last = _VALUE[data[n - 1]]
        if (left == 2 and last & 0x0F) or (left == 3 and last & 0x03):
            return None
    return binascii.a2b_base64(data)


class TextRequestDecoder:
    """Envoy's decodeData for application/grpc-web-text: base64 in, bytes out."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""  # fewer than 4 characters, or the tail of a cut group

    def feed(self, data: bytes, end_stream: bool) -> bytes | None:
        """The decoded bytes to pass on (b"" at an empty end), or None: nothing yet (the
        characters wait for their group). Raises BadBase64."""
        pending = self.pending
        available = len(pending) + len(data)
        if end_stream:
            if available == 0:
                return data
            if available % 4:
                raise BadBase64(BAD_SIZE)  # (padding is mandatory)
        elif available < 4:
            self.pending = pending + data
            return None
        buf = pending + data if pending else data
        cut = available - available % 4
        decoded = decode_base64(buf[:cut] if cut != available else buf)
        if decoded is None:
            raise BadBase64(BAD_DATA)
        self.pending = buf[cut:]
        return decoded


class TextResponseEncoder:
    """Envoy's encodeData for a client that asked for base64 (accept: grpc-web-text): each
    whole gRPC message re-encoded on its own. A message flagged other than 0/1 stops Envoy's
    Grpc::Decoder without consuming the chunk: the chunk then goes on as it came, followed by
    the messages decoded before it (nothing, if there were none) — kept as Envoy does it."""

    __slots__ = ("partial",)

    def __init__(self) -> None:
        self.partial = b""  # the start of a message not yet whole

    def feed(self, data: bytes) -> bytes | None:
        """The bytes to pass on, or None when no message became whole (the data is kept)."""
        buf = self.partial + data if self.partial else data
        n = len(buf)
        i = 0
        out = []
        bad = False
        while i < n:
            if buf[i] & ~_COMPRESSED:  # (checked on the flag byte, as Envoy's decoder does)
                bad = True
                break
            if n - i < 5:
                break
            end = i + 5 + int.from_bytes(buf[i + 1:i + 5], "big")
            if end > n:
                break
            out.append(binascii.b2a_base64(buf[i:end], newline=False))
            i = end
        if bad:
            self.partial = b""
            return data + b"".join(out) if out else None
        self.partial = buf[i:]
        return b"".join(out) if out else None


def trailer_frame(trailers) -> bytes:
    """The trailers as the body's last frame (flag 0x80), `name:value\\r\\n` each, in order."""
    block = b"".join(b"%s:%s\r\n" % (k, v) for k, v in trailers)
    return b"\x80" + len(block).to_bytes(4, "big") + block


def _plain(c: int) -> bool:
    return 0x20 <= c < 0x7E and c != 0x25


def percent_encode(message: bytes) -> bytes:
    """Envoy's Http::Utility::PercentEncoding::encode (grpc-message's escaping)."""
    for c in message:
        if not _plain(c):
            break
    else:
        return message
    return b"".join(bytes((c,)) if _plain(c) else b"%%%02X" % c for c in message)
