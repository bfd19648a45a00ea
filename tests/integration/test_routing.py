"""Routing through the real proxy: matchers, virtual-host domain order, route actions, redirects,
direct responses. One proxy (and two echo upstreams) is shared by the whole module; each test
picks its route by path/Host so tests stay independent.
"""

from __future__ import annotations

import json
import os

import pytest

from .clients import curl, echo, request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _dr(match: dict, body: str, status: int = 200) -> dict:
    return {"match": match, "direct_response": {"status": status, "body": {"inline_string": body}}}


def _vh(name: str, domains: list[str], routes: list[dict]) -> dict:
    return {"name": name, "domains": domains, "routes": routes}


ROUTES = [
    _dr({"path": "/exact"}, "path"),
    _dr({"safe_regex": {"regex": "/re/[0-9]+"}}, "regex"),
    _dr({"path_separated_prefix": "/sep"}, "sep"),
    _dr({"prefix": "/hdr", "headers": [{"name": "x-exact", "string_match": {"exact": "yes"}}]}, "hdr-exact"),
    _dr({"prefix": "/hdr", "headers": [{"name": "x-present", "present_match": True}]}, "hdr-present"),
    _dr({"prefix": "/hdr", "headers": [{"name": "x-block", "present_match": True, "invert_match": True}]},
        "hdr-invert"),
    _dr({"prefix": "/hdr"}, "hdr-fallback"),
    _dr({"prefix": "/q", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]}, "q-exact"),
    _dr({"prefix": "/q", "query_parameters": [{"name": "flag", "present_match": True}]}, "q-present"),
    _dr({"prefix": "/q"}, "q-none"),
    {"match": {"prefix": "/rewrite/"}, "route": {"cluster": "c1", "prefix_rewrite": "/new/"}},
    {"match": {"prefix": "/regexrw/"}, "route": {"cluster": "c1", "regex_rewrite": {
        "pattern": {"regex": "^/regexrw/(\\w+)/(\\w+)$"}, "substitution": "/swapped/\\2/\\1"}}},
    {"match": {"prefix": "/hostrw"}, "route": {"cluster": "c1", "host_rewrite_literal": "rewritten.example"}},
    {"match": {"prefix": "/weighted"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "c1", "weight": 50}, {"name": "c2", "weight": 50}]}}},
    {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
    {"match": {"prefix": "/delay"}, "route": {"cluster": "c1", "timeout": "0.3s"}},
    {"match": {"prefix": "/redir/default"}, "redirect": {"host_redirect": "new.example"}},
    {"match": {"prefix": "/redir/https"}, "redirect": {"https_redirect": True}},
    {"match": {"prefix": "/redir/path"}, "redirect": {"path_redirect": "/elsewhere"}},
    {"match": {"prefix": "/redir/found"}, "redirect": {"path_redirect": "/found-it", "response_code": "FOUND"}},
    _dr({"prefix": "/direct"}, "I am a teapot", status=418),
    {"match": {"prefix": "/"}, "route": {"cluster": "c1"}},
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    u1, u2 = EchoUpstream("service1"), EchoUpstream("service2")
    log_path = str(tmp_path_factory.mktemp("routing") / "access.log")
    cfg = front_proxy_config(ROUTES, [static_cluster("c1", u1.port), static_cluster("c2", u2.port)],
                             access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
                                 "@type": FILE_LOG, "path": log_path, "log_format": {"text_format_source": {
                                     "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}])
    # Domain-order virtual hosts go before the catch-all "*" one.
    vhosts = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"]
    vhosts[:0] = [
        _vh("exact", ["www.example.com"], [_dr({"prefix": "/"}, "vh-exact")]),
        _vh("suffix", ["*.example.com"], [_dr({"prefix": "/"}, "vh-suffix")]),
        _vh("long_suffix", ["*.b.example.com"], [_dr({"prefix": "/"}, "vh-long-suffix")]),
        _vh("prefix", ["www.*"], [_dr({"prefix": "/"}, "vh-prefix")]),
    ]
    p = ProxyUnderTest(cfg)
    yield p, u1, u2, log_path
    p.stop()
    u1.close()
    u2.close()


def _body(p, path, **kw) -> str:
    r = request(p.port, path, **kw)
    assert r.status == 200, (r.status, r.body)
    return r.text


# -- path matchers ------------------------------------------------------------------------------
def test_path_matcher_matches_exact_path_only(env):
    p = env[0]
    assert _body(p, "/exact") == "path"
    assert _body(p, "/exact?x=1") == "path"          # the query is not part of the path match
    assert echo(p.port, "/exact/more")["path"] == "/exact/more"   # falls through to prefix "/"


def test_safe_regex_matcher_is_full_string_match(env):
    p = env[0]
    assert _body(p, "/re/123") == "regex"
    assert echo(p.port, "/re/123abc")["server"] == "service1"


def test_path_separated_prefix_matches_segment_boundary_only(env):
    p = env[0]
    assert _body(p, "/sep") == "sep"
    assert _body(p, "/sep/child") == "sep"
    assert echo(p.port, "/separate")["path"] == "/separate"


def test_prefix_matcher_routes_to_cluster(env):
    p = env[0]
    seen = echo(p.port, "/anything/here?a=b")
    assert seen["server"] == "service1" and seen["path"] == "/anything/here?a=b"


def test_header_matchers_exact_present_and_invert(env):
    p = env[0]
    assert _body(p, "/hdr", headers={"x-exact": "yes"}) == "hdr-exact"
    # exact "no" fails the exact matcher; no x-block header -> the inverted present matcher wins
    assert _body(p, "/hdr", headers={"x-exact": "no"}) == "hdr-invert"
    assert _body(p, "/hdr", headers={"x-present": "", "x-block": "1"}) == "hdr-present"
    assert _body(p, "/hdr", headers={"x-block": "1"}) == "hdr-fallback"


def test_query_parameter_matchers_exact_and_present(env):
    p = env[0]
    assert _body(p, "/q?debug=1") == "q-exact"
    assert _body(p, "/q?debug=2") == "q-none"
    assert _body(p, "/q?a=b&flag") == "q-present"
    assert _body(p, "/q?flag=anything") == "q-present"
    assert _body(p, "/q") == "q-none"


# -- domain matching order ------------------------------------------------------------------------
@pytest.mark.parametrize("host,expected", [
    ("www.example.com", "vh-exact"),              # exact beats *.example.com and www.*
    ("www.example.com:8080", "vh-prefix"),        # the port is matched too, as Envoy: www.*
    ("api.example.com", "vh-suffix"),             # suffix wildcard beats www.* / *
    ("x.b.example.com", "vh-long-suffix"),        # longest suffix wildcard wins
    ("www.other.org", "vh-prefix"),               # prefix wildcard beats *
    ("WWW.Other.ORG", "vh-prefix"),               # host matching is case-insensitive
])
def test_virtual_host_domain_matching_order(env, host, expected):
    assert _body(env[0], "/", host=host) == expected


def test_unmatched_host_uses_catch_all_virtual_host(env):
    assert echo(env[0].port, "/", host="unknown.test")["server"] == "service1"


# -- route actions -------------------------------------------------------------------------------
def test_prefix_rewrite_changes_upstream_path_and_sets_original_path(env):
    seen = echo(env[0].port, "/rewrite/a/b?q=1")
    assert seen["path"] == "/new/a/b?q=1"
    assert seen["headers"]["x-envoy-original-path"] == "/rewrite/a/b?q=1"


def test_regex_rewrite_substitutes_capture_groups(env):
    seen = echo(env[0].port, "/regexrw/one/two")
    assert seen["path"] == "/swapped/two/one"
    assert seen["headers"]["x-envoy-original-path"] == "/regexrw/one/two"


def test_host_rewrite_literal_changes_upstream_host(env):
    seen = echo(env[0].port, "/hostrw", host="client.example")
    assert seen["headers"]["host"] == "rewritten.example"


def test_auto_host_rewrite_uses_the_chosen_hosts_hostname(proxy_factory):
    """auto_host_rewrite: Host becomes the upstream host's hostname (the endpoint's `hostname`
    or a DNS cluster's name); a host without one keeps the client's Host."""
    up = EchoUpstream("named")
    try:
        named = {"name": "named", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "named", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"hostname": "svc.internal.example", "address": {
                         "socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}}
        dns = {"name": "dns", "type": "STRICT_DNS", "connect_timeout": "1s",
               "dns_lookup_family": "V4_ONLY",
               "load_assignment": {"cluster_name": "dns", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": "localhost",
                                                                "port_value": up.port}}}}]}]}}
        routes = [{"match": {"prefix": "/named"}, "route": {"cluster": "named", "auto_host_rewrite": True}},
                  {"match": {"prefix": "/dns"}, "route": {"cluster": "dns", "auto_host_rewrite": True}},
                  {"match": {"prefix": "/ip"}, "route": {"cluster": "ip", "auto_host_rewrite": True}}]
        p = proxy_factory(front_proxy_config(routes, [named, dns, static_cluster("ip", up.port)]))
        assert echo(p.port, "/named", host="client.example")["headers"]["host"] == "svc.internal.example"
        assert echo(p.port, "/dns", host="client.example")["headers"]["host"] == "localhost"
        assert echo(p.port, "/ip", host="client.example")["headers"]["host"] == "client.example"
    finally:
        up.close()


