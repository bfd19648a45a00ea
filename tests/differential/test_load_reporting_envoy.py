"""Load reporting against real Envoy: one LRS server (tests/integration/lrs_server.py, grpclib)
asks real Envoy 1.40 and ftproxy for the same cluster's load every 0.5 s; both get the same
requests to the same real upstreams (two hosts in two localities, round robin; 4 answered 200
and 2 answered 503), and must report the same numbers per locality over the intervals, the
same stats of the stream and of its cluster.

Each proxy is its own node (`envoy`, `ftproxy`): the server's record is split by node id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.harness import EchoUpstream
from tests.integration.lrs_server import LrsServer

from .proxies import PortReservation, envoy_binary

T = "type.googleapis.com/"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
STATS = ["load_reporter.requests", "load_reporter.errors", "load_reporter.retries",
         "cluster.lrs.upstream_rq_total", "cluster.lrs.upstream_cx_total",
         "cluster.lrs.upstream_rq_200", "cluster.svc.upstream_rq_total"]


def _ep(port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Proxy:
    def __init__(self, kind: str, workdir: Path, ports: PortReservation, lrs: int, one: int,
                 two: int) -> None:
        self.kind = kind
        self.dir = workdir / kind
        self.dir.mkdir()
        self.port, self.admin_port = ports.take(), ports.take()
        hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "stat_prefix": "ingress_http",
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
                   {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}
        boot = {
            "node": {"id": kind, "cluster": "test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "cluster_manager": {"load_stats_config": {
                "api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]}},
            "static_resources": {
                "listeners": [{"name": "l", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": self.port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}]}]}],
                "clusters": [
                    {"name": "svc", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
                     "load_assignment": {"cluster_name": "svc", "endpoints": [
                         {"locality": {"region": "r", "zone": "z1"}, "lb_endpoints": [_ep(one)]},
                         {"locality": {"region": "r", "zone": "z2"}, "lb_endpoints": [_ep(two)]}]}},
                    {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
                     "load_assignment": {"cluster_name": "empty", "endpoints": []}},
                    {"name": "lrs", "type": "STATIC", "connect_timeout": "1s",
                     "typed_extension_protocol_options": H2,
                     "load_assignment": {"cluster_name": "lrs", "endpoints": [{"lb_endpoints": [_ep(lrs)]}]}}]}}
        (self.dir / "bootstrap.json").write_text(json.dumps(boot))
        common = ["-c", str(self.dir / "bootstrap.json"), "--concurrency", "1", "--disable-hot-restart",
                  "-l", "error", "--drain-time-s", "0"]
        self.cmd = ([envoy_binary(), *common] if kind == "envoy"
                    else [sys.executable, "-m", "proxy.server.main", *common])
        self.proc = None

    def start(self) -> None:
        self.stderr = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "stderr.log").read_text()[-2000:]
            try:
                if _get(f"http://127.0.0.1:{self.admin_port}/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            self.stderr.close()

    def stats(self) -> dict[str, str]:
        _, text = _get(f"http://127.0.0.1:{self.admin_port}/stats")
        out = {}
        for line in text.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return {k: out.get(k, "0") for k in STATS}


def _reports(lrs: LrsServer, node: str, cluster: str = "svc") -> list[dict]:
    return [cs for r in lrs.recorded() if r["node"] == node for cs in r["cluster_stats"]
            if cs.get("cluster_name") == cluster]


def _totals(reports: list[dict]) -> dict:
    out: dict = {}
    for r in reports:
        for ls in r.get("upstream_locality_stats", []):
            key = (ls["locality"].get("region", ""), ls["locality"].get("zone", ""), ls.get("priority", 0))
            t = out.setdefault(key, dict.fromkeys(("issued", "success", "error"), 0))
            t["issued"] += int(ls.get("total_issued_requests", 0))
            t["success"] += int(ls.get("total_successful_requests", 0))
            t["error"] += int(ls.get("total_error_requests", 0))
    return out


def _world(tmp_path):
    lrs = LrsServer()
    one, two = EchoUpstream("one"), EchoUpstream("two")
    ports = PortReservation()
    proxies = [Proxy(kind, tmp_path, ports, lrs.port, one.port, two.port) for kind in ("envoy", "ftproxy")]
    ports.release()
    return lrs, (one, two), proxies


def test_drops_send_all_clusters_and_a_lost_stream_match_envoy(tmp_path):
    """send_all_clusters: every cluster is reported (the LRS one too); 503 "no healthy
    upstream" answers are not total_dropped_requests (Envoy: only maintenance mode drops); the server going away counts an error and,
    5 s later, a retry whose stream is answered again — in both."""
    lrs, ups, proxies = _world(tmp_path)
    lrs.answer([], 0.5, send_all=True)
    try:
        for p in proxies:
            p.start()
        for p in proxies:
            assert lrs.wait(lambda: len(_reports(lrs, p.kind, "empty")) >= 1, 10), p.kind
        for p in proxies:
            assert [_get(f"http://127.0.0.1:{p.port}/empty/{i}")[0] for i in range(3)] == [503] * 3
        time.sleep(1.2)
        for p in proxies:
            assert sum(int(r.get("total_dropped_requests", 0)) for r in _reports(lrs, p.kind, "empty")) == 0
            names = {cs["cluster_name"] for r in lrs.recorded() if r["node"] == p.kind
                     for cs in r["cluster_stats"]}
            assert names == {"svc", "empty", "lrs"}, (p.kind, names)
        lrs.stop()
        time.sleep(1.0)
        lrs.start()
        for p in proxies:
            assert lrs.wait(lambda: p.stats()["load_reporter.retries"] == "1", 10), p.kind
        for p in proxies:
            assert lrs.wait(lambda: p.stats()["load_reporter.requests"] == "2", 5), p.kind
        stats = {p.kind: p.stats() for p in proxies}
        assert stats["envoy"] == stats["ftproxy"]
        assert stats["envoy"]["load_reporter.errors"] == "1"
    finally:
        for p in proxies:
            p.stop()
        lrs.close()
        for u in ups:
            u.close()


def test_load_reports_match_envoy(tmp_path):
    lrs = LrsServer()
    one, two = EchoUpstream("one"), EchoUpstream("two")
    ports = PortReservation()
    proxies = [Proxy(kind, tmp_path, ports, lrs.port, one.port, two.port) for kind in ("envoy", "ftproxy")]
    ports.release()
    lrs.answer(["svc"], 0.5)
    try:
        for p in proxies:
            p.start()
        for p in proxies:   # the interval has started: the server answered each
            assert lrs.wait(lambda: len(_reports(lrs, p.kind)) >= 1, 10), p.kind
        paths = ["/a", "/b", "/status/503", "/status/503", "/c", "/d"]
        for p in proxies:
            assert [_get(f"http://127.0.0.1:{p.port}{path}")[0] for path in paths] == \
                [200, 200, 503, 503, 200, 200]
        for p in proxies:
            assert lrs.wait(lambda: sum(t["issued"] for t in _totals(_reports(lrs, p.kind)).values()) >= 6,
                            10), p.kind
            n = len(_reports(lrs, p.kind))
            assert lrs.wait(lambda: len(_reports(lrs, p.kind)) >= n + 2, 10)
        got = {p.kind: _totals(_reports(lrs, p.kind)) for p in proxies}
        assert got["envoy"] == got["ftproxy"]
        assert got["envoy"] == {("r", "z1", 0): {"issued": 3, "success": 2, "error": 1},
                                ("r", "z2", 0): {"issued": 3, "success": 2, "error": 1}}
        # The last reports of both: an idle interval has no locality stats, and no drops.
        for p in proxies:
            last = _reports(lrs, p.kind)[-1]
            assert last.get("upstream_locality_stats", []) == [], (p.kind, last)
            assert int(last.get("total_dropped_requests", 0)) == 0
            assert 0.3 <= float(last["load_report_interval"].rstrip("s")) <= 1.5
        first = {p.kind: next(r for r in lrs.recorded() if r["node"] == p.kind) for p in proxies}
        assert first["envoy"]["cluster_stats"] == first["ftproxy"]["cluster_stats"] == []
        assert "envoy.lrs.supports_send_all_clusters" in first["ftproxy"]["client_features"]
        assert "envoy.lrs.supports_send_all_clusters" in first["envoy"]["client_features"]
        stats = {p.kind: p.stats() for p in proxies}
        assert stats["envoy"] == stats["ftproxy"]
    finally:
        for p in proxies:
            p.stop()
        lrs.close()
        one.close()
        two.close()
