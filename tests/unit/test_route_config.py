"""Parsing of config.route.v3.RouteConfiguration: defaults, precompiled pieces, and config
errors that name the full JSON path."""

from __future__ import annotations

import base64

import pytest

from proxy.config.reader import ConfigError
from proxy.router import parse_route_configuration
from proxy.router.header_mutation import (ADD_IF_ABSENT, APPEND_IF_EXISTS_OR_ADD,
                                          OVERWRITE_IF_EXISTS, OVERWRITE_IF_EXISTS_OR_ADD)


def rc(routes=None, *, domains=("*",), vhost_extra=None, **top):
    vh = {"name": "vh", "domains": list(domains),
          "routes": routes if routes is not None else [{"match": {"prefix": "/"},
                                                        "route": {"cluster": "c"}}]}
    vh.update(vhost_extra or {})
    return {"name": "rc", "virtual_hosts": [vh], **top}


def parse(raw):
    return parse_route_configuration(raw, "route_config")


def error(raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw)
    return str(e.value)


# -- defaults ---------------------------------------------------------------------------------

def test_route_action_defaults_follow_envoy():
    route = parse(rc()).virtual_hosts[0].routes[0]
    a = route.action
    assert (a.cluster, a.timeout, a.idle_timeout, a.cluster_not_found_response_code) == \
        ("c", 15.0, None, 503)
    assert route.redirect is None and route.direct_response is None
    assert route.name == "" and route.virtual_host_name == "vh"


def test_route_config_defaults():
    c = parse(rc())
    assert c.ignore_port_in_host_matching is False
    # max_direct_response_body_size_bytes: 4096 unless set.
    assert parse(_direct({"inline_string": "x" * 4096}))
    msg = error(_direct({"inline_string": "x" * 4097}))
    assert "max_direct_response_body_size_bytes (4096)" in msg


def test_route_action_fields_parsed():
    a = parse(rc([{"name": "r1", "match": {"prefix": "/"}, "route": {
        "cluster_header": "X-Cluster", "timeout": "0s", "idle_timeout": "2.5s",
        "host_rewrite_literal": "up.example", "cluster_not_found_response_code": "not_found",
        "upgrade_configs": [{"upgrade_type": "WebSocket"}, {"upgrade_type": "CONNECT",
                                                              "enabled": False}]}}])
              ).virtual_hosts[0].routes[0].action
    assert a.cluster_header == b"x-cluster" and a.cluster is None
    assert a.timeout == 0.0 and a.idle_timeout == 2.5
    assert a.host_rewrite_literal == b"up.example"
    assert a.cluster_not_found_response_code == 404
    assert a.upgrade_configs == (("websocket", True), ("connect", False))


def test_weighted_clusters_parsed_in_order():
    a = parse(rc([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}}}])).virtual_hosts[0].routes[0].action
    assert a.weighted_clusters == (("a", 1), ("b", 3))


def test_redirect_response_code_names_map_to_status():
    codes = {}
    for name in ("MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT",
                 "PERMANENT_REDIRECT"):
        r = parse(rc([{"match": {"prefix": "/"}, "redirect": {"response_code": name}}]))
        codes[name] = r.virtual_hosts[0].routes[0].redirect.response_code
    assert codes == {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303,
                     "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
    r = parse(rc([{"match": {"prefix": "/"}, "redirect": {"host_redirect": "x"}}]))
    assert r.virtual_hosts[0].routes[0].redirect.response_code == 301


# -- direct_response bodies -----------------------------------------------------------------

def _direct(body):
    return rc([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}])


def test_direct_response_inline_string_and_bytes():
    d = parse(_direct({"inline_string": "hi"})).virtual_hosts[0].routes[0].direct_response
    assert (d.status, d.body) == (200, b"hi")
    raw = base64.b64encode(b"\x00\x01").decode()
    d = parse(_direct({"inline_bytes": raw})).virtual_hosts[0].routes[0].direct_response
    assert d.body == b"\x00\x01"


