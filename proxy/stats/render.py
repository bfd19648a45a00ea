"""Render a `StatsSnapshot` the way Envoy's admin does: `/stats` text, `?format=json`,
and Prometheus text exposition format 0.0.4 with Envoy's default tag extraction.

Job: pure string building from an immutable snapshot. `/stats` and its JSON keep Envoy's flat
names; Prometheus prints each stat under its tag-extracted name with its tags as labels, using
the snapshot's `TagProducer` (proxy.stats.tag_extraction: the bootstrap's stats_config).

Thread affinity: none (pure functions over immutable input); call from any thread.
Must not: do I/O, touch stores, or import threading/time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .histogram import SUPPORTED_QUANTILES, HistogramSummary
from .tag_extraction import TagProducer, default_tag_producer

if TYPE_CHECKING:
    from .store import StatsSnapshot

__all__ = [
    "render_text",
    "render_json",
    "render_prometheus",
    "extract_tags",
    "prometheus_name",
]

def extract_tags(name: str, producer: TagProducer | None = None) -> tuple[str, list[tuple[str, str]]]:
    """Envoy tag extraction (proxy.stats.tag_extraction; the default extractors unless a
    producer is given): ("cluster.backend.upstream_rq_200") ->
    ("cluster.upstream_rq", [("envoy.response_code", "200"), ("envoy.cluster_name", "backend")])."""
    extracted, tags = (producer or default_tag_producer()).produce(name)
    return extracted, list(tags)


_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(extracted: str) -> str:
    """Envoy's PrometheusStatsFormatter::metricName: `envoy_` and the sanitised name."""
    return "envoy_" + _UNSAFE.sub("_", extracted)


class StatFilter(Protocol):
    """A compiled name filter: `re.Pattern` or `proxy.admin.safe_regex.SafeRegex` (untrusted
    patterns must use the latter: it runs in linear time)."""

    def search(self, name: str, /) -> object: ...


FilterArg = str | StatFilter | None


def _compile(filter_re: FilterArg) -> StatFilter | None:
    """None and compiled filters pass through. A str is compiled with `re` (backtracking):
    only for trusted patterns; the admin compiles untrusted ones with SafeRegex first."""
    if isinstance(filter_re, str):
        return re.compile(filter_re)  # re.error propagates
    return filter_re


def _select(names: Iterable[str], snap: StatsSnapshot, rx: StatFilter | None, usedonly: bool) -> list[str]:
    return sorted(
        n for n in names
        if (rx is None or rx.search(n)) and (not usedonly or snap.is_used(n))
    )


def _num(v: float) -> str:
    """Envoy-like number: integers without '.0', others shortest repr rounded to 6 places."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    v = round(float(v), 6)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _quantile_label(q: float) -> str:
    return _num(q * 100)


def _histogram_text(h: HistogramSummary) -> str:
    if h.count == 0:
        return "No recorded values"
    return " ".join(f"P{_quantile_label(q)}(nan,{_num(h.quantile(q))})" for q in SUPPORTED_QUANTILES)


def render_text(snapshot: StatsSnapshot, filter_re: FilterArg = None,
                usedonly: bool = False) -> str:
    """Envoy `/stats`: `name: value` for counters and gauges (sorted together), then
    histograms as `name: P0(nan,x) ... P100(nan,x)` (interval, cumulative)."""
    rx = _compile(filter_re)
    values = {**snapshot.gauges, **snapshot.counters}
    lines = [f"{n}: {values[n]}" for n in _select(values, snapshot, rx, usedonly)]
    lines += [f"{n}: {_histogram_text(snapshot.histograms[n])}"
              for n in _select(snapshot.histograms, snapshot, rx, usedonly)]
    return "".join(line + "\n" for line in lines)


def render_json(snapshot: StatsSnapshot, filter_re: FilterArg = None,
                usedonly: bool = False) -> str:
    """Envoy `/stats?format=json`: {"stats": [{"name", "value"}..., {"histograms": {...}}]}."""
    rx = _compile(filter_re)
    values = {**snapshot.gauges, **snapshot.counters}
    stats: list[dict[str, object]] = [{"name": n, "value": values[n]} for n in _select(values, snapshot, rx, usedonly)]
    hist_names = _select(snapshot.histograms, snapshot, rx, usedonly)
    if hist_names:
        computed = []
        for n in hist_names:
            h = snapshot.histograms[n]
            computed.append({
                "name": n,
                "values": [
                    {"interval": None, "cumulative": (round(h.quantile(q), 6) if h.count else None)}
                    for q in SUPPORTED_QUANTILES
                ],
            })
        stats.append({"histograms": {
            "supported_quantiles": [round(q * 100, 3) for q in SUPPORTED_QUANTILES],
            "computed_quantiles": computed,
        }})
    return json.dumps({"stats": stats}, separators=(",", ":"))


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(tags: tuple[tuple[str, str], ...]) -> str:
    """Envoy's formattedTags: `name="value"` joined by commas, names sanitised, values escaped."""
    return ",".join(f'{_UNSAFE.sub("_", k)}="{_label_value(v)}"' for k, v in tags)


