"""Internal redirects (route `internal_redirect_policy`) through the running proxy: an origin
upstream answers 3xx (the EchoUpstream's /redirect/<code>?to=<Location>), the proxy follows it
itself to the route of the Location's host, served by another real upstream; the client sees
only the final answer. The differential case tests/differential/cases/internal_redirect.yaml
compares the same behaviours with real Envoy; proxy/router/internal_redirect.py has the rules."""

from __future__ import annotations

import http.client
import json
import subprocess
from urllib.parse import quote

import pytest

from proxy.config.reader import ConfigError

from .clients import request
from .harness import EchoUpstream, front_proxy_config, static_cluster

PREVIOUS_ROUTES = {"name": "envoy.internal_redirect_predicates.previous_routes", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.internal_redirect.previous_routes.v3.PreviousRoutesConfig"}}
ALLOW_LISTED = "type.googleapis.com/envoy.extensions.internal_redirect.allow_listed_routes.v3.AllowListedRoutesConfig"


@pytest.fixture
def other():
    u = EchoUpstream("other")
    yield u
    u.close()


def _config(origin: int, other: int, policy: dict | None = None, **hcm) -> dict:
    policy = policy if policy is not None else {
        "redirect_response_codes": [302, 303, 307], "max_internal_redirects": 2,
        "response_headers_to_copy": ["x-token"]}
    config = front_proxy_config([], [static_cluster("origin", origin), static_cluster("other", other)], **hcm)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"] = [
        {"name": "front", "domains": ["front.example"], "routes": [
            {"name": "start", "match": {"prefix": "/start/"},
             "route": {"cluster": "origin", "prefix_rewrite": "/", "internal_redirect_policy": policy}}]},
        {"name": "other", "domains": ["other.example"], "routes": [
            {"name": "landing", "match": {"prefix": "/"}, "route": {"cluster": "other"}}]},
    ]
    return config


def _via(code: int, location: str, *headers: str) -> str:
    path = f"/start/redirect/{code}?to={quote(location, safe='')}"
    return path + "".join(f"&hdr={quote(h, safe='')}" for h in headers)


def test_a_302_to_another_host_is_answered_by_that_hosts_route(proxy_factory, upstream, other):
    p = proxy_factory(_config(upstream.port, other.port))
    r = request(p.port, _via(302, "http://other.example/land?x=1#frag", "x-token:fresh"),
                host="front.example", headers={"x-token": "stale", "x-keep": "kept"})
    assert r.status == 200 and r.headers["x-upstream"] == "other", (r.status, r.body)
    seen = r.json()
    assert seen["path"] == "/land?x=1"   # the fragment is not sent
    h = seen["headers"]
    assert h["host"] == "other.example"
    assert h["x-token"] == "fresh" and h["x-keep"] == "kept"   # response_headers_to_copy
    assert h["x-envoy-original-url"] == "http://front.example" + _via(
        302, "http://other.example/land?x=1#frag", "x-token:fresh").removeprefix("/start")
    assert len(upstream.requests) == 1 and len(other.requests) == 1
    c = p.counters()
    assert c["cluster.origin.upstream_internal_redirect_succeeded_total"] == 1
    assert c["cluster.origin.upstream_rq_total"] == 1 and c["cluster.other.upstream_rq_200"] == 1
    assert c["http.ingress_http.downstream_rq_total"] == 2       # the recreated stream too
    assert p.wait_for(lambda: p.counters()["http.ingress_http.downstream_rq_completed"] == 1)
    assert p.counters()["http.ingress_http.downstream_rq_3xx"] == 0


def test_a_post_body_is_replayed_on_307_and_dropped_on_303(proxy_factory, upstream, other):
    p = proxy_factory(_config(upstream.port, other.port))
    body = b"x" * 5000
    r = request(p.port, _via(307, "http://other.example/post"), method="POST", body=body,
                host="front.example")
    seen = r.json()
    assert (r.status, seen["method"], seen["body_len"]) == (200, "POST", len(body))
    assert other.requests[-1][3] == body
    r = request(p.port, _via(303, "http://other.example/get"), method="POST", body=body,
                host="front.example")
    seen = r.json()
    assert (r.status, seen["method"], seen["body_len"]) == (200, "GET", 0)
    assert "content-length" not in seen["headers"]


