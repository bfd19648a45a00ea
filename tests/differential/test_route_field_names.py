"""The route configuration's declared field tables name only fields real Envoy has.

For each table of the router layer (proxy/router/*: RouteConfiguration down to HeaderValue),
every declared field is set, to null (proto3 JSON for "unset"), at a place of that message in a
bootstrap real Envoy validates (`envoy --mode validate`); Envoy must not answer "no such field"
for any of them. This catches a table declaring, as used, inert or refused, a name that is no
field of that message (which ftproxy should report as an unknown field, with its did-you-mean).
The other direction (every Envoy field declared) is the tables' own review against Envoy's
protos; fields_table.py's docstring says how a field is declared.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

import proxy.config.load  # noqa: F401  the catalogue of extensions
from proxy.config.registry import load_all
from proxy.config.fields_table import tables

from .proxies import envoy_binary

load_all()  # every config module imported: fills the tables

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


_LUA_CS = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"


def _route_config() -> dict[str, Any]:
    return {"cluster_specifier_plugins": [{"extension": {"name": "p", "typed_config": {
                "@type": _LUA_CS, "source_code": {"inline_string": "function envoy_on_route(h) return 'c' end"}}}}],
            "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
        {"match": {"prefix": "/", "grpc": {},
                   "headers": [{"name": "x", "string_match": {
                       "safe_regex": {"regex": "a", "google_re2": {}}}}],
                   "query_parameters": [{"name": "q"}]},
         "route": {"cluster": "c", "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
                   "upgrade_configs": [{"upgrade_type": "websocket"}],
                   "max_stream_duration": {"max_stream_duration": "1s"},
                   "request_mirror_policies": [{"cluster": "c"}],
                   "hash_policy": [{"header": {"header_name": "x"}}, {"cookie": {"name": "c", "attributes": [{"name": "a"}]}},
                                   {"connection_properties": {"source_ip": True}},
                                   {"query_parameter": {"name": "q"}}],
                   "rate_limits": [{"actions": [
                       {"request_headers": {"header_name": "x", "descriptor_key": "k"}},
                       {"generic_key": {"descriptor_value": "v"}},
                       {"header_value_match": {"descriptor_value": "v",
                                               "headers": [{"name": "x", "present_match": True}]}},
                       {"masked_remote_address": {}}, {"source_cluster": {}},
                       {"metadata": {"descriptor_key": "d", "metadata_key": {
                           "key": "f", "path": [{"key": "k"}]}}}]}],
                   "retry_policy": {"retry_back_off": {"base_interval": "0.1s"},
                                    "rate_limited_retry_back_off": {
                                        "reset_headers": [{"name": "retry-after"}]}},
                   "hedge_policy": {}, "internal_redirect_policy": {}},
         "request_headers_to_add": [{"header": {"key": "a", "value": "b"}}],
         "decorator": {"operation": "op"}, "tracing": {}, "metadata": {"filter_metadata": {"x": {}}},
         "typed_per_filter_config": {"envoy.filters.http.router": {"@type": _FILTER_CONFIG,
                                                                    "disabled": False}}},
        {"match": {"prefix": "/", "headers": [{"name": "y", "range_match": {"start": 1, "end": 2}}],
                   "tls_context": {"presented": True},
                   "dynamic_metadata": [
                       {"filter": "f", "path": [{"key": "k"}], "value": {"double_match": {"exact": 1}}},
                       {"filter": "f", "path": [{"key": "k"}],
                        "value": {"list_match": {"one_of": {"null_match": {}}}}},
                       {"filter": "f", "path": [{"key": "k"}],
                        "value": {"or_match": {"value_matchers": [{"present_match": True}]}}}]},
         "route": {"weighted_clusters": {"clusters": [{"name": "c", "weight": 1}]}}},
        {"match": {"prefix": "/"}, "redirect": {"host_redirect": "x"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x"}}},
        {"match": {"connect_matcher": {}},
         "route": {"cluster": "c", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}},
    ]}]}


def _route(i: int) -> Callable[[dict], dict]:
    return lambda rc: rc["virtual_hosts"][0]["routes"][i]


def _action(rc: dict, i: int) -> dict:
    return rc["virtual_hosts"][0]["routes"][0]["route"]["rate_limits"][0]["actions"][i]


def _metadata_matcher(rc: dict, i: int) -> dict:
    return rc["virtual_hosts"][0]["routes"][1]["match"]["dynamic_metadata"][i]


# Where each table's message sits in _route_config().
_AT: dict[str, Callable[[dict], dict]] = {
    "envoy.config.route.v3.RouteConfiguration": lambda rc: rc,
    "envoy.config.route.v3.ClusterSpecifierPlugin": lambda rc: rc["cluster_specifier_plugins"][0],
    "envoy.config.route.v3.VirtualHost": lambda rc: rc["virtual_hosts"][0],
    "envoy.config.route.v3.Route": _route(0),
    "envoy.config.route.v3.RouteMatch": lambda rc: _route(0)(rc)["match"],
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": lambda rc: _route(0)(rc)["match"]["grpc"],
    "envoy.config.route.v3.HeaderMatcher": lambda rc: _route(0)(rc)["match"]["headers"][0],
    "envoy.type.matcher.v3.StringMatcher":
        lambda rc: _route(0)(rc)["match"]["headers"][0]["string_match"],
    "envoy.type.matcher.v3.RegexMatcher":
        lambda rc: _route(0)(rc)["match"]["headers"][0]["string_match"]["safe_regex"],
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2":
        lambda rc: _route(0)(rc)["match"]["headers"][0]["string_match"]["safe_regex"]["google_re2"],
    "envoy.config.route.v3.QueryParameterMatcher":
        lambda rc: _route(0)(rc)["match"]["query_parameters"][0],
    "envoy.config.route.v3.RouteAction": lambda rc: _route(0)(rc)["route"],
    "envoy.type.matcher.v3.RegexMatchAndSubstitute": lambda rc: _route(0)(rc)["route"]["regex_rewrite"],
    "envoy.config.route.v3.RetryPolicy": lambda rc: _route(0)(rc)["route"]["retry_policy"],
    "envoy.config.route.v3.RetryPolicy.RetryBackOff":
        lambda rc: _route(0)(rc)["route"]["retry_policy"]["retry_back_off"],
    "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff":
        lambda rc: _route(0)(rc)["route"]["retry_policy"]["rate_limited_retry_back_off"],
    "envoy.config.route.v3.RetryPolicy.ResetHeader":
        lambda rc: _route(0)(rc)["route"]["retry_policy"]["rate_limited_retry_back_off"][
            "reset_headers"][0],
    "envoy.config.route.v3.HedgePolicy": lambda rc: _route(0)(rc)["route"]["hedge_policy"],
    "envoy.config.route.v3.InternalRedirectPolicy":
        lambda rc: _route(0)(rc)["route"]["internal_redirect_policy"],
    "envoy.config.route.v3.RouteMatch.ConnectMatcher": lambda rc: _route(4)(rc)["match"]["connect_matcher"],
    "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig":
        lambda rc: _route(4)(rc)["route"]["upgrade_configs"][0]["connect_config"],
    "envoy.config.route.v3.RouteAction.UpgradeConfig":
        lambda rc: _route(0)(rc)["route"]["upgrade_configs"][0],
    "envoy.config.route.v3.RouteAction.MaxStreamDuration":
        lambda rc: _route(0)(rc)["route"]["max_stream_duration"],
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy":
        lambda rc: _route(0)(rc)["route"]["request_mirror_policies"][0],
    "envoy.config.route.v3.RateLimit": lambda rc: _route(0)(rc)["route"]["rate_limits"][0],
    "envoy.config.route.v3.RateLimit.Action": lambda rc: _action(rc, 0),
    "envoy.config.route.v3.RateLimit.Action.RequestHeaders": lambda rc: _action(rc, 0)["request_headers"],
    "envoy.config.route.v3.RateLimit.Action.GenericKey": lambda rc: _action(rc, 1)["generic_key"],
    "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch":
        lambda rc: _action(rc, 2)["header_value_match"],
    "envoy.config.route.v3.RateLimit.Action.MaskedRemoteAddress":
        lambda rc: _action(rc, 3)["masked_remote_address"],
    "envoy.config.route.v3.RateLimit.Action.{SourceCluster,DestinationCluster,RemoteAddress}":
        lambda rc: _action(rc, 4)["source_cluster"],
    "envoy.config.route.v3.RouteAction.HashPolicy": lambda rc: _route(0)(rc)["route"]["hash_policy"][0],
    "envoy.config.route.v3.RouteAction.HashPolicy.Header":
        lambda rc: _route(0)(rc)["route"]["hash_policy"][0]["header"],
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie":
        lambda rc: _route(0)(rc)["route"]["hash_policy"][1]["cookie"],
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute":
        lambda rc: _route(0)(rc)["route"]["hash_policy"][1]["cookie"]["attributes"][0],
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties":
        lambda rc: _route(0)(rc)["route"]["hash_policy"][2]["connection_properties"],
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter":
        lambda rc: _route(0)(rc)["route"]["hash_policy"][3]["query_parameter"],
    "envoy.config.core.v3.HeaderValueOption (route)": lambda rc: _route(0)(rc)["request_headers_to_add"][0],
    "envoy.config.core.v3.HeaderValue (route)":
        lambda rc: _route(0)(rc)["request_headers_to_add"][0]["header"],
    "envoy.config.route.v3.Decorator": lambda rc: _route(0)(rc)["decorator"],
    "envoy.config.route.v3.Tracing": lambda rc: _route(0)(rc)["tracing"],
    "envoy.config.core.v3.Metadata (route)": lambda rc: _route(0)(rc)["metadata"],
    "envoy.config.route.v3.FilterConfig":
        lambda rc: _route(0)(rc)["typed_per_filter_config"]["envoy.filters.http.router"],
    "envoy.type.v3.Int64Range (range_match)": lambda rc: _route(1)(rc)["match"]["headers"][0]["range_match"],
    "envoy.config.route.v3.RouteMatch.TlsContextMatchOptions": lambda rc: _route(1)(rc)["match"]["tls_context"],
    "envoy.type.matcher.v3.MetadataMatcher": lambda rc: _metadata_matcher(rc, 0),
    "envoy.type.matcher.v3.MetadataMatcher.PathSegment": lambda rc: _metadata_matcher(rc, 0)["path"][0],
    "envoy.type.matcher.v3.ValueMatcher": lambda rc: _metadata_matcher(rc, 0)["value"],
    "envoy.type.matcher.v3.DoubleMatcher": lambda rc: _metadata_matcher(rc, 0)["value"]["double_match"],
    "envoy.type.matcher.v3.ListMatcher": lambda rc: _metadata_matcher(rc, 1)["value"]["list_match"],
    "envoy.type.matcher.v3.ValueMatcher.NullMatch":
        lambda rc: _metadata_matcher(rc, 1)["value"]["list_match"]["one_of"]["null_match"],
    "envoy.type.matcher.v3.OrMatcher": lambda rc: _metadata_matcher(rc, 2)["value"]["or_match"],
    "envoy.config.route.v3.RateLimit.Action.MetaData": lambda rc: _action(rc, 5)["metadata"],
    "envoy.config.route.v3.WeightedCluster": lambda rc: _route(1)(rc)["route"]["weighted_clusters"],
    "envoy.config.route.v3.WeightedCluster.ClusterWeight":
        lambda rc: _route(1)(rc)["route"]["weighted_clusters"]["clusters"][0],
    "envoy.config.route.v3.RedirectAction": lambda rc: _route(2)(rc)["redirect"],
    "envoy.config.route.v3.DirectResponseAction": lambda rc: _route(3)(rc)["direct_response"],
    "envoy.config.core.v3.DataSource (direct response body)":
        lambda rc: _route(3)(rc)["direct_response"]["body"],
}

def _bootstrap(route_config: dict[str, Any]) -> dict[str, Any]:
    return {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": 10000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                           "@type": _HCM, "stat_prefix": "x", "route_config": route_config,
                           "http_filters": [{"name": "envoy.filters.http.router",
                                             "typed_config": {"@type": _ROUTER}}]}}]}]}],
        "clusters": [{"name": "c", "connect_timeout": "1s", "type": "STATIC"}]}}


def _envoy_says(route_config: dict[str, Any], tmp_path) -> str:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_bootstrap(route_config)))
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "critical"],
                         capture_output=True, text=True, timeout=60)
    # Whitespace squashed: protobuf's JSON errors vary their spacing on purpose.
    return " ".join((out.stdout + out.stderr).split())


def test_every_router_table_has_a_place_here():
    router = {p for p in tables() if (".route.v3." in p or ".matcher.v3." in p
              or p.endswith(("(route)", "(range_match)", "(direct response body)")))
              and not p.endswith(("(RBAC)", "(ext_authz)", "(stats_matcher)", "(UDP proxy)"))}  # (others' copies of a matcher)
    assert router == set(_AT), router ^ set(_AT)


def test_the_probe_sees_an_unknown_field(tmp_path):
    rc = _route_config()
    _AT["envoy.config.route.v3.RouteAction"](rc)["no_such_field_here"] = None
    assert "no such field: 'no_such_field_here'" in _envoy_says(rc, tmp_path)


@pytest.mark.parametrize("proto", sorted(_AT))
def test_every_declared_field_is_a_field_of_the_message_in_envoy(proto, tmp_path):
    rc = _route_config()
    at = _AT[proto](rc)
    for spec in tables()[proto].fields:
        at[spec.name] = None
    said = _envoy_says(rc, tmp_path)
    assert "no such field" not in said, said[-800:]
