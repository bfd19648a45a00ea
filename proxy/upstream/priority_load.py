"""Priority levels and localities: Envoy's load math, as pure functions over immutable hosts.

Job: from a cluster's hosts (each carrying its `priority` and `locality`), build the
`PriorityState` a worker's balancer reads: per priority level its hosts, healthy, degraded
and excluded ones, grouped per locality; and Envoy's per-priority loads and panic flags
(LoadBalancerBase::recalculatePerPriorityState / recalculatePerPriorityPanic /
recalculateLoadInTotalPanic in source/extensions/load_balancing_policies/common/
load_balancer_impl.cc):

- A level's health is min(100, overprovisioning_factor * healthy / (hosts - excluded)) in
  percent (host weights instead of counts with weighted_priority_health), the same for its
  degraded hosts; the default factor 140 (1.4) keeps a level whole down to 72 % healthy.
- The normalized total availability is min(100, sum of every level's health and degraded);
  100 % of the load is handed out level by level, healthy first (health * 100 / normalized,
  capped at what is left), then degraded the same way; a rounding remainder goes to the first
  level with healthy (else degraded) availability.
- Panic: never while the normalized total is 100; else a level panics when less than
  `healthy_panic_threshold` percent of its (non-excluded) hosts are healthy or degraded. When
  every level panics (total panic), the load follows each level's share of all hosts.
  Threshold 0 and nothing available: 100 % to level 0 (no host gets it: no healthy host).
- A request's priority: h % 100 + 1 walked over the healthy loads, then the degraded ones
  (LoadBalancerBase::choosePriority); `h` is a random draw, or the request's hash for
  RING_HASH/MAGLEV.
- A locality's effective weight (LocalityWrr::effectiveLocalityWeight): its
  load_balancing_weight * min(1, factor/100 * eligible / (hosts - excluded)).

Must not: do I/O, draw random numbers, or keep mutable state (all values are frozen; built
on main, shared read-only by every worker).
"""

from __future__ import annotations

from dataclasses import dataclass

from .host import Host, is_degraded, is_excluded, is_healthy

__all__ = ["LocalityHosts", "PriorityLevel", "PriorityState", "build_priority_state",
           "level_availability", "distribute_load", "priority_loads", "choose_priority",
           "effective_locality_weight", "level_in_panic"]

Locality = tuple[str, str, str]   # (region, zone, sub_zone)


@dataclass(frozen=True, slots=True)
class LocalityHosts:
    """One locality of one priority level (Envoy's hostsPerLocality entry)."""

    locality: Locality
    weight: int                 # its load_balancing_weight (0: unset)
    hosts: tuple[Host, ...]
    healthy: tuple[Host, ...]
    degraded: tuple[Host, ...]
    excluded: int               # how many of `hosts` are excluded


@dataclass(frozen=True, slots=True)
class PriorityLevel:
    """One priority's host set."""

    priority: int
    hosts: tuple[Host, ...]
    healthy: tuple[Host, ...]
    degraded: tuple[Host, ...]
    excluded: tuple[Host, ...]
    localities: tuple[LocalityHosts, ...]   # sorted by locality, as Envoy's LocalityLess


@dataclass(frozen=True, slots=True)
class PriorityState:
    """Every level (dense from 0: a gap is an empty level) and Envoy's loads (percent; the
    healthy and degraded loads add up to 100) and panic flags per level."""

    levels: tuple[PriorityLevel, ...]
    healthy_load: tuple[int, ...]
    degraded_load: tuple[int, ...]
    panic: tuple[bool, ...]
    overprovisioning_factor: int

    @property
    def single_source(self) -> tuple[int, bool] | None:
        """(priority, degraded?) when one level's healthy or degraded hosts take all the load
        (the common case: a worker then picks without drawing a priority), else None."""
        for p, load in enumerate(self.healthy_load):
            if load == 100:
                return p, False
        for p, load in enumerate(self.degraded_load):
            if load == 100:
                return p, True
        return None


def _weight(hosts) -> int:
    return sum(h.weight for h in hosts)


