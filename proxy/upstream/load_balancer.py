"""Load balancers: pick an upstream host from a cluster snapshot.

Job: Envoy's ROUND_ROBIN (weighted), LEAST_REQUEST (power of N choices) and RANDOM policies
as pure math over `snapshot.hosts` (RING_HASH and MAGLEV: hashing_lb.py, whose balancers also
take a request's hash: `choose_hash(h)`). Randomness and per-host load come in as callables so the
math is deterministic under test:

- `rand(n)` returns a uniform int in [0, n) (a worker passes its own `random.Random().randrange`;
  one Random per worker, never shared).
- `active_requests(host)` returns that worker's active requests to `host` (from its pools).

A balancer is created per worker per snapshot (a new host set = a new balancer) and is
thread-confined: its cursor state belongs to one worker, as in Envoy.

Must not: do I/O, import socket/threading/time/random, or mutate the snapshot.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from .hashing_lb import MaglevLoadBalancer, RingHashLoadBalancer
from .host import ClusterSnapshot, Host

__all__ = ["LoadBalancer", "RoundRobinLoadBalancer", "LeastRequestLoadBalancer",
           "RandomLoadBalancer", "create_load_balancer", "host_balancer"]

Rand = Callable[[int], int]
ActiveRequests = Callable[[Host], int]

# Fixed-point scale for least-request effective weights (weight / (active + 1)).
_EFFECTIVE_WEIGHT_SCALE = 1 << 20


def _equal_weights(hosts: tuple[Host, ...]) -> bool:
    return all(h.weight == hosts[0].weight for h in hosts)


class LoadBalancer:
    """Base: `choose()` returns a host, or None when the cluster has no hosts."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: tuple[Host, ...]) -> None:
        self.hosts = hosts

    def choose(self) -> Host | None:  # pragma: no cover - interface
        raise NotImplementedError


class RoundRobinLoadBalancer(LoadBalancer):
    """Weighted round robin.

    Equal weights: a plain cursor, started at `rand(n)` so that workers do not all send their
    first request to the same host. Unequal weights: smooth weighted round robin (nginx's
    algorithm): over any `sum(weights)` consecutive picks each host is chosen exactly
    `weight` times, interleaved rather than in bursts. O(hosts) per pick.
    """

    __slots__ = ("_cursor", "_weights", "_current", "_total", "_weighted")

    def __init__(self, hosts: tuple[Host, ...], rand: Rand) -> None:
        super().__init__(hosts)
        self._weighted = bool(hosts) and not _equal_weights(hosts)
        self._cursor = rand(len(hosts)) if hosts and not self._weighted else 0
        self._weights = [h.weight for h in hosts]
        self._current = [0] * len(hosts)
        self._total = sum(self._weights)

    def choose(self) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if not self._weighted:
            i = self._cursor
            self._cursor = (i + 1) % len(hosts)
            return hosts[i]
        current = self._current
        best = 0
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return hosts[best]


class LeastRequestLoadBalancer(LoadBalancer):
    """Envoy's LEAST_REQUEST.

    Equal weights: pick `choice_count` hosts at random (with replacement) and keep the one
    with the fewest active requests (the first drawn wins ties) -- "power of two choices".
    Unequal weights: weighted random pick with effective weight
    `weight / (active + 1) ** active_request_bias` (Envoy's hostWeight; bias 1.0 by default,
    0 ignores the load), so a loaded host is picked less. O(hosts).
    """

    __slots__ = ("_active", "_rand", "_choice_count", "_weighted", "_bias")

    def __init__(self, hosts: tuple[Host, ...], active_requests: ActiveRequests, rand: Rand,
                 choice_count: int = 2, active_request_bias: float = 1.0) -> None:
        super().__init__(hosts)
        self._active = active_requests
        self._rand = rand
        self._choice_count = choice_count
        self._weighted = bool(hosts) and not _equal_weights(hosts)
        self._bias = active_request_bias

    def choose(self) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        if self._weighted:
            return self._choose_weighted()
        n = len(hosts)
        best = hosts[self._rand(n)]
        best_active = self._active(best)
        for _ in range(self._choice_count - 1):
            candidate = hosts[self._rand(n)]
            active = self._active(candidate)
            if active < best_active:
                best, best_active = candidate, active
        return best

    def _choose_weighted(self) -> Host:
        cumulative = []
        total = 0
        bias = self._bias
        for h in self.hosts:
            if bias == 1.0:
                total += max(1, h.weight * _EFFECTIVE_WEIGHT_SCALE // (self._active(h) + 1))
            elif bias == 0.0:
                total += h.weight * _EFFECTIVE_WEIGHT_SCALE
            else:
                total += max(1, int(h.weight * _EFFECTIVE_WEIGHT_SCALE / (self._active(h) + 1) ** bias))
            cumulative.append(total)
        return self.hosts[bisect.bisect_right(cumulative, self._rand(total))]


class RandomLoadBalancer(LoadBalancer):
    """Envoy's RANDOM, weighted: host i is picked with probability weight_i / sum(weights)."""

    __slots__ = ("_rand", "_cumulative", "_total")

    def __init__(self, hosts: tuple[Host, ...], rand: Rand) -> None:
        super().__init__(hosts)
        self._rand = rand
        total = 0
        cumulative = []
        for h in hosts:
            total += h.weight
            cumulative.append(total)
        self._cumulative = tuple(cumulative)
        self._total = total

    def choose(self) -> Host | None:
        if not self.hosts:
            return None
        return self.hosts[bisect.bisect_right(self._cumulative, self._rand(self._total))]


def create_load_balancer(snapshot: ClusterSnapshot, active_requests: ActiveRequests,
                         rand: Rand) -> LoadBalancer:
    """A flat balancer for `snapshot.config.lb_policy` over `snapshot.lb_hosts` (workers use
    priority_lb.PriorityLoadBalancer, which builds these per priority level and locality)."""
    return host_balancer(snapshot.config, snapshot.lb_hosts, active_requests, rand)


def host_balancer(config, hosts: tuple[Host, ...], active_requests: ActiveRequests, rand: Rand,
                  weights: list[tuple[Host, float]] | None = None) -> LoadBalancer:
    """The balancer for `config.lb_policy` over `hosts` (`weights`: RING_HASH/MAGLEV's
    normalized host weights, when locality weights shape them)."""
    policy = config.lb_policy
    if policy == "ROUND_ROBIN":
        return RoundRobinLoadBalancer(hosts, rand)
    if policy == "LEAST_REQUEST":
        return LeastRequestLoadBalancer(hosts, active_requests, rand, config.least_request_choice_count,
                                        config.least_request_active_request_bias)
    if policy == "RANDOM":
        return RandomLoadBalancer(hosts, rand)
    hashing = config.hashing
    if policy == "RING_HASH":
        return RingHashLoadBalancer(hosts, rand, hashing.minimum_ring_size, hashing.maximum_ring_size,
                                    hashing.use_hostname_for_hashing, weights)
    if policy == "MAGLEV":
        return MaglevLoadBalancer(hosts, rand, hashing.table_size, hashing.use_hostname_for_hashing,
                                  weights)
    raise ValueError(f"unsupported lb_policy {policy!r}")  # config parsing refuses it first
