"""Admin endpoints as Envoy serves them: routing, query parsing and response bodies.

Job: turn (method, request target) into an `AdminResponse` by calling the `AdminContext`
the server was given. Bodies follow Envoy's admin output (`/stats`, `/stats/prometheus`,
`/clusters`, `/listeners`, `/config_dump`, `/certs`, `/server_info`, `/ready`, `/healthcheck/*`,
`/quitquitquit`). Mutating endpoints require POST (GET answers 400). A handler exception
becomes a 500 carrying the message; it never escapes `handle()`.

Thread affinity: `handle()` is called on admin request threads (one per connection), so
every `AdminContext` callable must be safe to call from any thread (read immutable
snapshots, or post to main and wait). Must not: do socket I/O or import the server.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from proxy.admin.log_levels import handle_logging
from proxy.admin.safe_regex import SafeRegex, SafeRegexError
from proxy.stats.render import render_json, render_prometheus, render_text
from proxy.stats.recent_lookups import RecentLookups
from proxy.stats.store import StatsSnapshot

__all__ = ["AdminContext", "AdminResponse", "Endpoint", "ENDPOINTS", "handle", "help_text",
           "render_clusters_text", "render_clusters_json", "render_listeners_json"]

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
REQUIRES_POST = "Method GET not allowed, POST required."  # (405, as Envoy 1.40)

_log = logging.getLogger("ftproxy.admin")


class AdminContext(Protocol):
    """What the admin needs from the server. Called from admin request threads.

    clusters(): [{"name": str, "added_via_api": bool (optional),
                  "hosts": [{"address": "127.0.0.1", "port": 8080, "weight": 1,
                             "health_flags": "healthy" | "/failed_active_hc/failed_outlier_check"...,
                             "hostname": str (opt), "zone"/"region"/"sub_zone": str (opt),
                             "priority": int (opt), "stats": {"cx_active": n, "rq_total": n, ...}}],
                  "circuit_breakers": {"thresholds": [{"priority": "DEFAULT"|"HIGH",
                      "max_connections": n, "max_pending_requests": n, "max_requests": n,
                      "max_retries": n}]}}]
    listeners(): [{"name": str, "address": "127.0.0.1:10000"}]
    state(): "LIVE" | "DRAINING" | "PRE_INITIALIZING" | "INITIALIZING"
    """

    def stats_snapshot(self) -> StatsSnapshot: ...
    def clusters(self) -> list[dict[str, Any]]: ...
    def config_dump(self) -> dict[str, Any]: ...
    def certificates(self) -> list[dict[str, Any]]: ...
    def listeners(self) -> list[dict[str, Any]]: ...
    def server_info(self) -> dict[str, Any]: ...
    def state(self) -> str: ...
    def set_healthcheck_failed(self, failed: bool) -> None: ...
    def quit(self) -> None: ...
    def drain_listeners(self, inbound_only: bool, graceful: bool, skip_exit: bool) -> None: ...
    def reset_counters(self) -> None: ...
    def reopen_logs(self) -> None: ...
    def runtime(self) -> dict[str, Any]: ...
    def memory(self) -> dict[str, Any]: ...
    def init_dump(self) -> dict[str, Any]: ...
    def recent_lookups(self) -> RecentLookups: ...


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    content_type: str
    body: bytes
    # Run by the server after the response has been written (e.g. quit()).
    after: Callable[[], None] | None = None


def _text(status: int, body: str, after: Callable[[], None] | None = None) -> AdminResponse:
    return AdminResponse(status, TEXT, body.encode(), after)


def _json(obj: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(status, JSON, (json.dumps(obj, indent=2, default=str) + "\n").encode())


Params = Mapping[str, Sequence[str]]
Handler = Callable[[AdminContext, Params], AdminResponse]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    help: str
    handler: Handler
    mutates: bool = False


def _param(params: Params, key: str) -> str | None:
    vals = params.get(key)
    return vals[-1] if vals else None


# ---------------------------------------------------------------- stats


# Threat: a linear but large filter (program ~1000 states, all active) costs ~20 ms per
# stat name in pure Python; over thousands of names that pins an admin thread for a minute.
# Budget of NFA state visits per /stats request (~2 s of CPU); ordinary filters use <1%.
STATS_FILTER_MAX_STEPS = 5_000_000


def _stats(ctx: AdminContext, params: Params, fmt: str | None = None) -> AdminResponse:
    fmt = fmt or _param(params, "format") or "text"
    filter_re = _param(params, "filter")
    usedonly = "usedonly" in params
    try:  # RE2 subset, linear time: the pattern is untrusted (a backtracking re is a DoS)
        rx = SafeRegex.compile(filter_re).budgeted(STATS_FILTER_MAX_STEPS) if filter_re else None
    except SafeRegexError as e:
        return _text(400, f"Invalid re2 regex: {e}\n")
    renderers = {"text": (render_text, TEXT), "json": (render_json, JSON),
                 "prometheus": (render_prometheus, TEXT)}
    if fmt not in renderers:
        return _text(400, f"usage: /stats?format=(json|prometheus|text); unknown format {fmt!r}\n")
    render, ctype = renderers[fmt]
    try:
        body = render(ctx.stats_snapshot(), rx, usedonly)
    except SafeRegexError as e:  # STATS_FILTER_MAX_STEPS ran out
        return _text(400, f"Invalid re2 regex: {e}\n")
    return AdminResponse(200, ctype, body.encode())


_HISTOGRAM_BUCKETS_USAGE = "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|prometheusnative)\n"


def _stats_prometheus(ctx: AdminContext, params: Params) -> AdminResponse:
    """Envoy's `/stats/prometheus`. `histogram_buckets`: `cumulative` is the default page;
    `detailed`, `disjoint`, `prometheusnative` (text) and unknown modes get Envoy's 400s;
    `summary` is refused: Envoy's summaries are quantiles since the last flush, and ftproxy
    keeps cumulative histograms only."""
    mode = _param(params, "histogram_buckets")
    if mode not in (None, "cumulative"):
        if mode in ("detailed", "disjoint"):
            return _text(400, "unsupported prometheus histogram bucket mode")  # no newline, as Envoy
        if mode == "prometheusnative":
            return _text(400, "unsupported prometheusnative histogram type when not using protobuf "
                              "exposition format")
        if mode == "summary":
            return _text(400, "histogram_buckets=summary is not supported yet (quantiles since the "
                              "last flush: ftproxy keeps cumulative histograms)\n")
        return _text(400, _HISTOGRAM_BUCKETS_USAGE)
    return _stats(ctx, params, "prometheus")


# ---------------------------------------------------------------- clusters

_CB_FIELDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
_GAUGE_HOST_STATS = frozenset({"cx_active", "rq_active", "rq_pending_active"})


def _host_addr(host: Mapping[str, Any]) -> str:
    addr = str(host.get("address", ""))
    if ":" in addr and not addr.startswith("["):
        addr = f"[{addr}]"
    return f"{addr}:{host.get('port', 0)}"


def _bool(v: Any) -> str:
    return "true" if v else "false"


def render_clusters_text(clusters: Sequence[Mapping[str, Any]]) -> str:
    """Envoy `/clusters` text: `<cluster>::<key>::<value>` and `<cluster>::<host>::<key>::<value>`."""
    out: list[str] = []
    for c in clusters:
        name = c["name"]
        out.append(f"{name}::observability_name::{c.get('observability_name', name)}")
        for k, v in (c.get("outlier") or {}).items():
            out.append(f"{name}::outlier::{k}::{v}")
        for t in (c.get("circuit_breakers") or {}).get("thresholds", []):
            prio = str(t.get("priority", "DEFAULT")).lower()
            for f in _CB_FIELDS:
                if f in t:
                    out.append(f"{name}::{prio}_priority::{f}::{t[f]}")
        out.append(f"{name}::added_via_api::{_bool(c.get('added_via_api', False))}")
        for h in c.get("hosts", []):
            p = f"{name}::{_host_addr(h)}"
            for k, v in sorted((h.get("stats") or {}).items()):
                out.append(f"{p}::{k}::{v}")
            out.append(f"{p}::hostname::{h.get('hostname', '')}")
            out.append(f"{p}::health_flags::{h.get('health_flags', 'healthy')}")
            out.append(f"{p}::weight::{h.get('weight', 1)}")
            out.append(f"{p}::region::{h.get('region', '')}")
            out.append(f"{p}::zone::{h.get('zone', '')}")
            out.append(f"{p}::sub_zone::{h.get('sub_zone', '')}")
            out.append(f"{p}::canary::{_bool(h.get('canary', False))}")
            out.append(f"{p}::priority::{h.get('priority', 0)}")
            out.append(f"{p}::success_rate::{h.get('success_rate', -1)}")
            out.append(f"{p}::local_origin_success_rate::{h.get('local_origin_success_rate', -1)}")
    return "".join(line + "\n" for line in out)


_FLAG_TO_JSON = {
    "/failed_active_hc": ("failed_active_health_check", True),
    "/failed_outlier_check": ("failed_outlier_check", True),
    "/degraded_active_hc": ("failed_active_degraded_check", True),
    "/pending_dynamic_removal": ("pending_dynamic_removal", True),
    "/pending_active_hc": ("pending_active_hc", True),
    "/excluded_via_immediate_hc_fail": ("excluded_via_immediate_hc_fail", True),
    "/active_hc_timeout": ("active_hc_timeout", True),
}


def _health_status(flags: str) -> dict[str, Any]:
    status: dict[str, Any] = {"eds_health_status": "HEALTHY"}
    for flag in re.findall(r"/[a-z_]+", flags or ""):
        if flag == "/failed_eds_health":
            status["eds_health_status"] = "UNHEALTHY"
        elif flag == "/degraded_eds_health":
            status["eds_health_status"] = "DEGRADED"
        elif flag in _FLAG_TO_JSON:
            key, val = _FLAG_TO_JSON[flag]
            status[key] = val
    return status


def _socket_address(address: str, port: Any) -> dict[str, Any]:
    return {"socket_address": {"address": address.strip("[]"), "port_value": int(port)}}


def _rate(source: Mapping[str, Any], key: str, floor: float, above: bool = False) -> dict[str, Any]:
    """{key: {"value": v}} when Envoy prints it: a host's success rates when >= 0, a cluster's
    ejection thresholds when > 0 (`above`); else nothing."""
    if key not in source:
        return {}
    v = float(source[key])
    return {key: {"value": v}} if (v > floor if above else v >= floor) else {}


def render_clusters_json(clusters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Envoy `/clusters?format=json` shape (`cluster_statuses[].host_statuses[]`); stat
    values are strings as protobuf JSON renders uint64."""
    statuses = []
    for c in clusters:
        hosts = []
        for h in c.get("hosts", []):
            # Counters then gauges, each by name; proto3 JSON leaves out a zero value and
            # the default type (COUNTER), as Envoy prints them.
            stats = []
            for k, v in sorted((h.get("stats") or {}).items(), key=lambda kv: (kv[0] in _GAUGE_HOST_STATS, kv[0])):
                entry: dict[str, Any] = {"type": "GAUGE"} if k in _GAUGE_HOST_STATS else {}
                entry["name"] = k
                if v:
                    entry["value"] = str(v)
                stats.append(entry)
            # Envoy's HostStatus in field order; proto3 JSON leaves out defaults.
            host: dict[str, Any] = {
                "address": _socket_address(str(h.get("address", "")), h.get("port", 0)),
                "stats": stats,
                "health_status": _health_status(str(h.get("health_flags", "healthy"))),
            }
            host.update(_rate(h, "success_rate", 0.0))
            host["weight"] = h.get("weight", 1)
            if h.get("hostname"):
                host["hostname"] = h["hostname"]
            if h.get("priority"):
                host["priority"] = h["priority"]
            host.update(_rate(h, "local_origin_success_rate", 0.0))
            host["locality"] = {k: h[k] for k in ("region", "zone", "sub_zone") if h.get(k)}
            hosts.append(host)
        # Envoy's ClusterStatus in field order; proto3 JSON leaves out false and defaults.
        outlier = c.get("outlier") or {}
        entry_c: dict[str, Any] = {"name": c["name"]}
        if c.get("added_via_api"):
            entry_c["added_via_api"] = True
        entry_c.update(_rate(outlier, "success_rate_ejection_threshold", 0.0, above=True))
        entry_c["host_statuses"] = hosts
        entry_c.update(_rate(outlier, "local_origin_success_rate_ejection_threshold", 0.0, above=True))
        if c.get("circuit_breakers"):
            entry_c["circuit_breakers"] = {"thresholds": [
                {k: v for k, v in t.items() if not (k == "priority" and v == "DEFAULT")}
                for t in c["circuit_breakers"].get("thresholds", [])]}
        entry_c["observability_name"] = c.get("observability_name", c["name"])
        statuses.append(entry_c)
    return {"cluster_statuses": statuses}


