"""tcp_proxy network filter: relays bytes between a downstream connection and one upstream host.

Per downstream connection: pick the cluster (or a weighted one), pick a host, connect
(`connect_timeout`), then relay in both directions with half-close propagation and an idle
timeout (default 1h). Both sides are `Connection`s over transport sockets (the listener's
filter chain's and the cluster's `transport_socket`). When both are raw_buffer
(`raw_socket` set) the relay on Linux is zero-copy (`SpliceRelay`: socket -> pipe -> socket,
one pipe per direction sized to the buffer limit, which bounds each direction); otherwise
(a TLS side, no splice here, or the kernel refuses splice on the sockets) bytes go through
Python via the two `Connection`s with watermark flow control (a side whose write buffer is
over the limit pauses reading on the other side). Stats are Envoy's `tcp.<stat_prefix>.*`;
connect failures and connect times count in the cluster's stats, and access logs run when
both sides are gone.
Thread affinity: one worker.
"""

from __future__ import annotations

import os
import socket
import time

from .address import format_address
from ..access_log.stream_info import StreamInfo
from .connection import BULK_READ_SIZE, CloseReason, Connection, ConnectionCallbacks
from .splice_relay import DEFAULT_PIPE_SIZE, RelayCallbacks, SpliceRelay, splice_supported

__all__ = ["TcpProxyFactory", "TcpProxyContext"]

_COUNTERS = ("downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
             "downstream_cx_tx_bytes_total", "idle_timeout", "upstream_flush_total",
             "downstream_flow_control_paused_reading_total", "downstream_flow_control_resumed_reading_total",
             "max_downstream_connection_duration")


class TcpProxyFactory:
    def __init__(self, config, use_splice: bool | None = None, grpc_logs=None) -> None:
        """`grpc_logs`: the server's gRPC access-log service (proxy/access_log/grpc_log.py)."""
        self.config = config
        # Probed once here (immutable afterwards): os.splice present and working on sockets.
        self.use_splice = splice_supported() if use_splice is None else use_splice
        self.access_loggers = tuple(a.create(grpc_logs=grpc_logs) for a in config.access_logs)
        w = config.weighted_clusters
        self.weighted = tuple((c.name, c.weight) for c in w)
        self.total_weight = sum(c.weight for c in w)

    def for_worker(self, worker) -> TcpProxyContext:
        return TcpProxyContext(self, worker)


class TcpProxyContext:
    def __init__(self, factory: TcpProxyFactory, worker) -> None:
        self.factory = factory
        self.config = factory.config
        self.worker = worker
        scope = worker.stats.scope(f"tcp.{factory.config.stat_prefix}")
        for n in _COUNTERS:
            setattr(self, n, scope.counter(n))
        self.downstream_cx_active = scope.gauge("downstream_cx_active")
        self.access_loggers = tuple(a.for_worker(worker) for a in factory.access_loggers)
        self.upstream_cx_active = scope.gauge("upstream_flush_active")

    def choose_cluster(self) -> str | None:
        f = self.factory
        if f.config.cluster is not None:
            return f.config.cluster
        r = self.worker.rand_below(f.total_weight) if f.total_weight else 0
        for name, weight in f.weighted:
            if r < weight:
                return name
            r -= weight
        return None

    def new_connection(self, transport_socket, remote, local, conn_id, buffer_limit, on_closed,
                       info=None) -> TcpProxySession:
        if self.config.tunneling_hostname is not None:  # the bytes go in an HTTP CONNECT
            from .tcp_proxy_tunnel import TunnelingSession
            return TunnelingSession(self, transport_socket, remote, local, conn_id, buffer_limit,
                                    on_closed, info)
        return TcpProxySession(self, transport_socket, remote, local, conn_id, buffer_limit, on_closed,
                               info)


