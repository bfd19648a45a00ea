"""Admin `/stats/recentlookups` (+ `/enable`, `/disable`, `/clear`) through the running proxy, and
the same requests to real Envoy 1.40's admin: the same statuses and texts (the names and
numbers, which count different things, masked)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import yaml

from tests.differential.proxies import PortReservation, envoy_binary

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

SEQUENCE = [
    ("GET", "/stats/recentlookups"), ("GET", "/stats/recentlookups/enable"),
    ("POST", "/stats/recentlookups/enable"), ("GET", "/stats/recentlookups"),
    ("POST", "/stats/recentlookups/clear"), ("POST", "/stats/recentlookups"),
    ("GET", "/stats/recentlookups/disable"), ("POST", "/stats/recentlookups/disable"),
    ("GET", "/stats/recentlookups"), ("GET", "/stats/recentlookups/clear"),
]


def _admin(port: int, method: str, path: str) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("content-type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read().decode()


def _masked(answer: tuple[int, str, str]) -> tuple[int, str, str]:
    status, ctype, body = answer
    body = re.sub(r"(?m)^ +\d+ \S+\n", "", body)
    return status, ctype, re.sub(r"total: \d+", "total: N", body)


def test_recent_lookups_count_new_stat_names_while_enabled():
    upstream = EchoUpstream()
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
                                          [static_cluster("svc", upstream.port)]))
    try:
        status, body = p.admin("/stats/recentlookups")
        assert status == 200 and body.startswith("Lookup tracking is not enabled.")
        assert int(body.rsplit("total: ", 1)[1]) > 0      # counted while off
        assert p.admin("/stats/recentlookups/enable", "POST") == (200, "OK\n")
        for _ in range(2):
            with urllib.request.urlopen(p.url("/x"), timeout=5) as r:
                r.read()
        body = p.admin("/stats/recentlookups")[1]
        # The first response's code made its stats; the second found them made.
        assert "       1 cluster.svc.upstream_rq_200\n" in body
        assert body.startswith("   Count Lookup\n")
        assert p.admin("/stats/recentlookups/clear", "POST") == (200, "OK\n")
        assert p.admin("/stats/recentlookups")[1] == "   Count Lookup\n\ntotal: 0\n"
        assert p.admin("/stats/recentlookups/disable", "POST") == (200, "OK\n")
        assert p.admin("/stats/recentlookups")[1].startswith("Lookup tracking is not enabled.")
    finally:
        p.stop()
        upstream.close()


def test_recent_lookups_answer_as_envoy(tmp_path):
    ports = PortReservation()
    admin_port = ports.take()
    ports.release()
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
              "static_resources": {}}
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "envoy.log", "wb") as log:
        envoy = subprocess.Popen([envoy_binary(), "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
                                  "-l", "error"], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    p = ProxyUnderTest(config)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _admin(admin_port, "GET", "/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and envoy.poll() is None, (tmp_path / "envoy.log").read_text()
            time.sleep(0.05)
        for method, path in SEQUENCE:
            want = _masked(_admin(admin_port, method, path))
            got = _masked(_admin(p.admin_port, method, path))
            assert got == want, (method, path)
    finally:
        p.stop()
        if envoy.poll() is None:
            os.killpg(envoy.pid, signal.SIGTERM)
            envoy.wait(10)
