"""HTTP/2 as a ServerCodec (protocol.py): cleartext with prior knowledge (h2c, the client's
connection preface chooses it: codec_type AUTO or HTTP2), or ALPN "h2" over TLS.

The protocol engine (frames, stream states, windows, header validation) is
http2_frames.ServerConnection, our own; `engine="h2"` (FTPROXY_H2_CODEC=h2, see
hcm_factory) puts the `h2` library there instead (http2_h2_engine.H2Engine), the reference
the tests run this codec against as well. Everything below talks to the engine only through
its calls and event tuples.

Streams are HTTP/2's own: each request's HEADERS opens one (`on_stream_headers`), its DATA and
trailers follow, RST_STREAM from the client ends that stream alone (`on_stream_reset`), and a
stream the HCM resets gets RST_STREAM; the connection goes on. Requests are translated to what
the HCM reads for HTTP/1.1: `:method`, `:path`, and `host` from `:authority`; cookie crumbs
joined with "; " (RFC 9113 §8.2.3). The engine validates inbound headers (pseudo-headers,
connection-specific fields, upper-case names): a request it refuses is a connection error (GOAWAY), as
Envoy's default (`stream_error_on_invalid_http_messaging` false). Responses drop the fields
HTTP/2 forbids (connection, keep-alive, transfer-encoding, upgrade, proxy-connection).

Flow control tied to consumption: a stream's DATA is acknowledged (its window opened) when
`on_stream_data` has handed it on, unless the HCM read-disabled the stream (its upstream is
slow): then when it is re-enabled. Outbound DATA respects the peer's windows; what does not
fit waits per stream for WINDOW_UPDATE. A stream whose waiting bytes pass the connection's
buffer limit (per_connection_buffer_limit_bytes, Envoy's per-stream limit too) tells the HCM
(`on_stream_watermark(sid, True)`: its upstream stops being read), and again once they fall to
half of it (False), as Envoy's stream write-buffer watermarks: a client that reads slowly holds
back its own stream's upstream, not the others, and the proxy's memory stays bounded.
`max_concurrent_streams` past the limit: REFUSED_STREAM.

Thread affinity: one connection on one worker. Must not: call the HCM from an `encode_*`,
except `on_stream_watermark` (as a transport's watermark callbacks, which only pause or resume
reading).
"""

from __future__ import annotations


from collections import deque

from .errors import CodecError
from .events import RequestHeaders
from .http2_frames import (ENHANCE_YOUR_CALM, EV_DATA, EV_GOAWAY, EV_PING_ACK, EV_PRIORITY,
                           EV_REQUEST, EV_RESET, EV_TRAILERS, EV_WINDOW, INTERNAL_ERROR,
                           NO_ERROR, PREFACE, PROTOCOL_ERROR, REFUSED_STREAM, H2ProtocolError,
                           ServerConnection)

__all__ = ["Http2ServerCodec", "Http2Options", "Http2CodecStats", "PREFACE", "PREMATURE_RESET_MIN",
           "ENGINES"]

# The protocol engines: ours (the hot path) and the h2 library's (the reference).
ENGINES = ("fast", "h2")
_ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
                4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
                7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
                11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def make_engine(engine: str, options: "Http2Options"):
    args = (options.initial_stream_window_size, options.initial_connection_window_size,
            options.max_header_list_bytes, options.hpack_table_size, options.allow_connect)
    if engine == "fast":
        return ServerConnection(*args)
    if engine == "h2":
        from .http2_h2_engine import H2Engine
        return H2Engine(*args)
    raise ValueError(f"unknown HTTP/2 engine {engine!r} (expected 'fast' or 'h2')")

# Rapid reset (CVE-2023-44487): once a connection has opened this many streams, if the client
# reset at least half of them before their response started, the connection is closed with
# GOAWAY(ENHANCE_YOUR_CALM). Envoy's rule (its runtime default is 500 streams; 100 here acts
# sooner on a single worker).
PREMATURE_RESET_MIN = 100

# Fields a response must not carry over HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade"})


