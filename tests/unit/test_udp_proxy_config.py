"""UDP listeners and the udp_proxy listener filter's config: what loads, and each refusal
naming its field path. Plus the session table's bookkeeping (no sockets, times passed in)."""

from __future__ import annotations

import copy

import pytest

import proxy.extensions  # noqa: F401  registers the filters
from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.network.udp.config import UdpProxyConfig
from proxy.network.udp.session_table import SessionTable

ROUTE = {"@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
         "cluster": "service_udp"}
BASE = {"static_resources": {
    "listeners": [{
        "name": "listener_0",
        "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": 10000}},
        "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
            "stat_prefix": "service",
            "matcher": {"on_no_match": {"action": {"name": "route", "typed_config": ROUTE}}}}}],
    }],
    "clusters": [{"name": "service_udp", "type": "STATIC", "load_assignment": {
        "cluster_name": "service_udp", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 5005}}}}]}]}}],
}}
PATH = "static_resources.listeners[0].listener_filters[0].typed_config"


def _with(**proxy_fields) -> dict:
    b = copy.deepcopy(BASE)
    b["static_resources"]["listeners"][0]["listener_filters"][0]["typed_config"].update(proxy_fields)
    return b


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    return str(e.value)


def test_the_example_shape_loads_with_envoys_defaults():
    lc = parse_bootstrap(copy.deepcopy(BASE)).listeners[0]
    assert lc.protocol == "UDP" and lc.filter_chains == ()
    assert lc.listener_filters[0].config == UdpProxyConfig("service", "service_udp", 60.0)


def test_the_legacy_cluster_field_and_idle_timeout():
    raw = _with(idle_timeout="5s", cluster="other")
    del raw["static_resources"]["listeners"][0]["listener_filters"][0]["typed_config"]["matcher"]
    cfg = parse_bootstrap(raw).listeners[0].listener_filters[0].config
    assert (cfg.cluster, cfg.idle_timeout) == ("other", 5.0)


@pytest.mark.parametrize("field,value", [
    ("hash_policies", [{"source_ip": True}]),
    ("use_original_src_ip", True),
    ("session_filters", [{"name": "x"}]),
    ("access_log", [{"name": "x"}]),
    ("tunneling_config", {"proxy_host": "x"}),
    ("use_per_packet_load_balancing", True),
    ("upstream_socket_config", {"max_rx_datagram_size": 9000}),
])
def test_unsupported_fields_are_refused_by_path(field, value):
    assert f"{PATH}.{field}: not supported yet" in _error(_with(**{field: value}))


def test_matcher_beyond_on_no_match_is_refused():
    raw = _with(matcher={"matcher_list": {"matchers": []}, "on_no_match": {"action": {
        "name": "route", "typed_config": ROUTE}}})
    assert f"{PATH}.matcher.matcher_list: not supported yet" in _error(raw)


def test_cluster_and_matcher_together_and_neither_are_errors():
    assert "only one of cluster, matcher" in _error(_with(cluster="x"))
    raw = _with()
    del raw["static_resources"]["listeners"][0]["listener_filters"][0]["typed_config"]["matcher"]
    assert "one of cluster, matcher is required" in _error(raw)


def test_a_zero_idle_timeout_and_a_missing_stat_prefix_are_errors():
    assert f"{PATH}.idle_timeout: not supported yet" in _error(_with(idle_timeout="0s"))
    assert f"{PATH}.idle_timeout: duration must not be negative" in _error(_with(idle_timeout="-1s"))
    raw = _with()
    del raw["static_resources"]["listeners"][0]["listener_filters"][0]["typed_config"]["stat_prefix"]
    assert f"{PATH}.stat_prefix" in _error(raw)


def test_a_udp_listener_takes_no_filter_chains_and_exactly_the_udp_proxy():
    raw = copy.deepcopy(BASE)
    raw["static_resources"]["listeners"][0]["filter_chains"] = [{"filters": []}]
    assert "static_resources.listeners[0].filter_chains: not supported yet" in _error(raw)
    raw = copy.deepcopy(BASE)
    raw["static_resources"]["listeners"][0]["listener_filters"] = []
    assert "exactly one listener filter" in _error(raw)
    raw = copy.deepcopy(BASE)
    raw["static_resources"]["listeners"][0]["listener_filters"] = [{
        "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    assert "unsupported udp listener filter type" in _error(raw)


def test_a_tcp_listener_cannot_take_the_udp_proxy():
    raw = copy.deepcopy(BASE)
    raw["static_resources"]["listeners"][0]["address"]["socket_address"]["protocol"] = "TCP"
    raw["static_resources"]["listeners"][0]["filter_chains"] = [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "service_udp"}}]}]
    assert "unsupported listener filter type" in _error(raw)


def test_a_tcp_and_a_udp_listener_may_share_a_port():
    raw = copy.deepcopy(BASE)
    raw["static_resources"]["listeners"].append({
        "name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "service_udp"}}]}]})
    assert [lc.protocol for lc in parse_bootstrap(raw).listeners] == ["UDP", "TCP"]


def test_the_admin_address_must_be_tcp():
    raw = copy.deepcopy(BASE)
    raw["admin"] = {"address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1",
                                                   "port_value": 0}}}
    assert "admin.address.socket_address.protocol: not supported yet" in _error(raw)


# -- the session table ------------------------------------------------------------------------

def test_sessions_expire_after_idle_timeout_without_a_touch():
    t: SessionTable[str] = SessionTable(10.0)
    t.add(("a", 1), "A", now=0.0)
    t.add(("b", 2), "B", now=1.0)
    assert t.next_deadline() == 10.0
    t.touch(("a", 1), now=5.0)           # a datagram either way restarts A's deadline
    assert t.next_deadline() == 11.0
    assert t.expire(10.9) == []
    assert t.expire(11.0) == ["B"]
    assert ("b", 2) not in t and t.get(("a", 1)) == "A"
    assert t.expire(14.9) == [] and t.expire(15.0) == ["A"]
    assert len(t) == 0 and t.next_deadline() is None


def test_one_session_per_peer_and_removal():
    t: SessionTable[str] = SessionTable(1.0)
    t.add(("a", 1), "A", 0.0)
    with pytest.raises(KeyError):
        t.add(("a", 1), "A2", 0.0)
    assert t.remove(("a", 1)) == "A" and t.remove(("a", 1)) is None
    t.touch(("a", 1), 5.0)               # a touch of no session is a no-op
    assert len(t) == 0
    with pytest.raises(ValueError):
        SessionTable(0)


def test_a_udp_listener_over_lds_is_nacked_naming_its_address():
    from proxy.xds.lds import LdsApplier

    class Target:   # an LDS target with no listener yet (ListenerTarget)
        placed: list = []

        def is_static(self, name): return False
        def dynamic_names(self): return set()
        def cluster_names(self): return {"service_udp"}
        def cluster_configs(self): return []
        def add_or_update(self, config, version_info, path): self.placed.append(config.name)
        def remove(self, name): pass

    target = Target()
    raw = copy.deepcopy(BASE["static_resources"]["listeners"][0])
    with pytest.raises(ConfigError) as e:
        LdsApplier(target).on_update([(raw, "resources[0]")], "1")
    assert "resources[0].address: not supported yet (a UDP listener over LDS" in str(e.value)
    assert target.placed == []
