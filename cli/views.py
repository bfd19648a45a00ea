"""proxyctl's one-shot admin views: `stats`, `config-dump`, `clusters`, plus `top` (cli/top.py).

Job: fetch one admin document through `AdminClient` and print it: `stats` as the admin's
text (or its JSON with --json, pretty-printed), `config-dump` as pretty JSON, `clusters` as a
rich table of hosts that fits the terminal (at 80 columns the secondary ones are left out), or
Envoy's JSON with --json. `register_commands(group)` adds the commands to proxyctl's click
group (cli/main.py calls it). An unreachable admin or an admin
error is one line on stderr and exit status 1, never a traceback.

Must not: import the proxy (these commands talk to a running proxy over HTTP only).
Thread affinity: main thread (click commands).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .admin_client import DEFAULT_ADMIN, AdminClient, AdminError, AdminUnreachable
from .top import WIDE, Col, table, top_command

__all__ = ["register_commands", "clusters_table", "stats_command", "config_dump_command",
           "clusters_command"]

admin_option = click.option("--admin", default=DEFAULT_ADMIN, show_default=True, metavar="HOST:PORT",
                            help="The proxy's admin address.")


def _client(admin: str) -> AdminClient:
    try:
        return AdminClient(admin)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--admin") from e


def _fetch(admin: str, call: Callable[[AdminClient], Any]) -> Any:
    try:
        return call(_client(admin))
    except (AdminUnreachable, AdminError) as e:
        raise click.ClickException(str(e)) from e


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.command("stats")
@admin_option
@click.option("--filter", "filter_re", default=None, metavar="RE",
              help="Only stats whose name matches this regex (the admin's ?filter=).")
@click.option("--json", "as_json", is_flag=True, help="Envoy's JSON form (/stats?format=json).")
def stats_command(admin: str, filter_re: str | None, as_json: bool) -> None:
    """Print the proxy's stats (counters, gauges, histogram quantiles)."""
    if as_json:
        _echo_json(_fetch(admin, lambda c: c.get_json("/stats", {"format": "json", "filter": filter_re})))
    else:
        click.echo(_fetch(admin, lambda c: c.get_text("/stats", {"filter": filter_re})), nl=False)


@click.command("config-dump")
@admin_option
def config_dump_command(admin: str) -> None:
    """Print the running configuration (/config_dump) as JSON."""
    _echo_json(_fetch(admin, lambda c: c.get_json("/config_dump")))


def _host_address(host: Mapping[str, Any]) -> str:
    sa = (host.get("address") or {}).get("socket_address") or {}
    addr = str(sa.get("address", "?"))
    return f"[{addr}]:{sa.get('port_value', '?')}" if ":" in addr else f"{addr}:{sa.get('port_value', '?')}"


# Envoy's short names for the host health flags, as its text /clusters prints them.
_FLAG_NAMES = {"failed_active_health_check": "failed_active_hc", "failed_outlier_check": "failed_outlier_check",
               "failed_active_degraded_check": "degraded_active_hc",
               "pending_dynamic_removal": "pending_dynamic_removal", "pending_active_hc": "pending_active_hc",
               "excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
               "active_hc_timeout": "active_hc_timeout"}


def _health_label(host: Mapping[str, Any]) -> tuple[str, str]:
    hs = host.get("health_status") or {}
    flags = [_FLAG_NAMES.get(k, k) for k, v in hs.items() if k != "eds_health_status" and v is True]
    eds = str(hs.get("eds_health_status", "HEALTHY"))
    if eds == "HEALTHY" and not flags:
        return "healthy", "green"
    return ",".join(([] if eds == "HEALTHY" else [eds.lower()]) + flags), "red"


# Below WIDE columns (an 80-column terminal) only the host, its health, its active connections,
# requests and errors are shown: an address is never cut.
_HOST_COLS = [Col("cluster / host"), Col("health", wrap=True, left=True), Col("weight", wide=True), Col("cx_active"),
              Col("cx_total", wide=True), Col("rq_active", wide=True), Col("rq_total"), Col("rq_success", wide=True),
              Col("rq_error")]
_HOST_STATS = ("cx_active", "cx_total", "rq_active", "rq_total", "rq_success", "rq_error")


def clusters_table(clusters_json: Mapping[str, Any], width: int | None = None) -> Table:
    """Envoy's `/clusters?format=json`: a row per cluster, then a row per host under it. Fits
    `width` (None: as wide as it needs); headers stay whole."""
    rows: list[list[Any]] = []
    for c in clusters_json.get("cluster_statuses", []):
        hosts = c.get("host_statuses", [])
        rows.append([Text(c["name"], style="bold")] + [""] * (len(_HOST_COLS) - 1))
        if not hosts:
            rows.append([Text("  (no hosts)", style="dim")] + [""] * (len(_HOST_COLS) - 1))
        for h in hosts:
            stats = {s["name"]: str(s.get("value", "")) for s in h.get("stats", [])}
            label, style = _health_label(h)
            rows.append(["  " + _host_address(h), Text(label, style=style), str(h.get("weight", 1)),
                         *[stats.get(n, "-") for n in _HOST_STATS]])
    return table("Clusters", _HOST_COLS, rows, width is None or width >= WIDE, width)


@click.command("clusters")
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Envoy's JSON form (/clusters?format=json).")
def clusters_command(admin: str, as_json: bool) -> None:
    """Upstream clusters and their hosts: health, weight, connection and request counts."""
    data = _fetch(admin, lambda c: c.get_json("/clusters", {"format": "json"}))
    if as_json:
        _echo_json(data)
        return
    console = Console(soft_wrap=False)
    console.print(clusters_table(data, console.width))


def register_commands(group: click.Group) -> None:
    """Add `top`, `stats`, `config-dump` and `clusters` to proxyctl's group."""
    for command in (top_command, stats_command, config_dump_command, clusters_command):
        group.add_command(command)
