"""CONNECT's configuration and its pure parts: `connect_matcher` routes, a route's CONNECT
upgrade config with `connect_config`, and the ORIGINAL_DST destination parser."""

from __future__ import annotations

import pytest

from proxy.config.reader import ConfigError
from proxy.http.headers import Headers, RequestHead
from proxy.router import RouteTable, parse_route_configuration
from proxy.upstream.original_dst import parse_ip_port


def _table(routes):
    return RouteTable(parse_route_configuration(
        {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}, "rc"))


def _req(method: bytes, path: bytes, headers=()):
    return RequestHead(method, path, b"h:443", b"http", Headers(list(headers)))


def test_connect_matcher_matches_connect_requests_only_and_with_its_other_criteria():
    t = _table([
        {"name": "foo", "match": {"connect_matcher": {}, "headers": [
            {"name": "foo", "string_match": {"exact": "bar"}}]}, "route": {"cluster": "a"}},
        {"name": "any-connect", "match": {"connect_matcher": {}}, "route": {"cluster": "b"}},
        {"name": "plain", "match": {"prefix": ""}, "route": {"cluster": "c"}},
    ])
    assert t.route(_req(b"CONNECT", b"", [(b"foo", b"bar")])).name == "foo"
    assert t.route(_req(b"CONNECT", b"")).name == "any-connect"
    assert t.route(_req(b"GET", b"/", [(b"foo", b"bar")])).name == "plain"


def test_a_path_route_never_matches_a_connect():
    t = _table([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}])
    assert t.route(_req(b"CONNECT", b"")) is None   # (Envoy: 404 NR)


def test_connect_config_makes_a_route_terminate_connect():
    def action(upgrades):
        t = _table([{"match": {"connect_matcher": {}}, "route": {"cluster": "c", "upgrade_configs": upgrades}}])
        return t.route(_req(b"CONNECT", b"")).action
    on = action([{"upgrade_type": "CONNECT", "connect_config": {}}])
    assert on.connect_terminate and on.upgrade_configs == (("connect", True),)
    assert not action([{"upgrade_type": "CONNECT"}]).connect_terminate           # forwarded
    assert not action([{"upgrade_type": "CONNECT", "enabled": False,
                         "connect_config": {}}]).connect_terminate


def test_connect_config_allow_post_and_proxy_protocol_version():
    def action(connect_config, enabled=True):
        t = _table([{"match": {"prefix": "/"}, "route": {"cluster": "c", "upgrade_configs": [
            {"upgrade_type": "CONNECT", "enabled": enabled, "connect_config": connect_config}]}}])
        return t.route(_req(b"POST", b"/")).action
    a = action({"allow_post": True, "proxy_protocol_config": {"version": "V2",
                "pass_through_tlvs": {"match_type": "INCLUDE_ALL"}}})
    assert (a.connect_allow_post, a.connect_proxy_protocol) == (True, 2)
    a = action({"proxy_protocol_config": {}})          # version's default is V1
    assert (a.connect_allow_post, a.connect_proxy_protocol) == (False, 1)
    a = action({"allow_post": True, "proxy_protocol_config": {}}, enabled=False)
    assert (a.connect_terminate, a.connect_allow_post, a.connect_proxy_protocol) == (False, False, 0)


@pytest.mark.parametrize("upgrade, message", [
    ({"upgrade_type": "CONNECT", "connect_config": {"proxy_protocol_config": {"version": "V3"}}},
     "proxy_protocol_config.version"),
    ({"upgrade_type": "CONNECT", "connect_config": {"proxy_protocol_config": {"versio": "V2"}}},
     'unknown field "versio"'),
    ({"upgrade_type": "websocket", "connect_config": {}},
     "connect_config: only a CONNECT upgrade config may have one, not 'websocket'"),
    ({"upgrade_type": "CONNECT", "connect_config": {"allow_postt": True}}, 'unknown field "allow_postt"'),
])
def test_connect_config_errors_name_the_field(upgrade, message):
    with pytest.raises(ConfigError) as e:
        _table([{"match": {"connect_matcher": {}}, "route": {"cluster": "c", "upgrade_configs": [upgrade]}}])
    assert message in str(e.value)
    assert "upgrade_configs[0].connect_config" in str(e.value)


def test_connect_matcher_takes_no_fields():
    with pytest.raises(ConfigError) as e:
        _table([{"match": {"connect_matcher": {"x": 1}}, "route": {"cluster": "c"}}])
    assert 'match.connect_matcher: unknown field "x"' in str(e.value)


@pytest.mark.parametrize("value, parsed", [
    ("127.0.0.1:443", ("127.0.0.1", 443)),
    ("[::1]:8443", ("::1", 8443)),
    ("10.1.2.3:0", ("10.1.2.3", 0)),
    ("localhost:443", None),       # names are not destinations
    ("127.0.0.1", None),
    ("127.0.0.1:70000", None),
    ("::1:443", None),             # IPv6 needs its brackets
    ("[127.0.0.1]:1", None),
    ("127.0.0.1:+1", None),
    ("", None),
])
def test_original_dst_destination_is_an_ip_and_port(value, parsed):
    assert parse_ip_port(value) == parsed
