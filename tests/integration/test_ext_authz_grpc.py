"""The ext_authz filter with a gRPC authorization service (envoy.service.auth.v3) through the
running proxy, against a real grpclib server (tests/grpc_authz_server.py) over HTTP/2: what the
CheckRequest carries, each kind of answer applied, errors (gRPC status, timeout, garbage, no
server) with status_on_error and failure_mode_allow, context extensions per route, concurrent
checks, a client leaving mid-check, and what is refused by name. Agreement with real Envoy:
tests/differential/cases/filter_ext_authz_grpc.yaml; the example's gRPC and OPA configs:
test_envoy_examples.py."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.grpc_authz_server import GrpcAuthzServer

from tests.ports import free_port

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def _config(app_port: int, authz_port: int, routes=None, **extra) -> dict:
    flt = {"@type": URL, "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s",
                                          "initial_metadata": [{"key": "x-caller", "value": "front"}]},
           "transport_api_version": "V3", **extra}
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    return front_proxy_config(routes, [static_cluster("app", app_port),
                                       static_cluster("authz", authz_port, typed_extension_protocol_options=H2)],
                              http_filters=[{"name": "envoy.filters.http.ext_authz", "typed_config": flt}, ROUTER])


def _request(port: int, path: str, token: str | None = None, method: str = "GET", body: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = dict(headers or {})
    if token:
        h["authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


@pytest.fixture
def authz():
    s = GrpcAuthzServer()
    yield s
    s.close()


def test_check_request_carries_the_request_as_envoy_builds_it(upstream, authz):
    p = ProxyUnderTest(_config(upstream.port, authz.port, with_request_body={"max_request_bytes": 64}))
    try:
        status, _, _ = _request(p.port, "/app/x?q=1", "token1", "POST", b"hello",
                                {"x-tenant": "t1", "x-dup": "a"})
        assert status == 200
        (method, path, headers, body), = authz.requests
        assert (method, path, body) == ("POST", "/app/x?q=1", b"hello")
        assert headers[":method"] == "POST" and headers[":path"] == "/app/x?q=1"
        assert headers[":authority"] == "127.0.0.1:%d" % p.port and headers["x-tenant"] == "t1"
        assert headers["x-envoy-auth-partial-body"] == "false" and "host" not in headers
        assert headers["attr.protocol"] == "HTTP/1.1" and headers["attr.size"] == "5"
        assert headers["attr.source"] == "127.0.0.1" and headers["attr.destination"] == "127.0.0.1:%d" % p.port
        assert headers["attr.id"] == "set" and headers["attr.time"] == "set"
        # The call itself: a unary gRPC POST with the service's metadata and deadline.
        assert headers["grpc:x-caller"] == "front" and headers["grpc:x-envoy-internal"] == "true"
        assert headers["grpc:x-envoy-expected-rq-timeout-ms"] == "500"
        assert upstream.requests[-1][2]["x-current-user"] == "user1"
        assert p.counters()["http.ingress_http.ext_authz.ok"] == 1
    finally:
        p.stop()


def test_ok_response_mutates_request_and_response(upstream, authz):
    p = ProxyUnderTest(_config(upstream.port, authz.port))
    try:
        status, headers, body = _request(p.port, "/app/y?keep=1&drop=2", "allow-alice", headers={
            "x-current-user": "forged", "x-append-me": "mine", "x-remove-me": "bye", "x-added": "mine"})
        assert status == 200 and headers["x-authz-extra"] == "1"
        seen = json.loads(body)
        assert seen["path"] == "/app/y?authz=yes&keep=1"                 # keys sorted, as Envoy
        assert seen["headers"]["x-current-user"] == "alice"          # append false: replaced
        assert seen["headers"]["x-append-me"] == "mine,from-authz"   # append true: joined
        assert seen["headers"]["x-added"] == "by-authz"              # append unset: replaced (Envoy 1.40)
        assert "x-remove-me" not in seen["headers"]
        _, _, body = _request(p.port, "/app/z", "allow-bob")
        assert "x-append-me" not in json.loads(body)["headers"]     # append true: only to an existing one
    finally:
        p.stop()


def test_a_mutation_no_header_can_carry_is_refused_not_injected(upstream, authz):
    """A CR LF in a header value from the service would inject a header: Envoy's check of the
    request's headers after the filter answers 503 (flag DPE) instead, as here."""
    p = ProxyUnderTest(_config(upstream.port, authz.port))
    try:
        status, headers, body = _request(p.port, "/app/bad", "allow-bad")
        assert (status, body) == (503, b"invalid header value for: x-bad")
        assert not upstream.requests
    finally:
        p.stop()


