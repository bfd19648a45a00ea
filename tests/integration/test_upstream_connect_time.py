"""`cluster.<name>.upstream_cx_connect_ms` (Envoy: a histogram of the time from starting an
upstream connect to the connection being up, in ms), read from the running proxy's /stats:
once per upstream connection, for the HTTP pool and for tcp_proxy; never for a failed one."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

from .clients import echo
from .harness import front_proxy_config, static_cluster
from tests.ports import free_port

from .servers import TcpEchoUpstream
from .test_tcp_proxy import tcp_proxy_config


def _prometheus(p) -> dict:
    status, body = p.admin("/stats/prometheus")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def _stats_line(p, name: str) -> str:
    status, body = p.admin("/stats?filter=" + name)
    assert status == 200
    return next(line for line in body.splitlines() if line.startswith(name + ":"))


def test_http_upstream_connect_time_is_recorded_once_per_upstream_connection(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)]))
    for _ in range(3):
        echo(p.port, "/")
    assert p.wait_for(lambda: p.counters().get("cluster.c1.upstream_rq_completed") == 3)
    line = _stats_line(p, "cluster.c1.upstream_cx_connect_ms")
    assert "P50(" in line and "No recorded values" not in line, line
    samples = _prometheus(p)
    count = samples[("envoy_cluster_upstream_cx_connect_ms_count", (("envoy_cluster_name", "c1"),))]
    assert count == p.counters()["cluster.c1.upstream_cx_total"] >= 1


def test_tcp_proxy_upstream_connect_time_is_recorded(proxy_factory):
    up = TcpEchoUpstream()
    try:
        p = proxy_factory(tcp_proxy_config(up.port))
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
        assert p.wait_for(lambda: p.counters().get("cluster.echo.upstream_cx_total") == 2)
        line = _stats_line(p, "cluster.echo.upstream_cx_connect_ms")
        assert "No recorded values" not in line, line
        samples = _prometheus(p)
        assert samples[("envoy_cluster_upstream_cx_connect_ms_count", (("envoy_cluster_name", "echo"),))] == 2
    finally:
        up.close()


def test_a_failed_connect_records_no_connect_time(proxy_factory):
    p = proxy_factory(tcp_proxy_config(free_port()))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        assert s.recv(1) == b""  # closed: the upstream refused
    assert p.wait_for(lambda: p.counters().get("cluster.echo.upstream_cx_connect_fail") == 1)
    line = _stats_line(p, "cluster.echo.upstream_cx_connect_ms")
    assert "No recorded values" in line
