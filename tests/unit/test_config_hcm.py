"""HTTP connection manager, router filter and tcp_proxy config models."""

from __future__ import annotations

import pytest

import proxy.extensions  # noqa: F401  fills the registry
from proxy.config.reader import ConfigError
from proxy.config.registry import resolve
from proxy.http.hcm_config import HcmConfig, UpgradeConfig, parse_hcm
from proxy.http.router_filter_config import RouterFilterConfig, parse_router_filter
from proxy.network.tcp_proxy_config import TcpProxyConfig, WeightedCluster, parse_tcp_proxy

P = "hcm"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ROUTES = {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}


def _hcm(**fields) -> dict:
    raw = {"stat_prefix": "ingress", "route_config": ROUTES,
           "http_filters": [{"name": "envoy.filters.http.router"}]}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def _err(fn, raw, path=P) -> str:
    with pytest.raises(ConfigError) as e:
        fn(raw, path)
    return str(e.value)


# -- HCM ----------------------------------------------------------------------------------

def test_defaults_match_envoy():
    c = parse_hcm(_hcm(), P)
    assert (c.codec_type, c.use_remote_address, c.generate_request_id,
            c.server_name, c.server_header_transformation, c.stream_idle_timeout,
            c.request_timeout, c.drain_timeout, c.delayed_close_timeout, c.idle_timeout,
            c.max_headers_count, c.max_request_headers_kb, c.headers_with_underscores_action) == \
        ("AUTO", False, True, "envoy", "OVERWRITE", 300.0, 0.0, 5.0, 1.0, 3600.0, 100, 60, "ALLOW")
    assert c.http_protocol_options.accept_http_10 is False
    assert c.raw["stat_prefix"] == "ingress"


def test_name_only_router_filter_resolves():
    (flt,) = parse_hcm(_hcm(), P).http_filters
    assert flt.name == "envoy.filters.http.router"
    assert isinstance(flt.config, RouterFilterConfig)


def test_router_with_empty_typed_config_accepted():
    c = parse_hcm(_hcm(http_filters=[{"name": "envoy.filters.http.router", "typed_config": {}}]), P)
    assert isinstance(c.http_filters[0].config, RouterFilterConfig)


def test_router_by_type_url_with_fields():
    c = parse_hcm(_hcm(http_filters=[{"name": "router", "typed_config": {
        "@type": ROUTER_TYPE, "suppress_envoy_headers": True, "dynamic_stats": {"value": False}}}]), P)
    flt = c.http_filters[0]
    assert flt.name == "router"
    assert flt.config.suppress_envoy_headers is True and flt.config.dynamic_stats is False


def test_no_http_filters_gets_default_router():
    c = parse_hcm(_hcm(http_filters=[]), P)
    assert [f.name for f in c.http_filters] == ["envoy.filters.http.router"]


def test_router_must_be_last():
    router = {"name": "envoy.filters.http.router"}
    msg = _err(parse_hcm, _hcm(http_filters=[router, router]))
    assert msg == "hcm.http_filters[1]: the router filter (hcm.http_filters[0]) must be the last HTTP filter"


def test_unknown_optional_filter_is_skipped_but_required_one_refused():
    unknown = {"name": "x", "typed_config": {"@type": "type.googleapis.com/acme.Nope"}}
    router = {"name": "envoy.filters.http.router"}
    c = parse_hcm(_hcm(http_filters=[{**unknown, "is_optional": True}, router]), P)
    assert [f.name for f in c.http_filters] == ["envoy.filters.http.router"]
    assert _err(parse_hcm, _hcm(http_filters=[unknown, router])).startswith(
        'hcm.http_filters[0].typed_config["@type"]: unsupported http filter type')


def test_bad_filter_type_url_names_path():
    msg = _err(parse_hcm, _hcm(http_filters=[{"name": "r", "typed_config": {"@type": 5}}]))
    assert msg == 'hcm.http_filters[0].typed_config: missing "@type"'


def test_enums_are_case_insensitive():
    c = parse_hcm(_hcm(codec_type="http1", server_header_transformation="pass_through",
                       common_http_protocol_options={"headers_with_underscores_action": "reject_request"}), P)
    assert (c.codec_type, c.server_header_transformation, c.headers_with_underscores_action) == \
        ("HTTP1", "PASS_THROUGH", "REJECT_REQUEST")


def test_bad_enum_suggests():
    assert _err(parse_hcm, _hcm(codec_type="htp1")).startswith(
        'hcm.codec_type: unknown value "htp1" (did you mean "HTTP1"?)')