def test_direct_response_filename_is_read_at_parse_time(tmp_path):
    p = tmp_path / "body.txt"
    p.write_bytes(b"from file")
    d = parse(_direct({"filename": str(p)})).virtual_hosts[0].routes[0].direct_response
    assert d.body == b"from file"


def test_direct_response_missing_file_names_the_path(tmp_path):
    msg = error(_direct({"filename": str(tmp_path / "nope")}))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].direct_response.body.filename:")


def test_direct_response_body_over_limit_is_rejected():
    msg = error(dict(_direct({"inline_string": "x" * 11}), max_direct_response_body_size_bytes=10))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].direct_response.body:")
    assert "max_direct_response_body_size_bytes" in msg


def test_direct_response_status_range():
    msg = error(rc([{"match": {"prefix": "/"}, "direct_response": {"status": 99}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].direct_response.status:")


# -- errors name full paths -----------------------------------------------------------------

def test_missing_match_names_route_path():
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"}},
                    {"route": {"cluster": "c"}}]))
    assert msg == "route_config.virtual_hosts[0].routes[1].match: required field is missing"


def test_match_without_path_specifier_is_rejected():
    msg = error(rc([{"match": {"headers": []}, "route": {"cluster": "c"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].match: one of prefix")


def test_bad_regex_is_a_config_error_at_its_path():
    msg = error(rc([{"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "c"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].match.safe_regex.regex: "
                          "invalid regex")


def test_bad_header_regex_is_a_config_error_at_its_path():
    msg = error(rc([{"match": {"prefix": "/", "headers": [
        {"name": "x", "string_match": {"safe_regex": {"regex": "["}}}]}, "route": {"cluster": "c"}}]))
    assert msg.startswith(
        "route_config.virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex:")


def test_unknown_field_suggests_a_name():
    msg = error(rc([{"match": {"prefx": "/"}, "route": {"cluster": "c"}}]))
    assert 'unknown field "prefx"' in msg and 'did you mean "prefix"' in msg


def test_route_needs_exactly_one_action():
    msg = error(rc([{"match": {"prefix": "/"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0]: one of route, redirect")
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"},
                     "direct_response": {"status": 200}}]))
    assert "only one of" in msg


@pytest.mark.parametrize("where,field,value,expected_path", [
    ("vhost", "cors", {}, "route_config.virtual_hosts[0].cors"),
    ("vhost", "rate_limits", [{"actions": [{"dynamic_metadata": {}}]}],
     "route_config.virtual_hosts[0].rate_limits[0].actions[0].dynamic_metadata"),
    ("vhost", "virtual_clusters", [{"name": "v"}], "route_config.virtual_hosts[0].virtual_clusters"),
    ("vhost", "hedge_policy", {"initial_requests": 3},
     "route_config.virtual_hosts[0].hedge_policy.initial_requests"),
    ("action", "retry_policy", {"retry_on": "5xx", "retry_priority": {"name": "x"}},
     "route_config.virtual_hosts[0].routes[0].route.retry_policy.retry_priority"),
    ("action", "hash_policy", [{"filter_state": {"key": "x"}}],
     "route_config.virtual_hosts[0].routes[0].route.hash_policy[0].filter_state"),
    ("match", "runtime_fraction", {}, "route_config.virtual_hosts[0].routes[0].match.runtime_fraction"),
])
def test_unsupported_fields_are_refused_by_name(where, field, value, expected_path):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    extra = None
    if where == "vhost":
        extra = {field: value}
    elif where == "action":
        route["route"][field] = value
    else:
        route["match"][field] = value
    msg = error(rc([route], vhost_extra=extra))
    assert msg.startswith(expected_path + ": not supported yet")


def test_refused_fields_say_why_in_the_common_wording():
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "retry_priority": {"name": "envoy.retry_priorities.previous_priorities"}}}}
    assert error(rc([route])) == ("route_config.virtual_hosts[0].routes[0].route.retry_policy."
                                  "retry_priority: not supported yet (priority levels are not built)")


@pytest.mark.parametrize("raw,expected", [
    # Real Envoy fields that were unknown ("did you mean") or silently ignored before.
    (rc(vhost_header="x-host"), "route_config.vhost_header"),
    (rc([{"match": {"prefix": "/", "cookies": [{"name": "c"}]}, "route": {"cluster": "c"}}]),
     "route_config.virtual_hosts[0].routes[0].match.cookies"),
    (rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "flush_timeout": "1s"}}]),
     "route_config.virtual_hosts[0].routes[0].route.flush_timeout"),
    (rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite": "%REQ(x)%"}}]),
     "route_config.virtual_hosts[0].routes[0].route.host_rewrite"),
    (rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "path_rewrite": "/x"}}]),
     "route_config.virtual_hosts[0].routes[0].route.path_rewrite"),
    (rc([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "clusters": [{"name": "a", "weight": 1}], "use_hash_policy": True}}}]),
     "route_config.virtual_hosts[0].routes[0].route.weighted_clusters.use_hash_policy"),
    (rc([{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body_format": {"text_format": "x"}}}]),
     "route_config.virtual_hosts[0].routes[0].direct_response.body_format"),
    (rc([{"match": {"safe_regex": {"regex": "/.*", "google_re2": {"max_program_size": 10}}},
          "route": {"cluster": "c"}}]),
     "route_config.virtual_hosts[0].routes[0].match.safe_regex.google_re2.max_program_size"),
])
def test_real_envoy_fields_not_implemented_are_refused_by_name(raw, expected):
    assert error(raw).startswith(expected + ": not supported yet")


@pytest.mark.parametrize("raw,unknown", [
    # Names that are no field of these messages in Envoy 1.40 (refused before as "unsupported").
    (rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "request_body_buffer_limit": 1}}]),
     "request_body_buffer_limit"),
    (rc([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "clusters": [{"name": "a", "weight": 1}], "random_value_specifier": "x"}}}]),
     "random_value_specifier"),
    (rc([{"match": {"prefix": "/", "cel_expression": {}}, "route": {"cluster": "c"}}]),
     "cel_expression"),
])
def test_names_envoy_does_not_have_are_unknown_fields(raw, unknown):
    assert f'unknown field "{unknown}"' in error(raw)


