"""proxyctl: the command line of ftproxy (click).

`start` runs the proxy in the foreground on a bootstrap; `validate` checks one; `demo` runs the
bundled front-proxy example together with its local demo upstreams. Imports of the proxy
happen inside commands so that `proxyctl --help` stays fast.
"""

from __future__ import annotations

import logging
import sys

import click

_LEVELS = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]


def _setup_logging(level: str) -> None:
    lvl = {"trace": logging.DEBUG, "warn": logging.WARNING, "off": logging.CRITICAL + 10}.get(
        level, getattr(logging, level.upper(), logging.INFO))
    logging.basicConfig(level=lvl, format="[%(asctime)s][%(threadName)s][%(levelname)s] %(message)s",
                        stream=sys.stderr)


@click.group()
@click.version_option(package_name="ftproxy", prog_name="proxyctl")
def main() -> None:
    """ftproxy: an Envoy-style L4/L7 proxy for free-threaded CPython."""


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Envoy v3 bootstrap (YAML or JSON).")
@click.option("--concurrency", type=click.IntRange(min=0), default=None,
              help="Worker threads (default: CPU count; 0 runs one worker, as in Envoy).")
@click.option("-l", "--log-level", type=click.Choice(_LEVELS, case_sensitive=False), default="info")
@click.option("--drain-time-s", type=float, default=600.0, show_default=True,
              help="Longest time to finish in-flight requests on shutdown.")
@click.option("--codec", type=click.Choice(["fast", "h11"]), default="fast", show_default=True,
              help="HTTP/1.1 codec: fast (httptools/llhttp) or h11 (reference).")
@click.option("--config-yaml", default=None, help="YAML merged over the config file (Envoy's flag).")
def start(config_path: str, concurrency: int | None, log_level: str, drain_time_s: float, codec: str,
          config_yaml: str | None) -> None:
    """Run the proxy in the foreground until SIGTERM/SIGINT (then drain and exit 0)."""
    _setup_logging(log_level)
    from proxy.config.load import load_bootstrap
    from proxy.config.reader import ConfigError
    from proxy.server.instance import Server, ServerOptions

    try:
        bootstrap = load_bootstrap(config_path, config_yaml=config_yaml)
    except ConfigError as e:
        click.echo(f"error initializing configuration '{config_path}': {e}", err=True)
        sys.exit(1)
    opts = ServerOptions(config_path, concurrency, drain_time_s, codec, log_level)
    try:
        server = Server(bootstrap, opts)
        code = server.run()
    except OSError as e:
        click.echo(f"error starting the proxy: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--config-yaml", default=None)
def validate(config_path: str, config_yaml: str | None) -> None:
    """Check a bootstrap: exit 0 if it loads, else 1 with the error (naming the field)."""
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
    _setup_logging(log_level)
    from .demo import run_demo

    sys.exit(run_demo(config_path, concurrency, log_level))


if __name__ == "__main__":
    main()
