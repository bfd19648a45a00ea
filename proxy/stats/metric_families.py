"""A stats snapshot as `io.prometheus.client.MetricFamily` messages and the
`envoy.service.metrics.v3.StreamMetricsMessage` that carries them, as Envoy's metrics_service
sink builds them (source/extensions/stat_sinks/metrics_service/grpc_metrics_service_impl.cc,
MetricsFlusher):

- one MetricFamily per used stat, counters first, then gauges, then histograms (each histogram a
  SUMMARY family, a HISTOGRAM family, or both: `histogram_emit_mode`); every family holds one
  Metric stamped with the snapshot's time (`timestamp_ms`, wall clock).
- A counter's value is its total, or with `report_counters_as_deltas` what it gained since the
  previous flush. A gauge's value is its level.
- A histogram's numbers are its *interval* statistics, as Envoy's: the samples recorded since the
  previous flush (count, sum, cumulative counts per bucket bound, without +Inf, and the
  quantiles Envoy supports; NaN quantiles for an interval without samples).
- Names: the stat's name, or with `emit_tags_as_labels` its tag-extracted name and its tags as
  labels (the bootstrap's stats_config, tag_extraction.py).

`io.prometheus.client` is proto2: Envoy sets every field it writes, so each is written even when
0 (a collector sees `counter.value: 0`, `type: COUNTER`). Fields go in field-number order, as
protobuf's C++ serializer writes them (Metric's timestamp_ms, 6, before its histogram, 7).

Why by hand (proxy/grpc/protobuf_wire.py): a handful of fixed shapes; no message classes
exist for them in xds-protos, and the protobuf package's pure-Python backend (the one that keeps
the GIL off on 3.14t) costs the main thread several times more per flush.

`MetricsFlusher` keeps what deltas and intervals need between flushes: one per sink, main
thread only. Must not: do I/O or read clocks (the caller passes the time).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..grpc.protobuf_wire import length_delimited, varint
from .histogram import SUPPORTED_QUANTILES, HistogramSummary

__all__ = ["COUNTER", "GAUGE", "SUMMARY", "HISTOGRAM", "FlushOptions", "MetricsFlusher",
           "encode_stream_message", "interval_of"]

COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = range(5)   # io.prometheus.client.MetricType

_DOUBLE = struct.Struct("<d").pack


def _double(field: int, v: float) -> bytes:
    return varint(field << 3 | 1) + _DOUBLE(v)


def _uint(field: int, n: int) -> bytes:
    """A proto2 varint field: written even when 0."""
    return varint(field << 3) + varint(n)


def _str(field: int, text: str) -> bytes:
    """A proto2 string field: written even when empty."""
    return length_delimited(field, text.encode("utf-8", "replace"))


_VALUE_ONE = varint(1 << 3 | 1)    # Counter.value / Gauge.value: double, field 1


@dataclass(frozen=True, slots=True)
class FlushOptions:
    report_counters_as_deltas: bool = False
    emit_tags_as_labels: bool = False
    emit_summary: bool = True       # histogram_emit_mode SUMMARY_AND_HISTOGRAM or SUMMARY
    emit_histogram: bool = True     # histogram_emit_mode SUMMARY_AND_HISTOGRAM or HISTOGRAM


def interval_of(now: HistogramSummary, before: HistogramSummary | None) -> HistogramSummary:
    """The samples `now` has that `before` (the same histogram at the previous flush) had not.
    min/max stay the cumulative ones: they bound the interval's samples too, which is what the
    quantile estimate uses them for."""
    if before is None or before.bounds != now.bounds:
        return now
    buckets = tuple(max(0, a - b) for a, b in zip(now.buckets, before.buckets))
    return HistogramSummary(unit=now.unit, bounds=now.bounds, buckets=buckets,
                            count=sum(buckets), sum=max(0.0, now.sum - before.sum),
                            min=now.min, max=now.max)


def _summary(h: HistogramSummary) -> bytes:
    """Summary{sample_count 1, sample_sum 2, quantile 3 {quantile 1, value 2}}."""
    parts = [_uint(1, h.count), _double(2, h.sum)]
    for q in SUPPORTED_QUANTILES:
        value = h.quantile(q) if h.count else math.nan
        parts.append(length_delimited(3, _double(1, q) + _double(2, value)))
    return b"".join(parts)


def _histogram(h: HistogramSummary) -> bytes:
    """Histogram{sample_count 1, sample_sum 2, bucket 3 {cumulative_count 1, upper_bound 2}}:
    the bucket bounds as configured, no +Inf bucket (Envoy's supportedBuckets)."""
    parts = [_uint(1, h.count), _double(2, h.sum)]
    running = 0
    for bound, n in zip(h.bounds, h.buckets):
        running += n
        parts.append(length_delimited(3, _uint(1, running) + _double(2, bound)))
    return b"".join(parts)


def encode_stream_message(node: bytes | None, families: Iterable[bytes]) -> bytes:
    """StreamMetricsMessage{identifier 1 {node 1}, envoy_metrics 2...}: `node` is an encoded
    config.core.v3.Node (the first message of a stream only), `families` encoded MetricFamily
    messages."""
    head = length_delimited(1, length_delimited(1, node)) if node is not None else b""
    return head + b"".join(length_delimited(2, f) for f in families)


class MetricsFlusher:
    """Envoy's MetricsFlusher: a snapshot's used stats as encoded MetricFamily messages.
    Main thread only (it keeps the previous flush's counters and histograms)."""

    def __init__(self, options: FlushOptions) -> None:
        self.options = options
        self.last_counters: dict[str, int] = {}
        self.last_histograms: dict[str, HistogramSummary] = {}
        # name -> (MetricFamily.name field, the Metric's label fields): the tag extraction of a
        # stat is the same at every flush. Bounded by the number of stats.
        self._names: dict[str, tuple[bytes, bytes]] = {}

    def _name(self, producer, name: str) -> tuple[bytes, bytes]:
        hit = self._names.get(name)
        if hit is not None:
            return hit
        if producer is None:
            hit = (_str(1, name), b"")
        else:
            extracted, tags = producer.produce(name)
            labels = b"".join(length_delimited(1, _str(1, k) + _str(2, v)) for k, v in tags)
            hit = (_str(1, extracted), labels)
        self._names[name] = hit
        return hit

    def _family(self, producer, name: str, kind: int, body: bytes, time_field: bytes) -> bytes:
        """MetricFamily{name 1, type 3, metric 4 {label 1..., <body>, timestamp_ms 6}}: `body`
        is the Metric's value field(s) in field-number order around the timestamp."""
        family_name, labels = self._name(producer, name)
        if kind == HISTOGRAM:   # histogram is field 7: after the timestamp
            metric = labels + time_field + length_delimited(7, body)
        else:
            field = {COUNTER: 3, GAUGE: 2, SUMMARY: 4}[kind]
            metric = labels + length_delimited(field, body) + time_field
        return family_name + _uint(3, kind) + length_delimited(4, metric)

    def flush(self, snapshot, time_ms: int) -> list[bytes]:
        opts = self.options
        producer = snapshot.tags() if opts.emit_tags_as_labels else None
        used = snapshot.used
        time_field = _uint(6, time_ms)
        out: list[bytes] = []
        last = self.last_counters
        for name, value in snapshot.counters.items():
            if name not in used:
                continue
            if opts.report_counters_as_deltas:
                reported = max(0, value - last.get(name, 0))
                last[name] = value
            else:
                reported = value
            out.append(self._family(producer, name, COUNTER, _VALUE_ONE + _DOUBLE(reported), time_field))
        for name, value in snapshot.gauges.items():
            if name in used:
                out.append(self._family(producer, name, GAUGE, _VALUE_ONE + _DOUBLE(value), time_field))
        previous = self.last_histograms
        for name, h in snapshot.histograms.items():
            if name not in used:
                continue
            interval = interval_of(h, previous.get(name))
            previous[name] = h
            if opts.emit_summary:
                out.append(self._family(producer, name, SUMMARY, _summary(interval), time_field))
            if opts.emit_histogram:
                out.append(self._family(producer, name, HISTOGRAM, _histogram(interval), time_field))
        return out
