"""The global rate limit filter (envoy.filters.http.ratelimit) through the running proxy, against
a real grpclib rate limit service (tests/ratelimit_server.py) over HTTP/2: the descriptors the
service receives, a service that really counts (requests past its limit get 429), the service's
headers on the request and the response, errors, timeouts and a missing service with and without
failure_mode_deny, a request body held during the call, per-route vh_rate_limits and domain,
concurrent calls on two workers, a client leaving mid-call, and what is refused by name.
Agreement with real Envoy: tests/differential/cases/filter_ratelimit.yaml."""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.ratelimit_server import RateLimitServer

from tests.ports import free_port

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

URL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
USER = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}


def _config(app_port: int, rls_port: int, routes=None, vh_rate_limits=None, **extra) -> dict:
    flt = {"@type": URL, "domain": "test", "timeout": "2s",
           "rate_limit_service": {"transport_api_version": "V3",
                                  "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}, **extra}
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app", "rate_limits": [USER]}}]
    cfg = front_proxy_config(routes, [static_cluster("app", app_port),
                                      static_cluster("rls", rls_port, typed_extension_protocol_options=H2)],
                             http_filters=[{"name": "envoy.filters.http.ratelimit", "typed_config": flt}, ROUTER])
    if vh_rate_limits:
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"]["virtual_hosts"][0]["rate_limits"] = vh_rate_limits
    return cfg


def _request(port: int, path: str, user: str | None = None, method: str = "GET", body: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = dict(headers or {})
    if user:
        h["x-user"] = user
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


@pytest.fixture
def rls():
    s = RateLimitServer()
    yield s
    s.close()


def test_the_service_gets_the_routes_descriptors_as_a_grpc_call(upstream, rls):
    routes = [{"match": {"prefix": "/multi"}, "route": {"cluster": "app", "include_vh_rate_limits": True, "rate_limits": [
        {"actions": [{"generic_key": {"descriptor_value": "api"}}, {"remote_address": {}},
                     {"destination_cluster": {}},
                     {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}}]},
        {"stage": 1, "actions": [{"generic_key": {"descriptor_value": "other-stage"}}]}]}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    vh = [{"actions": [{"header_value_match": {"descriptor_value": "flagged",
                                               "headers": [{"name": "x-flag", "present_match": True}]}}]}]
    service = {"transport_api_version": "V3", "grpc_service": {
        "envoy_grpc": {"cluster_name": "rls"}, "initial_metadata": [{"key": "x-rls-token", "value": "s3cret"}]}}
    p = ProxyUnderTest(_config(upstream.port, rls.port, routes, vh, rate_limit_service=service))
    try:
        assert _request(p.port, "/multi", "ann", headers={"x-flag": "1"})[0] == 200
        assert _request(p.port, "/multi")[0] == 200
        assert _request(p.port, "/vh-only", headers={"x-flag": "1"})[0] == 200
        assert _request(p.port, "/vh-only")[0] == 200          # no descriptor: no call
        assert [r[1] for r in rls.requests] == [
            "/test/generic_key=api,remote_address=127.0.0.1,destination_cluster=app,user=ann;header_match=flagged",
            "/test/generic_key=api,remote_address=127.0.0.1,destination_cluster=app",
            "/test/header_match=flagged"]
        headers = rls.requests[0][2]
        assert headers["grpc:x-envoy-internal"] == "true"
        assert headers["grpc:x-envoy-expected-rq-timeout-ms"] == "2000"
        assert headers["grpc:x-rls-token"] == "s3cret"   # the grpc_service's initial_metadata
        assert p.counters()["cluster.app.ratelimit.ok"] == 3
    finally:
        p.stop()


def test_requests_past_the_services_limit_get_429(upstream):
    rls = RateLimitServer(counting=True, limit=2)
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app", "rate_limits": [
        {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "counted"}}]}]}}]
    p = ProxyUnderTest(_config(upstream.port, rls.port, routes))
    try:
        got = [_request(p.port, "/x", "alice") for _ in range(4)]
        assert [s for s, _, _ in got] == [200, 200, 429, 429]
        assert got[2][1]["x-envoy-ratelimited"] == "true" and got[2][2] == b""
        assert _request(p.port, "/x", "bob")[0] == 200            # another descriptor, its own count
        c = p.counters()
        assert c["cluster.app.ratelimit.ok"] == 3 and c["cluster.app.ratelimit.over_limit"] == 2
        assert c["cluster.app.upstream_rq_429"] == 2 and c["cluster.app.internal.upstream_rq_429"] == 2
        assert len(upstream.requests) == 3                          # limited requests never went up
    finally:
        p.stop()
        rls.close()


