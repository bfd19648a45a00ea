"""Stats stores: one per thread, merged on read by the process-wide registry.

Job: hand out `Counter` / `Gauge` / `Histogram` objects by Envoy stat name (the same name
always yields the same object within a store), and merge every store's values into an
immutable `StatsSnapshot` (counters summed plus the hot-restart carryover, gauges summed,
histograms bucket-merged). `alias()` reports one stat under a second name as well (Envoy's
`external.*` variants, which every request here charges exactly like the plain stats): the
writer updates one object, and each name is merged and carried over on its own.

Thread affinity and ownership:
- A `Store` belongs to one thread (a worker or main). Only that thread increments its stats;
  the hot path is a plain `counter.value += 1` and takes no lock.
- Creating a stat takes the store's `_lock` (rare: stats are created at config time and
  cached by their users). Readers on other threads copy the name->stat tables under the same
  lock, then read each `value` without a lock (a single attribute read is atomic on both
  GIL and free-threaded CPython; a reader may see a value one increment old).
- `StatsRegistry` is created on main; `new_store()` may be called from any thread;
  `snapshot()` may be called from any thread (admin request threads, the flush timer).

Must not: do I/O, sleep, or hold a lock while reading stat values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from types import MappingProxyType

from .histogram import DEFAULT_BUCKETS, Histogram, HistogramSummary, SampledHistogram, merge_summaries
from .recent_lookups import RecentLookups
from .tag_extraction import TagProducer, default_tag_producer

__all__ = ["Counter", "Gauge", "Store", "Scope", "StatsRegistry", "StatsSnapshot"]

_EMPTY: Mapping[str, int] = MappingProxyType({})


class Counter:
    """Monotonic count. Hot path: `counter.value += 1` on the owning thread."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def __repr__(self) -> str:
        return f"Counter({self.value})"


class Gauge:
    """Current level (connections active, ...). Written only by the owning thread."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, v: int) -> None:
        self.value = v

    def __repr__(self) -> str:
        return f"Gauge({self.value})"


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Merged view of every store at one moment. Owned by the caller; never mutated."""

    counters: Mapping[str, int]
    gauges: Mapping[str, int]
    histograms: Mapping[str, HistogramSummary]
    # Names of counters/gauges ever written and histograms with samples (see `snapshot`).
    used: frozenset[str] = field(default_factory=frozenset)
    # The bootstrap's tag extraction (stats_config), for the outputs that print tags.
    tag_producer: TagProducer | None = None
    # Each histogram's samples since the previous flush (only `snapshot(take_samples=True)`,
    # a registry that keeps samples: statsd sinks send each one).
    samples: Mapping[str, tuple[float, ...]] = _EMPTY

    def is_used(self, name: str) -> bool:
        return name in self.used

    def tags(self) -> TagProducer:
        return self.tag_producer if self.tag_producer is not None else default_tag_producer()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Scope:
    """A name prefix over a store: `scope.counter("x")` is `store.counter(prefix + ".x")`."""

    __slots__ = ("_store", "prefix")

    def __init__(self, store: Store, prefix: str) -> None:
        self._store = store
        self.prefix = prefix.rstrip(".")

    def counter(self, name: str) -> Counter:
        return self._store.counter(_join(self.prefix, name))

    def gauge(self, name: str) -> Gauge:
        return self._store.gauge(_join(self.prefix, name))

    def histogram(self, name: str, unit: str = "ms") -> Histogram:
        return self._store.histogram(_join(self.prefix, name), unit)

    def scope(self, prefix: str) -> Scope:
        return Scope(self._store, _join(self.prefix, prefix.rstrip(".")))

    def alias(self, name: str, stat: Counter | Gauge | Histogram) -> None:
        self._store.alias(_join(self.prefix, name), stat)

    def kept(self, name: str, factory: Callable[[], Any]) -> Any:
        return self._store.kept(_join(self.prefix, name), factory)


def _no(name: str) -> bool:
    return False


