"""parse_cluster: Envoy v3 Cluster -> ClusterConfig, and errors that name the full path."""

from __future__ import annotations

import pytest

from proxy.config.reader import ConfigError
from proxy.upstream.health_check_config import EndpointHealthCheck
from proxy.upstream.cluster_config import (
    ClusterConfig, EndpointConfig, Thresholds, parse_cluster, parse_clusters,
)

P = "static_resources.clusters[0]"


def sock(address: str, port: int) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def lb_endpoint(address: str, port: int, **extra) -> dict:
    return {"endpoint": {"address": sock(address, port)}, **extra}


def cluster(**fields) -> dict:
    base = {
        "name": "backend",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [lb_endpoint("127.0.0.1", 8080)]}],
        },
    }
    base.update(fields)
    return base


def error(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_cluster(raw, P)
    return str(e.value)


# -- happy paths --------------------------------------------------------------------------

def test_minimal_static_cluster_gets_envoy_defaults():
    raw = {"name": "c"}
    cfg = parse_cluster(raw, P)
    assert cfg == ClusterConfig(name="c")
    assert (cfg.type, cfg.lb_policy, cfg.connect_timeout) == ("STATIC", "ROUND_ROBIN", 5.0)
    assert cfg.dns_refresh_rate == 5.0 and cfg.dns_lookup_family == "AUTO"
    assert cfg.per_connection_buffer_limit_bytes == 1024 * 1024
    assert cfg.circuit_breakers == Thresholds(1024, 1024, 1024, 3)
    assert cfg.idle_timeout == 3600.0 and cfg.max_requests_per_connection is None
    assert cfg.raw is raw


def test_front_proxy_style_cluster_parses_endpoints_weights_and_hostnames():
    raw = cluster(
        type="static", lb_policy="round_robin",
        load_assignment={"cluster_name": "backend", "endpoints": [
            {"locality": {"zone": "a"}, "priority": 0, "lb_endpoints": [
                lb_endpoint("10.0.0.1", 80, load_balancing_weight=3, health_status="HEALTHY",
                            metadata={"filter_metadata": {}}),
                {"endpoint": {"address": sock("::1", 81), "hostname": "web",
                              "health_check_config": {"port_value": 9}}},
            ]}]},
    )
    cfg = parse_cluster(raw, P)
    assert cfg.connect_timeout == 0.25
    assert cfg.endpoints == (
        EndpointConfig("10.0.0.1", 80, 3, "", "HEALTHY", locality=("", "a", "")),
        EndpointConfig("::1", 81, 1, "web", "UNKNOWN", EndpointHealthCheck(port=9), locality=("", "a", "")),
    )


def test_legacy_hosts_list_is_accepted():
    cfg = parse_cluster({"name": "c", "hosts": [sock("127.0.0.2", 9000)]}, P)
    assert cfg.endpoints == (EndpointConfig("127.0.0.2", 9000),)


def test_enums_may_be_given_by_number_as_in_proto_json():
    cfg = parse_cluster({"name": "c", "type": 1, "lb_policy": 3,
                         "load_assignment": {"endpoints": [{"lb_endpoints": [
                             lb_endpoint("example.com", 80)]}]}}, P)
    assert (cfg.type, cfg.lb_policy) == ("STRICT_DNS", "RANDOM")


def test_dns_cluster_accepts_hostnames_and_dns_knobs():
    cfg = parse_cluster(cluster(
        type="LOGICAL_DNS", dns_refresh_rate="30s", dns_lookup_family="v4_only",
        load_assignment={"endpoints": [{"lb_endpoints": [lb_endpoint("example.com", 443)]}]},
    ), P)
    assert cfg.type == "LOGICAL_DNS" and cfg.endpoints[0].address == "example.com"
    assert (cfg.dns_refresh_rate, cfg.dns_lookup_family) == (30.0, "V4_ONLY")


def test_respect_dns_ttl_is_refused_since_getaddrinfo_has_no_ttl():
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.respect_dns_ttl: not supported yet"):
        parse_cluster(cluster(type="STRICT_DNS", respect_dns_ttl=True,
                              load_assignment={"endpoints": [{"lb_endpoints": [lb_endpoint("h", 1)]}]}), P)


def test_circuit_breaker_thresholds_by_priority():
    cfg = parse_cluster(cluster(circuit_breakers={"thresholds": [
        {"priority": "HIGH", "max_connections": 7},
        {"max_connections": 1, "max_pending_requests": 2, "max_requests": 3, "max_retries": 4,
         "track_remaining": True},
    ]}), P)
    assert cfg.circuit_breakers == Thresholds(1, 2, 3, 4, True)
    assert cfg.high_priority_circuit_breakers.max_connections == 7


def test_typed_http_protocol_options_set_idle_timeout_and_max_requests():
    cfg = parse_cluster(cluster(typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {"idle_timeout": "15s", "max_requests_per_connection": 100},
        }}), P)
    assert (cfg.idle_timeout, cfg.max_requests_per_connection) == (15.0, 100)


