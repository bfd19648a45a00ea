"""Upstream hosts, host sets and the per-cluster snapshot that workers read.

Job: the immutable values the main thread builds (from config and DNS answers) and publishes
to every worker. A `ClusterSnapshot` is shared read-only by all workers; the only mutable
thing reachable from it is `limits` (`ResourceLimits`), which is thread-safe by design and is
the same object across all snapshots of one cluster (circuit breakers are cluster-wide).

Must not: do I/O or hold per-worker state (load-balancer cursors, pools live in the worker).
Thread affinity: any thread (immutable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .circuit_breaker import ResourceLimits
from .cluster_config import ClusterConfig

__all__ = ["Host", "HostSet", "ClusterSnapshot"]


@dataclass(frozen=True, slots=True)
class Host:
    """One upstream peer. Equal hosts (all fields) are interchangeable across snapshots."""

    address: str          # IP literal
    port: int
    weight: int = 1
    hostname: str = ""    # endpoint `hostname`, or the DNS name it was resolved from
    health_status: str = "UNKNOWN"  # the endpoint's health_status (Envoy's EDS values)
    # Identity of the peer (for per-host pools and active-request counts): (address, port).
    key: tuple[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port))

    def __str__(self) -> str:
        if ":" in self.address:  # IPv6, as Envoy prints it
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class HostSet:
    """An ordered, duplicate-free (by `key`) tuple of hosts."""

    hosts: tuple[Host, ...] = ()

    @classmethod
    def of(cls, hosts: "tuple[Host, ...] | list[Host]") -> "HostSet":
        """Build a set keeping the first host for each (address, port)."""
        seen: set[tuple[str, int]] = set()
        out: list[Host] = []
        for h in hosts:
            if h.key not in seen:
                seen.add(h.key)
                out.append(h)
        return cls(tuple(out))

    def __len__(self) -> int:
        return len(self.hosts)


# Envoy's EDS health: these count as healthy, DEGRADED as degraded, the rest (UNHEALTHY,
# DRAINING, TIMEOUT) as failed_eds_health.
HEALTHY_STATUSES = frozenset({"UNKNOWN", "HEALTHY"})


def health_flags(status: str) -> str:
    """Envoy's /clusters `health_flags` for a host's health_status."""
    if status in HEALTHY_STATUSES:
        return "healthy"
    return "/degraded_eds_health" if status == "DEGRADED" else "/failed_eds_health"


def by_health(hosts: tuple[Host, ...]) -> tuple[tuple[Host, ...], tuple[Host, ...]]:
    """The healthy hosts and the degraded ones (the membership_healthy/_degraded gauges)."""
    return (tuple(h for h in hosts if h.health_status in HEALTHY_STATUSES),
            tuple(h for h in hosts if h.health_status == "DEGRADED"))


def lb_hosts(hosts: tuple[Host, ...], panic_threshold: float = 50.0) -> tuple[tuple[Host, ...], bool]:
    """The hosts a load balancer picks from, and whether the cluster is in panic: the healthy
    ones; the degraded ones only when none is healthy (Envoy gives degraded hosts traffic only
    when the healthy ones cannot take it all; with one priority level and the default
    overprovisioning this simplification differs only while 0 < healthy < 72 % of hosts); all of
    them when less than `panic_threshold` percent are healthy or degraded
    (common_lb_config.healthy_panic_threshold, default 50; 0 never panics)."""
    healthy, degraded = by_health(hosts)
    if hosts and 100 * (len(healthy) + len(degraded)) < panic_threshold * len(hosts):
        return hosts, True
    return healthy or degraded, False


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What a worker needs to route to a cluster: its config, current hosts, shared limits (one
    ResourceLimits per routing priority), and the hosts its load balancers pick from
    (`lb_hosts`, `panic`: see `lb_hosts()`)."""

    name: str
    config: ClusterConfig
    hosts: tuple[Host, ...]
    limits: ResourceLimits
    high_limits: ResourceLimits   # the circuit breakers of routes with `priority: HIGH`
    lb_hosts: tuple[Host, ...] = field(init=False, compare=False, repr=False)
    panic: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        chosen, panic = lb_hosts(self.hosts, self.config.healthy_panic_threshold)
        object.__setattr__(self, "lb_hosts", chosen)
        object.__setattr__(self, "panic", panic)
