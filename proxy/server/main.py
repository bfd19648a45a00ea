"""Process entry of one proxy epoch: `python -m proxy.server.main -c FILE [options]`.

`proxyctl start` runs this under its supervisor (one process per hot-restart epoch); it can
also be run directly, as Envoy's binary is. With `--status-fd N` it writes one JSON line to
fd N once it serves (`{"event": "ready", ...}`) or fails to start (`{"event": "failed",
"reason": ...}`), so the supervisor can tell `proxyctl reload` what happened.
Options keep Envoy's names (--restart-epoch, --base-id, --drain-time-s,
--parent-shutdown-time-s, --hot-restart-version, --concurrency, -l, --file-flush-interval-msec).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftproxy", description="Run one ftproxy epoch.")
    p.add_argument("-c", "--config-path", dest="config")
    p.add_argument("--config-yaml", default=None)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("-l", "--log-level", default="info")
    p.add_argument("--restart-epoch", type=int, default=0)
    p.add_argument("--base-id", type=int, default=0)
    p.add_argument("--hot-restart-socket-path", default=None,
                   help="filesystem path prefix for the hot-restart socket (default: abstract namespace)")
    p.add_argument("--disable-hot-restart", action="store_true")
    p.add_argument("--drain-time-s", type=float, default=600.0)
    p.add_argument("--drain-strategy", choices=("gradual", "immediate"), default="gradual",
                   help="how a replaced or removed LDS listener's connections drain over --drain-time-s")
    p.add_argument("--parent-shutdown-time-s", type=float, default=900.0)
    p.add_argument("--file-flush-interval-msec", type=int, default=1000,
                   help="how often access logs are written out (Envoy's flag; its default is 10000)")
    p.add_argument("--codec", choices=("fast", "h11"), default="fast")
    p.add_argument("--status-fd", type=int, default=None)
    p.add_argument("--hot-restart-version", action="store_true")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve")
    return p


def _status_writer(fd: int | None):
    def write(event: dict) -> None:
        if fd is None:
            return
        try:
            os.write(fd, (json.dumps(event) + "\n").encode())
        except OSError:
            pass
    return write


def setup_logging(level: str) -> None:
    lvl = {"trace": logging.DEBUG, "warn": logging.WARNING, "off": logging.CRITICAL + 10}.get(
        level, getattr(logging, level.upper(), logging.INFO))
    logging.basicConfig(level=lvl, stream=sys.stderr,
                        format="[%(asctime)s][%(process)d][%(threadName)s][%(levelname)s] %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.hot_restart_version:
        from ..hotrestart.messages import HOT_RESTART_VERSION
        print(HOT_RESTART_VERSION)
        return 0
    setup_logging(args.log_level)
    status = _status_writer(args.status_fd)
    from ..access_log.sinks import DEFAULT_SINKS
    from ..config.load import load_bootstrap, validate
    from ..config.reader import ConfigError

    if args.mode == "validate":
        code, message = validate(args.config, config_yaml=args.config_yaml)
        print(message, file=sys.stderr if code else sys.stdout)
        return code
    if args.file_flush_interval_msec <= 0:
        print("--file-flush-interval-msec must be a positive number of milliseconds", file=sys.stderr)
        return 1
    DEFAULT_SINKS.flush_interval = args.file_flush_interval_msec / 1000
    # Validate before touching any socket or the parent: a bad config must not hurt it.
    try:
        bootstrap = load_bootstrap(args.config, config_yaml=args.config_yaml)
    except ConfigError as e:
        reason = f"error initializing configuration '{args.config}': {e}"
        logging.getLogger("ftproxy").error("%s", reason)
        status({"event": "failed", "epoch": args.restart_epoch, "reason": reason})
        return 1
    from ..hotrestart.messages import ProtocolError
    from .instance import Server, ServerOptions

    opts = ServerOptions(args.config or "", args.concurrency, args.drain_time_s, args.codec, args.log_level,
                         hot_restart_epoch=args.restart_epoch, base_id=args.base_id,
                         hot_restart_socket_path=args.hot_restart_socket_path,
                         parent_shutdown_time_s=args.parent_shutdown_time_s,
                         disable_hot_restart=args.disable_hot_restart,
                         drain_strategy=args.drain_strategy,
                         on_ready=lambda info: status({"event": "ready", **info}))
    server = Server(bootstrap, opts)
    try:
        return server.run()
    except (OSError, ProtocolError) as e:
        reason = f"epoch {args.restart_epoch} could not start: {e}"
        logging.getLogger("ftproxy").error("%s", reason)
        status({"event": "failed", "epoch": args.restart_epoch, "reason": reason})
        return 1


if __name__ == "__main__":
    sys.exit(main())