def test_legacy_common_http_protocol_options_are_read():
    cfg = parse_cluster(cluster(common_http_protocol_options={"idle_timeout": "2s"},
                                http_protocol_options={}, max_requests_per_connection=5), P)
    assert (cfg.idle_timeout, cfg.max_requests_per_connection) == (2.0, 5)


def test_least_request_choice_count_and_ignored_common_lb_config():
    cfg = parse_cluster(cluster(lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 3},
                                common_lb_config={"healthy_panic_threshold": {"value": 40}}), P)
    assert (cfg.lb_policy, cfg.least_request_choice_count) == ("LEAST_REQUEST", 3)


def test_raw_buffer_transport_socket_is_accepted_as_plaintext():
    cfg = parse_cluster(cluster(transport_socket={"name": "envoy.transport_sockets.raw_buffer"}), P)
    assert cfg.name == "backend"


def test_parse_clusters_rejects_duplicate_names_with_path():
    with pytest.raises(ConfigError) as e:
        parse_clusters([{"name": "a"}, {"name": "a"}], "static_resources.clusters")
    assert str(e.value) == 'static_resources.clusters[1].name: duplicate cluster name "a"'


# -- errors name the full path ------------------------------------------------------------

def test_misspelled_field_names_path_and_suggests():
    raw = cluster(lb_polcy="ROUND_ROBIN")
    assert error(raw) == f'{P}: unknown field "lb_polcy" (did you mean "lb_policy"?)'


def test_missing_name_is_an_error():
    assert error({"type": "STATIC"}) == f"{P}.name: required field is missing"


def test_original_dst_cluster_takes_no_endpoints_and_only_its_own_lb_policy():
    raw = {"name": "od", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
           "original_dst_lb_config": {"use_http_header": True, "http_header_name": ":authority"}}
    c = parse_cluster(raw, P)
    assert c.original_dst.use_http_header and c.original_dst.http_header_name == ":authority"
    assert c.original_dst.cleanup_interval == 5.0 and c.endpoints == ()
    assert error(dict(raw, lb_policy="ROUND_ROBIN")) == (
        f"{P}.lb_policy: lb_policy ROUND_ROBIN is not valid for cluster type ORIGINAL_DST: only "
        "CLUSTER_PROVIDED or ORIGINAL_DST_LB is")
    assert error(dict(raw, load_assignment={"endpoints": [{"lb_endpoints": [
        lb_endpoint("127.0.0.1", 1)]}]})).startswith(f"{P}.load_assignment: ORIGINAL_DST clusters")
    assert error(dict(raw, original_dst_lb_config={"metadata_key": {"key": "k"}})) == (
        f"{P}.original_dst_lb_config.metadata_key: not supported yet (the destination from "
        "dynamic metadata)")
    assert error(cluster(cleanup_interval="1s")) == f"{P}.cleanup_interval: only for cluster type ORIGINAL_DST"
    assert parse_cluster(dict(raw, original_dst_lb_config={"upstream_port_override": 8443}),
                         P).original_dst.upstream_port_override == 8443


def test_eds_cluster_needs_an_eds_config_and_no_load_assignment():
    eds = {"name": "c", "type": "EDS"}
    assert error(eds) == f"{P}.eds_cluster_config: an EDS cluster needs eds_cluster_config.eds_config"
    ads = dict(eds, eds_cluster_config={"eds_config": {"ads": {}}})
    assert parse_cluster(ads, P).eds.eds_config.kind == "ads"
    assert error(dict(eds, eds_cluster_config={"eds_config": {"self": {}}})).startswith(
        f"{P}.eds_cluster_config.eds_config.self: not supported yet")
    good = dict(eds, eds_cluster_config={"eds_config": {"path_config_source": {"path": "/x/eds.yaml"}}})
    assert parse_cluster(good, P).eds.eds_config.path == "/x/eds.yaml"
    assert parse_cluster(good, P).eds.service_name == "c"
    assert "eds_cluster_config" in error(cluster(type="EDS", eds_cluster_config=good["eds_cluster_config"]))


