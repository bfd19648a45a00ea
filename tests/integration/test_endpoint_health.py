"""Endpoint health_status through the proxy: Envoy's load balancer skips UNHEALTHY, DRAINING
and TIMEOUT endpoints, gives DEGRADED ones the load the healthy ones cannot take (with the
overprovisioning factor 1.4: 30 % when half the hosts are healthy), and balances over
every endpoint (panic, counted in lb_healthy_panic) when fewer than half are healthy or
degraded (common_lb_config.healthy_panic_threshold's default, 50 %)."""

from __future__ import annotations

import pytest

from .clients import echo, request
from .harness import EchoUpstream, front_proxy_config


@pytest.fixture(scope="module")
def ups():
    servers = [EchoUpstream(f"s{i}") for i in range(3)]
    yield servers
    for s in servers:
        s.close()


def _cluster(name: str, endpoints: list[tuple[EchoUpstream, str]]) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"health_status": status, "endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": up.port}}}}
                for up, status in endpoints]}]}}


def _served_by(port: int, path: str, n: int = 12) -> set[str]:
    return {echo(port, path)["server"] for _ in range(n)}


def test_health_status_steers_the_load_balancer(ups, proxy_factory):
    s0, s1, s2 = ups
    clusters = [
        _cluster("half", [(s0, "HEALTHY"), (s1, "UNHEALTHY")]),          # 50 %: no panic
        _cluster("draining", [(s0, "UNKNOWN"), (s1, "DRAINING"), (s2, "TIMEOUT")]),  # 33 %: panic
        _cluster("degraded", [(s0, "DEGRADED"), (s1, "HEALTHY")]),       # 70 % / 30 %
        _cluster("only_degraded", [(s0, "DEGRADED"), (s1, "UNHEALTHY")]),  # degraded used
    ]
    routes = [{"match": {"prefix": f"/{c['name']}"}, "route": {"cluster": c["name"]}} for c in clusters]
    p = proxy_factory(front_proxy_config(routes, clusters))
    assert _served_by(p.port, "/half") == {"s0"}
    served = [echo(p.port, "/degraded")["server"] for _ in range(60)]
    assert set(served) == {"s0", "s1"} and served.count("s1") > served.count("s0")
    assert _served_by(p.port, "/only_degraded") == {"s0"}
    assert _served_by(p.port, "/draining") == {"s0", "s1", "s2"}  # round robin over all three
    c, g = p.counters(), p.gauges()
    assert c.get("cluster.draining.lb_healthy_panic") == 12
    assert c.get("cluster.half.lb_healthy_panic", 0) == 0
    assert (g["cluster.half.membership_healthy"], g["cluster.half.membership_total"]) == (1, 2)
    assert g["cluster.degraded.membership_degraded"] == 1
    status, text = p.admin("/clusters")
    assert status == 200
    flags = {line.split("::")[1]: line.rsplit("::", 1)[1] for line in text.splitlines()
             if line.startswith("half::") and line.endswith(("healthy", "_health"))
             and "::health_flags::" in line}
    assert flags == {f"127.0.0.1:{s0.port}": "healthy", f"127.0.0.1:{s1.port}": "/failed_eds_health"}


def test_healthy_panic_threshold_is_configurable(ups, proxy_factory):
    """common_lb_config.healthy_panic_threshold: at 30 % one healthy host of three (33 %) is
    no panic; at 0 panic is off, and with no healthy host the answer is 503 UH."""
    s0, s1, s2 = ups
    third = [(s0, "HEALTHY"), (s1, "UNHEALTHY"), (s2, "UNHEALTHY")]
    low = _cluster("low", third)
    low["common_lb_config"] = {"healthy_panic_threshold": {"value": 30}}
    off = _cluster("off", [(s0, "UNHEALTHY"), (s1, "TIMEOUT")])
    off["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    clusters = [low, off]
    routes = [{"match": {"prefix": f"/{c['name']}"}, "route": {"cluster": c["name"]}} for c in clusters]
    p = proxy_factory(front_proxy_config(routes, clusters))
    assert _served_by(p.port, "/low") == {"s0"}
    r = request(p.port, "/off")
    assert (r.status, r.body) == (503, b"no healthy upstream")
    c = p.counters()
    assert c.get("cluster.low.lb_healthy_panic", 0) == 0
    assert c.get("cluster.off.upstream_cx_none_healthy") == 1
