"""Upstream HTTP/2 connection (h2c with prior knowledge, or h2 over TLS: offered as ALPN "h2"
when the TLS context sets no alpn_protocols): one client Connection carrying many streams,
with the `h2` library as its frame layer. A mixed pool (auto_config) makes one with `adopt()`
on a connection whose TLS handshake negotiated "h2" (alpn_client_connection.py).

A `PoolConnection` (codec/client_protocol.py) whose capacity is min(the peer's
SETTINGS_MAX_CONCURRENT_STREAMS, the cluster's max_concurrent_streams) minus its open streams
(the configured value until the peer's SETTINGS arrive); each request is an `Http2Stream`
(UpstreamStream). It lives beside codec_client.py (HTTP/1.1's shell), not in codec/, because it
owns a socket and a clock; the sans-I/O part is h2 and codec/http2_client.py.

Behaviour, as Envoy's HTTP/2 client codec:
- a request becomes :method, :scheme (http), :authority, :path and its headers less the
  connection-specific ones (`te` only as "trailers"); trailers go as a HEADERS frame;
- an upgrade request (HTTP/1.1 `Upgrade`) goes as an extended CONNECT (RFC 8441, `:protocol`)
  and the host's 200 reaches the router as a 101 (Envoy's H1<->H2 upgrade translation); only
  the client's half-close ends such a stream;
- a response head reaches the router as ResponseHeaders(http_version=b"2"); a response that
  arrived whole in one read is handed over in one on_upstream_headers(ev, body) call;
- flow control: the connection window is returned as DATA arrives (a held stream's bytes are
  bounded by its own window), a stream's window once its holder took the bytes (its callback
  returned) and it is not read-disabled: a slow downstream stalls only its stream. What does
  not fit the peer's windows waits for its WINDOW_UPDATE;
- RST_STREAM from the peer ends that stream alone ("remote reset", UR; REFUSED_STREAM:
  "remote refused stream reset", UR); reset() sends RST_STREAM(CANCEL) for that stream;
  GOAWAY: capacity 0, streams above last_stream_id are refused ("remote refused stream
  reset"; retriable, as a stale HTTP/1.1 keep-alive connection's request, when the connection
  had served streams before), the connection closes once idle; a protocol error from the peer closes the connection (UPE, as HTTP/1's).
States (`state`, client_protocol's): CONNECTING -> READY <-> BUSY -> CLOSED (the pool moves it).
Thread affinity: the worker that owns its pool. Must not: block, or touch a stream after it
told its holder the stream ended.
"""

from __future__ import annotations

import socket
import time

from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, InformationalResponseReceived,
                       PingAckReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded, StreamReset,
                       TrailersReceived, WindowUpdated)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

from ..network.address import format_address
from ..network.connection import CloseReason, Connection, ConnectionCallbacks
from .codec.client_protocol import CLOSED, CONNECTING, PoolConnectionPredicates
from .h2_keepalive import Keepalive
from .codec_client import lost_stream_reset, transport_failure
from .codec.http2_client import (checked_fields, extended_connect_fields, new_client_connection,
                                 request_fields, response_headers, trailer_fields,
                                 upgrade_response)

__all__ = ["Http2ClientConnection", "Http2Stream", "HTTP2"]

HTTP2 = "h2"  # the ALPN name; the pool's protocol key

_PEER_UNLIMITED = 2**31 - 1

# A stream's states (its one `state` field): IDLE (handed out, no HEADERS sent) -> OPEN (HEADERS
# sent) -> DONE (released, reset by either side, or ended with its connection: no callbacks).
IDLE, OPEN, DONE = 0, 1, 2