def test_unknown_lb_policy_value_is_refused_and_original_dst_lb_needs_its_type():
    assert error(cluster(lb_policy="ROUND_ROBN")).startswith(
        f'{P}.lb_policy: unknown value "ROUND_ROBN" (did you mean "ROUND_ROBIN"?)')
    assert error(cluster(lb_policy="ORIGINAL_DST_LB")) == (
        f"{P}.lb_policy: lb_policy ORIGINAL_DST_LB is only valid for cluster type ORIGINAL_DST")


def test_static_endpoint_must_be_an_ip_literal():
    raw = cluster(load_assignment={"endpoints": [{"lb_endpoints": [
        lb_endpoint("127.0.0.1", 1), lb_endpoint("backend.local", 80)]}]})
    msg = error(raw)
    assert msg.startswith(f"{P}.load_assignment.endpoints[0].lb_endpoints[1].endpoint.address"
                          ".socket_address.address: STATIC cluster addresses must be IP addresses")


@pytest.mark.parametrize("field,expected", [
    ("transport_socket_matches", "not supported yet (one transport_socket per cluster)"),
    ("upstream_bind_config", "not supported yet"),
    ("alt_stat_name", "not supported yet"),
])
def test_unsupported_envoy_fields_are_refused_by_name(field, expected):
    value = [{}] if field in ("health_checks", "transport_socket_matches") else {"name": "x"}
    assert error(cluster(**{field: value})).startswith(f"{P}.{field}: {expected}")


def test_http2_protocol_options_make_the_cluster_speak_h2():
    from proxy.upstream.worker_cluster import upstream_protocol
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    typed = parse_cluster(cluster(typed_extension_protocol_options={key: {"explicit_http_config": {
        "http2_protocol_options": {"max_concurrent_streams": 7, "initial_stream_window_size": 65535,
                                   "initial_connection_window_size": 1048576}}}}), P)
    assert (typed.http2.max_concurrent_streams, typed.http2.initial_stream_window_size,
            typed.http2.initial_connection_window_size) == (7, 65535, 1048576)
    assert upstream_protocol(typed) == "h2"
    legacy = parse_cluster(cluster(http2_protocol_options={}), P)
    assert legacy.http2.max_concurrent_streams == 2147483647  # Envoy's defaults
    assert legacy.http2.initial_stream_window_size == 268435456
    assert upstream_protocol(legacy) == "h2"
    plain = parse_cluster(cluster(), P)
    assert plain.http2 is None and upstream_protocol(plain) == "http/1.1"


@pytest.mark.parametrize("field,value,expected", [
    ("max_concurrent_streams", 0, "must be >= 1, got 0"),
    ("initial_stream_window_size", 1000, "must be >= 65535, got 1000"),
    ("allow_metadata", True, "not supported yet (only the default, false, is)"),
    ("hpack_table_size", 100, "not supported yet (only the default, 4096, is)"),
    ("max_outbound_frames", 10, "not supported yet (flood limits"),
])
def test_http2_protocol_options_refuse_what_is_not_honoured(field, value, expected):
    """(connection_keepalive is honoured: tests/integration/test_h2_keepalive.py.)"""
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    msg = error(cluster(typed_extension_protocol_options={key: {"explicit_http_config": {
        "http2_protocol_options": {field: value}}}}))
    assert msg.startswith(f"{P}.typed_extension_protocol_options.{key}.explicit_http_config"
                          f".http2_protocol_options.{field}: {expected}")
    assert error(cluster(http2_protocol_options={field: value})).startswith(
        f"{P}.http2_protocol_options.{field}: {expected}")


_HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}


def _hpo(**body) -> dict:
    return {"typed_extension_protocol_options": {_HPO: body}}


def test_auto_config_chooses_by_alpn_with_its_http2_options_or_envoys_defaults():
    from proxy.upstream.worker_cluster import upstream_protocol
    c = parse_cluster(cluster(transport_socket=_TLS, **_hpo(auto_config={
        "http_protocol_options": {}, "http2_protocol_options": {"max_concurrent_streams": 7}})), P)
    assert c.auto_config and not c.use_downstream_protocol
    assert c.http2.max_concurrent_streams == 7
    assert upstream_protocol(c) == "h2,http/1.1"
    bare = parse_cluster(cluster(transport_socket=_TLS, **_hpo(auto_config={})), P)
    assert bare.auto_config and bare.http2.max_concurrent_streams == 2147483647


