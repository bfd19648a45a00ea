"""HTTP/1.1 codecs on h11: the strict pure-Python reference (test oracle, fallback).

h11 is more lenient than our policy in places (it folds obs-fold lines, merges duplicate
Content-Length, accepts bare LF, OWS after a chunk size and any bytes in chunk extensions,
and does not reject CL+TE), so this codec splits each head itself, runs
`framing.check_raw_head` + `framing.analyze` on it before h11 sees it, and runs a
`framing.ChunkScanner` beside h11's chunked reader. One `h11.Connection` per message: it
lets pipelined requests be parsed before their responses are written (h11 itself would
pause), and the next message starts from `trailing_data`.

Thread affinity: one codec per connection, used by the owning worker only. Must not: do
I/O, keep module-level mutable state, or use h11 for writing (framing.py encodes).
"""

from __future__ import annotations

import h11

from .encoding import RequestEncoding, ResponseEncoding
from .errors import CodecError
from .events import Data, Informational, MessageComplete, RequestHeaders, ResponseHeaders
from .framing import (AWAIT_SWITCH, BODY, CLOSED, HEAD, KNOWN_METHODS, OPEN, TUNNEL,
                      ChunkScanner, analyze, connect_authority,
                      check_head_limits, check_raw_head, reject, strip_empty_lines,
                      unsupported_version)

__all__ = ["H11ServerCodec", "H11ClientCodec"]

_UNBOUNDED = 1 << 40  # heads are split and size-checked here before h11 sees them


