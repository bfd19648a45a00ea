"""`proxyctl top`: a live view of one proxy through its admin API (rich).

Job, in three layers:
- `TopModel` (pure): fed consecutive admin samples (`/stats?format=json`, `/server_info`,
  `/clusters?format=json`) with an injected `now`, it keeps the previous sample and derives a
  `TopView`: per-HCM and per-cluster request rates (total, 2xx/4xx/5xx per second), active
  connections and requests, upstream latency p50/p90/p99 from `upstream_rq_time`'s computed
  quantiles, host health, per-listener and per-worker connections and accepted/s (so worker
  imbalance shows), and TLS handshakes and errors per second (ssl.handshake and
  ssl.connection_error summed over the listeners, downstream, and over the clusters, upstream). A counter that goes down (the process was replaced by a hot restart)
  counts as a reset to zero, as Prometheus' rate() does. An unreachable admin keeps the last
  data and only flags the header.
- `render_top(view, interval, width, height)` (pure): the view as rich renderables, fitted to
  the screen: on an 80x24 terminal every header is whole and every section keeps rows.
- `run_top(...)` (I/O shell): poll, update, redraw one `Live` (screen=True, no auto refresh:
  one redraw per poll, no flicker); q (read in cbreak mode on a thread) or Ctrl-C exits and
  the terminal is restored.

Must not: import the proxy (it talks to it only over HTTP). Thread affinity: `TopModel` and
rendering run on the main thread only; the key-reader thread only sets a `threading.Event`.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .admin_client import DEFAULT_ADMIN, AdminClient, AdminError, AdminUnreachable

__all__ = ["TopModel", "TopView", "Header", "TlsSummary", "HcmRow", "ListenerRow", "WorkerRow", "ClusterRow", "Col", "WIDE",
           "parse_stats_json", "render_top", "header_lines", "table", "compact_number", "poll_once", "run_top",
           "top_command", "main"]

_HCM = re.compile(r"^http\.([^.]+)\.(downstream_rq_total|downstream_rq_[245]xx|downstream_rq_active"
                  r"|downstream_cx_active)$")
_WORKER = re.compile(r"^listener\.(.+)\.worker_(\d+)\.(downstream_cx_total|downstream_cx_active)$")
_LISTENER = re.compile(r"^listener\.(.+)\.(downstream_cx_total|downstream_cx_active)$")
# (Not `cluster.<name>.external.upstream_rq_2xx`: `external` is Envoy's category, no cluster.)
_CLUSTER = re.compile(r"^cluster\.(.+)(?<!\.external)(?<!\.internal)\.(upstream_rq_total"
                      r"|upstream_rq_[245]xx|upstream_rq_active|upstream_cx_active"
                      r"|membership_healthy|membership_total)$")
# xDS: each subscription's update counters (Envoy's SubscriptionStats).
_XDS = re.compile(r"^(listener_manager\.lds|cluster_manager\.cds|http\..+\.rds\..+|cluster\.[^.]+)"
                  r"\.update_(success|rejected)$")
# TLS: Envoy's ssl.* counters of each listener and cluster (summed: downstream, upstream).
_SSL = re.compile(r"^(listener|cluster)\.(.+)\.ssl\.(handshake|connection_error)$")
UNREACHABLE = "admin unreachable, retrying…"


def parse_stats_json(obj: Any) -> tuple[dict[str, float], dict[str, dict[float, float | None]]]:
    """Envoy `/stats?format=json` -> ({name: value}, {histogram: {quantile%: cumulative}})."""
    values: dict[str, float] = {}
    hists: dict[str, dict[float, float | None]] = {}
    for entry in (obj or {}).get("stats", []):
        if "histograms" in entry:
            h = entry["histograms"]
            qs = [float(q) for q in h.get("supported_quantiles", [])]
            for comp in h.get("computed_quantiles", []):
                hists[comp["name"]] = {q: v.get("cumulative") for q, v in zip(qs, comp.get("values", []))}
        elif isinstance(entry.get("value"), int | float):
            values[entry["name"]] = entry["value"]
    return values, hists


# ---------------------------------------------------------------- view model (immutable)


@dataclass(frozen=True, slots=True)
class TlsSummary:
    """TLS handshakes and errors (ssl.handshake / ssl.connection_error), summed over the
    listeners (downstream) and over the clusters (upstream): per second and in total."""
    down_handshakes: int
    down_errors: int
    down_handshakes_per_s: float | None
    down_errors_per_s: float | None
    up_handshakes: int
    up_errors: int
    up_handshakes_per_s: float | None
    up_errors_per_s: float | None


@dataclass(frozen=True, slots=True)
class XdsSummary:
    """xDS: the control-plane stream's state (None: no gRPC source), the updates accepted and
    refused over every subscription (LDS, CDS, RDS, EDS), and what is warming."""
    connected: bool | None
    accepted: int
    rejected: int
    warming_listeners: int
    warming_clusters: int


@dataclass(frozen=True, slots=True)
class Header:
    admin: str
    version: str = "?"
    state: str = "?"
    epoch: int | None = None
    uptime: str = "?"
    uptime_all: str = "?"
    concurrency: int | None = None
    gil_enabled: bool | None = None
    python: str = "?"
    error: str | None = None          # set while the admin is unreachable
    stale_for_s: float | None = None  # age of the data shown while unreachable
    tls: TlsSummary | None = None     # None: no listener or cluster speaks TLS
    xds: XdsSummary | None = None     # None: no xDS subscription


@dataclass(frozen=True, slots=True)
class HcmRow:
    prefix: str
    rq_total: int
    rq_per_s: float | None
    rq_2xx_per_s: float | None
    rq_4xx_per_s: float | None
    rq_5xx_per_s: float | None
    rq_active: int
    cx_active: int


@dataclass(frozen=True, slots=True)
class ListenerRow:
    address: str
    cx_active: int
    cx_total: int
    cx_per_s: float | None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    listener: str
    worker: int
    cx_active: int
    cx_total: int
    cx_per_s: float | None
    share: float  # this worker's part of the listener's accepted connections, 0..1


@dataclass(frozen=True, slots=True)
class ClusterRow:
    name: str
    rq_total: int
    rq_per_s: float | None
    rq_2xx_per_s: float | None
    rq_4xx_per_s: float | None
    rq_5xx_per_s: float | None
    cx_active: int
    rq_active: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    hosts_healthy: int
    hosts_total: int


@dataclass(frozen=True, slots=True)
class TopView:
    header: Header
    hcms: tuple[HcmRow, ...] = ()
    listeners: tuple[ListenerRow, ...] = ()
    workers: tuple[WorkerRow, ...] = ()
    clusters: tuple[ClusterRow, ...] = ()


# ---------------------------------------------------------------- model


def format_duration(value: Any) -> str:
    """Envoy's "3725s" (or a number of seconds) -> "1h02m05s"; unknown shapes pass through."""
    text = str(value)
    m = re.fullmatch(r"(\d+)(?:\.\d+)?s?", text)
    if not m:
        return text
    s = int(m.group(1))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{mi:02d}m"
    if h:
        return f"{h}h{mi:02d}m{s:02d}s"
    return f"{mi}m{s:02d}s" if mi else f"{s}s"


