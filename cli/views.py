"""proxyctl's one-shot admin views: `stats`, `config-dump`, `clusters`, plus `top` (cli/top.py).

Job: fetch one admin document through `AdminClient` and print it: `stats` as the admin's
text (or its JSON with --json, pretty-printed), `config-dump` as pretty JSON, `clusters` as a
rich table of hosts (or Envoy's JSON with --json). `register_commands(group)` adds the
commands to proxyctl's click group (cli/main.py calls it). An unreachable admin or an admin
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
from .top import top_command

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


def _health_label(host: Mapping[str, Any]) -> tuple[str, str]:
    hs = host.get("health_status") or {}
    flags = [k for k, v in hs.items() if k != "eds_health_status" and v is True]
    eds = str(hs.get("eds_health_status", "HEALTHY"))
    if eds == "HEALTHY" and not flags:
        return "healthy", "green"
    return " ".join([eds.lower()] + flags), "red"


_HOST_STATS = ("cx_active", "cx_total", "rq_active", "rq_total", "rq_success", "rq_error")


def clusters_table(clusters_json: Mapping[str, Any]) -> Table:
    """Envoy's `/clusters?format=json` as one table row per host."""
    table = Table(title="Clusters", title_justify="left", header_style="bold cyan")
    table.add_column("cluster", no_wrap=True)
    table.add_column("host", no_wrap=True)
    table.add_column("health", no_wrap=True)
    table.add_column("weight", justify="right")
    for name in _HOST_STATS:
        table.add_column(name, justify="right")
    for c in clusters_json.get("cluster_statuses", []):
        hosts = c.get("host_statuses", [])
        if not hosts:
            table.add_row(c["name"], Text("(no hosts)", style="dim"), "", "", *[""] * len(_HOST_STATS))
        for h in hosts:
            stats = {s["name"]: str(s.get("value", "")) for s in h.get("stats", [])}
            label, style = _health_label(h)
            table.add_row(c["name"], _host_address(h), Text(label, style=style), str(h.get("weight", 1)),
                          *[stats.get(n, "-") for n in _HOST_STATS])
    return table


@click.command("clusters")
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Envoy's JSON form (/clusters?format=json).")
def clusters_command(admin: str, as_json: bool) -> None:
    """Upstream clusters and their hosts: health, weight, connection and request counts."""
    data = _fetch(admin, lambda c: c.get_json("/clusters", {"format": "json"}))
    if as_json:
        _echo_json(data)
        return
    Console(soft_wrap=False).print(clusters_table(data))


def register_commands(group: click.Group) -> None:
    """Add `top`, `stats`, `config-dump` and `clusters` to proxyctl's group."""
    for command in (top_command, stats_command, config_dump_command, clusters_command):
        group.add_command(command)
