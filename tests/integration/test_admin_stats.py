"""Stats and the admin endpoints of a running proxy, read over real HTTP from the admin port."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .clients import RawUpstream, closed_port, echo, read_request_head, request
from .harness import front_proxy_config, static_cluster

N = 5
# Envoy names listener stats after the configured address (port 0 here), not the bound port.
LISTENER = "listener.127.0.0.1_0"


def _config(upstream_port: int) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", upstream_port)])


@pytest.fixture
def proxy(upstream, proxy_factory):
    return proxy_factory(_config(upstream.port))


@pytest.fixture
def busy_proxy(proxy):
    """A proxy that has served N requests, each on its own connection."""
    for _ in range(N):
        echo(proxy.port, "/")
    assert proxy.wait_for(lambda: proxy.counters().get("http.ingress_http.downstream_rq_2xx") == N)
    return proxy


def _stats_text(p, query: str = "") -> dict[str, str]:
    status, body = p.admin("/stats" + query)
    assert status == 200
    return dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)


# -- counters ---------------------------------------------------------------------------------
def test_counters_count_requests_and_connections(busy_proxy):
    c = busy_proxy.counters()
    assert c["http.ingress_http.downstream_rq_total"] == N
    assert c["http.ingress_http.downstream_rq_2xx"] == N
    assert c["cluster.c1.upstream_rq_total"] == N
    assert c["cluster.c1.upstream_rq_200"] == N
    assert c[f"{LISTENER}.downstream_cx_total"] == N
    assert c["http.ingress_http.downstream_cx_total"] == N


def test_stats_text_lists_counters_with_values(busy_proxy):
    stats = _stats_text(busy_proxy)
    assert stats["cluster.c1.upstream_rq_total"] == str(N)
    assert stats["http.ingress_http.downstream_rq_2xx"] == str(N)


def test_stats_json_format(busy_proxy):
    status, body = busy_proxy.admin("/stats?format=json")
    assert status == 200
    values = {s["name"]: s.get("value") for s in json.loads(body)["stats"] if "name" in s}
    assert values["cluster.c1.upstream_rq_total"] == N


def test_stats_filter_keeps_only_matching_names(busy_proxy):
    stats = _stats_text(busy_proxy, "?filter=upstream_rq_2")
    assert stats and all("upstream_rq_2" in name for name in stats)
    assert stats["cluster.c1.upstream_rq_200"] == str(N)


def test_prometheus_output_parses_and_has_cluster_label(busy_proxy):
    status, body = busy_proxy.admin("/stats/prometheus")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples[("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "c1"),))] == N
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="c1"} 5' in body


# -- admin endpoints ---------------------------------------------------------------------------
def test_clusters_shows_host_and_request_counts(busy_proxy, upstream):
    status, body = busy_proxy.admin("/clusters")
    assert status == 200
    assert f"c1::127.0.0.1:{upstream.port}::rq_total::{N}" in body.splitlines()
    assert f"c1::127.0.0.1:{upstream.port}::health_flags::healthy" in body.splitlines()


def test_listeners_shows_bound_port(proxy):
    status, body = proxy.admin("/listeners")
    assert status == 200
    assert f"listener_0::127.0.0.1:{proxy.port}" in body.splitlines()


def test_config_dump_is_json_with_listener_and_cluster(proxy):
    status, body = proxy.admin("/config_dump")
    assert status == 200
    dump = json.loads(body)
    (boot,) = [c for c in dump["configs"] if c["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"]
    static = boot["bootstrap"]["static_resources"]
    assert [lis["name"] for lis in static["listeners"]] == ["listener_0"]
    assert [c["name"] for c in static["clusters"]] == ["c1"]


def test_server_info_reports_gil_and_concurrency(proxy):
    status, body = proxy.admin("/server_info")
    assert status == 200
    info = json.loads(body)
    assert info["python"]["gil_enabled"] is getattr(sys, "_is_gil_enabled", lambda: True)()
    assert info["command_line_options"]["concurrency"] == 1
    assert info["state"] == "LIVE"


def test_ready_is_200_live(proxy):
    assert proxy.admin("/ready") == (200, "LIVE\n")


def test_healthcheck_fail_makes_ready_503(proxy):
    assert proxy.admin("/healthcheck/fail", "POST")[0] == 200
    status, body = proxy.admin("/ready")
    assert status == 503
    assert body == "DRAINING\n"  # Envoy: a failed health check reports the server as draining
    assert proxy.admin("/healthcheck/ok", "POST")[0] == 200
    assert proxy.admin("/ready")[0] == 200


def test_quitquitquit_requires_post(proxy):
    status, _ = proxy.admin("/quitquitquit")
    assert status == 405  # (Envoy 1.40: Method GET not allowed)
    assert proxy.admin("/ready")[0] == 200        # still running
    assert echo(proxy.port, "/")["server"] == "service1"


# -- workers ------------------------------------------------------------------------------------
def test_concurrency_two_spreads_connections_over_both_workers(upstream, proxy_factory):
    p = proxy_factory(_config(upstream.port), concurrency=2)
    conns = 64
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.close()
    key0, key1 = f"{LISTENER}.worker_0.downstream_cx_total", f"{LISTENER}.worker_1.downstream_cx_total"
    assert p.wait_for(lambda: p.counters().get(f"{LISTENER}.downstream_cx_total") == conns)
    c = p.counters()
    assert c.get(key0, 0) > 0 and c.get(key1, 0) > 0, (c.get(key0), c.get(key1))
    assert c[key0] + c[key1] == conns


def test_byte_and_connection_gauges_are_counted_while_connections_stay_open(upstream, proxy_factory):
    from .harness import front_proxy_config as _cfg, static_cluster as _sc
    p = proxy_factory(_cfg([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                           [_sc("backend", upstream.port)]))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        received = 0   # every byte the proxy sent on this keep-alive connection
        for _ in range(3):
            s.sendall(b"GET /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                              if k.lower() == b"content-length"))
            while len(body) < length:
                body += s.recv(65536)
            assert len(body) == length == 1000
            received += len(head) + 4 + len(body)
        # The connection is still open: the totals already hold exactly the bytes sent on it
        # (the upstream side's include the upstream's own headers, unknown here).
        assert p.wait_for(lambda: p.counters()["http.ingress_http.downstream_cx_tx_bytes_total"] == received), \
            (p.counters()["http.ingress_http.downstream_cx_tx_bytes_total"], received)
        assert p.counters()["cluster.backend.upstream_cx_rx_bytes_total"] > 3000
        assert p.gauges()["server.total_connections"] == 1
    finally:
        s.close()


def test_upstream_byte_counters_equal_the_bytes_on_the_upstream_wire(proxy_factory, codec):
    """cluster.<name>.upstream_cx_{tx,rx}_bytes_total: exactly the bytes the upstream received
    (request heads, a content-length body, a chunked body with its framing) and sent."""
    from .harness import front_proxy_config as _cfg, static_cluster as _sc
    from .servers import RawHttpUpstream, read_response
    canned = {"one": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"}
    u = RawHttpUpstream(record=True, canned=canned)
    try:
        p = proxy_factory(_cfg([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                               [_sc("backend", u.port)]), codec=codec)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            for req in (b"GET /raw/one HTTP/1.1\r\nHost: a\r\n\r\n",
                        b"POST /raw/one HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\n\r\nbody",
                        b"POST /raw/one HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n"):
                s.sendall(req)
                assert read_response(s).body == b"hello"
        finally:
            s.close()
        sent = len(u.received_bytes())
        assert sent > 3 * 40
        assert p.wait_for(lambda: p.counters()["cluster.backend.upstream_cx_tx_bytes_total"] == sent), \
            (p.counters()["cluster.backend.upstream_cx_tx_bytes_total"], sent)
        assert p.counters()["cluster.backend.upstream_cx_rx_bytes_total"] == 3 * len(canned["one"])
    finally:
        u.close()


def test_router_dynamic_stats_false_skips_per_code_stats_and_upstream_rq_time(upstream, proxy_factory):
    """Envoy's router `dynamic_stats: false`: no upstream_rq_<code>/<class>xx/completed and no
    upstream_rq_time; upstream_rq_total and the host's rq_success still count."""
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "dynamic_stats": False}}
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)], http_filters=[router]))
    for _ in range(N):
        echo(p.port, "/")
    counters = p.counters()
    assert counters["cluster.c1.upstream_rq_total"] == N
    assert counters.get("cluster.c1.upstream_rq_200", 0) == 0
    assert counters.get("cluster.c1.upstream_rq_2xx", 0) == 0
    assert counters.get("cluster.c1.upstream_rq_completed", 0) == 0
    assert counters.get("cluster.c1.external.upstream_rq_200", 0) == 0
    assert counters.get("cluster.c1.external.upstream_rq_completed", 0) == 0
    status, body = p.admin("/stats/prometheus")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples.get(("envoy_cluster_upstream_rq_time_count", (("envoy_cluster_name", "c1"),)), 0) == 0
    assert f"c1::127.0.0.1:{upstream.port}::rq_success::{N}" in p.admin("/clusters")[1].splitlines()