def _groups(rx: re.Pattern[str], names: Iterable[str]) -> set[str]:
    return {m.group(1) for m in map(rx.match, names) if m}


def _host_healthy(host: Mapping[str, Any]) -> bool:
    hs = host.get("health_status") or {}
    if hs.get("eds_health_status", "HEALTHY") not in ("HEALTHY", "DEGRADED"):
        return False
    return not any(v is True for k, v in hs.items() if k.startswith("failed_"))


def _health(clusters_json: Any) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for c in (clusters_json or {}).get("cluster_statuses", []):
        hosts = c.get("host_statuses", [])
        out[c["name"]] = (sum(1 for h in hosts if _host_healthy(h)), len(hosts))
    return out


@dataclass(slots=True)
class TopModel:
    """Keeps the previous sample to turn counters into per-second rates. Main thread only."""

    admin: str = DEFAULT_ADMIN
    _prev: dict[str, float] = field(default_factory=dict)
    _prev_at: float | None = None
    _last_ok_at: float | None = None
    _view: TopView | None = None

    def view(self) -> TopView:
        return self._view or TopView(Header(self.admin, error="waiting for the first sample…"))

    def mark_unreachable(self, reason: str, now: float) -> TopView:
        """The admin did not answer: keep the last data, flag it in the header."""
        base = self.view()
        stale = None if self._last_ok_at is None else max(0.0, now - self._last_ok_at)
        header = replace(base.header, error=f"{UNREACHABLE} ({reason})", stale_for_s=stale)
        self._view = TopView(header, base.hcms, base.listeners, base.workers, base.clusters)
        return self._view

    def update(self, stats_json: Any, server_info: Any, clusters_json: Any, now: float) -> TopView:
        values, hists = parse_stats_json(stats_json)
        dt = None if self._prev_at is None or now <= self._prev_at else now - self._prev_at
        prev = self._prev

        def rate(name: str) -> float | None:
            if dt is None or name not in values or name not in prev:
                return None
            delta = values[name] - prev[name]
            return (values[name] if delta < 0 else delta) / dt  # went down: a reset to zero

        def val(name: str) -> int:
            return int(values.get(name, 0))

        hcms = tuple(
            HcmRow(p, val(f"http.{p}.downstream_rq_total"), rate(f"http.{p}.downstream_rq_total"),
                   rate(f"http.{p}.downstream_rq_2xx"), rate(f"http.{p}.downstream_rq_4xx"),
                   rate(f"http.{p}.downstream_rq_5xx"), val(f"http.{p}.downstream_rq_active"),
                   val(f"http.{p}.downstream_cx_active"))
            for p in sorted(_groups(_HCM, values)))
        worker_keys = sorted({(m.group(1), int(m.group(2))) for n in values if (m := _WORKER.match(n))})
        listener_names = sorted(_groups(_LISTENER, [n for n in values if not _WORKER.match(n)]) - {"admin"})
        listeners = tuple(
            ListenerRow(a, val(f"listener.{a}.downstream_cx_active"), val(f"listener.{a}.downstream_cx_total"),
                        rate(f"listener.{a}.downstream_cx_total")) for a in listener_names)
        workers = []
        for a, i in worker_keys:
            total = val(f"listener.{a}.worker_{i}.downstream_cx_total")
            all_workers = sum(val(f"listener.{a}.worker_{j}.downstream_cx_total") for b, j in worker_keys if b == a)
            workers.append(WorkerRow(a, i, val(f"listener.{a}.worker_{i}.downstream_cx_active"), total,
                                     rate(f"listener.{a}.worker_{i}.downstream_cx_total"),
                                     total / all_workers if all_workers else 0.0))
        health = _health(clusters_json)
        cluster_names = sorted(_groups(_CLUSTER, values) | set(health))
        clusters = []
        for c in cluster_names:
            q = hists.get(f"cluster.{c}.upstream_rq_time", {})
            healthy, total = health.get(c, (val(f"cluster.{c}.membership_healthy"),
                                            val(f"cluster.{c}.membership_total")))
            clusters.append(ClusterRow(
                c, val(f"cluster.{c}.upstream_rq_total"), rate(f"cluster.{c}.upstream_rq_total"),
                rate(f"cluster.{c}.upstream_rq_2xx"), rate(f"cluster.{c}.upstream_rq_4xx"),
                rate(f"cluster.{c}.upstream_rq_5xx"), val(f"cluster.{c}.upstream_cx_active"),
                val(f"cluster.{c}.upstream_rq_active"), q.get(50.0), q.get(90.0), q.get(99.0), healthy, total))
        tls = _tls_summary(values, prev, dt)
        self._prev, self._prev_at, self._last_ok_at = values, now, now
        self._view = TopView(replace(_header(self.admin, server_info, values), tls=tls,
                                     xds=_xds_summary(values)), hcms, listeners,
                             tuple(workers), tuple(clusters))
        return self._view


