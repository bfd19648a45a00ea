"""HTTP/1.1 framing and request-smuggling policy shared by both codecs (parsing side; the
encoders are in encoding.py).

Our policy on top of either parser (see shared/reference/http1-framing-rules.md): reject,
never normalise. Requests get 400 (431 for size, 501 for unsupported transfer codings);
any response framing problem is 502. Rules enforced here, on the few framing-relevant
headers the parsers collected (`SPECIAL`):
- Content-Length with Transfer-Encoding -> 400 (Envoy's default, no allow_chunked_length);
- more than one Content-Length line, a list (`42, 42`), empty or non-digit value -> 400;
- Transfer-Encoding in HTTP/1.0 -> 400; anything but one `chunked` -> 501;
- HTTP/1.1 request without Host or with more than one Host -> 400;
- upgrade/CONNECT requests carrying a body -> 400 (llhttp would read the body as tunnel data);
- header map larger than max_request_headers_kb (method + target + names + values, Envoy's
  byte size) or more than max_headers_count headers -> 431.
Byte-level rules (obs-fold, bare CR/LF, NUL, whitespace before the colon, chunk-line
syntax) are llhttp's strict mode; `check_raw_head` and `ChunkScanner` apply the same rules
for the h11 codec, which is more lenient by itself.

Thread affinity: functions are pure; ChunkScanner belongs to its codec (one worker).
Must not: do I/O, or per-header regex work on the hot path (the regexes here are only for
the h11 reference codec).
"""

from __future__ import annotations

import re
from types import MappingProxyType

from .errors import CodecError

__all__ = ["OPEN", "AWAIT_SWITCH", "TUNNEL", "CLOSED", "HEAD", "BODY", "SPECIAL", "KNOWN_METHODS",
           "VERSIONS", "analyze", "check_head_limits", "check_raw_head", "strip_empty_lines",
           "ChunkScanner", "reject", "unsupported_version", "connect_authority"]

# Headers whose values decide framing; everything else is only lower-cased and kept.
SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                     b"upgrade", b"expect"})

# llhttp's HTTP method table (request mode): anything else, including odd case such as
# `POsT`, is rejected by both codecs.
KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())

VERSIONS = MappingProxyType({"1.1": b"1.1", "1.0": b"1.0"})

# Connection states of both codecs. Server: OPEN, AWAIT_SWITCH (an upgrade/CONNECT request
# awaits its answer), then TUNNEL or CLOSED. Client: HEAD <-> BODY, then TUNNEL or CLOSED.
OPEN, AWAIT_SWITCH, TUNNEL, CLOSED = range(4)
HEAD, BODY = 0, 1


# Bound on a chunk-size line (digits + extensions); an unbounded extension is a DoS.
MAX_CHUNK_LINE = 4096


def reject(is_request: bool, status: int, details: str, message: str) -> CodecError:
    """Build the error for a bad request (status as given) or bad response (always 502)."""
    return CodecError(status if is_request else 502, details, message)


def unsupported_version(is_request: bool) -> CodecError:
    """A message whose version is neither HTTP/1.0 nor HTTP/1.1 (HTTP/0.9, 1.2, 2.0 ...):
    Envoy answers such a request 426 Upgrade Required, details `low_version`."""
    return reject(is_request, 426, "low_version", "unsupported HTTP version")


def _parse_content_length(value: bytes, is_request: bool) -> int:
    v = value.strip(b" \t")
    if not v.isdigit() or len(v) > 18:
        raise reject(is_request, 400, "http1.codec_error", f"invalid content-length {value!r}")
    return int(v)