def test_weighted_clusters_send_traffic_to_both_clusters(env):
    servers = [echo(env[0].port, "/weighted")["server"] for _ in range(40)]
    assert servers.count("service1") > 0 and servers.count("service2") > 0


def test_cluster_header_picks_cluster_from_request_header(env):
    p = env[0]
    assert echo(p.port, "/by-header", headers={"x-cluster": "c2"})["server"] == "service2"
    assert echo(p.port, "/by-header", headers={"x-cluster": "c1"})["server"] == "service1"


def test_route_timeout_gives_504_and_ut_flag(env):
    p, _, _, log_path = env
    before = p.counters().get("cluster.c1.upstream_rq_timeout", 0)
    r = request(p.port, "/delay/2")
    assert r.status == 504
    assert r.text == "upstream request timeout"
    assert p.counters()["cluster.c1.upstream_rq_timeout"] == before + 1

    def logged():
        return os.path.exists(log_path) and "/delay/2 504 UT\n" in open(log_path).read()
    assert p.wait_for(logged), open(log_path).read() if os.path.exists(log_path) else "no log file"


# -- redirects and direct responses ------------------------------------------------------------------
def test_redirect_defaults_to_301_with_new_host(env):
    r = request(env[0].port, "/redir/default/x?y=1", host="old.example")
    assert r.status == 301
    assert r.headers["location"] == "http://new.example/redir/default/x?y=1"


def test_https_redirect_switches_scheme(env):
    r = request(env[0].port, "/redir/https", host="site.example")
    assert r.status == 301
    assert r.headers["location"] == "https://site.example/redir/https"


def test_path_redirect_replaces_path(env):
    r = request(env[0].port, "/redir/path", host="site.example")
    assert r.status == 301
    assert r.headers["location"] == "http://site.example/elsewhere"


def test_redirect_response_code_found_gives_302(env):
    r = request(env[0].port, "/redir/found", host="site.example")
    assert r.status == 302
    assert r.headers["location"] == "http://site.example/found-it"


def test_direct_response_returns_status_and_body(env):
    r = request(env[0].port, "/direct")
    assert r.status == 418
    assert r.body == b"I am a teapot"
    assert r.headers["content-length"] == "13"


def test_curl_follows_path_redirect_to_upstream(env):
    p = env[0]
    out = curl("-L", "-w", "\n%{http_code} %{num_redirects}", p.url("/redir/path"))
    assert out.returncode == 0, out.stderr
    body, _, summary = out.stdout.rpartition("\n")
    assert summary == "200 1"
    assert json.loads(body)["path"] == "/elsewhere"
