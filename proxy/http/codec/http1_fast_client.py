"""HTTP/1.1 client codec on httptools (llhttp): parses upstream responses, encodes requests.

Shares the server codec's header callback and error mapping (http1_fast.py; its docstring
has the speed notes). httptools gaps worked around here: no EOF call (close-delimited bodies
are completed here) and no way to skip a body (HEAD / CONNECT responses). The client therefore
splits response heads itself (one `find` per head) and feeds llhttp the head alone when the
response may be bodyless or a tunnel (request HEAD/CONNECT, status 1xx/204/304, or a start
line it cannot read cheaply); the usual response (head and body in one buffer) goes to llhttp
in one call, and `on_message_begin` refuses a second response inside that buffer.

Thread affinity: one codec per connection, used by the owning worker only. Must not: do
I/O, keep module-level mutable state, or forward anything from a message that errored.
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .encoding import RequestEncoding
from .errors import CodecError
from .events import END_OF_MESSAGE, Data, Informational, MessageComplete, ResponseHeaders
from .framing import (BODY, CLOSED, HEAD, TUNNEL, VERSIONS, analyze, check_head_limits,
                      strip_empty_lines)
from .http1_fast import collect_header, llhttp_error

__all__ = ["FastClientCodec"]

_STATUS_END = (b" ", b"\r")                          # what may follow a 3-digit status code


class FastClientCodec(RequestEncoding):
    """Upstream side: encodes requests, parses their responses (one at a time)."""

    __slots__ = ("_parser", "_events", "_buf", "_methods", "_state", "_headers", "_specials",
                 "_reason", "on_status", "_max_bytes", "_max_count", "_head_len", "_version",
                 "_feeding_head", "_informational", "_skip_complete", "_keep_alive",
                 "_close_delimited", "error", "_req_chunked")

    def __init__(self, max_response_headers_kb: int = 60, max_headers_count: int = 100) -> None:
        self._events: list = []
        self._buf = b""
        self._methods: list[bytes] = []
        self._state = HEAD
        # Invariant at each message begin: `_headers`, `_specials` and `_reason` are empty.
        self._headers: list = []
        self._specials: list = []
        self._reason: list[bytes] = []  # reason pieces; llhttp's on_status is its append
        self.on_status = self._reason.append
        self._parser = HttpResponseParser(self)
        self._max_bytes = max_response_headers_kb * 1024
        self._max_count = max_headers_count
        self._head_len = 0
        self._version = b""   # the status line's version digits (see `_take_head`)
        self._feeding_head = self._informational = self._skip_complete = False
        self._keep_alive = True
        self._close_delimited = False
        self.error: CodecError | None = None
        self._req_chunked = False

    # --- input ---
    def feed(self, data: bytes) -> list:
        if self.error is not None:
            raise self.error
        if not data:
            return self._eof()
        state = self._state
        if state == TUNNEL:
            return [Data(data)]
        if state == CLOSED:
            return []
        events = self._events = []
        while data:
            if self._state == BODY:
                self._feed(data, False)
                break
            if self._state == TUNNEL:
                events.append(Data(data))
                break
            if self._state == CLOSED:
                break
            data = self._take_head(data)
        return events

    def _take_head(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if buf[:2] == b"\r\n":  # llhttp skips empty lines between messages
            buf = strip_empty_lines(buf)
        self._buf = b""
        if not buf:
            return b""
        if not self._methods:
            self._fail("response bytes without a pending request")
            return b""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 2 * self._max_bytes:
                raise CodecError(502, "http1.headers_too_large", "response head too large")
            self._buf = buf
            return b""
        end += 4
        self._head_len = end
        # `HTTP/1.1 200`: llhttp validates the status line; reading the version here saves
        # httptools' get_http_version(), which formats a str per call.
        self._version = buf[5:8]
        method = self._methods[0]
        code = buf[9:12]
        # One llhttp call for head and body when the response surely has an ordinary body
        # (not 1xx/204/304, not to HEAD/CONNECT): llhttp reads the same bytes either way,
        # and `on_message_begin` still refuses a second response inside the buffer.
        if (code > b"199" and code != b"204" and code != b"304" and code.isdigit()
                and method != b"HEAD" and method != b"CONNECT"
                and buf[8:9] == b" " and buf[12:13] in _STATUS_END):
            self._feed(buf, True)
            return b""
        self._feed(buf[:end], True)
        return buf[end:]

    def _fail(self, message: str) -> None:
        self.error = CodecError(502, "http1.codec_error", message)
        self._state = CLOSED

    def _feed(self, data: bytes, head: bool) -> None:
        self._feeding_head = head
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            ctx = exc.__context__
            if isinstance(ctx, _Unsolicited):
                self._parser = HttpResponseParser(self)
                self._fail("response bytes after the end of the response")
                return
            if self._state != TUNNEL:
                raise llhttp_error(exc, False) from None
        if self._state == TUNNEL or self._skip_complete:
            self._skip_complete = False
            self._parser = HttpResponseParser(self)

    def _eof(self) -> list:
        if self._state == BODY and self._close_delimited:
            self._state = CLOSED
            self._methods.pop(0)
            return [END_OF_MESSAGE]
        if self._state in (TUNNEL, CLOSED) or (self._state == HEAD and not self._methods):
            self._state = CLOSED
            return []
        raise CodecError(502, "upstream_reset_before_response_complete",
                         "upstream closed connection before end of response")

    # --- llhttp callbacks ---
    # (on_status is the slot set in __init__: `self._reason.append`.)
    def on_message_begin(self) -> None:
        # Only the response whose head `_take_head` found may begin in one llhttp call.
        if not self._feeding_head:
            raise _Unsolicited()
        self._feeding_head = False

    on_header = collect_header

    def on_headers_complete(self) -> None:
        parser = self._parser
        reason_parts = self._reason
        reason = reason_parts[0] if len(reason_parts) == 1 else b"".join(reason_parts)
        reason_parts.clear()
        headers = self._headers
        self._headers = []  # trailers, if any, land here
        specials = self._specials
        version = self._version
        if version != b"1.1" and version != b"1.0":
            version = VERSIONS.get(parser.get_http_version())
            if version is None:
                raise CodecError(502, "http1.codec_error", "unsupported HTTP version")
        status = parser.get_status_code()
        if status < 100:  # llhttp reads any 3 digits; below 100 is no HTTP status (RFC 9110 §15)
            raise CodecError(502, "http1.codec_error", f"invalid status {status}")
        if self._head_len > self._max_bytes or len(headers) > self._max_count:
            check_head_limits(b"", reason, headers, self._max_bytes, self._max_count, False)
        cl, chunked, keep_alive, _, _, _ = analyze(specials, version, False)
        specials.clear()
        if status < 200 and status != 101:
            self._informational = True
            self._events.append(Informational(status, headers))
            return
        method = self._methods[0]
        events = self._events
        if status == 101 or (method == b"CONNECT" and status < 300):
            events.append(ResponseHeaders(status, reason, version, headers, keep_alive,
                                          cl, chunked))
            self._methods.pop(0)
            self._state = TUNNEL
            return
        if method == b"HEAD" or status == 204 or status == 304:
            events.append(ResponseHeaders(status, reason, version, headers, keep_alive,
                                          cl, chunked))
            self._skip_complete = True
            self._keep_alive = keep_alive
            self._complete(None)
            return
        if cl is None and not chunked:
            keep_alive = False
            self._close_delimited = True
        else:
            self._close_delimited = False
        self._keep_alive = keep_alive
        events.append(ResponseHeaders(status, reason, version, headers, keep_alive,
                                      cl, chunked))
        self._state = BODY

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif not self._skip_complete and self._state == BODY:
            trailers = self._headers
            if trailers:  # rare: the next response needs fresh lists
                self._headers = []
                self._specials.clear()
                self._complete(trailers)
            else:  # the empty list is reused as the next response's header list
                self._complete(None)

    def _complete(self, trailers: list | None) -> None:
        self._events.append(MessageComplete(trailers) if trailers else END_OF_MESSAGE)
        self._methods.pop(0)
        self._state = HEAD if self._keep_alive else CLOSED
        self._keep_alive = True


class _Unsolicited(Exception):
    """Raised inside llhttp when a new response starts that nobody asked for."""
