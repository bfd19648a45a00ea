"""Worker: an OS thread running one Dispatcher, owning its connections, pools and stats.

Main talks to a worker only through `post()` (Dispatcher.post): it hands over listen sockets,
publishes cluster snapshots (the thread-local slot pattern: immutable value, swapped by
reference on the worker's own thread between events) and asks it to drain or stop.
Thread affinity: every method except `post`, `start` and `join` runs on the worker thread.
"""

from __future__ import annotations

import email.utils
from binascii import hexlify
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping

from ..network.listener import ActiveListener
from ..upstream.worker_cluster import WorkerCluster
from .dispatcher import Dispatcher

# How long one slice of a cluster map's building may hold the worker (set_clusters): then
# its connections' events run, and the rest follows.
CLUSTER_SLICE_S = 0.001

__all__ = ["Worker"]

log = logging.getLogger("ftproxy.worker")


class Worker:
    def __init__(self, index: int, store, codec_impl: str = "fast") -> None:
        self.index = index
        self.name = f"worker_{index}"
        self.stats = store
        # A bug that escapes a connection's own handling is logged and counted; the connection
        # concerned is closed (Connection._on_event) and the worker keeps serving.
        self.unhandled_exceptions = store.counter(f"server.{self.name}.unhandled_exceptions")
        self.dispatcher = Dispatcher(self.name, self.unhandled_exceptions.inc)
        self.codec_impl = codec_impl
        self.clusters: dict[str, WorkerCluster] = {}
        # (name, snapshot) of the last cluster map still to build (set_clusters), last first.
        self._cluster_work: list = []
        # RDS: the HCM contexts (weakly: a removed listener's go with it) whose route table
        # each RDS provider's key updates.
        self.rds_contexts: dict[tuple, weakref.WeakSet] = {}
        self.listeners: list[ActiveListener] = []
        self.connections: set = set()
        self.draining = False
        # The server's /healthcheck/fail state (threads/server_health.py), set by the server.
        self.server_health = None
        self._rng = random.Random()
        self._conn_seq = 0
        self._thread: threading.Thread | None = None
        # Envoy's server.total_connections: each worker's share, summed when stats merge.
        self._cx_gauge = store.gauge("server.total_connections")
        self._on_idle: Callable[[], None] | None = None
        self._date_second = -1
        self._new_rid_rest()
        self._date_value = b""

    # -- thread-safe -----------------------------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        self.dispatcher.post(fn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """The worker's thread runs (started and its loop has not ended)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.dispatcher.run()
        except BaseException:
            log.exception("%s: event loop died", self.name)
            raise
        finally:
            self.dispatcher.close()

    # -- worker thread ---------------------------------------------------------------------------
    def rand_bits(self) -> int:
        return self._rng.getrandbits(32)

    def rand_below(self, n: int) -> int:
        return self._rng.randrange(n) if n > 0 else 0

    def new_request_id(self) -> bytes:
        """A UUID4-form id, unique per worker: its first group (32 bits) varies per request,
        the rest (90 random bits) is drawn once per 2^32 requests. The first group is what
        Envoy samples by (its first 32 bits modulo 10,000: tracing's random_sampling, the
        access log's runtime_filter), so it is spread over the whole range: a random offset
        plus the count times an odd constant (a bijection modulo 2^32, so no id repeats
        before the rest is drawn again). One hexlify per request instead of a 128-bit draw
        and slicing (x-request-id needs uniqueness, not secrecy)."""
        n = self._rid_count
        if n >= 0xFFFFFFFF:
            self._new_rid_rest()
            n = 0
        self._rid_count = n + 1
        return hexlify(((self._rid_offset + n * 0x9E3779B1) & 0xFFFFFFFF).to_bytes(4)) + self._rid_rest

    def _new_rid_rest(self) -> None:
        r = self._rng.getrandbits
        # version 4 in the third group, variant 10xx in the fourth (RFC 9562); the part after
        # the first group, which new_request_id puts in front.
        self._rid_rest = b"-%04x-4%03x-%04x-%012x" % (r(16), r(12), 0x8000 | r(14), r(48))
        self._rid_offset = r(32)
        self._rid_count = 0

    def http_date(self) -> bytes:
        """The `date` header value, formatted once per second per worker."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_value = email.utils.formatdate(now, usegmt=True).encode()
        return self._date_value

    def next_connection_id(self) -> int:
        self._conn_seq += 1
        return (self._conn_seq << 8) | self.index

    def add_connection(self, conn) -> None:
        """A downstream connection this worker now owns (until on_connection_closed)."""
        self.connections.add(conn)
        self._cx_gauge.value = len(self.connections)

    def on_connection_closed(self) -> None:
        self._cx_gauge.value = len(self.connections)
        if self.draining and not self.connections and self._on_idle is not None:
            cb, self._on_idle = self._on_idle, None
            self._drained()
            cb()

    def set_clusters(self, snapshots: Mapping) -> None:
        """Swap in a new cluster snapshot mapping (posted by main). Removed clusters drain at
        once; new, replaced and updated ones are built CLUSTER_SLICE_S (1 ms) at a time, the rest
        re-posted behind the I/O of this loop iteration, so that a push of a thousand clusters
        (0.1-0.5 ms each to build: their stats) does not stall this worker's connections for
        half a second. Anything posted after this map (a route table, a listener) first
        finishes the slices, so it sees every cluster of the map."""
        self._cluster_work = []
        first = not self.clusters     # the first map (start-up): nothing to keep serving yet
        for name in [n for n in self.clusters if n not in snapshots]:
            self.clusters.pop(name).drain()
        work = [(name, snap) for name, snap in snapshots.items()
                if (wc := self.clusters.get(name)) is None or wc.snapshot is not snap]
        work.reverse()   # popped from the end: the map's order
        self._cluster_work = work
        self._build_clusters(everything=first)

    def _build_clusters(self, everything: bool = False) -> None:
        work = self._cluster_work
        end = time.monotonic() + CLUSTER_SLICE_S
        while work and (everything or time.monotonic() < end):
            name, snap = work.pop()
            wc = self.clusters.get(name)
            if wc is None:
                self.clusters[name] = WorkerCluster(self, snap)
            elif wc.snapshot.config is not snap.config:
                # CDS replaced the cluster: its old pools drain (requests on them finish),
                # new requests get pools built from the new config.
                wc.drain()
                self.clusters[name] = WorkerCluster(self, snap)
            elif wc.snapshot is not snap:
                wc.update(snap)
        if work:
            self.dispatcher.post(self._continue_clusters)

    def _continue_clusters(self) -> None:
        if self._cluster_work:
            self._build_clusters()

    def finish_clusters(self) -> None:
        """Build what is left of the last cluster map now (before something that may use it)."""
        if self._cluster_work:
            self._build_clusters(everything=True)

    def register_rds_context(self, key: tuple, ctx) -> None:
        self.rds_contexts.setdefault(key, weakref.WeakSet()).add(ctx)

    def set_route_table(self, key: tuple, table) -> None:
        """RDS posted a new route table: streams that start from now on route by it; a
        stream already routed keeps its route (filter_manager caches it per stream)."""
        self.finish_clusters()
        for ctx in list(self.rds_contexts.get(key, ())):
            ctx.route_table = table

    def add_listener(self, config, sock, filter_factory, shared: bool, global_limit=None,
                     listener_limit=None) -> None:
        self.finish_clusters()
        al = ActiveListener(self, config, sock, filter_factory.for_worker(self), shared, global_limit,
                            listener_limit)
        self.listeners.append(al)
        al.start()

    def add_udp_listener(self, config, sock, factory) -> None:
        """A UDP listener's socket (network/udp/listener.py): its datagrams and sessions are
        this worker's."""
        from ..network.udp.listener import ActiveUdpListener
        self.finish_clusters()
        al = ActiveUdpListener(self, config, sock, factory)
        self.listeners.append(al)
        al.start()

    def remove_listener(self, name: str, close_sockets: bool, drain_time: float = 0.0,
                        gradual: bool = False, keep_chains: frozenset = frozenset()) -> None:
        """LDS removed or replaced listener `name`: stop accepting on its sockets (closed
        unless `close_sockets` is false: a replacement takes them over), and drain the
        connections it accepted, as Envoy drains a listener's: they keep the config they
        started with; HTTP ones answer a request with `connection: close` (HTTP/2: GOAWAY; an
        idle one closes after a short grace), tcp_proxy ones end on their own. With a
        `drain_time`, each connection starts draining at a moment drawn uniformly over its
        first 90% (`gradual`) or at once (immediate), and those still open when it ends are closed, as
        Envoy closes a drained listener's connections. `keep_chains`: indexes of filter chains
        an in-place update kept unchanged — their connections are not drained at all."""
        gone = [al for al in self.listeners if al.config.name == name]
        for al in gone:
            al.stop(close_sockets)
            self.listeners.remove(al)
        victims = []
        for conn in list(self.connections):
            owner = _listener_of(conn)
            if owner in gone and _chain_index(owner, conn) not in keep_chains:
                victims.append(conn)
        if drain_time <= 0:
            for conn in victims:
                conn.start_drain(False)
            return
        later = self.dispatcher.call_later
        # Over the first 90% of the drain time: each connection hears `connection: close` (or
        # GOAWAY) before the rest are closed at its end (Envoy's per-request coin can fall in
        # its last instant, racing that close with a request).
        spread = drain_time * GRADUAL_SPREAD
        for conn in victims:
            delay = random.random() * spread if gradual else 0.0
            if delay <= 0:
                conn.start_drain(False)
            else:
                later(delay, lambda c=conn: None if _is_closed(c) else c.start_drain(False))
        later(drain_time, lambda: self._close_drained(victims))

    def _close_drained(self, conns: list) -> None:
        """The drain time of a removed listener is over: what it accepted and is still open
        closes (Envoy removes the listener from the worker, closing its connections)."""
        for conn in conns:
            c = getattr(conn, "connection", None) or getattr(conn, "downstream", None)
            if c is not None and not c.closed:
                c.close(flush=True, delay=0.1)

    def drain_listeners(self, names: frozenset, stop: bool, done: Callable[[], None]) -> None:
        """Admin /drain_listeners on this worker: the listeners named start draining (the
        connections they accepted, and any they still accept, answer their next request with
        `connection: close`); with `stop`, they stop accepting and their own sockets close.
        The server stays up. Calls `done` (on this thread) when finished."""
        chosen = [al for al in self.listeners if al.config.name in names]
        for al in chosen:
            al.draining = True
            if stop:
                al.stop(True)
        for conn in list(self.connections):
            if _listener_of(conn) in chosen:
                conn.start_drain(False)
        done()

    def stop_listeners(self, close_sockets: bool = True) -> None:
        for al in self.listeners:
            al.stop(close_sockets)

    def start_drain(self, on_idle: Callable[[], None], close_idle: bool = True) -> None:
        """Stop accepting and answer in-flight requests with `connection: close`; with
        `close_idle`, close idle keep-alive connections now (else at close_idle_connections()).
        Calls `on_idle` (on this thread) once no connection is left."""
        self.draining = True
        self.stop_listeners()
        for conn in list(self.connections):
            conn.start_drain(close_idle)
        if self.connections:
            self._on_idle = on_idle
        else:
            self._drained()
            on_idle()

    def _drained(self) -> None:
        for wc in self.clusters.values():
            wc.drain()

    def stop(self) -> None:
        self.dispatcher.exit()


GRADUAL_SPREAD = 0.9   # the share of the drain time over which gradual drain moments fall


def _listener_of(conn):
    """The ActiveListener that accepted `conn`: its on_closed is the bound `closed` of the
    listener's ActiveConnection record (proxy/network/listener.py), which names it."""
    record = getattr(getattr(conn, "on_closed", None), "__self__", None)
    return getattr(record, "listener", None)


def _chain_index(listener, conn) -> int | None:
    """Which of `listener`'s filter chains `conn` runs (by its per-worker context), if known."""
    ctx = getattr(conn, "ctx", None)
    if ctx is None:
        return None
    for i, chain in enumerate(listener.chains):
        if chain[0] is ctx:
            return i
    return None


def _is_closed(conn) -> bool:
    c = getattr(conn, "connection", None) or getattr(conn, "downstream", None)
    return c is None or c.closed
