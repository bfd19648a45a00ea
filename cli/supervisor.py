"""The hot-restart supervisor behind `proxyctl start` (Envoy's restarter/hot-restarter.py).

Job: own the proxy's epoch processes. It spawns epoch 0 (`python -m proxy.server.main
--restart-epoch 0 --status-fd W ...`), waits for its one-line JSON status, writes the pid file,
opens the control socket `<pidfile>.sock` and then serves control requests (cli/control.py
describes them): `reload` spawns epoch N+1 with the same options (and the new config if one is
given), which takes the listen sockets and counters from epoch N and makes it drain; `status`
describes the epochs; `stop` forwards SIGTERM to every epoch (they drain) and exits once all
have. SIGTERM/SIGINT = stop, SIGHUP = reload with the current config, SIGUSR1 = forwarded to
every epoch (they reopen their access logs), and with --daemon the --log-file is reopened
(cli/logfile.py: the epochs' output reaches it through the supervisor). The supervisor exits
when its last epoch exits (with that epoch's exit status, or 0 after a stop), removing the pid
file and the socket.

Must not: import the proxy (epochs are separate processes), or let a failed reload touch the
serving epoch (the child validates its config before it connects to its parent).
Thread affinity: one thread (plus, with --daemon, the log-relay thread of cli/logfile.py, which
only copies the epochs' output). Requests are served one at a time; a reload blocks the loop
while the child starts (at most STATUS_TIMEOUT_S). Signal handlers only record the signal;
the loop acts on it (the wakeup fd interrupts its select()).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .control import bind_unix, connect_unix, control_socket_path, pid_alive, read_line, read_pid
from .logfile import LogRelay, open_log

__all__ = ["EpochOptions", "Epoch", "Supervisor", "StartError", "STATUS_TIMEOUT_S", "run_foreground",
           "run_daemon"]

# A child that has not reported within 30 s is stuck (config load, parent hand-over and
# worker start take well under a second); it is killed and the reload reported as failed.
STATUS_TIMEOUT_S = 30.0
# A control client that sends nothing for 5 s is dropped so it cannot wedge the loop.
CLIENT_TIMEOUT_S = 5.0


class StartError(Exception):
    """Epoch 0 could not start, or another supervisor already owns the pid file."""


@dataclass(frozen=True, slots=True)
class EpochOptions:
    """Options every epoch gets (Envoy's flag names)."""

    concurrency: int | None = None
    base_id: int = 0
    drain_time_s: float = 600.0
    parent_shutdown_time_s: float = 900.0
    log_level: str = "info"
    hot_restart_socket_path: str | None = None
    codec: str = "fast"
    config_yaml: str | None = None
    drain_strategy: str = "gradual"
    file_flush_interval_msec: int = 1000

    def argv(self, config: str, epoch: int, status_fd: int) -> list[str]:
        args = [sys.executable, "-m", "proxy.server.main", "-c", config, "--restart-epoch", str(epoch),
                "--base-id", str(self.base_id), "--drain-time-s", str(self.drain_time_s),
                "--parent-shutdown-time-s", str(self.parent_shutdown_time_s), "-l", self.log_level,
                "--codec", self.codec, "--status-fd", str(status_fd),
                "--drain-strategy", self.drain_strategy,
                "--file-flush-interval-msec", str(self.file_flush_interval_msec)]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        if self.hot_restart_socket_path:
            args += ["--hot-restart-socket-path", self.hot_restart_socket_path]
        if self.config_yaml:
            args += ["--config-yaml", self.config_yaml]
        return args


class Epoch:
    """One epoch process as the supervisor sees it (owned by the supervisor's thread)."""

    def __init__(self, epoch: int, proc: subprocess.Popen, config: str, ready: dict) -> None:
        self.epoch = epoch
        self.proc = proc
        self.config = config
        self.started = time.time()
        self.state = "serving"
        self.listeners: dict[str, str] = dict(ready.get("listeners") or {})
        self.admin: str | None = ready.get("admin")

    def describe(self) -> dict:
        return {"epoch": self.epoch, "pid": self.proc.pid, "state": self.state, "started": self.started,
                "config": self.config, "listeners": self.listeners, "admin": self.admin}


def _die_with_parent() -> None:
    """In the epoch before exec: SIGTERM (drain) when the supervisor dies, even by SIGKILL, so
    no orphan epoch keeps the ports and the hot-restart socket (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}][{os.getpid()}][supervisor][info] {msg}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, config: str, options: EpochOptions, pid_file: str, log_relay: LogRelay | None = None) -> None:
        self.config = os.path.abspath(config)
        self.log_relay = log_relay  # daemon: the epochs' output goes through it to the log file
        self.options = options
        self.pid_file = os.path.abspath(pid_file)
        self.socket_path = control_socket_path(self.pid_file)
        self.epochs: list[Epoch] = []
        self.started = time.time()
        self.exit_code = 0
        self.stopping = False
        self._signals: list[int] = []
        self._listener: socket.socket | None = None
        self._wakeup_r = self._wakeup_w = -1

    # -- start ------------------------------------------------------------------------------------
    def start(self) -> Epoch:
        """Spawn epoch 0 and, once it serves, publish the pid file and control socket."""
        self._check_not_running()
        self._install_signals()
        epoch, reason = self._spawn(0, self.config)
        if epoch is None:
            raise StartError(reason)
        self.epochs.append(epoch)
        os.makedirs(os.path.dirname(self.pid_file), exist_ok=True)
        tmp = f"{self.pid_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_unix(self._listener, self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self._listener.listen(16)
        self._listener.setblocking(False)
        return epoch

    def _check_not_running(self) -> None:
        pid = read_pid(self.pid_file)
        if pid and pid != os.getpid() and pid_alive(pid) and self._control_answers():
            raise StartError(f"an ftproxy supervisor is already running (pid {pid}, pid file "
                             f"{self.pid_file}); use `proxyctl reload` or `proxyctl stop`")

    def _control_answers(self) -> bool:
        """A live supervisor accepts on the control socket (a killed one leaves a dead file)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connect_unix(s, self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def _install_signals(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self._signals.append(signum)

    # -- epochs -----------------------------------------------------------------------------------
    def _spawn(self, n: int, config: str) -> tuple[Epoch | None, str]:
        """Start epoch `n` and wait for its status line; (Epoch, "") or (None, reason)."""
        r, w = os.pipe()
        try:
            out = self.log_relay.write_fd if self.log_relay is not None else None
            proc = subprocess.Popen(self.options.argv(config, n, w), pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, preexec_fn=_die_with_parent)
        except OSError as e:
            os.close(r)
            os.close(w)
            return None, f"cannot start epoch {n}: {e}"
        os.close(w)
        _log(f"started epoch {n} (pid {proc.pid}) with {config}")
        try:
            line = self._read_status(r, STATUS_TIMEOUT_S)
        finally:
            os.close(r)
        status = None
        if line is not None:
            try:
                status = json.loads(line)
            except ValueError:
                status = None
        if status is not None and status.get("event") == "ready":
            return Epoch(n, proc, config, status), ""
        if line is None and proc.poll() is None:
            proc.kill()
            proc.wait()
            return None, f"epoch {n} did not report within {STATUS_TIMEOUT_S:.0f}s; killed it"
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if status is not None and status.get("reason"):
            return None, str(status["reason"])
        return None, f"epoch {n} exited with status {code} before it served (see its log)"

    @staticmethod
    def _read_status(fd: int, timeout: float) -> bytes | None:
        """The first line written to `fd`; b"" at EOF without one; None on timeout."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return bytes(buf)
                buf += chunk
        return bytes(buf.split(b"\n", 1)[0])

    def serving(self) -> Epoch | None:
        for e in reversed(self.epochs):
            if e.state == "serving":
                return e
        return None

    def reload(self, config: str | None = None) -> dict:
        """Start the next epoch; on success the previous one drains. Never touches the
        serving epoch on failure (the child fails before, or the parent takes its admin back)."""
        if self.stopping:
            return {"ok": False, "reason": "the supervisor is stopping"}
        config = os.path.abspath(config) if config else self.config
        n = max(e.epoch for e in self.epochs) + 1 if self.epochs else 0
        epoch, reason = self._spawn(n, config)
        if epoch is None:
            _log(f"reload to epoch {n} failed: {reason}")
            return {"ok": False, "epoch": n, "reason": reason}
        for e in self.epochs:
            e.state = "draining"
        self.epochs.append(epoch)
        self.config = config
        _log(f"epoch {n} (pid {epoch.proc.pid}) serving; older epochs drain")
        return {"ok": True, **epoch.describe()}

    def status(self) -> dict:
        s = self.serving()
        return {"ok": True, "supervisor_pid": os.getpid(), "started": self.started, "pid_file": self.pid_file,
                "config": self.config, "serving_epoch": s.epoch if s else None,
                "listeners": s.listeners if s else {}, "admin": s.admin if s else None,
                "uptime": time.time() - self.started, "epochs": [e.describe() for e in self.epochs]}

    def stop(self) -> None:
        if not self.stopping:
            _log("stopping: SIGTERM to every epoch (they drain)")
        self.stopping = True
        for e in self.epochs:
            if e.proc.poll() is None:
                try:
                    e.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _reap(self) -> None:
        for e in list(self.epochs):
            code = e.proc.poll()
            if code is not None:
                self.epochs.remove(e)
                self.exit_code = code if code >= 0 else 128 - code
                _log(f"epoch {e.epoch} (pid {e.proc.pid}) exited with status {code}")

    # -- loop -------------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "control")
        sel.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        try:
            while True:
                self._handle_signals()
                self._reap()
                if not self.epochs:
                    break
                for key, _ in sel.select(1.0):
                    if key.data == "wakeup":
                        try:
                            while os.read(self._wakeup_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        self._accept()
        finally:
            sel.close()
            self.close()
        return 0 if self.stopping else self.exit_code

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stop()
            elif sig == signal.SIGHUP:
                _log("SIGHUP: reloading")
                self.reload()
            elif sig == signal.SIGUSR1:
                if self.log_relay is not None:
                    self.reopen_log()
                self.forward(signal.SIGUSR1)

    def reopen_log(self) -> None:
        """SIGUSR1 with --log-file: the supervisor and every epoch write to a new file at its path."""
        try:
            self.log_relay.reopen()
        except OSError as e:
            _log(f"cannot reopen the log file {self.log_relay.path}: {e}; still writing to the old one")
            return
        _log(f"reopened the log file {self.log_relay.path}")

    def forward(self, sig: int) -> None:
        """Pass `sig` to every live epoch (SIGUSR1: reopen access logs, as Envoy's
        hot-restarter forwards it to all its children)."""
        for e in self.epochs:
            if e.proc.poll() is None:
                try:
                    e.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(CLIENT_TIMEOUT_S)
            try:
                buf = read_line(conn)
                if b"\n" not in buf:
                    return  # the client went away before a whole request
                req = json.loads(buf.split(b"\n", 1)[0])
                reply = self._dispatch(req if isinstance(req, dict) else {})
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError) as e:
                _log(f"control request dropped: {e}")

    def _dispatch(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "reload":
            cfg = req.get("config")
            return self.reload(cfg if isinstance(cfg, str) and cfg else None)
        if cmd == "stop":
            self.stop()
            return {"ok": True, "supervisor_pid": os.getpid()}
        return {"ok": False, "reason": f"unknown command {cmd!r}"}

    def close(self) -> None:
        """Remove the pid file and control socket (only if they are still ours)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            if read_pid(self.pid_file) == os.getpid():
                try:
                    os.unlink(self.pid_file)
                except FileNotFoundError:
                    pass
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1


# -- entry points for `proxyctl start` ----------------------------------------------------------
def _started_lines(sup: Supervisor, epoch: Epoch) -> list[str]:
    lines = [f"ftproxy started: epoch {epoch.epoch} (pid {epoch.proc.pid}), supervisor pid {os.getpid()}, "
             f"pid file {sup.pid_file}"]
    lines += [f"listener {name} on {addr}" for name, addr in epoch.listeners.items()]
    lines.append(f"admin on {epoch.admin or '-'}")
    return lines


def run_foreground(config: str, options: EpochOptions, pid_file: str) -> int:
    sup = Supervisor(config, options, pid_file)
    try:
        epoch = sup.start()
    except StartError as e:
        sup.close()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(_started_lines(sup, epoch)), flush=True)
    return sup.serve_forever()


def run_daemon(config: str, options: EpochOptions, pid_file: str, log_file: str) -> int:
    """Double-fork; the grandchild supervises. Returns (in the caller) once epoch 0 serves:
    0 after printing where it listens, 1 with the reason if it failed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        data = bytearray()
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        try:
            result = json.loads(data)
        except ValueError:
            print(f"error: the daemon exited before epoch 0 served (see {log_file})", file=sys.stderr)
            return 1
        if not result.get("ok"):
            print(f"error: {result.get('reason')}", file=sys.stderr)
            return 1
        print("\n".join(result["lines"] + [f"logs in {log_file}"]), flush=True)
        return 0
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    code = 1
    try:
        os.chdir("/")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        out = open_log(log_file)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        relay = LogRelay(log_file)
        sup = Supervisor(config, options, pid_file, relay)
        try:
            epoch = sup.start()
        except StartError as e:
            sup.close()
            relay.close()
            _log(f"start failed: {e}")
            os.write(w, json.dumps({"ok": False, "reason": str(e)}).encode())
            os.close(w)
            os._exit(1)
        os.write(w, json.dumps({"ok": True, "lines": _started_lines(sup, epoch)}).encode())
        os.close(w)
        w = -1
        code = sup.serve_forever()
        relay.close()
    except BaseException as e:  # the daemon has no caller to raise to: log and exit
        _log(f"supervisor crashed: {e!r}")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