def _split_head(buf: bytes, max_bytes: int, is_request: bool) -> int:
    """End offset of the head in `buf` (after the blank line), or -1 if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 2 * max_bytes:
            raise reject(is_request, 431, "http1.headers_too_large", "head too large")
        return -1
    return end + 4


def _next(conn: h11.Connection, is_request: bool):
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise reject(is_request, exc.error_status_hint, "http1.codec_error", str(exc)) from None


def _version_ok(version: bytes, is_request: bool) -> bytes:
    if version not in (b"1.0", b"1.1"):
        raise unsupported_version(is_request)
    return version


def _raw_te(headers: list, specials: list) -> list:
    """h11 lower-cases the Transfer-Encoding value; report it as sent (like llhttp)."""
    raw = [v for n, v in specials if n == b"transfer-encoding"]
    if raw:
        headers = [(n, raw[0]) if n == b"transfer-encoding" else (n, v) for n, v in headers]
    return headers


class H11ServerCodec(ResponseEncoding):
    __slots__ = ("_buf", "_conn", "_scanner", "_state", "_held", "_keep_alive", "_unanswered",
                 "_max_bytes", "_max_count", "_resp_body", "response_must_close", "_own_lines",
                 "_skip_fields", "head_in_progress")

    def __init__(self, max_request_headers_kb: int = 60, max_headers_count: int = 100,
                 response_fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._set_response_fields(response_fields)
        self._buf = b""
        # A request head has begun (its first byte, blank lines before it aside) and is not
        # complete yet; kept as the httptools codec keeps it (the differential test checks).
        self.head_in_progress = False
        self._conn: h11.Connection | None = None
        self._scanner: ChunkScanner | None = None
        self._state = OPEN
        self._held = b""
        self._keep_alive = True
        self._unanswered = 0
        self._max_bytes = max_request_headers_kb * 1024
        self._max_count = max_headers_count
        self._resp_body = 0  # encoding._BODY_AS_IS until a response head says otherwise
        self.response_must_close = False

    def feed(self, data: bytes) -> list:
        if not data:
            if self._state == OPEN and (self._conn is not None or strip_empty_lines(self._buf)):
                raise CodecError(400, "http1.codec_error", "downstream closed mid-request")
            return []
        if self._state == TUNNEL:
            return [Data(data)]
        if self._state == AWAIT_SWITCH:
            self._held += data
            if len(self._held) > self._max_bytes:
                raise CodecError(400, "http1.codec_error", "too much data before upgrade answer")
            return []
        if self._state == CLOSED:
            return []
        events: list = []
        self._buf += data
        try:
            while self._state == OPEN:
                if not (self._start(events) if self._conn is None else self._body(events)):
                    break
        except CodecError as err:
            err.parsed = events
            raise
        # `_start` left `_buf` without leading blank lines: what remains is a head begun (a
        # lone CR may still be one of those lines: llhttp begins a message at its first
        # other byte).
        self.head_in_progress = (self._state == OPEN and self._conn is None
                                 and self._buf not in (b"", b"\r"))
        return events

    def resume(self) -> list:
        held, self._held = self._held, b""
        if not held:
            return []
        if self._state == TUNNEL:
            return [Data(held)]
        return self.feed(held) if self._state == OPEN else []

    def _start(self, events: list) -> bool:
        buf = self._buf = strip_empty_lines(self._buf)
        end = _split_head(buf, self._max_bytes, True)
        if end < 0:
            return False
        head, rest = buf[:end], buf[end:]
        specials = check_raw_head(head, True)
        version = head[:head.find(b"\r\n")].rpartition(b" ")[2]
        version = version[5:] if version.startswith(b"HTTP/") else b""
        if version in (b"1.0", b"1.1"):
            analyze(specials, version, True)  # our policy speaks before h11's own checks
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_UNBOUNDED)
        no_host = version == b"1.1" and not any(n == b"host" for n, _ in specials)
        if no_host:
            # h11 refuses an HTTP/1.1 request without host; the connection manager refuses it
            # (as Envoy's HCM does, not its codec): h11 parses it with an empty one.
            head = head[:-2] + b"host: \r\n\r\n"
        conn.receive_data(head)
        ev = _next(conn, True)
        if type(ev) is not h11.Request:
            raise CodecError(400, "http1.codec_error", f"unexpected {ev!r}")
        version = _version_ok(ev.http_version, True)
        method = bytes(ev.method)
        if method not in KNOWN_METHODS:
            raise CodecError(400, "http1.codec_error", f"unknown method {method!r}")
        target = bytes(ev.target)
        headers = _raw_te([(bytes(n), bytes(v)) for n, v in ev.headers], specials)
        if no_host:
            headers.pop()
        check_head_limits(method, target, headers, self._max_bytes, self._max_count, True)
        cl, chunked, keep_alive, conn_upgrade, upgrade, expect = analyze(specials, version, True)
        switch = method == b"CONNECT" or (conn_upgrade and upgrade is not None)
        if switch:
            if cl or chunked:
                raise CodecError(400, "http1.codec_error", "upgrade/CONNECT request with a body")
            if method == b"CONNECT":
                upgrade = b"CONNECT"  # its body is the tunnel (events.RequestHeaders)
                headers = connect_authority(target, headers)
                target = b""
        else:
            upgrade = None
        self._keep_alive = keep_alive
        events.append(RequestHeaders(method, target, version, headers, keep_alive, upgrade,
                                     expect, cl, chunked))
        if switch:
            events.append(MessageComplete(None))
            self._unanswered += 1
            self._state = AWAIT_SWITCH
            self._held, self._buf = rest, b""
            return False
        self._conn = conn
        self._scanner = ChunkScanner(True) if chunked else None
        self._buf = rest
        return True

    def _body(self, events: list) -> bool:
        conn = self._conn
        data, self._buf = self._buf, b""
        trailers = _pump_body(conn, self._scanner, data, True, events)
        if trailers is _NEED_DATA:
            return False
        events.append(MessageComplete(trailers))
        self._unanswered += 1
        self._conn = self._scanner = None
        if self._keep_alive:
            self._buf = bytes(conn.trailing_data[0])
            return True
        self._state = CLOSED
        return False


_NEED_DATA = object()


def _pump_body(conn: h11.Connection, scanner, data: bytes, is_request: bool, events: list):
    """Feed body bytes to h11 (and our strict chunk-line scanner); append Data events.
    Returns the trailers (or None) at the end of the message, else _NEED_DATA."""
    if scanner is not None and not scanner.done:
        scanner.feed(data)
    if data:  # receive_data(b"") would mean EOF to h11
        conn.receive_data(data)
    while True:
        ev = _next(conn, is_request)
        if ev is h11.NEED_DATA:
            return _NEED_DATA
        if type(ev) is h11.Data:
            events.append(Data(bytes(ev.data)))
        elif type(ev) is h11.EndOfMessage:
            return [(bytes(n), bytes(v)) for n, v in ev.headers] or None
        else:
            raise AssertionError(f"h11 codec: unexpected {ev!r}")


class H11ClientCodec(RequestEncoding):
    __slots__ = ("_buf", "_conn", "_scanner", "_methods", "_state", "error", "_keep_alive",
                 "_close_delimited", "_max_bytes", "_max_count", "_req_chunked")

    def __init__(self, max_response_headers_kb: int = 60, max_headers_count: int = 100) -> None:
        self._buf = b""
        self._conn: h11.Connection | None = None
        self._scanner: ChunkScanner | None = None
        self._methods: list[bytes] = []
        self._state = HEAD
        self.error: CodecError | None = None
        self._keep_alive = True
        self._close_delimited = False
        self._max_bytes = max_response_headers_kb * 1024
        self._max_count = max_headers_count
        self._req_chunked = False

    def _fail(self, message: str) -> None:
        self.error = CodecError(502, "http1.codec_error", message)
        self._state = CLOSED

    def feed(self, data: bytes) -> list:
        if self.error is not None:
            raise self.error
        if not data:
            return self._eof()
        if self._state == TUNNEL:
            return [Data(data)]
        if self._state == CLOSED:
            return []
        events: list = []
        self._buf += data
        while True:
            if self._state == HEAD:
                if not self._head(events):
                    break
            elif self._state == BODY:
                if not self._body(events):
                    break
            else:
                if self._state == TUNNEL and self._buf:
                    events.append(Data(self._buf))
                self._buf = b""
                break
        return events

    def _new_conn(self, method: bytes) -> h11.Connection:
        # h11 frames a response by its request's method; tell it with a stand-in request that
        # also allows a 101 answer.
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_UNBOUNDED)
        conn.send(h11.Request(method=method, target=b"x:1" if method == b"CONNECT" else b"/",
                              headers=[(b"host", b"x"), (b"content-length", b"0"),
                                       (b"connection", b"upgrade"), (b"upgrade", b"x")]))
        conn.send(h11.EndOfMessage())
        return conn

    def _head(self, events: list) -> bool:
        buf = self._buf = strip_empty_lines(self._buf)
        if not buf:
            return False
        if not self._methods:
            self._fail("response bytes without a pending request")
            return False
        end = _split_head(buf, self._max_bytes, False)
        if end < 0:
            return False
        head, self._buf = buf[:end], buf[end:]
        specials = check_raw_head(head, False)
        version = head[5:8] if head.startswith(b"HTTP/") else b""
        if version in (b"1.0", b"1.1"):
            analyze(specials, version, False)
        method = self._methods[0]
        if self._conn is None:
            self._conn = self._new_conn(method)
        conn = self._conn
        conn.receive_data(head)
        ev = _next(conn, False)
        if type(ev) not in (h11.Response, h11.InformationalResponse):
            raise CodecError(502, "http1.codec_error", f"unexpected {ev!r}")
        version = _version_ok(ev.http_version, False)
        reason = bytes(ev.reason)
        headers = _raw_te([(bytes(n), bytes(v)) for n, v in ev.headers], specials)
        check_head_limits(b"", reason, headers, self._max_bytes, self._max_count, False)
        cl, chunked, keep_alive, _, _, _ = analyze(specials, version, False)
        status = ev.status_code
        if status < 200 and status != 101:
            events.append(Informational(status, headers))
            return True
        if status == 101 or (method == b"CONNECT" and status < 300):
            events.append(ResponseHeaders(status, reason, version, headers, keep_alive, cl,
                                          chunked))
            self._methods.pop(0)
            self._conn = None
            self._state = TUNNEL
            return True
        if method == b"HEAD" or status == 204 or status == 304:
            events.append(ResponseHeaders(status, reason, version, headers, keep_alive, cl,
                                          chunked))
            self._keep_alive = keep_alive
            self._complete(events, None)
            return True
        self._close_delimited = cl is None and not chunked
        self._keep_alive = keep_alive and not self._close_delimited
        events.append(ResponseHeaders(status, reason, version, headers, self._keep_alive, cl,
                                      chunked))
        self._scanner = ChunkScanner(False) if chunked else None
        self._state = BODY
        return True

    def _body(self, events: list) -> bool:
        conn = self._conn
        data, self._buf = self._buf, b""
        trailers = _pump_body(conn, self._scanner, data, False, events)
        if trailers is _NEED_DATA:
            return False
        self._buf = bytes(conn.trailing_data[0])
        self._complete(events, trailers)
        return True

    def _complete(self, events: list, trailers: list | None) -> None:
        events.append(MessageComplete(trailers))
        self._methods.pop(0)
        self._conn = self._scanner = None
        self._state = HEAD if self._keep_alive else CLOSED
        if not self._keep_alive:
            self._buf = b""
        self._keep_alive = True

    def _eof(self) -> list:
        if self._state == BODY and self._close_delimited:
            self._state = CLOSED
            self._methods.pop(0)
            self._conn = None
            return [MessageComplete(None)]
        if self._state in (TUNNEL, CLOSED) or (self._state == HEAD and not self._methods
                                                 and not self._buf):
            self._state = CLOSED
            return []
        raise CodecError(502, "upstream_reset_before_response_complete",
                         "upstream closed connection before end of response")