def test_the_services_headers_and_body(upstream, rls):
    p = ProxyUnderTest(_config(upstream.port, rls.port, enable_x_ratelimit_headers="DRAFT_VERSION_03",
                               response_headers_to_add=[{"header": {"key": "x-limited-by", "value": "front"}}]))
    try:
        status, headers, body = _request(p.port, "/h", "headers", headers={"x-rl-req": "client"})
        assert status == 200 and headers["x-rl-resp"] == "ok" and "x-limited-by" not in headers
        # Added after the client's (the echo upstream keeps a repeated header's last value).
        assert upstream.requests[-1][2]["x-rl-req"] == "again"
        status, headers, body = _request(p.port, "/h", "over-body")
        assert (status, body, headers["content-type"]) == (429, b"slow down", "application/json")
        assert headers["x-rl-why"] == "over" and headers["x-limited-by"] == "front"
        assert headers["x-ratelimit-limit"] == '10, 10;w=60;name="per-user"'
        assert headers["x-ratelimit-remaining"] == "0" and headers["x-ratelimit-reset"] == "30"
        status, headers, _ = _request(p.port, "/h", "limits")
        assert status == 200 and headers["x-ratelimit-remaining"] == "3"
    finally:
        p.stop()


def test_a_grpc_request_over_the_limit(upstream, rls):
    p = ProxyUnderTest(_config(upstream.port, rls.port, rate_limited_as_resource_exhausted=True))
    try:
        status, headers, _ = _request(p.port, "/pkg.S/M", "over", "POST", b"\0\0\0\0\0",
                                      {"content-type": "application/grpc"})
        assert (status, headers["grpc-status"], headers["x-envoy-ratelimited"]) == (200, "8", "true")
    finally:
        p.stop()


def test_errors_with_and_without_failure_mode_deny(upstream, rls):
    lenient = ProxyUnderTest(_config(upstream.port, rls.port, timeout="0.2s"))
    strict = ProxyUnderTest(_config(upstream.port, rls.port, timeout="0.2s", failure_mode_deny=True,
                                    status_on_error={"code": 503}))
    try:
        for user in ("error", "garbage", "slow"):
            assert _request(lenient.port, "/e", user)[0] == 200
            assert _request(strict.port, "/e", user)[0] == 503
        c = lenient.counters()
        assert c["cluster.app.ratelimit.error"] == 3 and c["cluster.app.ratelimit.failure_mode_allowed"] == 3
        c = strict.counters()
        assert c["cluster.app.ratelimit.error"] == 3 and c.get("cluster.app.ratelimit.failure_mode_allowed", 0) == 0
    finally:
        lenient.stop()
        strict.stop()


def test_no_service_listening(upstream):
    port = free_port()  # nothing listens there
    p = ProxyUnderTest(_config(upstream.port, port, failure_mode_deny=True))
    try:
        status, headers, body = _request(p.port, "/n", "alice")
        assert (status, body) == (500, b"")
        assert _request(p.port, "/n")[0] == 200                     # no descriptor, no call
    finally:
        p.stop()


def test_the_request_body_waits_for_the_answer(upstream, rls):
    p = ProxyUnderTest(_config(upstream.port, rls.port))
    try:
        status, _, body = _request(p.port, "/b", "slow", "POST", b"x" * 100_000)
        assert status == 200 and json.loads(body)["body_len"] == 100_000
    finally:
        p.stop()