def level_availability(level: PriorityLevel, overprovisioning_factor: int = 140,
                       weighted_priority_health: bool = False) -> tuple[int, int]:
    """(health, degraded) of a level in percent, each capped at 100 (0 for an empty level)."""
    count = len(level.hosts) - len(level.excluded)
    if count <= 0:
        return 0, 0
    if weighted_priority_health:
        healthy, degraded = _weight(level.healthy), _weight(level.degraded)
        total = _weight(level.hosts) - _weight(level.excluded)
        if total <= 0:
            return 0, 0
    else:
        healthy, degraded, total = len(level.healthy), len(level.degraded), count
    return (min(100, overprovisioning_factor * healthy // total),
            min(100, overprovisioning_factor * degraded // total))


def distribute_load(availability: list[int], total_load: int, normalized: int
                    ) -> tuple[list[int], int, int]:
    """Envoy's distributeLoad: (loads, first level with availability or -1, load left)."""
    loads = []
    first = -1
    for i, a in enumerate(availability):
        if first < 0 and a > 0:
            first = i
        load = min(total_load, a * 100 // normalized)
        loads.append(load)
        total_load -= load
    return loads, first, total_load


def level_in_panic(level: PriorityLevel, panic_threshold: float) -> bool:
    """Envoy's isHostSetInPanic: (healthy + degraded) percent of the non-excluded hosts below
    the threshold (an empty level is 0 % healthy)."""
    count = len(level.hosts) - len(level.excluded)
    if count <= 0:
        return 0.0 < panic_threshold
    return 100.0 * len(level.healthy) / count + 100.0 * len(level.degraded) / count < panic_threshold


def priority_loads(levels: tuple[PriorityLevel, ...], overprovisioning_factor: int = 140,
                   panic_threshold: float = 50.0, weighted_priority_health: bool = False
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """(healthy loads, degraded loads, panic flags) per level: Envoy's recalculation."""
    n = len(levels)
    health, degraded = [0] * n, [0] * n
    for i, level in enumerate(levels):
        health[i], degraded[i] = level_availability(level, overprovisioning_factor,
                                                    weighted_priority_health)
    normalized = min(100, sum(health) + sum(degraded))
    healthy_load, degraded_load = [0] * n, [0] * n
    if normalized > 0:
        healthy_load, first_healthy, left = distribute_load(health, 100, normalized)
        degraded_load, first_degraded, left = distribute_load(degraded, left, normalized)
        if left:
            if first_healthy >= 0:
                healthy_load[first_healthy] += left
            else:
                degraded_load[first_degraded] += left
    threshold = min(100.0, panic_threshold)
    if threshold == 0 and normalized == 0:
        healthy_load = [0] * n
        healthy_load[0] = 100
        return tuple(healthy_load), tuple(degraded_load), (False,) * n
    panic = [False if normalized == 100 else level_in_panic(level, threshold) for level in levels]
    if all(panic):   # total panic: the load follows each level's share of all hosts
        total = sum(len(level.hosts) for level in levels)
        healthy_load, degraded_load = [0] * n, [0] * n
        if total == 0:
            healthy_load[0] = 100
        else:
            left, first = 100, -1
            for i, level in enumerate(levels):
                if first < 0 and level.hosts:
                    first = i
                healthy_load[i] = 100 * len(level.hosts) // total
                left -= healthy_load[i]
            healthy_load[first] += left
    return tuple(healthy_load), tuple(degraded_load), tuple(panic)


def choose_priority(h: int, healthy_load: tuple[int, ...], degraded_load: tuple[int, ...]
                    ) -> tuple[int, bool]:
    """Envoy's choosePriority: (priority, whether its degraded hosts serve) for a draw `h`."""
    h = h % 100 + 1
    total = 0
    for p, load in enumerate(healthy_load):
        total += load
        if h <= total:
            return p, False
    for p, load in enumerate(degraded_load):
        total += load
        if h <= total:
            return p, True
    return 0, False   # loads always add up to 100


def effective_locality_weight(weight: int, eligible: int, hosts: int, excluded: int,
                              overprovisioning_factor: int = 140) -> float:
    """Envoy's LocalityWrr::effectiveLocalityWeight."""
    count = hosts - excluded
    if count <= 0:
        return 0.0
    return weight * min(1.0, overprovisioning_factor / 100.0 * eligible / count)


def build_priority_state(hosts: tuple[Host, ...], overprovisioning_factor: int = 140,
                         panic_threshold: float = 50.0, weighted_priority_health: bool = False
                         ) -> PriorityState:
    """The levels of `hosts` (each host's `priority`, `locality`, `locality_weight`) and their
    loads. Hosts keep their order within a level; localities are sorted (Envoy's LocalityLess
    order: region, zone, sub_zone)."""
    top = max((h.priority for h in hosts), default=0)
    per_level: list[list[Host]] = [[] for _ in range(top + 1)]
    for h in hosts:
        per_level[h.priority].append(h)
    levels = []
    for p, members in enumerate(per_level):
        level_hosts = tuple(members)
        by_locality: dict[Locality, list[Host]] = {}
        weights: dict[Locality, int] = {}
        for h in level_hosts:
            by_locality.setdefault(h.locality, []).append(h)
            weights.setdefault(h.locality, h.locality_weight)
        localities = tuple(
            LocalityHosts(loc, weights[loc], tuple(group), tuple(h for h in group if is_healthy(h)),
                          tuple(h for h in group if is_degraded(h)),
                          sum(1 for h in group if is_excluded(h)))
            for loc, group in sorted(by_locality.items(), key=lambda kv: kv[0]))
        levels.append(PriorityLevel(
            p, level_hosts, tuple(h for h in level_hosts if is_healthy(h)),
            tuple(h for h in level_hosts if is_degraded(h)),
            tuple(h for h in level_hosts if is_excluded(h)), localities))
    levels_t = tuple(levels)
    healthy_load, degraded_load, panic = priority_loads(levels_t, overprovisioning_factor,
                                                        panic_threshold, weighted_priority_health)
    return PriorityState(levels_t, healthy_load, degraded_load, panic, overprovisioning_factor)