def test_the_next_request_on_a_keep_alive_connection_follows_a_redirect(proxy_factory, upstream, other,
                                                                       codec):
    p = proxy_factory(_config(upstream.port, other.port), codec=codec)   # httptools and h11
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
    try:
        for i in range(3):
            conn.request("GET", _via(302, f"http://other.example/n{i}"), headers={"host": "front.example"})
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["path"] == f"/n{i}"
    finally:
        conn.close()
    assert p.counters()["http.ingress_http.downstream_cx_total"] == 1


def test_http2_streams_are_recreated_on_their_stream(proxy_factory, upstream, other):
    p = proxy_factory(_config(upstream.port, other.port))
    base = f"http://127.0.0.1:{p.port}"
    for extra, location, method, body_len in (
            ([], "http://other.example/h2-get", "GET", 0),
            (["--data-binary", "z" * 3000], "http://other.example/h2-post", "POST", 3000)):
        code = 307 if extra else 302
        out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "-H", "host: front.example",
                              *extra, base + _via(code, location)], capture_output=True, timeout=10)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/2 200"), out.stdout[:300]
        seen = json.loads(body)
        assert (seen["path"], seen["method"], seen["body_len"]) == (location[20:], method, body_len)
    assert p.counters()["http.ingress_http.downstream_rq_http2_total"] == 4


def test_refused_redirects_reach_the_client_as_they_are(proxy_factory, upstream, other):
    p = proxy_factory(_config(upstream.port, other.port))
    cases = [
        (_via(302, "/relative"), "bad_location"),
        (_via(302, "https://other.example/"), "unsafe_scheme"),
        (_via(302, "http://nowhere.example/"), "no_route"),
        # front -> front -> front: max_internal_redirects 2
        (_via(302, "http://front.example" + _via(302, "http://front.example" + _via(
            302, "http://other.example/"))), "too_many_redirects"),
        (_via(301, "http://other.example/"), None),   # 301 not listed
    ]
    for path, reason in cases:
        r = request(p.port, path, host="front.example")
        assert r.status in (301, 302) and r.body == b"redirecting", (path, r.status, r.body)
        if reason is not None:
            assert p.counters()[f"http.ingress_http.passthrough_internal_redirect_{reason}"] == 1, reason
    assert other.requests == []
    assert p.counters()["cluster.origin.upstream_internal_redirect_failed_total"] == 4


def test_previous_routes_stops_a_loop_and_a_body_over_the_buffer_limit_is_not_redirected(
        proxy_factory, upstream, other):
    config = _config(upstream.port, other.port, policy={
        "max_internal_redirects": 5, "predicates": [PREVIOUS_ROUTES]})
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 1024
    p = proxy_factory(config)
    loop = _via(302, "http://front.example" + _via(302, "http://front.example" + _via(
        302, "http://other.example/x")))
    r = request(p.port, loop, host="front.example")
    # start -> start is accepted once; the second start -> start is a route seen before.
    assert r.status == 302 and len(upstream.requests) == 2
    assert p.counters()["http.ingress_http.passthrough_internal_redirect_predicate"] == 1
    r = request(p.port, _via(302, "http://other.example/big"), method="POST", body=b"y" * 2048,
                host="front.example")
    assert r.status == 302
    assert p.counters()["cluster.origin.upstream_internal_redirect_failed_total"] == 2


@pytest.mark.parametrize("policy, path, message", [
    ({"response_headers_to_copy": ["Host"]}, "response_headers_to_copy[0]", "Hosts may not"),
    ({"response_headers_to_copy": [":path"]}, "response_headers_to_copy[0]", ":-prefixed"),
    ({"redirect_response_codes": [301, 302, 303, 307, 308, 302]}, "redirect_response_codes", "at most 5"),
    ({"predicates": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/x.Y"}}]},
     "predicates[0].typed_config", "unsupported internal redirect predicate"),
    ({"predicates": [{"name": "a", "typed_config": {"@type": ALLOW_LISTED}}]},
     "allowed_route_names", "required"),
    ({"max_internal_redirects": -1}, "max_internal_redirects", "integer"),
    ({"max_redirects": 1}, "internal_redirect_policy", "unknown field"),
])
def test_a_bad_policy_is_refused_with_its_path(policy, path, message):
    from proxy.config.load import parse_bootstrap
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_config(1, 2, policy=policy))
    text = str(e.value)
    assert path in text and message in text, text