class Store:
    """Stats of one thread. See the module docstring for who may write what.

    `rejects(name)` (the bootstrap's stats_matcher) is asked once, when a stat is created: a
    rejected stat is a working object its user updates as any other, kept in a table no
    snapshot reads (Envoy's null stats), so the request path is the same either way.
    `buckets_for(name)` gives a histogram's bucket bounds (histogram_bucket_settings)."""

    def __init__(self, name: str, bounds: tuple[float, ...] = DEFAULT_BUCKETS,
                 rejects: Callable[[str], bool] = _no,
                 buckets_for: Callable[[str], tuple[float, ...]] | None = None,
                 lookups: RecentLookups | None = None, keep_samples: bool = False) -> None:
        self.name = name
        self._histogram_class = SampledHistogram if keep_samples else Histogram
        self._lookups = lookups   # the registry's, for /stats/recentlookups (creations only)
        self._bounds = bounds
        self._rejects = rejects
        self._buckets_for = buckets_for
        # Store._lock guards inserts into _counters, _gauges, _histograms and _rejected (the
        # tables, not the values inside the stats). Held only for dict insert/copy; never across I/O.
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._rejected: dict[str, Counter | Gauge | Histogram] = {}
        self._kept: dict[str, Any] = {}

    def kept(self, name: str, factory: Callable[[], Any]) -> Any:
        """The object kept with this store under `name`, made by `factory` at the first ask:
        what backs stats of the store (a cluster's internal.* / external.* halves) and must
        outlive the object that made it, as the stats do (a cluster rebuilt by CDS goes on
        counting where it was). Asked by the store's own thread only (its worker, or main for
        its own store), so `factory` runs at most once; it may create stats (not under the lock)."""
        k = self._kept.get(name)
        if k is None:
            k = factory()
            with self._lock:
                self._kept[name] = k
        return k

    def counter(self, name: str) -> Counter:
        c = self._counters.get(name)
        if c is None:
            c = self._create(self._counters, name, Counter)
        return c

    def gauge(self, name: str) -> Gauge:
        g = self._gauges.get(name)
        if g is None:
            g = self._create(self._gauges, name, Gauge)
        return g

    def histogram(self, name: str, unit: str = "ms") -> Histogram:
        h = self._histograms.get(name)
        if h is None:
            bounds = self._buckets_for(name) if self._buckets_for is not None else self._bounds
            cls = self._histogram_class
            h = self._create(self._histograms, name, lambda: cls(unit, bounds))
        return h

    def scope(self, prefix: str) -> Scope:
        return Scope(self, prefix)

    def alias(self, name: str, stat: Counter | Gauge | Histogram) -> None:
        """Report `stat` (a stat of this store) under `name` too. A histogram alias shares the
        stat's buckets even where histogram_bucket_settings would give `name` others (Envoy keeps
        two histograms; here every request records once)."""
        table = (self._counters if isinstance(stat, Counter) else
                 self._gauges if isinstance(stat, Gauge) else self._histograms)
        if self._rejects(name):
            return  # the alias is not reported; the stat itself may be
        if self._create(table, name, lambda: stat) is not stat:
            raise ValueError(f"stat {name!r} already exists in store {self.name!r}")

    def _create(self, table: dict, name: str, factory):  # type: ignore[no-untyped-def]
        if not name or not isinstance(name, str):
            raise ValueError(f"stat name must be a non-empty string, got {name!r}")
        if self._lookups is not None:
            self._lookups.lookup(name)
        if self._rejects(name):
            with self._lock:
                stat = self._rejected.get(name)
                if stat is None:
                    stat = self._rejected[name] = factory()
                return stat
        with self._lock:
            existing = table.get(name)
            if existing is not None:
                return existing
            for other in (self._counters, self._gauges, self._histograms):
                if other is not table and name in other:
                    raise ValueError(f"stat {name!r} already exists in store {self.name!r} with another type")
            stat = factory()
            table[name] = stat
            return stat

    def tables(self) -> tuple[list[tuple[str, Counter]], list[tuple[str, Gauge]], list[tuple[str, Histogram]]]:
        """Copies of the name->stat tables, safe to iterate from any thread."""
        with self._lock:
            return list(self._counters.items()), list(self._gauges.items()), list(self._histograms.items())

    def __repr__(self) -> str:
        return f"Store({self.name!r})"


