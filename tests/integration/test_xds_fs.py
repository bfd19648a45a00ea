"""Filesystem xDS through the running proxy: CDS, EDS, LDS and RDS from watched files.

Each update is a file moved onto the watched path (as `mv` does), as Envoy expects; the proxy
polls once a second, so each test waits on the condition the update brings. Real sockets on
127.0.0.1, real upstream servers (EchoUpstream answers with its name).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
NODE = {"id": "id_1", "cluster": "test"}


def move_onto(path: Path, doc: dict) -> None:
    """Write `doc` beside `path` and rename it onto `path` (what `mv` does)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def cds_doc(*clusters: dict, version: str = "") -> dict:
    doc = {"resources": [{"@type": CLUSTER, **c} for c in clusters]}
    if version:
        doc["version_info"] = version
    return doc


def cla_doc(name: str, *ports: int, version: str = "") -> dict:
    return {"version_info": version, "resources": [{"@type": CLA, "cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                       "port_value": p}}}}
                          for p in ports]}]}]}


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def served_by(p: ProxyUnderTest, path: str = "/", port: int | None = None) -> str | None:
    status, body = get(f"http://127.0.0.1:{port or p.port}{path}")
    return json.loads(body)["server"] if status == 200 else None


def routed_to(cluster: str) -> list[dict]:
    return [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]


def cds_bootstrap(cds_path: Path) -> dict:
    cfg = front_proxy_config(routed_to("dyn"), [])
    # The route names a cluster CDS brings: not checked at load (Envoy's validate_clusters).
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["validate_clusters"] = False
    cfg["node"] = NODE
    cfg["dynamic_resources"] = {"cds_config": {"path_config_source": {"path": str(cds_path)}}}
    return cfg


@pytest.fixture
def upstreams():
    us = [EchoUpstream("service1"), EchoUpstream("service2")]
    yield us
    for u in us:
        u.close()


# -- CDS -----------------------------------------------------------------------------------------