def test_router_dynamic_stats_default_counts_per_code_and_upstream_rq_time(busy_proxy):
    counters = busy_proxy.counters()
    assert counters["cluster.c1.upstream_rq_200"] == N
    assert counters["cluster.c1.upstream_rq_completed"] == N
    status, body = busy_proxy.admin("/stats/prometheus")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples[("envoy_cluster_upstream_rq_time_count", (("envoy_cluster_name", "c1"),))] == N


def test_responses_are_also_charged_to_envoys_external_category(busy_proxy):
    """Envoy charges every external request's response to cluster.<name>.external.* as well
    (every request is external here); with tag extraction, Prometheus shows them as
    envoy_cluster_external_upstream_rq{envoy_response_code=...}."""
    counters = busy_proxy.counters()
    assert counters["cluster.c1.external.upstream_rq_200"] == N
    assert counters["cluster.c1.external.upstream_rq_2xx"] == N
    assert counters["cluster.c1.external.upstream_rq_completed"] == N
    assert counters.get("cluster.c1.external.upstream_rq_5xx", 0) == 0
    status, body = busy_proxy.admin("/stats/prometheus")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    code = (("envoy_cluster_name", "c1"), ("envoy_response_code", "200"))
    assert samples[("envoy_cluster_external_upstream_rq_total", code)] == N
    assert samples[("envoy_cluster_external_upstream_rq_time_count", (("envoy_cluster_name", "c1"),))] == N