class Http2Stream:
    """One request/response exchange: the UpstreamStream the router holds."""

    __slots__ = ("conn", "id", "callbacks", "reused", "state", "local_ended", "remote_ended",
                 "response_started", "paused", "held", "unacked", "out", "out_bytes",
                 "out_end", "out_trailers", "above_watermark", "upgrade")

    def __init__(self, conn: Http2ClientConnection, callbacks, reused: bool) -> None:
        self.conn = conn
        self.id = 0                   # given at send_headers (ids must grow on the wire)
        self.callbacks = callbacks
        self.reused = reused          # the connection had streams before this one
        self.state = IDLE
        self.local_ended = False      # the request's end is queued (END_STREAM sent or waiting)
        self.remote_ended = False     # the response ended
        self.response_started = False
        self.paused = 0               # read_disable count
        self.held: list = []          # h2 events that arrived while paused
        self.unacked = 0              # bytes taken by the holder, stream window not yet returned
        self.out: list[bytes] = []    # request body waiting for the peer's window
        self.out_bytes = 0
        self.out_end = False          # END_STREAM waits behind `out`
        self.out_trailers = None      # ... as these trailers
        self.above_watermark = False
        self.upgrade = None           # an HTTP/1.1 upgrade sent as extended CONNECT: its token

    # -- UpstreamStream ---------------------------------------------------------------------
    @property
    def local_address(self) -> str:
        return self.conn.connection.local_address

    @property
    def ssl(self):
        """What the connection's TLS handshake established (TlsInfo), None for plaintext."""
        return self.conn.connection.transport_socket.ssl()

    def send_headers(self, head, end_stream: bool, upgrade: bool) -> None:
        """`upgrade`: HTTP/2 has no Upgrade (RFC 9113 §8.6): an upgrade request goes as an
        extended CONNECT (RFC 8441, `:protocol` its Upgrade token) and the host's 200 reaches
        the router as a 101, as Envoy's codec does it (whether or not the host announced
        SETTINGS_ENABLE_CONNECT_PROTOCOL: Envoy 1.40 does not wait for it either); a CONNECT
        goes as a CONNECT."""
        if self.state != IDLE:
            return
        if upgrade and head.method != b"CONNECT":
            self.upgrade = head.headers.get(b"upgrade")
        self.conn._open_stream(self, head, end_stream)

    def send_data(self, data: bytes) -> None:
        if data and self.state == OPEN and not self.local_ended:
            self.out.append(data)
            self.out_bytes += len(data)
            self.conn._send_pending(self)

    def end(self, trailers) -> None:
        if self.upgrade is None:
            self._end(trailers)
        # (An upgrade request's end, right after its head, is not the tunnel's: as over
        # HTTP/1.1, only the client's half-close ends it, shutdown_write.)

    def _end(self, trailers) -> None:
        if self.state != OPEN or self.local_ended:
            return
        self.local_ended = True
        self.out_end = True
        self.out_trailers = trailers or None
        self.conn._send_pending(self)

    def shutdown_write(self) -> None:
        self._end(None)

    def read_disable(self, disable: bool) -> None:
        self.paused += 1 if disable else -1
        if self.paused or self.state == DONE:
            return
        if self.held:
            self.conn._deliver_held(self)
        if self.state != DONE and self.unacked:
            self.conn._ack_stream(self)

    def release(self, reusable: bool) -> None:
        if self.state == DONE:
            return
        cancel = self.state == OPEN and not (self.local_ended and self.remote_ended
                                             and not self.out_bytes and not self.out_end)
        self.conn._stream_done(self, cancel)

    def reset(self) -> None:
        if self.state == DONE:
            return
        self.conn._stream_done(self, self.state == OPEN)


