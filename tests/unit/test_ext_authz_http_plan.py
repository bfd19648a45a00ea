"""ext_authz_http: the HTTP service's check request and answer selections, compiled once per
config, choose exactly what matching every pattern per header chose (Envoy's ListStringMatcher
over header names, case-sensitive unless ignore_case), and the check request carries the
headers in Envoy's order: content-length, the request's selected headers, the partial-body
flag, headers_to_add (each replacing its name)."""

from __future__ import annotations

import itertools

import pytest

from proxy.http.filters.ext_authz import parse_ext_authz
from proxy.http.filters.ext_authz_http import CheckPlan, HeaderNames, check_headers
from proxy.router.matchers import parse_string_matcher

PATTERNS = [
    {"exact": "x-tenant"}, {"exact": "X-Tenant"}, {"exact": "X-Tenant", "ignore_case": True},
    {"prefix": "x-trace-"}, {"prefix": "X-B3", "ignore_case": True}, {"suffix": "-id"},
    {"contains": "user"}, {"safe_regex": {"regex": "x-[a-c]+"}}, {"exact": "host"},
    {"exact": "caf\u00e9"}, {"exact": "\u212a"},
]
NAMES = [b"x-tenant", b"x-trace-id", b"x-b3-spanid", b"x-request-id", b"x-current-user",
         b"x-abc", b"x-abd", b"host", b"content-length", b"authorization", b"caf\xe9", b"k"]


def _reference(matchers, name: bytes) -> bool:
    text = name.decode("latin-1")
    return any(m.match(text) for m in matchers)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_precompiled_names_choose_what_the_patterns_choose(size):
    for combo in itertools.combinations(PATTERNS, size):
        matchers = [parse_string_matcher(p, "p") for p in combo]
        names = HeaderNames(matchers)
        for name in NAMES:
            assert (name in names) == _reference(matchers, name), (combo, name)


def test_always_and_never_names_win_over_the_patterns():
    matchers = [parse_string_matcher({"prefix": "h"}, "p"), parse_string_matcher({"exact": "content-length"}, "p")]
    names = HeaderNames(matchers, always=(b"authorization",), never=(b"host", b"content-length"))
    assert b"authorization" in names and b"hello" in names
    assert b"host" not in names and b"content-length" not in names


def _config(**http):
    raw = {"http_service": {"server_uri": {"uri": "http://a", "cluster": "a", "timeout": "1s"}, **http}}
    allowed = http.pop("allowed_headers", None)
    if allowed is not None:
        raw["allowed_headers"] = {"patterns": allowed}
        del raw["http_service"]["allowed_headers"]
    return parse_ext_authz(raw, "f")


def _reference_fields(cfg, fields, body_len, partial):
    """The check request's headers as the filter made them before plans (per header, every
    pattern asked)."""
    out = [(b"content-length", b"%d" % body_len)]
    for name, value in fields:
        if name in (b"host", b"content-length"):
            continue
        if name == b"authorization" or (cfg.allowed_headers and _reference(cfg.allowed_headers, name)):
            out.append((name, value))
    if partial is not None:
        out.append((b"x-envoy-auth-partial-body", b"true" if partial else b"false"))
    for name, value in cfg.headers_to_add:
        out = [kv for kv in out if kv[0] != name]
        out.append((name, value.format(None).encode("latin-1", "replace")))
    return out


REQUEST = [(b"host", b"a"), (b"authorization", b"Bearer t"), (b"x-tenant", b"t1"),
           (b"content-length", b"5"), (b"x-trace-id", b"1"), (b"x-tenant", b"t2"),
           (b"x-authz-caller", b"client"), (b"accept", b"*/*")]


@pytest.mark.parametrize("http", [
    {},
    {"allowed_headers": [{"exact": "x-tenant"}]},
    {"allowed_headers": [{"exact": "x-tenant"}, {"prefix": "x-trace-"}, {"exact": "host"}]},
    {"authorization_request": {"headers_to_add": [{"key": "x-authz-caller", "value": "front"},
                                                  {"key": "Authorization", "value": "static"},
                                                  {"key": "x-authz-caller", "value": "again"}]},
     "allowed_headers": [{"contains": "caller"}]},
])
@pytest.mark.parametrize("body_len,partial", [(0, None), (5, False), (3, True)])
def test_the_check_request_carries_what_it_carried_before_plans(http, body_len, partial):
    cfg = _config(**http)
    got = check_headers(CheckPlan.compile(cfg), REQUEST, body_len, partial, None)
    assert got == _reference_fields(cfg, REQUEST, body_len, partial)


def test_a_header_value_with_an_operator_is_formatted_per_request_and_a_literal_once():
    cfg = _config(authorization_request={"headers_to_add": [
        {"key": "x-literal", "value": "50%% off"}, {"key": "x-peer", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}]})
    plan = CheckPlan.compile(cfg)
    assert [(n, v) for n, v, _ in plan.headers_to_add] == [(b"x-literal", b"50% off"), (b"x-peer", None)]


def test_response_lists_are_compiled_only_when_configured():
    plan = CheckPlan.compile(_config())
    assert (plan.upstream, plan.upstream_append, plan.on_success, plan.client) == (None, None, None, None)
    plan = CheckPlan.compile(_config(authorization_response={
        "allowed_upstream_headers": {"patterns": [{"exact": "x-current-user"}]},
        "allowed_client_headers": {"patterns": [{"prefix": "x-deny-"}]}}))
    assert b"x-current-user" in plan.upstream and b"x-other" not in plan.upstream
    # a denial's defaults go with allowed_client_headers; its content-length never does
    assert b"www-authenticate" in plan.client and b"x-deny-why" in plan.client
    assert b"content-length" not in plan.client and b"host" not in plan.client
