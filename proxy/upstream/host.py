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
from typing import Any

from .circuit_breaker import ResourceLimits
from .cluster_config import AssignmentPolicy, ClusterConfig
from .health_check_config import EndpointHealthCheck

__all__ = ["Host", "HostSet", "ClusterSnapshot", "is_healthy", "is_degraded", "is_excluded"]


@dataclass(frozen=True, slots=True)
class Host:
    """One upstream peer. Equal hosts (all fields) are interchangeable across snapshots."""

    address: str          # IP literal
    port: int
    weight: int = 1
    hostname: str = ""    # endpoint `hostname`, or the DNS name it was resolved from
    health_status: str = "UNKNOWN"  # the endpoint's health_status (Envoy's EDS values)
    # Active health checking (health_checker.py sets these on the copies it publishes; they are
    # no part of equality: a host whose health changed is the same peer).
    hc: EndpointHealthCheck | None = field(default=None, compare=False, repr=False)
    failed_active_hc: bool = field(default=False, compare=False)
    degraded_active_hc: bool = field(default=False, compare=False)
    active_hc_timeout: bool = field(default=False, compare=False)
    excluded_via_immediate_hc_fail: bool = field(default=False, compare=False)
    # Outlier detection (cluster_outlier.py sets these): ejected, and the host's monitor that
    # workers report results to (an outlier_monitor.HostOutlierMonitor; None without
    # outlier_detection).
    failed_outlier_check: bool = field(default=False, compare=False)
    outlier: Any = field(default=None, compare=False, repr=False)
    # Its LocalityLbEndpoints: priority level, locality (region, zone, sub_zone) and that
    # locality's load_balancing_weight (0: unset). Part of equality: a host that moved to
    # another level or locality is a membership change.
    priority: int = 0
    locality: tuple[str, str, str] = ("", "", "")
    locality_weight: int = 0
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


def health_flags(status: str | Host) -> str:
    """Envoy's /clusters `health_flags` for a host (or a bare health_status), in Envoy's order
    (HostUtility::healthFlagsToString)."""
    if isinstance(status, str):
        status = Host("0.0.0.0", 0, health_status=status)
    h = status
    out = "/failed_active_hc" if h.failed_active_hc else ""
    if h.failed_outlier_check:
        out += "/failed_outlier_check"
    if h.health_status not in HEALTHY_STATUSES and h.health_status != "DEGRADED":
        out += "/failed_eds_health"
    if h.degraded_active_hc:
        out += "/degraded_active_hc"
    if h.health_status == "DEGRADED":
        out += "/degraded_eds_health"
    if h.excluded_via_immediate_hc_fail:
        out += "/excluded_via_immediate_hc_fail"
    if h.active_hc_timeout:
        out += "/active_hc_timeout"
    return out or "healthy"


def is_healthy(h: Host) -> bool:
    return (h.health_status in HEALTHY_STATUSES and not h.failed_active_hc
            and not h.degraded_active_hc and not h.failed_outlier_check)


def is_degraded(h: Host) -> bool:
    # Envoy's coarseHealth: any failure flag is unhealthy; else a degraded flag is degraded.
    return (not h.failed_active_hc and not h.failed_outlier_check and (h.health_status == "DEGRADED"
                                        or (h.degraded_active_hc and h.health_status in HEALTHY_STATUSES)))


def by_health(hosts: tuple[Host, ...]) -> tuple[tuple[Host, ...], tuple[Host, ...]]:
    """The healthy hosts and the degraded ones (the membership_healthy/_degraded gauges)."""
    return tuple(h for h in hosts if is_healthy(h)), tuple(h for h in hosts if is_degraded(h))


def is_excluded(h: Host) -> bool:
    """Envoy's excluded hosts: they count neither way toward a level's health or panic."""
    return h.excluded_via_immediate_hc_fail


def lb_hosts(hosts: tuple[Host, ...], panic_threshold: float = 50.0) -> tuple[tuple[Host, ...], bool]:
    """A flat view of the usable hosts, and whether the cluster as one set is in panic: the
    healthy ones; the degraded ones when none is healthy; all of them when less than
    `panic_threshold` percent are healthy or degraded (common_lb_config.healthy_panic_threshold,
    default 50; 0 never panics). Workers do not pick from it: they follow the snapshot's
    `priority_state` (priority_load.py: Envoy's per-priority loads, degraded spill-over and
    per-priority panic); this view serves code that wants some usable host (the tracing
    exporter) and `load_balancer.create_load_balancer`."""
    healthy, degraded = by_health(hosts)
    # Hosts taken out by x-envoy-immediate-health-check-fail are excluded: they count neither
    # way toward panic (Envoy's excluded hosts).
    counted = len(hosts) - sum(1 for h in hosts if h.excluded_via_immediate_hc_fail)
    if counted and 100 * (len(healthy) + len(degraded)) < panic_threshold * counted:
        return hosts, True
    return healthy or degraded, False


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What a worker needs to route to a cluster: its config, current hosts, shared limits (one
    ResourceLimits per routing priority), the priority levels its load balancers pick from
    (`priority_state`), and a flat view of the usable hosts (`lb_hosts`, `panic`: see
    `lb_hosts()`)."""

    name: str
    config: ClusterConfig
    hosts: tuple[Host, ...]
    limits: ResourceLimits
    high_limits: ResourceLimits   # the circuit breakers of routes with `priority: HIGH`
    # Health-checked clusters: report_immediate_fail(host), callable from any thread (the
    # router calls it for a response carrying x-envoy-immediate-health-check-fail); else None.
    hc_report: Any = field(default=None, compare=False, repr=False)
    # The ClusterLoadAssignment's policy (an EDS cluster's latest; None: the config's).
    policy: AssignmentPolicy | None = field(default=None, compare=False, repr=False)
    # Priority levels, localities, and Envoy's per-priority loads and panic flags
    # (priority_load.py): what the workers' balancers pick from.
    priority_state: Any = field(init=False, compare=False, repr=False)
    lb_hosts: tuple[Host, ...] = field(init=False, compare=False, repr=False)
    panic: bool = field(init=False, compare=False, repr=False)
    # How many hosts are healthy and degraded (the membership_healthy/_degraded gauges; read by
    # the health_check HTTP filter's cluster_min_healthy_percentages).
    membership_healthy: int = field(init=False, compare=False, repr=False)
    membership_degraded: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        from .priority_load import build_priority_state   # (it imports this module)
        policy = self.policy or self.config.assignment_policy
        object.__setattr__(self, "priority_state", build_priority_state(
            self.hosts, policy.overprovisioning_factor, self.config.healthy_panic_threshold,
            policy.weighted_priority_health))
        chosen, panic = lb_hosts(self.hosts, self.config.healthy_panic_threshold)
        object.__setattr__(self, "lb_hosts", chosen)
        object.__setattr__(self, "panic", panic)
        healthy, degraded = by_health(self.hosts)
        object.__setattr__(self, "membership_healthy", len(healthy))
        object.__setattr__(self, "membership_degraded", len(degraded))