def test_upstream_rq_time_runs_to_the_end_of_the_response_and_not_for_local_replies(proxy_factory):
    """Envoy records upstream_rq_time when the upstream response is complete (from the end of
    the downstream request), not at its headers; a reply the router makes (503 UF) counts
    upstream_rq_503 but no time."""

    def slow_body(sock):
        read_request_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        time.sleep(0.4)
        sock.sendall(b"body")
        sock.close()

    raw = RawUpstream(slow_body)
    try:
        p = proxy_factory(front_proxy_config(
            [{"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
             {"match": {"prefix": "/"}, "route": {"cluster": "slow"}}],
            [static_cluster("slow", raw.port), static_cluster("dead", closed_port())]))
        r = request(p.port, "/")
        assert r.status == 200 and r.body == b"body"
        assert request(p.port, "/dead").status == 503
        assert p.counters()["cluster.dead.upstream_rq_503"] == 1
        _, body = p.admin("/stats/prometheus")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(body) for s in fam.samples}
        slow = (("envoy_cluster_name", "slow"),)
        assert samples[("envoy_cluster_upstream_rq_time_count", slow)] == 1
        assert samples[("envoy_cluster_upstream_rq_time_sum", slow)] >= 400
        assert samples.get(("envoy_cluster_upstream_rq_time_count", (("envoy_cluster_name", "dead"),)), 0) == 0
    finally:
        raw.close()


def test_per_listener_http_stats(upstream, proxy_factory):
    """Envoy's listener.<listener prefix>.http.<hcm prefix>.downstream_rq_<class> and
    downstream_rq_completed, beside the HCM's own."""
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/ok"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)]))
    for _ in range(3):
        echo(p.port, "/ok")
    assert request(p.port, "/missing").status == 404
    counters = p.counters()
    prefix = "listener.127.0.0.1_0.http.ingress_http."
    assert counters[prefix + "downstream_rq_2xx"] == 3
    assert counters[prefix + "downstream_rq_4xx"] == 1
    assert counters[prefix + "downstream_rq_completed"] == 4
    assert counters["http.ingress_http.downstream_rq_completed"] == 4


def test_a_client_closing_counts_as_destroy_remote(upstream, proxy_factory):
    """Envoy: a connection the client closes is downstream_cx_destroy_remote; one the proxy
    closes (connection: close) is downstream_cx_destroy_local."""
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)]))
    for _ in range(3):
        echo(p.port, "/")  # http.client closes its connection after each response
    echo(p.port, "/", headers={"connection": "close"})
    # (The HCM's on_close counts downstream_cx_destroy before its _remote or _local: wait for
    # those too.)
    destroyed = lambda: tuple(p.counters().get(f"http.ingress_http.downstream_cx_destroy{k}")  # noqa: E731
                              for k in ("", "_remote", "_local"))
    assert p.wait_for(lambda: destroyed() == (4, 3, 1)), destroyed()


def test_upstream_rq_time_appears_with_its_first_sample(proxy):
    """As Envoy: cluster.<name>.upstream_rq_time (and its external.* twin) is made when the
    first response is timed; before that /stats has no such histogram."""
    before = _stats_text(proxy)
    assert not any(k.endswith("upstream_rq_time") and k.startswith("cluster.") for k in before)
    echo(proxy.port, "/timed")
    after = _stats_text(proxy)
    timed = [k for k in after if k.startswith("cluster.") and k.endswith("upstream_rq_time")]
    assert sorted(timed) == ["cluster.c1.external.upstream_rq_time",
                             "cluster.c1.upstream_rq_time"], timed
    assert after["cluster.c1.upstream_rq_time"].startswith("P0(")
