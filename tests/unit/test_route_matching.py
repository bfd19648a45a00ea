"""RouteTable: virtual-host selection, route matchers, cluster choice, rewrites, redirects,
direct responses and header mutations, with Envoy's semantics."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from proxy.http.headers import Headers, RequestHead
from proxy.router import RouteTable, apply_mutations, parse_route_configuration


def req(path="/", host="example.com", method="GET", headers=(), scheme="http"):
    hs = Headers([(k.encode(), v.encode()) for k, v in headers])
    return RequestHead(method.encode(), path.encode(), host.encode(), scheme.encode(), hs)


def table(virtual_hosts, **top):
    return RouteTable(parse_route_configuration({"virtual_hosts": virtual_hosts, **top}, "rc"))


def vhost(name, domains, routes=None):
    return {"name": name, "domains": domains,
            "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}


def one(match, action=None, **vh):
    """Table with one catch-all vhost holding one route with `match`."""
    route = {"name": "r", "match": match, **(action or {"route": {"cluster": "c"}})}
    return table([{"name": "vh", "domains": ["*"], "routes": [route], **vh}])


def vh_of(t, host):
    r = t.route(req(host=host))
    return r.virtual_host_name if r else None


# -- virtual host selection ---------------------------------------------------------------------

DOMAINS = table([
    vhost("exact", ["www.foo.com"]),
    vhost("suffix", ["*.foo.com"]),
    vhost("long_suffix", ["*-bar.foo.com"]),
    vhost("prefix", ["foo.*"]),
    vhost("long_prefix", ["foo.bar.*"]),
    vhost("default", ["*"]),
])


def test_exact_domain_beats_wildcards():
    assert vh_of(DOMAINS, "www.foo.com") == "exact"


def test_suffix_wildcard_beats_prefix_wildcard():
    assert vh_of(DOMAINS, "api.foo.com") == "suffix"
    assert vh_of(DOMAINS, "foo.example") == "prefix"


def test_longest_suffix_wildcard_wins():
    assert vh_of(DOMAINS, "baz-bar.foo.com") == "long_suffix"


def test_longest_prefix_wildcard_wins():
    assert vh_of(DOMAINS, "foo.bar.baz") == "long_prefix"


def test_star_is_the_fallback():
    assert vh_of(DOMAINS, "other.org") == "default"


def test_wildcard_never_matches_empty():
    t = table([vhost("suffix", ["*.foo.com"]), vhost("prefix", ["foo.*"])])
    assert vh_of(t, ".foo.com") is None
    assert vh_of(t, "foo.") is None
    assert vh_of(t, "x.foo.com") == "suffix"


def test_host_matching_is_case_insensitive():
    t = table([vhost("a", ["WWW.Foo.com"])])
    assert vh_of(t, "www.FOO.com") == "a"


def test_the_port_is_part_of_the_host_matched():
    # Envoy 1.40 (checked): without ignore_port_in_host_matching, "foo.com:8080" matches
    # neither "foo.com" nor... only a domain naming the port (or "*").
    t = table([vhost("a", ["foo.com"]), vhost("w", ["*.bar.com"])])
    assert vh_of(t, "foo.com:8080") is None
    assert vh_of(t, "x.bar.com:443") is None
    assert vh_of(t, "[::1]:80") is None


def test_domain_with_port_matches_only_that_port():
    t = table([vhost("with_port", ["foo.com:8080"]), vhost("bare", ["foo.com"])])
    assert vh_of(t, "foo.com:8080") == "with_port"
    assert vh_of(t, "foo.com:9090") is None
    assert vh_of(t, "foo.com") == "bare"


def test_ignore_port_in_host_matching_strips_port_first():
    t = table([vhost("with_port", ["foo.com:8080"]), vhost("bare", ["foo.com"])],
              ignore_port_in_host_matching=True)
    assert vh_of(t, "foo.com:8080") == "bare"


def test_ipv6_host_port_stripping():
    t = table([vhost("v6", ["[::1]"])], ignore_port_in_host_matching=True)
    assert vh_of(t, "[::1]:10000") == "v6"
    assert vh_of(table([vhost("v6", ["[::1]"])]), "[::1]:10000") is None  # as Envoy


def test_no_virtual_host_means_no_route():
    t = table([vhost("a", ["foo.com"])])
    assert t.route(req(host="bar.com")) is None


# -- path matchers -----------------------------------------------------------------------------

def matches(match, **kw):
    return one(match).route(req(**kw)) is not None


def test_prefix_ignores_query():
    assert matches({"prefix": "/api"}, path="/api/x?y=1")
    assert not matches({"prefix": "/api"}, path="/ap?i")


def test_prefix_with_query_or_fragment_characters_matches_the_path_part_only():
    # Such prefixes cannot take the raw-target fast path: the path part of "/a?b" is "/a".
    assert not matches({"prefix": "/a?b"}, path="/a?b")
    assert not matches({"prefix": "/a#b"}, path="/a#b")
    assert matches({"prefix": "/a"}, path="/a#b")
    assert matches({"prefix": "/A", "case_sensitive": False}, path="/a/x?y=1")


def test_exact_path_ignores_query_and_fragment():
    assert matches({"path": "/a"}, path="/a?x=1")
    assert matches({"path": "/a"}, path="/a#frag")
    assert not matches({"path": "/a"}, path="/a/")


def test_case_insensitive_prefix_and_path():
    assert not matches({"prefix": "/API"}, path="/api/x")
    assert matches({"prefix": "/API", "case_sensitive": False}, path="/api/x")
    assert matches({"path": "/Foo", "case_sensitive": False}, path="/fOO")


def test_safe_regex_is_a_full_match_on_the_path():
    m = {"safe_regex": {"regex": "/v[0-9]+/.*"}}
    assert matches(m, path="/v1/users?q=1")
    assert not matches(m, path="/x/v1/users")
    assert not matches({"safe_regex": {"regex": "/v[0-9]"}}, path="/v12")


def test_path_separated_prefix_stops_at_segment_boundary():
    m = {"path_separated_prefix": "/foo"}
    assert matches(m, path="/foo")
    assert matches(m, path="/foo/bar")
    assert matches(m, path="/foo?x")
    assert not matches(m, path="/foobar")


def test_first_matching_route_wins():
    t = table([{"name": "vh", "domains": ["*"], "routes": [
        {"name": "specific", "match": {"prefix": "/api"}, "route": {"cluster": "a"}},
        {"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "b"}},
        {"name": "never", "match": {"prefix": "/api/x"}, "route": {"cluster": "c"}}]}])
    assert t.route(req("/api/x")).name == "specific"
    assert t.route(req("/other")).name == "all"


# -- header matchers -------------------------------------------------------------------------

def hmatch(matcher, headers=(), **kw):
    return matches({"prefix": "/", "headers": [matcher]}, headers=headers, **kw)


@pytest.mark.parametrize("spec,value,expected", [
    ({"exact": "abc"}, "abc", True), ({"exact": "abc"}, "abcd", False),
    ({"prefix": "ab"}, "abc", True), ({"prefix": "b"}, "abc", False),
    ({"suffix": "bc"}, "abc", True), ({"suffix": "b"}, "abc", False),
    ({"contains": "b"}, "abc", True), ({"contains": "z"}, "abc", False),
    ({"safe_regex": {"regex": "a.c"}}, "abc", True), ({"safe_regex": {"regex": "a"}}, "abc", False),
    ({"exact": "ABC", "ignore_case": True}, "abc", True), ({"exact": "ABC"}, "abc", False),
    ({"prefix": "AB", "ignore_case": True}, "abC", True),
])
def test_string_match_kinds(spec, value, expected):
    assert hmatch({"name": "x-h", "string_match": spec}, [("x-h", value)]) is expected


@pytest.mark.parametrize("legacy,value,expected", [
    ({"exact_match": "v"}, "v", True), ({"prefix_match": "v"}, "vv", True),
    ({"suffix_match": "z"}, "vv", False), ({"contains_match": "b"}, "abc", True),
    ({"safe_regex_match": {"regex": "[0-9]+"}}, "123", True),
])
def test_legacy_header_match_fields(legacy, value, expected):
    assert hmatch({"name": "x-h", **legacy}, [("x-h", value)]) is expected


def test_header_name_is_case_insensitive_and_multiple_values_are_joined():
    assert hmatch({"name": "X-H", "string_match": {"exact": "a,b"}}, [("x-h", "a"), ("x-h", "b")])


def test_missing_header_fails_unless_inverted():
    m = {"name": "x-h", "string_match": {"exact": "a"}}
    assert not hmatch(m)
    assert hmatch({**m, "invert_match": True})


def test_invert_match_negates():
    m = {"name": "x-h", "string_match": {"exact": "a"}, "invert_match": True}
    assert not hmatch(m, [("x-h", "a")])
    assert hmatch(m, [("x-h", "b")])


def test_treat_missing_header_as_empty():
    m = {"name": "x-h", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True}
    assert hmatch(m)
    assert not hmatch({"name": "x-h", "string_match": {"exact": ""}})


def test_present_match_true_false_and_default():
    assert hmatch({"name": "x-h", "present_match": True}, [("x-h", "")])
    assert not hmatch({"name": "x-h", "present_match": True})
    assert hmatch({"name": "x-h", "present_match": False})
    assert not hmatch({"name": "x-h", "present_match": False}, [("x-h", "1")])
    assert hmatch({"name": "x-h"}, [("x-h", "1")])          # no specifier: presence
    assert not hmatch({"name": "x-h", "present_match": True, "invert_match": True}, [("x-h", "1")])


def test_range_match_is_half_open_and_needs_an_integer():
    m = {"name": "x-n", "range_match": {"start": 10, "end": 20}}
    assert hmatch(m, [("x-n", "10")])
    assert hmatch(m, [("x-n", "-5")]) is False
    assert not hmatch(m, [("x-n", "20")])
    assert not hmatch(m, [("x-n", "ten")])
    assert hmatch({"name": "x-n", "range_match": {"start": -10, "end": 0}}, [("x-n", "-5")])


def test_pseudo_header_matchers():
    assert hmatch({"name": ":method", "string_match": {"exact": "POST"}}, method="POST")
    assert not hmatch({"name": ":method", "string_match": {"exact": "POST"}}, method="GET")
    assert hmatch({"name": ":path", "string_match": {"contains": "q=1"}}, path="/a?q=1")
    assert hmatch({"name": ":authority", "string_match": {"suffix": ".com"}}, host="a.com")


# -- query parameter and grpc matchers -------------------------------------------------------

def qmatch(q, path):
    return matches({"prefix": "/", "query_parameters": [q]}, path=path)


def test_query_parameter_string_match_uses_decoded_first_value():
    q = {"name": "debug", "string_match": {"exact": "a b"}}
    assert qmatch(q, "/x?debug=a%20b&debug=zzz")
    assert not qmatch(q, "/x?debug=zzz&debug=a%20b")
    assert not qmatch(q, "/x?other=a%20b")


def test_query_parameter_present_match():
    q = {"name": "flag", "present_match": True}
    assert qmatch(q, "/x?flag")
    assert qmatch(q, "/x?a=1&flag=")
    assert not qmatch(q, "/x?flagx=1")


def test_grpc_matcher_needs_grpc_content_type():
    m = {"prefix": "/", "grpc": {}}
    assert matches(m, headers=[("content-type", "application/grpc")])
    assert matches(m, headers=[("content-type", "application/grpc+proto")])
    assert not matches(m, headers=[("content-type", "application/json")])
    assert not matches(m)


# -- cluster choice ------------------------------------------------------------------------------

def test_weighted_cluster_distribution_by_rand():
    t = one({"prefix": "/"}, {"route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "z", "weight": 0}]}}})
    r = req()
    action = t.route(r).action
    picks = Counter(action.choose_cluster(r, n) for n in range(400))
    assert picks == {"a": 100, "b": 300}
    assert action.choose_cluster(r, 0) == "a" and action.choose_cluster(r, 1) == "b"


def test_weighted_cluster_header_name_supplies_the_random_value():
    t = one({"prefix": "/"}, {"route": {"weighted_clusters": {"header_name": "x-pick", "clusters": [
        {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}})
    r = req(headers=[("x-pick", "1")])
    assert t.route(r).action.choose_cluster(r, 0) == "b"


def test_cluster_header_picks_cluster_or_none():
    t = one({"prefix": "/"}, {"route": {"cluster_header": "x-cluster"}})
    r = req(headers=[("x-cluster", "backend")])
    assert t.route(r).action.choose_cluster(r, 7) == "backend"
    assert t.route(req()).action.choose_cluster(req(), 7) is None


# -- rewrites ---------------------------------------------------------------------------------

def rewritten(match, route_extra, path):
    t = one(match, {"route": {"cluster": "c", **route_extra}})
    r = req(path)
    return t.route(r).action.rewrite_path(r)


def test_prefix_rewrite_with_trailing_slashes():
    assert rewritten({"prefix": "/api/"}, {"prefix_rewrite": "/"}, "/api/users?x=1") == b"/users?x=1"
    assert rewritten({"prefix": "/api"}, {"prefix_rewrite": "/"}, "/api/users") == b"//users"
    assert rewritten({"prefix": "/api"}, {"prefix_rewrite": ""}, "/api/users") == b"/users"
    assert rewritten({"prefix": "/api"}, {"prefix_rewrite": "/v2"}, "/api/users") == b"/v2/users"


def test_prefix_rewrite_on_exact_path_and_case_insensitive_prefix():
    assert rewritten({"path": "/old"}, {"prefix_rewrite": "/new"}, "/old?q") == b"/new?q"
    assert rewritten({"prefix": "/API", "case_sensitive": False}, {"prefix_rewrite": "/x"},
                     "/api/y") == b"/x/y"


def test_regex_rewrite_substitutes_all_matches_and_keeps_query():
    rr = {"regex_rewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"},
                            "substitution": "\\2/instance/\\1"}}
    assert rewritten({"prefix": "/"}, rr, "/service/foo/v1/api?x=1") == b"/v1/api/instance/foo?x=1"
    rr = {"regex_rewrite": {"pattern": {"regex": "one"}, "substitution": "two"}}
    assert rewritten({"prefix": "/"}, rr, "/xxx/one/yyy/one/zzz") == b"/xxx/two/yyy/two/zzz"


def test_no_rewrite_returns_none():
    assert rewritten({"prefix": "/"}, {}, "/a") is None


# -- redirects -------------------------------------------------------------------------------

def location(redirect, path="/a/b?q=1", host="foo.com", match=None, **kw):
    t = one(match or {"prefix": "/a"}, {"redirect": redirect})
    r = req(path, host=host, **kw)
    return t.route(r).redirect.location(r)


def test_https_redirect_keeps_host_path_and_query():
    assert location({"https_redirect": True}) == b"https://foo.com/a/b?q=1"


def test_https_redirect_drops_default_http_port_only():
    assert location({"https_redirect": True}, host="foo.com:80") == b"https://foo.com/a/b?q=1"
    assert location({"https_redirect": True}, host="foo.com:8080") == \
        b"https://foo.com:8080/a/b?q=1"


def test_scheme_redirect_and_request_scheme():
    assert location({"host_redirect": "bar.com"}, scheme="https") == b"https://bar.com/a/b?q=1"
    assert location({"scheme_redirect": "ftp"}) == b"ftp://foo.com/a/b?q=1"


def test_host_and_port_redirect():
    assert location({"host_redirect": "bar.com"}, host="foo.com:8080") == b"http://bar.com/a/b?q=1"
    assert location({"port_redirect": 8443}, host="foo.com:8080") == b"http://foo.com:8443/a/b?q=1"
    assert location({"host_redirect": "bar.com", "port_redirect": 9}) == b"http://bar.com:9/a/b?q=1"


def test_path_redirect_keeps_request_query_unless_it_has_one():
    assert location({"path_redirect": "/new"}) == b"http://foo.com/new?q=1"
    assert location({"path_redirect": "/new?z=2"}) == b"http://foo.com/new?z=2"
    assert location({"path_redirect": "/new?z=2", "strip_query": True}) == b"http://foo.com/new?z=2"


def test_prefix_rewrite_redirect():
    assert location({"prefix_rewrite": "/x"}) == b"http://foo.com/x/b?q=1"


def test_regex_rewrite_redirect():
    assert location({"regex_rewrite": {"pattern": {"regex": "b"}, "substitution": "c"}}) == \
        b"http://foo.com/a/c?q=1"


def test_strip_query():
    assert location({"strip_query": True}) == b"http://foo.com/a/b"
    assert location({"prefix_rewrite": "/x", "strip_query": True}) == b"http://foo.com/x/b"


def test_redirect_status_code():
    t = one({"prefix": "/"}, {"redirect": {"https_redirect": True, "response_code": "FOUND"}})
    assert t.route(req()).redirect.response_code == 302


def test_require_tls_redirects_plain_requests():
    t = table([{**vhost("v", ["*"]), "require_tls": "ALL"}])
    r = t.route(req("/p?q", host="foo.com"))
    assert r.redirect is not None and r.redirect.response_code == 301
    assert r.redirect.location(req("/p?q", host="foo.com")) == b"https://foo.com/p?q"
    assert t.route(req(scheme="https")).action.cluster == "v"
    assert t.route(req(headers=[("x-forwarded-proto", "https")])).action is not None


def test_require_tls_external_only_exempts_internal_requests():
    t = table([{**vhost("v", ["*"]), "require_tls": "EXTERNAL_ONLY"}])
    assert t.route(req()).redirect is not None
    assert t.route(req(headers=[("x-envoy-internal", "true")])).action is not None


# -- direct response -------------------------------------------------------------------------

def test_direct_response_route():
    t = one({"path": "/health"}, {"direct_response": {"status": 503,
                                                       "body": {"inline_string": "down"}}})
    d = t.route(req("/health")).direct_response
    assert (d.status, d.body) == (503, b"down")
    assert t.route(req("/other")) is None


# -- header mutations --------------------------------------------------------------------------

def mutations_table(route_adds, vhost_adds=(), config_adds=(), **top):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"},
             "request_headers_to_add": list(route_adds)}
    vh = {"name": "v", "domains": ["*"], "routes": [route],
          "request_headers_to_add": list(vhost_adds)}
    return table([vh], request_headers_to_add=list(config_adds), **top)


def add(key, value, **kw):
    return {"header": {"key": key, "value": value}, **kw}


def apply(t, headers=(), info=None):
    h = Headers([(k.encode(), v.encode()) for k, v in headers])
    apply_mutations(t.route(req()).request_mutations, h, info)
    return [(k.decode(), v.decode()) for k, v in h]


def test_append_actions():
    t = mutations_table([
        add("a", "2"),                                            # default: append
        add("b", "2", append_action="ADD_IF_ABSENT"),
        add("c", "2", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
        add("d", "2", append_action="OVERWRITE_IF_EXISTS"),
        add("e", "2", append_action="OVERWRITE_IF_EXISTS"),
        add("f", "2", append=False),
    ])
    out = apply(t, [("a", "1"), ("b", "1"), ("c", "1"), ("c", "1b"), ("d", "1"), ("f", "1")])
    # Overwrites drop every old value and append the new one (Envoy's setReferenceKey).
    assert out == [("a", "1"), ("b", "1"), ("a", "2"), ("c", "2"), ("d", "2"), ("f", "2")]


def test_outer_level_wins_by_default_and_inner_with_most_specific():
    adds = dict(route_adds=[add("x", "route", append=False)],
                vhost_adds=[add("x", "vhost", append=False)],
                config_adds=[add("x", "config", append=False)])
    assert apply(mutations_table(**adds)) == [("x", "config")]
    assert apply(mutations_table(**adds, most_specific_header_mutations_wins=True)) == \
        [("x", "route")]


def test_empty_value_skipped_unless_keep_empty_value():
    t = mutations_table([add("a", ""), add("b", "", keep_empty_value=True)])
    assert apply(t) == [("b", "")]


def test_removal_happens_before_add_at_same_level():
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"},
             "request_headers_to_add": [add("x", "new")], "request_headers_to_remove": ["x"]}
    t = table([{"name": "v", "domains": ["*"], "routes": [route]}])
    assert apply(t, [("x", "old")]) == [("x", "new")]


def test_value_operators():
    t = mutations_table([
        add("x-addr", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        add("x-ip", "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;100%%"),
        add("x-ua", "%REQ(User-Agent)%"),
        add("x-alt", "%REQ(x-missing?x-other):3%"),
        add("x-start", "%START_TIME%"),
    ])
    info = SimpleNamespace(downstream_remote_address="10.0.0.1:5555", start_time=0.25,
                           request_headers=Headers([(b"user-agent", b"curl/8"),
                                                    (b"x-other", b"abcdef")]))
    assert apply(t, info=info) == [
        ("x-addr", "10.0.0.1:5555"), ("x-ip", "ip=10.0.0.1;100%"), ("x-ua", "curl/8"),
        ("x-alt", "abc"), ("x-start", "1970-01-01T00:00:00.250Z")]


def test_operator_values_without_info_are_empty_and_skipped():
    t = mutations_table([add("x-addr", "%DOWNSTREAM_REMOTE_ADDRESS%")])
    assert apply(t) == []


# -- dynamic_metadata (Envoy reads the stream's metadata as it is when the route is resolved) ---

def test_route_match_dynamic_metadata_needs_every_matcher_and_sees_the_heads_metadata():
    md = [{"filter": "ns", "path": [{"key": "k"}], "value": {"string_match": {"exact": "v"}}},
          {"filter": "ns", "path": [{"key": "n"}], "value": {"present_match": True}, "invert": True}]
    t = table([{"name": "vh", "domains": ["*"], "routes": [
        {"name": "md", "match": {"prefix": "/", "dynamic_metadata": md}, "route": {"cluster": "a"}},
        {"name": "other", "match": {"prefix": "/"}, "route": {"cluster": "b"}}]}])
    r = req("/x")
    assert t.route(r).name == "other"                       # no metadata yet
    r.dynamic_metadata = {"ns": {"k": "v"}}
    assert t.route(r).name == "md"
    r.dynamic_metadata = {"ns": {"k": "v", "n": 1}}           # the inverted one fails
    assert t.route(r).name == "other"
    assert t.route(req("/y")).name == "other"                 # another request: its own head


def test_route_match_dynamic_metadata_errors_name_the_field():
    with pytest.raises(Exception) as e:
        one({"prefix": "/", "dynamic_metadata": [{"filter": "ns", "path": [{"key": "k"}]}]})
    assert "rc.virtual_hosts[0].routes[0].match.dynamic_metadata[0].value: required field is missing" in str(e.value)