def _tls_summary(values: Mapping[str, float], prev: Mapping[str, float],
                 dt: float | None) -> TlsSummary | None:
    """Sum ssl.handshake and ssl.connection_error over listeners and over clusters; rates
    from the previous sample (a counter that went down counts from zero)."""
    now_sum = {k: 0 for k in ("listener.handshake", "listener.connection_error",
                              "cluster.handshake", "cluster.connection_error")}
    rate_sum: dict[str, float | None] = dict.fromkeys(now_sum, 0.0 if dt else None)
    seen = False
    for name, v in values.items():
        m = _SSL.match(name)
        if m is None or m.group(1) == "listener" and ".worker_" in m.group(2):
            continue
        seen = True
        key = f"{m.group(1)}.{m.group(3)}"
        now_sum[key] += int(v)
        if dt and rate_sum[key] is not None:
            if name in prev:
                delta = v - prev[name]
                rate_sum[key] += (v if delta < 0 else delta) / dt
            else:
                rate_sum[key] = None  # a stat new since the last sample: no rate yet
    if not seen:
        return None
    return TlsSummary(now_sum["listener.handshake"], now_sum["listener.connection_error"],
                      rate_sum["listener.handshake"], rate_sum["listener.connection_error"],
                      now_sum["cluster.handshake"], now_sum["cluster.connection_error"],
                      rate_sum["cluster.handshake"], rate_sum["cluster.connection_error"])