def test_http3_codec_refused_http2_accepted_with_its_options():
    assert "not supported yet" in _err(parse_hcm, _hcm(codec_type="http3"))
    c = parse_hcm(_hcm(codec_type="HTTP2", http2_protocol_options={
        "max_concurrent_streams": 7, "initial_stream_window_size": 65535}), P)
    assert c.codec_type == "HTTP2"
    assert c.http2_protocol_options.max_concurrent_streams == 7
    assert c.http2_protocol_options.initial_stream_window_size == 65535
    assert "not supported yet" in _err(parse_hcm, _hcm(http2_protocol_options={"allow_metadata": True}))
    assert parse_hcm(_hcm(http2_protocol_options={"allow_connect": True}), P).http2_protocol_options.allow_connect
    c = parse_hcm(_hcm(http2_protocol_options={"hpack_table_size": 100, "max_outbound_frames": 10}), P)
    assert (c.http2_protocol_options.hpack_table_size, c.http2_protocol_options.max_outbound_frames) == (100, 10)


def test_durations_parsed():
    c = parse_hcm(_hcm(stream_idle_timeout="0.25s", request_timeout={"seconds": "5"},
                       drain_timeout="2s", common_http_protocol_options={
                           "idle_timeout": "0s",
                           "max_requests_per_connection": 10, "max_headers_count": 50}), P)
    assert (c.stream_idle_timeout, c.request_timeout, c.drain_timeout, c.idle_timeout,
            c.max_requests_per_connection, c.max_headers_count) == (0.25, 5.0, 2.0, 0.0, 10, 50)


def test_bare_number_duration_is_refused_as_envoy_does():
    # Envoy 1.40: "invalid JSON ... @ drain_timeout: message google.protobuf.Duration ...
    # unexpected character: '2'; expected '\"'".
    assert _err(parse_hcm, _hcm(drain_timeout=2)) == (
        'hcm.drain_timeout: a duration is a string with its unit, such as "2s" (got the bare number 2)')


def test_request_headers_timeout_is_accepted_default_off():
    assert parse_hcm(_hcm(), P).request_headers_timeout == 0.0
    assert parse_hcm(_hcm(request_headers_timeout="1.5s"), P).request_headers_timeout == 1.5
    assert _err(parse_hcm, _hcm(request_headers_timeout="1m")).startswith(
        "hcm.request_headers_timeout: invalid duration")


def test_bad_duration_names_path():
    assert _err(parse_hcm, _hcm(stream_idle_timeout="5m")).startswith("hcm.stream_idle_timeout: invalid duration")


def test_missing_stat_prefix():
    raw = _hcm()
    del raw["stat_prefix"]
    assert _err(parse_hcm, raw) == "hcm.stat_prefix: required field is missing"


def test_route_config_required_and_rds_from_a_file_or_a_control_plane():
    raw = _hcm()
    del raw["route_config"]
    assert "one of route_config or rds is required" in _err(parse_hcm, raw)
    raw["rds"] = {"route_config_name": "r"}
    assert _err(parse_hcm, raw) == "hcm.rds.config_source: required field is missing"
    raw["rds"]["config_source"] = {"ads": {}}
    assert parse_hcm(raw, "hcm").rds.config_source.kind == "ads"
    raw["rds"]["config_source"] = {"self": {}}
    assert _err(parse_hcm, raw).startswith("hcm.rds.config_source.self: not supported yet")
    raw["rds"]["config_source"] = {"path_config_source": {"path": "/x/rds.yaml"}}
    rds = parse_hcm(raw, "hcm").rds
    assert (rds.config_source.path, rds.route_config_name) == ("/x/rds.yaml", "r")
    both = dict(raw, route_config=_hcm()["route_config"])
    assert "only one of" in _err(parse_hcm, both)


def test_route_config_errors_name_nested_path():
    bad = {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routez": []}]}
    assert _err(parse_hcm, _hcm(route_config=bad)).startswith("hcm.route_config.virtual_hosts[0]")


def test_max_request_headers_kb_bounds():
    assert parse_hcm(_hcm(max_request_headers_kb=8192), P).max_request_headers_kb == 8192
    assert _err(parse_hcm, _hcm(max_request_headers_kb=8193)) == "hcm.max_request_headers_kb: must be <= 8192, got 8193"
    assert _err(parse_hcm, _hcm(max_request_headers_kb=0)).startswith("hcm.max_request_headers_kb: must be >= 1")


def test_upgrade_configs_lower_cased():
    c = parse_hcm(_hcm(upgrade_configs=[{"upgrade_type": "WebSocket"},
                                        {"upgrade_type": "CONNECT", "enabled": False}]), P)
    assert c.upgrade_configs == (UpgradeConfig("websocket", True), UpgradeConfig("connect", False))


def test_http1_options_and_via():
    c = parse_hcm(_hcm(http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "h"},
                       use_remote_address=True, via="ftproxy"), P)
    assert (c.http_protocol_options.accept_http_10, c.http_protocol_options.default_host_for_http_10) == (True, "h")
    assert (c.use_remote_address, c.via) == (True, "ftproxy")


