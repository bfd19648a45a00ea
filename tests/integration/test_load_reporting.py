"""Load reporting (cluster_manager.load_stats_config) through the running proxy: real traffic to
real upstreams on 127.0.0.1, reported to a real gRPC LoadReportingService server
(tests/integration/lrs_server.py, grpclib), checked per cluster and locality over intervals.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster
from .lrs_server import LrsServer

H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
INTERVAL = 0.3
# For the tests that count a burst of requests: a burst starts just after a report and ends
# well within this interval. (A request whose response comes in the interval after the one it
# was issued in, with nothing issued or in progress in its locality then, has its success or
# error dropped, by Envoy's rule: report_load_when_rq_active_is_non_zero.)
BURST_INTERVAL = 1.0


def _just_after_a_report(lrs) -> None:
    n = len(lrs.reports("svc"))
    assert lrs.wait(lambda: len(lrs.reports("svc")) > n)


def _ep(port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}


def bootstrap(lrs_port: int, one: int, two: int) -> dict:
    svc = {"name": "svc", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
           "load_assignment": {"cluster_name": "svc", "endpoints": [
               {"locality": {"region": "r", "zone": "z1"}, "lb_endpoints": [_ep(one)]},
               {"locality": {"region": "r", "zone": "z2"}, "lb_endpoints": [_ep(two)]}]}}
    empty = {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": "empty", "endpoints": []}}
    cfg = front_proxy_config([{"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
                              {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
                             [svc, empty, static_cluster("lrs", lrs_port,
                                                          typed_extension_protocol_options=H2_OPTIONS)])
    cfg["node"] = {"id": "node-1", "cluster": "test"}
    cfg["cluster_manager"] = {"load_stats_config": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]}}
    return cfg


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def world():
    lrs = LrsServer()
    one, two = EchoUpstream("one"), EchoUpstream("two")
    p = ProxyUnderTest(bootstrap(lrs.port, one.port, two.port))
    yield lrs, p
    p.stop()
    lrs.close()
    one.close()
    two.close()


def _sum(reports: list[dict], key: str, zone: str | None = None) -> int:
    return sum(int(ls.get(key, 0)) for r in reports for ls in r.get("upstream_locality_stats", [])
               if zone is None or ls.get("locality", {}).get("zone") == zone)


def test_first_request_carries_the_node_and_no_stats(world):
    lrs, p = world
    assert lrs.wait(lambda: lrs.recorded())
    first = lrs.recorded()[0]
    assert first["node"] == "node-1"
    assert "envoy.lrs.supports_send_all_clusters" in first["client_features"]
    assert first["cluster_stats"] == []
    # Envoy's name for requests sent; counted just after the send (which the server saw).
    assert p.wait_for(lambda: p.counters().get("load_reporter.responses", 0) >= 1)
    assert p.counters().get("load_reporter.requests", 0) == 0


def test_counts_per_locality_over_intervals(world):
    lrs, p = world
    assert lrs.wait(lambda: lrs.recorded())
    lrs.answer(["svc"], BURST_INTERVAL)
    assert lrs.wait(lambda: len(lrs.reports("svc")) >= 1)   # the interval has started
    assert p.wait_for(lambda: p.counters().get("load_reporter.requests") == 1)
    _just_after_a_report(lrs)
    # Six requests, round robin over the two localities: 4 answered 200, 2 answered 503.
    statuses = [get(p.port, path) for path in ("/a", "/b", "/flaky/1000/503", "/flaky/1000/503",
                                                "/c", "/d")]
    assert statuses == [200, 200, 503, 503, 200, 200]
    assert lrs.wait(lambda: _sum(lrs.reports("svc"), "total_issued_requests") >= 6)
    n = len(lrs.reports("svc"))
    assert lrs.wait(lambda: len(lrs.reports("svc")) >= n + 2)   # later intervals: nothing new
    reports = lrs.reports("svc")
    assert _sum(reports, "total_issued_requests") == 6
    assert _sum(reports, "total_successful_requests") == 4
    assert _sum(reports, "total_error_requests") == 2
    # In progress is a gauge read at each report (a report may land mid-request): none at the end.
    assert _sum(reports[-2:], "total_requests_in_progress") == 0
    for zone in ("z1", "z2"):
        assert _sum(reports, "total_issued_requests", zone) == 3
        assert (_sum(reports, "total_successful_requests", zone)
                + _sum(reports, "total_error_requests", zone)) == 3
    for r in reports:
        for ls in r.get("upstream_locality_stats", []):
            assert ls["locality"]["region"] == "r"
            assert int(ls.get("total_issued_requests", 0)) > 0
    assert reports[-1].get("upstream_locality_stats", []) == []   # an idle interval
    # Each report's interval is the measured time since the last: the configured one, or more
    # when the main thread is late (a loaded machine), never much less.
    for r in reports[1:]:
        secs = float(r["load_report_interval"].rstrip("s"))
        assert 0.9 * BURST_INTERVAL <= secs <= 5 * BURST_INTERVAL, r
    assert "empty" not in {cs["cluster_name"] for req in lrs.recorded() for cs in req["cluster_stats"]}


def test_send_all_clusters_and_no_healthy_upstream_is_no_drop(world):
    """Every cluster is reported; "no healthy upstream" answers are not dropped requests (Envoy
    counts only maintenance mode's refusals there; tests/differential checks it)."""
    lrs, p = world
    assert lrs.wait(lambda: lrs.recorded())
    lrs.answer([], INTERVAL, send_all=True)
    assert lrs.wait(lambda: len(lrs.reports("empty")) >= 1)
    assert [get(p.port, "/empty/x") for _ in range(3)] == [503, 503, 503]
    assert get(p.port, "/x") == 200
    assert lrs.wait(lambda: _sum(lrs.reports("svc"), "total_issued_requests") >= 1)
    lrs.wait(lambda: False, INTERVAL * 2)
    assert sum(int(r.get("total_dropped_requests", 0)) for r in lrs.reports("empty")) == 0
    assert all(r.get("upstream_locality_stats", []) == [] for r in lrs.reports("empty"))
    assert _sum(lrs.reports("svc"), "total_issued_requests") == 1
    names = {cs["cluster_name"] for req in lrs.recorded() for cs in req["cluster_stats"]}
    assert names == {"svc", "empty", "lrs"}


def test_stream_loss_counts_an_error_and_retries(world):
    lrs, p = world
    assert lrs.wait(lambda: lrs.recorded())
    lrs.answer(["svc"], INTERVAL)
    assert lrs.wait(lambda: len(lrs.reports("svc")) >= 1)
    lrs.stop()
    assert p.wait_for(lambda: p.counters().get("load_reporter.errors", 0) >= 1, 5)
    assert get(p.port, "/during") == 200      # traffic is not held up by the reporter
    lrs.start()
    # Envoy retries after 5 s; the new stream sends the node first, and once answered the
    # request made while the stream was down is reported (the cluster stayed tracked).
    assert p.wait_for(lambda: p.counters().get("load_reporter.retries", 0) >= 1, 8)
    assert lrs.wait(lambda: lrs.streams_opened >= 2, 5)
    assert lrs.wait(lambda: _sum(lrs.reports("svc"), "total_issued_requests") >= 1, 5)
    assert lrs.recorded()[-1]["node"] == "node-1"


def test_endpoint_granularity_and_the_lrs_clusters_stats(world):
    lrs, p = world
    assert lrs.wait(lambda: lrs.recorded())
    lrs.answer(["svc"], INTERVAL, endpoints=True)
    assert lrs.wait(lambda: len(lrs.reports("svc")) >= 1)
    assert [get(p.port, f"/{i}") for i in range(4)] == [200] * 4
    assert lrs.wait(lambda: _sum(lrs.reports("svc"), "total_issued_requests") >= 4)
    ports = {}
    for r in lrs.reports("svc"):
        for ls in r.get("upstream_locality_stats", []):
            eps = ls.get("upstream_endpoint_stats", [])
            assert sum(int(e.get("total_issued_requests", 0)) for e in eps) == int(ls["total_issued_requests"])
            for e in eps:
                sa = e["address"]["socket_address"]
                assert sa["address"] == "127.0.0.1"
                ports[sa["port_value"]] = ports.get(sa["port_value"], 0) + int(e["total_issued_requests"])
    assert sorted(ports.values()) == [2, 2]          # round robin: two hosts, two each
    # The stream's own cluster counts it as Envoy's gRPC client does (one stream, answered 200).
    c = p.counters()
    assert c["cluster.lrs.upstream_rq_total"] == 1 and c["cluster.lrs.upstream_cx_total"] == 1
    assert c["cluster.lrs.upstream_rq_200"] == 1 and c["cluster.lrs.upstream_rq_2xx"] == 1


def test_two_workers_counts_are_summed():
    """Each worker keeps its own pools' counters: the report sums them."""
    lrs = LrsServer()
    one, two = EchoUpstream("one"), EchoUpstream("two")
    p = ProxyUnderTest(bootstrap(lrs.port, one.port, two.port), concurrency=2)
    try:
        assert lrs.wait(lambda: lrs.recorded())
        lrs.answer(["svc"], BURST_INTERVAL)
        assert p.wait_for(lambda: p.counters().get("load_reporter.requests") == 1)
        _just_after_a_report(lrs)
        assert [get(p.port, f"/{i}") for i in range(10)] == [200] * 10
        assert lrs.wait(lambda: _sum(lrs.reports("svc"), "total_issued_requests") >= 10)
        n = len(lrs.reports("svc"))
        assert lrs.wait(lambda: len(lrs.reports("svc")) >= n + 2)
        reports = lrs.reports("svc")
        assert _sum(reports, "total_issued_requests") == 10
        assert _sum(reports, "total_successful_requests") == 10
        assert len(one.requests) + len(two.requests) == 10
        assert _sum(reports, "total_issued_requests", "z1") == len(one.requests)
        assert _sum(reports, "total_issued_requests", "z2") == len(two.requests)
    finally:
        p.stop()
        lrs.close()
        one.close()
        two.close()