class StatsRegistry:
    """Process-wide list of per-thread stores; merges them on read."""

    def __init__(self, histogram_bounds: tuple[float, ...] = DEFAULT_BUCKETS, *,
                 tag_producer: TagProducer | None = None,
                 rejects: Callable[[str], bool] | None = None,
                 buckets_for: Callable[[str], tuple[float, ...]] | None = None,
                 keep_samples: bool = False) -> None:
        """`tag_producer`, `rejects` and `buckets_for` come from the bootstrap's stats_config
        (tags for the outputs, the stats_matcher, histogram_bucket_settings); `keep_samples`
        (a statsd sink is configured): histograms keep each sample for the flush."""
        if list(histogram_bounds) != sorted(set(histogram_bounds)) or not histogram_bounds:
            raise ValueError("histogram bucket bounds must be a non-empty strictly increasing sequence")
        self.histogram_bounds = tuple(histogram_bounds)
        self.tag_producer = tag_producer
        self.rejects = rejects or _no
        self._buckets_for = buckets_for
        self.keep_samples = keep_samples
        self.recent_lookups = RecentLookups()   # /stats/recentlookups (its own lock)
        # StatsRegistry._lock guards _stores, the carryover references and _gauges_used.
        # Never held while reading stat values or calling into a store.
        self._lock = threading.Lock()
        self._stores: list[Store] = []
        self._carry_counters: Mapping[str, int] = _EMPTY
        self._carry_gauges: Mapping[str, int] = _EMPTY
        # Gauges seen non-zero in any earlier snapshot: a gauge that went up and back to zero
        # still counts as used (Envoy's "used" flag), as far as snapshots could observe it.
        self._gauges_used: set[str] = set()

    def new_store(self, name: str) -> Store:
        store = Store(name, self.histogram_bounds, self.rejects, self._buckets_for, self.recent_lookups,
                      self.keep_samples)
        with self._lock:
            if any(s.name == name for s in self._stores):
                raise ValueError(f"stats store {name!r} already exists")
            self._stores.append(store)
        return store

    def stores(self) -> tuple[Store, ...]:
        with self._lock:
            return tuple(self._stores)

    def set_carryover(self, counters: Mapping[str, int], gauges: Mapping[str, int] | None = None) -> None:
        """Hot restart: the parent's latest values. Counters continue from them (added to ours);
        gauges are added too. Each call replaces the previous carryover."""
        rejects = self.rejects
        c = MappingProxyType({str(k): int(v) for k, v in counters.items() if not rejects(str(k))})
        g = MappingProxyType({str(k): int(v) for k, v in (gauges or {}).items() if not rejects(str(k))})
        with self._lock:
            self._carry_counters = c
            self._carry_gauges = g

    def snapshot(self, take_samples: bool = False) -> StatsSnapshot:
        """`take_samples` (the sinks' flush, main thread): the samples each histogram kept since
        the last take, removed from it; a histogram aliased under two names gives its samples
        to both."""
        with self._lock:
            stores = tuple(self._stores)
            carry_c, carry_g = self._carry_counters, self._carry_gauges
        counters: dict[str, int] = dict(carry_c)
        gauges: dict[str, int] = dict(carry_g)
        parts: dict[str, list[HistogramSummary]] = {}
        samples: dict[str, list[float]] = {}
        taken: dict[int, list[float]] = {}   # id(histogram) -> its samples (aliases share one)
        for store in stores:
            cs, gs, hs = store.tables()
            for name, c in cs:
                counters[name] = counters.get(name, 0) + c.value
            for name, g in gs:
                gauges[name] = gauges.get(name, 0) + g.value
            for name, h in hs:
                if take_samples and type(h) is SampledHistogram:
                    got = taken.get(id(h))
                    if got is None:
                        got = taken[id(h)] = h.take_samples()
                    if got:
                        samples.setdefault(name, []).extend(got)
                parts.setdefault(name, []).append(h.summary())
        histograms = {name: merge_summaries(p) for name, p in parts.items()}
        used = {n for n, v in counters.items() if v != 0}
        nonzero_gauges = {n for n, v in gauges.items() if v != 0}
        with self._lock:
            self._gauges_used |= nonzero_gauges
            used |= self._gauges_used & gauges.keys()
        used |= {n for n, h in histograms.items() if h.count > 0}
        return StatsSnapshot(
            counters=MappingProxyType(counters),
            gauges=MappingProxyType(gauges),
            histograms=MappingProxyType(histograms),
            used=frozenset(used),
            tag_producer=self.tag_producer,
            samples=MappingProxyType({n: tuple(v) for n, v in samples.items()}) if samples else _EMPTY,
        )
