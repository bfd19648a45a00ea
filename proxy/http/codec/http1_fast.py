"""HTTP/1.1 server codec on httptools (llhttp), and what both llhttp codecs share: the hot
path. The client codec is in http1_fast_client.py.

llhttp runs in strict mode (no leniency flags): it rejects obs-fold, bare CR/LF, NUL and
control bytes, whitespace before the colon, duplicate Content-Length, CL+TE and malformed
chunk lines by itself; `framing.analyze` adds the rest of our policy once per message.
Per header the Python work is one `lower()`, one `rstrip()`, one append and one set lookup.

Speed notes (this is the proxy's hottest code): `on_url` / `on_status` are bound
`list.append`s (no Python frame per call; httptools looks the callbacks up once, when the
parser is built); the header lists are handed out per message and only replaced when a
message actually used them; `analyze` has a fast path for the usual framing headers;
`llhttp`'s `should_upgrade()` is only asked when an Upgrade header or CONNECT makes it
possible; and the HTTP version is read off the start line llhttp validated (httptools'
`get_http_version()` formats a str per call).

httptools gives no error offset except on upgrade: the server relies on llhttp's upgrade
pause for its offset.

Thread affinity: one codec per connection, used by the owning worker only. Must not: do
I/O, keep module-level mutable state, or forward anything from a message that errored.
"""

from __future__ import annotations

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from .encoding import ResponseEncoding
from .errors import CodecError
from .events import END_OF_MESSAGE, Data, MessageComplete, RequestHeaders
from .framing import (AWAIT_SWITCH, CLOSED, OPEN, SPECIAL, TUNNEL, VERSIONS, analyze,
                      check_head_limits, connect_authority, reject, unsupported_version)

__all__ = ["FastServerCodec", "collect_header", "llhttp_error"]


def llhttp_error(exc: Exception, is_request: bool) -> CodecError:
    """The CodecError for an httptools error (both codecs): the one our callback raised, or
    Envoy's details for llhttp's own refusal."""
    ctx = exc.__context__
    if isinstance(exc, HttpParserCallbackError) and isinstance(ctx, CodecError):
        return ctx
    msg = str(exc)
    if "Transfer-Encoding" in msg:
        if "Content-Length" in msg:
            return reject(is_request, 400, "http1.content_length_and_chunked_not_allowed", msg)
        return reject(is_request, 501, "http1.invalid_transfer_encoding", msg)
    if msg == "Invalid HTTP version":
        return unsupported_version(is_request)
    if msg == "Invalid header value char":  # NUL or another control byte (Envoy's wording)
        return reject(is_request, 400, "http1.invalid_characters", msg)
    return reject(is_request, 400, "http1.codec_error", msg)


def collect_header(self, name: bytes, value: bytes) -> None:
    """llhttp callback shared by both codecs: keep the header, and the framing-relevant ones
    apart for `analyze` (one tuple, lower-cased name, value without trailing whitespace)."""
    pair = (name.lower(), value.rstrip())
    self._headers.append(pair)
    if pair[0] in SPECIAL:
        self._specials.append(pair)