@pytest.mark.parametrize("where,field", [
    ("route", "per_request_buffer_limit_bytes"), ("route", "request_body_buffer_limit"),
    ("vhost", "per_request_buffer_limit_bytes"), ("vhost", "request_body_buffer_limit")])
def test_a_refused_wrapper_field_is_refused_even_at_zero(where, field):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    if where == "route":
        route[field] = 0
        at = "route_config.virtual_hosts[0].routes[0]"
    else:
        at = "route_config.virtual_hosts[0]"
    raw = rc([route], vhost_extra={field: 0} if where == "vhost" else None)
    assert error(raw) == f"{at}.{field}: not supported yet"
    raw = rc([{"match": {"safe_regex": {"regex": "/.*", "google_re2": {"max_program_size": 0}}},
               "route": {"cluster": "c"}}])
    assert error(raw).endswith("google_re2.max_program_size: not supported yet (RE2 program-size limits)")


def test_google_re2_without_limits_and_empty_refused_lists_are_accepted():
    parse(rc([{"match": {"safe_regex": {"regex": "/.*", "google_re2": {}}},
               "route": {"cluster": "c"}}], vhost_extra={"rate_limits": [], "virtual_clusters": []}))


def test_decorator_and_metadata_are_accepted():
    parse(rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"},
               "decorator": {"operation": "op"}, "metadata": {"filter_metadata": {}}}]))


def test_domain_must_be_unique_across_virtual_hosts():
    raw = {"virtual_hosts": [
        {"name": "a", "domains": ["Foo.com"], "routes": []},
        {"name": "b", "domains": ["bar.com", "foo.com"], "routes": []}]}
    msg = error(raw)
    assert msg.startswith("route_config.virtual_hosts[1].domains[1]: domain 'foo.com' is already")


