"""Filesystem xDS against real Envoy: the same LDS/CDS/RDS/EDS files, swapped by rename step by
step, through real Envoy 1.40 and ftproxy; after each swap both must answer the same requests
the same way (status and which upstream) and count the same xDS stats.

The case runner (runner.py) cannot change files mid-case, hence this dedicated test. Each proxy
has its own directory of resource files (its own listener ports inside); a step writes the same
resources into both and renames them onto the watched paths. Envoy sees a rename at once
(inotify), ftproxy within its one-second poll: each step waits until both have read it.
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

import yaml

from tests.integration.harness import EchoUpstream

from .proxies import PortReservation, envoy_binary

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
SOURCES = ("listener_manager.lds", "cluster_manager.cds", "http.ingress_http.rds.local_route",
           "cluster.dyn")
STATS = [f"{p}.{s}" for p in SOURCES for s in ("update_attempt", "update_success", "update_rejected",
                                                "version")] + [
    "cluster_manager.cluster_added", "cluster_manager.cluster_modified", "cluster_manager.cluster_removed",
    "cluster_manager.active_clusters", "listener_manager.listener_added",
    "listener_manager.listener_modified", "listener_manager.listener_removed",
    "http.ingress_http.rds.local_route.update_empty"]


# Declared differences: stat -> (the step from which it differs, Envoy minus ftproxy, why).
EXPECTED = {
    "cluster_manager.cluster_added": (
        "cds: a cluster failing past validation", 1,
        "Envoy counts cluster_added before it loads the cluster, so a cluster whose load fails "
        "(a STATIC address that is no IP) is counted; ftproxy refuses it while validating"),
}


class Proxy:
    def __init__(self, kind: str, workdir: Path, ports: PortReservation) -> None:
        self.kind = kind
        self.dir = workdir / kind
        self.dir.mkdir()
        self.listener_ports = {"l1": ports.take(), "l2": ports.take()}
        self.admin_port = ports.take()
        boot = {"node": {"id": "id_1", "cluster": "test"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
                "dynamic_resources": {
                    "lds_config": {"path_config_source": {"path": str(self.dir / "lds.yaml")}},
                    "cds_config": {"path_config_source": {"path": str(self.dir / "cds.yaml")}}}}
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
        deadline = time.monotonic() + 20
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

    def attempts(self) -> int:
        s = self.stats()
        return sum(int(s[f"{p}.update_attempt"]) for p in SOURCES)

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

    def write(self, name: str, doc: dict) -> None:
        text = yaml.safe_dump(doc)
        for lis, port in self.listener_ports.items():
            text = text.replace(f"{{{{port:{lis}}}}}", str(port))
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)


def resources(type_name: str, *items: dict, version: str) -> dict:
    return {"version_info": version, "resources": [{"@type": T + type_name, **i} for i in items]}


def listener(name: str, hcm_routes: dict) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": f"{{{{port:{name}}}}}"}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": {"@type": HCM, "stat_prefix": "ingress_http",
                                                             "http_filters": [ROUTER], **hcm_routes}}]}]}


def routes(*pairs: tuple[str, str], name: str = "local_route") -> dict:
    return {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster}} for prefix, cluster in pairs]}]}


def static(name: str, port: int, **extra) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra, "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def cla(name: str, port: int, version: str) -> dict:
    return resources("envoy.config.endpoint.v3.ClusterLoadAssignment", {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}, version=version)


def test_filesystem_xds_steps_agree_with_real_envoy(tmp_path):
    s1, s2 = EchoUpstream("service1"), EchoUpstream("service2")
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports), Proxy("ftproxy", tmp_path, ports)]
    ports.release()
    reqs = [("l1", "/"), ("l1", "/other"), ("l2", "/")]
    rds_source = {"rds": {"route_config_name": "local_route", "config_source": {"path_config_source": {
        "path": "{dir}/rds.yaml"}}}}

    def eds_cluster(p: Proxy) -> dict:
        return {"name": "dyn", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {
            "eds_config": {"path_config_source": {"path": str(p.dir / "eds.yaml")}}}}

    def cds(p: Proxy, version: str, *extra: dict) -> dict:
        return resources("envoy.config.cluster.v3.Cluster", eds_cluster(p), *extra, version=version)

    def lds(p: Proxy, version: str, *extra: dict) -> dict:
        src = json.loads(json.dumps(rds_source).replace("{dir}", str(p.dir)))
        return resources("envoy.config.listener.v3.Listener", listener("l1", src), *extra, version=version)

    rt = "envoy.config.route.v3.RouteConfiguration"
    steps = [
        ("initial", lambda p: [("eds.yaml", cla("dyn", s1.port, "e1")),
                               ("rds.yaml", resources(rt, routes(("/", "dyn")), version="r1")),
                               ("cds.yaml", cds(p, "c1", static("other", s2.port))),
                               ("lds.yaml", lds(p, "l1"))]),
        ("eds moves dyn to service2", lambda p: [("eds.yaml", cla("dyn", s2.port, "e2"))]),
        ("rds adds /other", lambda p: [("rds.yaml", resources(rt, routes(("/other", "other"), ("/", "dyn")),
                                                              version="r2"))]),
        ("cds modifies other (service1)", lambda p: [("cds.yaml", cds(p, "c2", static("other", s1.port)))]),
        ("cds bad cluster rejected", lambda p: [("cds.yaml", cds(p, "c3", static("other", s2.port,
                                                                                 connect_timeout="-1s")))]),
        ("lds adds l2", lambda p: [("lds.yaml", lds(p, "l2", listener("l2", {"route_config": routes(
            ("/", "other"), name="inline")})))]),
        ("rds wrong name rejected", lambda p: [("rds.yaml", resources(rt, routes(("/", "other"), name="nope"),
                                                                      version="r3"))]),
        ("rds empty", lambda p: [("rds.yaml", {"version_info": "r4", "resources": []})]),
        ("cds removes other", lambda p: [("cds.yaml", cds(p, "c4"))]),
        ("lds removes l2", lambda p: [("lds.yaml", lds(p, "l3"))]),
        ("cds: a cluster failing past validation", lambda p: [("cds.yaml", cds(
            p, "c5", static("good", s1.port), {**static("bad", s1.port), "load_assignment": {
                "cluster_name": "bad", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "not-an-ip", "port_value": 80}}}}]}]}}))]),
        ("lds: one listener names an unknown cluster", lambda p: [("lds.yaml", lds(
            p, "l5", listener("l2", {"route_config": routes(("/", "nope"), name="inline")})))]),
    ]
    problems = []
    try:
        for name, files in steps:
            before = {p.kind: p.attempts() if p.proc else 0 for p in proxies}
            for p in proxies:
                for fname, doc in files(p):
                    p.write(fname, doc)
            if name == "initial":
                for p in proxies:
                    p.start()
            else:
                deadline = time.monotonic() + 6
                while time.monotonic() < deadline and any(p.attempts() < before[p.kind] + len(files(p))
                                                          for p in proxies):
                    time.sleep(0.1)
            time.sleep(0.5)  # the workers apply what the main thread accepted
            seen = {p.kind: (p.observe(reqs), p.stats()) for p in proxies}
            (eo, es), (fo, fs) = seen["envoy"], seen["ftproxy"]
            if eo != fo:
                problems.append(f"{name}: responses differ: envoy {eo} ftproxy {fo}")
            for stat, (from_step, delta, _why) in EXPECTED.items():
                if [n for n, _ in steps].index(name) >= [n for n, _ in steps].index(from_step):
                    if int(es[stat]) - int(fs[stat]) != delta:
                        problems.append(f"{name}: {stat} no longer differs as declared: {es[stat]}, {fs[stat]}")
                    fs[stat] = es[stat]
            diff = {k: (es[k], fs[k]) for k in STATS if es[k] != fs[k]}
            if diff:
                problems.append(f"{name}: stats differ (envoy, ftproxy): {diff}")
    finally:
        for p in proxies:
            p.stop()
        s1.close()
        s2.close()
    assert not problems, "\n".join(problems)