def test_auto_config_needs_a_tls_transport_socket_as_envoy():
    msg = error(cluster(**_hpo(auto_config={})))
    assert msg == (f"{P}.typed_extension_protocol_options.{_HPO}.auto_config: ALPN configured for "
                   "cluster backend which has a non-ALPN transport socket")


def test_use_downstream_protocol_config_follows_the_request():
    from proxy.upstream.worker_cluster import upstream_protocol
    c = parse_cluster(cluster(**_hpo(use_downstream_protocol_config={})), P)
    assert c.use_downstream_protocol and not c.auto_config
    assert c.http2.max_concurrent_streams == 2147483647  # Envoy's defaults for its h2 side
    assert upstream_protocol(c) == "downstream"
    tuned = parse_cluster(cluster(**_hpo(use_downstream_protocol_config={
        "http2_protocol_options": {"initial_stream_window_size": 65535}})), P)
    assert tuned.http2.initial_stream_window_size == 65535


@pytest.mark.parametrize("field,body,expected", [
    ("auto_config", {"http3_protocol_options": {}}, "http3_protocol_options: not supported yet (HTTP/3"),
    ("auto_config", {"alternate_protocols_cache_options": {"name": "x"}},
     "alternate_protocols_cache_options: not supported yet (HTTP/3"),
    ("auto_config", {"http2_protocol_options": {"allow_metadata": True}},
     "http2_protocol_options.allow_metadata: not supported yet"),
    ("auto_config", {"http_protocol_options": {"allow_chunked_length": True}},
     "http_protocol_options.allow_chunked_length: not supported yet"),
    ("auto_config", {"bogus": 1}, 'unknown field "bogus"'),
    ("use_downstream_protocol_config", {"http3_protocol_options": {}},
     "http3_protocol_options: not supported yet (HTTP/3"),
    ("use_downstream_protocol_config", {"http2_protocol_options": {"max_concurrent_streams": 0}},
     "http2_protocol_options.max_concurrent_streams: must be >= 1, got 0"),
])
def test_auto_and_downstream_protocol_config_refuse_what_is_not_honoured(field, body, expected):
    msg = error(cluster(transport_socket=_TLS, **_hpo(**{field: body})))
    assert f"{P}.typed_extension_protocol_options.{_HPO}.{field}" in msg
    assert expected in msg


def test_only_one_upstream_protocol_choice():
    msg = error(cluster(transport_socket=_TLS, **_hpo(
        auto_config={}, explicit_http_config={"http_protocol_options": {}})))
    assert "only one of explicit_http_config, use_downstream_protocol_config, auto_config" in msg


def test_unknown_protocol_options_extension_is_refused():
    msg = error(cluster(typed_extension_protocol_options={"envoy.filters.network.foo": {}}))
    assert msg.startswith(f"{P}.typed_extension_protocol_options.envoy.filters.network.foo:")


def test_priorities_localities_and_their_weights_reach_each_endpoint():
    raw = cluster(load_assignment={"endpoints": [
        {"priority": 1, "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
         "load_balancing_weight": 7, "lb_endpoints": [lb_endpoint("127.0.0.1", 1)]},
        {"lb_endpoints": [lb_endpoint("127.0.0.1", 2)]}]})
    a, b = parse_cluster(raw, P).endpoints
    assert (a.priority, a.locality, a.locality_weight) == (1, ("r", "z", "s"), 7)
    assert (b.priority, b.locality, b.locality_weight) == (0, ("", "", ""), 0)


def test_a_priority_above_128_is_an_error_as_in_envoy():
    raw = cluster(load_assignment={"endpoints": [
        {"priority": 129, "lb_endpoints": [lb_endpoint("127.0.0.1", 1)]}]})
    assert error(raw) == f"{P}.load_assignment.endpoints[0].priority: must be <= 128, got 129"
    ok = cluster(load_assignment={"endpoints": [{"priority": 128, "lb_endpoints": [lb_endpoint("127.0.0.1", 1)]}]})
    assert parse_cluster(ok, P).endpoints[0].priority == 128


