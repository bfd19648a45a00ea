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

Must not: resolve names anywhere but through `resolver` (blocking, hence main thread only),
sleep, or own timers: the caller calls `tick()` about once a second, or at `next_deadline()`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from .circuit_breaker import ResourceLimits
from .cluster_config import ClusterConfig, EndpointConfig
from .dns import system_resolver
from .health_checker import ClusterHealthChecker
from .host import ClusterSnapshot, Host, HostSet, by_health

__all__ = ["ClusterManager", "StatsSink"]

log = logging.getLogger("proxy.upstream.cluster_manager")

Resolver = Callable[[str, int, str], list[str]]
Publish = Callable[[Mapping[str, ClusterSnapshot]], None]


class StatsSink(Protocol):
    """What the manager needs from a stats store: `counter(name).inc()`, `gauge(name).set(v)`."""

    def counter(self, name: str) -> Any: ...
    def gauge(self, name: str) -> Any: ...


class _ClusterState:
    """Main-thread bookkeeping for one cluster."""

    __slots__ = ("config", "limits", "high_limits", "target_hosts", "next_refresh", "snapshot",
                 "health")

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.limits = ResourceLimits(config.circuit_breakers)
        self.high_limits = ResourceLimits(config.high_priority_circuit_breakers)
        # One tuple of hosts per configured endpoint (a DNS "resolve target" in Envoy).
        self.target_hosts: list[tuple[Host, ...]] = [() for _ in config.endpoints]
        self.next_refresh = -math.inf
        self.snapshot: ClusterSnapshot | None = None
        self.health: ClusterHealthChecker | None = None   # active health checks, if configured

    @property
    def is_dns(self) -> bool:
        return self.config.type in ("STRICT_DNS", "LOGICAL_DNS")


class ClusterManager:
    def __init__(self, configs: Sequence[ClusterConfig], publish: Publish,
                 resolver: Resolver = system_resolver, clock: Callable[[], float] = time.monotonic,
                 stats: StatsSink | None = None, dispatcher: Any = None) -> None:
        self._publish = publish
        self._dispatcher = dispatcher  # the main thread's: active health checks run on it
        self._resolver = resolver
        self._clock = clock
        self._stats = stats
        self._clusters: dict[str, _ClusterState] = {}
        for cfg in configs:
            if cfg.name in self._clusters:
                raise ValueError(f'duplicate cluster name "{cfg.name}"')
            self._clusters[cfg.name] = state = _ClusterState(cfg)
            state.health = self._health_checker(state)
        self._published: Mapping[str, ClusterSnapshot] = MappingProxyType({})
        self._initialized = False

    # -- public API (main thread) --------------------------------------------------------
    def initialize(self) -> None:
        """Build every cluster (resolving DNS clusters once, blocking) and publish."""
        if self._initialized:
            raise RuntimeError("ClusterManager.initialize() called twice")
        self._initialized = True
        for state in self._clusters.values():
            if state.is_dns:
                self._resolve(state)
            else:
                state.target_hosts = [(self._static_host(ep),) for ep in state.config.endpoints]
            self._rebuild(state, HostSet.of(self._all_hosts(state)).hosts)
            self._count("cluster_manager.cluster_added")
        self._set_gauge("cluster_manager.active_clusters", len(self._clusters))
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

    def _on_health_change(self, state: _ClusterState) -> None:
        if state.snapshot is not None and self._clusters.get(state.config.name) is state:
            self._rebuild(state, state.snapshot.hosts)
            self._publish_all()

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _static_host(ep: EndpointConfig) -> Host:
        return Host(ep.address, ep.port, ep.weight, ep.hostname, ep.health_status, ep.health_check)

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
            state.target_hosts[i] = tuple(Host(a, ep.port, ep.weight, hostname, ep.health_status,
                                               ep.health_check) for a in unique)
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
        state.snapshot = ClusterSnapshot(
            cfg.name, cfg, hosts, state.limits, state.high_limits,
            state.health.report_immediate_fail if state.health is not None else None)
        self._set_gauge(f"cluster.{cfg.name}.membership_total", len(hosts))
        # Health: the endpoints' health_status and the active health checks' flags.
        healthy, degraded = by_health(hosts)
        self._set_gauge(f"cluster.{cfg.name}.membership_healthy", len(healthy))
        self._set_gauge(f"cluster.{cfg.name}.membership_degraded", len(degraded))

    def _publish_all(self) -> None:
        snaps = {name: s.snapshot for name, s in self._clusters.items() if s.snapshot is not None}
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
