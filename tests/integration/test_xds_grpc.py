"""xDS over gRPC (ADS, state of the world) through the running proxy, fed by a real gRPC control
plane (tests/integration/xds_control_plane.py, grpclib) over real loopback sockets.

Each test sets resources on the control plane and waits on what the proxy does with them:
traffic through the proxy to real upstreams (EchoUpstream answers with its name), the
control plane's record of ACKs and NACKs, and the proxy's stats.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.ports import free_port

from .harness import EchoUpstream, ProxyUnderTest, static_cluster
from .xds_control_plane import CLA, CLUSTER, LISTENER, ROUTE, ControlPlane

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def bootstrap(cp_port: int, api_type: str = "GRPC") -> dict:
    return {
        "node": {"id": "id_1", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [
            static_cluster("xds_cluster", cp_port, typed_extension_protocol_options=H2_OPTIONS)]},
    }


def listener(port: int, route_name: str = "local_route", name: str = "listener_0") -> dict:
    return {"@type": LISTENER, "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": {
                "@type": HCM, "stat_prefix": "ingress_http", "http_filters": [ROUTER],
                "rds": {"route_config_name": route_name, "config_source": {"ads": {}}}}}]}]}


def route(cluster: str, name: str = "local_route", prefix: str = "/") -> dict:
    return {"@type": ROUTE, "name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": prefix},
                                                      "route": {"cluster": cluster}}]}]}


def eds_cluster(name: str) -> dict:
    return {"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1.5s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}


def cla(name: str, *ports: int) -> dict:
    return {"@type": CLA, "cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports]}]}


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def served_by(port: int, path: str = "/") -> str:
    status, body = get(port, path)
    if status != 200:
        return f"status {status}"
    return json.loads(body).get("server", "?")


@pytest.fixture
def world():
    cp = ControlPlane()
    ups = {name: EchoUpstream(name) for name in ("one", "two")}
    proxies = []
    yield cp, ups, proxies
    for p in proxies:
        p.stop()
    cp.close()
    for u in ups.values():
        u.close()


def start(cp, proxies, api_type: str = "GRPC") -> ProxyUnderTest:
    p = ProxyUnderTest(bootstrap(cp.port, api_type))
    proxies.append(p)
    return p


def initial(cp, ups, lport: int) -> None:
    cp.set(CLUSTER, "c1", [eds_cluster("svc")])
    cp.set(CLA, "e1", [cla("svc", ups["one"].port)])
    cp.set(LISTENER, "l1", [listener(lport)])
    cp.set(ROUTE, "r1", [route("svc")])


def test_ads_listener_route_cluster_endpoints_serve_traffic(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)   # start-up waits for the first CDS/EDS/LDS/RDS answers
    assert served_by(lport) == "one"
    assert p.gauges()["control_plane.connected_state"] == 1
    for t, v in ((CLUSTER, "c1"), (CLA, "e1"), (LISTENER, "l1"), (ROUTE, "r1")):
        assert cp.wait(lambda: cp.acked(t, v)), (t, cp.requests_for(t))
    c = p.counters()
    assert c["cluster_manager.cds.update_success"] == 1
    assert c["listener_manager.lds.update_success"] == 1
    assert c["http.ingress_http.rds.local_route.update_success"] == 1
    assert c["cluster.svc.update_success"] == 1
    # The ADS stream charges the xDS cluster as Envoy's gRPC client does: one connection, one
    # request, the answer's headers (200) and bytes both ways.
    assert c["cluster.xds_cluster.upstream_cx_total"] == 1
    assert c["cluster.xds_cluster.upstream_rq_total"] == 1
    assert c["cluster.xds_cluster.upstream_rq_200"] == 1
    assert c["cluster.xds_cluster.upstream_cx_tx_bytes_total"] > 0
    assert c["cluster.xds_cluster.upstream_cx_rx_bytes_total"] > 0
    # The node goes in the first request, with ftproxy's user agent; LDS/CDS are wildcards,
    # RDS/EDS named.
    first = cp.requests[0]
    assert first["node"] == "id_1" and first["user_agent_name"] == "ftproxy"
    assert cp.requests_for(CLUSTER)[0]["resource_names"] == []
    assert cp.requests_for(LISTENER)[0]["resource_names"] == []
    assert cp.requests_for(ROUTE)[0]["resource_names"] == ["local_route"]
    assert cp.requests_for(CLA)[0]["resource_names"] == ["svc"]


def test_ads_update_changes_routing(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)
    assert served_by(lport) == "one"
    # A new cluster, then a route to it: new streams take the new route.
    cp.set(CLUSTER, "c2", [eds_cluster("svc"), eds_cluster("svc2")])
    cp.set(CLA, "e2", [cla("svc", ups["one"].port), cla("svc2", ups["two"].port)])
    assert cp.wait(lambda: cp.acked(CLA, "e2") and cp.acked(CLUSTER, "c2"))
    assert p.wait_for(lambda: p.counters().get("cluster.svc2.update_success", 0) >= 1)
    cp.set(ROUTE, "r2", [route("svc2")])
    assert p.wait_for(lambda: served_by(lport) == "two", 10)
    # Endpoints move: the same cluster now goes to the other upstream.
    cp.set(CLA, "e3", [cla("svc", ups["two"].port), cla("svc2", ups["one"].port)])
    assert p.wait_for(lambda: served_by(lport) == "one", 10)
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.rds.local_route.update_success") == 2)


def test_ads_bad_push_is_nacked_with_the_field_path_and_old_config_serves(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)
    assert served_by(lport) == "one"
    bad = eds_cluster("svc")
    bad["lb_policy"] = "MAGLEV"
    bad["maglev_lb_config"] = {"table_size": 4}   # not a prime: refused
    cp.set(CLUSTER, "c-bad", [bad])
    assert cp.wait(lambda: cp.nacks(CLUSTER))
    nack = cp.nacks(CLUSTER)[0]
    assert nack["version_info"] == "c1"           # the last accepted version stays
    assert nack["error_detail"]["code"] == 13      # INTERNAL, as Envoy
    assert "resources[0].maglev_lb_config.table_size" in nack["error_detail"]["message"], nack
    assert p.counters()["cluster_manager.cds.update_rejected"] == 1
    assert served_by(lport) == "one"
    # A bad route: NACKed by RDS, the old table keeps routing.
    cp.set(ROUTE, "r-bad", [{**route("svc"), "virtual_hosts": [{"name": "v", "domains": ["*"],
                                                                   "routes": [{"match": {"prefix": "/"}}]}]}])
    assert cp.wait(lambda: cp.nacks(ROUTE))
    assert "resources[0].virtual_hosts[0].routes[0]" in cp.nacks(ROUTE)[0]["error_detail"]["message"]
    assert p.counters()["http.ingress_http.rds.local_route.update_rejected"] == 1
    assert served_by(lport) == "one"
    # The next good push is ACKed and applied.
    cp.set(CLUSTER, "c3", [eds_cluster("svc")])
    assert cp.wait(lambda: cp.acked(CLUSTER, "c3"))


def test_ads_control_plane_dies_and_returns(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)
    assert served_by(lport) == "one"
    cp.stop()
    assert p.wait_for(lambda: p.gauges()["control_plane.connected_state"] == 0, 10)
    assert served_by(lport) == "one"               # the config in force stays
    # (_on_close sets connected_state 0, then fails each watch: update_failure comes after.)
    assert p.wait_for(lambda: p.counters().get("cluster_manager.cds.update_failure", 0) >= 1)
    before = len(cp.requests)
    cp.start()                                     # same port
    assert p.wait_for(lambda: p.gauges()["control_plane.connected_state"] == 1, 40)
    assert cp.wait(lambda: {r["type_url"] for r in cp.requests[before:]} >= {CLUSTER, LISTENER, CLA, ROUTE})
    again = {r["type_url"]: r for r in reversed(cp.requests[before:])}
    # The first request of each type on the new stream: the last accepted version, no nonce.
    first = {}
    for r in cp.requests[before:]:
        first.setdefault(r["type_url"], r)
    assert (first[CLUSTER]["version_info"], first[CLUSTER]["response_nonce"]) == ("c1", "")
    assert (first[LISTENER]["version_info"], first[LISTENER]["response_nonce"]) == ("l1", "")
    assert (first[ROUTE]["version_info"], first[ROUTE]["resource_names"]) == ("r1", ["local_route"])
    assert again
    # Updates flow again on the new stream.
    cp.set(ROUTE, "r2", [route("svc", prefix="/nowhere")])
    assert p.wait_for(lambda: get(lport)[0] == 404, 10)


def test_ads_a_thousand_clusters_in_one_push(world):
    """1,000 EDS clusters in one CDS response and their 1,000 assignments in one EDS response:
    all warm, traffic reaches one of them, one ACK each."""
    cp, ups, proxies = world
    lport = free_port()
    n = 1000
    cp.set(CLUSTER, "big", [eds_cluster(f"c{i}") for i in range(n)])
    cp.set(CLA, "big", [cla(f"c{i}", ups["one"].port if i != 777 else ups["two"].port) for i in range(n)])
    cp.set(LISTENER, "l1", [listener(lport)])
    cp.set(ROUTE, "r1", [route("c777")])
    p = start(cp, proxies)
    assert cp.wait(lambda: cp.acked(CLUSTER, "big") and cp.acked(CLA, "big"), 30)
    assert p.wait_for(lambda: p.gauges().get("cluster_manager.active_clusters") == n + 1, 30)
    assert p.wait_for(lambda: p.gauges().get("cluster_manager.warming_clusters") == 0)
    assert served_by(lport) == "two"
    assert len(cp.requests_for(CLA)[0]["resource_names"]) == n   # one EDS request for all


# -- delta (incremental) xDS: DELTA_GRPC ads_config ------------------------------------------

def test_delta_ads_sends_changes_and_removals_only(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies, "DELTA_GRPC")
    assert served_by(lport) == "one"
    for t, v in ((CLUSTER, "c1"), (CLA, "e1"), (LISTENER, "l1"), (ROUTE, "r1")):
        assert cp.wait(lambda: cp.acked(t, v)), (t, cp.requests_for(t))
    first = cp.requests_for(CLUSTER)[0]
    assert first["resource_names"] == [] and first["initial_resource_versions"] == {}   # wildcard
    assert cp.requests_for(CLA)[0]["resource_names"] == ["svc"]
    assert p.counters()["cluster_manager.cds.update_success"] == 1
    # A second cluster: only it is sent; the first is not modified.
    cp.set(CLUSTER, "c2", [eds_cluster("svc"), eds_cluster("svc2")])
    cp.set(CLA, "e2", [cla("svc", ups["one"].port), cla("svc2", ups["two"].port)])
    assert cp.wait(lambda: cp.acked(CLUSTER, "c2") and cp.acked(CLA, "e2"))
    c = p.counters()
    assert (c["cluster_manager.cluster_added"], c.get("cluster_manager.cluster_modified", 0)) == (3, 0)  # + xds_cluster
    assert cp.requests_for(CLA)[-1]["resource_names"] == []   # the ACK; the subscribe came before
    assert any(r["resource_names"] == ["svc2"] for r in cp.requests_for(CLA))
    cp.set(ROUTE, "r2", [route("svc2")])
    assert p.wait_for(lambda: served_by(lport) == "two", 10)
    # svc leaves the snapshot: removed_resources removes it; svc2 is untouched.
    cp.set(CLUSTER, "c3", [eds_cluster("svc2")])
    assert cp.wait(lambda: cp.acked(CLUSTER, "c3"))
    assert p.wait_for(lambda: p.counters().get("cluster_manager.cluster_removed", 0) == 1)
    assert p.counters().get("cluster_manager.cluster_modified", 0) == 0
    assert served_by(lport) == "two"


def test_delta_bad_push_nacked_and_a_new_stream_names_what_it_holds(world):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies, "DELTA_GRPC")
    assert served_by(lport) == "one"
    bad = eds_cluster("svc")
    bad["connect_timeout"] = "-1s"
    cp.set(CLUSTER, "c-bad", [bad])
    assert cp.wait(lambda: cp.nacks(CLUSTER))
    nack = cp.nacks(CLUSTER)[0]
    assert nack["error_detail"]["code"] == 13
    assert nack["error_detail"]["message"].startswith("resources[0].connect_timeout"), nack
    assert p.counters()["cluster_manager.cds.update_rejected"] == 1
    assert served_by(lport) == "one"
    cp.stop()
    assert p.wait_for(lambda: p.gauges()["control_plane.connected_state"] == 0, 10)
    before = len(cp.requests)
    cp.set(CLUSTER, "c1", [eds_cluster("svc")])   # back to what the proxy holds
    cp.start()
    assert p.wait_for(lambda: p.gauges()["control_plane.connected_state"] == 1, 40)
    assert cp.wait(lambda: {r["type_url"] for r in cp.requests[before:]} >= {CLUSTER, LISTENER, CLA, ROUTE})
    first = {}
    for r in cp.requests[before:]:
        first.setdefault(r["type_url"], r)
    # The accepted versions of what it holds (the refused svc is not among them: the old one is).
    assert set(first[CLUSTER]["initial_resource_versions"]) == {"svc"}
    assert set(first[LISTENER]["initial_resource_versions"]) == {"listener_0"}
    assert first[ROUTE]["resource_names"] == ["local_route"]
    assert set(first[ROUTE]["initial_resource_versions"]) == {"local_route"}
    cp.set(ROUTE, "r2", [route("svc", prefix="/nowhere")])
    assert p.wait_for(lambda: get(lport)[0] == 404, 10)


def test_initial_fetch_timeout_lets_start_up_go_on(world):
    """The control plane answers CDS but never LDS: start-up waits initial_fetch_timeout (1 s
    here), counts init_fetch_timeout, and goes on; the listener comes when LDS answers."""
    cp, ups, proxies = world
    lport = free_port()
    cp.set(CLUSTER, "c1", [eds_cluster("svc")])
    cp.set(CLA, "e1", [cla("svc", ups["one"].port)])
    cfg = bootstrap(cp.port)
    cfg["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = "1s"
    t0 = time.monotonic()
    p = ProxyUnderTest(cfg)
    proxies.append(p)
    assert 0.9 < time.monotonic() - t0 < 8
    assert p.counters()["listener_manager.lds.init_fetch_timeout"] == 1
    assert get(lport)[0] == 0                      # no listener yet
    cp.set(ROUTE, "r1", [route("svc")])
    cp.set(LISTENER, "l1", [listener(lport)])
    assert p.wait_for(lambda: served_by(lport) == "one", 10)


def test_per_type_grpc_sources_without_ads(world):
    """cds_config and lds_config each an api_config_source GRPC (their own streams, Envoy's
    StreamClusters and StreamListeners), EDS named by an api_config_source too."""
    cp, ups, proxies = world
    lport = free_port()
    grpc = {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}
    cfg = bootstrap(cp.port)
    dyn = cfg["dynamic_resources"]
    del dyn["ads_config"]
    dyn["cds_config"] = {"api_config_source": grpc, "resource_api_version": "V3"}
    dyn["lds_config"] = {"api_config_source": grpc, "resource_api_version": "V3"}
    c = eds_cluster("svc")
    c["eds_cluster_config"]["eds_config"] = {"api_config_source": grpc, "resource_api_version": "V3"}
    lis = listener(lport)
    hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = {k: v for k, v in route("svc").items() if k != "@type"}
    cp.set(CLUSTER, "c1", [c])
    cp.set(CLA, "e1", [cla("svc", ups["two"].port)])
    cp.set(LISTENER, "l1", [lis])
    p = ProxyUnderTest(cfg)
    proxies.append(p)
    assert served_by(lport) == "two"
    assert cp.streams_opened == 3                  # one stream per type
    assert p.counters()["cluster_manager.cds.update_success"] == 1


def test_a_listener_warms_until_its_routes_arrive(world):
    """After start-up, a new listener whose RDS routes have not come is bound but takes no
    traffic (warming); a replaced listener keeps serving with its old routes until the new
    ones come; then each serves by its new routes."""
    cp, ups, proxies = world
    lport, lport2 = free_port(), free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)
    assert served_by(lport) == "one"
    cp.set(LISTENER, "l2", [listener(lport), listener(lport2, "late", name="listener_1")])
    assert cp.wait(lambda: cp.acked(LISTENER, "l2"))
    assert p.gauges()["listener_manager.total_listeners_warming"] == 1
    dump = json.loads(p.admin("/config_dump")[1])
    lis = [c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")][0]
    states = {d["name"]: set(d) - {"name"} for d in lis["dynamic_listeners"]}
    assert states == {"listener_0": {"active_state"}, "listener_1": {"warming_state"}}
    assert get(lport2, timeout=0.5)[0] == 0        # nobody accepts on it yet
    # listener_0 now wants routes "late2": it keeps serving by local_route meanwhile.
    cp.set(LISTENER, "l3", [listener(lport, "late2"), listener(lport2, "late", name="listener_1")])
    assert cp.wait(lambda: cp.acked(LISTENER, "l3"))
    assert p.gauges()["listener_manager.total_listeners_warming"] == 2
    assert served_by(lport) == "one"
    cp.set(ROUTE, "r2", [route("svc"), {**route("svc", name="late"), "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                     "direct_response": {"status": 203}}]}]},
        {**route("svc", name="late2"), "virtual_hosts": [
            {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                         "direct_response": {"status": 204}}]}]}])
    assert p.wait_for(lambda: get(lport2, timeout=1)[0] == 203, 10)
    assert p.wait_for(lambda: get(lport, timeout=1)[0] == 204, 10)
    assert p.wait_for(lambda: p.gauges().get("listener_manager.total_listeners_warming") == 0)
    assert p.counters()["listener_manager.listener_added"] == 2
    assert p.counters()["listener_manager.listener_modified"] == 1


def test_keepalive_of_the_xds_cluster_closes_a_silent_connection(world):
    """The xds cluster's http2_protocol_options.connection_keepalive applies to the stream's
    connection: PINGs the control plane answers keep it; a peer that accepts and then says
    nothing is dropped after the PING timeout (start-up goes on) and the stream is retried."""
    import socket
    import threading as th
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    ka = {"interval": "0.2s", "timeout": "0.3s"}
    cfg = bootstrap(cp.port)
    opts = cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
    opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"] = {
        "http2_protocol_options": {"connection_keepalive": ka}}
    p = ProxyUnderTest(cfg)
    proxies.append(p)
    assert served_by(lport) == "one"
    time.sleep(1.5)                                # ~7 PINGs, all answered
    assert cp.streams_opened == 1 and p.gauges()["control_plane.connected_state"] == 1
    p.stop()
    # A silent peer: accepts, reads, never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                c, _ = silent.accept()
            except OSError:
                return
            accepted.append(c)
    th.Thread(target=serve, daemon=True).start()
    cfg2 = bootstrap(silent.getsockname()[1])
    cfg2["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = opts
    cfg2["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = "5s"
    t0 = time.monotonic()
    p2 = ProxyUnderTest(cfg2)
    proxies.append(p2)
    assert time.monotonic() - t0 < 4               # the stream failed at its keepalive timeout
    assert p2.wait_for(lambda: len(accepted) >= 2, 10)   # and was tried again
    assert p2.counters()["cluster_manager.cds.update_failure"] >= 1
    silent.close()
    for c in accepted:
        c.close()


# -- REST-JSON xDS -------------------------------------------------------------------------

def test_rest_polling_serves_updates_refusals_and_outages():
    from .xds_control_plane import RestControlPlane
    cp = RestControlPlane()
    ups = {n: EchoUpstream(n) for n in ("one", "two")}
    lport = free_port()
    rest = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                                  "cluster_names": ["rest_cluster"], "refresh_delay": "0.2s",
                                  "request_timeout": "1s"}, "resource_api_version": "V3"}
    cfg = {"node": {"id": "id_1", "cluster": "test"},
           "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
           "dynamic_resources": {"cds_config": rest, "lds_config": rest},
           "static_resources": {"clusters": [static_cluster("rest_cluster", cp.port)]}}
    c = eds_cluster("svc")
    c["eds_cluster_config"]["eds_config"] = rest
    lis = listener(lport)
    hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["rds"]["config_source"] = rest
    cp.set(CLUSTER, "c1", [c])
    cp.set(CLA, "e1", [cla("svc", ups["one"].port)])
    cp.set(LISTENER, "l1", [lis])
    cp.set(ROUTE, "r1", [route("svc")])
    p = ProxyUnderTest(cfg)
    try:
        assert served_by(lport) == "one"            # start-up waited for the first polls
        assert cp.requests_for(CLA)[0]["resource_names"] == ["svc"]
        assert cp.requests_for(CLUSTER)[0]["node"]["user_agent_name"] == "ftproxy"
        cp.set(CLA, "e2", [cla("svc", ups["two"].port)])
        assert p.wait_for(lambda: served_by(lport) == "two", 5)
        bad = eds_cluster("svc")
        bad["connect_timeout"] = "-1s"
        cp.set(CLUSTER, "c-bad", [bad])
        assert p.wait_for(lambda: any(r.get("error_detail") for r in cp.requests_for(CLUSTER)), 5)
        nack = [r for r in cp.requests_for(CLUSTER) if r.get("error_detail")][0]
        assert nack["version_info"] == "c1"
        assert nack["error_detail"]["message"].startswith("resources[0].connect_timeout")
        assert served_by(lport) == "two"
        assert p.counters()["cluster_manager.cds.update_rejected"] >= 1
        cp.close()                                  # the server goes away: the config stays
        assert p.wait_for(lambda: p.counters().get("cluster_manager.cds.update_failure", 0) >= 1, 5)
        assert served_by(lport) == "two"
    finally:
        p.stop()
        for u in ups.values():
            u.close()


def test_an_undecodable_message_ends_the_stream_which_is_retried(world):
    """A message that is no DiscoveryResponse: the stream is reset (as Envoy's gRPC client
    ends it), the config in force stays, and a new stream resubscribes."""
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    p = start(cp, proxies)
    assert served_by(lport) == "one"
    before = cp.streams_opened
    cp.send_raw(b"\xff\xff\xff\xff not a protobuf")
    assert p.wait_for(lambda: cp.streams_opened > before, 15)
    assert served_by(lport) == "one"
    assert p.counters()["cluster_manager.cds.update_failure"] >= 1


# -- the same client against gRPC's C core (grpcio, CPython 3.13 only) ----------------------

def test_ads_against_a_grpcio_control_plane():
    """grpcio's server (gRPC core's HTTP/2, not h2): ADS serves traffic, an update routes
    elsewhere, a bad push is NACKed with its field path and the old config keeps serving."""
    pytest.importorskip("grpc", reason="grpcio has no free-threaded wheel")
    from .xds_control_plane import GrpcioControlPlane
    cp = GrpcioControlPlane()
    ups = {n: EchoUpstream(n) for n in ("one", "two")}
    lport = free_port()
    try:
        initial(cp, ups, lport)
        p = ProxyUnderTest(bootstrap(cp.port))
        try:
            assert served_by(lport) == "one"
            assert cp.wait(lambda: cp.acked(ROUTE, "r1") and cp.acked(CLA, "e1"))
            cp.set(CLA, "e2", [cla("svc", ups["two"].port)])
            assert p.wait_for(lambda: served_by(lport) == "two", 10)
            bad = eds_cluster("svc")
            bad["connect_timeout"] = "-1s"
            cp.set(CLUSTER, "c-bad", [bad])
            assert cp.wait(lambda: cp.nacks(CLUSTER))
            nack = cp.nacks(CLUSTER)[0]
            assert (nack["version_info"], nack["error_detail"]["code"]) == ("c1", 13)
            assert nack["error_detail"]["message"].startswith("resources[0].connect_timeout")
            assert served_by(lport) == "two"
            assert p.gauges()["control_plane.connected_state"] == 1 and cp.streams_opened == 1
        finally:
            p.stop()
    finally:
        cp.close()
        for u in ups.values():
            u.close()


class HeadRecorder:
    """An h2c listener that records the request headers of the first stream each connection
    opens, then closes it (a control plane that never answers)."""

    def __init__(self) -> None:
        import socket
        import threading
        self.heads: list[dict[bytes, bytes]] = []
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="xds-heads").start()

    def _accept(self) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.events import RequestReceived
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
            h2.initiate_connection()
            s.settimeout(5)
            try:
                s.sendall(h2.data_to_send())
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    events = h2.receive_data(data)
                    s.sendall(h2.data_to_send())
                    heads = [dict(e.headers) for e in events if isinstance(e, RequestReceived)]
                    if heads:
                        self.heads.append(heads[0])
                        break
            except OSError:
                pass
            finally:
                s.close()

    def close(self) -> None:
        self.lsock.close()


def test_the_xds_stream_carries_the_grpc_services_authority_and_initial_metadata():
    """envoy_grpc.authority is the stream's :authority and initial_metadata its extra request
    headers (a control plane's credentials, as Envoy sends them)."""
    rec = HeadRecorder()
    cfg = bootstrap(rec.port)
    ads = cfg["dynamic_resources"]["ads_config"]
    ads["grpc_services"][0]["envoy_grpc"]["authority"] = "xds.example.test"
    ads["grpc_services"][0]["initial_metadata"] = [
        {"key": "authorization", "value": "Bearer t0ken"}, {"key": "x-tenant", "value": "blue"}]
    for source in ("cds_config", "lds_config"):
        cfg["dynamic_resources"][source]["initial_fetch_timeout"] = "0.2s"
    p = ProxyUnderTest(cfg)
    try:
        assert p.wait_for(lambda: rec.heads, 5)
        head = rec.heads[0]
        assert head[b":authority"] == b"xds.example.test"
        assert head[b":path"] == b"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        assert head[b"authorization"] == b"Bearer t0ken" and head[b"x-tenant"] == b"blue"
    finally:
        p.stop()
        rec.close()
