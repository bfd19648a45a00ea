"""Admin `/runtime`, `/runtime_modify`, `/memory`, `/init_dump` and `/contention` against real
Envoy 1.40, one bootstrap (three runtime layers: two static, one admin) through both.

Compared: `/runtime`'s JSON whole (layers in order, each key's per-layer values and final
value); `/init_dump` ({} once started); `/memory`'s keys, each a decimal string;
`/runtime_modify` without parameters (400 and Envoy's usage text); the status of
`/contention`. Declared differences (README): `/runtime_modify` with parameters is refused
(503) because ftproxy reads runtime keys at start-up; `/memory`'s values are the process's own
(/proc), the tcmalloc-only ones 0; `/contention`'s text."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .proxies import PortReservation, envoy_binary

RUNTIME = {"layers": [
    {"name": "static_layer_0", "static_layer": {
        "overload": {"global_downstream_max_connections": 50000},
        "envoy.resource_limits.listener.l1.connection_limit": 7}},
    {"name": "second", "static_layer": {"overload.global_downstream_max_connections": 100}},
    {"name": "admin_layer_x", "admin_layer": {}},
]}


class _Proc:
    def __init__(self, kind: str, tmp_path) -> None:
        ports = PortReservation()
        self.admin_port = ports.take()
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "layered_runtime": RUNTIME, "static_resources": {}}))
        common = ["-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
        cmd = ([envoy_binary(), *common] if kind == "envoy"
               else [sys.executable, "-m", "proxy.server.main", *common])
        ports.release()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while self.get("/ready")[0] != 200:
            assert time.monotonic() < deadline and self.proc.poll() is None, f"{kind} did not start"
            time.sleep(0.05)

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    procs = {k: _Proc(k, tmp_path_factory.mktemp(k)) for k in ("envoy", "ftproxy")}
    yield procs
    for p in procs.values():
        p.close()


def test_runtime_layers_and_entries_agree(both):
    got = {k: p.get("/runtime") for k, p in both.items()}
    assert got["envoy"][0] == got["ftproxy"][0] == 200
    envoy, ours = (json.loads(got[k][1]) for k in ("envoy", "ftproxy"))
    assert ours == envoy
    assert ours["entries"]["overload.global_downstream_max_connections"] == {
        "layer_values": ["50000", "100", ""], "final_value": "100"}


def test_runtime_modify_usage_agrees_and_overrides_are_refused(both):
    for p in both.values():
        assert p.get("/runtime_modify", "GET")[0] == 405
    envoy, ours = (both[k].get("/runtime_modify", "POST") for k in ("envoy", "ftproxy"))
    assert ours == envoy and ours[0] == 400
    status, body = both["ftproxy"].get("/runtime_modify?foo=bar", "POST")
    assert status == 503 and "start-up" in body
    assert "foo" not in json.loads(both["ftproxy"].get("/runtime")[1])["entries"]


def test_memory_init_dump_and_contention_agree_in_shape(both):
    envoy, ours = (json.loads(both[k].get("/memory")[1]) for k in ("envoy", "ftproxy"))
    assert set(ours) == set(envoy)
    assert all(isinstance(v, str) and v.isdigit() for v in ours.values()), ours
    assert int(ours["total_physical_bytes"]) > 10 * 1024 * 1024   # a Python process's RSS
    assert 0 < int(ours["allocated"]) <= int(ours["total_physical_bytes"])
    assert [json.loads(both[k].get("/init_dump")[1]) for k in ("envoy", "ftproxy")] == [{}, {}]
    assert both["envoy"].get("/contention")[0] == both["ftproxy"].get("/contention")[0] == 200
