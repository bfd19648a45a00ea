"""A worker's UDP listener and its sessions: the I/O of `envoy.filters.udp_listener.udp_proxy`.

`bind_udp_sockets` (main thread, before workers start) binds one SO_REUSEPORT datagram socket per
worker, as Envoy does on Linux: the kernel hashes each datagram's 4-tuple to one socket, so all
of a source address's datagrams reach the same worker and its session. Without reuse_port one
socket is bound and only the first worker reads it (two workers reading one datagram socket
would split a source's datagrams between two sessions).

`ActiveUdpListener` is a worker's view of one UDP listener: it reads datagrams from its socket
and hands each to its `UdpProxyFilter`, which keeps one `UdpSession` per downstream source
address (session_table.py): a connected UDP socket of its own to a host the cluster's load
balancer chose when the session began. Datagrams from that host go back to the source address
through the listener's socket. A session ends after `idle_timeout` with no datagram either way.
Everything here belongs to the worker thread that owns the listener: no lock on the datagram
path. Stats as Envoy names them: `udp.<stat_prefix>.downstream_sess_*` / `idle_timeout`, and
on the cluster `upstream_cx_{none_healthy,overflow,rx_bytes_total,tx_bytes_total}`
and `udp.sess_{rx,tx}_{datagrams,errors}`.

Must not: parse config (config.py) or keep session bookkeeping beyond calling the table.
"""

from __future__ import annotations

import logging
import socket
import time

from ...threads.dispatcher import READ
from .config import UdpProxyConfig
from .session_table import SessionTable

__all__ = ["bind_udp_sockets", "UdpProxyFactory", "ActiveUdpListener", "UdpProxyFilter", "UdpSession"]

log = logging.getLogger("ftproxy.udp")

# Datagrams read per readiness event, from the listener or a session's socket: bounded so that
# one busy socket cannot starve the worker's other events (Envoy reads 16 packets per event
# loop iteration from a UDP listener).
READ_BATCH = 32
# Read buffer: the largest UDP payload, so that a longer datagram is seen whole and dropped,
# not truncated.
READ_SIZE = 65535
# Envoy's default max_rx_datagram_size of a UDP listener (udp_listener_config, refused here): a
# longer datagram from downstream is dropped (listener.<prefix>.udp.downstream_rx_datagram_dropped).
# From upstream Envoy 1.40 takes datagrams of any size (measured: 65,000 bytes pass), so does this.
MAX_RX_DATAGRAM = 1500
# The listener stats Envoy shows for a UDP listener too (all 0: nothing is accepted).
_LISTENER_ZERO_COUNTERS = ("downstream_cx_total", "downstream_cx_destroy", "downstream_cx_overflow",
                           "downstream_global_cx_overflow", "no_filter_chain_match",
                           "downstream_cx_transport_socket_connect_timeout", "downstream_pre_cx_timeout",
                           "downstream_listener_filter_remote_close", "downstream_listener_filter_error")


def bind_udp_sockets(address: str, port: int, count: int, reuse_port: bool, *,
                     name: str | None = None) -> list[socket.socket]:
    """`count` SO_REUSEPORT datagram sockets (one without reuse_port), bound, non-blocking.
    A failed bind raises OSError naming the listener and its address."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((address, port))
            except OSError as e:
                host = f"[{address}]" if family == socket.AF_INET6 else address
                what = f'listener "{name}"' if name else "listener"
                raise OSError(e.errno, f"unable to bind {what} on {host}:{port} (UDP): {e.strerror}") from None
            port = s.getsockname()[1]
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class UdpProxyFactory:
    """Main thread: the udp_proxy filter's immutable config, shared by every worker."""

    __slots__ = ("config",)

    def __init__(self, config: UdpProxyConfig) -> None:
        self.config = config


class _DownstreamStats:
    """udp.<stat_prefix>.* on one worker (Envoy's ALL_UDP_PROXY_DOWNSTREAM_STATS)."""

    __slots__ = ("no_route", "rx_bytes", "rx_datagrams", "rx_errors", "total", "tx_bytes",
                 "tx_datagrams", "tx_errors", "idle_timeout", "active")

    def __init__(self, scope) -> None:
        c = scope.counter
        self.no_route = c("downstream_sess_no_route")
        self.rx_bytes = c("downstream_sess_rx_bytes")
        self.rx_datagrams = c("downstream_sess_rx_datagrams")
        self.rx_errors = c("downstream_sess_rx_errors")
        self.total = c("downstream_sess_total")
        self.tx_bytes = c("downstream_sess_tx_bytes")
        self.tx_datagrams = c("downstream_sess_tx_datagrams")
        self.tx_errors = c("downstream_sess_tx_errors")
        self.idle_timeout = c("idle_timeout")
        self.active = scope.gauge("downstream_sess_active")


