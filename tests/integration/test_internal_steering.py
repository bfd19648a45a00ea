"""An internal request's x-envoy-* steering fields acted on by the router, through the real
proxy against real upstreams (a scripted HTTP/1.1 upstream, an EchoUpstream, a Zipkin
collector). A request from 127.0.0.1 without x-forwarded-for is internal here
(use_remote_address, internal_address_config 127.0.0.1/32); one with x-forwarded-for is
external, and its fields are removed before the router sees them. Envoy's semantics are in
proxy/router/steering.py and proxy/http/router_retry.py; the differential case
tests/differential/cases/internal_steering.yaml compares the same behaviours with real Envoy."""

from __future__ import annotations


from .clients import request
from .harness import front_proxy_config, static_cluster
from .test_retries import scripted  # noqa: F401  (the fixture)
from .test_tracing_zipkin import ZIPKIN, Collector

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
EXTERNAL = {"x-forwarded-for": "192.0.2.7"}


def _config(port: int, router=None, action=None, clusters=(), **hcm):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "5s",
                                                  **(action or {})}}
    cfg = front_proxy_config([route], [static_cluster("backend", port), *clusters],
                             use_remote_address=True,
                             internal_address_config={"cidr_ranges": [
                                 {"address_prefix": "127.0.0.1", "prefix_len": 32}]}, **hcm)
    if router:
        f = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        f["typed_config"]["http_filters"] = [{"name": "envoy.filters.http.router",
                                             "typed_config": {"@type": ROUTER, **router}}]
    return cfg


def _c(p, name: str) -> int:
    return p.counters().get(f"cluster.backend.{name}", 0)


def test_internal_retry_fields_are_honoured_and_removed_external_ones_ignored(scripted, proxy_factory):
    up = scripted(("status", 503), ("status", 503), ("status", 503))
    p = proxy_factory(_config(up.port))
    steer = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "1"}
    r = request(p.port, "/in", headers=steer)
    assert r.status == 503 and up.count == 2          # one retry, then the last answer
    assert all("x-envoy-retry-on" not in req[3] and "x-envoy-max-retries" not in req[3]
               and req[3]["x-envoy-internal"] == "true" for req in up.requests)
    r = request(p.port, "/out", headers={**steer, **EXTERNAL})
    assert r.status == 503 and up.count == 3          # the script's third 503, not retried
    assert "x-envoy-retry-on" not in up.requests[2][3] and "x-envoy-internal" not in up.requests[2][3]
    assert _c(p, "upstream_rq_retry") == 1 and _c(p, "upstream_rq_retry_limit_exceeded") == 1


def test_max_retries_invalid_or_without_a_condition_is_ignored(scripted, proxy_factory):
    up = scripted(*[("status", 503)] * 6)
    p = proxy_factory(_config(up.port, action={"retry_policy": {"retry_on": "retriable-4xx",
                                                                 "num_retries": 2}}))
    assert request(p.port, "/a", headers={"x-envoy-max-retries": "5"}).status == 503
    assert up.count == 1                               # 503 is not retriable-4xx: no retry
    # Merged with the route's retry_on; the route's num_retries (2) when the value is invalid.
    assert request(p.port, "/b", headers={"x-envoy-retry-on": "5xx",
                                          "x-envoy-max-retries": "-1"}).status == 503
    assert up.count == 4


def test_retriable_status_codes_header_names_and_grpc_on(scripted, proxy_factory):
    up = scripted(("status", 418), ("status", 200, [("x-try-again", "1")]))
    p = proxy_factory(_config(up.port))
    r = request(p.port, "/a", headers={"x-envoy-retry-on": "retriable-status-codes,retriable-headers",
                                       "x-envoy-retriable-status-codes": "abc, 418",
                                       "x-envoy-retriable-header-names": " x-try-again ,",
                                       "x-envoy-max-retries": "3"})
    assert r.status == 200 and up.count == 3 and r.json()["path"] == "/a"
    assert "x-envoy-retriable-status-codes" not in up.requests[0][3]
    assert "x-envoy-retriable-header-names" not in up.requests[0][3]
    up2 = scripted(("status", 200, [("grpc-status", "14")]))
    p2 = proxy_factory(_config(up2.port))
    r = request(p2.port, "/g", headers={"x-envoy-retry-grpc-on": "unavailable"})
    assert r.status == 200 and up2.count == 2 and "grpc-status" not in r.headers
    assert "x-envoy-retry-grpc-on" not in up2.requests[0][3]


def test_upstream_timeout_and_its_204_alt_response(scripted, proxy_factory):
    up = scripted(("sleep", 3), ("sleep", 3), ("sleep", 0))
    p = proxy_factory(_config(up.port))
    r = request(p.port, "/a", headers={"x-envoy-upstream-rq-timeout-ms": "200"})
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert up.requests[0][3]["x-envoy-expected-rq-timeout-ms"] == "200"
    assert "x-envoy-upstream-rq-timeout-ms" not in up.requests[0][3]
    r = request(p.port, "/b", headers={"x-envoy-upstream-rq-timeout-ms": "200",
                                       "x-envoy-upstream-rq-timeout-alt-response": ""})
    assert r.status == 204 and r.body == b""
    assert "x-envoy-upstream-rq-timeout-alt-response" not in up.requests[1][3]
    # An invalid value is ignored: the route's 5 s.
    r = request(p.port, "/c", headers={"x-envoy-upstream-rq-timeout-ms": "soon"})
    assert r.status == 200 and up.requests[2][3]["x-envoy-expected-rq-timeout-ms"] == "5000"
    assert _c(p, "upstream_rq_timeout") == 2
    assert _c(p, "internal.upstream_rq_504") == 1 and _c(p, "internal.upstream_rq_204") == 1
    assert _c(p, "upstream_rq_504") == 1 and _c(p, "upstream_rq_204") == 1


