"""End to end: hot restart through `proxyctl reload` under real load (wrk), with real processes.

What it proves (DESIGN.md §5): a keep-alive load on busy connections (20, to an upstream that
takes ~2 ms) running through five reloads sees zero socket errors and zero non-2xx answers, and each reload's new route is in force right after it; a
long streaming response started before a reload completes intact; counters carry over; a bad
config leaves the old epoch serving; ten reloads leave exactly one epoch and no fd growth.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.integration.clients import read_request_head
from tests.integration.harness import EchoUpstream
from tests.integration.servers import AcceptLoop
from tests.e2e.test_supervisor import (PROXYCTL, Supervised, admin_counters, children, curl, direct_config,
                                       free_port, open_fds, supervised, wait_for)

__all__ = ["supervised"]  # the fixture, imported for pytest

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(PROXYCTL), reason="proxyctl is not installed")


def two_configs(tmp_path, port):
    return direct_config(tmp_path / "a.yaml", port, "A"), direct_config(tmp_path / "b.yaml", port, "B")


def cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def upstream_config(path, port: int, name: str, upstream_port: int, timeout: str = "10s"):
    """Every request goes to cluster `name` (one upstream at `upstream_port`)."""
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": name, "timeout": timeout}}]
    return direct_config(path, port, routes=routes, clusters=[cluster(name, upstream_port)])


@pytest.fixture
def echo_ab():
    ups = EchoUpstream("a"), EchoUpstream("b")
    yield ups
    for u in ups:
        u.close()


def versioned_config(path, port: int, version: str, upstream_port: int):
    """`/version` answers `version` (direct_response); everything else goes to the upstream."""
    routes = [{"match": {"path": "/version"},
               "direct_response": {"status": 200, "body": {"inline_string": version}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "10s"}}]
    return direct_config(path, port, routes=routes, clusters=[cluster("app", upstream_port)])


def test_wrk_load_through_five_reloads_sees_no_errors_and_new_routes(tmp_path, supervised):
    # Busy keep-alive connections against an upstream that takes ~2 ms (stdlib
    # ThreadingHTTPServer, which writes a response's head and body separately): at any moment
    # most of the 20 connections have a request in flight, many with the response head already
    # sent, so each reload drains streams in every phase. A load on an instant upstream (or a
    # direct_response) is idle between requests at almost every instant and proves nothing.
    up = EchoUpstream("app")
    port = free_port()
    a = versioned_config(tmp_path / "a.yaml", port, "A", up.port)
    b = versioned_config(tmp_path / "b.yaml", port, "B", up.port)
    sup: Supervised = supervised(tmp_path, a, port)
    # wrk runs until every reload is behind it (SIGINT: it stops and prints its summary),
    # however long the reloads take on a loaded machine.
    wrk = subprocess.Popen(["wrk", "-t1", "-c20", "-d120s", "--timeout", "10s", f"http://127.0.0.1:{port}/delay/0.002"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        for i in range(5):
            cfg, name = (b, "B") if i % 2 == 0 else (a, "A")
            r = sup.reload(cfg)
            assert r.returncode == 0, r.stderr
            assert re.fullmatch(rf"reloaded: epoch {i + 1} \(pid \d+\)\n", r.stdout)
            code, body = curl(port, "/version")
            assert code == 200 and body.strip() == name, f"reload {i + 1}: route not in force"
            time.sleep(1.0)
        assert wrk.poll() is None, "wrk ended before the last reload"
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=40)
    finally:
        if wrk.poll() is None:
            wrk.kill()
        up.close()
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 1000, out
    assert "Socket errors" not in out, out
    assert "Non-2xx or 3xx responses" not in out, out


class GatedUpstream(AcceptLoop):
    """Answers every request with `size` bytes (a known pattern) in 256 KiB steps, one every
    `pause` seconds, but holds back the last `held` bytes until `release` is set: however long
    a reload takes on a loaded machine, the response is still streaming when it completes."""

    def __init__(self, size: int, pause: float, held: int) -> None:
        self.size, self.pause, self.held = size, pause, held
        self.payload = (bytes(range(256)) * (size // 256 + 1))[:size]
        self.release = threading.Event()
        super().__init__("gated-upstream")

    def handle(self, conn: socket.socket, n: int) -> None:
        with conn:
            if b"\r\n\r\n" not in read_request_head(conn):
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.size)
            step = 256 * 1024
            for off in range(0, self.size, step):
                if off >= self.size - self.held and not self.release.is_set():
                    if not self.release.wait(60):
                        return  # the test gave up: end the response short
                conn.sendall(self.payload[off:off + step])
                if not self.release.is_set():
                    time.sleep(self.pause)


def test_streaming_response_started_before_reload_completes_intact(tmp_path, supervised):
    size = 20 * 1024 * 1024
    # Bytes flow through the old epoch while the reload (a new process importing everything,
    # ~1 s on 3.14t, several under a loaded CI) runs, ~5 MB/s; the last 4 MiB wait until the
    # reload has returned, so the response is always still streaming when it completes.
    up = GatedUpstream(size, 0.05, 4 * 1024 * 1024)
    port = free_port()
    cfg = upstream_config(tmp_path / "s.yaml", port, "slow", up.port, timeout="30s")
    sup = supervised(tmp_path, cfg, port)
    got = {"n": 0, "head": b"", "digest": None}

    def download() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        got["head"] = head
        h = hashlib.sha256(body)
        got["n"] = len(body)
        while got["n"] < size:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got["n"] += len(chunk)
        got["digest"] = h.hexdigest()
        s.close()

    t = threading.Thread(target=download)
    t.start()
    try:
        assert wait_for(lambda: got["n"] > 2 * 1024 * 1024, 30), "the download never started"
        r = sup.reload()
        assert r.returncode == 0, r.stderr
        assert got["n"] < size, "the response finished before the reload; the test proves nothing"
        up.release.set()
        t.join(30)
    finally:
        up.release.set()
        up.close()
    assert got["head"].startswith(b"HTTP/1.1 200")
    assert got["n"] == size
    assert got["digest"] == hashlib.sha256(up.payload).hexdigest()


def test_counters_survive_a_reload(tmp_path, supervised):
    port = free_port()
    a, b = two_configs(tmp_path, port)
    sup = supervised(tmp_path, a, port)
    for _ in range(7):
        assert curl(port)[0] == 200
    name = "http.ingress_http.downstream_rq_total"
    old_admin = sup.status()["admin"]
    assert wait_for(lambda: admin_counters(old_admin).get(name, 0) >= 7)
    before = admin_counters(old_admin)[name]
    assert sup.reload(b).returncode == 0
    new_admin = sup.status()["admin"]
    assert admin_counters(new_admin)[name] >= before
    # Still so once the old epoch has gone (its final counters were handed over).
    assert wait_for(lambda: len(children(sup.proc.pid)) == 1)
    assert curl(port) == (200, "B")
    # Exactly one more: the parent's counters were carried over once, not added again at its exit.
    assert wait_for(lambda: admin_counters(new_admin)[name] == before + 1), admin_counters(new_admin)[name]


def test_bad_config_reload_exits_1_naming_the_field_and_old_epoch_keeps_serving(tmp_path, supervised):
    port = free_port()
    a, _ = two_configs(tmp_path, port)
    bad = direct_config(tmp_path / "bad.yaml", port, "X")
    bad.write_text(bad.read_text().replace("inline_string", "inline_strng"))
    sup = supervised(tmp_path, a, port)
    before = sup.status()
    r = sup.reload(bad)
    assert r.returncode == 1
    assert "reload failed" in r.stderr and '"inline_strng"' in r.stderr and "direct_response.body" in r.stderr
    assert 'did you mean "inline_string"' in r.stderr
    assert curl(port) == (200, "A")
    after = sup.status()
    assert [(e["epoch"], e["pid"], e["state"]) for e in after["epochs"]] == \
           [(0, before["epochs"][0]["pid"], "serving")]
    assert after["admin"] == before["admin"]
    # The next good reload is still epoch 1 (the failed child never took over).
    r = sup.reload()
    assert r.returncode == 0 and "epoch 1 " in r.stdout


def test_ten_reloads_leave_one_epoch_and_no_fd_growth(tmp_path, supervised):
    port = free_port()
    a, b = two_configs(tmp_path, port)
    sup = supervised(tmp_path, a, port)
    sup_pid = sup.proc.pid
    fds = {}
    for i in range(1, 11):
        r = sup.reload(b if i % 2 else a)
        assert r.returncode == 0, r.stderr
        assert curl(port) == (200, "B" if i % 2 else "A")
        if i in (2, 10):
            assert wait_for(lambda: len(children(sup_pid)) == 1, 15), children(sup_pid)
            serving = sup.status()["epochs"]
            assert len(serving) == 1 and serving[0]["epoch"] == i
            assert children(sup_pid) == [serving[0]["pid"]]
            fds[i] = (open_fds(serving[0]["pid"]), open_fds(sup_pid))
    (epoch2, sup2), (epoch10, sup10) = fds[2], fds[10]
    assert epoch10 <= epoch2 + 2, fds
    assert sup10 <= sup2 + 1, fds
