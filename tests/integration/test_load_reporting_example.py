"""envoyproxy/examples load-reporting-service (tests/envoy_examples/load-reporting-service,
loaded as published) run as its verify.sh describes, with the test LRS server
(tests/integration/lrs_server.py) answering as the example's Go server does (clusters
["local_service"], every 2 s, endpoint granularity): requests to /service/load reach the
service, the proxy's stats show the load_reporting_cluster stream answered 200, and the
server gets the local_service stats."""

from __future__ import annotations

import yaml

from tests.integration.lrs_server import LrsServer
from tests.integration.test_envoy_examples import EXAMPLES, ExampleService, RunningExample


def test_load_reporting_service_example():
    raw = yaml.safe_load((EXAMPLES / "load-reporting-service" / "envoy.yaml").read_text())
    assert raw["cluster_manager"]["load_stats_config"]["grpc_services"][0]["envoy_grpc"][
        "cluster_name"] == "load_reporting_cluster"
    lrs = LrsServer()
    svc = ExampleService("http_service")
    lrs.answer(["local_service"], 2.0, endpoints=True)   # the example's lrs_server.go
    ex = None
    try:
        ex = RunningExample("load-reporting-service/envoy.yaml",
                            {"http_service": svc.port, "lrs_server": lrs.port})
        import urllib.request
        # The server's answer starts the interval: requests before it are not reported.
        assert lrs.wait(lambda: ex.server.stats.snapshot().counters.get("load_reporter.requests") == 1)
        for _ in range(10):                      # send_requests.sh (fewer)
            with urllib.request.urlopen(f"http://127.0.0.1:{ex.port()}/service/load", timeout=5) as r:
                assert r.status == 200
        assert len(svc.requests) == 10
        counters = dict(ex.server.stats.snapshot().counters)
        assert counters["cluster.load_reporting_cluster.upstream_rq_200"] == 1   # verify.sh
        assert lrs.wait(lambda: sum(int(ls.get("total_issued_requests", 0))
                                    for cs in lrs.reports("local_service")
                                    for ls in cs.get("upstream_locality_stats", [])) == 10, 8), \
            lrs.recorded()
        first = lrs.recorded()[0]
        assert first["cluster_stats"] == [] and first["node"] == ""
        stats = [cs for cs in lrs.reports("local_service") if cs.get("upstream_locality_stats")]
        assert stats[0]["upstream_locality_stats"][0]["upstream_endpoint_stats"][0]["address"][
            "socket_address"]["port_value"] == svc.port
    finally:
        if ex is not None:
            ex.stop()
        lrs.close()
        svc.close()
