"""End to end: the installed `proxyctl` as a subprocess (validate, start, SIGTERM drain,
--concurrency 2), with a bootstrap written to tmp_path on a free port, a real upstream in this
process and `curl` as the client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import EchoUpstream, front_proxy_config, static_cluster
from tests.integration.servers import free_port

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


def _start_help() -> str:
    return subprocess.run([PROXYCTL, "start", "--help"], capture_output=True, text=True, timeout=30).stdout


def _isolation_args() -> list[str]:
    """A base id of our own when proxyctl has one (Envoy's --base-id): two proxies on one host
    with the same base id collide on the hot-restart socket."""
    if "--base-id" in _start_help():
        return ["--base-id", str(10000 + os.getpid() % 50000)]
    return []


class Proxyctl:
    """`proxyctl start` with stderr captured to a file (read while it runs)."""

    def __init__(self, tmp_path: Path, config: Path, port: int, *extra: str) -> None:
        self.port = port
        self.log_path = tmp_path / f"proxyctl-{port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PROXYCTL, "start", "-c", str(config), "--drain-time-s", "10",
                                      *_isolation_args(), *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not self.wait_listening(15):
            self.kill()
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

    def kill(self) -> None:
        if self.proc.poll() is None:
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
        p.kill()


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
    gil = "enabled" if getattr(sys, "_is_gil_enabled", lambda: True)() else "disabled"
    assert f"GIL {gil}" in out  # the proxy runs on this interpreter (the venv's)


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
