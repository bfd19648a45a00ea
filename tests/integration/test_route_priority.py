"""Route `priority: HIGH` through the real proxy: such routes are held to the cluster's HIGH
circuit breakers and use pools of their own, as in Envoy, so a DEFAULT priority overflow does
not refuse them (and the other way round). The `circuit_breakers.high.*` gauges and /clusters'
`high_priority` lines follow."""

from __future__ import annotations

import threading

import pytest

from .clients import request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster


@pytest.fixture(scope="module")
def env():
    up = EchoUpstream("prio")
    routes = [
        {"match": {"prefix": "/low/"}, "route": {"cluster": "prio", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/high/"}, "route": {"cluster": "prio", "prefix_rewrite": "/",
                                                   "priority": "HIGH"}},
    ]
    clusters = [static_cluster("prio", up.port, circuit_breakers={"thresholds": [
        {"priority": "DEFAULT", "max_requests": 1},
        {"priority": "HIGH", "max_requests": 2, "track_remaining": True}]})]
    p = ProxyUnderTest(front_proxy_config(routes, clusters))
    yield p
    p.stop()
    up.close()


def _hold(p: ProxyUnderTest, path: str, n: int) -> tuple[list[threading.Thread], list]:
    """Start `n` requests to `path` (a /delay/ on the upstream) and wait until all are in flight."""
    results: list = []
    before = p.gauges().get("cluster.prio.upstream_rq_active", 0)
    threads = [threading.Thread(target=lambda: results.append(request(p.port, path, timeout=10)))
               for _ in range(n)]
    for t in threads:
        t.start()
    assert p.wait_for(lambda: p.gauges().get("cluster.prio.upstream_rq_active") == before + n)
    return threads, results


def test_high_priority_route_passes_while_default_limit_is_full(env):
    p = env
    threads, held = _hold(p, "/low/delay/1.5", 1)
    try:
        assert request(p.port, "/low/second").status == 503   # DEFAULT max_requests 1: UO
        r = request(p.port, "/high/second")
        assert r.status == 200, r.text
        assert p.wait_for(lambda: p.gauges().get("cluster.prio.circuit_breakers.default.rq_open") == 1)
        assert p.gauges()["cluster.prio.circuit_breakers.high.rq_open"] == 0
    finally:
        for t in threads:
            t.join(10)
    assert [r.status for r in held] == [200]


def test_default_route_passes_while_high_limit_is_full(env):
    p = env
    overflow = p.counters().get("cluster.prio.upstream_rq_active_overflow", 0)
    threads, held = _hold(p, "/high/delay/1.5", 2)
    try:
        assert request(p.port, "/high/third").status == 503    # HIGH max_requests 2: UO
        assert p.counters()["cluster.prio.upstream_rq_active_overflow"] == overflow + 1
        assert request(p.port, "/low/other").status == 200
        assert p.wait_for(lambda: p.gauges().get("cluster.prio.circuit_breakers.high.rq_open") == 1)
        assert p.wait_for(lambda: p.gauges().get("cluster.prio.circuit_breakers.high.remaining_rq") == 0)
    finally:
        for t in threads:
            t.join(10)
    assert [r.status for r in held] == [200, 200]
    assert p.wait_for(lambda: p.gauges().get("cluster.prio.circuit_breakers.high.remaining_rq") == 2)


def test_clusters_lists_both_priorities_and_host_stats_count_both_pools(env):
    p = env
    request(p.port, "/low/a")
    request(p.port, "/high/b")
    status, text = p.admin("/clusters")
    assert status == 200
    lines = set(text.splitlines())
    assert "prio::default_priority::max_requests::1" in lines
    assert "prio::high_priority::max_requests::2" in lines
    total = next(int(ln.rsplit("::", 1)[1]) for ln in lines
                 if ln.startswith("prio::127.0.0.1:") and "::rq_total::" in ln)
    routed = p.counters()["cluster.prio.upstream_rq_total"]
    assert total == routed   # the host's count includes the HIGH pool's requests
