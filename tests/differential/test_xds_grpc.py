"""xDS over gRPC (ADS, state of the world and delta) against real Envoy: one control plane
(tests/integration/xds_control_plane.py, grpclib) feeds real Envoy 1.40 and ftproxy step by
step; after each step both must have ACKed (or both NACKed) the same versions, answer the same
requests the same way (status and which upstream) and count the same xDS stats.

Each proxy is its own node (`envoy`, `ftproxy`): the control plane serves each node its own
listener ports, everything else is the same resources.
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

import pytest

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLA, CLUSTER, LISTENER, ROUTE, ControlPlane

from .proxies import PortReservation, envoy_binary

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
SOURCES = ("listener_manager.lds", "cluster_manager.cds", "http.ingress_http.rds.local_route",
           "cluster.dyn")
STATS = [f"{p}.{s}" for p in SOURCES for s in ("update_attempt", "update_success", "update_rejected",
                                                "version")] + [
    "cluster_manager.cluster_added", "cluster_manager.cluster_modified", "cluster_manager.cluster_removed",
    "cluster_manager.active_clusters", "listener_manager.listener_added",
    "listener_manager.listener_modified", "listener_manager.listener_removed",
    "control_plane.connected_state", "listener_manager.total_listeners_warming",
    "listener_manager.total_listeners_active", "http.ingress_http.rds.late.update_success",
    "http.ingress_http.rds.late.update_empty", "http.ingress_http.rds.late.update_attempt",
    "http.ingress_http.rds.local_route.update_empty", "http.ingress_http.rds.late.update_failure",
    "http.ingress_http.rds.late.init_fetch_timeout", "http.ingress_http.rds.late.update_rejected"]


class Proxy:
    def __init__(self, kind: str, workdir: Path, ports: PortReservation, cp_port: int,
                 api_type: str) -> None:
        self.kind = kind
        self.dir = workdir / kind
        self.dir.mkdir()
        self.listener_ports = {"l1": ports.take(), "l2": ports.take()}
        self.admin_port = ports.take()
        boot = {"node": {"id": kind, "cluster": "test"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                                   "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
                    "lds_config": {"ads": {}, "resource_api_version": "V3"},
                    "cds_config": {"ads": {}, "resource_api_version": "V3"}},
                "static_resources": {"clusters": [{
                    "name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
                    "typed_extension_protocol_options": H2,
                    "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                     "port_value": cp_port}}}}]}]}}]}}
        (self.dir / "bootstrap.json").write_text(json.dumps(boot))
        if kind == "envoy":
            self.cmd = [envoy_binary(), "-c", str(self.dir / "bootstrap.json"), "--concurrency", "1",
                        "--disable-hot-restart", "-l", "error", "--drain-time-s", "0"]
        else:
            self.cmd = [sys.executable, "-m", "proxy.server.main", "-c", str(self.dir / "bootstrap.json"),
                        "--concurrency", "1", "--disable-hot-restart", "-l", "error", "--drain-time-s", "0"]
        self.proc = None

    def start(self) -> None:
        self.stderr = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "stderr.log").read_text()[-2000:]
            try:
                if self._get(f"http://127.0.0.1:{self.admin_port}/ready")[0] == 200:
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

    @staticmethod
    def _get(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stats(self) -> dict[str, str]:
        _, text = self._get(f"http://127.0.0.1:{self.admin_port}/stats")
        out = {}
        for line in text.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return {k: out.get(k, "0") for k in STATS}

    def stats_of(self, names: list[str]) -> dict[str, str]:
        _, text = self._get(f"http://127.0.0.1:{self.admin_port}/stats")
        out = {}
        for line in text.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return {k: out.get(k, "0") for k in names}

    def get(self, port: int, path: str = "/") -> tuple[int, str]:
        try:
            status, body = self._get(f"http://127.0.0.1:{port}{path}")
            return status, body.decode()
        except OSError as e:
            return 0, str(e)

    def observe(self, requests: list[tuple[str, str]]) -> dict:
        out = {}
        for listener, path in requests:
            try:
                status, body = self._get(f"http://127.0.0.1:{self.listener_ports[listener]}{path}")
            except OSError as e:
                out[f"{listener}{path}"] = f"refused ({type(e).__name__})"
                continue
            server = json.loads(body).get("server") if status == 200 else None
            out[f"{listener}{path}"] = (status, server)
        return out


def listener(name: str, port: int, hcm_routes: dict) -> dict:
    return {"@type": LISTENER, "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": {"@type": HCM, "stat_prefix": "ingress_http",
                                                             "http_filters": [ROUTER], **hcm_routes}}]}]}


def routes(*pairs: tuple[str, str], name: str = "local_route") -> dict:
    return {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster}} for prefix, cluster in pairs]}]}


def static(name: str, port: int, **extra) -> dict:
    return {"@type": CLUSTER, "name": name, "type": "STATIC", "connect_timeout": "1s", **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def cla(name: str, port: int) -> dict:
    return {"@type": CLA, "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}


EDS_CLUSTER = {"@type": CLUSTER, "name": "dyn", "type": "EDS", "connect_timeout": "1s",
               "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}
RDS = {"rds": {"route_config_name": "local_route", "config_source": {"ads": {},
                                                                     "resource_api_version": "V3"}}}


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_ads_steps_agree_with_real_envoy(api_type, tmp_path):
    s1, s2 = EchoUpstream("service1"), EchoUpstream("service2")
    cp = ControlPlane()
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports, cp.port, api_type),
               Proxy("ftproxy", tmp_path, ports, cp.port, api_type)]
    ports.release()
    reqs = [("l1", "/"), ("l1", "/other"), ("l2", "/")]

    def lds(version: str, with_l2: bool = False, l2_cluster: str = "other", l2_rds: str = "") -> list:
        """(type, version, resources per node) of an LDS push."""
        out = {}
        for p in proxies:
            items = [listener("l1", p.listener_ports["l1"], RDS)]
            if with_l2 and l2_rds:
                items.append(listener("l2", p.listener_ports["l2"], {"rds": {
                    "route_config_name": l2_rds, "config_source": {"ads": {}, "resource_api_version": "V3"}}}))
            elif with_l2:
                items.append(listener("l2", p.listener_ports["l2"], {"route_config": {
                    **routes(("/", l2_cluster), name="inline")}}))
            out[p.kind] = items
        return [(LISTENER, version, out)]

    def same(type_url: str, version: str, *items: dict) -> list:
        return [(type_url, version, {p.kind: list(items) for p in proxies})]

    rt = {"@type": ROUTE}
    # (name, pushes, expected outcome of the push: "ack" or "nack")
    steps = [
        ("initial", same(CLUSTER, "c1", EDS_CLUSTER, static("other", s2.port))
         + same(CLA, "e1", cla("dyn", s1.port))
         + lds("l1")
         + same(ROUTE, "r1", {**rt, **routes(("/", "dyn"))}), "ack"),
        ("eds moves dyn to service2", same(CLA, "e2", cla("dyn", s2.port)), "ack"),
        ("rds adds /other", same(ROUTE, "r2", {**rt, **routes(("/other", "other"), ("/", "dyn"))}), "ack"),
        ("cds modifies other (service1)", same(CLUSTER, "c2", EDS_CLUSTER, static("other", s1.port)), "ack"),
        ("cds: a negative connect_timeout is NACKed",
         same(CLUSTER, "c3", EDS_CLUSTER, static("other", s2.port, connect_timeout="-1s")), "nack"),
        ("lds adds l2", lds("l2", with_l2=True), "ack"),
        ("rds: a route without an action is NACKed",
         same(ROUTE, "r3", {**rt, "name": "local_route", "virtual_hosts": [
             {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}}]}]}), "nack"),
        ("cds removes other", same(CLUSTER, "c4", EDS_CLUSTER), "ack"),
        ("lds removes l2", lds("l3"), "ack"),
        ("eds: a port above 65535 is NACKed", same(CLA, "e4", cla("dyn", 70000)), "nack"),
        ("lds: l2's routes have not come: it warms", lds("l4", with_l2=True, l2_rds="late"), "ack"),
        ("rds: the late routes come: l2 serves",
         same(ROUTE, "r5", {**rt, **routes(("/", "dyn"))}, {**rt, **routes(("/", "dyn"), name="late")}), "ack"),
        # Last: the connection failures it counts (update_attempt, update_failure) depend on
        # each proxy's backoff timing, so those stats are not compared from here on.
        ("the control plane dies; it returns with a new route", same(
            ROUTE, "r6", {**rt, **routes(("/", "dyn"))}, {**rt, **routes(("/", "other"), name="late")}),
         "restart"),
    ]
    if api_type == "GRPC":   # delta names each resource once: a repeat cannot be sent
        steps.insert(-1, ("eds: an assignment named twice, the first counts",
                          same(CLA, "e3", cla("dyn", s1.port), cla("dyn", s2.port)), "ack"))
    problems = []
    seen_nacks: list = []   # NACKs of earlier steps
    stats_skip: set = set()
    try:
        for name, pushes, outcome in steps:
            for type_url, version, per_node in pushes:
                for node, items in per_node.items():
                    cp.set(type_url, version, items, node=node)
            if name == "initial":
                for p in proxies:
                    p.start()
            if outcome == "restart":
                cp.stop()
                for p in proxies:
                    if not cp.wait(lambda: p.stats()["control_plane.connected_state"] == "0", 10):
                        problems.append(f"{name}: {p.kind} still connected")
                during = {p.kind: p.observe(reqs) for p in proxies}
                if during["envoy"] != during["ftproxy"]:
                    problems.append(f"{name}: answers while it is down differ: {during}")
                cp.start()
                stats_skip = {k for k in STATS if k.endswith((".update_attempt", ".update_failure"))}
            for type_url, version, _ in pushes:
                for p in proxies:
                    if outcome in ("ack", "restart"):
                        ok = cp.wait(lambda: cp.acked(type_url, version, p.kind), 40)
                    else:
                        ok = cp.wait(lambda: any(r["response_nonce"] for r in cp.nacks(type_url, p.kind)
                                                 if r not in seen_nacks), 10)
                    if not ok:
                        problems.append(f"{name}: {p.kind} did not {outcome} {type_url} {version}")
            if outcome == "nack":
                got = {p.kind: [r for r in cp.nacks(pushes[0][0], p.kind) if r not in seen_nacks]
                       for p in proxies}
                codes = {k: {r["error_detail"]["code"] for r in v} for k, v in got.items()}
                versions = {k: {r["version_info"] for r in v} for k, v in got.items()}
                if codes["envoy"] != codes["ftproxy"] or versions["envoy"] != versions["ftproxy"]:
                    problems.append(f"{name}: NACKs differ: codes {codes}, versions {versions}")
                if not all("resources[" in r["error_detail"]["message"] for r in got["ftproxy"]):
                    problems.append(f"{name}: ftproxy's NACK names no field path: {got['ftproxy']}")
                for v in got.values():
                    seen_nacks.extend(v)
            # The workers apply what the main thread accepted, each proxy in its own time: look
            # until the two agree, for at most 5 s (what differs then is reported).
            deadline = time.monotonic() + 5
            while True:
                time.sleep(0.2)
                seen = {p.kind: (p.observe(reqs), p.stats()) for p in proxies}
                (eo, es), (fo, fs) = seen["envoy"], seen["ftproxy"]
                diff = {k: (es[k], fs[k]) for k in STATS if es[k] != fs[k] and k not in stats_skip}
                if (eo == fo and not diff) or time.monotonic() > deadline:
                    break
            if eo != fo:
                problems.append(f"{name}: responses differ: envoy {eo} ftproxy {fo}")
            if diff:
                problems.append(f"{name}: stats differ (envoy, ftproxy): {diff}")
    finally:
        for p in proxies:
            p.stop()
        cp.close()
        s1.close()
        s2.close()
    assert not problems, "\n".join(problems)

