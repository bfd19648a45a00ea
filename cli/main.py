"""proxyctl: the command line of ftproxy (click).

`start` runs the proxy under its hot-restart supervisor (cli/supervisor.py); `reload`, `stop`
and `status` talk to that supervisor over its control socket (cli/control.py); `validate`
checks a bootstrap; `demo` runs the bundled front-proxy example with its demo upstreams; the
admin views (`top`, `stats`, ...) come from cli/views.py. Imports of the proxy happen inside
commands so that `proxyctl --help` stays fast.
Exit status (docs/deploying.md): 0 success, 1 failure with one line on stderr, 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .control import default_pid_file
from .views import register_commands

_LEVELS = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]


@click.group()
@click.version_option(package_name="ftproxy", prog_name="proxyctl")
def main() -> None:
    """ftproxy: an Envoy-style L4/L7 proxy for free-threaded CPython."""


pid_file_option = click.option(
    "--pid-file", default=None, type=click.Path(dir_okay=False),
    help="The supervisor's pid file; its control socket is <pid-file>.sock "
         "[default: $XDG_RUNTIME_DIR/ftproxy/proxyctl.pid, else /tmp/ftproxy-<uid>/proxyctl.pid].")


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Envoy v3 bootstrap (YAML or JSON).")
@click.option("--concurrency", type=click.IntRange(min=0), default=None,
              help="Worker threads (default: CPU count; 0 runs one worker, as in Envoy).")
@click.option("-l", "--log-level", type=click.Choice(_LEVELS, case_sensitive=False), default="info")
@click.option("--drain-time-s", type=float, default=600.0, show_default=True,
              help="Longest time to finish in-flight requests on shutdown (SIGTERM, stop).")
@click.option("--drain-strategy", type=click.Choice(["gradual", "immediate"]), default="gradual",
              show_default=True, help="How a replaced or removed LDS listener's connections drain "
                                      "over --drain-time-s.")
@click.option("--parent-shutdown-time-s", type=float, default=900.0, show_default=True,
              help="After a reload, the old epoch exits at the latest this long after the new one serves.")
@click.option("--base-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="Names the hot-restart sockets; two proxies on one host need different base ids.")
@click.option("--hot-restart-socket-path", default=None, type=click.Path(dir_okay=False),
              help="Filesystem prefix for the hot-restart sockets (default: Linux abstract namespace).")
@pid_file_option
@click.option("--daemon", is_flag=True, help="Run in the background; return once epoch 0 serves.")
@click.option("--log-file", default=None, type=click.Path(dir_okay=False),
              help="With --daemon: where the supervisor and the epochs log; SIGUSR1 reopens it "
                   "(log rotation) [default: <pid-file>.log].")
@click.option("--codec", type=click.Choice(["fast", "h11"]), default="fast", show_default=True,
              help="HTTP/1.1 codec: fast (httptools/llhttp) or h11 (reference).")
@click.option("--config-yaml", default=None, help="YAML merged over the config file (Envoy's flag).")
@click.option("--file-flush-interval-msec", type=click.IntRange(min=1), default=1000, show_default=True,
              help="How often access logs are written out (Envoy's flag; Envoy's default is 10000).")
def start(config_path: str, concurrency: int | None, log_level: str, drain_time_s: float,
          drain_strategy: str, parent_shutdown_time_s: float, base_id: int, hot_restart_socket_path: str | None,
          pid_file: str | None, daemon: bool, log_file: str | None, codec: str, config_yaml: str | None,
          file_flush_interval_msec: int) -> None:
    """Run the proxy under a hot-restart supervisor until `proxyctl stop` or SIGTERM/SIGINT.

    Exit status: 0 after a stop (the epochs drained), 1 if epoch 0 could not start (the reason
    is printed) or a supervisor already runs at this pid file; otherwise the last epoch's status.
    """
    if log_file and not daemon:
        raise click.UsageError("--log-file needs --daemon (in the foreground the epochs log to stdout/stderr)")
    from .supervisor import EpochOptions, run_daemon, run_foreground

    opts = EpochOptions(concurrency, base_id, drain_time_s, parent_shutdown_time_s, log_level.lower(),
                        os.path.abspath(hot_restart_socket_path) if hot_restart_socket_path else None,
                        codec, config_yaml, drain_strategy, file_flush_interval_msec)
    pid_file = os.path.abspath(pid_file or default_pid_file())
    config_path = os.path.abspath(config_path)
    if daemon:
        sys.exit(run_daemon(config_path, opts, pid_file, os.path.abspath(log_file or pid_file + ".log")))
    sys.exit(run_foreground(config_path, opts, pid_file))


@main.command()
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="The new bootstrap (default: the one the serving epoch runs).")
@pid_file_option
def reload(config_path: str | None, pid_file: str | None) -> None:
    """Hot-restart: start the next epoch (same options); the old one drains.

    Prints "reloaded: epoch N (pid P)" and exits 0; or prints the reason (bad config, version
    mismatch, crash) and exits 1, leaving the old epoch serving.
    """
    reply = _request(pid_file, {"cmd": "reload",
                                "config": os.path.abspath(config_path) if config_path else None})
    if not reply.get("ok"):
        click.echo(f"reload failed: {reply.get('reason')}", err=True)
        sys.exit(1)
    click.echo(f"reloaded: epoch {reply['epoch']} (pid {reply['pid']})")


@main.command()
@pid_file_option
@click.option("--timeout", type=float, default=None,
              help="Give up waiting for the drain after this many seconds (exit 1) [default: wait].")
def stop(pid_file: str | None, timeout: float | None) -> None:
    """Drain every epoch and wait until the supervisor has exited (exit 0; 1 if none runs)."""
    from .control import wait_gone

    reply = _request(pid_file, {"cmd": "stop"})
    pid = int(reply["supervisor_pid"])
    if not wait_gone(pid, timeout):
        click.echo(f"supervisor pid {pid} still draining after {timeout:g}s", err=True)
        sys.exit(1)
    click.echo(f"stopped (supervisor pid {pid})")


@main.command()
@pid_file_option
@click.option("--json", "as_json", is_flag=True, help="The supervisor's answer as one JSON object.")
def status(pid_file: str | None, as_json: bool) -> None:
    """Show the supervisor, its epochs (serving/draining), listeners and admin (exit 1 if none runs)."""
    info = _request(pid_file, {"cmd": "status"})
    if as_json:
        click.echo(json.dumps(info))
        return
    from rich.console import Console

    from .control import render_status
    render_status(info, Console())


def _request(pid_file: str | None, msg: dict) -> dict:
    from .control import NotRunning, request

    try:
        return request(os.path.abspath(pid_file or default_pid_file()), msg)
    except NotRunning as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--config-yaml", default=None)
def validate(config_path: str, config_yaml: str | None) -> None:
    """Check a bootstrap: exit 0 if it loads (printing any warning, e.g. no listeners), else 1
    with every error of the file, one per line, each naming its field path."""
    from proxy.config.load import validate as run_validate

    code, message = run_validate(config_path, config_yaml=config_yaml)
    click.echo(message, err=code != 0)
    sys.exit(code)


@main.command()
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Defaults to the bundled examples/front-proxy.yaml.")
@click.option("--concurrency", type=click.IntRange(min=0), default=None)
@click.option("-l", "--log-level", type=click.Choice(_LEVELS, case_sensitive=False), default="info")
def demo(config_path: str | None, concurrency: int | None, log_level: str) -> None:
    """Run the front-proxy example with its demo upstreams (all on 127.0.0.1)."""
    from proxy.server.main import setup_logging

    setup_logging(log_level)
    from .demo import run_demo

    sys.exit(run_demo(config_path, concurrency, log_level))


register_commands(main)  # top, stats, clusters, config-dump (cli/views.py)


if __name__ == "__main__":
    main()