class Http2ClientConnection(PoolConnectionPredicates, ConnectionCallbacks):
    """PoolConnection carrying up to min(peer's, configured) concurrent streams."""

    cx_total_stat = "upstream_cx_http2_total"
    alpn = (HTTP2,)  # offered over TLS when the context configures none (Envoy's fallback)

    def __init__(self, pool, dispatcher, address: tuple[str, int], connect_timeout: float,
                 buffer_limit: int, codec_impl: str, conn_id: int, transport_factory) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(dispatcher, transport_factory.create(sock, pool.host.hostname, self.alpn),
                                self, buffer_limit=buffer_limit,
                                remote_address=format_address(address), conn_id=conn_id)
        self._setup(pool, connection, buffer_limit, time.monotonic())
        connection.connect(address, connect_timeout)

    @classmethod
    def adopt(cls, pool, connection: Connection, buffer_limit: int, codec_impl: str,
              connect_started: float) -> Http2ClientConnection:
        """The seam of a mixed (ALPN) pool (alpn_client_connection.py): a connection of this
        class on `connection`, whose transport is connected (ALPN chose h2). It becomes the
        connection's callbacks; its `on_connected()` (the connection preface) is called next,
        by its maker."""
        self = cls.__new__(cls)
        self._setup(pool, connection, buffer_limit, connect_started)
        connection.callbacks = self
        return self

    def _setup(self, pool, connection: Connection, buffer_limit: int, connect_started: float) -> None:
        self.pool = pool
        self.connection = connection
        opts = pool.cluster.config.http2
        self.max_streams = opts.max_concurrent_streams
        self.stream_window = opts.initial_stream_window_size
        self.connection_window = opts.initial_connection_window_size
        self.buffer_limit = buffer_limit
        self.stats = pool.cluster.stats
        self.h2 = new_client_connection()
        self.state = CONNECTING
        self.peer_max_streams = _PEER_UNLIMITED
        self.capacity = self.max_streams
        self.active_streams = 0
        self.total_streams = 0
        self.idle_since = 0.0
        self.holds_slot = False
        self.streams: dict[int, Http2Stream] = {}   # OPEN streams by id
        self.going_away = False
        self.conn_unacked = 0                        # connection window not yet returned
        self.close_reason = None  # (reason, flag, status) for its streams when we close it
        self.connect_started = connect_started
        self.keepalive_settings = opts.connection_keepalive
        self.allow_connect = opts.allow_connect
        self.keepalive: Keepalive | None = None

    # -- PoolConnection ---------------------------------------------------------------------
    def new_stream(self, callbacks) -> Http2Stream:
        ka = self.keepalive
        if ka is not None and not self.active_streams and ka.settings.idle_interval and \
                time.monotonic() - self.idle_since > ka.settings.idle_interval:
            ka.ping()  # idle for connection_idle_interval: is the peer still there?
        s = Http2Stream(self, callbacks, reused=self.total_streams > 0)
        self.active_streams += 1
        self.total_streams += 1
        self._update_capacity()
        return s

    def close(self) -> None:
        self.connection.close(flush=False)

    def _update_capacity(self) -> None:
        if self.going_away or self.state == CLOSED:
            self.capacity = 0
        else:
            self.capacity = max(0, min(self.max_streams, self.peer_max_streams) - self.active_streams)

    # -- streams ----------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.connection.closed:
            self.stats.upstream_cx_tx_bytes_total.value += len(data)
            self.connection.write(data)

    def _open_stream(self, s: Http2Stream, head, end_stream: bool) -> None:
        if self.connection.closed or self.going_away:
            # (Handed out just before its connection went: never on the wire, retriable.)
            self._stream_done(s, False)
            s.callbacks.on_upstream_reset("connection termination", "UC", reused=True)
            return
        sid = self.h2.get_next_available_stream_id()
        try:
            fields = (request_fields(head) if s.upgrade is None
                      else extended_connect_fields(head, s.upgrade))
            self.h2.send_headers(sid, fields, end_stream=end_stream)
        except H2Error:
            # Headers h2 will not send (a field HTTP/2 forbids): this stream alone fails.
            self._flush()
            self._stream_done(s, False)
            s.callbacks.on_upstream_reset("protocol error", "UPE", 502)
            return
        s.id = sid
        s.state = OPEN
        s.local_ended = end_stream
        self.streams[sid] = s
        self._flush()

    def _send_pending(self, s: Http2Stream) -> None:
        """Send what the peer's windows allow of `s`'s queued body, then its end."""
        h2 = self.h2
        sid = s.id
        out = s.out
        try:
            while out:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = out[0]
                if len(chunk) > window:
                    out[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    out.pop(0)
                s.out_bytes -= len(chunk)
                h2.send_data(sid, chunk)
            if not out and s.out_end:
                s.out_end = False
                if s.out_trailers:
                    h2.send_headers(sid, checked_fields(trailer_fields(s.out_trailers)),
                                    end_stream=True)
                else:
                    h2.end_stream(sid)
        except H2Error:
            # The peer closed the stream while we sent (its reset or response is on its way).
            out.clear()
            s.out_bytes = 0
            s.out_end = False
        self._flush()
        self._send_watermark(s)

    def _send_watermark(self, s: Http2Stream) -> None:
        """The request body waiting for the peer's window is buffered: above the connection's
        buffer limit the holder stops reading the downstream, below half it resumes."""
        limit = self.buffer_limit
        if not limit or s.state != OPEN:
            return
        if not s.above_watermark and s.out_bytes > limit:
            s.above_watermark = True
            s.callbacks.on_upstream_watermark(True)
        elif s.above_watermark and s.out_bytes <= limit // 2:
            s.above_watermark = False
            s.callbacks.on_upstream_watermark(False)

    def _stream_done(self, s: Http2Stream, cancel: bool) -> None:
        """`s` ends (its holder is told nothing more); `cancel`: reset it on the wire."""
        prev = s.state
        s.state = DONE
        s.held = []
        s.out = []
        if prev == OPEN:
            self.streams.pop(s.id, None)
            if cancel and not self.connection.closed:
                try:
                    self.h2.reset_stream(s.id, ErrorCodes.CANCEL)
                except H2Error:
                    pass  # already closed on the wire (the peer's reset crossed ours)
                self._flush()
        self.active_streams -= 1
        if self.active_streams == 0:
            self.idle_since = time.monotonic()
        self._update_capacity()
        if self.state == CLOSED:
            return
        self.pool.on_stream_done(self)
        if self.going_away and self.active_streams == 0 and not self.connection.closed:
            self.connection.close(flush=True)

    def _ack_stream(self, s: Http2Stream) -> None:
        """Return `s`'s window for the bytes its holder took, in batches (as nghttp2: once half
        the window is consumed)."""
        if s.unacked >= self.stream_window // 2 or s.remote_ended:
            n, s.unacked = s.unacked, 0
            if not s.remote_ended:
                try:
                    self.h2.increment_flow_control_window(n, s.id)
                except H2Error:
                    pass  # the stream closed meanwhile: no window to return
                self._flush()

    def _deliver_held(self, s: Http2Stream) -> None:
        held, s.held = s.held, []
        for k, ev in enumerate(held):
            if s.state == DONE:
                return
            if s.paused:  # paused again by what it was just handed
                s.held = held[k:] + s.held
                return
            self._deliver(s, ev)

    def _deliver(self, s: Http2Stream, ev) -> None:
        cb = s.callbacks
        cls = type(ev)
        if cls is DataReceived:
            n = ev.flow_controlled_length
            if ev.data:
                cb.on_upstream_data(ev.data)
            if s.state == DONE:
                return
            s.unacked += n
            if ev.stream_ended is not None:
                s.remote_ended = True
            if not s.paused:
                self._ack_stream(s)
            if ev.stream_ended is not None and s.state != DONE:
                cb.on_upstream_complete(None)
        elif cls is ResponseReceived:
            s.response_started = True
            ended = ev.stream_ended is not None
            head = response_headers(ev.headers)
            if s.upgrade is not None:
                head = upgrade_response(head, s.upgrade)
            if ended:
                s.remote_ended = True
                cb.on_upstream_headers(head, b"")
            else:
                cb.on_upstream_headers(head)
        elif cls is TrailersReceived:
            s.remote_ended = True
            cb.on_upstream_complete([(n, v) for n, v in ev.headers if not n.startswith(b":")])
        elif cls is StreamEnded:
            if not s.remote_ended:  # END_STREAM on an empty DATA frame h2 reported apart
                s.remote_ended = True
                cb.on_upstream_complete(None)

    # -- connection callbacks ---------------------------------------------------------------
    def on_connected(self) -> None:
        self.stats.upstream_cx_connect_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        h2 = self.h2
        h2.local_settings.update({SettingCodes.ENABLE_PUSH: 0,
                                  SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window})
        if self.allow_connect:  # (Envoy's client sends it with allow_connect; RFC 8441 §3)
            h2.local_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        h2.local_settings.acknowledge()  # in force for our new streams at once
        h2.initiate_connection()
        if self.connection_window > 65535:
            h2.increment_flow_control_window(self.connection_window - 65535)
        self._flush()
        self.idle_since = time.monotonic()
        ka = self.keepalive_settings
        if ka is not None:
            conn = self.connection
            self.keepalive = Keepalive(ka, conn.dispatcher, self._send_ping, self._keepalive_timeout,
                                       lambda: not conn.closed)
        self.pool.on_connected(self)

    def _send_ping(self, payload: bytes) -> None:
        self.h2.ping(payload)
        self._flush()

    def _keepalive_timeout(self) -> None:
        """A keepalive PING went unanswered: the connection closes (Envoy: no flush)."""
        self.stats.scope.counter("http2.keepalive_timeout").value += 1
        self.close_reason = ("keepalive timeout", "UC", 503)
        self.connection.close(flush=False)

    def on_data(self, data: bytes) -> None:
        self.stats.upstream_cx_rx_bytes_total.value += len(data)
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self._protocol_error(e)
            return
        # The connection window goes back as DATA arrives: a held stream is bounded by its own.
        for ev in events:
            if type(ev) is DataReceived:
                self.conn_unacked += ev.flow_controlled_length
        if self.conn_unacked >= self.connection_window // 2:
            self.h2.increment_flow_control_window(self.conn_unacked)
            self.conn_unacked = 0
        self._flush()
        self._dispatch(events)
        self._flush()

    def _dispatch(self, events: list) -> None:
        i, n = 0, len(events)
        streams = self.streams
        while i < n:
            if self.state == CLOSED:
                return
            ev = events[i]
            i += 1
            cls = type(ev)
            sid = getattr(ev, "stream_id", 0)
            if sid:
                s = streams.get(sid)
                if s is None or s.state == DONE:
                    continue  # a stream we ended: its late frames are dropped
                if cls is StreamReset:
                    self._stream_done(s, False)
                    # Envoy's reasons; like Envoy (without a retry_policy) neither is retried.
                    refused = ev.error_code == ErrorCodes.REFUSED_STREAM
                    s.callbacks.on_upstream_reset(
                        "remote refused stream reset" if refused else "remote reset", "UR")
                    continue
                if cls is WindowUpdated:
                    self._send_pending(s)
                    continue
                if s.paused:
                    s.held.append(ev)
                    continue
                if cls is ResponseReceived and ev.stream_ended is None:
                    # The usual response: head, body and end in one read, in one call.
                    j, body, flow, whole = i, [], 0, False
                    while j < n:
                        d = events[j]
                        if type(d) is not DataReceived or d.stream_id != sid:
                            break
                        body.append(d.data)
                        flow += d.flow_controlled_length
                        j += 1
                        if d.stream_ended is not None:
                            whole = True
                            break
                    if whole:
                        s.response_started = s.remote_ended = True
                        s.unacked += flow
                        i = j
                        head = response_headers(ev.headers)
                        if s.upgrade is not None:
                            head = upgrade_response(head, s.upgrade)
                        s.callbacks.on_upstream_headers(head, b"".join(body))
                        if s.state != DONE:
                            self._ack_stream(s)
                        continue
                if cls is InformationalResponseReceived:
                    continue  # 100-continue was answered by the connection manager already
                self._deliver(s, ev)
            elif cls is WindowUpdated:
                for s in list(streams.values()):
                    if s.out or s.out_end:
                        self._send_pending(s)
            elif cls is RemoteSettingsChanged:
                self._on_settings(ev)
            elif cls is ConnectionTerminated:
                self._on_goaway(ev)
            elif cls is PingAckReceived:
                if self.keepalive is not None:
                    self.keepalive.on_ack()

    def _on_settings(self, ev) -> None:
        changed = ev.changed_settings
        if SettingCodes.MAX_CONCURRENT_STREAMS in changed:
            self.peer_max_streams = min(changed[SettingCodes.MAX_CONCURRENT_STREAMS].new_value,
                                        _PEER_UNLIMITED)
            before = self.capacity
            self._update_capacity()
            if self.capacity != before and self.state != CONNECTING:
                self.pool.on_capacity_changed(self)
        if SettingCodes.INITIAL_WINDOW_SIZE in changed:
            for s in list(self.streams.values()):
                if s.out or s.out_end:
                    self._send_pending(s)

    def _on_goaway(self, ev) -> None:
        """GOAWAY: no new stream; those above last_stream_id were never processed (refused:
        retriable); the others finish, then the connection closes."""
        self.going_away = True
        self.capacity = 0
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        for s in [s for sid, s in self.streams.items() if sid > last]:
            if s.state == DONE:
                continue
            self._stream_done(s, False)
            # Never processed: a refused stream (Envoy's nghttp2 closes such streams with
            # REFUSED_STREAM), retried when the route's retry_on has refused-stream, reset...
            s.callbacks.on_upstream_reset("remote refused stream reset", "UR",
                                          reused=s.reused and not s.response_started)
        if self.state == CLOSED:
            return
        self.pool.on_capacity_changed(self)
        if self.active_streams == 0 and not self.connection.closed:
            self.connection.close(flush=True)

    def _protocol_error(self, err: Exception) -> None:
        try:
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
            self._flush()
        except H2Error:
            pass
        self.close_reason = ("protocol error", "UPE", 502)
        self.connection.close(flush=True)

    def on_eof(self) -> None:
        self.connection.close(flush=False, reason=CloseReason.REMOTE)

    def on_close(self, reason: str) -> None:
        prev = self.state
        self.state = CLOSED
        self.stats.upstream_cx_length_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        streams = [s for s in self.streams.values() if s.state != DONE]
        self.streams.clear()
        lost = self.active_streams  # (IDLE streams handed out and not yet sent count too)
        self.active_streams = 0
        self.capacity = 0
        self.pool.on_closed(self, prev, reason, lost)
        bad = self.close_reason
        transport = transport_failure(self.connection)
        for s in streams:
            s.state = DONE
            if bad is not None and not s.response_started:
                s.callbacks.on_upstream_reset(*bad)
                continue
            reset_reason, flag = lost_stream_reset(reason)
            s.callbacks.on_upstream_reset(reset_reason, flag, reused=s.reused,
                                          transport_failure=transport)

    def on_above_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            if s.state == OPEN:
                s.callbacks.on_upstream_watermark(True)

    def on_below_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            if s.state == OPEN:
                s.callbacks.on_upstream_watermark(False)
