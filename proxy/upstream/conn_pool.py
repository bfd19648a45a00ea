"""Per-worker, per-host upstream connection pool: it hands out streams, not connections.

A pool's key (`PoolKey`) is what makes two upstream connections interchangeable: the host, the
protocol (its ALPN name) and the transport socket factory's key (its options: raw_buffer
today, TLS settings later); its connections get their transport sockets from that factory. The
protocol chooses the connection class (`CLIENT_CONNECTIONS`: HTTP/1.1, HTTP/2, and TCP for
terminated CONNECT tunnels; the tests' multiplexing codec registers one more), each a `PoolConnection`
(http/codec/client_protocol.py) that says how many more streams it may take (`capacity`).

Bookkeeping only (httpcore's lesson): the pool keeps each connection in one state (connecting
/ ready: it may take a stream / busy: it takes none now), a FIFO of pending requests, and
decides which request gets which connection: a ready one, most recently used first (the
warmest); else a new connection, opened when the pending requests outnumber the streams the
connections being connected will offer (each counts with its expected capacity); a connection
that comes up takes up to its capacity of pending requests. Connections and routers do the I/O.
Limits: `max_connections` and `max_pending_requests` are cluster-wide (the ResourceLimits of the
pool's routing priority, shared by all workers); like Envoy, a pool with no connection at all
may always open one, so one worker cannot be starved by the others. A connection retires (takes
no new stream, closes once idle) after `max_requests_per_connection` streams or when the pool
drains; an idle one closes after the cluster's idle_timeout.
Thread affinity: one worker. Must not: block.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Hashable, NamedTuple

from ..http.alpn_client_connection import MIXED, AlpnClientConnection
from ..http.codec.client_protocol import BUSY, CLOSED, CONNECTING, READY, PoolConnection
from ..http.codec_client import UpstreamHttpConnection, transport_failure
from ..http.http2_client_connection import HTTP2, Http2ClientConnection
from ..http.tcp_upstream import TCP, TcpUpstreamConnection
from ..network.connection import CloseReason

__all__ = ["HttpConnPool", "PendingRequest", "PoolKey", "HTTP11", "HTTP2", "MIXED", "TCP",
           "CLIENT_CONNECTIONS", "register_client_connection", "DownstreamProtocolPool"]

HTTP11 = "http/1.1"  # ALPN names of the upstream protocols; HTTP2 = "h2" (http2_client_connection)

# Protocol name -> PoolConnectionFactory (a PoolConnection class). Filled at import time (and
# by tests before they start a worker); read-only once workers run. MIXED (auto_config): each
# connection becomes HTTP/2 or HTTP/1.1 by ALPN once connected (on_protocol_selected).
CLIENT_CONNECTIONS: dict[str, type] = {HTTP11: UpstreamHttpConnection,
                                       HTTP2: Http2ClientConnection,
                                       MIXED: AlpnClientConnection,
                                       TCP: TcpUpstreamConnection}


def register_client_connection(protocol: str, factory) -> None:
    """Make pools whose key has `protocol` open `factory` connections. Call before workers
    start; registering another factory under a taken name is an error."""
    known = CLIENT_CONNECTIONS.get(protocol)
    if known is not None and known is not factory:
        raise ValueError(f"client connection for protocol {protocol!r} already registered")
    CLIENT_CONNECTIONS[protocol] = factory


class PoolKey(NamedTuple):
    host: tuple[str, int]      # Host.key: address, port
    protocol: str              # HTTP11, a key of CLIENT_CONNECTIONS
    transport: Hashable        # TransportSocketFactory.key


class PendingRequest:
    __slots__ = ("pool", "router", "cancelled")

    def __init__(self, pool: HttpConnPool, router) -> None:
        self.pool = pool
        self.router = router
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.pool._cancel(self)


class HttpConnPool:
    __slots__ = ("cluster", "host", "limits", "host_str", "address", "ready", "busy", "connecting",
                 "connecting_capacity", "pending", "draining", "active_requests", "idle_timer",
                 "rq_total", "rq_success", "rq_error", "rq_timeout", "cx_total", "cx_connect_fail", "key",
                 "transport_factory", "connection_class", "alpn_streams")

    def __init__(self, cluster, host, limits, transport_factory, protocol: str = HTTP11) -> None:
        self.cluster = cluster            # WorkerCluster
        self.host = host
        self.limits = limits              # the cluster's ResourceLimits for this pool's priority
        self.transport_factory = transport_factory
        self.key = PoolKey(host.key, protocol, transport_factory.key)
        cls = CLIENT_CONNECTIONS.get(protocol)
        if cls is None:
            raise ValueError(f"no upstream client connection for protocol {protocol!r}")
        self.connection_class = cls
        self.host_str = str(host)
        self.address = (host.address, host.port)
        # READY connections (they may take a stream), least recently used first: new_stream
        # takes the last (warmest); the idle check (its timer, or new_stream when the timer is
        # late) closes expired ones.
        self.ready: list[PoolConnection] = []
        self.busy: set[PoolConnection] = set()         # connected, taking no stream now
        # Connecting connections -> the streams each will offer (as counted when opened).
        self.connecting: dict[PoolConnection, int] = {}
        self.connecting_capacity = 0  # their sum
        self.pending: deque[PendingRequest] = deque()
        self.draining = False
        self.active_requests = 0
        self.idle_timer = None
        # Per-host stats for /clusters (Envoy's host stats): written by this worker only,
        # read (summed over workers) by the admin thread as plain int attributes.
        self.rq_total = self.rq_success = self.rq_error = self.cx_total = self.cx_connect_fail = 0
        self.rq_timeout = 0   # the host's rq_timeout (written by routers whose deadline passed)
        # A mixed pool's lesson (Envoy's HTTP server properties cache): the streams a new
        # connection to this host is expected to offer (1 once one negotiated HTTP/1.1); 0:
        # nothing learned (the cluster's HTTP/2 max_concurrent_streams).
        self.alpn_streams = 0

    @property
    def idle_timeout(self) -> float:
        """Cluster idle_timeout (common_http_protocol_options.idle_timeout, default 1 h)."""
        return self.cluster.config.idle_timeout

    # -- requests ------------------------------------------------------------------------------
    def new_stream(self, router, fresh: bool = False) -> PendingRequest | None:
        """Give `router` a stream now (router.on_pool_ready(stream); returns None) or queue it
        (returns a handle to cancel). `fresh`: do not reuse a connection that is already up
        (a retry after a reused one failed)."""
        self.active_requests += 1
        self.rq_total += 1
        timer = self.idle_timer
        if timer is not None and (due := timer.deadline) is not None and due <= time.monotonic():
            # The idle timer is late (a busy worker): close what it would have closed rather
            # than reuse a connection the upstream may be closing as its own idle timeout.
            self._close_idle()
        ready = self.ready
        while ready and not fresh:
            conn = ready[-1]
            if not conn.capacity or conn.state != READY:  # (is_available(), without a call)
                # Not expected (on_capacity_changed and on_closed take such a one out): mend.
                ready.pop()
                if conn.state == READY:
                    conn.state = BUSY
                    self.busy.add(conn)
                continue
            # _attach, inlined: this is every request's path.
            stream = conn.new_stream(router)
            max_rq = self.cluster.config.max_requests_per_connection
            if not conn.capacity or (max_rq and conn.total_streams >= max_rq):
                ready.pop()  # (it was the last)
                conn.state = BUSY
                self.busy.add(conn)
            router.on_pool_ready(stream)
            return None
        stats = self.cluster.stats
        if not self.limits.try_acquire_pending():  # before connecting, as Envoy's pool
            stats.upstream_rq_pending_overflow.value += 1
            self.active_requests -= 1
            router.on_pool_failure("overflow", "UO")
            return None
        self._open_for(len(self.pending) + 1)
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        p = PendingRequest(self, router)
        self.pending.append(p)
        return p

    def _open_for(self, demand: int) -> bool:
        """Open a connection if `demand` streams exceed what the connecting ones will offer
        (returns whether it opened one)."""
        if self.connecting_capacity < demand:
            if self.limits.try_acquire_connection():
                self._open(holds_slot=True)
                return True
            if not (self.busy or self.connecting):
                self._open(holds_slot=False)
                return True
            self.cluster.stats.upstream_cx_overflow.value += 1
        return False

    def _cancel(self, p: PendingRequest) -> None:
        try:
            self.pending.remove(p)
        except ValueError:
            return
        self._pending_done()
        self.active_requests -= 1

    def _pending_done(self) -> None:
        self.limits.release_pending()
        self.cluster.stats.upstream_rq_pending_active.value -= 1

    def _attach(self, conn: PoolConnection, router) -> None:
        """Take a stream of `conn` (available, READY or BUSY) for `router`. The connection is
        put where it belongs before the router hears of it (the router may re-enter)."""
        stream = conn.new_stream(router)
        if not conn.capacity or self._exhausted(conn):
            self._set_busy(conn)
        router.on_pool_ready(stream)

    def _set_busy(self, conn: PoolConnection) -> None:
        if conn.state == READY:
            ready = self.ready
            if ready and ready[-1] is conn:
                ready.pop()
            else:
                ready.remove(conn)
        conn.state = BUSY
        self.busy.add(conn)

    def _set_ready(self, conn: PoolConnection) -> None:
        """Most recently used: last in `ready`."""
        ready = self.ready
        if conn.state == READY:
            if ready[-1] is conn:
                return
            ready.remove(conn)
        else:
            self.busy.discard(conn)
            conn.state = READY
        ready.append(conn)

    def _exhausted(self, conn: PoolConnection) -> bool:
        """It was handed the cluster's max_requests_per_connection streams."""
        max_rq = self.cluster.config.max_requests_per_connection
        return bool(max_rq and conn.total_streams >= max_rq)

    def _retired(self, conn: PoolConnection) -> bool:
        """Takes no new stream (closes once idle): the pool drains, or it is exhausted."""
        return self.draining or self._exhausted(conn)

    def _open(self, holds_slot: bool) -> None:
        c = self.cluster
        cls = self.connection_class
        self.cx_total += 1
        c.stats.upstream_cx_total.value += 1
        if cls.cx_total_stat is not None:  # upstream_cx_http1_total: the pool's protocol
            getattr(c.stats, cls.cx_total_stat).value += 1
        c.stats.upstream_cx_active.value += 1
        conn = cls(self, c.worker.dispatcher, self.address, c.config.connect_timeout,
                   c.buffer_limit, c.codec_impl, c.worker.next_connection_id(),
                   self.transport_factory)
        conn.holds_slot = holds_slot
        # (Even a connect refused at once reports it later, on the loop.)
        offer = self.connecting[conn] = self._offer(conn)
        self.connecting_capacity += offer

    def _offer(self, conn: PoolConnection) -> int:
        """The streams a connecting connection will take: its capacity, or fewer when
        max_requests_per_connection is lower."""
        max_rq = self.cluster.config.max_requests_per_connection
        return min(conn.capacity, max_rq) if max_rq else conn.capacity

    # -- connection events (PoolCallbacks) ------------------------------------------------------
    def on_protocol_selected(self, conn: PoolConnection, chosen: PoolConnection, protocol: str) -> None:
        """A mixed pool's connection (http/alpn_client_connection.py) negotiated `protocol`:
        `chosen`, a connection of that protocol's class on the same socket, takes its place,
        still CONNECTING (its on_connected follows at once). Counted in upstream_cx_http2_total
        or upstream_cx_http1_total, as Envoy counts the client it makes then. HTTP/1.1 offers
        fewer streams than `conn` was counted for: the pool remembers it for this host's next
        connections and opens more now for the pending requests it will not take."""
        self.connecting_capacity -= self.connecting.pop(conn)
        chosen.holds_slot, conn.holds_slot = conn.holds_slot, False
        getattr(self.cluster.stats, chosen.cx_total_stat).value += 1
        self.alpn_streams = 1 if protocol == HTTP11 else 0
        offer = self.connecting[chosen] = self._offer(chosen)
        self.connecting_capacity += offer
        demand = len(self.pending)
        while demand > self.connecting_capacity and self._open_for(demand):
            pass

    def on_connected(self, conn: PoolConnection) -> None:
        self.connecting_capacity -= self.connecting.pop(conn)
        conn.state = BUSY
        self.busy.add(conn)
        self._assign_or_idle(conn)

    def on_stream_done(self, conn: PoolConnection) -> None:
        self.active_requests -= 1
        state = conn.state
        if state == CLOSED:
            return
        config = self.cluster.config
        if (state != BUSY or not conn.capacity or self.pending or self.draining
                or config.max_requests_per_connection):
            self._assign_or_idle(conn)
            return
        # The usual: a connection back with nothing waiting for it (every HTTP/1.1 request's
        # path): the most recently used ready connection.
        self.busy.discard(conn)
        conn.state = READY
        self.ready.append(conn)
        if not conn.active_streams and config.idle_timeout:
            timer = self.idle_timer
            if timer is None or timer.deadline is None:
                self._arm_idle_timer()

    def on_capacity_changed(self, conn: PoolConnection) -> None:
        if conn.state == READY and not conn.is_available():
            self._set_busy(conn)
        elif conn.state == BUSY and not self._retired(conn):
            self._assign_or_idle(conn)
        if self.pending and not conn.is_available():
            self._open_for(len(self.pending))  # it took fewer than it was counted for

    def _assign_or_idle(self, conn: PoolConnection) -> None:
        """A connected connection that may have capacity: give it pending requests, then put
        it where it belongs."""
        pending = self.pending
        if pending:
            # (Pending requests are served even while the pool drains: nothing else will.)
            while pending and conn.is_available() and not self._exhausted(conn):
                p = pending.popleft()
                if p.cancelled:
                    continue
                p.cancelled = True
                self._pending_done()
                self._attach(conn, p.router)
            if conn.state == CLOSED:
                return
        if self._retired(conn):
            if conn.is_idle():
                conn.close()
            elif conn.state == READY:
                self._set_busy(conn)
            return
        if not conn.is_available():
            if conn.state == READY:
                self._set_busy(conn)
            return
        self._set_ready(conn)
        if conn.is_idle():
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        timeout = self.cluster.config.idle_timeout
        if timeout and (self.idle_timer is None or self.idle_timer.deadline is None):
            if self.idle_timer is None:
                self.idle_timer = self.cluster.worker.dispatcher.create_timer(self._close_idle)
            self.idle_timer.enable(timeout)

    def _close_idle(self) -> None:
        """Cluster idle_timeout (common_http_protocol_options.idle_timeout, default 1 h):
        close the ready connections that have had no stream for that long."""
        timeout = self.cluster.config.idle_timeout
        now = time.monotonic()
        for conn in [c for c in self.ready if c.has_expired(now)]:
            self.cluster.stats.upstream_cx_idle_timeout.value += 1
            conn.close()
        idle = [c.idle_since for c in self.ready if c.is_idle()]
        if idle and timeout:
            self.idle_timer.enable(max(0.0, min(idle) + timeout - now))
        else:
            self.idle_timer.disable()

    def on_closed(self, conn: PoolConnection, prev_state: str, reason: str, lost: int) -> None:
        c = self.cluster
        c.stats.upstream_cx_active.value -= 1
        c.stats.upstream_cx_destroy.value += 1
        if conn.holds_slot:
            conn.holds_slot = False
            self.limits.release_connection()
        self.connecting_capacity -= self.connecting.pop(conn, 0)
        self.busy.discard(conn)
        if prev_state == READY and conn in self.ready:
            self.ready.remove(conn)
        self.active_requests -= lost  # streams that ended with the connection (no release)
        if prev_state == CONNECTING:
            if reason == CloseReason.CONNECT_TIMEOUT:
                c.stats.upstream_cx_connect_timeout.value += 1
            c.stats.upstream_cx_connect_fail.value += 1
            self.cx_connect_fail += 1
            # Envoy 1.40's wording: a refused or failed connect is a "remote connection
            # failure" (transport failure reason "delayed_connect_error: <strerror>").
            text = ("connection timeout" if reason == CloseReason.CONNECT_TIMEOUT
                    else "remote connection failure")
            transport = transport_failure(conn.connection)
            # Fail pending requests that no remaining connection attempt will serve.
            while self.pending and len(self.pending) > self.connecting_capacity:
                p = self.pending.popleft()
                if p.cancelled:
                    continue
                p.cancelled = True
                self._pending_done()
                self.active_requests -= 1
                p.router.on_pool_failure(text, "UF", transport)
        elif self.pending and not self.connecting:
            self._open(holds_slot=self.limits.try_acquire_connection())

    def drain(self) -> None:
        """Close idle connections; the others close when their last stream ends."""
        self.draining = True
        if self.idle_timer is not None:
            self.idle_timer.disable()
        for conn in list(self.ready):
            if conn.is_idle():
                conn.close()
            else:
                self._set_busy(conn)

    @property
    def cx_active(self) -> int:
        return len(self.busy) + len(self.ready)

    @property
    def idle(self) -> bool:
        return not (self.busy or self.connecting or self.pending)


