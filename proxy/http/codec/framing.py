"""HTTP/1.1 framing and request-smuggling policy shared by both codecs, plus the encoders.

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

The encoders own response framing: Content-Length if given, none for HEAD/1xx/204/304,
else chunked for HTTP/1.1 peers and close-delimited for HTTP/1.0 peers.

Thread affinity: functions are pure; encoder state belongs to its codec (one worker).
Must not: do I/O, or per-header regex work on the hot path (the regexes here are only for
the h11 reference codec).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from types import MappingProxyType

from .errors import CodecError

__all__ = ["OPEN", "AWAIT_SWITCH", "TUNNEL", "CLOSED", "HEAD", "BODY", "SPECIAL", "KNOWN_METHODS", "VERSIONS", "analyze", "check_head_limits",
           "check_raw_head", "strip_empty_lines", "ChunkScanner", "ResponseEncoding", "RequestEncoding", "reject"]

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

_REASONS = MappingProxyType({s.value: s.phrase.encode("ascii") for s in HTTPStatus})
# Status lines for the default reason phrases, without the CRLF (the encoders join on CRLF).
_STATUS_LINES = MappingProxyType({code: b"HTTP/1.1 %d %s" % (code, reason)
                                  for code, reason in _REASONS.items()})

# Bound on a chunk-size line (digits + extensions); an unbounded extension is a DoS.
MAX_CHUNK_LINE = 4096


def reject(is_request: bool, status: int, details: str, message: str) -> CodecError:
    """Build the error for a bad request (status as given) or bad response (always 502)."""
    return CodecError(status if is_request else 502, details, message)


def _parse_content_length(value: bytes, is_request: bool) -> int:
    v = value.strip(b" \t")
    if not v.isdigit() or len(v) > 18:
        raise reject(is_request, 400, "http1.codec_error", f"invalid content-length {value!r}")
    return int(v)


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
        if hosts == 0 and version == b"1.1":
            raise CodecError(400, "missing_host_header", "HTTP/1.1 request without host")
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


# --- encoders (shared by both codecs) ---

# Connection-level fields the codec writes itself; a caller's copy would contradict it.
_OWN_RESPONSE_FIELDS = frozenset({b"connection", b"transfer-encoding", b"keep-alive"})

# Heads are built as one `b"\r\n".join` over [start line, b": ".join(field)..., b"", b""]:
# one C call per field line instead of three concatenations, and one set lookup per field
# decides whether it needs a second look (measured faster than `map`-based variants for
# the usual 2-10 fields).
_RESPONSE_FRAMING_FIELDS = _OWN_RESPONSE_FIELDS | {b"content-length"}
# Request fields the encoder may drop: transfer-encoding always, content-length when it
# sends chunked, host when the caller passes the authority.
_REQUEST_FRAMING_FIELDS = frozenset({b"transfer-encoding", b"content-length"})
_REQUEST_FRAMING_FIELDS_AND_HOST = _REQUEST_FRAMING_FIELDS | {b"host"}
_field_line = b": ".join
_END = (b"", b"")  # the last field's CRLF + the blank line


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join([n + b": " + v + b"\r\n" for n, v in trailers]) + b"\r\n"


# Connection states of both codecs. Server: OPEN, AWAIT_SWITCH (an upgrade/CONNECT request
# awaits its answer), then TUNNEL or CLOSED. Client: HEAD <-> BODY, then TUNNEL or CLOSED.
OPEN, AWAIT_SWITCH, TUNNEL, CLOSED = range(4)
HEAD, BODY = 0, 1
# How the server codec frames the body of the response it is sending: bytes as they are
# (Content-Length, close-delimited, tunnel), chunked, or none at all (HEAD, 204, 304: any
# body bytes a caller still writes are dropped, so they can never be read as a next response).
_BODY_AS_IS, _BODY_CHUNKED, _BODY_NONE = range(3)


class ResponseEncoding:
    """Mixin for server codecs: response heads and bodies with codec-owned framing, and the
    server state change each final head makes.

    Needs slots `_resp_body` (one of the `_BODY_*` modes), `response_must_close` (a plain
    attribute: the connection
    must close after this response), `_state`, `_unanswered` (requests without a final
    answer yet), `_keep_alive` (of the last request), and `_own_lines` / `_skip_fields`
    (set by `_set_response_fields`)."""

    __slots__ = ()
    _resp_body: int
    response_must_close: bool
    _state: int
    _unanswered: int
    _keep_alive: bool
    _own_lines: tuple[bytes, ...]
    _skip_fields: frozenset[bytes]

    def _set_response_fields(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        """Fields written on every response head in place of any the caller's headers carry
        (the connection manager's `server` when it overwrites it): one set lookup per field,
        which the framing fields need anyway, instead of a pass of its own."""
        self._own_lines = tuple(_field_line(f) for f in fields)
        self._skip_fields = _RESPONSE_FRAMING_FIELDS | {n for n, _ in fields}

    def _switch_protocols(self) -> None:
        """After a 101, or a 2xx to CONNECT: the connection is a tunnel now."""
        self._unanswered -= 1
        self._state = TUNNEL

    def _final_response(self) -> None:
        """After any other final head: a refused upgrade reopens (or closes) the connection."""
        self._unanswered -= 1
        if self._state == AWAIT_SWITCH and self._unanswered <= 0:
            self._state = OPEN if self._keep_alive else CLOSED

    def encode_response_head(self, status: int, reason: bytes | None,
                             headers: list[tuple[bytes, bytes]], request_method: bytes,
                             request_version: bytes, keep_alive: bool) -> bytes:
        if reason is None:
            line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d " % status
        else:
            line = b"HTTP/1.1 %d %s" % (status, reason)
        if status < 200:
            parts = [line]
            own = self._skip_fields - _RESPONSE_FRAMING_FIELDS
            for field in headers:
                if field[0] not in own:
                    parts.append(_field_line(field))
            parts += self._own_lines
            parts += _END
            if status == 101:
                self._resp_body = _BODY_AS_IS
                self._switch_protocols()
            return b"\r\n".join(parts)
        tunnel = request_method == b"CONNECT" and status < 300
        bodyless = tunnel or status == 204 or status == 304 or request_method == b"HEAD"
        has_length = False
        parts = [line]
        skip = self._skip_fields
        for field in headers:
            n = field[0]
            if n in skip:
                if n != b"content-length" or status == 204 or tunnel:
                    continue  # codec-owned, set by the owner (`_own_lines`), or no length allowed
                has_length = True
            parts.append(_field_line(field))
        parts += self._own_lines
        chunked = False
        if not bodyless and not has_length:
            if request_version == b"1.1":
                chunked = True
                parts.append(b"transfer-encoding: chunked")
            else:
                keep_alive = False  # close-delimited body for an HTTP/1.0 client
        if not tunnel:
            if not keep_alive or self.response_must_close:
                self.response_must_close = True
                parts.append(b"connection: close")
            elif request_version == b"1.0":
                parts.append(b"connection: keep-alive")
        parts += _END
        self._resp_body = (_BODY_CHUNKED if chunked else
                           _BODY_NONE if bodyless and not tunnel else _BODY_AS_IS)
        if tunnel:
            self._switch_protocols()
        else:
            self._final_response()
        return b"\r\n".join(parts)

    def encode_body(self, data: bytes) -> bytes:
        mode = self._resp_body
        if mode == _BODY_AS_IS:
            return data
        return _chunk(data) if mode == _BODY_CHUNKED else b""

    def encode_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        if self._resp_body == _BODY_CHUNKED:
            self._resp_body = _BODY_AS_IS
            return _last_chunk(trailers)
        return b""


class RequestEncoding:
    """Mixin for client codecs: request heads and bodies. Needs slots `_req_chunked`,
    `_error` (a CodecError that poisoned the connection, or None) and `_methods` (the methods
    of requests awaiting their response: the parser must know HEAD/CONNECT)."""

    __slots__ = ()
    _req_chunked: bool
    _error: CodecError | None
    _methods: list[bytes]

    @property
    def failed(self) -> bool:
        """The peer sent bytes that poisoned this connection: it must not be reused."""
        return self._error is not None

    def encode_request_head(self, method: bytes, target: bytes,
                            headers: list[tuple[bytes, bytes]], chunked: bool,
                            authority: bytes | None = None) -> bytes:
        """`authority`, when given, is sent as the first field (`host`) and any `host` in
        `headers` is left out."""
        parts = [method + b" " + target + b" HTTP/1.1"]
        skip = _REQUEST_FRAMING_FIELDS
        if authority is not None:
            parts.append(b"host: " + authority)
            skip = _REQUEST_FRAMING_FIELDS_AND_HOST
        for field in headers:
            n = field[0]
            if n in skip and (n != b"content-length" or chunked):
                continue  # codec-owned framing, or the host given as `authority`
            parts.append(_field_line(field))
        if chunked:
            parts.append(b"transfer-encoding: chunked")
        parts += _END
        if self._error is not None:
            raise self._error
        self._methods.append(method)  # the parser must know HEAD/CONNECT
        self._req_chunked = chunked
        return b"\r\n".join(parts)

    def encode_body(self, data: bytes) -> bytes:
        return _chunk(data) if self._req_chunked else data

    def encode_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        if self._req_chunked:
            self._req_chunked = False
            return _last_chunk(trailers)
        return b""