def test_per_try_timeout_header_retries_and_expected_timeout(scripted, proxy_factory):
    up = scripted(("sleep", 3), ("sleep", 0))
    p = proxy_factory(_config(up.port))
    r = request(p.port, "/a", headers={"x-envoy-retry-on": "5xx",
                                       "x-envoy-upstream-rq-per-try-timeout-ms": "150"})
    assert r.status == 200 and up.count == 2
    assert up.requests[0][3]["x-envoy-expected-rq-timeout-ms"] == "150"
    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in up.requests[0][3]
    assert _c(p, "upstream_rq_per_try_timeout") == 1 and _c(p, "upstream_rq_retry") == 1


def test_respect_expected_rq_timeout(scripted, proxy_factory):
    up = scripted(("sleep", 3), ("sleep", 0))
    p = proxy_factory(_config(up.port, router={"respect_expected_rq_timeout": True}))
    r = request(p.port, "/a", headers={"x-envoy-expected-rq-timeout-ms": "200",
                                       "x-envoy-upstream-rq-timeout-ms": "4000"})
    assert r.status == 504
    # Envoy leaves the upstream timeout field when the expected one decided.
    assert up.requests[0][3]["x-envoy-upstream-rq-timeout-ms"] == "4000"
    assert up.requests[0][3]["x-envoy-expected-rq-timeout-ms"] == "200"
    r = request(p.port, "/b", headers={**EXTERNAL, "x-envoy-expected-rq-timeout-ms": "1"})
    assert r.status == 200 and up.requests[1][3]["x-envoy-expected-rq-timeout-ms"] == "5000"


def test_strict_check_headers_answer_400_for_an_invalid_internal_field(upstream, proxy_factory):
    p = proxy_factory(_config(upstream.port, router={
        "strict_check_headers": ["x-envoy-max-retries", "x-envoy-retry-on"]}))
    r = request(p.port, "/a", headers={"x-envoy-max-retries": "x3"})
    assert r.status == 400 and r.body == b"invalid header 'x-envoy-max-retries' with value 'x3'"
    r = request(p.port, "/b", headers={"x-envoy-retry-on": "5xx,sometimes"})
    assert r.status == 400
    assert request(p.port, "/c", headers={"x-envoy-retry-on": "5xx, reset"}).status == 200
    # An external request's fields are gone before the check.
    assert request(p.port, "/d", headers={**EXTERNAL, "x-envoy-max-retries": "x3"}).status == 200
    assert len(upstream.requests) == 2


def test_internal_and_external_cluster_stats(upstream, proxy_factory):
    p = proxy_factory(_config(upstream.port))
    for _ in range(2):
        assert request(p.port, "/in").status == 200
    assert request(p.port, "/status/503", headers=EXTERNAL).status == 503
    assert request(p.port, "/status/503").status == 503
    assert p.wait_for(lambda: _c(p, "upstream_rq_completed") == 4)
    assert _c(p, "internal.upstream_rq_200") == 2 and _c(p, "internal.upstream_rq_2xx") == 2
    assert _c(p, "internal.upstream_rq_503") == 1 and _c(p, "internal.upstream_rq_completed") == 3
    assert _c(p, "external.upstream_rq_503") == 1 and _c(p, "external.upstream_rq_completed") == 1
    assert _c(p, "external.upstream_rq_200") == 0
    assert _c(p, "upstream_rq_200") == 2 and _c(p, "upstream_rq_503") == 2
    assert _c(p, "upstream_rq_5xx") == 2


def test_internal_force_trace_forces_sampling_and_echoes_the_request_id(upstream, proxy_factory):
    collector = Collector()
    try:
        cfg = _config(upstream.port, clusters=[static_cluster("zipkin", collector.port)],
                      tracing={"provider": ZIPKIN, "random_sampling": {"value": 0}})
        p = proxy_factory(cfg)
        r = request(p.port, "/a", headers={"x-envoy-force-trace": "1"})
        rid = r.json()["headers"]["x-request-id"]
        assert rid[14] == "a"                          # Envoy's UUID mark: service forced
        assert r.headers["x-request-id"] == rid        # echoed
        assert r.json()["headers"]["x-b3-sampled"] == "1"
        r = request(p.port, "/b", headers={**EXTERNAL, "x-envoy-force-trace": "1"})
        assert r.json()["headers"]["x-b3-sampled"] == "0" and "x-request-id" not in r.headers
        assert p.wait_for(lambda: len(collector.spans) == 1)
        c = p.counters()
        assert c["http.ingress_http.tracing.service_forced"] == 1
    finally:
        collector.close()