class _ClusterUdpStats:
    """cluster.<name>.udp.* on one worker (Envoy's ALL_UDP_PROXY_UPSTREAM_STATS that a plain
    UDP session moves)."""

    __slots__ = ("rx_datagrams", "rx_errors", "tx_datagrams", "tx_errors")

    def __init__(self, cluster_scope) -> None:
        c = cluster_scope.scope("udp").counter
        self.rx_datagrams = c("sess_rx_datagrams")
        self.rx_errors = c("sess_rx_errors")
        self.tx_datagrams = c("sess_tx_datagrams")
        self.tx_errors = c("sess_tx_errors")
        for name in ("sess_rx_datagrams_dropped", "sess_tunnel_success", "sess_tunnel_failure", "sess_tunnel_buffer_overflow"):
            c(name)   # present, as Envoy's (0: nothing is dropped, tunnelling is refused)


class ActiveUdpListener:
    """A worker's UDP listen socket; the worker thread only. Same surface as ActiveListener
    for the worker (`config`, `start`, `stop`, `draining`)."""

    def __init__(self, worker, config, sock: socket.socket, factory: UdpProxyFactory) -> None:
        self.worker = worker
        self.config = config
        self.sock = sock
        self.accepting = False
        self.draining = False
        self.chains = ()
        scope = worker.stats.scope(f"listener.{config.stat_prefix}")
        for name in _LISTENER_ZERO_COUNTERS:
            scope.counter(name)
        scope.gauge("downstream_cx_active")
        scope.gauge("downstream_pre_cx_active")
        wscope = scope.scope(f"worker_{worker.index}")
        wscope.counter("downstream_cx_total")
        wscope.gauge("downstream_cx_active")
        self.rx_datagram_dropped = scope.scope("udp").counter("downstream_rx_datagram_dropped")
        self.filter = UdpProxyFilter(self, factory.config)

    def start(self) -> None:
        self.worker.dispatcher.register(self.sock, READ, self._on_readable)
        self.accepting = True

    def stop(self, close_socket: bool = True) -> None:
        """Stop reading; every session ends (a UDP session has nothing in flight to finish)."""
        if self.accepting:
            self.worker.dispatcher.unregister(self.sock)
            self.accepting = False
        self.filter.close_all()
        if close_socket:
            self.sock.close()

    def _on_readable(self, _mask: int) -> None:
        recv, on_datagram = self.sock.recvfrom, self.filter.on_datagram
        for _ in range(READ_BATCH):
            try:
                data, peer = recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.filter.stats.rx_errors.value += 1
                log.debug("listener %s: receive failed: %s", self.config.name, e)
                return
            if len(data) > MAX_RX_DATAGRAM:
                self.rx_datagram_dropped.value += 1
                continue
            on_datagram(data, peer[:2])

    def send_downstream(self, data: bytes, peer: tuple) -> bool:
        try:
            self.sock.sendto(data, peer)
        except OSError:
            return False
        return True