def _token_key(name: str) -> tuple[str, ...]:
    """Envoy sorts stat names by their dot-separated tokens (SymbolTable::lessThan), not as
    strings: `cluster.x` before `cluster_manager.y`."""
    return tuple(name.split("."))


def _g32(v: float) -> str:
    """fmt's `{:.32g}`, which Envoy uses for bucket bounds and sums."""
    return format(float(v), ".32g")


def _families(names: Iterable[str], producer: TagProducer) -> list[tuple[str, list[tuple[str, tuple]]]]:
    """[(prometheus name, [(stat name, tags)] sorted by stat name)] sorted by tag-extracted name."""
    groups: dict[str, list[tuple[str, tuple]]] = {}
    for n in names:
        extracted, tags = producer.produce(n)
        groups.setdefault(extracted, []).append((n, tags))
    return [(prometheus_name(extracted), sorted(groups[extracted], key=lambda item: _token_key(item[0])))
            for extracted in sorted(groups, key=_token_key)]


def render_prometheus(snapshot: StatsSnapshot, filter_re: FilterArg = None,
                      usedonly: bool = False) -> str:
    """Envoy's `/stats/prometheus` text (PrometheusStatsFormatter): counters, then gauges, then
    histograms; within each, one family per tag-extracted name in token order, its `# TYPE`
    line, then one sample per stat in stat-name order, labels in extraction order (`{}` when
    there are none). Histograms: Envoy's cumulative buckets (`le` and sums as `%.32g`), `+Inf`,
    `_sum`, `_count`. `filter` is matched against the flat stat name; `usedonly` keeps stats
    that were ever written (histograms: with samples). A counter and a gauge family of one name
    both appear, as in Envoy."""
    rx = _compile(filter_re)
    producer = snapshot.tags()
    out: list[str] = []
    for kind, table in (("counter", snapshot.counters), ("gauge", snapshot.gauges)):
        for pname, members in _families(_select(table, snapshot, rx, usedonly), producer):
            out.append(f"# TYPE {pname} {kind}\n")
            out.extend(f"{pname}{{{_labels(tags)}}} {table[n]}\n" for n, tags in members)
    for pname, members in _families(_select(snapshot.histograms, snapshot, rx, usedonly), producer):
        out.append(f"# TYPE {pname} histogram\n")
        for n, tags in members:
            h = snapshot.histograms[n]
            labels = _labels(tags)
            sep = labels + "," if labels else ""
            for bound, cum in h.cumulative_buckets()[:-1]:
                out.append(f'{pname}_bucket{{{sep}le="{_g32(bound)}"}} {cum}\n')
            out.append(f'{pname}_bucket{{{sep}le="+Inf"}} {h.count}\n')
            out.append(f"{pname}_sum{{{labels}}} {_g32(h.sum)}\n")
            out.append(f"{pname}_count{{{labels}}} {h.count}\n")
    return "".join(out)
