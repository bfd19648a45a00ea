"""Histograms: per-thread bucket counters and the merged, read-only summary.

Job: `Histogram` records samples into fixed buckets (Envoy's default bounds unless the
registry is configured otherwise); `HistogramSummary` is an immutable merge of one or more
histograms with Envoy-like quantile estimates (interpolated inside a bucket, clamped to the
observed min/max) and the cumulative bucket view Prometheus needs.

Thread affinity: a `Histogram` is written only by the thread that owns its store; any thread
may read it through `summary()` (single attribute / list-element reads, no lock: a reader may
see a sample counted in a bucket but not yet in `sum`, which only skews that one read).
`HistogramSummary` is immutable and may be shared freely.

Must not: do I/O, import threading/time, or take locks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUCKETS",
    "SUPPORTED_QUANTILES",
    "HISTOGRAM_UNITS",
    "Histogram",
    "HistogramSummary",
    "SampledHistogram",
    "MAX_SAMPLES",
    "merge_summaries",
]

# Envoy's default histogram bucket upper bounds (stats_config.histogram_bucket_settings).
# Floats, as `Histogram` keeps every bound: bisect compares float samples with float bounds
# in about half the time it takes against ints.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)

# Quantiles Envoy prints in /stats (as fractions; Envoy shows them as percentages).
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1)

HISTOGRAM_UNITS = frozenset({"unspecified", "bytes", "us", "ms", "percent"})


class Histogram:
    """Samples for one stat name on one thread. `record()` is the only writer method."""

    __slots__ = ("unit", "bounds", "_buckets", "count", "sum", "min", "max")

    def __init__(self, unit: str = "ms", bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        if unit not in HISTOGRAM_UNITS:
            raise ValueError(f"unknown histogram unit {unit!r}; expected one of {sorted(HISTOGRAM_UNITS)}")
        self.unit = unit
        self.bounds = tuple(float(b) for b in bounds)
        # One counter per bound (samples <= bound and > previous bound) plus one overflow slot.
        self._buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, v: float) -> None:
        self._buckets[bisect_left(self.bounds, v)] += 1
        self.count += 1
        self.sum += v
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def summary(self) -> HistogramSummary:
        """A consistent-enough copy; `count` is derived from the copied buckets."""
        buckets = tuple(list(self._buckets))  # list() copies under the list's own lock on 3.14t
        return HistogramSummary(
            unit=self.unit,
            bounds=self.bounds,
            buckets=buckets,
            count=sum(buckets),
            sum=self.sum,
            min=self.min,
            max=self.max,
        )


# Samples a SampledHistogram keeps between two flushes. Threat: a statsd sink whose flushes
# cannot keep up (or a very busy worker): past it the oldest samples are dropped, so memory stays
# at ~1 MiB per histogram per worker. 16384 per 5 s flush is ~3,300 samples a second per worker.
MAX_SAMPLES = 16384


class SampledHistogram(Histogram):
    """A Histogram that also keeps each sample until a flush takes it: statsd sinks send every
    sample (Envoy's onHistogramComplete). Stores make these only when a statsd sink is
    configured, so `Histogram.record` costs everyone else nothing more.

    Thread affinity: `record` on the owning thread, `take_samples` on main (the flush).
    `samples` is a bounded deque: its append and popleft are atomic on GIL and free-threaded
    CPython alike, so a sample recorded during a take goes to this flush or the next, never
    twice or nowhere (unless MAX_SAMPLES wait: then the oldest go)."""

    __slots__ = ("samples",)

    def __init__(self, unit: str = "ms", bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        super().__init__(unit, bounds)
        self.samples: deque[float] = deque(maxlen=MAX_SAMPLES)

    def record(self, v: float) -> None:
        # Histogram.record's body, inline (no super() call per sample), then the sample.
        self._buckets[bisect_left(self.bounds, v)] += 1
        self.count += 1
        self.sum += v
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        self.samples.append(v)

    def take_samples(self) -> list[float]:
        """The samples recorded since the last take, oldest first (removed)."""
        pop = self.samples.popleft
        out = []
        for _ in range(len(self.samples)):
            out.append(pop())
        return out


@dataclass(frozen=True, slots=True)
class HistogramSummary:
    """Merged histogram: disjoint bucket counts (`buckets[i]` counts samples in
    (bounds[i-1], bounds[i]]; the last slot counts samples above the last bound)."""

    unit: str
    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    count: int
    sum: float
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def empty(cls, unit: str = "ms", bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> HistogramSummary:
        return cls(unit=unit, bounds=bounds, buckets=(0,) * (len(bounds) + 1), count=0, sum=0.0)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """[(upper bound, samples <= bound)] for every bound, then (inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.buckets):
            running += n
            out.append((bound, running))
        out.append((math.inf, running + self.buckets[-1]))
        return out

    def quantile(self, q: float) -> float:
        """Estimate the q-quantile (0 <= q <= 1); nan when there are no samples.

        Linear interpolation inside the bucket holding rank q*count, with the bucket edges
        narrowed to the observed min/max, so P0 is the minimum and P100 the maximum.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        if self.count <= 0:
            return math.nan
        lo_seen = self.min if math.isfinite(self.min) else 0.0
        hi_seen = self.max if math.isfinite(self.max) else (self.bounds[-1] if self.bounds else 0.0)
        if q == 0.0:
            return lo_seen
        if q == 1.0:
            return hi_seen
        target = q * self.count
        running = 0
        for i, n in enumerate(self.buckets):
            if n == 0:
                continue
            if running + n >= target:
                lower = self.bounds[i - 1] if i > 0 else 0.0
                upper = self.bounds[i] if i < len(self.bounds) else hi_seen
                lower = max(lower, lo_seen)
                upper = min(upper, hi_seen)
                if upper < lower:
                    upper = lower
                return lower + (upper - lower) * ((target - running) / n)
            running += n
        return hi_seen


def merge_summaries(parts: Iterable[HistogramSummary]) -> HistogramSummary:
    """Sum histograms with identical bounds (all stores of one registry share bounds)."""
    parts = list(parts)
    if not parts:
        return HistogramSummary.empty()
    first = parts[0]
    if len(parts) == 1:
        return first
    buckets = [0] * len(first.buckets)
    total_sum = 0.0
    lo, hi = math.inf, -math.inf
    for p in parts:
        if p.bounds != first.bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        for i, n in enumerate(p.buckets):
            buckets[i] += n
        total_sum += p.sum
        lo = min(lo, p.min)
        hi = max(hi, p.max)
    return HistogramSummary(
        unit=first.unit, bounds=first.bounds, buckets=tuple(buckets),
        count=sum(buckets), sum=total_sum, min=lo, max=hi,
    )