def _xds_summary(values: Mapping[str, float]) -> XdsSummary | None:
    ok = bad = 0
    seen = False
    for name, v in values.items():
        m = _XDS.match(name)
        if m:
            seen = True
            if m.group(2) == "success":
                ok += int(v)
            else:
                bad += int(v)
    state = values.get("control_plane.connected_state")
    if not seen and state is None:
        return None
    return XdsSummary(None if state is None else bool(state), ok, bad,
                      int(values.get("listener_manager.total_listeners_warming", 0)),
                      int(values.get("cluster_manager.warming_clusters", 0)))


def _header(admin: str, info: Any, values: Mapping[str, float]) -> Header:
    info = info or {}
    opts = info.get("command_line_options") or {}
    py = info.get("python") or {}
    epoch = opts.get("restart_epoch", values.get("server.hot_restart_epoch"))
    conc = opts.get("concurrency", values.get("server.concurrency"))
    uptime = info.get("uptime_current_epoch", values.get("server.uptime", "?"))
    return Header(admin=admin, version=str(info.get("version", "?")), state=str(info.get("state", "?")),
                  epoch=None if epoch is None else int(epoch), uptime=format_duration(uptime),
                  uptime_all=format_duration(info.get("uptime_all_epochs", uptime)),
                  concurrency=None if conc is None else int(conc), gil_enabled=py.get("gil_enabled"),
                  python=str(py.get("version", "?")))


# ---------------------------------------------------------------- rendering

# The screen must work on an 80x24 terminal (issue 13 §9): narrower than WIDE columns, the
# tables drop their secondary columns (`Col.wide`) so every header stays whole, and with a
# height the rows are shared out so that every section (HTTP, clusters, listeners) keeps at
# least one row; what does not fit is counted in a "… N more" row.
WIDE = 120
_MORE_STYLE = "dim"


@dataclass(frozen=True, slots=True)
class Col:
    """A table column: its header, and whether only wide screens show it."""

    header: str
    wide: bool = False
    wrap: bool = False  # may fold onto a second line rather than push other columns out
    left: bool = False  # text, not a number


