"""Render a `StatsSnapshot` the way Envoy's admin does: `/stats` text, `?format=json`,
and Prometheus text exposition format 0.0.4 with Envoy's default tag extraction.

Job: pure string building from an immutable snapshot. `extract_tags()` implements Envoy's
well-known tag regexes (source/common/config/well_known_names.cc) that matter for the stats
ftproxy emits: each regex is matched against the full stat name, its first group is cut out
of the name and its last group becomes the label value.

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

if TYPE_CHECKING:
    from .store import StatsSnapshot

__all__ = [
    "render_text",
    "render_json",
    "render_prometheus",
    "extract_tags",
    "prometheus_name",
]

_WORD = r"[^.]+"
_ADDRESS = r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}_\d+|\[[_aAbBcCdDeEfF0-9]+\]_\d+)"

# (tag name, regex). Group 1 is removed from the name; the last group is the tag value.
# Order follows Envoy's table (it fixes the label order in the output).
_TAG_REGEXES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (tag, re.compile(rx.replace("<WORD>", _WORD).replace("<ADDRESS>", _ADDRESS)))
    for tag, rx in (
        ("envoy.response_code", r"_rq(_(\d{3}))$"),
        ("envoy.response_code_class", r"_rq_((\d))xx$"),
        ("envoy.http_user_agent", r"^http\.<WORD>\.user_agent\.((<WORD>)\.)"),
        ("envoy.virtual_cluster", r"^vhost\.<WORD>\.vcluster\.((<WORD>)\.)"),
        ("envoy.fault_downstream_cluster", r"^http\.<WORD>\.fault\.((<WORD>)\.)"),
        ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.cipher(\.([0-9A-Za-z_-]+))$"),
        ("envoy.ssl_cipher_suite", r"^cluster\.<WORD>\.ssl\.ciphers(\.([0-9A-Za-z_-]+))$"),
        ("envoy.tcp_prefix", r"^tcp\.((<WORD>)\.)"),
        ("envoy.udp_prefix", r"^udp\.((<WORD>)\.)"),
        ("envoy.cluster_name", r"^cluster\.((<WORD>)\.)"),
        ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<WORD>)\.)"),
        ("envoy.http_conn_manager_prefix", r"^http\.((<WORD>)\.)"),
        ("envoy.listener_address", r"^listener\.((<ADDRESS>)\.)"),
        ("envoy.virtual_host", r"^vhost\.((<WORD>)\.)"),
        ("envoy.rds_route_config", r"^http\.<WORD>\.rds\.((<WORD>)\.)\w+?$"),
        ("envoy.worker_id", r"^listener_manager\.((worker_\d+)\.)"),
        # ftproxy extension (asked for by our dashboards): listener.<addr>.worker_<i>.*
        ("envoy.worker_id", r"^listener\.(?:<ADDRESS>\.|<WORD>\.)?worker_((\d+)\.)"),
    )
)


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Envoy tag extraction: ("cluster.backend.upstream_rq_200") ->
    ("cluster.upstream_rq", [("envoy.response_code", "200"), ("envoy.cluster_name", "backend")])."""
    tags: list[tuple[str, str]] = []
    seen: set[str] = set()
    cuts: list[tuple[int, int]] = []
    for tag, rx in _TAG_REGEXES:
        if tag in seen:
            continue
        m = rx.search(name)
        if m is None:
            continue
        seen.add(tag)
        tags.append((tag, m.group(rx.groups)))
        cuts.append(m.span(1))
    if not cuts:
        return name, tags
    keep = [True] * len(name)
    for start, end in cuts:
        for i in range(start, end):
            keep[i] = False
    return "".join(ch for ch, k in zip(name, keep) if k), tags


_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(extracted: str) -> str:
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


def _labels(tags: list[tuple[str, str]], extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = [(_UNSAFE.sub("_", k), _label_value(v)) for k, v in tags] + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


def _prom_num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return _num(v) if float(v).is_integer() else repr(float(v))


def render_prometheus(snapshot: StatsSnapshot, filter_re: FilterArg = None,
                      usedonly: bool = False) -> str:
    """Prometheus text format 0.0.4: counters, then gauges, then histograms; one `# TYPE`
    line per metric family. A family name already taken by another type keeps the first
    type; the conflicting samples are skipped (they would make the exposition invalid)."""
    rx = _compile(filter_re)
    families: dict[str, tuple[str, list[str]]] = {}
    order: list[str] = []

    def family(pname: str, kind: str) -> list[str] | None:
        if pname not in families:
            families[pname] = (kind, [])
            order.append(pname)
        k, lines = families[pname]
        return lines if k == kind else None

    for kind, table in (("counter", snapshot.counters), ("gauge", snapshot.gauges)):
        grouped = sorted((_prom_key(n), n) for n in _select(table, snapshot, rx, usedonly))
        for (pname, tags), n in grouped:
            lines = family(pname, kind)
            if lines is not None:
                lines.append(f"{pname}{_labels(tags)} {_prom_num(table[n])}")
    grouped = sorted((_prom_key(n), n) for n in _select(snapshot.histograms, snapshot, rx, usedonly))
    for (pname, tags), n in grouped:
        lines = family(pname, "histogram")
        if lines is None:
            continue
        h = snapshot.histograms[n]
        for bound, cum in h.cumulative_buckets():
            le = "+Inf" if math.isinf(bound) else _num(bound)
            lines.append(f"{pname}_bucket{_labels(tags, (('le', le),))} {cum}")
        lines.append(f"{pname}_sum{_labels(tags)} {_prom_num(float(h.sum))}")
        lines.append(f"{pname}_count{_labels(tags)} {h.count}")
    out: list[str] = []
    for pname in order:
        kind, lines = families[pname]
        if not lines:
            continue
        out.append(f"# TYPE {pname} {kind}\n")
        out.extend(line + "\n" for line in lines)
    return "".join(out)


def _prom_key(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    extracted, tags = extract_tags(name)
    return prometheus_name(extracted), tuple(tags)