class FastServerCodec(ResponseEncoding):
    """Downstream side: parses requests (pipelined), encodes responses."""

    __slots__ = ("_parser", "_events", "_headers", "_specials", "_url", "on_url", "_max_bytes",
                 "_max_count", "head_in_progress", "_in_msg", "_head_bytes", "_feed_len", "_data",
                 "_start", "_state", "_held", "_keep_alive", "_switch", "_unanswered",
                 "_resp_body", "response_must_close", "_own_lines", "_skip_fields")

    def __init__(self, max_request_headers_kb: int = 60, max_headers_count: int = 100,
                 response_fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._set_response_fields(response_fields)
        self._events: list = []
        # Invariant at each message begin: `_headers`, `_specials` and `_url` are empty.
        self._headers: list = []
        self._specials: list = []
        self._url: list[bytes] = []   # target pieces; llhttp's on_url is its C-level append
        self.on_url = self._url.append
        self._parser = HttpRequestParser(self)
        self._max_bytes = max_request_headers_kb * 1024
        self._max_count = max_headers_count
        # A request head has begun (llhttp's message begin, its first byte) and is not
        # complete yet: the connection manager's timers for a head in progress watch this.
        self.head_in_progress = self._in_msg = self._switch = False
        self._head_bytes = self._feed_len = 0
        # `_data`: this feed's bytes while a message may still begin at their offset 0;
        # `_start`: those bytes for the message that began there (see `_request_version`).
        self._data = self._start = None
        self._state = OPEN
        self._held = b""
        self._keep_alive = True
        self._unanswered = 0
        self._resp_body = 0  # encoding._BODY_AS_IS until a response head says otherwise
        self.response_must_close = False

    # --- input ---
    def feed(self, data: bytes) -> list:
        if not data:
            return self._eof()
        state = self._state
        if state != OPEN:
            if state == TUNNEL:
                return [Data(data)]
            if state == AWAIT_SWITCH:
                self._held += data
                if len(self._held) > self._max_bytes:
                    raise CodecError(400, "http1.codec_error", "too much data before upgrade answer")
            return []
        events = self._events = []
        self._feed_len = len(data)
        self._data = None if self._in_msg else data
        try:
            self._parser.feed_data(data)
        except (HttpParserUpgrade, HttpParserError) as exc:
            self._parse_stopped(exc, data)
        if self.head_in_progress:  # a head is still incomplete: bound what we hold of it
            if self._head_bytes < 0:  # it began in this feed, after the last blank line
                i = data.rfind(b"\r\n\r\n")
                self._head_bytes = len(data) - (i + 4 if i >= 0 else 0)
            else:
                self._head_bytes += len(data)
            if self._head_bytes > 2 * self._max_bytes:
                err = CodecError(431, "http1.headers_too_large", "request head too large")
                err.parsed = events
                raise err
        return events

    def _run(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (HttpParserUpgrade, HttpParserError) as exc:
            self._parse_stopped(exc, data)

    def _parse_stopped(self, exc: Exception, data: bytes) -> None:
        """llhttp stopped inside `data`: an upgrade/CONNECT pause, or an error."""
        if isinstance(exc, HttpParserUpgrade):
            rest = data[exc.args[0]:]
            if self._state == AWAIT_SWITCH:
                self._held = rest
            elif rest and self._state == OPEN:
                self._run(rest)
            return
        if self._state == CLOSED and not self._in_msg:
            return  # bytes after a `Connection: close` request are ignored
        err = llhttp_error(exc, True)
        err.parsed = self._events
        raise err from None

    def _eof(self) -> list:
        if self._in_msg and self._state == OPEN:
            raise CodecError(400, "http1.codec_error", "downstream closed mid-request")
        return []

    def resume(self) -> list:
        """Events for bytes held while an upgrade/CONNECT request awaited its answer; call
        after `encode_response_head` of that answer."""
        held, self._held = self._held, b""
        if not held:
            return []
        if self._state == TUNNEL:
            return [Data(held)]
        if self._state == OPEN:
            return self.feed(held)
        return []

    # --- llhttp callbacks ---
    # (on_url is the slot set in __init__: `self._url.append`.)
    def on_message_begin(self) -> None:
        self.head_in_progress = self._in_msg = True
        self._head_bytes = -1
        self._start = self._data
        self._data = None

    on_header = collect_header

    def on_headers_complete(self) -> None:
        self.head_in_progress = False
        parser = self._parser
        url_parts = self._url
        url = url_parts[0] if len(url_parts) == 1 else b"".join(url_parts)
        url_parts.clear()
        version = self._request_version()
        if version is None:
            if parser.get_http_version() == "0.9":  # (also a request line with no version)
                raise CodecError(400, "http1.codec_error", "no HTTP/1.x version")
            raise unsupported_version(True)
        method = parser.get_method()
        headers = self._headers
        self._headers = []  # trailers, if any, land here
        # Raw bytes of this head <= this feed + what earlier feeds held; only if that bound
        # passes the limit is the exact header-map size worth computing.
        held = self._head_bytes
        if (self._feed_len + (held if held > 0 else 0) > self._max_bytes
                or len(headers) > self._max_count):
            check_head_limits(method, url, headers, self._max_bytes, self._max_count, True)
        specials = self._specials
        cl, chunked, keep_alive, conn_upgrade, upgrade, expect = analyze(specials, version, True)
        specials.clear()
        # An upgrade needs `Connection: upgrade` (llhttp also counts Proxy-Connection, h11 and
        # Envoy do not); llhttp only flags one for CONNECT or when an Upgrade header was present.
        if ((conn_upgrade and upgrade is not None) or method == b"CONNECT") and parser.should_upgrade():
            if cl or chunked:
                raise CodecError(400, "http1.codec_error", "upgrade/CONNECT request with a body")
            if method == b"CONNECT":
                upgrade = b"CONNECT"  # its body is the tunnel (events.RequestHeaders)
                headers = connect_authority(url, headers)
                url = b""
            self._switch = True
        else:
            upgrade = None
        self._keep_alive = keep_alive
        self._events.append(RequestHeaders(method, url, version, headers, keep_alive,
                                           upgrade, expect, cl, chunked))

    def _request_version(self) -> bytes | None:
        """The request's HTTP version. httptools' get_http_version() formats a str each call;
        when the head began at the start of a feed, its request line (which llhttp has
        validated by now) ends with ` HTTP/1.x`. The space matters: llhttp takes
        `GET /aHTTP/1.1` as an HTTP/0.9 line whose target ends in `HTTP/1.1` (refused below)."""
        start = self._start
        if start is not None:
            self._start = None
            end = start.find(b"\r\n")
            version = start[end - 9:end] if end >= 9 else b""
            if version == b" HTTP/1.1":
                return b"1.1"
            if version == b" HTTP/1.0":
                return b"1.0"
        return VERSIONS.get(self._parser.get_http_version())

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._in_msg = False
        trailers = self._headers
        if trailers:  # rare: the next message needs fresh lists
            self._headers = []
            self._specials.clear()
            self._events.append(MessageComplete(trailers))
        else:  # the empty list is reused as the next message's header list
            self._events.append(END_OF_MESSAGE)
        self._unanswered += 1
        if self._switch:
            self._switch = False
            self._state = AWAIT_SWITCH
            self._held = b""
        elif not self._keep_alive:
            self._state = CLOSED
