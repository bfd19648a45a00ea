"""HTTP/1.1 message encoding shared by both codecs: response and request heads and bodies,
with codec-owned framing.

The encoders own framing: Content-Length if given, none for HEAD/1xx/204/304, else chunked for
HTTP/1.1 peers and close-delimited for HTTP/1.0 peers; the connection-level fields
(Connection, Transfer-Encoding, Keep-Alive) are always the codec's own. The server side also
makes the state change each final head implies (a refused upgrade reopens the connection, a
101 or a 2xx to CONNECT makes it a tunnel), in the states framing.py defines.

Thread affinity: encoder state belongs to its codec (one worker). Must not: do I/O, or parse.
"""

from __future__ import annotations

from http import HTTPStatus
from types import MappingProxyType

from .errors import CodecError
from .framing import AWAIT_SWITCH, CLOSED, OPEN, TUNNEL

__all__ = ["ResponseEncoding", "RequestEncoding"]

_REASONS = MappingProxyType({s.value: s.phrase.encode("ascii") for s in HTTPStatus})
# Status lines for the default reason phrases, without the CRLF (the encoders join on CRLF).
_STATUS_LINES = MappingProxyType({code: b"HTTP/1.1 %d %s" % (code, reason)
                                  for code, reason in _REASONS.items()})

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


# How the server codec frames the body of the response it is sending: bytes as they are
# (Content-Length, close-delimited, tunnel), chunked, or none at all (HEAD, 204, 304: any
# body bytes a caller still writes are dropped, so they can never be read as a next response).
_BODY_AS_IS, _BODY_CHUNKED, _BODY_NONE = range(3)
_CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


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
        elif request_method == b"HEAD" and not has_length and request_version == b"1.1" \
                and status != 204 and status != 304:
            # The framing the GET would have had, as Envoy's codec writes it (no body follows).
            parts.append(b"transfer-encoding: chunked")
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
        else:  # any other final head: a refused upgrade reopens (or closes) the connection
            self._unanswered -= 1
            if self._state == AWAIT_SWITCH and self._unanswered <= 0:
                self._state = OPEN if self._keep_alive else CLOSED
        return b"\r\n".join(parts)

    def encode_whole_response(self, status: int, headers: list[tuple[bytes, bytes]],
                              request_method: bytes, request_version: bytes, keep_alive: bool,
                              body: bytes) -> bytes:
        """Head, body and end of a whole response in one piece: what encode_response_head,
        encode_body and encode_end give one after the other (the usual proxied response)."""
        data = self.encode_response_head(status, None, headers, request_method, request_version,
                                         keep_alive)
        mode = self._resp_body
        if mode == _BODY_AS_IS:
            return data + body if body else data
        if mode == _BODY_CHUNKED:
            self._resp_body = _BODY_AS_IS
            return data + (_chunk(body) if body else b"") + _last_chunk(None)
        return data  # no body allowed (HEAD, 204, 304)

    def encode_continue(self) -> bytes:
        """The interim `100 Continue` answering `expect: 100-continue` (no fields, as Envoy)."""
        return _CONTINUE_100

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


# Methods whose bodyless requests Envoy's HTTP/1 codec sends without `content-length: 0`
# (observed on Envoy 1.40: OPTIONS, POST, PUT, PATCH get one).
_NO_LENGTH_WHEN_BODYLESS = frozenset({b"GET", b"HEAD", b"DELETE", b"TRACE", b"CONNECT"})


class RequestEncoding:
    """Mixin for client codecs: request heads and bodies. Needs slots `_req_chunked`,
    `error` (the CodecError of bytes from the peer that poisoned this connection, or None:
    then it must not be reused) and `_methods` (the methods of requests awaiting their
    response: the parser must know HEAD/CONNECT)."""

    __slots__ = ()
    _req_chunked: bool
    error: CodecError | None
    _methods: list[bytes]

    def encode_request_head(self, method: bytes, target: bytes,
                            headers: list[tuple[bytes, bytes]], chunked: bool,
                            authority: bytes | None = None, end_stream: bool = False) -> bytes:
        """`authority`, when given, is sent as the first field (`host`) and any `host` in
        `headers` is left out. `end_stream`: the request has no body; as Envoy's codec, a
        method that may carry one then says `content-length: 0` unless a length is given."""
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
        elif end_stream and method not in _NO_LENGTH_WHEN_BODYLESS:
            for field in headers:
                if field[0] == b"content-length":
                    break
            else:
                parts.append(b"content-length: 0")
        parts += _END
        if self.error is not None:
            raise self.error
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