def test_per_route_vh_rate_limits_and_domain(upstream, rls):
    vh = [{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}]
    routes = [
        {"match": {"prefix": "/ignore"}, "route": {"cluster": "app"},
         "typed_per_filter_config": {"envoy.filters.http.ratelimit": {"@type": PER_ROUTE, "vh_rate_limits": "IGNORE"}}},
        {"match": {"prefix": "/include"}, "route": {"cluster": "app", "rate_limits": [USER]},
         "typed_per_filter_config": {"envoy.filters.http.ratelimit": {
             "@type": PER_ROUTE, "vh_rate_limits": "INCLUDE", "domain": "other"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app", "rate_limits": [USER]}}]
    p = ProxyUnderTest(_config(upstream.port, rls.port, routes, vh))
    try:
        for path in ("/ignore", "/include", "/override"):
            assert _request(p.port, path, "u")[0] == 200
        assert [r[1] for r in rls.requests] == ["/other/user=u;generic_key=vh", "/test/user=u"]
    finally:
        p.stop()


def test_concurrent_calls_on_two_workers_and_a_client_leaving(upstream, rls):
    p = ProxyUnderTest(_config(upstream.port, rls.port), concurrency=2)
    try:
        users = [f"u{i}" if i % 4 else "over" for i in range(40)]
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda u: (u, _request(p.port, f"/c/{u}", u)), users))
        for user, (status, _, _) in results:
            assert status == (429 if user == "over" else 200)
        s = socket.create_connection(("127.0.0.1", p.port))
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nx-user: slow\r\n\r\n")
        assert p.wait_for(lambda: len(rls.requests) == 41)
        s.close()
        assert p.wait_for(lambda: p.gauges()["cluster.rls.upstream_rq_active"] == 0)
        assert _request(p.port, "/after", "z")[0] == 200
        c = p.counters()
        assert c["cluster.app.ratelimit.ok"] == 31 and c["cluster.app.ratelimit.over_limit"] == 10
    finally:
        p.stop()


@pytest.mark.parametrize("extra,field", [
    ({"stat_prefix": "x"}, "stat_prefix"),
    ({"failure_mode_deny_percent": {"default_value": {"numerator": 1}}}, "failure_mode_deny_percent"),
    ({"rate_limits": [USER]}, "rate_limits"),
    ({"rate_limit_service": {"transport_api_version": "V2", "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}},
     "transport_api_version"),
    ({"rate_limit_service": {"transport_api_version": "V3", "grpc_service": {
        "google_grpc": {"target_uri": "x", "stat_prefix": "s"}}}}, "google_grpc"),
    ({"rate_limit_service": {"transport_api_version": "V3", "grpc_service": {
        "envoy_grpc": {"cluster_name": "rls"}, "initial_metadata": [{"key": "A", "value": "b"}]}}},
     r"initial_metadata\[0\]\.key"),
    ({"request_type": "sometimes"}, "request_type"),
    ({"domain": ""}, "domain"),
    ({"stage": 11}, "stage"),
])
def test_unhonoured_fields_are_refused_by_name(extra, field):
    with pytest.raises(ConfigError, match=field):
        parse_bootstrap(_config(1, 2, **extra))


def test_transport_api_version_may_be_left_out():
    cfg = _config(1, 2, rate_limit_service={"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}})
    parse_bootstrap(cfg)   # AUTO: V3, as Envoy 1.40 takes it


def test_unhonoured_route_fields_are_refused_by_name():
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app", "rate_limits": [
        {"actions": [{"dynamic_metadata": {"descriptor_key": "k", "metadata_key": {"key": "a", "path": [{"key": "b"}]}}}]}]}}]
    with pytest.raises(ConfigError, match=r"rate_limits\[0\].actions\[0\].dynamic_metadata: not supported yet"):
        parse_bootstrap(_config(1, 2, routes))
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}, "typed_per_filter_config": {
        "envoy.filters.http.ratelimit": {"@type": PER_ROUTE, "rate_limits": [USER]}}}]
    with pytest.raises(ConfigError, match="rate_limits: not supported yet"):
        parse_bootstrap(_config(1, 2, routes))


def test_a_weighted_cluster_is_picked_once_for_the_filter_and_the_router(upstream, upstream2, rls):
    routes = [{"match": {"prefix": "/"}, "route": {
        "weighted_clusters": {"clusters": [{"name": "app", "weight": 50}, {"name": "app2", "weight": 50}]},
        "rate_limits": [{"actions": [{"destination_cluster": {}}]}]}}]
    cfg = _config(upstream.port, rls.port, routes)
    cfg["static_resources"]["clusters"].append(static_cluster("app2", upstream2.port))
    p = ProxyUnderTest(cfg)
    try:
        served = []
        for _ in range(24):
            status, headers, _ = _request(p.port, "/w")
            assert status == 200
            served.append(headers["x-upstream"])
        # service1 is app's upstream, service2 app2's: the descriptor named the cluster that served.
        named = [r[1].rsplit("=", 1)[1] for r in rls.requests]
        assert named == [{"service1": "app", "service2": "app2"}[s] for s in served]
        assert set(named) == {"app", "app2"}
        c = p.counters()
        assert c["cluster.app.ratelimit.ok"] + c["cluster.app2.ratelimit.ok"] == 24
    finally:
        p.stop()
