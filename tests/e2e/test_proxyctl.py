"""End to end: the installed `proxyctl` as a subprocess (validate, start, SIGTERM drain,
--concurrency 2), with a bootstrap written to tmp_path on a free port, a real upstream in this
process and `curl` as the client. Every proxy here has its own pid file and base id, and runs
beside a proxy the user started with the defaults without touching it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_supervisor import children, direct_config, unique_base_id, wait_for
from tests.integration.harness import EchoUpstream, front_proxy_config, static_cluster
from tests.ports import free_port

PROXYCTL = str(Path(sys.executable).parent / "proxyctl")

pytestmark = pytest.mark.skipif(not os.path.exists(PROXYCTL), reason="proxyctl is not installed in this venv")


@pytest.fixture
def upstream():
    u = EchoUpstream("e2e")
    yield u
    u.close()


def write_config(tmp_path: Path, upstream_port: int) -> tuple[Path, int]:
    port = free_port()
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "10s"}}],
                             [static_cluster("backend", upstream_port)])
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, port


class Proxyctl:
    """`proxyctl start` in the foreground with its output in a file (read while it runs).

    It never uses the user's defaults: its pid file (and so its control socket) is in
    tmp_path and its base id (the hot-restart socket's name) is its own, so a proxy the user
    started the README's way keeps running untouched, and the test does not fail because of
    it. `stop()` ends it the way a user would (SIGTERM: drain, exit 0), which removes the pid
    file and the socket; tests/e2e/conftest.py checks nothing is left behind.
    """

    def __init__(self, tmp_path: Path, config: Path, port: int, *extra: str) -> None:
        self.port = port
        self.pid_file = tmp_path / f"proxyctl-{port}.pid"
        self.log_path = tmp_path / f"proxyctl-{port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PROXYCTL, "start", "-c", str(config), "--drain-time-s", "10",
                                      "--pid-file", str(self.pid_file), "--base-id", str(unique_base_id()),
                                      *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not self.wait_listening(15):
            self.stop()
            raise AssertionError("proxyctl did not start listening:\n" + self.output())

    def wait_listening(self, timeout: float) -> bool:
        """Started = the start-up log names the listener (logged once start-up is complete)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if f"on 127.0.0.1:{self.port}" in self.output():
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            time.sleep(0.02)
        return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (drain, exit 0); SIGKILL to the supervisor and its epochs only if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for pid in children(self.proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def started():
    procs: list[Proxyctl] = []

    def start(*args) -> Proxyctl:
        p = Proxyctl(*args)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def curl(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-m", str(timeout), "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=timeout + 5)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_validate_exits_0_on_good_config(tmp_path, upstream):
    path, _ = write_config(tmp_path, upstream.port)
    r = subprocess.run([PROXYCTL, "validate", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout + r.stderr


def test_validate_exits_1_naming_path_of_misspelled_field(tmp_path, upstream):
    path, _ = write_config(tmp_path, upstream.port)
    cfg = yaml.safe_load(path.read_text())
    cluster = cfg["static_resources"]["clusters"][0]
    cluster["conect_timeout"] = cluster.pop("connect_timeout")
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([PROXYCTL, "validate", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    msg = r.stdout + r.stderr
    assert str(path) in msg
    assert "static_resources.clusters[0]" in msg and '"conect_timeout"' in msg
    assert 'did you mean "connect_timeout"' in msg


def test_start_serves_requests_and_logs_python_and_gil(tmp_path, upstream, started):
    path, port = write_config(tmp_path, upstream.port)
    p = started(tmp_path, path, port, "--concurrency", "1")
    code, body = curl(port, "/hello")
    assert code == 200
    assert json.loads(body)["path"] == "/hello"
    out = p.output()
    py = ".".join(map(str, sys.version_info[:3]))
    assert f"python {py}" in out
    # The proxy runs on this interpreter (the venv's), in its own process: free-threaded builds
    # keep the GIL off there unless PYTHON_GIL=1 (this test process's own state may differ: a
    # test library it imported, protobuf's upb backend for one, can have turned it on here).
    free = bool(sysconfig.get_config_var("Py_GIL_DISABLED")) and os.environ.get("PYTHON_GIL") != "1"
    assert f"GIL {'disabled' if free else 'enabled'}" in out


def test_sigterm_lets_in_flight_request_finish_then_exits_0(tmp_path, upstream, started):
    path, port = write_config(tmp_path, upstream.port)
    p = started(tmp_path, path, port, "--concurrency", "1")
    result: dict = {}

    def slow() -> None:
        result["r"] = curl(port, "/delay/1.5")

    t = threading.Thread(target=slow)
    t.start()
    # Wait until the request is at the upstream (in flight), then signal.
    deadline = time.monotonic() + 10
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.requests, "the slow request never reached the upstream"
    p.proc.send_signal(signal.SIGTERM)
    t.join(15)
    assert result["r"][0] == 200
    assert p.proc.wait(15) == 0


def test_start_with_concurrency_2_serves_requests(tmp_path, upstream, started):
    path, port = write_config(tmp_path, upstream.port)
    p = started(tmp_path, path, port, "--concurrency", "2")
    for i in range(6):
        code, body = curl(port, f"/c2/{i}")
        assert code == 200 and json.loads(body)["path"] == f"/c2/{i}"
    assert "concurrency 2" in p.output()


def test_runs_beside_the_users_own_proxy_and_leaves_it_alone(tmp_path, upstream, started):
    """The user's proxy, started the README's way (`proxyctl start -c FILE`: the default pid
    file), keeps serving while a test proxy starts, serves and stops next to it; the user's
    pid file still names the user's supervisor, and `proxyctl status` and `stop` without
    --pid-file still reach it. (The user's hot-restart socket is moved into tmp_path only so
    that this test cannot collide with a real proxy of base id 0 on this machine.)"""
    user_runtime = tmp_path / "user-runtime"  # the user's $XDG_RUNTIME_DIR
    user_runtime.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(user_runtime)}
    user_pid_file = user_runtime / "ftproxy" / "proxyctl.pid"
    user_port = free_port()
    user_cfg = direct_config(tmp_path / "user.yaml", user_port, "user's")
    with open(tmp_path / "user.log", "wb") as log:
        user = subprocess.Popen([PROXYCTL, "start", "-c", str(user_cfg), "--drain-time-s", "1", "--concurrency", "1",
                                 "--hot-restart-socket-path", str(tmp_path / "user-hr")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(user_pid_file.exists, 20), (tmp_path / "user.log").read_text()
        assert curl(user_port, "/") == (200, "user's")
        path, port = write_config(tmp_path, upstream.port)
        p = started(tmp_path, path, port, "--concurrency", "1")
        assert curl(port, "/mine")[0] == 200
        p.stop()
        assert p.proc.returncode == 0, p.output()
        assert not p.pid_file.exists() and not Path(f"{p.pid_file}.sock").exists()
        assert user.poll() is None and curl(user_port, "/") == (200, "user's")
        assert int(user_pid_file.read_text()) == user.pid
        status = subprocess.run([PROXYCTL, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and json.loads(status.stdout)["supervisor_pid"] == user.pid
        stop = subprocess.run([PROXYCTL, "stop"], env=env, capture_output=True, text=True, timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert user.wait(10) == 0
        assert not user_pid_file.exists()
    finally:
        if user.poll() is None:
            user.kill()
            user.wait(5)
