"""`proxyctl top` end to end: the real proxy as a subprocess, a real echo upstream, and the
TUI driven in an 80x24 tmux pane (capture-pane to read it, send-keys to quit): what a user on
a default terminal sees, every header whole and the cluster rows on screen.

The proxy runs as `python -m proxy.server.main --disable-hot-restart` (the process `proxyctl
start` runs per epoch): without a hot-restart socket it cannot collide with another proxy on
the machine (another test, a developer's own), and top only needs its admin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import EchoUpstream, front_proxy_config, static_cluster
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PROXYCTL = str(Path(PYTHON).parent / "proxyctl")

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.skipif(not os.path.exists(PROXYCTL), reason="proxyctl is not installed in this venv")]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture
def proxy(tmp_path):
    upstream = EchoUpstream("top-e2e")
    admin_port, listener_port = free_port(), free_port()
    config = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                                [static_cluster("backend", upstream.port)])
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener_port
    cfg = tmp_path / "proxy.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [PYTHON, "-m", "proxy.server.main", "-c", str(cfg), "--concurrency", "2", "--disable-hot-restart",
         "-l", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{admin_port}/ready") == 200 or proc.poll() is not None,
                   10, "the proxy to be ready")
        assert proc.poll() is None, proc.stderr.read().decode()
        yield admin_port, listener_port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        upstream.close()


class Tmux:
    """A private tmux server (its socket in tmp_path) so the test never touches the user's sessions."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self.session = "top"
        self.env = {**os.environ, "TERM": "xterm-256color"}
        self.env.pop("TMUX", None)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", self.socket, *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=10)

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session, check=False).returncode == 0

    def capture(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def kill_server(self) -> None:
        """Stop the server and remove its socket (tmux leaves the file behind)."""
        self.run("kill-server", check=False)
        Path(self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.kill_server()


def test_top_shows_rows_keeps_them_when_admin_goes_away_and_q_exits(proxy, tmux, tmp_path):
    admin_port, listener_port, proxy_proc = proxy
    for path in ("/a", "/b", "/c", "/status/503"):
        http_get(f"http://127.0.0.1:{listener_port}{path}")
    rc_file = tmp_path / "top.rc"
    cmd = f"{PROXYCTL} top --admin 127.0.0.1:{admin_port} --interval 0.2; echo $? > {rc_file}"
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "80", "-y", "24", cmd)

    def rows_with_totals() -> str | None:
        screen = tmux.capture()
        lines = screen.splitlines()
        hcm = [line for line in lines if line.split()[:1] == ["ingress_http"]]
        cluster = [line for line in lines if line.split()[:1] == ["backend"]]
        if hcm and cluster and "state LIVE" in screen:
            return screen
        return None

    screen = wait_until(rows_with_totals, 10, "top to show the listener and cluster rows")
    assert "ftproxy/" in screen and "concurrency 2" in screen and "epoch 0" in screen
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    for headers in (["stat_prefix", "rq total", "rq/s", "5xx/s", "active rq", "active cx"],
                    ["cluster", "healthy", "rq/s", "2xx/s", "5xx/s", "active rq", "p50 ms", "p99 ms"],
                    ["listener / worker", "active cx", "cx total", "accepted/s", "share"]):
        header = next(line for line in lines if line.startswith(headers[0] + " "))
        assert "…" not in header and all(f" {h} " in f" {header} " for h in headers), header
    hcm_cells = next(line for line in lines if line.split()[:1] == ["ingress_http"]).split()
    assert int(hcm_cells[1]) == 4  # rq total
    cluster_cells = next(line for line in lines if line.split()[:1] == ["backend"]).split()
    assert cluster_cells[1] == "1/1"  # healthy hosts
    worker_lines = [line for line in lines if line.split()[:1] in (["worker_0"], ["worker_1"])]
    assert len(worker_lines) == 2

    proxy_proc.terminate()  # the admin goes away: the last data stays, the header says so
    proxy_proc.wait(10)
    def unreachable_shown() -> str | None:
        screen = tmux.capture()
        return screen if "admin unreachable, retrying" in screen else None

    screen = wait_until(unreachable_shown, 5, "top to report the admin unreachable")
    assert any(line.split()[:1] == ["ingress_http"] for line in screen.splitlines())

    tmux.run("send-keys", "-t", tmux.session, "q")
    wait_until(lambda: not tmux.alive(), 5, "top to exit on q")
    assert rc_file.read_text().strip() == "0"
