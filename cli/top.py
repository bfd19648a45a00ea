"""`proxyctl top`: a live view of one proxy through its admin API (rich).

Job, in three layers:
- `TopModel` (pure): fed consecutive admin samples (`/stats?format=json`, `/server_info`,
  `/clusters?format=json`) with an injected `now`, it keeps the previous sample and derives a
  `TopView`: per-HCM and per-cluster request rates (total, 2xx/4xx/5xx per second), active
  connections and requests, upstream latency p50/p90/p99 from `upstream_rq_time`'s computed
  quantiles, host health, per-listener and per-worker connections and accepted/s (so worker
  imbalance shows). A counter that goes down (the process was replaced by a hot restart)
  counts as a reset to zero, as Prometheus' rate() does. An unreachable admin keeps the last
  data and only flags the header.
- `render_top(view)` (pure): the view as rich renderables.
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

__all__ = ["TopModel", "TopView", "Header", "HcmRow", "ListenerRow", "WorkerRow", "ClusterRow",
           "parse_stats_json", "render_top", "poll_once", "run_top", "top_command", "main"]

_HCM = re.compile(r"^http\.([^.]+)\.(downstream_rq_total|downstream_rq_[245]xx|downstream_rq_active"
                  r"|downstream_cx_active)$")
_WORKER = re.compile(r"^listener\.(.+)\.worker_(\d+)\.(downstream_cx_total|downstream_cx_active)$")
_LISTENER = re.compile(r"^listener\.(.+)\.(downstream_cx_total|downstream_cx_active)$")
# (Not `cluster.<name>.external.upstream_rq_2xx`: `external` is Envoy's category, no cluster.)
_CLUSTER = re.compile(r"^cluster\.(.+)(?<!\.external)(?<!\.internal)\.(upstream_rq_total"
                      r"|upstream_rq_[245]xx|upstream_rq_active|upstream_cx_active"
                      r"|membership_healthy|membership_total)$")
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
        self._prev, self._prev_at, self._last_ok_at = values, now, now
        self._view = TopView(_header(self.admin, server_info, values), hcms, listeners, tuple(workers),
                             tuple(clusters))
        return self._view


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


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


def _header_text(h: Header) -> Text:
    gil = {True: "enabled", False: "disabled", None: "?"}[h.gil_enabled]
    t = Text()
    t.append(f"{h.version}", style="bold")
    t.append(f"  state {h.state}", style="green" if h.state == "LIVE" else "yellow")
    t.append(f"  epoch {'?' if h.epoch is None else h.epoch}  uptime {h.uptime} (all epochs {h.uptime_all})"
             f"  concurrency {'?' if h.concurrency is None else h.concurrency}  GIL {gil}"
             "\n")
    t.append(f"admin {h.admin}  python {h.python}", style="dim")
    if h.error:
        t.append("\n")
        t.append(h.error, style="bold red")
        if h.stale_for_s is not None:
            t.append(f"  (data shown is {h.stale_for_s:.0f}s old)", style="red")
    return t


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=True, header_style="bold cyan")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    return table


def render_top(view: TopView, interval: float | None = None) -> RenderableType:
    hcm = _table("HTTP connection managers", "stat_prefix", "rq total", "rq/s", "2xx/s", "4xx/s", "5xx/s",
                 "active rq", "active cx")
    for r in view.hcms:
        hcm.add_row(r.prefix, f"{r.rq_total:,}", _rate(r.rq_per_s), _rate(r.rq_2xx_per_s), _rate(r.rq_4xx_per_s),
                    _rate(r.rq_5xx_per_s), str(r.rq_active), str(r.cx_active))
    lst = _table("Listeners", "listener", "active cx", "cx total", "accepted/s")
    for ls in view.listeners:
        lst.add_row(ls.address, str(ls.cx_active), f"{ls.cx_total:,}", _rate(ls.cx_per_s))
    wrk = _table("Workers", "listener / worker", "active cx", "cx total", "accepted/s", "share")
    for w in view.workers:
        bar = "█" * round(w.share * 20)
        wrk.add_row(f"{w.listener} worker_{w.worker}", str(w.cx_active), f"{w.cx_total:,}", _rate(w.cx_per_s),
                    f"{bar:<20} {w.share:4.0%}")
    cl = _table("Clusters", "cluster", "healthy", "rq total", "rq/s", "2xx/s", "4xx/s", "5xx/s", "active cx",
                "active rq", "p50 ms", "p90 ms", "p99 ms")
    for c in view.clusters:
        health_style = "green" if c.hosts_healthy == c.hosts_total else "red"
        cl.add_row(c.name, Text(f"{c.hosts_healthy}/{c.hosts_total}", style=health_style), f"{c.rq_total:,}",
                   _rate(c.rq_per_s), _rate(c.rq_2xx_per_s), _rate(c.rq_4xx_per_s), _rate(c.rq_5xx_per_s),
                   str(c.cx_active), str(c.rq_active), _ms(c.p50_ms), _ms(c.p90_ms), _ms(c.p99_ms))
    footer = Text("q: quit" + (f"   refresh every {interval:g}s" if interval else ""), style="dim")
    return Group(_header_text(view.header), hcm, lst, wrk, cl, footer)


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
                live.update(render_top(view, interval), refresh=True)
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
