"""HTTP/1.1 as a ServerCodec (protocol.py): the stream view of an HTTP/1.1 message parser.

The parsers (http1_fast.FastServerCodec on httptools, http1_h11.H11ServerCodec) turn bytes into
message events and responses into bytes. This class gives their messages stream ids and
presents them one stream at a time: a pipelined request that arrives while the response
before it is being written is held (its events, and any error after it) until that stream
ends, then `resume()` delivers it. What HTTP/1.1 cannot do per stream it does per connection:
a stream reset closes the connection, a go-away makes the next response head say
`connection: close`, flow control pauses the connection's reading.

Thread affinity: one connection on one worker. Must not: call the HCM from an `encode_*`.
"""

from __future__ import annotations

from .errors import CodecError
from .events import END_OF_MESSAGE, Data, MessageComplete, RequestHeaders

__all__ = ["Http1ServerCodec"]

_NO_BODY_STATUS = (204, 304)


class Http1ServerCodec:
    __slots__ = ("parser", "transport", "callbacks", "protocol", "head_in_progress", "holding",
                 "_next_id", "_current", "_request_open", "_method", "_version", "_keep_alive",
                 "_going_away", "_held", "_dead", "_trailers")

    def __init__(self, parser, transport, callbacks, enable_trailers: bool = False) -> None:
        self.parser = parser          # FastServerCodec or H11ServerCodec
        self.transport = transport
        self.callbacks = callbacks
        self.protocol = "HTTP/1.1"  # (the ServerCodec's name; a request's version is its own)
        self.head_in_progress = False
        self.holding = False
        self._next_id = 1
        self._current = 0             # the stream being answered (0: none)
        self._request_open = False    # its request has body still to come
        self._method = self._version = b""
        self._keep_alive = True       # the current request's own keep-alive
        self._going_away = False
        self._held: list = []         # events (and a CodecError) behind the current stream
        self._dead = False            # a codec error was reported: no more input
        self._trailers = enable_trailers  # else dropped both ways, as Envoy's codec does

    # -- input --------------------------------------------------------------------------------
    def dispatch(self, data: bytes) -> None:
        if self._dead:
            return
        parser = self.parser
        try:
            events = parser.feed(data)
        except CodecError as e:
            if not data:
                return  # the peer closed mid-request: the HCM aborts what is in progress
            # Whole requests before the bad bytes are answered first, then the error in its
            # turn (a pipelining client gets each answer in order).
            events = _whole_requests(e.parsed)
            events.append(e)
        self.head_in_progress = parser.head_in_progress
        if self.holding:
            if not (self._held and isinstance(self._held[-1], CodecError)):
                self._held += events
        elif len(events) == 2 and events[1] is END_OF_MESSAGE and not self._current \
                and type(events[0]) is RequestHeaders:
            ev = events[0]  # the usual feed: one whole request
            if not ev.content_length and not ev.chunked and ev.upgrade is None:
                self._open(ev, True)  # (no body: its end is its head's)
            else:
                self._deliver(events)
        elif events:
            self._deliver(events)

    def resume(self) -> None:
        """After a stream ended: its successor's events; after an upgrade's answer: the bytes
        the parser held behind it (tunnel data after a 101, the next request after a refusal)."""
        if self.holding:
            if self._current:
                return  # the stream before them is not finished yet
            events, self._held = self._held, []
            self.holding = False
            self.transport.read_disable(False)
        else:
            try:
                events = self.parser.resume()
            except CodecError as e:
                events = _whole_requests(e.parsed) + [e]
            self.head_in_progress = self.parser.head_in_progress
        if events and not self._dead:
            self._deliver(events)

    def _deliver(self, events: list) -> None:
        cb = self.callbacks
        i = 0
        for ev in events:
            if self._dead:
                return
            cls = type(ev)
            if cls is RequestHeaders:
                if self._current:  # pipelined behind a stream still being answered
                    self._hold(events[i:])
                    return
                # RFC 9112 §6.3: neither content-length nor chunked: no body.
                self._open(ev, not ev.content_length and not ev.chunked and ev.upgrade is None)
            elif cls is Data:
                if self._current:
                    cb.on_stream_data(self._current, ev.data, False)
            elif cls is MessageComplete:
                if self._request_open:  # (a request without a body ended at its head)
                    self._request_open = False
                    if ev.trailers and self._trailers:
                        cb.on_stream_trailers(self._current, ev.trailers)
                    else:
                        cb.on_stream_data(self._current, b"", True)
            else:  # CodecError
                if self._current and not self._request_open:
                    self._hold(events[i:])  # answered after the response in progress
                    return
                self._dead = True
                cb.on_codec_error(self._current or None, ev)
            i += 1

    def _open(self, ev: RequestHeaders, end_stream: bool) -> None:
        """A new stream for the request head `ev` (it is the current one from now)."""
        sid = self._current = self._next_id
        self._next_id = sid + 1
        self._method = ev.method
        self._version = ev.http_version
        self._keep_alive = ev.keep_alive
        self._request_open = not end_stream
        self.callbacks.on_stream_headers(sid, ev, end_stream)

    def _hold(self, events: list) -> None:
        """Keep `events` until the current stream ends; read no more meanwhile."""
        self._held = events
        if not self.holding:
            self.holding = True
            self.transport.read_disable(True)

    # -- output -------------------------------------------------------------------------------
    def _head(self, stream_id: int, status: int, headers, end_stream: bool) -> bytes:
        if stream_id != self._current:  # a reply to a request whose head never parsed
            return self.parser.encode_response_head(status, None, headers, b"", b"1.1", False)
        if end_stream and status >= 200 and status not in _NO_BODY_STATUS and \
                self._method != b"HEAD":
            for name, _ in headers:
                if name == b"content-length":
                    break
            else:
                # A headers-only response: as Envoy's HTTP/1 codec, say there is no body
                # instead of sending an empty chunked one.
                headers.append((b"content-length", b"0"))
        return self.parser.encode_response_head(status, None, headers, self._method, self._version,
                                                self._keep_alive and not self._going_away)

    def encode_continue(self, stream_id: int) -> None:
        self.transport.write(self.parser.encode_continue())

    def encode_headers(self, stream_id: int, status: int, headers, end_stream: bool) -> None:
        data = self._head(stream_id, status, headers, end_stream)
        if end_stream:
            data += self.parser.encode_end(None)
        self.transport.write(data)

    def encode_response(self, stream_id: int, status: int, headers, body: bytes) -> None:
        if stream_id != self._current:  # a reply to a request whose head never parsed
            data = self.parser.encode_whole_response(status, headers, b"", b"1.1", False, body)
        else:
            data = self.parser.encode_whole_response(status, headers, self._method, self._version,
                                                     self._keep_alive and not self._going_away,
                                                     body)
        self.transport.write(data)

    def encode_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        parser = self.parser
        out = parser.encode_body(data) if data else b""
        if end_stream:
            out += parser.encode_end(None)
        if out:
            self.transport.write(out)

    def encode_trailers(self, stream_id: int, trailers) -> None:
        last = self.parser.encode_end(trailers if self._trailers else None)
        if last:
            self.transport.write(last)

    # -- stream and connection control ------------------------------------------------------
    def reset_stream(self, stream_id: int) -> bool:
        return False  # HTTP/1.1 has no stream reset: the connection closes

    def go_away(self) -> None:
        self._going_away = True

    def abandon_request(self, stream_id: int) -> None:
        """The stream's response ends it before its request was read to the end: the rest of
        the request will not be read, so the connection closes after this response."""
        self._going_away = True

    def read_disable_stream(self, stream_id: int, disable: bool) -> None:
        self.transport.read_disable(disable)

    def stream_ended(self, stream_id: int) -> bool:
        if stream_id != self._current:
            return True
        self._current = 0
        # `connection: close` went out, or the rest of the request will not be read: the
        # connection closes, and nothing more is read from it.
        if self.parser.response_must_close or self._request_open:
            self._dead = True
            return True
        return False


def _whole_requests(events: list) -> list:
    """`events` up to the end of the last whole request among them."""
    for i in range(len(events) - 1, -1, -1):
        if type(events[i]) is MessageComplete:
            return events[:i + 1]
    return []