def test_denials_and_errors(upstream, authz):
    p = ProxyUnderTest(_config(upstream.port, authz.port, status_on_error={"code": 503}))
    try:
        assert _request(p.port, "/d", "deny")[0::2] == (401, b"denied by authz")
        assert _request(p.port, "/d", "deny")[1]["x-reason"] == "bad token"
        assert _request(p.port, "/n")[0::2] == (403, b"")                      # default denial
        assert _request(p.port, "/e", "error")[0] == 503                       # gRPC error
        assert _request(p.port, "/g", "garbage")[0] == 503                     # not a CheckResponse
        assert _request(p.port, "/s", "slow")[0] == 503                        # past the 0.5 s timeout
        assert not upstream.requests
        c = p.counters()
        assert c["http.ingress_http.ext_authz.denied"] == 3 and c["http.ingress_http.ext_authz.error"] == 3
    finally:
        p.stop()


def test_failure_mode_allow_and_no_server(upstream):
    port = free_port()  # nothing listens there
    p = ProxyUnderTest(_config(upstream.port, port, failure_mode_allow=True, failure_mode_allow_header_add=True))
    try:
        status, _, body = _request(p.port, "/x", "token1")
        assert status == 200
        assert json.loads(body)["headers"]["x-envoy-auth-failure-mode-allowed"] == "true"
        c = p.counters()
        assert c["http.ingress_http.ext_authz.error"] == 1
        assert c["http.ingress_http.ext_authz.failure_mode_allowed"] == 1
    finally:
        p.stop()


def test_context_extensions_merge_from_route_levels(upstream, authz):
    routes = [{"match": {"prefix": "/tenant"}, "route": {"cluster": "app"},
               "typed_per_filter_config": {"envoy.filters.http.ext_authz": {
                   "@type": PER_ROUTE, "check_settings": {"context_extensions": {"tier": "gold", "k": "route"}}}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    cfg = _config(upstream.port, authz.port, routes=routes)
    vh = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]
    vh["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": {
        "@type": PER_ROUTE, "check_settings": {"context_extensions": {"k": "vhost", "v": "1"}}}}
    p = ProxyUnderTest(cfg)
    try:
        assert _request(p.port, "/tenant/a", "token2")[0] == 200
        assert _request(p.port, "/other", "token2")[0] == 200
        first, second = (r[2] for r in authz.requests)
        assert {k: v for k, v in first.items() if k.startswith("attr.context.")} == {
            "attr.context.k": "route", "attr.context.tier": "gold", "attr.context.v": "1"}
        assert {k: v for k, v in second.items() if k.startswith("attr.context.")} == {
            "attr.context.k": "vhost", "attr.context.v": "1"}
    finally:
        p.stop()


def test_concurrent_checks_and_a_client_leaving(upstream, authz):
    p = ProxyUnderTest(_config(upstream.port, authz.port))
    try:
        tokens = [f"allow-u{i}" if i % 3 else "nope" for i in range(30)]
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda t: (t, _request(p.port, f"/c/{t}", t)), tokens))
        for token, (status, _, body) in results:
            if token == "nope":
                assert status == 403
            else:
                assert status == 200 and json.loads(body)["headers"]["x-current-user"] == token[6:]
        s = socket.create_connection(("127.0.0.1", p.port))
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer slow\r\n\r\n")
        deadline = time.monotonic() + 5
        while len(authz.requests) < 31 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.close()
        time.sleep(0.8)
        assert p.wait_for(lambda: p.gauges()["cluster.authz.upstream_rq_active"] == 0)
        assert _request(p.port, "/after", "token3")[0] == 200
    finally:
        p.stop()


@pytest.mark.parametrize("extra,field", [
    ({"grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "s"}}}, "google_grpc"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "retry_policy": {}}}, "retry_policy"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz", "skip_envoy_headers": True}}}, "skip_envoy_headers"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}, "include_peer_certificate": True},
     "include_peer_certificate"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}, "encode_raw_headers": True}, "encode_raw_headers"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}, "metadata_context_namespaces": ["a"]},
     "metadata_context_namespaces"),
])
def test_unhonoured_grpc_fields_are_refused_by_name(extra, field):
    flt = {"@type": URL, **extra}
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                             [static_cluster("app", 1)],
                             http_filters=[{"name": "envoy.filters.http.ext_authz", "typed_config": flt}, ROUTER])
    with pytest.raises(ConfigError, match=field):
        parse_bootstrap(cfg)
