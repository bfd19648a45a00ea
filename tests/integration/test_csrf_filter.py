"""The CSRF filter through the running proxy: a cross-origin POST is refused with 403
`Invalid origin` and never reaches the upstream, a same-origin one and a safe method pass, a
route in shadow mode counts without refusing, and the access log carries the details."""

from __future__ import annotations

import http.client
import re

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

URL = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
ON = {"default_value": {"numerator": 100}}
OFF = {"default_value": {"numerator": 0}}


def _config(port: int, **policy) -> dict:
    routes = [{"match": {"prefix": "/shadow"}, "route": {"cluster": "c1"},
               "typed_per_filter_config": {"envoy.filters.http.csrf": {
                   "@type": URL, "filter_enabled": OFF, "shadow_enabled": ON}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    flt = {"@type": URL, "filter_enabled": ON, **policy}
    return front_proxy_config(routes, [static_cluster("c1", port)],
                              http_filters=[{"name": "envoy.filters.http.csrf", "typed_config": flt},
                                            ROUTER])


def _send(port: int, method: str, path: str, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=b"x" if method != "GET" else None,
                 headers={"host": "app.local", **headers})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_cross_origin_post_is_refused_and_same_origin_passes(upstream):
    p = ProxyUnderTest(_config(upstream.port))
    try:
        status, body = _send(p.port, "POST", "/echo", {"origin": "https://evil.test"})
        assert (status, body) == (403, b"Invalid origin")
        assert len(upstream.requests) == 0
        assert _send(p.port, "POST", "/echo", {"origin": "http://app.local"})[0] == 200
        assert _send(p.port, "DELETE", "/echo", {"referer": "https://app.local/page"})[0] == 200
        assert _send(p.port, "GET", "/echo", {"origin": "https://evil.test"})[0] == 200
        assert _send(p.port, "PUT", "/echo", {})[0] == 403
        assert len(upstream.requests) == 3
        c = p.counters()
        assert c["http.ingress_http.csrf.request_invalid"] == 1
        assert c["http.ingress_http.csrf.missing_source_origin"] == 1
        assert c["http.ingress_http.csrf.request_valid"] == 2
        assert c["http.ingress_http.downstream_rq_4xx"] == 2
    finally:
        p.stop()


def test_shadow_route_counts_but_forwards(upstream):
    p = ProxyUnderTest(_config(upstream.port))
    try:
        assert _send(p.port, "POST", "/shadow/echo", {"origin": "https://evil.test"})[0] == 200
        assert p.counters()["http.ingress_http.csrf.request_invalid"] == 1
    finally:
        p.stop()


def test_additional_origins_are_string_matchers(upstream):
    p = ProxyUnderTest(_config(upstream.port, additional_origins=[{"safe_regex": {"regex": r".*\.trusted\.test"}}]))
    try:
        assert _send(p.port, "POST", "/echo", {"origin": "https://a.trusted.test"})[0] == 200
        assert _send(p.port, "POST", "/echo", {"origin": "https://trusted.test"})[0] == 403
    finally:
        p.stop()


@pytest.mark.parametrize("policy,where", [
    ({"filter_enabled": None}, "filter_enabled"),
    ({"filter_enabled": {"runtime_key": "k", "default_value": {"numerator": 100}, "bogus": 1}}, "bogus"),
    ({"additional_origins": [{"nope": "x"}]}, "additional_origins"),
])
def test_what_it_refuses_is_named(policy, where):
    flt = {"@type": URL, "filter_enabled": ON, **policy}
    flt = {k: v for k, v in flt.items() if v is not None}
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}], [static_cluster("c1", 1)],
                             http_filters=[{"name": "envoy.filters.http.csrf", "typed_config": flt}, ROUTER])
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(cfg)