def _clusters(ctx: AdminContext, params: Params) -> AdminResponse:
    if _param(params, "format") == "json":
        return _json(render_clusters_json(ctx.clusters()))
    return _text(200, render_clusters_text(ctx.clusters()))


# ---------------------------------------------------------------- listeners, server


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def render_listeners_json(listeners: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = []
    for lst in listeners:
        host, port = _split_address(str(lst.get("address", "")))
        out.append({"name": lst["name"], "local_address": _socket_address(host, port)})
    return {"listener_statuses": out}


def _listeners(ctx: AdminContext, params: Params) -> AdminResponse:
    listeners = ctx.listeners()
    if _param(params, "format") == "json":
        return _json(render_listeners_json(listeners))
    return _text(200, "".join(f"{lst['name']}::{lst.get('address', '')}\n" for lst in listeners))


def _config_dump(ctx: AdminContext, params: Params) -> AdminResponse:
    return _json(ctx.config_dump())


def _certs(ctx: AdminContext, params: Params) -> AdminResponse:
    """Envoy's envoy.admin.v3.Certificates (proxy/admin/certs.py has the fields)."""
    return _json({"certificates": ctx.certificates()})


def _server_info(ctx: AdminContext, params: Params) -> AdminResponse:
    return _json(ctx.server_info())


def _hot_restart_version(ctx: AdminContext, params: Params) -> AdminResponse:
    return _text(200, f"{ctx.server_info().get('hot_restart_version', '')}\n")


def _ready(ctx: AdminContext, params: Params) -> AdminResponse:
    state = ctx.state()
    return _text(200 if state == "LIVE" else 503, f"{state}\n")


def _healthcheck_fail(ctx: AdminContext, params: Params) -> AdminResponse:
    ctx.set_healthcheck_failed(True)
    return _text(200, "OK\n")


def _healthcheck_ok(ctx: AdminContext, params: Params) -> AdminResponse:
    ctx.set_healthcheck_failed(False)
    return _text(200, "OK\n")


def _drain_listeners(ctx: AdminContext, params: Params) -> AdminResponse:
    """Envoy's flags are present-or-absent query parameters (`?graceful&inboundonly`); as in
    Envoy 1.40, others are ignored and `skip_exit` matters only with `graceful`."""
    ctx.drain_listeners("inboundonly" in params, "graceful" in params, "skip_exit" in params)
    return _text(200, "OK\n")


def _reset_counters(ctx: AdminContext, params: Params) -> AdminResponse:
    ctx.reset_counters()
    return _text(200, "OK\n")


def _quit(ctx: AdminContext, params: Params) -> AdminResponse:
    return _text(200, "OK\n", after=ctx.quit)


def _reopen_logs(ctx: AdminContext, params: Params) -> AdminResponse:
    ctx.reopen_logs()
    return _text(200, "OK\n")


def _logging(ctx: AdminContext, params: Params) -> AdminResponse:
    return _text(*handle_logging(params))


def _help(ctx: AdminContext, params: Params) -> AdminResponse:
    return _text(200, help_text())


def _runtime(ctx: AdminContext, params: Params) -> AdminResponse:
    return _json(ctx.runtime())


RUNTIME_MODIFY_USAGE = ("usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                        "       or send the parameters as form values\n"
                        "use an empty value to remove a previously added override")


def _runtime_modify(ctx: AdminContext, params: Params) -> AdminResponse:
    """Envoy's usage answer without parameters; with them, refused: ftproxy reads its runtime
    keys at start-up, so an admin-layer override would not be enforced (README)."""
    if not params:
        return _text(400, RUNTIME_MODIFY_USAGE)
    return _text(503, "runtime_modify is not supported: ftproxy reads runtime keys at start-up "
                      "(change layered_runtime and reload)\n")


def _memory(ctx: AdminContext, params: Params) -> AdminResponse:
    return _json(ctx.memory())


def _init_dump(ctx: AdminContext, params: Params) -> AdminResponse:
    return _json(ctx.init_dump())


def _recent_lookups(ctx: AdminContext, params: Params) -> AdminResponse:
    """Envoy's `/stats/recentlookups` (proxy/stats/recent_lookups.py says what a lookup is)."""
    return _text(200, ctx.recent_lookups().render())


def _recent_lookups_action(action: str) -> Handler:
    def handler(ctx: AdminContext, params: Params) -> AdminResponse:
        getattr(ctx.recent_lookups(), action)()
        return _text(200, "OK\n")
    return handler


def _contention(ctx: AdminContext, params: Params) -> AdminResponse:
    return _text(200, "Mutex contention tracing is not supported by ftproxy.\n")


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/", "Admin home page", _help),
    Endpoint("/certs", "print certs on machine", _certs),
    Endpoint("/clusters", "upstream cluster status", _clusters),
    Endpoint("/config_dump", "dump current Envoy configs", _config_dump),
    Endpoint("/contention", "dump current Envoy mutex contention stats (if enabled)", _contention),
    Endpoint("/drain_listeners", "drain listeners", _drain_listeners, mutates=True),
    Endpoint("/healthcheck/fail", "cause the server to fail health checks", _healthcheck_fail, mutates=True),
    Endpoint("/healthcheck/ok", "cause the server to pass health checks", _healthcheck_ok, mutates=True),
    Endpoint("/help", "print out list of admin commands", _help),
    Endpoint("/hot_restart_version", "print the hot restart compatibility version", _hot_restart_version),
    Endpoint("/init_dump", "Print current information of unready targets", _init_dump),
    Endpoint("/listeners", "print listener info", _listeners),
    Endpoint("/logging", "query/change logging levels", _logging, mutates=True),
    Endpoint("/memory", "print current allocation/heap usage", _memory),
    Endpoint("/quitquitquit", "exit the server", _quit, mutates=True),
    Endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503", _ready),
    Endpoint("/reopen_logs", "reopen access logs", _reopen_logs, mutates=True),
    Endpoint("/reset_counters", "reset all counters to zero", _reset_counters, mutates=True),
    Endpoint("/runtime", "print runtime values", _runtime),
    Endpoint("/runtime_modify", "Adds or modifies existing key/value pairs in the runtime", _runtime_modify,
             mutates=True),
    Endpoint("/server_info", "print server version/status information", _server_info),
    Endpoint("/stats", "print server stats", _stats),
    Endpoint("/stats/prometheus", "print server stats in prometheus format", _stats_prometheus),
    Endpoint("/stats/recentlookups", "Show recent stat-name lookups", _recent_lookups),
    Endpoint("/stats/recentlookups/clear", "clear list of stat-name lookups and counter",
             _recent_lookups_action("clear"), mutates=True),
    Endpoint("/stats/recentlookups/disable", "disable recording of reset stat-name lookup names",
             _recent_lookups_action("disable"), mutates=True),
    Endpoint("/stats/recentlookups/enable", "enable recording of reset stat-name lookup names",
             _recent_lookups_action("enable"), mutates=True),
)
_BY_PATH: Mapping[str, Endpoint] = {e.path: e for e in ENDPOINTS}


def help_text() -> str:
    return "admin commands are:\n" + "".join(f"  {e.path}: {e.help}\n" for e in ENDPOINTS)


def handle(ctx: AdminContext, method: str, target: str) -> AdminResponse:
    """Route one request. Never raises: handler errors become 500 with the message."""
    try:
        try:
            parts = urlsplit(target)
        except ValueError:  # e.g. an absolute-form target with a malformed [IPv6] authority
            return _text(400, "invalid request target\n")
        path = parts.path or "/"
        if len(path) > 1:
            path = path.rstrip("/")
        endpoint = _BY_PATH.get(path)
        if endpoint is None:
            return _text(404, "invalid path. " + help_text())
        if endpoint.mutates and method != "POST":
            return _text(405, REQUIRES_POST)
        params = parse_qs(parts.query, keep_blank_values=True)
        return endpoint.handler(ctx, params)
    except Exception as e:  # noqa: BLE001 - the admin must survive any handler bug
        _log.exception("admin handler failed: %s %s", method, target)
        return _text(500, f"{type(e).__name__}: {e}\n")