def test_a_locality_weight_of_zero_is_refused_as_envoy_does():
    raw = cluster(load_assignment={"endpoints": [
        {"load_balancing_weight": 0, "lb_endpoints": [lb_endpoint("127.0.0.1", 1)]}]})
    assert error(raw) == f"{P}.load_assignment.endpoints[0].load_balancing_weight: must be >= 1, got 0"


def test_an_unknown_locality_field_is_named():
    raw = cluster(load_assignment={"endpoints": [
        {"locality": {"zones": "a"}, "lb_endpoints": [lb_endpoint("127.0.0.1", 1)]}]})
    assert error(raw).startswith(f'{P}.load_assignment.endpoints[0].locality: unknown field "zones"')


def test_policy_overprovisioning_and_weighted_priority_health_are_read():
    cfg = parse_cluster(cluster(load_assignment={"endpoints": [], "policy": {
        "overprovisioning_factor": 200, "weighted_priority_health": True}}), P)
    assert (cfg.assignment_policy.overprovisioning_factor,
            cfg.assignment_policy.weighted_priority_health) == (200, True)
    assert parse_cluster(cluster(), P).assignment_policy.overprovisioning_factor == 140


def test_locality_weighted_lb_config_and_active_request_bias_are_read():
    cfg = parse_cluster(cluster(lb_policy="LEAST_REQUEST", common_lb_config={"locality_weighted_lb_config": {}},
                                least_request_lb_config={"choice_count": 3, "active_request_bias": {
                                    "default_value": 0.5, "runtime_key": "lr.bias"}}), P)
    assert cfg.locality_weighted_lb and cfg.least_request_choice_count == 3
    assert cfg.least_request_active_request_bias == 0.5
    assert not parse_cluster(cluster(), P).locality_weighted_lb


def test_a_negative_active_request_bias_is_replaced_by_1_as_envoy_does(caplog):
    cfg = parse_cluster(cluster(least_request_lb_config={"active_request_bias": {
        "default_value": -1, "runtime_key": "k"}}), P)
    assert cfg.least_request_active_request_bias == 1.0
    assert "invalid active request bias supplied (runtime key k), using 1.0" in caplog.text


def test_udp_socket_address_is_refused():
    raw = cluster(load_assignment={"endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 53, "protocol": "UDP"}}}}]}]})
    assert error(raw).endswith(".socket_address.protocol: not supported yet (upstream hosts are TCP)")


def test_port_out_of_range_and_zero_weight_are_refused():
    bad_port = cluster(load_assignment={"endpoints": [{"lb_endpoints": [lb_endpoint("127.0.0.1", 70000)]}]})
    assert error(bad_port).endswith("socket_address.port_value: must be <= 65535, got 70000")
    zero = cluster(load_assignment={"endpoints": [{"lb_endpoints": [
        lb_endpoint("127.0.0.1", 1, load_balancing_weight=0)]}]})
    assert error(zero).endswith("lb_endpoints[0].load_balancing_weight: must be >= 1, got 0")


def test_logical_dns_needs_exactly_one_endpoint():
    raw = cluster(type="LOGICAL_DNS", load_assignment={"endpoints": [{"lb_endpoints": [
        lb_endpoint("a.example", 1), lb_endpoint("b.example", 1)]}]})
    assert error(raw) == (f"{P}.load_assignment: LOGICAL_DNS clusters must have exactly one "
                          "endpoint, got 2")


def test_strict_dns_without_endpoints_is_refused():
    assert "need at least one endpoint" in error({"name": "c", "type": "STRICT_DNS"})


def test_bad_duration_and_non_positive_connect_timeout_name_the_field():
    assert error(cluster(connect_timeout="5 seconds")).startswith(f"{P}.connect_timeout: invalid duration")
    assert error(cluster(connect_timeout="0s")) == f"{P}.connect_timeout: must be greater than 0s"


def test_unknown_field_inside_circuit_breaker_threshold_names_its_index():
    msg = error(cluster(circuit_breakers={"thresholds": [{"max_connection": 1}]}))
    assert msg == (f'{P}.circuit_breakers.thresholds[0]: unknown field "max_connection" '
                   '(did you mean "max_connections"?)')


def test_load_assignment_and_hosts_are_mutually_exclusive():
    assert error(cluster(hosts=[sock("127.0.0.1", 1)])) == (
        f"{P}: only one of load_assignment, hosts may be set")


def test_healthy_panic_threshold_parsed_and_bounded():
    eps = {"endpoints": [{"lb_endpoints": [lb_endpoint("127.0.0.1", 1)]}]}
    assert parse_cluster(cluster(load_assignment=eps), P).healthy_panic_threshold == 50.0
    cfg = parse_cluster(cluster(load_assignment=eps, common_lb_config={
        "healthy_panic_threshold": {"value": 12.5}, "update_merge_window": "1s"}), P)
    assert cfg.healthy_panic_threshold == 12.5  # the rest of common_lb_config is accepted
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.common_lb_config\.healthy_panic_threshold"
                                          r"\.value: must be between 0 and 100"):
        parse_cluster(cluster(load_assignment=eps, common_lb_config={
            "healthy_panic_threshold": {"value": 150}}), P)
    with pytest.raises(ConfigError, match=r"common_lb_config\.healthy_panic_threshold: unknown "
                                          r'field "valu" \(did you mean "value"\?\)'):
        parse_cluster(cluster(load_assignment=eps, common_lb_config={
            "healthy_panic_threshold": {"valu": 5}}), P)


@pytest.mark.parametrize("extra,expected", [
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}},
     "ring_hash_lb_config.hash_function: not supported yet"),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 10, "maximum_ring_size": 5}},
     "ring hash: minimum_ring_size (10) > maximum_ring_size (5)"),
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}},
     "maglev_lb_config.table_size: The table size of maglev must be prime number"),
    ({"lb_policy": "MAGLEV", "common_lb_config": {"consistent_hashing_lb_config": {"hash_balance_factor": 150}}},
     "consistent_hashing_lb_config.hash_balance_factor: not supported yet"),
])
def test_hashing_lb_config_refusals_name_the_field(extra, expected):
    assert expected in error(cluster(**extra))


