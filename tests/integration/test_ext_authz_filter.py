"""The ext_authz filter (HTTP service) through the running proxy: many concurrent checks on
one worker each get their own answer, a client that leaves while its check is pending cancels
it (nothing leaks, the proxy serves on), and what the filter refuses is named. Its agreement
with real Envoy (headers both ways, denials, errors, bodies, stats) is
tests/differential/cases/filter_ext_authz.yaml; Envoy's ext_authz example is in
test_envoy_examples.py."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _config(app_port: int, authz_port: int, **extra) -> dict:
    flt = {"@type": URL, "http_service": {
        "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "2s"},
        "path_prefix": "/authz",
        "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-current-user"}]}}},
        **extra}
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                              [static_cluster("app", app_port), static_cluster("authz", authz_port)],
                              http_filters=[{"name": "envoy.filters.http.ext_authz", "typed_config": flt}, ROUTER])


def _get(port: int, path: str, token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_concurrent_checks_each_get_their_own_answer(upstream):
    authz = EchoUpstream("authz")
    p = ProxyUnderTest(_config(upstream.port, authz.port))
    try:
        users = [f"allow-user{i}" if i % 3 else f"deny{i}" for i in range(30)]
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda t: (t, _get(p.port, f"/echo/{t}", t)), users))
        for token, (status, body) in results:
            if token.startswith("allow"):
                assert status == 200
                seen = json.loads(body)
                assert seen["path"] == f"/echo/{token}"
                assert seen["headers"]["x-current-user"] == token.removeprefix("allow-")
            else:
                assert (status, body) == (403, b"denied by authz")
        c = p.counters()
        assert c["http.ingress_http.ext_authz.ok"] == 20 and c["http.ingress_http.ext_authz.denied"] == 10
        assert len(authz.requests) == 30 and len(upstream.requests) == 20
    finally:
        p.stop()
        authz.close()


def test_a_client_leaving_during_its_check_cancels_it(upstream):
    authz = EchoUpstream("authz")
    p = ProxyUnderTest(_config(upstream.port, authz.port))
    try:
        s = socket.create_connection(("127.0.0.1", p.port))
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer slow\r\n\r\n")
        deadline = time.monotonic() + 5
        while not authz.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert authz.requests, "the check never reached the service"
        s.close()  # gone while the service thinks (1 s)
        time.sleep(1.5)
        assert not upstream.requests  # never forwarded
        assert p.wait_for(lambda: p.gauges()["cluster.authz.upstream_rq_active"] == 0)
        assert _get(p.port, "/after", "allow-z")[0] == 200  # serving on
    finally:
        p.stop()
        authz.close()


@pytest.mark.parametrize("extra,where", [
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}, "only one of grpc_service, http_service"),
    ({"metadata_context_namespaces": ["x"]}, "metadata_context_namespaces: not supported yet"),
    ({"with_request_body": {"max_request_bytes": 0}}, "with_request_body.max_request_bytes"),
])
def test_what_it_refuses_is_named(extra, where):
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(_config(1, 2, **extra))


def test_the_service_uri_needs_a_timeout():
    cfg = _config(1, 2)
    del cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]["typed_config"]["http_service"]["server_uri"]["timeout"]
    with pytest.raises(ConfigError, match="server_uri.timeout"):
        parse_bootstrap(cfg)