def compact_number(v: float | None, decimals: int = 1) -> str:
    """At most 6 characters: 9.75 / 97.5 / 9,999 / 12.3k / 1.2M (a rate, count or latency)."""
    if v is None:
        return "-"
    a = abs(v)
    if a < 1000:
        return f"{v:,.{decimals}f}"
    if a < 10_000:
        return f"{v:,.0f}"
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        if a < div * 1000:
            return f"{v / div:.1f}{unit}"
    return f"{v / 1e12:.1f}T"


def _rate(v: float | None) -> str:
    return compact_number(v, 1)


def _count(v: int) -> str:
    return compact_number(v, 0)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return compact_number(v, 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0)


def header_lines(h: Header) -> list[Text]:
    """The header, each line cut (never wrapped) at the screen's width."""
    gil = {True: "enabled", False: "disabled", None: "?"}[h.gil_enabled]
    first = Text(no_wrap=True, overflow="ellipsis")
    first.append(f"{h.version}", style="bold")
    first.append(f"  state {h.state}", style="green" if h.state == "LIVE" else "yellow")
    first.append(f"  epoch {'?' if h.epoch is None else h.epoch}  uptime {h.uptime}"
                 f" (all epochs {h.uptime_all})")
    second = Text(f"concurrency {'?' if h.concurrency is None else h.concurrency}  GIL {gil}  "
                  f"python {h.python}  admin {h.admin}", style="dim", no_wrap=True, overflow="ellipsis")
    lines = [first, second]
    if h.tls is not None:
        t = h.tls
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("TLS", style="bold")
        line.append(f"  down {_rate(t.down_handshakes_per_s)} hs/s ")
        line.append(f"{_rate(t.down_errors_per_s)} err/s", style="red" if t.down_errors_per_s else "")
        line.append(f" ({_count(t.down_handshakes)}/{_count(t.down_errors)})  "
                    f"up {_rate(t.up_handshakes_per_s)} hs/s ")
        line.append(f"{_rate(t.up_errors_per_s)} err/s", style="red" if t.up_errors_per_s else "")
        line.append(f" ({_count(t.up_handshakes)}/{_count(t.up_errors)})")
        lines.append(line)
    if h.xds is not None:
        x = h.xds
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("xDS", style="bold")
        if x.connected is not None:
            line.append("  control plane ")
            line.append("connected" if x.connected else "disconnected",
                        style="green" if x.connected else "bold red")
        line.append(f"  updates {_count(x.accepted)} applied ")
        line.append(f"{_count(x.rejected)} rejected", style="red" if x.rejected else "")
        if x.warming_listeners or x.warming_clusters:
            line.append(f"  warming {x.warming_listeners} listener(s) {x.warming_clusters} cluster(s)",
                        style="yellow")
        lines.append(line)
    if h.error:
        err = Text(h.error, style="bold red", no_wrap=True, overflow="ellipsis")
        if h.stale_for_s is not None:
            err.append(f"  (data shown is {h.stale_for_s:.0f}s old)", style="red")
        lines.append(err)
    return lines


def _cell_len(cell: RenderableType) -> int:
    return cell.cell_len if isinstance(cell, Text) else len(str(cell))