def test_known_options_without_runtime_support_are_refused_unless_default():
    # (xff_num_trusted_hops and internal_address_config are honoured: test_original_ip.py.)
    # The defaults themselves are accepted.
    parse_hcm(_hcm(xff_num_trusted_hops=0, internal_address_config={}, normalize_path=False,
                   common_http_protocol_options={"max_connection_duration": "0s"}), P)
    assert _err(parse_hcm, _hcm(common_http_protocol_options={"max_connection_duration": "5s"})) == (
        "hcm.common_http_protocol_options.max_connection_duration: not supported yet (only the "
        "default: no runtime behaviour yet)")


def test_unsupported_known_field_vs_typo():
    assert _err(parse_hcm, _hcm(scoped_routes={"name": "x"})) == "hcm.scoped_routes: not supported yet"
    assert _err(parse_hcm, _hcm(stat_prefx="x")).startswith(
        'hcm: unknown field "stat_prefx" (did you mean "stat_prefix"?)')


def test_hcm_registered_by_type_url():
    ext, cfg = resolve("network_filter", {"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters"
                                                           ".network.http_connection_manager.v3.HttpConnectionManager",
                                                           **_hcm()}}, "f")
    assert ext.name == "envoy.filters.network.http_connection_manager" and isinstance(cfg, HcmConfig)


# -- router filter ------------------------------------------------------------------------

def test_router_filter_defaults():
    assert parse_router_filter({}, "r") == RouterFilterConfig()
    assert RouterFilterConfig().dynamic_stats is True


def test_router_strict_check_headers_validated():
    c = parse_router_filter({"strict_check_headers": ["x-envoy-max-retries"]}, "r")
    assert c.strict_check_headers == (b"x-envoy-max-retries",)
    assert _err(parse_router_filter, {"strict_check_headers": ["x-foo"]}, "r").startswith(
        "r.strict_check_headers[0]: unknown header")


# -- tcp_proxy ----------------------------------------------------------------------------

def test_tcp_proxy_defaults():
    c = parse_tcp_proxy({"stat_prefix": "tcp", "cluster": "backend"}, "t")
    assert c == TcpProxyConfig(stat_prefix="tcp", cluster="backend")
    assert (c.idle_timeout, c.access_logs) == (3600.0, ())


def test_tcp_proxy_weighted_clusters_and_timeouts():
    c = parse_tcp_proxy({"stat_prefix": "tcp", "idle_timeout": "0s",
                         "weighted_clusters": {"clusters": [{"name": "a", "weight": 1},
                                                            {"name": "b", "weight": 3}]}}, "t")
    assert c.weighted_clusters == (WeightedCluster("a", 1), WeightedCluster("b", 3))
    assert (c.cluster, c.idle_timeout) == (None, 0.0)


def test_tcp_proxy_options_without_runtime_support_are_refused():
    assert _err(parse_tcp_proxy, {"stat_prefix": "s", "cluster": "a", "max_connect_attempts": 3}, "t") == \
        "t.max_connect_attempts: not supported yet (only 1: one connect attempt, no retry)"
    assert _err(parse_tcp_proxy, {"stat_prefix": "s", "cluster": "a",
                                  "max_downstream_connection_duration": "10s"}, "t").startswith(
        "t.max_downstream_connection_duration: not supported yet")


def test_tcp_proxy_requires_stat_prefix_and_one_cluster_choice():
    assert _err(parse_tcp_proxy, {"cluster": "a"}, "t") == "t.stat_prefix: required field is missing"
    assert _err(parse_tcp_proxy, {"stat_prefix": "s"}, "t") == "t: one of cluster, weighted_clusters is required"
    assert _err(parse_tcp_proxy, {"stat_prefix": "s", "cluster": "a",
                                  "weighted_clusters": {"clusters": []}}, "t").startswith("t: only one of")


def test_tcp_proxy_unsupported_field_named():
    assert _err(parse_tcp_proxy, {"stat_prefix": "s", "cluster": "a", "hash_policy": [{}]},
                "t") == "t.hash_policy: not supported yet"


def test_tcp_proxy_tunneling_config_takes_a_literal_hostname_and_headers_to_add():
    c = parse_tcp_proxy({"stat_prefix": "s", "cluster": "a", "tunneling_config": {
        "hostname": "h.example:443", "headers_to_add": [{"header": {"key": "x", "value": "%DOWNSTREAM_LOCAL_PORT%"}}]}}, "t")
    assert c.tunneling_hostname == "h.example:443" and len(c.tunneling_headers) == 1
    for bad, message in (({"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}, "t.tunneling_config.hostname: not supported yet"),
                         ({"hostname": "h", "use_post": True}, "t.tunneling_config.use_post: not supported yet"),
                         ({"hostname": "h", "post_path": "/p"}, "t.tunneling_config.post_path: not supported yet"),
                         ({}, "t.tunneling_config.hostname: required field is missing")):
        assert _err(parse_tcp_proxy, {"stat_prefix": "s", "cluster": "a", "tunneling_config": bad},
                    "t").startswith(message)