class UdpProxyFilter:
    """The udp_proxy filter of one worker's UDP listener: sessions by source address."""

    def __init__(self, listener: ActiveUdpListener, config: UdpProxyConfig) -> None:
        self.listener = listener
        self.config = config
        self.worker = listener.worker
        self.stats = _DownstreamStats(self.worker.stats.scope(f"udp.{config.stat_prefix}"))
        self.table: SessionTable[UdpSession] = SessionTable(config.idle_timeout)
        self.idle_timer = self.worker.dispatcher.create_timer(self._on_idle_timer)
        self._cluster = None           # the WorkerCluster the cluster stats below belong to
        self._cluster_udp: _ClusterUdpStats | None = None
        self._cluster_for_stats()      # Envoy's udp.* cluster stats exist from the start

    def _cluster_for_stats(self):
        wc = self.worker.clusters.get(self.config.cluster)
        if wc is not None and wc is not self._cluster:
            self._cluster, self._cluster_udp = wc, _ClusterUdpStats(wc.stats.scope)
        return wc

    def on_datagram(self, data: bytes, peer: tuple) -> None:
        session = self.table.get(peer)
        if session is None:
            session = self._new_session(peer)
            if session is None:
                return          # no route, no healthy host or the circuit breaker: dropped
        stats = self.stats
        stats.rx_bytes.value += len(data)
        stats.rx_datagrams.value += 1
        self.table.touch(peer, time.monotonic())
        session.write_upstream(data)

    def _new_session(self, peer: tuple) -> UdpSession | None:
        cluster = self._cluster_for_stats()
        if cluster is None:
            self.stats.no_route.value += 1
            return None
        # As Envoy's ClusterInfo::createSession: the circuit breaker, then a host.
        if not cluster.limits.try_acquire_connection():
            cluster.stats.upstream_cx_overflow.value += 1
            # Measured: Envoy 1.40 counts a session refused by the breaker in
            # downstream_sess_total (not in _active); one refused for want of a host it does not.
            self.stats.total.value += 1
            return None
        host = cluster.choose_host()
        if host is None:
            cluster.limits.release_connection()
            cluster.stats.upstream_cx_none_healthy.value += 1
            return None
        try:
            session = UdpSession(self, peer, cluster, self._cluster_udp, host)
        except OSError as e:
            cluster.limits.release_connection()
            log.warning("udp %s: no upstream socket for %s: %s", self.config.stat_prefix, host, e)
            return None
        # A session holds one of the cluster's connections (its circuit breaker), but Envoy 1.40
        # moves neither upstream_cx_total nor upstream_cx_active for it: neither does this.
        self.stats.total.value += 1
        self.stats.active.value += 1
        self.table.add(peer, session, time.monotonic())
        if not self.idle_timer.enabled:
            self.idle_timer.enable(self.config.idle_timeout)
        return session

    def write_downstream(self, data: bytes, peer: tuple) -> None:
        stats = self.stats
        if self.listener.send_downstream(data, peer):
            stats.tx_bytes.value += len(data)
            stats.tx_datagrams.value += 1
        else:
            stats.tx_errors.value += 1

    def touch(self, peer: tuple) -> None:
        self.table.touch(peer, time.monotonic())

    def _on_idle_timer(self) -> None:
        now = time.monotonic()
        for session in self.table.expire(now):
            self.stats.idle_timeout.value += 1
            session.close()
        deadline = self.table.next_deadline()
        if deadline is not None:
            self.idle_timer.enable(max(0.0, deadline - now))

    def session_closed(self) -> None:
        self.stats.active.value -= 1

    def close_all(self) -> None:
        self.idle_timer.disable()
        for session in self.table.sessions():
            self.table.remove(session.peer)
            session.close()


class UdpSession:
    """One downstream source address's session: its own connected UDP socket to one host."""

    __slots__ = ("filter", "peer", "cluster", "limits", "udp_stats", "host", "sock", "closed")

    def __init__(self, filter: UdpProxyFilter, peer: tuple, cluster, udp_stats: _ClusterUdpStats,
                 host) -> None:
        self.filter = filter
        self.peer = peer
        self.cluster = cluster
        self.limits = cluster.limits     # released on the breaker acquired (a CDS update may swap it)
        self.udp_stats = udp_stats
        self.host = host
        self.closed = False
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Connected: the kernel delivers only that host's datagrams here, and reports its
            # ICMP errors (port unreachable) on this socket, as Envoy's connected session socket.
            sock.connect((host.address, host.port))
            filter.worker.dispatcher.register(sock, READ, self._on_readable)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def write_upstream(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            self.udp_stats.tx_errors.value += 1
            return
        self.udp_stats.tx_datagrams.value += 1
        self.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)

    def _on_readable(self, _mask: int) -> None:
        recv, f = self.sock.recv, self.filter
        for _ in range(READ_BATCH):
            if self.closed:
                return
            try:
                data = recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error (the host's port is closed: ECONNREFUSED) or another receive
                # error; the session stays, as Envoy's does, until it is idle.
                self.udp_stats.rx_errors.value += 1
                return
            self.udp_stats.rx_datagrams.value += 1
            self.cluster.stats.upstream_cx_rx_bytes_total.value += len(data)
            f.touch(self.peer)
            f.write_downstream(data, self.peer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.filter.worker.dispatcher.unregister(self.sock)
        finally:
            self.sock.close()
            self.limits.release_connection()
            self.filter.session_closed()
