"""RBAC rules become functions at load (rbac_config.predicate); the header rule has a fast path
for exact, case-sensitive values. It must decide as the general HeaderMatcher does, header by
header and request by request, including repeated headers (joined with ","), absent headers,
`treat_missing_header_as_empty`, inverted and pseudo-header matchers."""

from __future__ import annotations


import pytest

from proxy.http.filters.rbac import LazyRequestFacts
from proxy.http.filters.rbac_config import Rule, parse_rbac, predicate
from proxy.http.headers import Headers, RequestHead
from proxy.router.matchers import parse_header_matcher


def _req(headers=(), path="/p", host="example.com"):
    hs = Headers([(k.encode(), v.encode()) for k, v in headers])
    return RequestHead(b"GET", path.encode(), host.encode(), b"http", hs)


MATCHERS = [
    {"name": "x-api-key", "string_match": {"exact": "demo-key"}},
    {"name": "X-Api-Key", "string_match": {"exact": "demo-key"}},
    {"name": "x-api-key", "string_match": {"exact": "a,b"}},
    {"name": "x-api-key", "string_match": {"exact": ""}},
    {"name": "x-api-key", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
    {"name": "x-api-key", "string_match": {"exact": "demo-key"}, "invert_match": True},
    {"name": "x-api-key", "string_match": {"exact": "DEMO-KEY", "ignore_case": True}},
    {"name": "x-api-key", "string_match": {"prefix": "demo"}},
    {"name": ":path", "string_match": {"exact": "/p"}},
    {"name": "host", "string_match": {"exact": "example.com"}},
    {"name": "x-api-key", "present_match": True},
]
REQUESTS = [
    [],
    [("x-api-key", "demo-key")],
    [("x-api-key", "demo-key"), ("x-api-key", "demo-key")],
    [("x-api-key", "a"), ("x-api-key", "b")],
    [("x-api-key", "")],
    [("x-api-key", "Demo-Key")],
    [("x-other", "demo-key")],
]


@pytest.mark.parametrize("raw", MATCHERS, ids=lambda m: str(m))
def test_header_rule_decides_as_the_header_matcher(raw):
    m = parse_header_matcher(raw, "m")
    fn = predicate(Rule("header", m))
    for headers in REQUESTS:
        req = _req(headers)
        assert fn(LazyRequestFacts(None, req)) == m.matches(req), headers


def test_policies_combine_rules_with_and_or_not():
    rbac = parse_rbac({"action": "ALLOW", "policies": {
        "both": {"permissions": [{"and_rules": {"rules": [
                    {"header": {"name": "a", "string_match": {"exact": "1"}}},
                    {"not_rule": {"header": {"name": "b", "present_match": True}}}]}}],
                 "principals": [{"any": True}]},
        "either": {"permissions": [{"or_rules": {"rules": [
                    {"header": {"name": "c", "string_match": {"exact": "1"}}},
                    {"url_path": {"path": {"prefix": "/open"}}}]}}],
                   "principals": [{"any": True}]},
    }}, "rules")
    cases = {
        (("a", "1"),): "both",
        (("a", "1"), ("b", "x")): None,
        (("c", "1"),): "either",
        (("a", "2"), ("c", "2")): None,
    }
    for headers, want in cases.items():
        assert rbac.matched_policy(LazyRequestFacts(None, _req(headers))) == want, headers
    assert rbac.matched_policy(LazyRequestFacts(None, _req(path="/open/x?q=1"))) == "either"
    assert rbac.matched_policy(LazyRequestFacts(None, _req(path="/closed"))) is None



def test_an_exact_header_value_no_header_can_carry_is_a_config_that_never_matches():
    """Found by the config fuzz campaign: an exact value outside latin-1 ('€') crashed the
    fast path's encoding at load; it is a predicate that never matches, as HeaderMatcher's."""
    from types import SimpleNamespace

    from proxy.http.filters.rbac_config import _header_predicate
    from proxy.http.headers import Headers, RequestHead
    from proxy.router.matchers import parse_header_matcher
    pred = _header_predicate(parse_header_matcher({"name": "x-k", "string_match": {"exact": "/€"}}, "h"))
    head = RequestHead(b"GET", b"/", b"a", b"http", Headers([(b"x-k", "/€".encode())]), b"1.1")
    assert pred(SimpleNamespace(req=head)) is False


def test_metadata_rules_read_the_streams_dynamic_metadata_and_the_routes_metadata():
    from types import SimpleNamespace

    from proxy.http.filters.rbac_config import RequestFacts
    md = {"filter": "auth", "path": [{"key": "role"}], "value": {"string_match": {"exact": "admin"}}}
    rbac = parse_rbac({"action": "ALLOW", "policies": {
        "dyn": {"permissions": [{"metadata": md}], "principals": [{"any": True}]},
        "not_user": {"permissions": [{"url_path": {"path": {"prefix": "/inv"}}}],
                     "principals": [{"metadata": {**md, "value": {"string_match": {"exact": "user"}}, "invert": True}}]},
        "route": {"permissions": [{"url_path": {"path": {"prefix": "/route"}}}], "principals": [{"sourced_metadata": {
            "metadata_source": "ROUTE", "metadata_matcher": {**md, "filter": "rt"}}}]},
    }}, "rules")

    def facts(path="/p", dynamic=None, route_md=None):
        route = SimpleNamespace(metadata=route_md or {})
        cb = SimpleNamespace(stream_info=SimpleNamespace(dynamic_metadata=dynamic), route=lambda: route)
        return LazyRequestFacts(cb, _req(path=path))
    assert rbac.matched_policy(facts(dynamic={"auth": {"role": "admin"}})) == "dyn"
    assert rbac.matched_policy(facts(dynamic={"auth": {"role": "user"}})) is None
    assert rbac.matched_policy(facts("/inv")) == "not_user"                       # no metadata: inverted
    assert rbac.matched_policy(facts("/inv", {"auth": {"role": "user"}})) is None
    assert rbac.matched_policy(facts("/route", route_md={"rt": {"role": "admin"}})) == "route"
    assert rbac.matched_policy(facts("/route", {"rt": {"role": "admin"}})) is None  # not the route's
    # The network filter's facts carry no metadata: a metadata rule there sees none.
    net = RequestFacts(None, "", None, None, None, 0, "", None)
    assert rbac.matched_policy(net) is None