def table(title: str | None, columns: list[Col], rows: list[list[RenderableType]], wide: bool,
          width: int | None = None) -> Table:
    """A borderless table (one header line, no rules: lines are scarce on a small screen) of the
    columns this width shows. The first column is the row's name, cut with an ellipsis so that
    the table fits `width`; if that is not enough a `wrap` column folds; the others are never
    narrower than their header or their widest value."""
    keep = [i for i, c in enumerate(columns) if wide or not c.wide]
    first_max = None
    if width is not None:
        # rich shrinks every no_wrap column alike when a table is too wide, cutting the headers
        # on the right: give the name column what the others leave instead.
        others = sum(max([len(columns[i].header)] + [_cell_len(r[i]) for r in rows]) for i in keep[1:])
        first_max = max(len(columns[keep[0]].header), width - others - 2 * (len(keep) - 1))
    t = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
              header_style="bold cyan")
    for n, i in enumerate(keep):
        header = columns[i].header
        if n == 0:
            t.add_column(header, justify="left", no_wrap=True, overflow="ellipsis", min_width=len(header),
                         max_width=first_max)
        elif columns[i].wrap:
            t.add_column(header, justify="left", overflow="fold", min_width=len(header))
        else:
            t.add_column(header, justify="left" if columns[i].left else "right", no_wrap=True,
                         min_width=len(header))
    for row in rows:
        t.add_row(*[row[i] for i in keep])
    return t


def _share_out(sizes: list[int], budget: int) -> list[int]:
    """Rows per section: one at a time to each section in turn until the budget is spent."""
    given = [0] * len(sizes)
    while budget > 0 and any(g < n for g, n in zip(given, sizes)):
        for i, n in enumerate(sizes):
            if budget > 0 and given[i] < n:
                given[i] += 1
                budget -= 1
    return given


def _fit(rows: list[list[RenderableType]], allowed: int, ncols: int) -> list[list[RenderableType]]:
    if len(rows) <= allowed:
        return rows
    if allowed <= 0:
        return []
    more = len(rows) - allowed + 1
    return rows[:allowed - 1] + [[Text(f"… {more} more", style=_MORE_STYLE)] + [""] * (ncols - 1)]


_HCM_COLS = [Col("stat_prefix"), Col("rq total"), Col("rq/s"), Col("2xx/s"), Col("4xx/s"), Col("5xx/s"),
             Col("active rq"), Col("active cx")]
_CLUSTER_COLS = [Col("cluster"), Col("healthy"), Col("rq total", wide=True), Col("rq/s"), Col("2xx/s"),
                 Col("4xx/s"), Col("5xx/s"), Col("active cx", wide=True), Col("active rq"), Col("p50 ms"),
                 Col("p90 ms", wide=True), Col("p99 ms")]
_LISTENER_COLS = [Col("listener / worker"), Col("active cx"), Col("cx total"), Col("accepted/s"), Col("share")]


def render_top(view: TopView, interval: float | None = None, width: int | None = None,
               height: int | None = None) -> RenderableType:
    """The screen for `view`; `width` below WIDE drops the secondary columns, `height` bounds
    the number of lines (None: as many as the view has)."""
    wide = width is None or width >= WIDE
    bar_len = 20 if wide else 10
    hcm_rows = [[r.prefix, _count(r.rq_total), _rate(r.rq_per_s), _rate(r.rq_2xx_per_s), _rate(r.rq_4xx_per_s),
                 _rate(r.rq_5xx_per_s), str(r.rq_active), str(r.cx_active)] for r in view.hcms]
    cluster_rows = []
    for c in view.clusters:
        health_style = "green" if c.hosts_healthy == c.hosts_total else "red"
        cluster_rows.append([c.name, Text(f"{c.hosts_healthy}/{c.hosts_total}", style=health_style),
                             _count(c.rq_total), _rate(c.rq_per_s), _rate(c.rq_2xx_per_s), _rate(c.rq_4xx_per_s),
                             _rate(c.rq_5xx_per_s), str(c.cx_active), str(c.rq_active), _ms(c.p50_ms),
                             _ms(c.p90_ms), _ms(c.p99_ms)])
    listener_rows: list[list[RenderableType]] = []
    for ls in view.listeners:
        listener_rows.append([ls.address, str(ls.cx_active), _count(ls.cx_total), _rate(ls.cx_per_s), ""])
        for w in view.workers:
            if w.listener == ls.address:
                bar = "█" * round(w.share * bar_len)
                listener_rows.append([f"  worker_{w.worker}", str(w.cx_active), _count(w.cx_total),
                                      _rate(w.cx_per_s), f"{bar:<{bar_len}} {w.share:4.0%}"])
    head = header_lines(view.header)
    sections = [("HTTP connection managers", _HCM_COLS, hcm_rows), ("Clusters", _CLUSTER_COLS, cluster_rows),
                ("Listeners and workers", _LISTENER_COLS, listener_rows)]
    if height is not None:
        # Lines: the header, a title and a column header per section, the footer.
        budget = height - len(head) - 2 * len(sections) - 1
        allowed = _share_out([len(rows) for _, _, rows in sections], max(0, budget))
        sections = [(title, cols, _fit(rows, n, len(cols))) for (title, cols, rows), n in zip(sections, allowed)]
    footer = Text("q: quit" + (f"   refresh every {interval:g}s" if interval else ""), style="dim", no_wrap=True)
    return Group(*head, *(table(title, cols, rows, wide, width) for title, cols, rows in sections), footer)