def test_only_one_star_domain():
    raw = {"virtual_hosts": [
        {"name": "a", "domains": ["*"], "routes": []},
        {"name": "b", "domains": ["*"], "routes": []}]}
    assert error(raw).startswith("route_config.virtual_hosts[1].domains[0]: only one virtual host")


def test_virtual_host_requires_name_and_domains():
    assert error({"virtual_hosts": [{"domains": ["*"]}]}) == \
        "route_config.virtual_hosts[0].name: required field is missing"
    assert error({"virtual_hosts": [{"name": "x"}]}) == \
        "route_config.virtual_hosts[0].domains: required field is missing"


def test_weighted_clusters_need_positive_total():
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "clusters": [{"name": "a", "weight": 0}]}}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters:")


def test_weighted_total_weight_must_equal_sum():
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "clusters": [{"name": "a", "weight": 1}], "total_weight": 100}}}]))
    assert "total_weight" in msg


def test_prefix_rewrite_with_regex_match_is_rejected():
    msg = error(rc([{"match": {"safe_regex": {"regex": "/a.*"}},
                     "route": {"cluster": "c", "prefix_rewrite": "/"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].route.prefix_rewrite:")


def test_path_separated_prefix_must_not_end_with_slash():
    msg = error(rc([{"match": {"path_separated_prefix": "/foo/"}, "route": {"cluster": "c"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].match.path_separated_prefix:")


def test_regex_substitution_group_out_of_range():
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "regex_rewrite": {
        "pattern": {"regex": "^/(a)"}, "substitution": "/\\2"}}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].route.regex_rewrite.substitution:")


# -- header mutation parsing --------------------------------------------------------------------

def _hv(**kw):
    return rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"},
                "request_headers_to_add": [kw]}])


def test_append_action_default_and_legacy_append():
    def action(**kw):
        return parse(_hv(**kw)).virtual_hosts[0].routes[0].request_mutations[0].append_action
    h = {"key": "x", "value": "1"}
    assert action(header=h) == APPEND_IF_EXISTS_OR_ADD
    assert action(header=h, append=True) == APPEND_IF_EXISTS_OR_ADD
    assert action(header=h, append=False) == OVERWRITE_IF_EXISTS_OR_ADD
    assert action(header=h, append_action="add_if_absent") == ADD_IF_ABSENT
    assert action(header=h, append_action="OVERWRITE_IF_EXISTS") == OVERWRITE_IF_EXISTS


def test_append_and_append_action_together_are_rejected():
    msg = error(_hv(header={"key": "x", "value": "1"}, append=True,
                    append_action="ADD_IF_ABSENT"))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].request_headers_to_add[0]:")


def test_pseudo_and_host_headers_may_not_be_mutated():
    for key in (":path", "Host"):
        msg = error(_hv(header={"key": key, "value": "1"}))
        assert msg.startswith(
            "route_config.virtual_hosts[0].routes[0].request_headers_to_add[0].header.key:")
    msg = error(rc(vhost_extra={"request_headers_to_remove": [":authority"]}))
    assert msg.startswith("route_config.virtual_hosts[0].request_headers_to_remove[0]:")


def test_unknown_header_value_operator_is_rejected():
    msg = error(_hv(header={"key": "x", "value": "%UPSTREAM_METADATA([\"a\"])%"}))
    assert msg.startswith(
        "route_config.virtual_hosts[0].routes[0].request_headers_to_add[0].header.value:")
    msg = error(_hv(header={"key": "x", "value": "50%"}))
    assert "literal percent" in msg


def test_mutation_levels_are_combined_inner_first():
    raw = rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"},
               "request_headers_to_add": [{"header": {"key": "x-level", "value": "route"}}]}],
             vhost_extra={"request_headers_to_add": [{"header": {"key": "x-level",
                                                                  "value": "vhost"}}]},
             request_headers_to_add=[{"header": {"key": "x-level", "value": "config"}}])
    muts = parse(raw).virtual_hosts[0].routes[0].request_mutations
    assert [m.value.source for m in muts] == ["route", "vhost", "config"]
    raw["most_specific_header_mutations_wins"] = True
    muts = parse(raw).virtual_hosts[0].routes[0].request_mutations
    assert [m.value.source for m in muts] == ["config", "vhost", "route"]


