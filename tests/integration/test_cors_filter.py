"""`envoy.filters.http.cors` through the real proxy: preflights answered by the filter with the
policy merged field by field from route, virtual host and route configuration; allowed origins
get their headers on upstream responses and on local replies (the encoder chain sees those
too); not-matching preflights go upstream; direct-response routes are left alone; shadow mode
only counts; a route can disable the filter (FilterConfig). Behaviour checked against Envoy 1.40.
"""

from __future__ import annotations

import pytest

from .clients import closed_port, request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
CORS = {"name": "envoy.filters.http.cors", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}


def policy(**fields) -> dict:
    return {"envoy.filters.http.cors": {"@type": POLICY, **fields}}


@pytest.fixture(scope="module")
def env():
    up = EchoUpstream("svc")
    routes = [
        {"match": {"prefix": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/shadow"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": policy(
             filter_enabled={"default_value": {"numerator": 0}},
             shadow_enabled={"default_value": {"numerator": 100}})},
        {"match": {"prefix": "/strict"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": policy(forward_not_matching_preflights=False)},
        {"match": {"prefix": "/off"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": {"envoy.filters.http.cors": {
             "@type": FILTER_CONFIG, "disabled": True}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": policy(allow_methods="*")},
    ]
    cfg = front_proxy_config(routes, [static_cluster("svc", up.port),
                                      static_cluster("dead", closed_port())],
                             http_filters=[CORS, ROUTER])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    rc = hcm["route_config"]
    rc["typed_per_filter_config"] = policy(max_age="600")
    rc["virtual_hosts"][0]["typed_per_filter_config"] = policy(
        allow_origin_string_match=[{"exact": "http://a.test"}], allow_methods="GET, PUT",
        allow_headers="*", expose_headers="x-e", allow_credentials=True)
    proxy = ProxyUnderTest(cfg)
    yield proxy, up
    proxy.stop()
    up.close()


def preflight(proxy, path, origin, **extra):
    headers = {"origin": origin, "access-control-request-method": "DELETE",
               "access-control-request-headers": "x-a, x-b", **extra}
    return request(proxy.port, path, method="OPTIONS", headers=headers)


def forwarded_options(up, before: int) -> bool:
    """The upstream (which answers OPTIONS with 501) got the preflight."""
    return [m for m, *_ in up.requests[before:]] == ["OPTIONS"]


def test_preflight_is_answered_with_the_merged_policy(env):
    proxy, up = env
    before = len(up.requests)
    r = preflight(proxy, "/p", "http://a.test")
    assert r.status == 200 and r.body == b""
    h = r.headers
    assert h["access-control-allow-origin"] == "http://a.test"
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-allow-methods"] == "DELETE"      # route: "*" echoes the request's
    assert h["access-control-allow-headers"] == "x-a, x-b"    # vhost: "*"
    assert h["access-control-max-age"] == "600"               # route configuration level
    assert h["access-control-expose-headers"] == "x-e"        # the encoder side adds it too
    assert h["content-length"] == "0"
    assert len(up.requests) == before  # never forwarded
    assert proxy.counters()["http.ingress_http.cors.origin_valid"] >= 1


def test_not_matching_preflight_goes_upstream_unless_forwarding_is_off(env):
    proxy, up = env
    invalid = proxy.counters().get("http.ingress_http.cors.origin_invalid", 0)
    before = len(up.requests)
    r = preflight(proxy, "/p", "http://b.test")
    assert forwarded_options(up, before)
    assert "access-control-allow-origin" not in r.headers
    assert proxy.counters()["http.ingress_http.cors.origin_invalid"] == invalid + 1
    r = preflight(proxy, "/strict", "http://b.test")
    assert r.status == 200 and r.body == b""
    assert "access-control-allow-origin" not in r.headers
    assert r.headers["access-control-allow-methods"] == "GET, PUT"


def test_allowed_origin_gets_cors_headers_on_upstream_responses_and_local_replies(env):
    proxy, _ = env
    r = request(proxy.port, "/p", headers={"origin": "http://a.test"})
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "http://a.test"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "x-e"
    r = request(proxy.port, "/dead", headers={"origin": "http://a.test"})
    assert r.status == 503
    assert r.headers["access-control-allow-origin"] == "http://a.test"
    r = request(proxy.port, "/p", headers={"origin": "http://b.test"})
    assert "access-control-allow-origin" not in r.headers


def test_direct_response_routes_are_left_alone(env):
    proxy, _ = env
    r = preflight(proxy, "/direct", "http://a.test")
    assert r.status == 200 and r.body == b"ok"
    assert "access-control-allow-origin" not in r.headers


def test_shadow_mode_counts_but_changes_nothing(env):
    proxy, up = env
    valid = proxy.counters().get("http.ingress_http.cors.origin_valid", 0)
    before = len(up.requests)
    r = preflight(proxy, "/shadow", "http://a.test")
    assert forwarded_options(up, before)
    assert "access-control-allow-origin" not in r.headers
    assert proxy.counters()["http.ingress_http.cors.origin_valid"] == valid + 1


def test_a_route_can_disable_the_filter(env):
    proxy, up = env
    valid = proxy.counters().get("http.ingress_http.cors.origin_valid", 0)
    before = len(up.requests)
    r = preflight(proxy, "/off", "http://a.test")
    assert forwarded_options(up, before)
    assert "access-control-allow-origin" not in r.headers
    assert proxy.counters().get("http.ingress_http.cors.origin_valid", 0) == valid