def test_cds_file_adds_modifies_and_removes_a_cluster(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    cds = tmp_path / "cds.yaml"
    move_onto(cds, cds_doc(static_cluster("dyn", s1.port)))
    p = proxy_factory(cds_bootstrap(cds))
    assert served_by(p) == "service1"
    c = p.counters()
    assert c["cluster_manager.cds.update_success"] == 1 and c["cluster_manager.cluster_added"] == 1
    assert p.gauges()["cluster_manager.active_clusters"] == 1
    status, text = p.admin("/clusters")
    assert "dyn::added_via_api::true" in text

    move_onto(cds, cds_doc(static_cluster("dyn", s2.port), version="v2"))
    assert p.wait_for(lambda: served_by(p) == "service2", 5)
    # (The workers have the update before the main thread counts it accepted: the subscription
    # counts update_success, then sets the version gauge, after on_update returned.)
    assert p.wait_for(lambda: p.gauges().get("cluster_manager.cds.version") == 17234765554138278603)
    c, g = p.counters(), p.gauges()
    assert c["cluster_manager.cds.update_attempt"] == 2 and c["cluster_manager.cds.update_success"] == 2
    assert c["cluster_manager.cluster_modified"] == 1
    assert g["cluster_manager.cds.version"] == 17234765554138278603  # xxHash64("v2"), as Envoy's gauge
    dump = json.loads(p.admin("/config_dump")[1])["configs"][1]
    assert dump["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    assert dump["version_info"] == "v2"
    (active,) = dump["dynamic_active_clusters"]
    assert active["version_info"] == "v2" and active["cluster"]["name"] == "dyn"
    assert active["cluster"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]["port_value"] == s2.port
    assert active["last_updated"].endswith("Z")

    move_onto(cds, cds_doc(version="v3"))
    assert p.wait_for(lambda: get(p.url("/"))[0] == 503, 5)
    assert p.wait_for(lambda: p.counters().get("cluster_manager.cluster_removed") == 1)
    assert p.gauges()["cluster_manager.active_clusters"] == 0


def test_cds_bad_cluster_is_rejected_with_its_field_path_and_keeps_its_old_config(
        tmp_path, upstreams, proxy_factory, caplog):
    s1, s2 = upstreams
    cds = tmp_path / "cds.yaml"
    move_onto(cds, cds_doc(static_cluster("dyn", s1.port), version="v1"))
    p = proxy_factory(cds_bootstrap(cds))
    assert served_by(p) == "service1"
    bad = static_cluster("dyn", s2.port)
    bad["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["address"] = "not-an-ip"
    with caplog.at_level(logging.ERROR, logger="ftproxy.xds"):
        move_onto(cds, cds_doc(static_cluster("other", s2.port), bad, version="v2"))
        assert p.wait_for(lambda: p.counters().get("cluster_manager.cds.update_rejected") == 1, 5)
    assert ("resources[1].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
            ".socket_address.address: STATIC cluster addresses must be IP addresses") in caplog.text
    # Per cluster, as Envoy's CDS: "other" is added, "dyn" keeps its old config, the version stays.
    assert served_by(p) == "service1"
    assert "other::added_via_api::true" in p.admin("/clusters")[1]
    dump = json.loads(p.admin("/config_dump")[1])["configs"][1]
    assert dump["version_info"] == "v1"


def test_in_place_write_is_ignored_as_envoy_ignores_it(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    cds = tmp_path / "cds.yaml"
    move_onto(cds, cds_doc(static_cluster("dyn", s1.port)))
    p = proxy_factory(cds_bootstrap(cds))
    cds.write_text(yaml.safe_dump(cds_doc(static_cluster("dyn", s2.port))))  # same inode
    time.sleep(2.5)  # two polls: proving an absence
    assert served_by(p) == "service1"
    assert p.counters()["cluster_manager.cds.update_attempt"] == 1


def test_watched_directory_symlink_swap_rereads_the_path(tmp_path, upstreams, proxy_factory):
    """Kubernetes' ConfigMap layout: path -> ..data/cds.yaml, ..data a symlink swapped by rename."""
    s1, s2 = upstreams
    for name, port in (("v1", s1.port), ("v2", s2.port)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cds.yaml").write_text(yaml.safe_dump(cds_doc(static_cluster("dyn", port))))
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/cds.yaml", tmp_path / "cds.yaml")
    cfg = cds_bootstrap(tmp_path / "cds.yaml")
    cfg["dynamic_resources"]["cds_config"]["path_config_source"]["watched_directory"] = {"path": str(tmp_path)}
    p = proxy_factory(cfg)
    assert served_by(p) == "service1"
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert p.wait_for(lambda: served_by(p) == "service2", 5)


# -- EDS -----------------------------------------------------------------------------------------

def eds_cluster(name: str, eds_path: Path, service_name: str = "") -> dict:
    eds = {"eds_config": {"path_config_source": {"path": str(eds_path)}}}
    if service_name:
        eds["service_name"] = service_name
    return {"name": name, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": eds}


def test_eds_cluster_takes_its_hosts_from_the_file_and_follows_moves(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    eds = tmp_path / "eds.yaml"
    move_onto(eds, cla_doc("svc", s1.port))
    cfg = front_proxy_config(routed_to("backend"), [eds_cluster("backend", eds, "svc")])
    cfg["node"] = NODE
    p = proxy_factory(cfg)
    assert served_by(p) == "service1"
    assert p.gauges()["cluster.backend.membership_total"] == 1
    move_onto(eds, cla_doc("svc", s2.port, version="e2"))
    assert p.wait_for(lambda: served_by(p) == "service2", 5)
    assert p.wait_for(lambda: p.counters().get("cluster.backend.update_success") == 2)
    # A ClusterLoadAssignment for another cluster is rejected; the hosts stay.
    move_onto(eds, cla_doc("nope", s1.port, version="e3"))
    assert p.wait_for(lambda: p.counters().get("cluster.backend.update_rejected") == 1, 5)
    assert served_by(p) == "service2"


def test_cds_brings_an_eds_cluster(tmp_path, upstreams, proxy_factory):
    s1, _ = upstreams
    eds, cds = tmp_path / "eds.yaml", tmp_path / "cds.yaml"
    move_onto(eds, cla_doc("dyn", s1.port))
    move_onto(cds, cds_doc(eds_cluster("dyn", eds)))
    p = proxy_factory(cds_bootstrap(cds))
    assert served_by(p) == "service1"
    g = p.gauges()
    assert g["cluster_manager.active_clusters"] == 1 and g["cluster_manager.warming_clusters"] == 0


# -- no request lost while clusters change under load ----------------------------------------------

class SteadyClient:
    """A thread sending keep-alive requests in a loop; counts answers and failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.servers: set[str] = set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    self.failures.append(f"status {r.status} {body[:80]!r}")
                else:
                    self.ok += 1
                    self.servers.add(json.loads(body)["server"])
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def test_no_request_lost_while_cds_swaps_the_upstream(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    cds = tmp_path / "cds.yaml"
    move_onto(cds, cds_doc(static_cluster("dyn", s1.port)))
    p = proxy_factory(cds_bootstrap(cds), concurrency=2)
    client = SteadyClient(p.port)
    try:
        for i, s in enumerate((s2, s1, s2)):
            move_onto(cds, cds_doc(static_cluster("dyn", s.port), version=f"v{i}"))
            assert p.wait_for(lambda: p.counters()["cluster_manager.cds.update_success"] == i + 2, 5)
            time.sleep(0.3)
    finally:
        client.stop()
    assert client.failures == []
    assert client.ok > 20 and client.servers == {"service1", "service2"}


# -- LDS -----------------------------------------------------------------------------------------

def hcm_listener(name: str, port: int, cluster: str | None = None, rds: dict | None = None,
                 stat_prefix: str = "ingress_http") -> dict:
    hcm = {"@type": HCM, "stat_prefix": stat_prefix, "http_filters": [ROUTER]}
    if rds is not None:
        hcm["rds"] = rds
    else:
        hcm["route_config"] = {"name": "local_route", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": routed_to(cluster)}]}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def lds_doc(*listeners: dict, version: str = "") -> dict:
    return {"version_info": version, "resources": [{"@type": LISTENER, **lis} for lis in listeners]}


def lds_bootstrap(lds_path: Path, s1: EchoUpstream, s2: EchoUpstream) -> dict:
    return {"node": NODE,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(lds_path)}}},
            "static_resources": {"clusters": [static_cluster("c1", s1.port), static_cluster("c2", s2.port)]}}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_lds_file_adds_modifies_and_removes_listeners(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    a, b = free_port(), free_port()
    lds = tmp_path / "lds.yaml"
    move_onto(lds, lds_doc(hcm_listener("l1", a, "c1"), version="1"))
    p = proxy_factory(lds_bootstrap(lds, s1, s2))
    # --drain-strategy immediate: the replaced listener's connections hear `connection: close`
    # at their next response (gradual spreads that over the drain time: test_xds_drain.py).
    p.server.options.drain_strategy = "immediate"
    assert served_by(p, port=a) == "service1"
    assert p.counters()["listener_manager.listener_added"] == 1
    assert f"l1::127.0.0.1:{a}" in p.admin("/listeners")[1]

    # A keep-alive connection made before the update.
    import http.client
    old = http.client.HTTPConnection("127.0.0.1", a, timeout=5)
    old.request("GET", "/")
    assert json.loads(old.getresponse().read())["server"] == "service1"
    old.request("GET", "/delay/2.5")  # in flight across the update (applied within ~1 s)

    move_onto(lds, lds_doc(hcm_listener("l1", a, "c2"), hcm_listener("l2", b, "c1"), version="2"))
    # Applied on the workers after the main thread accepted it: wait for what it brings.
    assert p.wait_for(lambda: served_by(p, port=a) == "service2", 5)
    assert served_by(p, port=b) == "service1"
    assert p.wait_for(lambda: p.counters().get("listener_manager.lds.update_success") == 2)
    # Drained as Envoy drains a replaced listener's connections: the request in flight is
    # answered from the old config, and the answer says `connection: close`.
    answer = old.getresponse()
    assert json.loads(answer.read())["server"] == "service1"
    assert answer.getheader("connection") == "close"
    old.close()
    c, g = p.counters(), p.gauges()
    assert c["listener_manager.listener_modified"] == 1 and c["listener_manager.listener_added"] == 2
    assert g["listener_manager.total_listeners_active"] == 2
    dump = json.loads(p.admin("/config_dump")[1])["configs"][2]
    assert dump["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
    assert dump["version_info"] == "2"
    assert [(d["name"], d["active_state"]["version_info"]) for d in dump["dynamic_listeners"]] == \
        [("l1", "2"), ("l2", "2")]

    move_onto(lds, lds_doc(hcm_listener("l2", b, "c1"), version="3"))
    assert p.wait_for(lambda: refused(a), 5)
    assert served_by(p, port=b) == "service1"
    assert p.counters()["listener_manager.listener_removed"] == 1
    assert p.gauges()["listener_manager.total_listeners_active"] == 1


def test_lds_bad_listener_is_rejected_with_its_path_and_the_good_ones_apply(
        tmp_path, upstreams, proxy_factory, caplog):
    s1, s2 = upstreams
    a, b, c = free_port(), free_port(), free_port()
    lds = tmp_path / "lds.yaml"
    move_onto(lds, lds_doc(hcm_listener("l1", a, "c1"), version="1"))
    p = proxy_factory(lds_bootstrap(lds, s1, s2))
    bad = hcm_listener("l3", c, "nope")
    with caplog.at_level(logging.ERROR, logger="ftproxy.xds"):
        move_onto(lds, lds_doc(hcm_listener("l1", a, "c2"), bad, hcm_listener("l2", b, "c1"), version="2"))
        assert p.wait_for(lambda: p.counters().get("listener_manager.lds.update_rejected") == 1, 5)
    assert 'resources[1].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]' \
           '.routes[0].route.cluster: unknown cluster "nope"' in caplog.text
    # Per listener, as Envoy's LDS: l1's update and l2 applied, l3 refused; the version stays.
    assert p.wait_for(lambda: served_by(p, port=a) == "service2", 5)
    assert served_by(p, port=b) == "service1"
    assert refused(c)
    dump = json.loads(p.admin("/config_dump")[1])["configs"][2]
    assert dump["version_info"] == "1"


def test_no_request_lost_while_lds_replaces_the_listener(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    a = free_port()
    lds = tmp_path / "lds.yaml"
    move_onto(lds, lds_doc(hcm_listener("l1", a, "c1")))
    p = proxy_factory(lds_bootstrap(lds, s1, s2), concurrency=2)
    client = SteadyClient(a)
    fresh = []  # new connections each time: they meet the listener being swapped
    try:
        for i, cluster in enumerate(("c2", "c1", "c2")):
            move_onto(lds, lds_doc(hcm_listener("l1", a, cluster), version=f"v{i}"))
            assert p.wait_for(lambda: p.counters()["listener_manager.lds.update_success"] == i + 2, 5)
            for _ in range(20):
                fresh.append(served_by(p, port=a))
    finally:
        client.stop()
    assert client.failures == [] and client.ok > 20
    assert None not in fresh and set(fresh) == {"service1", "service2"}


# -- RDS -----------------------------------------------------------------------------------------

def rds_doc(cluster: str, name: str = "local_route", version: str = "") -> dict:
    return {"version_info": version, "resources": [{"@type": ROUTE, "name": name, "virtual_hosts": [
        {"name": "all", "domains": ["*"], "routes": routed_to(cluster)}]}]}


def rds_bootstrap(rds_path: Path, s1: EchoUpstream, s2: EchoUpstream) -> dict:
    cfg = front_proxy_config([], [static_cluster("c1", s1.port), static_cluster("c2", s2.port)])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "local_route",
                  "config_source": {"path_config_source": {"path": str(rds_path)}}}
    cfg["node"] = NODE
    return cfg


def test_rds_file_routes_and_follows_moves_and_rejects_a_wrong_name(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    rds = tmp_path / "rds.yaml"
    move_onto(rds, rds_doc("c1", version="r1"))
    p = proxy_factory(rds_bootstrap(rds, s1, s2))
    assert served_by(p) == "service1"
    move_onto(rds, rds_doc("c2", version="r2"))
    assert p.wait_for(lambda: served_by(p) == "service2", 5)
    prefix = "http.ingress_http.rds.local_route."
    # (Accepted, counted and its version set, on main after the workers have the table.)
    assert p.wait_for(lambda: p.gauges().get(prefix + "version") == 8003343158660992332)
    c = p.counters()
    assert c[prefix + "update_attempt"] == 2 and c[prefix + "update_success"] == 2
    assert p.gauges()[prefix + "version"] == 8003343158660992332  # xxHash64("r2"), as Envoy's gauge
    (routes,) = [d for d in json.loads(p.admin("/config_dump")[1])["configs"]
                 if d["@type"] == "type.googleapis.com/envoy.admin.v3.RoutesConfigDump"]
    (dyn,) = routes["dynamic_route_configs"]
    assert dyn["version_info"] == "r2" and dyn["route_config"]["name"] == "local_route"
    # Another route configuration's name: rejected as Envoy does; the table stays.
    move_onto(rds, rds_doc("c1", name="other", version="r3"))
    assert p.wait_for(lambda: p.counters()[prefix + "update_rejected"] == 1, 5)
    assert served_by(p) == "service2"
    # An empty update: update_empty, the table stays.
    move_onto(rds, {"version_info": "r4", "resources": []})
    assert p.wait_for(lambda: p.counters().get(prefix + "update_empty") == 1, 5)
    assert served_by(p) == "service2"


def test_rds_missing_file_serves_404_until_the_routes_arrive(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    rds = tmp_path / "rds.yaml"
    p = proxy_factory(rds_bootstrap(rds, s1, s2))
    assert get(p.url("/"))[0] == 404
    assert p.counters()["http.ingress_http.rds.local_route.update_failure"] == 1
    move_onto(rds, rds_doc("c1"))
    assert p.wait_for(lambda: served_by(p) == "service1", 5)


def test_rds_update_leaves_a_stream_in_flight_on_its_route(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    rds = tmp_path / "rds.yaml"
    move_onto(rds, rds_doc("c1"))
    p = proxy_factory(rds_bootstrap(rds, s1, s2))
    result = {}
    t = threading.Thread(target=lambda: result.update(r=served_by(p, "/delay/1.5")))
    t.start()
    assert p.wait_for(lambda: len(s1.requests) == 1, 5)  # routed, now waiting on service1
    move_onto(rds, rds_doc("c2", version="2"))
    assert p.wait_for(lambda: served_by(p) == "service2", 5)
    t.join(10)
    assert result["r"] == "service1"


def test_lds_listener_with_rds_and_no_request_lost_while_routes_change(tmp_path, upstreams, proxy_factory):
    s1, s2 = upstreams
    a = free_port()
    lds, rds = tmp_path / "lds.yaml", tmp_path / "rds.yaml"
    move_onto(rds, rds_doc("c1"))
    source = {"route_config_name": "local_route", "config_source": {"path": str(rds)}}
    move_onto(lds, lds_doc(hcm_listener("l1", a, rds=source)))
    p = proxy_factory(lds_bootstrap(lds, s1, s2), concurrency=2)
    assert served_by(p, port=a) == "service1"
    client = SteadyClient(a)
    try:
        for i, cluster in enumerate(("c2", "c1", "c2")):
            move_onto(rds, rds_doc(cluster, version=f"v{i}"))
            assert p.wait_for(lambda: p.counters()["http.ingress_http.rds.local_route.update_success"] == i + 2, 5)
            time.sleep(0.3)
    finally:
        client.stop()
    assert client.failures == [] and client.ok > 20 and client.servers == {"service1", "service2"}


def test_cds_cluster_is_health_checked_and_its_checks_stop_when_removed(tmp_path, upstreams, proxy_factory):
    s1, _ = upstreams
    cds = tmp_path / "cds.yaml"
    hc = {"timeout": "0.3s", "interval": "0.1s", "no_traffic_interval": "0.1s", "unhealthy_threshold": 2,
          "healthy_threshold": 2, "http_health_check": {"path": "/hc"}}
    move_onto(cds, cds_doc(static_cluster("dyn", s1.port, health_checks=[hc])))
    p = proxy_factory(cds_bootstrap(cds))
    assert p.wait_for(lambda: p.counters().get("cluster.dyn.health_check.success", 0) >= 2, 5)
    assert served_by(p) == "service1"
    move_onto(cds, cds_doc(version="v2"))
    assert p.wait_for(lambda: p.counters().get("cluster_manager.cluster_removed") == 1, 5)
    checks = len([r for r in s1.requests if r[1] == "/hc"])
    time.sleep(0.5)  # five intervals: proving no more checks come
    assert len([r for r in s1.requests if r[1] == "/hc"]) == checks