def test_each_level_removes_before_adding():
    raw = rc([{"match": {"prefix": "/"}, "route": {"cluster": "c"},
               "response_headers_to_add": [{"header": {"key": "a", "value": "1"}}],
               "response_headers_to_remove": ["b"]}])
    muts = parse(raw).virtual_hosts[0].routes[0].response_mutations
    assert [(m.name, m.remove) for m in muts] == [(b"b", True), (b"a", False)]


def test_require_tls_builds_redirect_route():
    vh = parse(rc(vhost_extra={"require_tls": "all"})).virtual_hosts[0]
    assert vh.require_tls == "ALL"
    assert vh.tls_redirect_route.redirect.https_redirect is True
    assert vh.tls_redirect_route.redirect.response_code == 301


def test_route_priority_high_is_parsed_and_default_otherwise():
    routes = [{"match": {"prefix": "/a"}, "route": {"cluster": "c", "priority": "HIGH"}},
              {"match": {"prefix": "/b"}, "route": {"cluster": "c", "priority": "DEFAULT"}},
              {"match": {"prefix": "/c"}, "route": {"cluster": "c"}}]
    got = [r.action.high_priority for r in parse(rc(routes)).virtual_hosts[0].routes]
    assert got == [True, False, False]


def test_route_priority_unknown_value_names_the_field():
    msg = error(rc([{"match": {"prefix": "/"}, "route": {"cluster": "c", "priority": "URGENT"}}]))
    assert msg.startswith("route_config.virtual_hosts[0].routes[0].route.priority:"), msg


def test_shadow_authority_inserts_the_suffix_before_a_port():
    from proxy.router.mirror_policy import shadow_authority
    assert shadow_authority(b"example.com") == b"example.com-shadow"
    assert shadow_authority(b"example.com:8080") == b"example.com-shadow:8080"
    assert shadow_authority(b"[::1]:80") == b"[::1]-shadow:80"


def test_hash_policy_rules_as_envoys():
    """Rotate-and-XOR of each found input, a terminal policy that hashed ends the list, a
    header's values sorted and chained; a cookie, a query parameter, the source IP."""
    from proxy.http.headers import Headers, RequestHead
    from proxy.router.hash_policy import HashPolicy, request_hash
    from proxy.upstream.hashing_lb import xxhash64
    head = RequestHead(b"GET", b"/p?id=7&x=1", b"h.test", b"http", Headers([
        (b"x-user", b"bob"), (b"x-team", b"b"), (b"x-team", b"a"), (b"cookie", b"k=v; session=\"s1\"")]))
    user, team = HashPolicy("header", "x-user"), HashPolicy("header", "x-team")
    hu = xxhash64(b"bob")
    assert request_hash((user,), head, "", xxhash64) == hu
    assert request_hash((team,), head, "", xxhash64) == xxhash64(b"b", xxhash64(b"a"))
    rot = ((hu << 1) | (hu >> 63)) & ((1 << 64) - 1)
    assert request_hash((user, team), head, "", xxhash64) == rot ^ xxhash64(b"b", xxhash64(b"a"))
    assert request_hash((HashPolicy("header", "x-user", terminal=True), team), head, "", xxhash64) == hu
    assert request_hash((HashPolicy("header", "x-none", terminal=True), user), head, "", xxhash64) == hu
    assert request_hash((HashPolicy("cookie", "session"),), head, "", xxhash64) == xxhash64(b"s1")
    assert request_hash((HashPolicy("query_parameter", "id"),), head, "", xxhash64) == xxhash64(b"7")
    assert request_hash((HashPolicy("source_ip"),), head, "10.0.0.1", xxhash64) == xxhash64(b"10.0.0.1")
    assert request_hash((HashPolicy("header", "x-none"),), head, "", xxhash64) is None
