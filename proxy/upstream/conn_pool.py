"""Per-worker, per-host HTTP/1.1 connection pool.

A pool's key (`PoolKey`) is what makes two upstream connections interchangeable: the host, the
protocol (HTTP/1.1 today) and the transport socket factory's key (its options: raw_buffer
today, TLS settings later); its connections get their transport sockets from that factory.

Bookkeeping only (httpcore's lesson): the pool keeps each upstream connection in one state
list (connecting / ready / busy), a FIFO of pending requests, and decides which request
gets which connection. Connections and routers do the I/O.
Limits: `max_connections` and `max_pending_requests` are cluster-wide (the ResourceLimits of the
pool's routing priority, shared by all workers); like Envoy, a pool with no connection at all may always open one, so one worker
cannot be starved by the others.
Thread affinity: one worker. Must not: block.
"""

from __future__ import annotations

import os

import time
from collections import deque
from typing import Hashable, NamedTuple

from ..http.codec_client import UpstreamHttpConnection
from ..network.connection import CloseReason

__all__ = ["HttpConnPool", "PendingRequest", "PoolKey", "HTTP11"]

HTTP11 = "http/1.1"  # the ALPN name of the one upstream protocol spoken today


class PoolKey(NamedTuple):
    host: tuple[str, int]      # Host.key: address, port
    protocol: str              # HTTP11
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
    __slots__ = ("cluster", "host", "limits", "host_str", "address", "ready", "busy", "connecting", "pending",
                 "draining", "active_requests", "idle_timer", "rq_total", "rq_success", "rq_error",
                 "cx_total", "cx_connect_fail", "key", "transport_factory")

    def __init__(self, cluster, host, limits, transport_factory, protocol: str = HTTP11) -> None:
        self.cluster = cluster            # WorkerCluster
        self.host = host
        self.limits = limits              # the cluster's ResourceLimits for this pool's priority
        self.transport_factory = transport_factory
        self.key = PoolKey(host.key, protocol, transport_factory.key)
        self.host_str = str(host)
        self.address = (host.address, host.port)
        self.ready: list[UpstreamHttpConnection] = []
        self.busy: set[UpstreamHttpConnection] = set()
        self.connecting: set[UpstreamHttpConnection] = set()
        self.pending: deque[PendingRequest] = deque()
        self.draining = False
        self.active_requests = 0
        self.idle_timer = None
        # Per-host stats for /clusters (Envoy's host stats): written by this worker only,
        # read (summed over workers) by the admin thread as plain int attributes.
        self.rq_total = self.rq_success = self.rq_error = self.cx_total = self.cx_connect_fail = 0

    # -- requests ------------------------------------------------------------------------------
    def new_stream(self, router, fresh: bool = False) -> PendingRequest | None:
        """Attach `router` to a connection now (returns None) or queue it (returns a handle).
        `fresh`: do not reuse an idle connection (a retry after a reused one failed)."""
        self.active_requests += 1
        self.rq_total += 1
        ready = self.ready
        while ready and not fresh:
            conn = ready.pop()
            if conn.connection.closed:
                continue
            conn.state = "BUSY"
            self.busy.add(conn)
            router.on_pool_ready(conn)
            return None
        limits = self.limits
        stats = self.cluster.stats
        if len(self.connecting) < len(self.pending) + 1:
            if limits.try_acquire_connection():
                self._open(holds_slot=True)
            elif not (self.busy or self.connecting):
                self._open(holds_slot=False)
            else:
                stats.upstream_cx_overflow.value += 1
        if not limits.try_acquire_pending():
            stats.upstream_rq_pending_overflow.value += 1
            self.active_requests -= 1
            router.on_pool_failure("overflow", "UO")
            return None
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        p = PendingRequest(self, router)
        self.pending.append(p)
        return p

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

    def _attach(self, conn: UpstreamHttpConnection, router) -> None:
        conn.state = "BUSY"
        self.busy.add(conn)
        router.on_pool_ready(conn)

    def _open(self, holds_slot: bool) -> None:
        c = self.cluster
        self.cx_total += 1
        c.stats.upstream_cx_total.value += 1
        c.stats.upstream_cx_http1_total.value += 1  # the pool's protocol (PoolKey): HTTP/1.1
        c.stats.upstream_cx_active.value += 1
        conn = UpstreamHttpConnection(self, c.worker.dispatcher, self.address, c.config.connect_timeout,
                                      c.buffer_limit, c.codec_impl, c.worker.next_connection_id(),
                                      self.transport_factory)
        conn.holds_slot = holds_slot
        self.connecting.add(conn)

    # -- connection events ---------------------------------------------------------------------
    def on_connected(self, conn: UpstreamHttpConnection) -> None:
        self.connecting.discard(conn)
        conn.state = "READY"
        self._assign_or_idle(conn)

    def on_release(self, conn: UpstreamHttpConnection, reusable: bool) -> None:
        self.active_requests -= 1
        self.busy.discard(conn)
        max_rq = self.cluster.config.max_requests_per_connection
        if not reusable or self.draining or conn.connection.closed or (max_rq and conn.requests >= max_rq):
            conn.connection.close(flush=False)
            return
        conn.state = "READY"
        self._assign_or_idle(conn)

    def _assign_or_idle(self, conn: UpstreamHttpConnection) -> None:
        while self.pending:
            p = self.pending.popleft()
            if p.cancelled:
                continue
            p.cancelled = True
            self._pending_done()
            self._attach(conn, p.router)
            return
        # `ready` is oldest-idle first: new_stream reuses the most recent (warmest) one from
        # the end, and the idle check closes expired ones from the front.
        conn.idle_since = time.monotonic()
        self.ready.append(conn)
        timeout = self.cluster.config.idle_timeout
        if timeout and (self.idle_timer is None or self.idle_timer.deadline is None):
            if self.idle_timer is None:
                self.idle_timer = self.cluster.worker.dispatcher.create_timer(self._close_idle)
            self.idle_timer.enable(timeout)

    def _close_idle(self) -> None:
        """Cluster idle_timeout (common_http_protocol_options.idle_timeout, default 1 h)."""
        timeout = self.cluster.config.idle_timeout
        now = time.monotonic()
        while self.ready and now - self.ready[0].idle_since >= timeout:
            conn = self.ready.pop(0)
            self.cluster.stats.upstream_cx_idle_timeout.value += 1
            conn.connection.close(flush=False)
        if self.ready:
            self.idle_timer.enable(self.ready[0].idle_since + timeout - now)

    def on_closed(self, conn: UpstreamHttpConnection, prev_state: str, reason: str) -> None:
        c = self.cluster
        c.stats.upstream_cx_active.value -= 1
        c.stats.upstream_cx_destroy.value += 1
        if conn.holds_slot:
            conn.holds_slot = False
            self.limits.release_connection()
        self.connecting.discard(conn)
        if conn in self.busy:
            self.busy.discard(conn)
            self.active_requests -= 1  # its request ended with the connection (no release)
        if conn in self.ready:
            self.ready.remove(conn)
        if prev_state == "CONNECTING":
            if reason == CloseReason.CONNECT_TIMEOUT:
                c.stats.upstream_cx_connect_timeout.value += 1
            c.stats.upstream_cx_connect_fail.value += 1
            self.cx_connect_fail += 1
            # Envoy 1.40's wording: a refused or failed connect is a "remote connection
            # failure" (transport failure reason "delayed_connect_error: <strerror>").
            text = ("connection timeout" if reason == CloseReason.CONNECT_TIMEOUT
                    else "remote connection failure")
            errno = conn.connection.connect_errno
            transport = f"delayed_connect_error: {os.strerror(errno)}" if errno else ""
            # Fail pending requests that no remaining connection attempt will serve.
            while self.pending and len(self.pending) > len(self.connecting):
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
        """Close idle connections; busy ones close when released."""
        self.draining = True
        if self.idle_timer is not None:
            self.idle_timer.disable()
        for conn in list(self.ready):
            conn.connection.close(flush=False)

    @property
    def cx_active(self) -> int:
        return len(self.busy) + len(self.ready)

    @property
    def idle(self) -> bool:
        return not (self.busy or self.connecting or self.pending)
