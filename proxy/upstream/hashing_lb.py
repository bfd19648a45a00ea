"""Consistent-hashing load balancers, as Envoy builds them, so that a request's hash picks the
host Envoy would pick for the same host set:

- RING_HASH (ring_hash_lb.cc): each host is hashed `scale * weight` times as
  xxHash64("<address>:<port>_<i>"), the least-weighted host getting a whole number of entries
  (`scale` = ceil(min_weight * minimum_ring_size) / min_weight, at most maximum_ring_size);
  the ring is sorted and a hash finds its entry with ketama's binary search (ported as Envoy
  did, quirks included).
- MAGLEV (maglev_lb.cc, the "original" table): hosts sorted by their key, each with offset
  xxHash64(key) % M and skip xxHash64(key, seed 1) % (M - 1) + 1, the table of prime size M
  filled round by round (a lighter host every few rounds); a hash picks table[hash % M].

A request without a hash (no route hash_policy, or one that matched nothing) gets a random
one, as Envoy. The hosts are one priority level's healthy ones (all of them in panic;
priority_lb.py builds a ring per level), weighted per host or, with
locality_weighted_lb_config, per locality then host (`locality_normalized_weights`); the
key a host's `address:port`, or its hostname with use_hostname_for_hashing.
Pure math: no I/O; a balancer is built per worker per snapshot (load_balancer.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import xxhash

from .host import Host

__all__ = ["RingHashLoadBalancer", "MaglevLoadBalancer", "xxhash64"]

_MASK = (1 << 64) - 1


def xxhash64(data: bytes, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(data, seed)


def host_key(host: Host, use_hostname: bool) -> bytes:
    return (host.hostname if use_hostname and host.hostname else str(host)).encode()


def _normalized(hosts: tuple[Host, ...]) -> list[tuple[Host, float]]:
    total = sum(h.weight for h in hosts)
    return [(h, h.weight / total) for h in hosts]


def normalized_weights(hosts: tuple[Host, ...]) -> list[tuple[Host, float]]:
    """Each host's share of the ring (its weight over the sum: Envoy's normalizeHostWeights)."""
    return _normalized(hosts) if hosts else []


def locality_normalized_weights(localities) -> list[tuple[Host, float]]:
    """Envoy's normalizeLocalityWeights (locality_weighted_lb_config): each locality's
    (region, zone, sub_zone) share is its weight over the sum of all locality weights, split
    over its hosts by host weight; a locality of weight 0 (or without hosts) gets nothing, and
    all weights 0 gives an empty ring. `localities`: (weight, hosts) pairs."""
    total = sum(w for w, _ in localities)
    out: list[tuple[Host, float]] = []
    if total == 0:
        return out
    for weight, hosts in localities:
        if weight and hosts:
            host_total = sum(h.weight for h in hosts)
            out.extend((h, h.weight * (weight / total) / host_total) for h in hosts)
    return out


class RingHashLoadBalancer:
    __slots__ = ("hosts", "rand", "hashes", "ring_hosts")

    def __init__(self, hosts: tuple[Host, ...], rand: Callable[[int], int], min_ring_size: int = 1024,
                 max_ring_size: int = 8 * 1024 * 1024, use_hostname: bool = False,
                 weights: list[tuple[Host, float]] | None = None) -> None:
        self.hosts = hosts
        self.rand = rand
        ring: list[tuple[int, Host]] = []
        if weights is None:
            weights = _normalized(hosts) if hosts else []
        if weights:
            min_weight = min(w for _, w in weights)
            scale = min(math.ceil(min_weight * min_ring_size) / min_weight, float(max_ring_size))
            current = target = 0.0
            for host, weight in weights:
                prefix = host_key(host, use_hostname) + b"_"
                target += scale * weight
                i = 0
                while current < target:
                    ring.append((xxhash64(prefix + str(i).encode()), host))
                    i += 1
                    current += 1
            ring.sort(key=lambda e: e[0])
        self.hashes = [h for h, _ in ring]
        self.ring_hosts = [host for _, host in ring]

    def choose(self) -> Host | None:
        return self.choose_hash(self.rand(1 << 64))

    def choose_hash(self, h: int) -> Host | None:
        """Ketama's lookup, as Envoy's Ring::chooseHost (signed indices, its wrap to entry 0)."""
        hashes = self.hashes
        n = len(hashes)
        if not n:
            return None
        low, high = 0, n
        while True:
            mid = (low + high) // 2
            if mid == n:
                mid = 0
                break
            midval = hashes[mid]
            midval1 = 0 if mid == 0 else hashes[mid - 1]
            if midval1 < h <= midval:
                break
            if midval < h:
                low = mid + 1
            else:
                high = mid - 1
            if low > high:
                mid = 0
                break
        return self.ring_hosts[mid]


class MaglevLoadBalancer:
    __slots__ = ("hosts", "rand", "table", "size")

    def __init__(self, hosts: tuple[Host, ...], rand: Callable[[int], int], table_size: int = 65537,
                 use_hostname: bool = False, weights: list[tuple[Host, float]] | None = None) -> None:
        self.hosts = hosts
        self.rand = rand
        self.size = table_size
        self.table: list[Host | None] = []
        if weights is None:
            weights = _normalized(hosts) if hosts else []
        if not weights:
            return
        max_weight = max(w for _, w in weights)
        entries = sorted((host_key(h, use_hostname), h, w) for h, w in weights)
        m = table_size
        offset = [xxhash64(k) % m for k, _, _ in entries]
        skip = [xxhash64(k, 1) % (m - 1) + 1 for k, _, _ in entries]
        weight = [w for _, _, w in entries]
        target = [0.0] * len(entries)
        nxt = [0] * len(entries)
        table: list[Host | None] = [None] * m
        filled = 0
        iteration = 1
        while filled < m:
            for i, (_, host, _) in enumerate(entries):
                if filled >= m:
                    break
                if iteration * weight[i] < target[i]:
                    continue
                target[i] += max_weight
                c = (offset[i] + skip[i] * nxt[i]) % m
                while table[c] is not None:
                    nxt[i] += 1
                    c = (offset[i] + skip[i] * nxt[i]) % m
                table[c] = host
                nxt[i] += 1
                filled += 1
            iteration += 1
        self.table = table

    def choose(self) -> Host | None:
        return self.choose_hash(self.rand(1 << 64))

    def choose_hash(self, h: int) -> Host | None:
        return self.table[h % self.size] if self.table else None
