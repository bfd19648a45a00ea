"""xDS over REST against real Envoy: one REST-JSON control plane
(tests/integration/xds_control_plane.py RestControlPlane) polled by real Envoy 1.40 and ftproxy
(`api_type: REST` for CDS, LDS, and the EDS and RDS their resources name); after each step both
answer the same requests the same way and count the same successes. Polls repeat every
refresh_delay, so counts that grow with time (update_attempt, and update_rejected while a bad
version is served) are compared as "more than before", not as numbers.
"""

from __future__ import annotations

import json
import time

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLA, CLUSTER, LISTENER, ROUTE, RestControlPlane

from .proxies import PortReservation
from .test_xds_grpc import HCM, ROUTER, Proxy

SOURCES = ("listener_manager.lds", "cluster_manager.cds", "http.ingress_http.rds.local_route", "cluster.dyn")


def rest_source() -> dict:
    return {"resource_api_version": "V3", "api_config_source": {
        "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["rest_cluster"],
        "refresh_delay": "0.2s", "request_timeout": "1s"}}


def test_rest_steps_agree_with_real_envoy(tmp_path):
    s1, s2 = EchoUpstream("service1"), EchoUpstream("service2")
    cp = RestControlPlane()
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports, cp.port, "GRPC"), Proxy("ftproxy", tmp_path, ports, cp.port, "GRPC")]
    ports.release()
    for p in proxies:   # the same bootstrap, polled over REST from a plain HTTP/1.1 cluster
        boot = json.loads((p.dir / "bootstrap.json").read_text())
        boot["dynamic_resources"] = {"cds_config": rest_source(), "lds_config": rest_source()}
        c = boot["static_resources"]["clusters"][0]
        c["name"] = c["load_assignment"]["cluster_name"] = "rest_cluster"
        del c["typed_extension_protocol_options"]
        (p.dir / "bootstrap.json").write_text(json.dumps(boot))
    # This control plane serves every node the same resources, and each proxy needs its own
    # listener port: the two run one after the other over the same steps.
    eds = {"@type": CLUSTER, "name": "dyn", "type": "EDS", "connect_timeout": "1s",
           "eds_cluster_config": {"eds_config": rest_source()}}

    def cla(port: int) -> dict:
        return {"@type": CLA, "cluster_name": "dyn", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}

    def routes(cluster: str) -> dict:
        return {"@type": ROUTE, "name": "local_route", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}

    steps = [
        ("initial", [(CLUSTER, "c1", [eds]), (CLA, "e1", [cla(s1.port)]), (ROUTE, "r1", [routes("dyn")])]),
        ("eds moves dyn to service2", [(CLA, "e2", [cla(s2.port)])]),
        ("cds: a negative connect_timeout is refused", [(CLUSTER, "c2", [{**eds, "connect_timeout": "-1s"}])]),
        ("rds: a route to a missing cluster", [(ROUTE, "r2", [routes("nope")])]),
    ]
    problems = []
    results: dict[str, list] = {}
    try:
        for p in proxies:
            lport = p.listener_ports["l1"]
            listener = {"@type": LISTENER, "name": "l1", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": lport}}, "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                        "@type": HCM, "stat_prefix": "ingress_http", "http_filters": [ROUTER],
                        "rds": {"route_config_name": "local_route", "config_source": rest_source()}}}]}]}
            cp.set(LISTENER, "l1", [listener])   # the same version, its own port
            out = []
            for type_url in (CLUSTER, CLA, ROUTE):
                cp.snapshot.pop(type_url, None)
            for name, pushes in steps:
                for type_url, version, items in pushes:
                    cp.set(type_url, version, items)
                if name == "initial":
                    p.start()
                time.sleep(1.5)   # several polls
                stats = p.stats_of([f"{s}.{k}" for s in SOURCES for k in
                                    ("update_success", "update_rejected", "version")])
                status, body = p.get(lport)
                served = json.loads(body).get("server") if status == 200 else None
                out.append((name, (status, served), {k: v for k, v in stats.items()
                                                     if not k.endswith("update_rejected")},
                            {k: int(v) > 0 for k, v in stats.items() if k.endswith("update_rejected")}))
            p.stop()
            results[p.kind] = out
        for (name, ea, es, er), (_, fa, fs, fr) in zip(results["envoy"], results["ftproxy"]):
            if ea != fa:
                problems.append(f"{name}: answers differ: envoy {ea} ftproxy {fa}")
            if es != fs:
                problems.append(f"{name}: stats differ: envoy {es} ftproxy {fs}")
            if er != fr:
                problems.append(f"{name}: rejections differ: envoy {er} ftproxy {fr}")
    finally:
        for p in proxies:
            p.stop()
        cp.close()
        s1.close()
        s2.close()
    assert not problems, "\n".join(problems)