def connect_authority(target: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A CONNECT request's fields as Envoy's HTTP/1 codec makes them: its authority is its
    request target (RFC 9110 §9.3.6, authority-form), whatever `host` said; it has no path
    (the caller reports an empty target)."""
    return [(b"host", target)] + [f for f in headers if f[0] != b"host"]


def analyze(specials: list[tuple[bytes, bytes]], version: bytes, is_request: bool
            ) -> tuple[int | None, bool, bool, bool, bytes | None, bool]:
    """Apply the framing policy to the SPECIAL headers of one message.

    Returns (content_length, chunked, keep_alive, connection_upgrade, upgrade, expect_continue).
    `keep_alive` reflects the version and Connection header only; the caller also clears it
    for close-delimited responses."""
    # Fast paths for the usual shapes (a request with just Host; a response with just
    # Content-Length and/or `Connection: keep-alive|close`): same results as the loop below.
    n = len(specials)
    if n == 1 and is_request:
        if specials[0][0] == b"host":
            return None, False, version == b"1.1", False, None, False
    elif n <= 2 and not is_request:
        cl = None
        close = keep = False
        for name, value in specials:
            if name == b"content-length" and cl is None and value.isdigit() and len(value) <= 18:
                cl = int(value)
            elif name == b"connection" and value == b"keep-alive":
                keep = True
            elif name == b"connection" and value == b"close":
                close = True
            else:
                break
        else:  # no break: every header was one of the simple cases
            return (cl, False, not close if version == b"1.1" else (keep and not close),
                    False, None, False)
    hosts = 0
    cl: int | None = None
    te: bytes | None = None
    te_lines = 0
    close = keep = conn_upgrade = False
    upgrade: bytes | None = None
    expect = False
    for name, value in specials:
        if name == b"content-length":
            if cl is not None:
                raise reject(is_request, 400, "http1.codec_error", "duplicate content-length")
            cl = _parse_content_length(value, is_request)
        elif name == b"transfer-encoding":
            te_lines += 1
            te = value
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            value = value.lower()
            if value == b"keep-alive":  # the common single-token cases skip the split
                keep = True
                continue
            if value == b"close":
                close = True
                continue
            for token in value.split(b","):
                token = token.strip(b" \t")
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep = True
                elif token == b"upgrade":
                    conn_upgrade = True
        elif name == b"upgrade":  # several lines make one list (then no single protocol matches)
            upgrade = value if upgrade is None else upgrade + b"," + value
        elif name == b"expect":
            expect = value.strip(b" \t").lower() == b"100-continue"
    if is_request:
        if hosts > 1:
            raise CodecError(400, "http1.codec_error", "multiple host headers")
        # (An HTTP/1.1 request without host is the connection manager's to refuse, as in
        # Envoy: a local reply, not a protocol error.)
    chunked = False
    if te_lines:
        if version != b"1.1":
            raise reject(is_request, 400, "http1.invalid_transfer_encoding",
                         "transfer-encoding in HTTP/1.0")
        if cl is not None:
            raise reject(is_request, 400, "http1.content_length_and_chunked_not_allowed",
                         "both content-length and transfer-encoding")
        if te_lines > 1 or te.strip(b" \t").lower() != b"chunked":  # type: ignore[union-attr]
            raise reject(is_request, 501, "http1.invalid_transfer_encoding",
                         f"unsupported transfer-encoding {te!r}")
        chunked = True
    keep_alive = not close if version == b"1.1" else (keep and not close)
    return cl, chunked, keep_alive, conn_upgrade, upgrade, expect


def check_head_limits(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      max_bytes: int, max_count: int, is_request: bool) -> None:
    """431 when the header map is over max_headers_count or max_*_headers_kb (Envoy's
    byte size: method + target + every name and value)."""
    if len(headers) > max_count:
        raise reject(is_request, 431, "http1.too_many_headers",
                     f"{len(headers)} headers > {max_count}")
    size = len(method) + len(target)
    for n, v in headers:
        size += len(n) + len(v)
    if size > max_bytes:
        raise reject(is_request, 431, "http1.headers_too_large", f"{size} header bytes > {max_bytes}")


def strip_empty_lines(buf: bytes) -> bytes:
    """Drop CRLFs before a start line (RFC 9112 §2.2: SHOULD ignore; llhttp does)."""
    i = 0
    while buf.startswith(b"\r\n", i):
        i += 2
    return buf[i:] if i else buf


# --- byte-level checks for the h11 codec (llhttp applies the same ones itself) ---

_FIELD_CTL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_raw_head(head: bytes, is_request: bool) -> list[tuple[bytes, bytes]]:
    """Reject what h11 would tolerate; return the SPECIAL headers of the raw head.

    `head` runs from the start line through the blank line (b"\\r\\n\\r\\n")."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise reject(is_request, 400, "http1.codec_error", "bare CR or LF in head")
    if b"\x00" in head:
        raise reject(is_request, 400, "http1.invalid_characters", "NUL in head")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise reject(is_request, 400, "http1.codec_error", "obs-fold or whitespace line")
    if _FIELD_CTL.search(head, head.find(b"\r\n")):
        raise reject(is_request, 400, "http1.invalid_characters", "control byte in a field")
    specials = []
    for line in head.split(b"\r\n")[1:-2]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in SPECIAL:
            specials.append((name, value.strip(b" \t")))
    return specials


_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXT = rb"(?:;(?:%s+(?:=(?:%s+|%s))?|=(?:%s+|%s)))" % (_TCHAR, _TCHAR, _QUOTED, _TCHAR, _QUOTED)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})%s*" % _EXT)


class ChunkScanner:
    """Strict chunked-framing validator run beside h11 (which accepts OWS after the size
    and any bytes in extensions). Sees the body bytes of one message; `done` once the
    trailer section ended. Raises CodecError on a bad chunk line, chunk end or trailer."""

    __slots__ = ("_is_request", "_line", "_remaining", "_state", "done")

    def __init__(self, is_request: bool) -> None:
        self._is_request = is_request
        self._line = b""
        self._remaining = 0
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer lines
        self.done = False

    def _bad(self, what: str) -> CodecError:
        return reject(self._is_request, 400, "http1.codec_error", f"bad chunked framing: {what}")

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.done:
            if self._state == 1:
                take = min(self._remaining, n - i)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = 2
            elif self._state == 2:
                need = 2 - len(self._line)
                self._line += data[i:i + need]
                i += need
                if not b"\r\n".startswith(self._line):
                    raise self._bad("chunk data not followed by CRLF")
                if len(self._line) == 2:
                    self._line = b""
                    self._state = 0
            else:
                j = data.find(b"\n", i)
                end = n if j < 0 else j + 1
                self._line += data[i:end]
                i = end
                if len(self._line) > MAX_CHUNK_LINE:
                    raise self._bad("line too long")
                if j >= 0:
                    line, self._line = self._line, b""
                    self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if line[-2:] != b"\r\n" or b"\r" in line[:-2]:
            raise self._bad("line not ended by CRLF")
        line = line[:-2]
        if self._state == 0:
            m = _CHUNK_LINE.fullmatch(line)
            if m is None:
                raise self._bad(f"chunk line {line[:40]!r}")
            self._remaining = int(m.group(1), 16)
            self._state = 1 if self._remaining else 3
        elif not line:
            self.done = True
        elif line[:1] in (b" ", b"\t") or b"\x00" in line:
            raise self._bad("obs-fold or NUL in trailers")