# ---------------------------------------------------------------- I/O shell


def poll_once(client: AdminClient, model: TopModel, now: float) -> TopView:
    """Fetch the three admin documents and feed the model; any failure keeps the last data."""
    try:
        stats = client.get_json("/stats", {"format": "json"})
        info = client.get_json("/server_info")
        clusters = client.get_json("/clusters", {"format": "json"})
    except (AdminUnreachable, AdminError) as e:
        reason = e.reason if isinstance(e, AdminUnreachable) else f"HTTP {e.status}"
        return model.mark_unreachable(reason, now)
    return model.update(stats, info, clusters, now)


class _QuitKeyReader:
    """Reads keys in cbreak mode on a daemon thread; sets `quit` on q/Q. Restores the tty on exit.

    cbreak (not raw) keeps ISIG, so Ctrl-C still raises KeyboardInterrupt on the main thread.
    Without a tty on stdin (pipes, tests) it does nothing.
    """

    def __init__(self, quit_event: threading.Event) -> None:
        self._quit = quit_event
        self._stop = threading.Event()
        self._saved: list[Any] | None = None
        self._fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _QuitKeyReader:
        try:
            import termios
            import tty
            if not sys.stdin.isatty():
                return self
            self._fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        except (ImportError, OSError, ValueError):  # no termios (Windows) or no real stdin
            return self
        self._thread = threading.Thread(target=self._read, name="top-keys", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        import os
        import select
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if ready and os.read(self._fd, 1) in (b"q", b"Q"):
                self._quit.set()
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


def run_top(admin: str = DEFAULT_ADMIN, interval: float = 1.0, console: Console | None = None) -> int:
    """The live TUI until q or Ctrl-C; returns the exit code (0)."""
    # A poll must not stall the display (or the q key) much longer than one interval.
    client = AdminClient(admin, timeout=max(0.5, min(2.0, interval)))
    model = TopModel(admin)
    quit_event = threading.Event()
    try:
        with _QuitKeyReader(quit_event), Live(render_top(model.view(), interval), console=console,
                                              screen=True, auto_refresh=False) as live:
            while not quit_event.is_set():
                view = poll_once(client, model, time.monotonic())
                size = live.console.size
                live.update(render_top(view, interval, size.width, size.height), refresh=True)
                quit_event.wait(interval)
    except KeyboardInterrupt:
        pass
    return 0


@click.command("top")
@click.option("--admin", default=DEFAULT_ADMIN, show_default=True, metavar="HOST:PORT",
              help="The proxy's admin address.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between polls.")
def top_command(admin: str, interval: float) -> None:
    """Live view of a running proxy: rates, connections, latency, health, workers (q quits)."""
    try:
        AdminClient(admin)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--admin") from e
    sys.exit(run_top(admin, interval))


def main() -> None:
    top_command(prog_name="python -m cli.top")


if __name__ == "__main__":
    main()
