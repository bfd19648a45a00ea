"""Route rate_limits (proxy/router/rate_limits.py): the descriptors each action makes, as Envoy's
RateLimitPolicyEntryImpl (entries of another stage ignored, a failing action dropping its
descriptor, skip_if_absent leaving only its entry out), and the config errors: each refused
action or field named by its path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.config.reader import ConfigError, Fields
from proxy.http.headers import Headers, RequestHead
from proxy.router.config import parse_route_configuration
from proxy.router.rate_limits import RATE_LIMIT, descriptors, parse_rate_limits


class Info:
    def __init__(self, remote: str = "10.1.2.3:5555") -> None:
        self.downstream_remote_address = remote


def _head(*headers, path=b"/p"):
    return RequestHead(b"GET", path, b"example.com", b"http", Headers(list(headers)), b"1.1")


def _entries(raw: list):
    return parse_rate_limits(Fields({"rate_limits": raw}, "route", ["rate_limits"]), "rate_limits")


def _build(raw, head=None, info=None, stage=0):
    out: list = []
    descriptors(_entries(raw), stage, head or _head(), info or Info(), b"front", b"svc", out)
    return out


def test_each_action():
    raw = [{"actions": [
        {"source_cluster": {}}, {"destination_cluster": {}},
        {"request_headers": {"header_name": "X-User", "descriptor_key": "user"}},
        {"remote_address": {}}, {"generic_key": {"descriptor_value": "g"}},
        {"generic_key": {"descriptor_value": "g2", "descriptor_key": "mine"}},
        {"header_value_match": {"descriptor_value": "m", "headers": [{"name": "x-user", "string_match": {"prefix": "al"}}]}},
        {"masked_remote_address": {"v4_prefix_mask_len": 16}},
        {"masked_remote_address": {}},
    ]}]
    assert _build(raw, _head((b"x-user", b"alice"))) == [(
        (b"source_cluster", b"front"), (b"destination_cluster", b"svc"), (b"user", b"alice"),
        (b"remote_address", b"10.1.2.3"), (b"generic_key", b"g"), (b"mine", b"g2"),
        (b"header_match", b"m"), (b"masked_remote_address", b"10.1.0.0/16"),
        (b"masked_remote_address", b"10.1.2.3/32"))]


def test_ipv6_remote_addresses():
    raw = [{"actions": [{"remote_address": {}}, {"masked_remote_address": {"v6_prefix_mask_len": 64}}]}]
    assert _build(raw, info=Info("[2001:db8::7]:443")) == [
        ((b"remote_address", b"2001:db8::7"), (b"masked_remote_address", b"2001:db8::/64"))]


def test_a_missing_header_drops_the_descriptor_or_only_its_entry():
    raw = [{"actions": [{"generic_key": {"descriptor_value": "a"}},
                        {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]},
           {"actions": [{"generic_key": {"descriptor_value": "b"}},
                        {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}}]},
           {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}}]}]
    assert _build(raw) == [((b"generic_key", b"b"),), ()]   # all skipped: an empty descriptor, as Envoy
    # The first value of a repeated header.
    assert _build(raw[:1], _head((b"x-user", b"a"), (b"x-user", b"b"))) == [((b"generic_key", b"a"), (b"user", b"a"))]


def test_header_value_match_expect_match():
    raw = [{"actions": [{"header_value_match": {"descriptor_value": "no", "expect_match": False,
                                                "headers": [{"name": "x-flag", "present_match": True}]}}]}]
    assert _build(raw) == [((b"header_match", b"no"),)]
    assert _build(raw, _head((b"x-flag", b"1"))) == []


def test_stage_selects_entries():
    raw = [{"actions": [{"generic_key": {"descriptor_value": "zero"}}]},
           {"stage": 3, "actions": [{"generic_key": {"descriptor_value": "three"}}]}]
    assert _build(raw) == [((b"generic_key", b"zero"),)]
    assert _build(raw, stage=3) == [((b"generic_key", b"three"),)]


def test_metadata_action_reads_a_string_of_the_dynamic_metadata():
    info = Info()
    info.dynamic_metadata = {"ns": {"user": "alice", "n": 3, "empty": "", "obj": {"k": "v"}}}

    def md(key_path, **more):
        return {"descriptor_key": "d", "metadata_key": {"key": "ns", "path": [{"key": k} for k in key_path]}, **more}
    g = {"generic_key": {"descriptor_value": "g"}}
    assert _build([{"actions": [g, {"metadata": md(["user"])}]}], info=info) == [
        ((b"generic_key", b"g"), (b"d", b"alice"))]
    assert _build([{"actions": [{"metadata": md(["obj", "k"])}]}], info=info) == [((b"d", b"v"),)]
    # not a string, empty, missing: the default, else skip_if_absent leaves the entry out, else no descriptor
    for path in (["n"], ["empty"], ["nope"], ["obj"]):
        assert _build([{"actions": [g, {"metadata": md(path, default_value="dflt")}]}], info=info) == [
            ((b"generic_key", b"g"), (b"d", b"dflt"))]
        assert _build([{"actions": [g, {"metadata": md(path, skip_if_absent=True)}]}], info=info) == [
            ((b"generic_key", b"g"),)]
        assert _build([{"actions": [g, {"metadata": md(path)}]}], info=info) == []
    assert _build([{"actions": [{"metadata": md(["user"])}]}], info=Info()) == []  # no metadata at all
    # source ROUTE_ENTRY: the route's metadata, not the stream's
    route_md = {"ns": {"user": "from-route"}}
    info.route = lambda: SimpleNamespace(metadata=route_md)
    assert _build([{"actions": [{"metadata": md(["user"], source="ROUTE_ENTRY")}]}], info=info) == [
        ((b"d", b"from-route"),)]
    route_md = {}
    assert _build([{"actions": [{"metadata": md(["user"], source="ROUTE_ENTRY", default_value="x")}]}],
                  info=info) == [((b"d", b"x"),)]


def test_disable_key_is_accepted_and_the_entry_stays_on():
    raw = [{"disable_key": "k", "actions": [{"generic_key": {"descriptor_value": "v"}}]}]
    assert _build(raw) == [((b"generic_key", b"v"),)]


@pytest.mark.parametrize("raw, where", [
    ([{"actions": [{"query_parameters": {"query_parameter_name": "q", "descriptor_key": "q"}}]}],
     "rate_limits[0].actions[0].query_parameters: not supported yet"),
    ([{"actions": [{"metadata": {}}]}], "rate_limits[0].actions[0].metadata.descriptor_key: required"),
    ([{"actions": [{"metadata": {"descriptor_key": "d", "metadata_key": {"key": "ns", "path": [{"key": "k"}]},
                                 "source": "ROUTE"}}]}],
     "rate_limits[0].actions[0].metadata.source: unknown value"),
    ([{"actions": [{"metadata": {"descriptor_key": "d", "metadata_key": {"key": "ns"}}}]}],
     "rate_limits[0].actions[0].metadata.metadata_key.path: required"),
    ([{"actions": [{"metadata": {"descriptor_key": "d", "metadata_key": {"key": "", "path": [{"key": "k"}]}}}]}],
     "rate_limits[0].actions[0].metadata.metadata_key.key: must not be empty"),
    ([{"actions": [{"dynamic_metadata": {"descriptor_key": "d"}}]}],
     "rate_limits[0].actions[0].dynamic_metadata: not supported yet (deprecated"),
    ([{"actions": [{"generic_key": {"descriptor_value": "v"}}], "limit": {}}], "rate_limits[0].limit: not supported yet"),
    ([{"actions": [{"generic_key": {"descriptor_value": "v"}}], "apply_on_stream_done": True}],
     "rate_limits[0].apply_on_stream_done: not supported yet"),
    ([{"actions": [{"generic_key": {"descriptor_value": "v"}}], "stage": 11}], "rate_limits[0].stage"),
    ([{"actions": []}], "rate_limits[0].actions"),
    ([{"actions": [{"request_headers": {"header_name": "x"}}]}], "rate_limits[0].actions[0].request_headers.descriptor_key"),
    ([{"actions": [{"generic_key": {}}]}], "rate_limits[0].actions[0].generic_key.descriptor_value"),
    ([{"actions": [{"header_value_match": {"descriptor_value": "v"}}]}], "rate_limits[0].actions[0].header_value_match.headers"),
    ([{"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 33}}]}],
     "rate_limits[0].actions[0].masked_remote_address.v4_prefix_mask_len"),
    ([{"actions": [{"remote_address": {}, "generic_key": {"descriptor_value": "v"}}]}], "rate_limits[0].actions[0]"),
])
def test_config_errors_name_the_field(raw, where):
    with pytest.raises(ConfigError) as e:
        _entries(raw)
    assert where in str(e.value)


def test_route_and_virtual_host_rate_limits_reach_the_route_action():
    rc = parse_route_configuration({"virtual_hosts": [{
        "name": "vh", "domains": ["*"],
        "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}],
        "routes": [
            {"match": {"prefix": "/a"}, "route": {"cluster": "c", "include_vh_rate_limits": True,
                                                  "rate_limits": [{"actions": [{"remote_address": {}}]}]}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}, "route_config")
    a, b = (r.action for r in rc.virtual_hosts[0].routes)
    assert a.include_vh_rate_limits and len(a.rate_limits) == 1 and len(a.vh_rate_limits) == 1
    assert not b.include_vh_rate_limits and b.rate_limits == () and len(b.vh_rate_limits) == 1
    assert RATE_LIMIT.proto == "envoy.config.route.v3.RateLimit"