class DownstreamProtocolPool:
    """use_downstream_protocol_config: one host's pools for a cluster whose upstream protocol
    follows each request's downstream protocol (Envoy's USE_DOWNSTREAM_PROTOCOL: an HTTP/2
    request goes up over HTTP/2, an HTTP/1.1 or HTTP/1.0 one over HTTP/1.1). It holds a pool
    per protocol (keyed as fixed pools are, with the same circuit breakers) and is what the
    router gets from `WorkerCluster.pool_for`: the part of a pool the router uses is here —
    `limits`, `host_str`, the host's `rq_success`/`rq_error` counts it writes, and
    `new_stream(router, fresh)`, which picks the pool by the request the router holds
    (`router.stream.head.http_version`: b"2" from an HTTP/2 codec). The admin reads the
    host's other stats as the sums of both pools.
    Thread affinity: one worker."""

    __slots__ = ("http1", "http2", "key", "limits", "host", "host_str", "rq_success", "rq_error",
                 "rq_timeout")

    def __init__(self, cluster, host, limits, transport_factory, key) -> None:
        self.http1 = HttpConnPool(cluster, host, limits, transport_factory, HTTP11)
        self.http2 = HttpConnPool(cluster, host, limits, transport_factory, HTTP2)
        self.key = key
        self.limits = limits
        self.host = host
        self.host_str = self.http1.host_str
        self.rq_success = self.rq_error = self.rq_timeout = 0

    def new_stream(self, router, fresh: bool = False) -> PendingRequest | None:
        pool = self.http2 if router.stream.head.http_version == b"2" else self.http1
        return pool.new_stream(router, fresh)

    def drain(self) -> None:
        self.http1.drain()
        self.http2.drain()

    # The host's stats for the admin (/clusters), and LEAST_REQUEST's active requests.
    @property
    def active_requests(self) -> int:
        return self.http1.active_requests + self.http2.active_requests

    @property
    def rq_total(self) -> int:
        return self.http1.rq_total + self.http2.rq_total

    @property
    def pending(self) -> list:
        return [*self.http1.pending, *self.http2.pending]

    @property
    def cx_total(self) -> int:
        return self.http1.cx_total + self.http2.cx_total

    @property
    def cx_connect_fail(self) -> int:
        return self.http1.cx_connect_fail + self.http2.cx_connect_fail

    @property
    def cx_active(self) -> int:
        return self.http1.cx_active + self.http2.cx_active

    @property
    def idle(self) -> bool:
        return self.http1.idle and self.http2.idle
