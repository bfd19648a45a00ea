"""Cluster manager: the main thread's master copy of every cluster's host set.

Job: build hosts from config (STATIC) or DNS (STRICT_DNS: every address of every endpoint;
LOGICAL_DNS: the first address of its one endpoint), re-resolve each DNS cluster every
`dns_refresh_rate`, and publish an immutable `Mapping[str, ClusterSnapshot]` through the
injected `publish` callable whenever some host set changed (the server posts it to every
worker's thread-local slot). A DNS failure keeps the previous hosts and counts
`cluster.<name>.update_failure`.

Ownership and threads: main thread only. It is not thread-safe and needs no lock: workers
only ever see the immutable snapshots handed to `publish`. The one shared mutable object
inside a snapshot is `ResourceLimits`, created once per cluster and reused by every snapshot
of that cluster so circuit-breaker counts survive host changes.

Dynamic clusters (CDS, EDS; the section "dynamic clusters" at the end): `apply_cds` adds,
modifies (a new cluster object and limits: workers drain the old pools) and removes clusters
given a whole validated CDS set; an EDS cluster takes its hosts from the subscription made by
the injected `eds_subscribe` and is warming — not published to workers — until its first
ClusterLoadAssignment (or a failed first fetch) arrives, as Envoy's init manager does; a CDS
cluster whose TLS context names secrets from a control plane also warms until they came
(`on_transport` returns them; `check_secrets()`).

Must not: resolve names anywhere but through `resolver` (blocking, hence main thread only),
sleep, or own timers: the caller calls `tick()` about once a second, or at `next_deadline()`.
Must not import proxy.xds (it is injected: `eds_subscribe`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Protocol

from .circuit_breaker import ResourceLimits
from .cluster_config import ClusterConfig, EndpointConfig
from .dns import system_resolver
from .cluster_outlier import ClusterOutlierDetection
from .health_checker import ClusterHealthChecker
from .host import ClusterSnapshot, Host, HostSet, by_health

__all__ = ["ClusterManager", "StatsSink"]

log = logging.getLogger("proxy.upstream.cluster_manager")

Resolver = Callable[[str, int, str], list[str]]
Publish = Callable[[Mapping[str, ClusterSnapshot]], None]
# eds_subscribe(cluster config, on_endpoints) -> a handle with stop(): calls on_endpoints(
# endpoints or None) on main (None: the first fetch failed; the cluster warms up empty).
EdsSubscribe = Callable[[ClusterConfig, Callable[[tuple[EndpointConfig, ...] | None], None]], Any]


class StatsSink(Protocol):
    """What the manager needs from a stats store: `counter(name).inc()`, `gauge(name).set(v)`."""

    def counter(self, name: str) -> Any: ...
    def gauge(self, name: str) -> Any: ...


class _ClusterState:
    """Main-thread bookkeeping for one cluster."""

    __slots__ = ("config", "limits", "high_limits", "target_hosts", "next_refresh", "snapshot",
                 "added_via_api", "version_info", "last_updated", "eds", "warm", "health",
                 "outlier", "policy", "cold")

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.limits = ResourceLimits(config.circuit_breakers)
        self.high_limits = ResourceLimits(config.high_priority_circuit_breakers)
        # One tuple of hosts per configured endpoint (a DNS "resolve target" in Envoy).
        self.target_hosts: list[tuple[Host, ...]] = [() for _ in config.endpoints]
        self.next_refresh = -math.inf
        self.snapshot: ClusterSnapshot | None = None
        self.added_via_api = False     # CDS (dynamic_active_clusters) rather than static
        self.version_info = ""         # the CDS version that added or last modified it
        self.last_updated = 0.0        # wall-clock time of that
        self.eds = None                # an EDS cluster's subscription handle
        self.warm = config.type != "EDS"  # an EDS cluster warms until its first assignment
        self.health: ClusterHealthChecker | None = None   # active health checks, if configured
        self.outlier: ClusterOutlierDetection | None = None   # outlier detection, if configured
        self.policy = None   # an EDS cluster's latest ClusterLoadAssignment.policy
        self.cold: list = []   # a CDS cluster's xDS secrets still awaited (each has .first_done)

    @property
    def is_dns(self) -> bool:
        return self.config.type in ("STRICT_DNS", "LOGICAL_DNS")


class ClusterManager:
    def __init__(self, configs: Sequence[ClusterConfig], publish: Publish,
                 resolver: Resolver = system_resolver, clock: Callable[[], float] = time.monotonic,
                 stats: StatsSink | None = None, dispatcher: Any = None,
                 eds_subscribe: EdsSubscribe | None = None) -> None:
        self._publish = publish
        self._dispatcher = dispatcher  # the main thread's: active health checks run on it
        self._eds_subscribe = eds_subscribe
        # (added, removed) transport socket factory of a CDS cluster: the server tracks their
        # secrets (file and xDS SDS, proxy/tls/watcher.py) and returns the xDS ones the added
        # factory still waits for (the cluster warms until they came).
        self.on_transport: Callable[[Any, Any], Any] = lambda added, removed: ()
        self._holding = False  # inside a batch (initialize, apply_cds): publish once at its end
        self._resolver = resolver
        self._clock = clock
        self._stats = stats
        self._clusters: dict[str, _ClusterState] = {}
        for cfg in configs:
            if cfg.name in self._clusters:
                raise ValueError(f'duplicate cluster name "{cfg.name}"')
            self._clusters[cfg.name] = state = _ClusterState(cfg)
            state.health = self._health_checker(state)
            state.outlier = self._outlier_detection(state)
        self._published: Mapping[str, ClusterSnapshot] = MappingProxyType({})
        self._initialized = False

    # -- public API (main thread) --------------------------------------------------------
    def initialize(self) -> None:
        """Build every cluster (resolving DNS clusters once, blocking) and publish."""
        if self._initialized:
            raise RuntimeError("ClusterManager.initialize() called twice")
        self._initialized = True
        self._holding = True
        for state in self._clusters.values():
            self._build(state)
            self._count("cluster_manager.cluster_added")
        self._holding = False
        self._refresh_cluster_gauges()
        self._refresh_limit_gauges()
        self._publish_all()

    def tick(self) -> None:
        """Re-resolve DNS clusters that are due; publish only if some host set changed."""
        if not self._initialized:
            raise RuntimeError("ClusterManager.tick() before initialize()")
        now = self._clock()
        changed = False
        for state in self._clusters.values():
            if state.is_dns and state.next_refresh <= now:
                self._resolve(state)
                changed |= self._update_hosts(state)
        self._refresh_limit_gauges()
        if changed:
            self._publish_all()

    def snapshots(self) -> Mapping[str, ClusterSnapshot]:
        """The mapping last published (read-only)."""
        return self._published

    def next_deadline(self) -> float:
        """Clock time at which `tick()` next has work (math.inf if no DNS clusters)."""
        if not self._initialized:
            return self._clock()
        return min((s.next_refresh for s in self._clusters.values() if s.is_dns), default=math.inf)

    # -- active health checking (health_checker.py): the only hooks ---------------------------
    @property
    def warm(self) -> bool:
        """Every health-checked cluster has a first result for each host (Envoy waits for this
        before its workers take traffic: cluster warming)."""
        return all(s.health is None or s.health.warm for s in self._clusters.values())

    def warm_timeout(self) -> float:
        """How long warming may take at most: the slowest first check."""
        return max((hc.initial_jitter + hc.timeout for s in self._clusters.values()
                    for hc in s.config.health_checks), default=0.0)

    def stop_health_checks(self) -> None:
        for s in self._clusters.values():
            if s.health is not None:
                s.health.stop()
            if s.outlier is not None:
                s.outlier.stop()

    def _health_checker(self, state: _ClusterState) -> ClusterHealthChecker | None:
        cfg = state.config
        if not cfg.health_checks:
            return None
        if self._dispatcher is None:
            raise ValueError(f"cluster {cfg.name}: health_checks need the main dispatcher")
        stats = self._stats
        if stats is None:
            from ..stats.store import Store
            stats = Store("health_checks")
        limits, high = state.limits, state.high_limits
        return ClusterHealthChecker(cfg.name, cfg.health_checks, self._dispatcher, stats,
                                    had_traffic=lambda: limits.had_traffic or high.had_traffic,
                                    on_change=lambda: self._on_health_change(state))

    # -- outlier detection (cluster_outlier.py): the only hooks ---------------------------------
    def _outlier_detection(self, state: _ClusterState) -> ClusterOutlierDetection | None:
        cfg = state.config
        if cfg.outlier_detection is None:
            return None
        if self._dispatcher is None:
            raise ValueError(f"cluster {cfg.name}: outlier_detection needs the main dispatcher")
        stats = self._stats
        if stats is None:
            from ..stats.store import Store
            stats = Store("outlier_detection")
        od = ClusterOutlierDetection(cfg.name, cfg.outlier_detection, self._dispatcher, stats,
                                     on_change=lambda: self._on_health_change(state),
                                     clock=self._clock)
        if state.health is not None:
            state.health.on_check_passed = od.on_health_check_passed
        return od

    def outlier_host_info(self, cluster: str, key: tuple[str, int]) -> tuple[float, float]:
        """A host's (success_rate, local_origin_success_rate) for /clusters (-1: none)."""
        state = self._clusters.get(cluster)
        if state is None or state.outlier is None:
            return (-1.0, -1.0)
        return state.outlier.host_info(key)

    def _on_health_change(self, state: _ClusterState) -> None:
        if state.snapshot is not None and self._clusters.get(state.config.name) is state:
            self._rebuild(state, state.snapshot.hosts)
            self._publish_all()

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _static_host(ep: EndpointConfig, address: str | None = None, hostname: str | None = None) -> Host:
        return Host(ep.address if address is None else address, ep.port, ep.weight,
                    ep.hostname if hostname is None else hostname, ep.health_status, ep.health_check,
                    priority=ep.priority, locality=ep.locality, locality_weight=ep.locality_weight)

    @staticmethod
    def _all_hosts(state: _ClusterState) -> list[Host]:
        return [h for hosts in state.target_hosts for h in hosts]

    def _resolve(self, state: _ClusterState) -> None:
        """Resolve each endpoint of a DNS cluster; a failed target keeps its previous hosts."""
        cfg = state.config
        prefix = f"cluster.{cfg.name}."
        for i, ep in enumerate(cfg.endpoints):
            self._count(prefix + "update_attempt")
            try:
                addresses = self._resolver(ep.address, ep.port, cfg.dns_lookup_family)
            except OSError as e:
                self._count(prefix + "update_failure")
                log.warning("cluster %s: DNS resolution of %s failed: %s; keeping %d host(s)",
                            cfg.name, ep.address, e, len(state.target_hosts[i]))
                continue
            unique = list(dict.fromkeys(addresses))
            if cfg.type == "LOGICAL_DNS":
                if not unique:
                    self._count(prefix + "update_failure")
                    log.warning("cluster %s: DNS answer for %s is empty; keeping the previous "
                                "address", cfg.name, ep.address)
                    continue
                unique = unique[:1]
            elif not unique:
                self._count(prefix + "update_empty")  # STRICT_DNS: an empty answer empties the set
            self._count(prefix + "update_success")
            hostname = ep.hostname or ep.address
            state.target_hosts[i] = tuple(self._static_host(ep, a, hostname) for a in unique)
        state.next_refresh = self._clock() + cfg.dns_refresh_rate

    def _update_hosts(self, state: _ClusterState) -> bool:
        """Rebuild the snapshot if the set of hosts changed (order alone is not a change:
        DNS servers rotate answers). Returns whether it changed."""
        new_hosts = HostSet.of(self._all_hosts(state)).hosts
        assert state.snapshot is not None
        if frozenset(new_hosts) == frozenset(state.snapshot.hosts):
            return False
        self._count(f"cluster.{state.config.name}.membership_change")
        self._rebuild(state, new_hosts)
        return True

    def _rebuild(self, state: _ClusterState, hosts: tuple[Host, ...]) -> None:
        cfg = state.config
        if state.health is not None:  # sessions for new hosts, flags on all
            state.health.set_hosts(hosts)
            hosts = state.health.apply(hosts)
        if state.outlier is not None:  # monitors for new hosts, ejection flags on all
            state.outlier.set_hosts(hosts)
            hosts = state.outlier.apply(hosts)
        # Envoy lists (and /clusters prints) hosts level by level.
        hosts = tuple(sorted(hosts, key=lambda h: h.priority))
        state.snapshot = ClusterSnapshot(
            cfg.name, cfg, hosts, state.limits, state.high_limits,
            state.health.report_immediate_fail if state.health is not None else None,
            state.policy)
        self._set_gauge(f"cluster.{cfg.name}.membership_total", len(hosts))
        # Health: the endpoints' health_status and the active health checks' flags.
        healthy, degraded = by_health(hosts)
        self._set_gauge(f"cluster.{cfg.name}.membership_healthy", len(healthy))
        self._set_gauge(f"cluster.{cfg.name}.membership_degraded", len(degraded))

    def check_secrets(self) -> bool:
        """CDS clusters waiting for their xDS secrets: those whose secrets came (or failed
        their first fetch) are published. True while some still wait (the caller polls every
        10 ms meanwhile: proxy/server/instance.py)."""
        warmed = waiting = False
        for state in self._clusters.values():
            if state.cold:
                state.cold = [p for p in state.cold if not p.first_done]
                warmed |= not state.cold
                waiting |= bool(state.cold)
        if warmed and not self._holding:
            self._refresh_cluster_gauges()
            self._publish_all()
        return waiting

    def _publish_all(self) -> None:
        snaps = {name: s.snapshot for name, s in self._clusters.items()
                 if s.snapshot is not None and s.warm and not s.cold}
        self._published = MappingProxyType(snaps)
        self._publish(self._published)

    def _refresh_limit_gauges(self) -> None:
        if self._stats is None:
            return
        for name, state in self._clusters.items():
            for priority, limits in (("default", state.limits), ("high", state.high_limits)):
                for stat, value in limits.gauges(priority).items():
                    self._set_gauge(f"cluster.{name}.{stat}", value)

    def _count(self, name: str) -> None:
        if self._stats is not None:
            self._stats.counter(name).inc()

    def _set_gauge(self, name: str, value: int) -> None:
        if self._stats is not None:
            self._stats.gauge(name).set(value)


    # -- dynamic clusters (CDS, EDS): main thread -----------------------------------------------
    # Kept apart from the static code above on purpose (other work edits that part).

    def states(self) -> Mapping[str, _ClusterState]:
        """Every cluster's bookkeeping, warming ones included (read by /config_dump on main)."""
        return MappingProxyType(self._clusters)

    def is_static(self, name: str) -> bool:
        state = self._clusters.get(name)
        return state is not None and not state.added_via_api

    def apply_cds(self, configs: Sequence[ClusterConfig], version_info: str,
                  now: float | None = None, keep: frozenset[str] = frozenset()) -> None:
        """A CDS set (the valid clusters: names unique, none a static cluster's): CDS clusters
        neither in it nor in `keep` (the names of the update's refused clusters, which keep
        their old config, as Envoy) are removed (their pools drain on the workers), new ones
        added, changed ones replaced; an unchanged cluster (same config) is left alone. One
        publish."""
        wall = time.time() if now is None else now
        wanted = {cfg.name: cfg for cfg in configs}
        outer = self._holding          # inside batch(): its end publishes
        self._holding = True
        try:
            for name in [n for n, s in self._clusters.items()
                         if s.added_via_api and n not in wanted and n not in keep]:
                self._remove(name)
            for cfg in configs:
                old = self._clusters.get(cfg.name)
                if old is not None and old.config.raw == cfg.raw:
                    continue
                state = _ClusterState(cfg)
                state.added_via_api = True
                state.version_info = version_info
                state.last_updated = wall
                state.health = self._health_checker(state)
                state.outlier = self._outlier_detection(state)
                if old is not None:
                    self._stop_eds(old)
                # Its xDS secrets (SDS): it warms until they came, as Envoy's cluster warming.
                state.cold = list(self.on_transport(cfg.transport_socket,
                                                    old.config.transport_socket if old is not None else None) or ())
                self._clusters[cfg.name] = state
                self._count("cluster_manager.cluster_modified" if old is not None
                            else "cluster_manager.cluster_added")
                log.info("cds: cluster %s %s", cfg.name, "modified" if old is not None else "added")
                self._build(state)
        finally:
            self._holding = outer
        if not outer:
            self._refresh_cluster_gauges()
            self._refresh_limit_gauges()
            self._publish_all()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many updates, one publish at the end (an xDS response that carries a thousand EDS
        assignments would otherwise publish a thousand cluster maps)."""
        if self._holding:
            yield
            return
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self._refresh_cluster_gauges()
            self._refresh_limit_gauges()
            self._publish_all()

    def _remove(self, name: str) -> None:
        state = self._clusters.pop(name)
        self._stop_eds(state)
        self.on_transport(None, state.config.transport_socket)
        self._count("cluster_manager.cluster_removed")
        log.info("cds: cluster %s removed", name)

    def _build(self, state: _ClusterState) -> None:
        """First hosts of a new cluster: static endpoints, DNS (blocking), or EDS (a file
        source answers before this returns; until it does the cluster is warming)."""
        if state.config.type == "EDS":
            self._start_eds(state)
            return
        if state.is_dns:
            self._resolve(state)
        else:
            state.target_hosts = [(self._static_host(ep),) for ep in state.config.endpoints]
        self._rebuild(state, HostSet.of(self._all_hosts(state)).hosts)

    def _start_eds(self, state: _ClusterState) -> None:
        if self._eds_subscribe is None:
            raise RuntimeError(f"cluster {state.config.name}: type EDS but no EDS source is wired")
        state.target_hosts = []
        state.eds = self._eds_subscribe(
            state.config, lambda eps, policy=None, state=state: self._on_eds(state, eps, policy))

    @staticmethod
    def _stop_eds(state: _ClusterState) -> None:
        """A replaced or removed cluster's sources stop: its EDS subscription, its health checks."""
        if state.eds is not None:
            state.eds.stop()
            state.eds = None
        if state.health is not None:
            state.health.stop()
        if state.outlier is not None:
            state.outlier.stop()

    def _on_eds(self, state: _ClusterState, endpoints: tuple[EndpointConfig, ...] | None,
                policy=None) -> None:
        """An EDS update (None: the first fetch failed: warm up with no hosts, as Envoy), with
        its ClusterLoadAssignment's policy (None: the defaults)."""
        if self._clusters.get(state.config.name) is not state:
            return  # removed or replaced meanwhile
        policy_changed = False
        if endpoints is not None:
            state.target_hosts = [tuple(self._static_host(ep) for ep in endpoints)]
            policy_changed = policy != state.policy
            state.policy = policy
        hosts = HostSet.of(self._all_hosts(state)).hosts
        if not state.warm or state.snapshot is None:
            state.warm = True
            self._rebuild(state, hosts)
            changed = True
        else:
            changed = self._update_hosts(state)
            if policy_changed and not changed:   # same hosts, another overprovisioning factor
                self._rebuild(state, state.snapshot.hosts)
                changed = True
        if changed and not self._holding:
            self._refresh_cluster_gauges()
            self._publish_all()

    def _refresh_cluster_gauges(self) -> None:
        warming = sum(1 for s in self._clusters.values() if not s.warm or s.cold)
        self._set_gauge("cluster_manager.active_clusters", len(self._clusters) - warming)
        self._set_gauge("cluster_manager.warming_clusters", warming)
