"""`envoy.filters.http.fault` through the real proxy: aborts (fixed, header-controlled, gRPC),
delays that hold the request (and its body) until a timer continues it, the `headers` and
`upstream_cluster` conditions, per-route configs, `max_active_faults`, the stats and the
DI / FI response flags in a real access log. Behaviour checked against Envoy 1.40.
"""

from __future__ import annotations

import socket
import threading

import pytest

from .clients import request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def fault_filter(**config) -> dict:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT, **config}}


def per_route(**config) -> dict:
    return {"envoy.filters.http.fault": {"@type": FAULT, **config}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    up = EchoUpstream("svc")
    other = EchoUpstream("other")
    log_path = str(tmp_path_factory.mktemp("fault") / "access.log")
    routes = [
        {"match": {"prefix": "/abort"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(abort={"http_status": 418,
                                                     "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/nopct"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(abort={"http_status": 418})},
        {"match": {"prefix": "/grpc"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(abort={"grpc_status": 14,
                                                     "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/delay-abort"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(
             delay={"fixed_delay": "0.05s", "percentage": {"numerator": 100}},
             abort={"http_status": 503, "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/delay"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(
             delay={"fixed_delay": "0.3s", "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/matching"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(
             abort={"http_status": 502, "percentage": {"numerator": 100}},
             headers=[{"name": "x-chaos", "string_match": {"exact": "yes"}}])},
        {"match": {"prefix": "/cluster-svc"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(
             abort={"http_status": 500, "percentage": {"numerator": 100}},
             upstream_cluster="other")},
        {"match": {"prefix": "/cluster-other"}, "route": {"cluster": "other"},
         "typed_per_filter_config": per_route(
             abort={"http_status": 500, "percentage": {"numerator": 100}},
             upstream_cluster="other")},
        {"match": {"prefix": "/limited"}, "route": {"cluster": "svc"},
         "typed_per_filter_config": per_route(
             delay={"fixed_delay": "5s", "percentage": {"numerator": 100}},
             max_active_faults=1)},
        {"match": {"prefix": "/"}, "route": {"cluster": "svc"}},
    ]
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": log_path,
        "log_format": {"text_format_source": {
            "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}]
    cfg = front_proxy_config(routes, [static_cluster("svc", up.port),
                                      static_cluster("other", other.port)],
                             access_log=access_log,
                             http_filters=[fault_filter(
                                 abort={"header_abort": {}, "percentage": {"numerator": 100}},
                                 delay={"header_delay": {}, "percentage": {"numerator": 100}}),
                                 ROUTER])
    proxy = ProxyUnderTest(cfg)
    yield proxy, up, log_path
    proxy.stop()
    up.close()
    other.close()


def log_line(proxy, log_path, path) -> str:
    def find():
        with open(log_path) as f:
            return [ln for ln in f.read().splitlines() if ln.startswith(path + " ")]
    assert proxy.wait_for(lambda: find())
    return find()[-1]


def test_abort_answers_with_the_status_and_never_reaches_the_upstream(env):
    proxy, up, log_path = env
    before = len(up.requests)
    r = request(proxy.port, "/abort")
    assert r.status == 418 and r.body == b"fault filter abort"
    assert r.headers["content-type"] == "text/plain"
    assert len(up.requests) == before
    assert log_line(proxy, log_path, "/abort") == "/abort 418 FI fault_filter_abort"
    assert proxy.counters()["http.ingress_http.fault.aborts_injected"] >= 1


def test_a_fault_without_percentage_never_fires(env):
    # Envoy: an absent percentage is 0 %.
    proxy, _, _ = env
    assert request(proxy.port, "/nopct").status == 200


def test_grpc_abort_answers_grpc_requests_with_grpc_status(env):
    proxy, _, _ = env
    r = request(proxy.port, "/grpc", method="POST", body=b"",
                headers={"content-type": "application/grpc"})
    assert r.status == 200
    assert r.headers["content-type"] == "application/grpc"
    assert r.headers["grpc-status"] == "14" and r.headers["grpc-message"] == "fault filter abort"
    assert r.body == b""
    # A plain HTTP request gets the 200 with the text body, as Envoy gives it.
    r = request(proxy.port, "/grpc")
    assert r.status == 200 and r.body == b"fault filter abort"


def test_header_controlled_abort_and_its_percentage_header(env):
    proxy, _, _ = env
    r = request(proxy.port, "/x", headers={"x-envoy-fault-abort-request": "429"})
    assert r.status == 429 and r.body == b"fault filter abort"
    # The percentage header can only lower the configured 100 %: 0 disables it.
    r = request(proxy.port, "/x", headers={"x-envoy-fault-abort-request": "429",
                                           "x-envoy-fault-abort-request-percentage": "0"})
    assert r.status == 200
    # Out of Envoy's [200, 600) range: no abort.
    assert request(proxy.port, "/x", headers={"x-envoy-fault-abort-request": "99"}).status == 200


def test_delay_holds_the_request_and_its_body_until_the_timer(env):
    proxy, up, log_path = env
    before = proxy.counters().get("http.ingress_http.fault.delays_injected", 0)
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        request(proxy.port, "/delay", method="POST", body=b"x" * 5000)))
    t.start()
    # While the delay runs: the fault is active, and the upstream has not seen the request.
    assert proxy.wait_for(lambda: proxy.gauges().get("http.ingress_http.fault.active_faults") == 1)
    assert not any(path == "/delay" for _, path, _, _ in up.requests)
    t.join(5)
    assert seen[0].status == 200
    echoed = seen[0].json()
    assert echoed["path"] == "/delay" and echoed["body_len"] == 5000
    assert proxy.counters()["http.ingress_http.fault.delays_injected"] == before + 1
    assert proxy.wait_for(lambda: proxy.gauges().get("http.ingress_http.fault.active_faults") == 0)
    assert log_line(proxy, log_path, "/delay") == "/delay 200 DI via_upstream"


def test_header_delay(env):
    proxy, _, log_path = env
    r = request(proxy.port, "/hdr-delay", headers={"x-envoy-fault-delay-request": "50"})
    assert r.status == 200
    assert log_line(proxy, log_path, "/hdr-delay") == "/hdr-delay 200 DI via_upstream"


def test_a_delay_can_be_followed_by_an_abort(env):
    proxy, _, log_path = env
    r = request(proxy.port, "/delay-abort")
    assert r.status == 503 and r.body == b"fault filter abort"
    assert log_line(proxy, log_path, "/delay-abort") == "/delay-abort 503 DI,FI fault_filter_abort"


def test_headers_condition_limits_the_fault(env):
    proxy, _, _ = env
    assert request(proxy.port, "/matching").status == 200
    assert request(proxy.port, "/matching", headers={"x-chaos": "yes"}).status == 502


def test_upstream_cluster_condition(env):
    proxy, _, _ = env
    assert request(proxy.port, "/cluster-svc").status == 200
    assert request(proxy.port, "/cluster-other").status == 500


def test_max_active_faults_lets_the_overflow_through(env):
    proxy, _, _ = env
    # One request is delayed 5 s (the one active fault allowed); the next is not delayed.
    s = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        s.sendall(b"GET /limited HTTP/1.1\r\nhost: x\r\n\r\n")
        assert proxy.wait_for(lambda: proxy.gauges().get("http.ingress_http.fault.active_faults") == 1)
        overflow = proxy.counters().get("http.ingress_http.fault.faults_overflow", 0)
        assert request(proxy.port, "/limited").status == 200
        assert proxy.counters()["http.ingress_http.fault.faults_overflow"] == overflow + 1
    finally:
        s.close()
    # The delayed request's client went away: its fault ends with its stream.
    assert proxy.wait_for(lambda: proxy.gauges().get("http.ingress_http.fault.active_faults") == 0)


def test_a_filter_disabled_by_default_runs_only_where_a_route_enables_it(proxy_factory):
    """http_filters `disabled: true`: off unless a route's FilterConfig says disabled: false."""
    up = EchoUpstream("svc")
    try:
        enable = {"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": False}}
        routes = [{"match": {"prefix": "/on"}, "route": {"cluster": "svc"},
                   "typed_per_filter_config": enable},
                  {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]
        flt = fault_filter(abort={"http_status": 418, "percentage": {"numerator": 100}})
        flt["disabled"] = True
        p = proxy_factory(front_proxy_config(routes, [static_cluster("svc", up.port)],
                                             http_filters=[flt, ROUTER]))
        assert request(p.port, "/off").status == 200
        assert request(p.port, "/on").status == 418
    finally:
        up.close()