class _UpstreamSide(ConnectionCallbacks):
    __slots__ = ("session",)

    def __init__(self, session: TcpProxySession) -> None:
        self.session = session

    def on_connected(self) -> None:
        self.session._on_upstream_connected()

    def on_data(self, data: bytes) -> None:
        s = self.session
        s._touch()
        s.downstream.write(data)

    def on_eof(self) -> None:
        s = self.session
        s.upstream_eof = True
        s.downstream.shutdown_write()
        s._maybe_done()

    def on_close(self, reason: str) -> None:
        self.session._on_upstream_close(reason)

    def on_above_write_watermark(self) -> None:
        s = self.session
        s.ctx.downstream_flow_control_paused_reading_total.value += 1
        s.downstream.read_disable(True)

    def on_below_write_watermark(self) -> None:
        s = self.session
        s.ctx.downstream_flow_control_resumed_reading_total.value += 1
        s.downstream.read_disable(False)


class TcpProxySession(ConnectionCallbacks, RelayCallbacks):
    def __init__(self, ctx: TcpProxyContext, transport_socket, remote, local, conn_id, buffer_limit,
                 on_closed, downstream=None) -> None:
        self.ctx = ctx
        self.on_closed = on_closed
        self.info = info = StreamInfo(time.time(), time.monotonic())
        info.downstream_remote_address = format_address(remote)
        info.downstream_local_address = format_address(local)
        # What the listener found (connection_info.DownstreamInfo): the socket's own peer
        # (a PROXY protocol header may have replaced `remote`) and the TLS SNI.
        if downstream is not None:
            info.downstream_direct_remote_address = format_address(downstream.direct_remote)
            info.requested_server_name = downstream.requested_server_name or None
            info.filter_chain_name = downstream.filter_chain_name or None
        else:
            info.downstream_direct_remote_address = info.downstream_remote_address
        info.connection_id = conn_id
        info.response_flags = []
        self.downstream = Connection(ctx.worker.dispatcher, transport_socket, self, buffer_limit=buffer_limit,
                                     read_size=BULK_READ_SIZE, remote_address=info.downstream_remote_address,
                                     conn_id=conn_id)
        self.upstream: Connection | None = None
        self.cluster = None
        self.outlier = None   # the chosen host's outlier monitor (outlier_detection), if any
        self.holds_slot = False
        self.connected = False
        self.early: list[bytes] = []
        self.downstream_eof = False
        self.upstream_eof = False
        self.finished = False
        self.idle_timer = None
        self.relay: SpliceRelay | None = None
        self.pipe_size = buffer_limit
        self.connect_started = 0.0
        ctx.downstream_cx_total.value += 1
        ctx.downstream_cx_active.value += 1
        self._connect(buffer_limit)

    def _connect(self, buffer_limit: int) -> None:
        ctx = self.ctx
        name = ctx.choose_cluster()
        cluster = ctx.worker.clusters.get(name) if name else None
        if cluster is None:
            ctx.downstream_cx_no_route.value += 1
            self.info.set_response_flag("NR")
            self.downstream.close(flush=False)
            return
        self.cluster = cluster
        self.info.upstream_cluster = cluster.name
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            self.info.set_response_flag("UH")
            self.downstream.close(flush=False)
            return
        if not cluster.limits.try_acquire_connection():
            cluster.stats.upstream_cx_overflow.value += 1
            self.info.set_response_flag("UO")
            self.downstream.close(flush=False)
            return
        self.holds_slot = True
        self.outlier = host.outlier
        self.info.upstream_host = str(host)
        cluster.stats.upstream_cx_total.value += 1
        cluster.stats.upstream_cx_active.value += 1
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        usock = socket.socket(family, socket.SOCK_STREAM)
        usock.setblocking(False)
        usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Each splice pipe plays the per-connection buffer limit (the smaller one if both set).
        limits = [x for x in (cluster.buffer_limit, buffer_limit) if x]
        self.pipe_size = min(limits) if limits else DEFAULT_PIPE_SIZE
        self.upstream = Connection(ctx.worker.dispatcher, cluster.transport_factory.create(usock, host.hostname),
                                   _UpstreamSide(self), buffer_limit=cluster.buffer_limit or buffer_limit,
                                   read_size=BULK_READ_SIZE, remote_address=str(host))
        self.connect_started = time.monotonic()
        self.upstream.connect((host.address, host.port), cluster.config.connect_timeout)
        # Read nothing from downstream until the upstream is there (bounded by the limit anyway).
        self.downstream.read_disable(True)
        self.downstream.start()

    def _on_upstream_connected(self) -> None:
        self.connected = True
        # Envoy's TCP pool counts the connection it hands tcp_proxy as a request (probed:
        # case connect_extras, cluster.echo.upstream_rq_total).
        self.cluster.stats.upstream_rq_total.value += 1
        if self.outlier is not None:   # Envoy's LocalOriginConnectSuccessFinal
            self.outlier.put_connect_success_final(self.ctx.worker.index)
        self.cluster.stats.upstream_cx_connect_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        self.info.upstream_local_address = self.upstream.local_address
        if self.ctx.factory.use_splice and self._start_splice():
            self._touch()
            return
        self.downstream.read_disable(False)
        self._touch()

    # -- zero-copy relay -----------------------------------------------------------------------
    def _start_splice(self) -> bool:
        """Hand both sockets to a SpliceRelay; both Connections stay unregistered (read
        disabled, nothing buffered) until the relay is done and they close the sockets.
        Only raw_buffer sockets can be spliced: their wire bytes are the payload."""
        up = self.upstream
        if self.downstream.callbacks is not self:
            return False  # a network read filter reads the downstream bytes (ReadFilterRelay)
        down_sock = self.downstream.transport_socket.raw_socket
        up_sock = up.transport_socket.raw_socket
        if down_sock is None or up_sock is None:
            return False
        up.read_disable(True)
        relay = SpliceRelay(self.ctx.worker.dispatcher, down_sock, up_sock, self,
                            pipe_size=self.pipe_size)
        try:
            relay.start()
        except OSError:  # e.g. out of fds for the pipes: copy through Python instead
            up.read_disable(False)
            return False
        self.relay = relay
        return True

    def on_relay_unsupported(self) -> None:
        self.relay = None
        self.upstream.read_disable(False)
        self.downstream.read_disable(False)

    def on_relay_paused(self, from_downstream: bool) -> None:
        if from_downstream:
            self.ctx.downstream_flow_control_paused_reading_total.value += 1

    def on_relay_resumed(self, from_downstream: bool) -> None:
        if from_downstream:
            self.ctx.downstream_flow_control_resumed_reading_total.value += 1

    def on_relay_done(self, reason: str) -> None:
        self._end_relay()
        # Closing downstream closes upstream (on_close) and then finishes the session.
        self.downstream.close(flush=False, reason=reason)

    def _end_relay(self) -> None:
        relay = self.relay
        relay.close()
        d, u = self.downstream, self.upstream
        d.bytes_received += relay.downstream_rx
        d.bytes_sent += relay.downstream_tx
        u.bytes_received += relay.upstream_rx
        u.bytes_sent += relay.upstream_tx
        self.relay = None

    # -- idle timeout --------------------------------------------------------------------------
    def _touch(self) -> None:
        timeout = self.ctx.config.idle_timeout
        if timeout:
            if self.idle_timer is None:
                self.idle_timer = self.ctx.worker.dispatcher.create_timer(self._on_idle)
            self.idle_timer.enable(timeout)

    def _on_idle(self) -> None:
        relay = self.relay
        if relay is not None:
            # The relay only stamps its last activity; re-arm for the rest of the period.
            timeout = self.ctx.config.idle_timeout
            left = relay.last_activity + timeout - time.monotonic()
            if left > 0:
                self.idle_timer.enable(left)
                return
            self.ctx.idle_timeout.value += 1
            self._end_relay()
            self.downstream.close(flush=False)
            return
        self.ctx.idle_timeout.value += 1
        self.downstream.close(flush=True)
        if self.upstream is not None:
            self.upstream.close(flush=True)

    # -- downstream callbacks ------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self._touch()
        self.upstream.write(data)

    def on_eof(self) -> None:
        self.downstream_eof = True
        if self.upstream is not None:
            self.upstream.shutdown_write()
        self._maybe_done()

    def on_close(self, reason: str) -> None:
        if self.relay is not None:
            self._end_relay()
        up = self.upstream
        if up is not None and not up.closed:
            up.close(flush=reason != CloseReason.REMOTE)
        self._finish()

    def on_above_write_watermark(self) -> None:
        if self.upstream is not None:
            self.upstream.read_disable(True)

    def on_below_write_watermark(self) -> None:
        if self.upstream is not None:
            self.upstream.read_disable(False)

    # -- upstream outcome ----------------------------------------------------------------------
    def _on_upstream_close(self, reason: str) -> None:
        if self.relay is not None:
            self._end_relay()
        cluster = self.cluster
        stats = cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        up = self.upstream
        stats.upstream_cx_rx_bytes_total.value += up.bytes_received
        stats.upstream_cx_tx_bytes_total.value += up.bytes_sent
        if self.holds_slot:
            self.holds_slot = False
            cluster.limits.release_connection()
        if not self.connected and self.downstream.closed:
            self._finish()  # downstream went away while we were connecting: a cancel
            return
        if not self.connected:
            stats.upstream_cx_connect_fail.value += 1
            od = self.outlier
            if reason == CloseReason.CONNECT_TIMEOUT:
                stats.upstream_cx_connect_timeout.value += 1
                if od is not None:
                    od.put_timeout(self.ctx.worker.index)
            elif od is not None:
                od.put_connect_failed(self.ctx.worker.index)
            info = self.info
            info.set_response_flag("UF")
            # Envoy: max_connect_attempts (1) reached, "upstream retry limit exceeded": UF,URX;
            # the connect's errno as the router reports it.
            info.set_response_flag("URX")
            if up.connect_errno and not info.upstream_transport_failure_reason:
                info.upstream_transport_failure_reason = (
                    f"delayed_connect_error: {os.strerror(up.connect_errno)}")
            self.downstream.close(flush=False)
            return
        self.downstream.close(flush=True)
        self._finish()

    def _maybe_done(self) -> None:
        if self.downstream_eof and self.upstream_eof:
            self.downstream.close(flush=True)

    def _finish(self) -> None:
        if self.finished or (self.upstream is not None and not self.upstream.closed) or not self.downstream.closed:
            return
        self.finished = True
        ctx = self.ctx
        if self.idle_timer is not None:
            self.idle_timer.disable()
        ctx.downstream_cx_active.value -= 1
        d = self.downstream
        ctx.downstream_cx_rx_bytes_total.value += d.bytes_received
        ctx.downstream_cx_tx_bytes_total.value += d.bytes_sent
        info = self.info
        info.bytes_received = d.bytes_received
        info.bytes_sent = d.bytes_sent
        info.end_monotonic = time.monotonic()
        if ctx.access_loggers:  # what the TLS handshakes established, for the operators
            info.downstream_ssl = d.transport_socket.ssl()
            info.downstream_transport_failure_reason = d.transport_socket.failure_reason or None
            up = self.upstream
            if up is not None:
                info.upstream_ssl = up.transport_socket.ssl()
                if not info.upstream_transport_failure_reason:
                    info.upstream_transport_failure_reason = up.transport_socket.failure_reason or None
        # The listener's accounting and access logs first, then tcp_proxy's own: Envoy's
        # ActiveTcpConnection logs before its connection's filters are destroyed.
        self.on_closed(self)
        for logger in ctx.access_loggers:
            logger.log(info)

    def start_drain(self, close_idle: bool = True) -> None:
        """tcp_proxy connections are not interrupted by a drain; they end on their own."""
