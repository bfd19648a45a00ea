"""proxyctl's control channel to its supervisor: paths, the JSON-lines client, status output.

Job: agree on where the supervisor's pid file and control socket live (`default_pid_file`,
`control_socket_path`), send one request over the control Unix socket and return the decoded
answer (`request`), tell whether a pid is still alive, and print `proxyctl status`.
Protocol: one JSON object per line each way, one request per connection:
  {"cmd": "reload", "config": "/abs/path" | null}  -> {"ok": true, "epoch": N, "pid": P, ...}
                                                     | {"ok": false, "reason": "..."}
  {"cmd": "status"}                                -> {"ok": true, "supervisor_pid": ..., "epochs": [...]}
  {"cmd": "stop"}                                  -> {"ok": true}   (then the supervisor drains and exits)

Must not: import the proxy, or start processes (cli/supervisor.py owns the epochs).
Thread affinity: none (pure functions and a short-lived socket per call).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

__all__ = ["NotRunning", "default_pid_file", "control_socket_path", "request", "read_pid", "pid_alive",
           "bind_unix", "connect_unix", "render_status", "format_duration"]

# Longest sun_path we use directly (Linux allows 107 bytes plus the NUL); longer paths go
# through /proc/self/fd/<dirfd>/<name>, which the kernel resolves like any path.
_MAX_SUN_PATH = 100


class NotRunning(Exception):
    """No supervisor answers at this pid file (none started, or it exited)."""


def default_pid_file() -> str:
    """`$XDG_RUNTIME_DIR/ftproxy/proxyctl.pid`, else `/tmp/ftproxy-<uid>/proxyctl.pid`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "ftproxy") if runtime else f"/tmp/ftproxy-{os.getuid()}"
    return os.path.join(base, "proxyctl.pid")


def control_socket_path(pid_file: str) -> str:
    return pid_file + ".sock"


def _with_short_path(path: str, op) -> None:
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        op(path)
        return
    dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        op(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)


def bind_unix(sock: socket.socket, path: str) -> None:
    _with_short_path(path, sock.bind)


def connect_unix(sock: socket.socket, path: str) -> None:
    _with_short_path(path, sock.connect)


def read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the first newline (or all until EOF): one control message."""
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def request(pid_file: str, msg: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to the supervisor of `pid_file`; raise NotRunning if none answers."""
    path = control_socket_path(pid_file)
    pid = read_pid(pid_file)
    if not os.path.exists(path):
        raise NotRunning(f"no ftproxy supervisor is running (no control socket {path}; "
                         f"pid file {pid_file} {'names pid ' + str(pid) if pid else 'absent'})")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            connect_unix(s, path)
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise NotRunning(f"no ftproxy supervisor is running (control socket {path}: "
                             f"{e.strerror})") from None
        s.sendall(json.dumps(msg).encode() + b"\n")
        buf = read_line(s)
    except TimeoutError:
        raise NotRunning(f"the supervisor at {path} did not answer within {timeout:.0f}s") from None
    finally:
        s.close()
    if not buf.strip():
        raise NotRunning(f"the supervisor at {path} closed the connection without answering")
    return json.loads(buf.split(b"\n", 1)[0])


def wait_gone(pid: int, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while pid_alive(pid):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def format_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + (f"{m}m" if d or h or m else "") + f"{s}s"


def render_status(info: dict[str, Any], console) -> None:
    """Print a supervisor's status answer as rich tables on `console`, fitted to its width (at
    80 columns the start time is left out and a long config path folds, never cut)."""
    from .top import WIDE, Col, table

    now = time.time()
    wide = console.width >= WIDE
    console.print(f"supervisor pid {info['supervisor_pid']}, up {format_duration(now - info['started'])}, "
                  f"serving epoch {info.get('serving_epoch')}, admin {info.get('admin') or '-'}")
    rows = [[str(e["epoch"]), str(e["pid"]), e["state"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["started"])),
             format_duration(now - e["started"]), e["config"]] for e in info["epochs"]]
    console.print(table("epochs", [Col("epoch"), Col("pid"), Col("state", left=True),
                                   Col("started", wide=True, left=True), Col("uptime"),
                                   Col("config", wrap=True)], rows, wide, console.width))
    rows = [[name, addr] for name, addr in (info.get("listeners") or {}).items()]
    console.print(table("listeners", [Col("listener"), Col("address", left=True)], rows, wide, console.width))
