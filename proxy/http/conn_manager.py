"""HTTP connection manager (HCM): one per downstream connection; turns codec calls into streams.

Life of a request (phases, always ending in logging):
  1. decode: codec -> on_stream_headers -> ActiveStream; Envoy's request header handling
     (x-forwarded-*, x-request-id, hop-by-hop removal: request_headers.py) -> filter chain.
  2. the router (the chain's terminal filter) picks a route, cluster and host, gets a stream
     from the host's pool and sends the request on it; the response comes back through the
     stream's `encode_headers/encode_data/encode_trailers` and the encoder filters.
  3. log: access loggers run once the stream ends, whatever the outcome.

The stream model is codec-agnostic: the codec (made from the connection's first bytes by the
context's codec factory; the seam is codec/protocol.py) calls this connection manager per
stream id (it is the codec's ServerCodecCallbacks), and streams are kept by id, any number at
once, each with its own lifecycle, deadlines and reset. HTTP/1.1 pipelining is the codec's
concern: it presents one stream at a time (codec/http1_server.py).

Thread affinity: everything here lives on the worker that accepted the connection.
Must not: block, or let an exception from one stream escape to the worker loop.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

from ..network.address import format_address
from ..network.connection import CloseReason, Connection, ConnectionCallbacks
from .codec.errors import CodecError
from .codec.events import RequestHeaders
from .headers import Headers, RequestHead
from .local_reply import is_grpc_request
from .original_ip import IpDetectionRejected
from .path_normalize import CONTINUE, REDIRECT, normalize_request_path
from .request_headers import absolute_form, mutate_request_headers
from .stream import ActiveStream
from .stream_state import (CLOSED, REQUEST_COMPLETE, RESPONSE_COMPLETE, RESPONSE_STARTED,
                           UPGRADE_ACCEPTED, UPGRADED)

__all__ = ["ConnectionManager"]

log = logging.getLogger("ftproxy.http")
_IP_DETECTION_FAILED = "rejecting_because_detection_failed"


class ConnectionManager(ConnectionCallbacks):
    """A downstream HTTP connection: its codec's callbacks (ServerCodecCallbacks) and its
    streams. `ctx` is the per-worker HcmContext of its filter chain."""

    __slots__ = ("ctx", "stats", "codec", "remote_ip", "remote", "local", "direct_remote",
                 "requested_server_name", "connection", "tls", "on_closed",
                 "streams", "requests", "draining", "created", "tx_reported", "idle_timer",
                 "idle_since", "head_started", "protocol_stats", "restored_local",
                 "eof_pending", "filter_chain_name")

    def __init__(self, ctx, sock, remote: tuple[str, int], local: tuple[str, int], conn_id: int,
                 buffer_limit: int, on_closed, info=None) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.codec = None  # made when the first bytes say which protocol (on_data)
        self.remote_ip = remote[0]
        self.remote = format_address(remote)
        self.local = format_address(local)
        # From the listener (connection_info.DownstreamInfo): the socket's own peer, which a
        # PROXY protocol header does not change, and the TLS SNI (None without one).
        # The destination a listener filter restored (original_dst), else None: where an
        # ORIGINAL_DST cluster sends a request that names no host of its own.
        self.restored_local = None
        # The client's FIN came while an upgrade or CONNECT awaited its answer: passed on once
        # the tunnel is up, after the bytes the codec held (_resume), as Envoy relays it.
        self.eof_pending = False
        # The filter chain's name (its streams' %FILTER_CHAIN_NAME%), None without one.
        self.filter_chain_name = info.filter_chain_name or None if info is not None else None
        if info is None:
            self.direct_remote = self.remote
            self.requested_server_name = None
        else:
            if info.local != info.direct_local:
                self.restored_local = info.local
            self.direct_remote = (self.remote if info.direct_remote == remote
                                  else format_address(info.direct_remote))
            self.requested_server_name = info.requested_server_name or None
        self.connection = Connection(ctx.worker.dispatcher, sock, self, buffer_limit=buffer_limit,
                                     remote_address=self.remote, local_address=self.local,
                                     conn_id=conn_id)
        self.on_closed = on_closed
        # What the TLS handshake established (proxy.tls.info.TlsInfo), None for plaintext: read
        # when the first bytes arrive (the handshake is done by then; _make_codec).
        self.tls = None
        self.streams: dict[int, ActiveStream] = {}
        self.requests = 0
        self.draining = False
        self.created = time.monotonic()
        self.tx_reported = 0
        self.idle_timer = None
        # Monotonic time of the first byte of a request head still in progress, with no
        # stream yet (None otherwise): the request's timers run from there (`_head_began`).
        self.head_started: float | None = None
        # The codec protocol's (cx total, cx active, rq total) stats, once the codec is made.
        self.protocol_stats = None
        st = self.stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_active.value += 1
        # A client's FIN aborts its requests, also when it waits behind pipelined requests
        # we are not reading (on_early_close).
        self.connection.set_detect_early_close(True)
        self.connection.start()
        self._arm_idle_timer()

    # -- timers -----------------------------------------------------------------------------
    def _idle_timeout(self) -> float:
        timeout = self.ctx.config.idle_timeout
        if self.draining:
            timeout = min(timeout, DRAIN_IDLE_GRACE) if timeout else DRAIN_IDLE_GRACE
        return timeout

    def _arm_idle_timer(self, rearm: bool = False) -> None:
        """The connection became idle now. The timer is not re-armed per request (a heap push
        each time): it stays armed and, when it fires early, re-arms for the time left."""
        self.idle_since = time.monotonic()
        timeout = self.ctx.config.idle_timeout
        if self.draining:
            timeout = self._idle_timeout()
        if not timeout:
            return
        timer = self.idle_timer
        if timer is None:
            timer = self.idle_timer = self.ctx.worker.dispatcher.create_timer(self._on_idle_timeout)
        if rearm or timer.deadline is None:
            timer.enable(timeout)

    def _stream_deadline(self, stream: ActiveStream) -> float | None:
        """When `stream` times out (stream_idle_timeout or the route's idle_timeout,
        request_timeout), or None."""
        cfg = self.ctx.config
        deadline = None
        idle = stream.idle_timeout
        if idle is None:
            idle = cfg.stream_idle_timeout
        if idle:
            deadline = stream.last_activity + idle
        if cfg.request_timeout and not stream.request_complete:
            t = stream.start_monotonic + cfg.request_timeout
            deadline = t if deadline is None else min(deadline, t)
        t = stream.duration_deadline
        if t is not None:
            deadline = t if deadline is None else min(deadline, t)
        return deadline

    def watch_stream(self, stream: ActiveStream) -> None:
        """Make the connection's one timer fire by the stream's deadline. Amortised: the timer
        is only moved when it would fire too late, not once per request."""
        deadline = self._stream_deadline(stream)
        if deadline is None:
            return
        timer = self.idle_timer
        if timer is None:
            timer = self.idle_timer = self.ctx.worker.dispatcher.create_timer(self._on_idle_timeout)
        current = timer.deadline
        if current is None or current > deadline:
            timer.enable(max(0.0, deadline - time.monotonic()))

    def _on_idle_timeout(self) -> None:
        """The connection's one timer: each stream's stream_idle_timeout / request_timeout
        (a stream that times out ends alone; the others go on), the head in progress, else
        the connection's idle_timeout."""
        if self.connection.closing:
            return  # (it ends when the flush or the lingering does; on_close stops this timer)
        streams = self.streams
        if streams:
            now = time.monotonic()
            soonest = None
            for stream in list(streams.values()):
                deadline = self._stream_deadline(stream)
                if deadline is None:
                    continue
                if now >= deadline:
                    self._stream_timed_out(stream, now)
                    if self.connection.closed:
                        return
                elif soonest is None or deadline < soonest:
                    soonest = deadline
            if soonest is not None and self.streams:
                self.idle_timer.enable(soonest - now)
            elif self.streams:
                self.idle_timer.enable(self._idle_timeout() or 3600.0)
            return
        if self.head_started is not None:
            head = self._head_deadline()
            if head is not None:
                now = time.monotonic()
                if now < head[0]:
                    self.idle_timer.enable(head[0] - now)
                else:
                    self._head_timed_out(head[1])
                return
            # No stream timeout configured: the connection's idle_timeout still ends it.
        timeout = self._idle_timeout()
        if not timeout:
            return  # idle_timeout disabled; the timer was only watching a stream
        left = self.idle_since + timeout - time.monotonic()
        if left > 0.001:
            self.idle_timer.enable(left)
            return
        if not self.streams:
            if self.draining:
                self.stats.downstream_cx_drain_close.value += 1
            else:
                self.stats.downstream_cx_idle_timeout.value += 1
            self.close_after_answers()

    # -- a request head in progress ---------------------------------------------------------
    # Envoy's stream begins at a request's first byte (llhttp's message begin), so a head
    # trickled byte by byte (slowloris) is bounded by request_timeout and
    # request_headers_timeout, and by stream_idle_timeout, which head bytes do not reset (seen
    # on Envoy 1.40: 408 "stream timeout" at 1 s with a byte every 0.1 s). Here the stream is
    # made when the head is complete; until then the connection's one timer watches the head.

    def _head_began(self) -> None:
        """The codec says a request head began (`head_in_progress`) and no stream times it."""
        now = self.head_started = time.monotonic()
        head = self._head_deadline()
        if head is None:
            return
        timer = self.idle_timer
        if timer is None:
            timer = self.idle_timer = self.ctx.worker.dispatcher.create_timer(self._on_idle_timeout)
        if timer.deadline is None or timer.deadline > head[0]:
            timer.enable(max(0.0, head[0] - now))

    def _head_deadline(self) -> tuple[float, str] | None:
        """(when, which) for the head in progress: the earliest of its timeouts, or None."""
        cfg = self.ctx.config
        start = self.head_started
        best = None
        for timeout, which in ((cfg.request_headers_timeout, "header"), (cfg.request_timeout, "request"),
                               (cfg.stream_idle_timeout, "idle")):
            if timeout and (best is None or start + timeout < best[0]):
                best = (start + timeout, which)
        return best

    def _head_timed_out(self, which: str) -> None:
        """Envoy's 408s for a request whose head did not arrive in time: its access log line
        has `-` for method and path (the head never parsed), duration from the first byte."""
        st = self.stats
        if which == "header":
            st.downstream_rq_header_timeout.value += 1
            body, flag, details = b"request header timeout", None, "request_header_timeout"
        elif which == "request":
            st.downstream_rq_timeout.value += 1
            body, flag, details = b"request timeout", None, "request_overall_timeout"
        else:
            st.downstream_rq_idle_timeout.value += 1
            body, flag, details = b"stream timeout", "SI", "stream_idle_timeout"
        self._unparsed_stream().send_local_reply(408, body, flag, details)

    def _unparsed_stream(self) -> ActiveStream:
        """A stream for a request whose head never parsed (timed out or refused by the codec),
        made only to answer and log it; it began at the head's first byte, if we saw it."""
        now = time.monotonic()
        start = self.head_started if self.head_started is not None else now
        self.head_started = None
        head = RequestHead(b"-", b"-", b"", b"http", Headers())
        stream = ActiveStream(self, 0, head, None, time.time() - (now - start), start)
        self.stats.downstream_rq_total.value += 1
        self.stats.downstream_rq_active.value += 1
        self.streams[0] = stream
        if self.codec is not None:
            self.codec.go_away()  # the connection closes after this answer
        return stream

    def _stream_timed_out(self, stream: ActiveStream, now: float) -> None:
        cfg = self.ctx.config
        st = self.stats
        if stream.duration_deadline is not None and now >= stream.duration_deadline:
            # Envoy's onStreamMaxDurationReached: 504 once the request is complete, else 408;
            # to a gRPC request DEADLINE_EXCEEDED.
            st.downstream_rq_max_duration_reached.value += 1
            stream.send_local_reply(504 if stream.request_complete else 408, b"downstream duration timeout",
                                    None, "max_duration_timeout", grpc_status=4)
        elif cfg.request_timeout and not stream.request_complete and \
                now >= stream.start_monotonic + cfg.request_timeout:
            st.downstream_rq_timeout.value += 1
            stream.send_local_reply(408, b"request timeout", None, "request_overall_timeout")
        else:
            st.downstream_rq_idle_timeout.value += 1
            stream.send_local_reply(408, b"stream timeout", "SI", "stream_idle_timeout")

    # -- connection callbacks ----------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self.stats.downstream_cx_rx_bytes_total.value += len(data)
        codec = self.codec
        if codec is None:
            codec = self._make_codec(data)
        codec.dispatch(data)
        if codec.head_in_progress and not self.streams and self.head_started is None \
                and not self.connection.closed:
            self._head_began()

    def _make_codec(self, first_bytes: bytes):
        self.tls = self.connection.transport_socket.ssl()
        codec = self.codec = self.ctx.codec_factory(first_bytes, self.connection, self)
        if self.draining:
            codec.go_away()  # (the drain began before the first bytes)
        ps = self.protocol_stats = self.stats.by_protocol.get(codec.protocol)
        if ps is not None:
            ps[0].value += 1
            ps[1].value += 1
        return codec

    def resume_codec(self) -> None:
        """The codec may hold input behind a stream (the next pipelined request, bytes after an
        upgrade request): it gets it from the event loop, never from inside this call chain
        (which may be an upstream read): no upstream -> downstream -> next request re-entry."""
        self.ctx.worker.dispatcher.defer(self._resume)

    def _resume(self) -> None:
        if self.connection.closed:
            return
        codec = self.codec
        codec.resume()
        if self.eof_pending and not self.connection.closed:
            self.eof_pending = False
            self.on_eof()  # (the tunnel is up, or the answer refused it: on_eof decides)
            return
        if codec.head_in_progress and not self.streams and self.head_started is None \
                and not self.connection.closed:
            self._head_began()

    def on_eof(self) -> None:
        if self.codec is not None:
            self.codec.dispatch(b"")
            if self.codec.protocol == "HTTP/2":
                # The client's FIN ends an HTTP/2 connection, its tunnels (streams) with it.
                self._abort_on_client_close()
                return
        for stream in list(self.streams.values()):
            if stream.state & UPGRADED and stream.chains is not None:
                # Envoy's HTTP/1.1 has no half-close: the client's FIN closes the connection,
                # logged as its disconnect (DC). Here the FIN goes on upstream as a half-close,
                # so what the upstream still sends reaches the client (README).
                if not stream.has_response_flag("DC"):
                    self.stats.downstream_rq_rx_reset.value += 1
                    stream.set_response_flag("DC")
                    stream.response_code_details = "downstream_remote_disconnect"
                stream.decode_data(b"", True)  # a tunnel's half-close goes on upstream
                return
            if stream.upgrade is not None and not stream.state & (RESPONSE_STARTED | CLOSED):
                self.eof_pending = True  # its answer decides (a tunnel, or the connection ends)
                return
        self._abort_on_client_close()

    def on_early_close(self) -> None:
        """The client closed while we were not reading from it: pipelined requests wait behind
        the one in flight, or flow control paused its upload."""
        for stream in self.streams.values():
            if self.codec.protocol != "HTTP/2" and (stream.state & UPGRADED or (
                    stream.upgrade is not None and not stream.state & RESPONSE_STARTED)):
                # A tunnel passes the FIN on in order, after the bytes before it (on_eof).
                self.connection.set_detect_early_close(False)
                return
        self._abort_on_client_close()

    def _abort_on_client_close(self) -> None:
        """As Envoy's HCM (no HTTP half-close: a client's FIN, or reset, ends the connection):
        the requests in flight are reset (DC) and the ones the codec holds behind them are
        dropped, never forwarded: none is sent upstream that would not be answered."""
        for stream in self.streams.values():
            if stream.state < CLOSED:
                self.stats.downstream_rq_rx_reset.value += 1
                stream.set_response_flag("DC")
                if not stream.response_code_details:
                    stream.response_code_details = "downstream_remote_disconnect"  # Envoy's
        # The client ended the connection: Envoy counts downstream_cx_destroy_remote.
        self.connection.close(flush=True, reason=CloseReason.REMOTE)

    def on_close(self, reason: str) -> None:
        st = self.stats
        st.downstream_cx_active.value -= 1
        if self.protocol_stats is not None:
            self.protocol_stats[1].value -= 1
        st.downstream_cx_destroy.value += 1
        if reason == CloseReason.REMOTE:
            st.downstream_cx_destroy_remote.value += 1
        else:
            st.downstream_cx_destroy_local.value += 1
        st.downstream_cx_tx_bytes_total.value += max(0, self.connection.bytes_sent - self.tx_reported)
        st.downstream_cx_length_ms.record((time.monotonic() - self.created) * 1000.0)
        if self.idle_timer is not None:
            self.idle_timer.disable()
        for stream in list(self.streams.values()):
            if stream.state < CLOSED:
                if not stream.state & RESPONSE_COMPLETE and not stream.has_response_flag("DC"):
                    stream.set_response_flag("DC")
                    self.stats.downstream_rq_rx_reset.value += 1
                self._finish_stream(stream)
        self.on_closed(self)

    # Two things hold a stream's upstream back: the connection's write buffer above its high
    # watermark (every stream), and a multiplexing codec's own buffer for the stream above its
    # limit (the peer's flow-control window is shut: on_stream_watermark). A stream hears
    # on_downstream_watermark when the two together change: paused while either holds.
    def on_above_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            if not s.codec_above_high_watermark:
                s.on_downstream_watermark(True)

    def on_below_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            if not s.codec_above_high_watermark:
                s.on_downstream_watermark(False)

    def on_stream_watermark(self, stream_id: int, above: bool) -> None:
        """The codec's buffer for this stream crossed its high (True) or low (False) mark."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.state >= CLOSED:
            return
        stream.codec_above_high_watermark = above
        if not self.connection.above_high_watermark:
            stream.on_downstream_watermark(above)

    # -- codec callbacks (ServerCodecCallbacks) ------------------------------------------------
    def on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.state >= CLOSED:
            return
        now = time.monotonic()
        if data:
            stream.bytes_received += len(data)
            stream.last_activity = now
        if end_stream and not stream.state & REQUEST_COMPLETE:
            stream.state |= REQUEST_COMPLETE
            stream.request_complete_monotonic = now
        if stream.chains is not None:
            stream.decode_data(data, end_stream)

    def on_stream_trailers(self, stream_id: int, trailers) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.state >= CLOSED:
            return
        stream.state |= REQUEST_COMPLETE
        stream.request_complete_monotonic = time.monotonic()
        if stream.chains is not None:
            stream.decode_trailers(trailers)

    def on_stream_reset(self, stream_id: int, reason: str) -> None:
        """The client abandoned this stream alone (a multiplexing codec's stream reset)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.state >= CLOSED:
            return
        self.stats.downstream_rq_rx_reset.value += 1
        stream.set_response_flag("DR")  # Envoy: downstream remote reset
        if stream.state & UPGRADED:
            stream.response_code_details = "http2.remote_reset"  # (as Envoy 1.40 logs a tunnel's)
        elif not stream.response_code_details:
            stream.response_code_details = "downstream_remote_reset"
        self._finish_stream(stream)
        self.stream_done(stream)

    def on_codec_error(self, stream_id: int | None, e: CodecError) -> None:
        self.stats.downstream_cx_protocol_error.value += 1
        if not e.status:
            # A connection error the codec answered on the wire itself (HTTP/2's GOAWAY): its
            # streams end, and so does the connection, lingering (the client may still be
            # sending: its unread bytes would turn the close into a reset that can destroy the
            # GOAWAY before it is read; Envoy delays the close for the same reason).
            self.close_flushed(linger=True)
            return
        if e.status == 431:
            self.stats.downstream_rq_too_large.value += 1
        stream = self.streams.get(stream_id) if stream_id is not None else None
        if stream is None:
            # Error before a stream existed: make a stream only to answer and log it.
            stream = self._unparsed_stream()
        elif stream.response_started:
            stream.reset(e.details)
            self.connection.close(flush=False)
            return
        self.codec.go_away()
        # Envoy's body for a codec error is the status' reason phrase ("Bad Request"); the
        # parser's own message stays in the details (%RESPONSE_CODE_DETAILS%).
        stream.send_local_reply(e.status, _reason_phrase(e.status), "DPE", e.details)
        self.close_flushed(linger=True)  # (the client may still be sending: as above)

    # -- streams ------------------------------------------------------------------------------
    def on_stream_headers(self, stream_id: int, ev: RequestHeaders, end_stream: bool) -> None:
        """A new stream (the codec's callback): Envoy's request checks and header handling,
        then its filter chain."""
        ctx = self.ctx
        st = self.stats
        st.downstream_rq_total.value += 1
        ps = self.protocol_stats
        if ps is not None:
            ps[2].value += 1
        st.downstream_rq_active.value += 1
        self.requests += 1
        headers = Headers.adopt(ev.headers)
        authority = headers.get(b"host") or b""
        head = RequestHead(ev.method, ev.target, authority, b"http", headers, ev.http_version)
        cfg = ctx.config
        if cfg.max_requests_per_connection and self.requests >= cfg.max_requests_per_connection:
            self.codec.go_away()
        now = time.monotonic()
        stream = ActiveStream(self, stream_id, head, ev.upgrade, time.time(), now)
        self.streams[stream_id] = stream
        if self.head_started is not None:  # the head came in pieces: it began at its first byte
            self._began_earlier(stream, now)
        first_timeout = ctx.first_stream_timeout
        if first_timeout:
            timer = self.idle_timer  # usually set to fire early enough already (watch_stream)
            if timer is None or timer.deadline is None or timer.deadline > now + first_timeout:
                self.watch_stream(stream)
        if end_stream:
            stream.state = REQUEST_COMPLETE
            stream.request_complete_monotonic = now
        if ev.http_version == b"1.0":
            h10 = cfg.http_protocol_options
            if not h10.accept_http_10:
                # Envoy refuses HTTP/1.0 unless http_protocol_options.accept_http_10.
                self.codec.go_away()
                stream.send_local_reply(426, b"Upgrade Required", "DPE", "low_version")
                return
            if not authority and h10.default_host_for_http_10:
                head.set_authority(h10.default_host_for_http_10.encode())
        if not authority and ev.http_version == b"1.1" and not headers.has(b"host"):
            # Envoy's HCM (not its codec) refuses an HTTP/1.1 request without host: 400 with
            # no body and no flag, and the connection closes.
            self.codec.go_away()
            stream.send_local_reply(400, b"", None, "missing_host_header")
            return
        if cfg.headers_with_underscores_action != "ALLOW" and self._underscores(stream, headers):
            return
        if ev.expect_continue:
            headers.remove(b"expect")
            self.codec.encode_continue(stream_id)
        url_scheme = None
        if ev.target[:1] != b"/" and ev.method != b"CONNECT":
            if ev.target.startswith((b"http://", b"https://")):
                url_scheme = absolute_form(head)
            else:  # "OPTIONS *" too, as Envoy (404, absolute_path_rejected)
                st.downstream_rq_non_relative_path.value += 1
                stream.send_local_reply(404, b"", None, "absolute_path_rejected")
                return
        norm = ctx.head_normalization  # None: no option set, only the fragment test
        # (.find: `b"#" in path` costs 10x on CPython 3.13, which first tries the operand as
        # an int and clears the TypeError)
        if (norm is not None or head.path.find(b"#") >= 0) and self._normalize_head(stream, head, norm):
            return
        try:
            scheme = mutate_request_headers(ctx, head.headers, self.remote_ip, ev.upgrade, self.tls,
                                            stream)
        except IpDetectionRejected as rejected:  # an original_ip_detection extension's answer
            st.downstream_rq_rejected_via_ip_detection.value += 1
            stream.send_local_reply(rejected.status, b"", None, _IP_DETECTION_FAILED)
            return
        if norm is not None and norm.append_x_forwarded_port:
            self._x_forwarded_port(head.headers, norm.overwrite_x_forwarded_port)
        # :scheme: an absolute-form target's, else x-forwarded-proto's or the connection's.
        head.scheme = url_scheme or scheme
        if self.tls is not None:
            head.tls = self.tls
        tracer = ctx.tracer
        if tracer is not None:  # the HCM traces: decision, span, context to the upstream
            try:
                tracer.start(stream)
            except Exception:
                log.exception("tracer failed to start a span")
        stream.create_filter_chain(ctx.filter_factories, ctx.filter_chain_plans)
        stream.decode_headers(end_stream)

    def recreate_stream(self, old: ActiveStream, body: bytes) -> None:
        """An internal redirect (ActiveStream.recreate): `old` ends, logged with its 3xx but
        not counted as a completed response, and a new stream with its id, its head (as its
        router left it), start time and redirect state runs the whole HTTP filter chain
        again (new filter instances), with `body`. What this manager did to the head when it
        arrived (x-forwarded-for, x-request-id...) is not done again: it is there already.
        Nothing if `old` ended meanwhile (a reset, a timeout's reply, the client gone)."""
        if (old.state & (CLOSED | RESPONSE_STARTED) or self.streams.get(old.stream_id) is not old
                or self.connection.closed):
            return
        self._finish_stream(old, count_response=False)
        st = self.stats
        st.downstream_rq_total.value += 1   # Envoy counts the new stream as a request
        st.downstream_rq_active.value += 1
        ps = self.protocol_stats
        if ps is not None:
            ps[2].value += 1
        stream = ActiveStream(self, old.stream_id, old.head, None, old.start_time, old.start_monotonic)
        stream.internal_redirect_state = old.internal_redirect_state
        if old.internal_request:   # decided when the head arrived (its steering fields: gone)
            stream.internal_request = True
        stream.state = REQUEST_COMPLETE
        stream.request_complete_monotonic = old.request_complete_monotonic or time.monotonic()
        stream.bytes_received = old.bytes_received
        self.streams[old.stream_id] = stream
        self.watch_stream(stream)
        ctx = self.ctx
        if ctx.tracer is not None:
            try:
                ctx.tracer.start(stream)
            except Exception:
                log.exception("tracer failed to start a span")
        stream.create_filter_chain(ctx.filter_factories, ctx.filter_chain_plans)
        stream.decode_headers(not body)
        if body and stream.state < CLOSED:
            stream.decode_data(body, True)

    def _normalize_head(self, stream: ActiveStream, head: RequestHead, norm) -> bool:
        """Envoy's path and host normalisation (path_normalize.py; `norm` its compiled
        options, or None): True when it answered the request, with a 400, or a 307 to the
        normalised path (a gRPC request, whose clients do not follow it, gets the 400)."""
        if head.method != b"CONNECT":  # (a CONNECT has no path)
            action, path = normalize_request_path(head.path, norm)
            if path is not head.path:
                head.set_path(path)
            if action != CONTINUE:
                if action == REDIRECT and not is_grpc_request(head.headers):
                    self.stats.downstream_rq_redirected_with_normalized_path.value += 1
                    stream.send_local_reply(307, b"", None, "path_normalization_failed",
                                            [(b"location", path)])
                else:
                    self.stats.downstream_rq_failed_path_normalization.value += 1
                    stream.send_local_reply(400, b"", None, "path_normalization_failed")
                return True
            if norm is not None and norm.changes_host:
                authority = norm.host(head.authority, self._local_port())
                if authority != head.authority:
                    head.set_authority(authority)
                    head.headers.set(b"host", authority)
        return False

    def _local_port(self) -> int:
        """The port the client connected to (the one original_dst restored, if it did)."""
        if self.restored_local is not None:
            return self.restored_local[1]
        port = self.local.rpartition(":")[2]
        return int(port) if port.isdigit() else 0

    def _x_forwarded_port(self, headers: Headers, overwrite: bool) -> None:
        """append_x_forwarded_port: the port the client connected to; a client's value is
        kept unless use_remote_address (`overwrite`), as Envoy's mutateRequestHeaders."""
        if overwrite or not headers.has(b"x-forwarded-port"):
            headers.set(b"x-forwarded-port", b"%d" % self._local_port())

    def _began_earlier(self, stream: ActiveStream, now: float) -> None:
        """`stream`'s head took from `head_started` until now: its request_timeout and its
        duration count from there (Envoy's stream began there); its idle timer from now."""
        start = self.head_started
        self.head_started = None
        stream.start_monotonic = start
        stream.start_time -= now - start
        self.watch_stream(stream)

    def _underscores(self, stream: ActiveStream, headers: Headers) -> bool:
        """headers_with_underscores_action: True when the request was rejected."""
        names = [n for n, _ in headers.fields if b"_" in n]
        if not names:
            return False
        rejected, dropped = self.stats.underscores.get(self.codec.protocol) or self.stats.underscores["HTTP/1.1"]
        if self.ctx.config.headers_with_underscores_action == "REJECT_REQUEST":
            rejected.value += 1
            self.codec.go_away()  # Envoy: a codec-level rejection, the connection closes
            stream.send_local_reply(400, b"Bad Request", "DPE", "http1.unexpected_underscore")
            return True
        dropped.value += len(names)
        headers.remove_many(frozenset(names))
        return False

    def stream_done(self, stream: ActiveStream) -> None:
        """The stream ended: its response is complete (then it is logged here), or it was
        reset (finished already). The codec says whether the connection goes on."""
        if stream.state < CLOSED:
            self._finish_stream(stream)
        if self.eof_pending and not stream.state & UPGRADED:
            # The client closed while this upgrade awaited its answer, which refused it.
            self.eof_pending = False
            self.codec.stream_ended(stream.stream_id)
            self.connection.close(flush=True, reason=CloseReason.REMOTE)
            return
        if self.codec.stream_ended(stream.stream_id) or (
                stream.state & UPGRADED and self.codec.protocol != "HTTP/2"):
            # (An HTTP/1.1 tunnel ends with its connection; an HTTP/2 one is one stream.)
            if stream.state & REQUEST_COMPLETE:
                # `connection: close` (the client's, HTTP/1.0's, a drain's, the last of
                # max_requests_per_connection): requests pipelined behind it and whatever the
                # client still sends are never read; the close lingers so they do not turn it
                # into a reset that destroys this answer.
                self.close_after_answers()
            else:
                # The response finished before the request did: its rest is never handed on,
                # but read and dropped while the close lingers (left unread, it would turn the
                # close into a reset that can destroy the response before the client reads it).
                if stream.upgrade is not None and not stream.state & UPGRADED:
                    # A refused CONNECT (its request has no end of its own): Envoy counts the
                    # connection's close under it as the client's reset.
                    self.stats.downstream_rq_rx_reset.value += 1
                self.close_flushed(linger=True)
            return
        if self.streams:
            return
        timer = self.idle_timer
        if timer is None or timer.deadline is None or self.draining:
            # Draining: re-armed for the short grace, not left at the stream's deadline.
            self._arm_idle_timer(rearm=self.draining)
        else:  # the timer is armed already and re-arms itself when it fires early
            self.idle_since = time.monotonic()
        codec = self.codec
        if codec.holding:
            self.resume_codec()  # the next pipelined request, from the event loop
        elif codec.head_in_progress and not self.connection.closed:
            self._head_began()  # the next request's head began behind this one: time it from now

    def reset_stream(self, stream: ActiveStream) -> None:
        """Abort one stream: the codec resets it on the wire, or (HTTP/1.1) the connection
        closes."""
        self._finish_stream(stream)
        if not self.codec.reset_stream(stream.stream_id):
            self.close_flushed()
            return
        self.stream_done(stream)

    def _finish_stream(self, stream: ActiveStream, count_response: bool = True) -> None:
        """The stream is over: stats, tracing, access logs. `count_response` False: a stream
        replaced by another (an internal redirect: redirect_follow.py), whose 3xx is logged
        but not counted as a completed response."""
        stream.state |= CLOSED
        c = self.connection  # tx bytes counted per stream (written, incl. still queued)
        sent = c.bytes_sent + c.buffered_bytes
        self.stats.downstream_cx_tx_bytes_total.value += sent - self.tx_reported
        self.tx_reported = sent
        self.streams.pop(stream.stream_id, None)
        st = self.stats
        st.downstream_rq_active.value -= 1
        if stream.state & UPGRADE_ACCEPTED:
            st.downstream_cx_upgrades_active.value -= 1
        stream.destroy_filters()  # also breaks the stream <-> filter cycles (freed by refcount)
        stream.end_monotonic = now = time.monotonic()
        code = stream.response_code
        if code and count_response:
            st.downstream_rq_completed.value += 1
            cls = code // 100
            per_listener = st.listener_rq
            if 1 <= cls <= 5:
                st.rq_class[cls].value += 1
                if per_listener is not None:
                    per_listener[cls].value += 1
            if per_listener is not None:
                per_listener[0].value += 1
        st.downstream_rq_time.record((now - stream.start_monotonic) * 1000.0)
        span = stream.active_span
        if span is not None:
            try:
                self.ctx.tracer.finish(stream, span)
            except Exception:
                log.exception("tracer failed to finish a span")
        loggers = self.ctx.access_loggers
        if loggers and stream.response_headers is not None:
            # What the codec wrote in place of the head's own fields, for %RESP(...)%.
            for name, value in self.ctx.response_fields:
                stream.response_headers.headers.set(name, value)
        for logger in loggers:
            try:
                logger.log(stream)
            except Exception:
                log.exception("access logger failed")

    # -- draining ------------------------------------------------------------------------------
    def start_drain(self, close_idle: bool = True) -> None:
        """Worker drain: finish the current request with `connection: close`. An idle
        connection closes after DRAIN_IDLE_GRACE from now unless a request comes first (its
        answer says `connection: close`); with `close_idle` (shutdown, no next epoch), one
        idle that long already closes now, one idle for less keeps the rest of the grace."""
        self.draining = True
        if self.codec is not None:
            # HTTP/1.1: the next response head says `connection: close`. One that went out
            # promising keep-alive already is not closed under: the client's next request is
            # answered with `connection: close`, or the connection closes after
            # DRAIN_IDLE_GRACE if none comes (closing at once would race that request).
            self.codec.go_away()
        if self.streams:
            pass
        elif self.head_started is not None:
            pass  # a request is arriving: its stream will be drained (its head's timer runs)
        elif close_idle:
            # A keep-alive client that has just had its answer is about to send its next
            # request: closing under it now loses that request (EOF or reset).
            left = self.idle_since + DRAIN_IDLE_GRACE - time.monotonic()
            if left <= 0:
                self.close_idle()
            else:
                timer = self.idle_timer
                if timer is None:
                    timer = self.idle_timer = self.ctx.worker.dispatcher.create_timer(self._on_idle_timeout)
                timer.enable(left)
        else:
            # Closes after DRAIN_IDLE_GRACE unless a request comes first.
            self._arm_idle_timer(rearm=True)

    def close_idle(self) -> None:
        c = self.connection
        if not self.streams and self.head_started is None and not c.closed and not c.closing:
            self.stats.downstream_cx_drain_close.value += 1
            self.close_after_answers()

    def close_flushed(self, linger: bool = False) -> None:
        """Close once what was written is flushed, given up after delayed_close_timeout
        without write progress; `linger`: see close_after_answers. delayed_close_timeout 0
        turns the delay off, as in Envoy: closed right after the flush, however long it takes,
        and without lingering."""
        delay = self.ctx.config.delayed_close_timeout
        self.connection.close(flush=True, delay=delay, linger=linger and delay > 0)

    def close_after_answers(self) -> None:
        """End the connection once what was written (its last answer) is flushed: a FIN, then
        what the client still sends is read and dropped until it closes too, or for at most
        delayed_close_timeout (Connection.close(linger=True)). Closed at once instead, a client
        still sending (pipelined requests, an upload, a request racing an idle close) would
        find its bytes unread and get a reset, which destroys the answer still in flight and
        turns its read of the end into ECONNRESET. The connection is counted active, and a
        drain waits for it, until then."""
        self.close_flushed(linger=True)


def _reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# A draining connection that stays idle this long is closed. Closing an idle HTTP/1.1
# connection always races with a request the client may be sending; a connection idle for a
# whole second is very unlikely to be mid-request, while a busy one gets `connection: close`
# on its next response instead (clean for the client).
DRAIN_IDLE_GRACE = 1.0
