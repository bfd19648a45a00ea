"""A worker's balancer over priority levels and localities (Envoy's ZoneAwareLoadBalancerBase
and ThreadAwareLoadBalancerBase host choice).

Job: over a snapshot's `priority_state` (priority_load.py, computed on main), pick a host:

1. a priority and whether its healthy or degraded hosts serve, by the per-priority loads
   (a uniform draw; for RING_HASH/MAGLEV the request's hash, as Envoy);
2. a level in panic serves from all its hosts (counting `lb_healthy_panic`);
3. with `locality_weighted_lb_config`, a locality of that level by its effective weight
   (weight x availability with the overprovisioning factor: smooth weighted round robin, where
   Envoy uses an EDF schedule of the same weights), then a host in it by the cluster's
   policy; without it (or when no locality has weight) the level's healthy (or degraded)
   hosts as one set. RING_HASH/MAGLEV build one ring per level over its healthy hosts (all in
   panic), weighted per locality when locality-weighted, as Envoy.

The cheap path: when one level's healthy (or degraded) hosts take 100 % of the load and no
locality weighting applies, `choose` is that set's balancer's own bound `choose`: a plain
single-priority cluster pays nothing for priorities.

Thread affinity: one worker (built per worker per snapshot; holds per-worker cursors).
Must not: do I/O or touch the snapshot's hosts' state.
"""

from __future__ import annotations

from collections.abc import Callable

from .hashing_lb import locality_normalized_weights, normalized_weights
from .host import Host
from .load_balancer import ActiveRequests, Rand, host_balancer
from .priority_load import PriorityState, choose_priority, effective_locality_weight

__all__ = ["PriorityLoadBalancer", "LocalityScheduler"]

_HASHING = ("RING_HASH", "MAGLEV")


class LocalityScheduler:
    """Smooth weighted round robin over (index, float weight) entries of positive weight:
    over any run of picks each index gets its share of the total weight, interleaved."""

    __slots__ = ("_entries", "_current", "_total")

    def __init__(self, entries: list[tuple[int, float]]) -> None:
        self._entries = entries
        self._current = [0.0] * len(entries)
        self._total = sum(w for _, w in entries)

    def pick(self) -> int:
        current = self._current
        best = 0
        for i, (_, w) in enumerate(self._entries):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._entries[best][0]


class PriorityLoadBalancer:
    """`choose()` -> a host or None; `choose_hash(h)` for RING_HASH/MAGLEV (else None)."""

    __slots__ = ("choose", "choose_hash", "_healthy_load", "_degraded_load", "_rand",
                 "_pickers", "_rings", "_panic", "_panic_counter")

    def __init__(self, state: PriorityState, config, active_requests: ActiveRequests, rand: Rand,
                 panic_counter) -> None:
        self._healthy_load = state.healthy_load
        self._degraded_load = state.degraded_load
        self._rand = rand
        self._panic = state.panic
        self._panic_counter = panic_counter
        self.choose_hash = None
        locality_weighted = config.locality_weighted_lb
        factor = state.overprovisioning_factor if locality_weighted else None
        if config.lb_policy in _HASHING:
            # A ring (or table) per level that the loads can pick; they are large (MAGLEV:
            # 65537 entries), so none for a level without load.
            self._rings = [self._ring(level, panic, config, active_requests, rand, locality_weighted)
                           if hl or dl else None
                           for level, panic, hl, dl in zip(state.levels, state.panic,
                                                           state.healthy_load, state.degraded_load)]
            single = state.single_source
            if single is not None and not state.panic[single[0]]:
                self.choose_hash = self._rings[single[0]].choose_hash   # one level: no draw
            else:
                self.choose_hash = self._choose_hash
            self.choose = self._choose_random_hash
            return
        pickers: list[tuple[Callable[[], Host | None], Callable[[], Host | None]]] = []
        for level, panic, hl, dl in zip(state.levels, state.panic, state.healthy_load,
                                        state.degraded_load):
            if panic and not level.hosts:   # nothing to pick (and, as before, not counted)
                pickers.append((_none, _none))
                continue
            if panic:
                lb = host_balancer(config, level.hosts, active_requests, rand).choose
                counted = self._counted(lb)
                pickers.append((counted, counted))
                continue
            pickers.append((
                self._picker(level, False, config, active_requests, rand, factor) if hl else _none,
                self._picker(level, True, config, active_requests, rand, factor) if dl else _none))
        self._pickers = pickers
        single = state.single_source
        if single is not None:
            self.choose = pickers[single[0]][single[1]]
        else:
            self.choose = self._choose

    # -- per request (worker) ---------------------------------------------------------------
    def _choose(self) -> Host | None:
        p, degraded = choose_priority(self._rand(100), self._healthy_load, self._degraded_load)
        return self._pickers[p][degraded]()

    def _choose_hash(self, h: int) -> Host | None:
        p, _ = choose_priority(h, self._healthy_load, self._degraded_load)
        ring = self._rings[p]
        if ring is None:   # (a level without load is never chosen)
            return None
        if self._panic[p] and ring.hosts:
            self._panic_counter.value += 1
        return ring.choose_hash(h)

    def _choose_random_hash(self) -> Host | None:
        return self.choose_hash(self._rand(1 << 64))

    # -- building (once per snapshot) ---------------------------------------------------------
    def _counted(self, choose: Callable[[], Host | None]) -> Callable[[], Host | None]:
        counter = self._panic_counter

        def choose_in_panic() -> Host | None:
            counter.value += 1
            return choose()
        return choose_in_panic

    @staticmethod
    def _picker(level, degraded: bool, config, active, rand, locality_factor: int | None
                ) -> Callable[[], Host | None]:
        """The level's healthy (or degraded) hosts' balancer; with locality weighting
        (`locality_factor`: the overprovisioning factor), a locality first."""
        hosts = level.degraded if degraded else level.healthy
        flat = host_balancer(config, hosts, active, rand).choose
        if locality_factor is None or not hosts:
            return flat
        entries: list[tuple[int, float]] = []
        chooses: list[Callable[[], Host | None]] = []
        for loc in level.localities:
            eligible = loc.degraded if degraded else loc.healthy
            weight = effective_locality_weight(loc.weight, len(eligible), len(loc.hosts),
                                               loc.excluded, locality_factor)
            if weight > 0:
                entries.append((len(chooses), weight))
                chooses.append(host_balancer(config, eligible, active, rand).choose)
        if not entries:   # no locality has weight: the level's hosts as one set (Envoy)
            return flat
        if len(chooses) == 1:
            return chooses[0]
        pick = LocalityScheduler(entries).pick

        def choose_by_locality() -> Host | None:
            return chooses[pick()]()
        return choose_by_locality

    @staticmethod
    def _ring(level, panic: bool, config, active, rand, locality_weighted):
        hosts = level.hosts if panic else level.healthy
        if locality_weighted:
            weights = locality_normalized_weights(
                [(loc.weight, loc.hosts if panic else loc.healthy) for loc in level.localities])
        else:
            weights = normalized_weights(hosts)
        return host_balancer(config, hosts, active, rand, weights)


def _none() -> None:
    return None