class Http2Options:
    """The HCM's http2_protocol_options that the codec honours (Envoy's defaults)."""

    __slots__ = ("max_concurrent_streams", "initial_stream_window_size",
                 "initial_connection_window_size", "max_header_list_bytes", "hpack_table_size",
                 "max_outbound_frames", "max_outbound_control_frames",
                 "max_consecutive_inbound_frames_with_empty_payload",
                 "max_inbound_priority_frames_per_stream",
                 "max_inbound_window_update_frames_per_data_frame_sent", "allow_connect")

    def __init__(self, max_concurrent_streams: int = 2147483647,
                 initial_stream_window_size: int = 268435456,
                 initial_connection_window_size: int = 268435456,
                 max_header_list_bytes: int = 60 * 1024, hpack_table_size: int = 4096,
                 max_outbound_frames: int = 10000, max_outbound_control_frames: int = 1000,
                 max_consecutive_inbound_frames_with_empty_payload: int = 1,
                 max_inbound_priority_frames_per_stream: int = 100,
                 max_inbound_window_update_frames_per_data_frame_sent: int = 10,
                 allow_connect: bool = False) -> None:
        # Extended CONNECT (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL is sent, and a CONNECT
        # with :protocol is taken as that upgrade (WebSocket over HTTP/2: an HTTP/1.1 Upgrade
        # for the router, its 101 answered 200). Plain CONNECT is taken either way (as Envoy).
        self.allow_connect = allow_connect
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_stream_window_size = initial_stream_window_size
        self.initial_connection_window_size = initial_connection_window_size
        # The HCM's max_request_headers_kb: a header block decoding to more (an HPACK bomb
        # too) is a connection error; h2 bounds the CONTINUATION frames of one block itself.
        self.max_header_list_bytes = max_header_list_bytes
        self.hpack_table_size = hpack_table_size  # our decoder's dynamic table (SETTINGS)
        # Envoy's flood limits (each breach closes the connection, counted in http2.*).
        self.max_outbound_frames = max_outbound_frames
        self.max_outbound_control_frames = max_outbound_control_frames
        self.max_consecutive_inbound_frames_with_empty_payload = \
            max_consecutive_inbound_frames_with_empty_payload
        self.max_inbound_priority_frames_per_stream = max_inbound_priority_frames_per_stream
        self.max_inbound_window_update_frames_per_data_frame_sent = \
            max_inbound_window_update_frames_per_data_frame_sent


class Http2CodecStats:
    """Envoy's `http2.*` codec stats of the downstream connections (one per worker; the HCM
    makes it from its worker's store, scope `http2`)."""

    __slots__ = ("rx_reset", "tx_reset", "trailers", "header_overflow", "rx_messaging_error",
                 "inbound_empty_frames_flood", "inbound_priority_frames_flood",
                 "inbound_window_update_frames_flood", "outbound_flood", "outbound_control_flood",
                 "keepalive_timeout")

    def __init__(self, scope) -> None:
        for name in self.__slots__:
            setattr(self, name, scope.counter(name))


_CONTROL_FRAMES = frozenset({3, 4, 6, 7})  # RST_STREAM, SETTINGS, PING, GOAWAY


class _Stream:
    __slots__ = ("request_open", "disabled", "unacked", "pending", "queued", "above",
                 "pending_end", "trailers", "responded", "extended_connect", "reset_after")

    def __init__(self, request_open: bool) -> None:
        self.request_open = request_open  # DATA or trailers of its request still to come
        self.extended_connect = False     # an RFC 8441 CONNECT: its 101 is answered 200
        self.responded = False            # its response head went out
        self.disabled = 0                 # read_disable count
        self.unacked = 0                  # DATA bytes handed on while disabled
        self.pending: deque | None = None  # response bytes waiting for window (never empty)
        self.queued = 0                   # ... how many
        self.above = False                # ... past the high watermark: the HCM was told
        self.pending_end = False          # ... and the end of the response after them
        self.trailers = None              # ... or trailers after them
        self.reset_after = False          # RST_STREAM(NO_ERROR) once they went out


