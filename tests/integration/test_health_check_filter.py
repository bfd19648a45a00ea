"""envoy.filters.http.health_check through the proxy with admin /healthcheck/fail and /ok:
while failed, health checks are answered 503 (flag LH) even in pass-through mode and every
other response carries x-envoy-immediate-health-check-fail: true; cache_time answers from the
last pass-through answer until the next period; x-envoy-upstream-healthchecked-cluster is the
node's cluster."""

from __future__ import annotations

import time

import pytest

from proxy.config.reader import ConfigError
from proxy.http.filters.health_check import parse_health_check_filter

from .clients import request
from .harness import EchoUpstream, front_proxy_config, static_cluster

_HC = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


@pytest.fixture
def up():
    u = EchoUpstream("up")
    yield u
    u.close()


def _config(up, **hc) -> dict:
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                             [static_cluster("c", up.port)],
                             http_filters=[{"name": "envoy.filters.http.health_check", "typed_config": dict(
                                 {"@type": _HC, "headers": [{"name": ":path", "string_match": {"prefix": "/status/"}}]},
                                 **hc)}, _ROUTER])
    cfg["node"] = {"id": "n", "cluster": "edge"}
    return cfg


def test_healthcheck_fail_and_ok(up, proxy_factory):
    p = proxy_factory(_config(up, pass_through_mode=True))
    r = request(p.port, "/status/200")
    assert r.status == 200 and r.headers["x-envoy-upstream-healthchecked-cluster"] == "edge"
    n = len(up.requests)
    assert p.admin("/healthcheck/fail", "POST")[0] == 200
    r = request(p.port, "/status/200")
    assert (r.status, r.body) == (503, b"")
    assert r.headers["x-envoy-upstream-healthchecked-cluster"] == "edge"
    assert len(up.requests) == n            # answered here, not passed through
    r = request(p.port, "/other")
    assert r.status == 200 and r.headers["x-envoy-immediate-health-check-fail"] == "true"
    assert p.admin("/healthcheck/ok", "POST")[0] == 200
    r = request(p.port, "/other")
    assert r.status == 200 and "x-envoy-immediate-health-check-fail" not in r.headers
    assert request(p.port, "/status/204").status == 204   # passed through again


def test_cache_time(up, proxy_factory):
    p = proxy_factory(_config(up, pass_through_mode=True, cache_time="2s"))
    time.sleep(0.05)
    assert request(p.port, "/status/503").status == 503   # passes through, cached
    n = len(up.requests)
    r = request(p.port, "/status/200")                       # the cached answer
    assert r.status == 503 and len(up.requests) == n
    time.sleep(2.1)                                           # the next period: passes again
    assert request(p.port, "/status/200").status == 200
    assert len(up.requests) == n + 1


def test_config_errors():
    with pytest.raises(ConfigError, match="pass_through_mode"):
        parse_health_check_filter({"headers": []}, "f")
    with pytest.raises(ConfigError, match="cache_time_ms must not be set when path_through_mode is disabled"):
        parse_health_check_filter({"pass_through_mode": False, "cache_time": "1s"}, "f")
