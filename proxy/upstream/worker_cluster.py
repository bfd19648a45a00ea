"""A cluster as one worker sees it: the current snapshot, its load balancer, per-host pools
and the worker's `cluster.<name>.*` stat handles.

Main publishes a new ClusterSnapshot (immutable); the worker calls `update()` on its own
thread, which rebuilds the balancer and drains pools of hosts that left. As in Envoy, each
routing priority has its own pools per host (`pools`, `high_pools`), held to that priority's
circuit breakers (`limits`, `high_limits`). Pools are keyed by `PoolKey` (host, protocol, the
transport socket factory's key): a snapshot whose `transport_socket` or protocol options
changed drains the old pools and the next requests get new ones. The protocol: HTTP/1.1 or
HTTP/2 fixed by config, MIXED (auto_config: each connection by ALPN), or DOWNSTREAM
(use_downstream_protocol_config: a `DownstreamProtocolPool` per host, holding one pool per
protocol and choosing by each request's downstream protocol).
Thread affinity: one worker.
"""

from __future__ import annotations

from ..network.transport_socket import upstream_transport_factory
from .cluster_stats import ClusterStats
from .conn_pool import HTTP2, HTTP11, MIXED, TCP, DownstreamProtocolPool, HttpConnPool, PoolKey
from .original_dst import OriginalDstHosts
from .priority_lb import PriorityLoadBalancer

__all__ = ["WorkerCluster", "ClusterStats", "upstream_protocol", "DOWNSTREAM"]

# The PoolKey protocol of use_downstream_protocol_config clusters (a DownstreamProtocolPool).
DOWNSTREAM = "downstream"


def upstream_protocol(config) -> str:
    """The protocol a cluster's pools speak (their PoolKey's, naming the client connection
    class in conn_pool.CLIENT_CONNECTIONS), as Envoy's ClusterInfo::upstreamHttpProtocol:
    the downstream request's (use_downstream_protocol_config: DOWNSTREAM), HTTP/2 or
    HTTP/1.1 by ALPN (auto_config: MIXED), HTTP/2 when the cluster's protocol options ask
    for it (explicit http2_protocol_options; h2c, prior knowledge, or h2 over TLS), else
    HTTP/1.1. Tests patch in their own."""
    if config.use_downstream_protocol:
        return DOWNSTREAM
    if config.auto_config:
        return MIXED
    return HTTP2 if config.http2 is not None else HTTP11

class WorkerCluster:
    def __init__(self, worker, snapshot) -> None:
        self.worker = worker
        self.name = snapshot.name
        self.stats = ClusterStats(worker.stats, snapshot.name)
        self.pools: dict[PoolKey, HttpConnPool] = {}       # DEFAULT priority
        self.high_pools: dict[PoolKey, HttpConnPool] = {}  # routes with priority HIGH
        self.codec_impl = worker.codec_impl
        # ORIGINAL_DST: the hosts its requests named (original_dst.py); else None.
        self.request_lb = None
        self.update(snapshot)

    def update(self, snapshot) -> None:
        self.snapshot = snapshot
        self.config = snapshot.config
        self.limits = snapshot.limits
        self.high_limits = snapshot.high_limits
        self.panic = snapshot.panic
        self.hc_report = snapshot.hc_report   # None unless the cluster is health checked
        self.buffer_limit = snapshot.config.per_connection_buffer_limit_bytes
        # Built once on main (raw_buffer's is a singleton, TLS's holds its contexts), bound here
        # to this worker's cluster.<name>.ssl.* stats and upstream TLS sessions.
        self.transport_factory = tf = upstream_transport_factory(snapshot.config).for_worker(
            self.stats.scope.scope("ssl"))
        self.transport_key = tf.key
        self.protocol = protocol = upstream_protocol(snapshot.config)
        self.lb = lb = PriorityLoadBalancer(snapshot.priority_state, snapshot.config,
                                            self._active_requests, self.worker.rand_below,
                                            self.stats.lb_healthy_panic)
        # choose_host(): a host by priority level, locality and the cluster's policy; a pick in
        # a level in panic is counted (lb_healthy_panic), as Envoy does. A plain
        # single-priority cluster gets its host balancer's own bound `choose`: no wrapper
        # frame per request.
        self.choose_host = lb.choose
        # choose_host_by_hash(h): a RING_HASH/MAGLEV balancer's pick for a route's hash; any
        # other balancer ignores the hash (as Envoy's do: they never compute it, so a hash
        # policy's cookie is generated for hashing clusters only).
        self.hashing = lb.choose_hash is not None
        self.choose_host_by_hash = lb.choose_hash or (lambda h: self.choose_host())
        od = snapshot.config.original_dst
        if od is None:
            if self.request_lb is not None:
                self.request_lb.stop()
            self.request_lb = None
        elif self.request_lb is None or self.request_lb.config != od:
            if self.request_lb is not None:
                self.request_lb.stop()
            self.request_lb = OriginalDstHosts(od, self)
        keep = {h.key for h in snapshot.hosts}
        if self.request_lb is not None:
            keep.update(self.request_lb.hosts)
        for pools in (self.pools, self.high_pools):
            for key in [k for k in pools if k.host not in keep or k.transport != tf.key
                        or k.protocol not in (protocol, TCP)]:
                pools.pop(key).drain()

    def host_pools(self, key: tuple[str, int]) -> list[HttpConnPool]:
        """The host's pools (`key`: Host.key), one per routing priority and transport in use.
        Also read by the admin thread: `list()` copies each table in one step (safe against
        the worker's concurrent inserts), never iterated live."""
        return [p for pools in (self.pools, self.high_pools) for k, p in list(pools.items()) if k.host == key]

    def _active_requests(self, host) -> int:
        """For LEAST_REQUEST, per pick: the host's requests over both priorities' pools."""
        key = (host.key, self.protocol, self.transport_key)
        pool, high = self.pools.get(key), self.high_pools.get(key)
        return ((pool.active_requests if pool is not None else 0)
                + (high.active_requests if high is not None else 0))

    def pool_for(self, host, high_priority: bool = False) -> HttpConnPool:
        pools = self.high_pools if high_priority else self.pools
        pool = pools.get((host.key, self.protocol, self.transport_key))  # equal to the PoolKey
        if pool is None:
            limits = self.high_limits if high_priority else self.limits
            if self.protocol == DOWNSTREAM:
                pool = DownstreamProtocolPool(self, host, limits, self.transport_factory,
                                              PoolKey(host.key, DOWNSTREAM, self.transport_key))
            else:
                pool = HttpConnPool(self, host, limits, self.transport_factory, self.protocol)
            pools[pool.key] = pool
        return pool

    def tcp_pool_for(self, host, high_priority: bool = False) -> HttpConnPool:
        """The host's pool of TCP connections (tcp_upstream.py): a terminated CONNECT's
        upstream. Held to the same circuit breakers as the cluster's HTTP pools."""
        pools = self.high_pools if high_priority else self.pools
        key = PoolKey(host.key, TCP, self.transport_key)
        pool = pools.get(key)
        if pool is None:
            limits = self.high_limits if high_priority else self.limits
            pool = pools[key] = HttpConnPool(self, host, limits, self.transport_factory, TCP)
        return pool

    def drain_host(self, key: tuple[str, int]) -> None:
        """Forget a host's pools (an ORIGINAL_DST host no request named for a while)."""
        for pools in (self.pools, self.high_pools):
            for k in [k for k in pools if k.host == key]:
                pools.pop(k).drain()

    def drain(self) -> None:
        for pools in (self.pools, self.high_pools):
            for pool in pools.values():
                pool.drain()