class Http2ServerCodec:
    protocol = "HTTP/2"
    head_in_progress = False  # a HEADERS frame carries a whole head
    holding = False           # streams run side by side: nothing waits behind another

    def __init__(self, transport, callbacks, options: Http2Options | None = None,
                 response_fields: tuple[tuple[bytes, bytes], ...] = (),
                 stats: Http2CodecStats | None = None, engine: str = "fast") -> None:
        self.transport = transport
        self.callbacks = callbacks
        self.stream_limit = getattr(transport, "limit", 1024 * 1024)  # the stream's high watermark
        self.stats = stats
        self.options = options = options or Http2Options()
        self.response_fields = response_fields
        self._own = frozenset(n for n, _ in response_fields) | _CONNECTION_SPECIFIC
        # SETTINGS_MAX_CONCURRENT_STREAMS goes out unbounded: the limit is enforced here
        # (REFUSED_STREAM), as Envoy does.
        self.conn = make_engine(engine, options)
        self.streams: dict[int, _Stream] = {}
        # Streams the HCM is done with whose last response bytes wait for the peer's window.
        self.flushing: dict[int, _Stream] = {}
        self.going_away = False
        self.dead = False
        self.opened = 0                   # streams this connection opened
        self.premature_resets = 0         # ... that the client reset before their response
        # Flood accounting (Envoy's limits): inbound frames of each suspicious kind, our DATA
        # frames sent, and frames queued while earlier output still waits for the socket.
        self.empty_frames = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.queued_frames = 0
        self.queued_control = 0
        # connection_keepalive's timers (h2_keepalive.Keepalive), attached by whoever made this
        # codec when the options ask for it; this codec only sends and hears the PINGs.
        self.keepalive = None
        self._flush()

    def send_ping(self, payload: bytes) -> None:
        self.conn.ping(payload)
        self._flush()

    def on_keepalive_timeout(self) -> None:
        """A keepalive PING went unanswered: the connection closes (Envoy: no flush)."""
        if self.stats is not None:
            self.stats.keepalive_timeout.value += 1
        self.dead = True
        self.transport.close(flush=False)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            transport = self.transport
            if transport.buffered_bytes:
                # The peer is not reading what we sent: count the frames piling up.
                self._count_queued(data)
            else:
                self.queued_frames = self.queued_control = 0
            transport.write(data)

    def _count_queued(self, data: bytes) -> None:
        frames = control = i = 0
        n = len(data)
        while i + 9 <= n:
            frames += 1
            if data[i + 3] in _CONTROL_FRAMES:
                control += 1
            i += 9 + int.from_bytes(data[i:i + 3], "big")
        self.queued_frames += frames
        self.queued_control += control
        options = self.options
        if self.queued_control > options.max_outbound_control_frames:
            self._flood("outbound_control_flood", "too many control frames queued for a peer "
                                                  "that does not read them", goaway=False)
        elif self.queued_frames > options.max_outbound_frames:
            self._flood("outbound_flood", "too many frames queued for a peer that does not "
                                          "read them", goaway=False)

    def _flood(self, stat: str, text: str, goaway: bool = True) -> None:
        """A flood limit was passed: the connection ends (GOAWAY ENHANCE_YOUR_CALM when it can
        still be written), counted in http2.<stat>."""
        if self.dead:
            return
        self.dead = True
        if self.stats is not None:
            getattr(self.stats, stat).value += 1
        if goaway:
            self.conn.close_connection(ENHANCE_YOUR_CALM)
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)
        self.callbacks.on_codec_error(None, CodecError(0, f"http2.{stat}", text))

    # -- input --------------------------------------------------------------------------------
    def dispatch(self, data: bytes) -> None:
        if self.dead or not data:
            return  # (the peer's FIN: the HCM ends what is in progress)
        try:
            events = self.conn.receive_data(data)
        except H2ProtocolError as e:
            self.dead = True
            if self.stats is not None:
                stat = self.stats.header_overflow if "header list" in str(e).lower() else \
                    self.stats.rx_messaging_error
                stat.value += 1
            self._flush()  # the engine queued the GOAWAY
            self.callbacks.on_codec_error(None, CodecError(0, "http2.protocol_error", str(e)))
            return
        cb = self.callbacks
        streams = self.streams
        for ev in events:
            kind = ev[0]
            if kind == EV_DATA:
                _, sid, body, flow, end = ev
                st = streams.get(sid)
                if body:
                    self.empty_frames = 0
                elif not end:
                    self.empty_frames += 1
                    if self.empty_frames > self.options.max_consecutive_inbound_frames_with_empty_payload:
                        self._flood("inbound_empty_frames_flood", "too many consecutive frames "
                                                                  "with an empty payload")
                        return
                if st is None:
                    self.conn.acknowledge_received_data(flow, sid)
                    continue
                if end:
                    st.request_open = False
                cb.on_stream_data(sid, body, end)
                if st.disabled and sid in streams:
                    st.unacked += flow  # acknowledged when re-enabled
                else:
                    self._ack(sid, flow)
            elif kind == EV_REQUEST:
                self._request(ev[1], ev[2], ev[3])
            elif kind == EV_TRAILERS:
                if self.stats is not None:
                    self.stats.trailers.value += 1
                st = streams.get(ev[1])
                if st is not None and st.request_open:
                    st.request_open = False
                    cb.on_stream_trailers(ev[1], list(ev[2]))
            elif kind == EV_RESET:
                _, sid, code, remote = ev
                if self.stats is not None and remote:
                    self.stats.rx_reset.value += 1
                self.flushing.pop(sid, None)
                st = streams.get(sid)
                if st is not None and not st.responded:
                    self.premature_resets += 1
                    if (self.opened >= PREMATURE_RESET_MIN
                            and self.premature_resets * 2 >= self.opened):
                        self._rapid_reset()
                        return
                if streams.pop(sid, None) is not None:
                    # A known code by its name, an unknown one as its number.
                    cb.on_stream_reset(sid, _ERROR_NAMES.get(code, str(code)))
            elif kind == EV_WINDOW:
                self.window_updates += 1
                # Envoy's bound: 5 + 2 x (streams opened + the limit x DATA frames sent).
                if self.window_updates > 5 + 2 * (self.opened + self.options.
                                                  max_inbound_window_update_frames_per_data_frame_sent
                                                  * self.data_frames_sent):
                    self._flood("inbound_window_update_frames_flood",
                                "too many WINDOW_UPDATE frames for the DATA frames sent")
                    return
                self._send_pending(ev[1])
            elif kind == EV_PRIORITY:
                self.priority_frames += 1
                if self.priority_frames > self.options.max_inbound_priority_frames_per_stream * (
                        1 + self.opened):
                    self._flood("inbound_priority_frames_flood", "too many PRIORITY frames")
                    return
            elif kind == EV_GOAWAY:
                self.going_away = True  # the client opens no new streams
            elif kind == EV_PING_ACK:
                if self.keepalive is not None:
                    self.keepalive.on_ack()
        self._flush()

    def _ack(self, sid: int, n: int) -> None:
        """Open the windows by `n` consumed bytes (the engine updates only the connection's
        for a stream that closed meanwhile)."""
        if n:
            self.conn.acknowledge_received_data(n, sid)

    def _request(self, sid: int, fields, end: bool) -> None:
        if len(self.streams) >= self.options.max_concurrent_streams or self.going_away:
            self.conn.reset_stream(sid, REFUSED_STREAM)
            return
        method = path = authority = protocol = None
        headers: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] | None = None
        content_length = None
        has_host = False
        for field in fields:
            name = field[0]
            if name[0] == 0x3A:  # ":"
                if name == b":method":
                    method = field[1]
                elif name == b":path":
                    path = field[1]
                elif name == b":authority":
                    authority = field[1]
                elif name == b":protocol":
                    protocol = field[1]
                continue
            if name == b"cookie":
                if cookies is None:
                    cookies = [field[1]]
                else:
                    cookies.append(field[1])
                continue
            if name == b"content-length":
                value = field[1]
                content_length = int(value) if value.isdigit() else None
            elif name == b"host":
                has_host = True
            headers.append(field)
        if cookies is not None:
            headers.append((b"cookie", b"; ".join(cookies)))
        if authority is not None and not has_host:
            headers.insert(0, (b"host", authority))
        upgrade = None
        if method == b"CONNECT":
            if protocol is not None:
                # RFC 8441 (the engine checked :scheme and :path): Envoy's H2-to-H1 upgrade translation,
                # a GET asking to upgrade to :protocol.
                if not self.options.allow_connect:
                    if self.stats is not None:
                        self.stats.rx_messaging_error.value += 1
                    self.conn.reset_stream(sid, PROTOCOL_ERROR)
                    return
                method = b"GET"
                upgrade = protocol
                headers += [(b"upgrade", protocol), (b"connection", b"upgrade")]  # (Envoy's order)
            elif authority is None:
                if self.stats is not None:
                    self.stats.rx_messaging_error.value += 1
                self.conn.reset_stream(sid, PROTOCOL_ERROR)
                return
            else:
                # RFC 9113 §8.5 (the engine checked :scheme and :path are absent): the target is
                # :authority; DATA frames carry the tunnel's bytes, END_STREAM its half-close.
                path = b""
                upgrade = b"CONNECT"
        elif method is None or path is None:  # (the engine refuses such a request already)
            self.conn.reset_stream(sid, PROTOCOL_ERROR)
            return
        st = self.streams[sid] = _Stream(not end)
        if protocol is not None:
            st.extended_connect = True
        self.opened += 1
        head = RequestHeaders(method, path, b"2", headers, True, upgrade, False, content_length,
                              False)
        self.callbacks.on_stream_headers(sid, head, end)

    def _rapid_reset(self) -> None:
        self.dead = True
        self.conn.close_connection(ENHANCE_YOUR_CALM)
        self._flush()
        self.callbacks.on_codec_error(None, CodecError(
            0, "http2.too_many_premature_resets",
            f"{self.premature_resets} of {self.opened} streams reset before their response"))

    def resume(self) -> None:
        pass  # nothing is ever held behind another stream

    # -- output -------------------------------------------------------------------------------
    def _response_headers(self, status: int, headers) -> list[tuple[bytes, bytes]]:
        own = self._own
        out = [(b":status", b"%d" % status)]
        out += [f for f in headers if f[0] not in own]
        out += self.response_fields
        return out

    def encode_continue(self, stream_id: int) -> None:
        if stream_id in self.streams:
            self.conn.send_headers(stream_id, [(b":status", b"100")])
            self._flush()

    def encode_headers(self, stream_id: int, status: int, headers, end_stream: bool) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        st.responded = True
        if status == 101 and st.extended_connect:
            status = 200  # Envoy's H1-to-H2 upgrade answer (RFC 8441 §5)
        self.conn.send_headers(stream_id, self._response_headers(status, headers), end_stream)
        self._flush()

    def encode_response(self, stream_id: int, status: int, headers, body: bytes) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        st.responded = True
        self.conn.send_headers(stream_id, self._response_headers(status, headers), not body)
        if body:
            self._send(stream_id, body, True)
        self._flush()

    def encode_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id not in self.streams:
            return
        self._send(stream_id, data, end_stream)
        self._flush()

    def encode_trailers(self, stream_id: int, trailers) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        fields = [f for f in (trailers or []) if f[0] not in _CONNECTION_SPECIFIC]
        if st.pending:
            st.trailers = fields
            return
        self._send_trailers(stream_id, fields)
        self._flush()

    def _send_trailers(self, stream_id: int, fields) -> None:
        if fields:
            self.conn.send_headers(stream_id, fields, end_stream=True)
        else:
            self.conn.end_stream(stream_id)

    def _send(self, sid: int, data: bytes, end: bool) -> None:
        """DATA within the peer's windows; the rest waits on the stream for WINDOW_UPDATE."""
        st = self.streams.get(sid) or self.flushing[sid]
        if st.pending is not None:
            if data:
                self._queue(sid, st, data)
            st.pending_end = st.pending_end or end
            return
        conn = self.conn
        size = conn.max_outbound_frame_size
        n = len(data)
        if 0 < n <= size and n <= conn.local_flow_control_window(sid):
            conn.send_data(sid, data, end_stream=end)  # the usual body: one frame, no copy
            self.data_frames_sent += 1
            return
        view = memoryview(data)
        while view:
            room = min(conn.local_flow_control_window(sid), size)
            if room <= 0:
                st.pending = deque()
                st.pending_end = end
                self._queue(sid, st, view)
                return
            chunk = view[:room]
            view = view[room:]
            conn.send_data(sid, bytes(chunk), end_stream=end and not view)
            self.data_frames_sent += 1
        if end and not data:
            conn.end_stream(sid)

    def _queue(self, sid: int, st: _Stream, data) -> None:
        st.pending.append(data)
        st.queued += len(data)
        if not st.above and st.queued > self.stream_limit and sid in self.streams:
            st.above = True
            self.callbacks.on_stream_watermark(sid, True)

    def _send_pending(self, sid: int) -> None:
        if sid:
            targets = [sid]
        else:
            targets = [s for s, st in self.streams.items() if st.pending]
            targets += [s for s, st in self.flushing.items() if st.pending]
        for s in targets:
            st = self.streams.get(s) or self.flushing.get(s)
            if st is not None and st.pending:
                self._drain(s, st)

    def _drain(self, sid: int, st: _Stream) -> None:
        """Send what waits on the stream as far as the windows allow; then its end (with the
        trailers, if any) once nothing waits."""
        conn = self.conn
        size = conn.max_outbound_frame_size
        pending = st.pending
        while pending:
            room = min(conn.local_flow_control_window(sid), size)
            if room <= 0:
                break
            chunk = pending[0]
            if len(chunk) > room:
                conn.send_data(sid, bytes(chunk[:room]), end_stream=False)
                pending[0] = memoryview(chunk)[room:]
                st.queued -= room
            else:
                pending.popleft()
                st.queued -= len(chunk)
                conn.send_data(sid, bytes(chunk),
                               end_stream=not pending and st.pending_end and st.trailers is None)
            self.data_frames_sent += 1
        if st.above and st.queued <= self.stream_limit // 2:
            st.above = False
            if sid in self.streams:
                self.callbacks.on_stream_watermark(sid, False)
        if pending:
            return
        st.pending = None
        st.pending_end = False
        trailers, st.trailers = st.trailers, None
        if trailers is not None:
            self._send_trailers(sid, trailers)
        if sid in self.flushing:
            del self.flushing[sid]
            if st.reset_after:
                self._reset_no_error(sid)

    # -- stream and connection control ------------------------------------------------------
    def reset_stream(self, stream_id: int) -> bool:
        if self.streams.pop(stream_id, None) is not None:
            if self.stats is not None:
                self.stats.tx_reset.value += 1
            try:
                self.conn.reset_stream(stream_id, INTERNAL_ERROR)
            except H2ProtocolError:
                pass  # already closed on the wire
            self._flush()
        return True

    def go_away(self) -> None:
        """GOAWAY(NO_ERROR) naming the last stream taken: those go on to their end, new ones
        are refused. Written beside the engine: h2's close_connection() would also end the
        streams in flight (it takes no more frames to send)."""
        if not self.going_away:
            self.going_away = True
            self._flush()
            self.transport.write(self.conn.goaway_frame(NO_ERROR))

    def _reset_no_error(self, stream_id: int) -> None:
        try:
            self.conn.reset_stream(stream_id, NO_ERROR)
        except H2ProtocolError:
            pass  # the request ended meanwhile: the stream is closed

    def abandon_request(self, stream_id: int) -> None:
        pass  # stream_ended resets a request not read to its end (NO_ERROR)

    def read_disable_stream(self, stream_id: int, disable: bool) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        if disable:
            st.disabled += 1
        elif st.disabled:
            st.disabled -= 1
            if not st.disabled and st.unacked:
                n, st.unacked = st.unacked, 0
                self._ack(stream_id, n)
                self._flush()

    def stream_ended(self, stream_id: int) -> bool:
        st = self.streams.pop(stream_id, None)
        if st is not None:
            if st.pending:
                self.flushing[stream_id] = st  # its last bytes go as the window opens
                st.above = False  # (the HCM is done with it: no more watermark calls)
            if st.request_open:
                # The response ended the stream before its request did (RFC 9113 §8.1):
                # RST_STREAM(NO_ERROR) once the whole response went out.
                if st.pending:
                    st.reset_after = True
                else:
                    self._reset_no_error(stream_id)
            if st.unacked:  # the connection's window gets them back
                self._ack(stream_id, st.unacked)
            self._flush()
        return self.going_away and not self.streams and not self.flushing