def test_hashing_lb_config_is_read():
    from proxy.upstream.cluster_config import parse_cluster
    c = parse_cluster(cluster(lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": 64},
                              common_lb_config={"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}), P)
    assert (c.hashing.minimum_ring_size, c.hashing.use_hostname_for_hashing) == (64, True)
    assert parse_cluster(cluster(lb_policy="ROUND_ROBIN"), P).hashing is None


# -- outlier_detection (outlier_config.py) -------------------------------------------------------

def test_outlier_detection_takes_envoys_defaults():
    from proxy.upstream.outlier_config import OutlierDetectionConfig
    od = parse_cluster(cluster(outlier_detection={}), P).outlier_detection
    assert od == OutlierDetectionConfig()
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent,
            od.max_ejection_time, od.enforcing_consecutive_gateway_failure,
            od.success_rate_stdev_factor, od.failure_percentage_threshold) == (5, 10.0, 30.0, 10, 300.0, 0, 1900, 85)
    assert parse_cluster(cluster(), P).outlier_detection is None


def test_outlier_detection_fields_are_read():
    od = parse_cluster(cluster(outlier_detection={
        "consecutive_5xx": {"value": 3}, "interval": "0.5s", "base_ejection_time": "400s",
        "max_ejection_percent": 50, "split_external_local_origin_errors": True,
        "enforcing_consecutive_gateway_failure": 100, "max_ejection_time_jitter": "1s"}), P).outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent,
            od.split_external_local_origin_errors, od.enforcing_consecutive_gateway_failure,
            od.max_ejection_time_jitter) == (3, 0.5, 400.0, 50, True, 100, 1.0)
    # max_ejection_time defaults to the larger of 300 s and base_ejection_time (Envoy).
    assert od.max_ejection_time == 400.0


@pytest.mark.parametrize("od,expected", [
    ({"monitors": [{"name": "x"}]}, "outlier_detection.monitors: not supported yet"),
    ({"max_ejection_percent": 101}, "outlier_detection.max_ejection_percent: must be <= 100"),
    ({"base_ejection_time": "10s", "max_ejection_time": "5s"},
     "outlier_detection.max_ejection_time: outlier detector's max_ejection_time cannot be smaller"),
    ({"interval": "0s"}, "outlier_detection.interval: must be greater than 0s"),
    ({"consecutive5xx": 1}, 'outlier_detection: unknown field "consecutive5xx"'),
])
def test_bad_outlier_detection_is_refused_by_path(od, expected):
    assert error(cluster(outlier_detection=od)).startswith(f"{P}.{expected}")
