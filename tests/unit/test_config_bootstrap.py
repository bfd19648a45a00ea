"""Bootstrap loading: files, formats, listeners, cross-checks and error paths."""

from __future__ import annotations

import copy
import json

import pytest

from proxy.config.load import load_bootstrap, merge, parse_bootstrap, validate
from proxy.config.reader import ConfigError
from proxy.http.hcm_config import HcmConfig
from proxy.network.tcp_proxy_config import TcpProxyConfig

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")

# Envoy's examples/front-proxy/envoy.yaml (plaintext listener), as users write it.
FRONT_PROXY_YAML = """
static_resources:
  listeners:
  - address:
      socket_address:
        address: 0.0.0.0
        port_value: 8080
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains:
              - "*"
              routes:
              - match:
                  prefix: "/service/1"
                route:
                  cluster: service1-envoy
              - match:
                  prefix: "/service/2"
                route:
                  cluster: service2-envoy
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service1-envoy
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service1-envoy
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: service1-envoy
                port_value: 8000
  - name: service2-envoy
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service2-envoy
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: service2-envoy
                port_value: 8000
admin:
  address:
    socket_address:
      address: 0.0.0.0
      port_value: 8001
layered_runtime:
  layers:
  - name: static_layer_0
    static_layer:
      envoy:
        resource_limits:
          listener:
            example_listener_name:
              connection_limit: 10000
"""



def _cluster(name: str = "backend") -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]},
    }


def _hcm_listener(name: str | None = "http", port: int = 10000, cluster: str = "backend") -> dict:
    lis = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE, "stat_prefix": "ingress_http",
                "route_config": {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router"}],
            }}]}],
    }
    if name is not None:
        lis["name"] = name
    return lis


def _boot(**extra) -> dict:
    raw = {"static_resources": {"listeners": [_hcm_listener()], "clusters": [_cluster()]}}
    raw.update(extra)
    return raw


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    return str(e.value)


# -- loading files ------------------------------------------------------------------------

def test_front_proxy_example_yaml_loads(tmp_path):
    p = tmp_path / "envoy.yaml"
    p.write_text(FRONT_PROXY_YAML)
    b = load_bootstrap(str(p))
    # Its runtime key limits a listener the example does not have: nothing, as in Envoy.
    assert b.listener_connection_limits == {"example_listener_name": 10000}
    assert b.warnings == ("runtime key envoy.resource_limits.listener.example_listener_name."
                          "connection_limit names no listener: it limits nothing (as in Envoy)",)
    assert [c.name for c in b.clusters] == ["service1-envoy", "service2-envoy"]
    (lis,) = b.listeners
    assert (lis.address, lis.port) == ("0.0.0.0", 8080)
    (flt,) = lis.filter_chains[0].filters
    assert flt.name == "envoy.filters.network.http_connection_manager"
    assert isinstance(flt.config, HcmConfig)
    assert flt.config.codec_type == "AUTO"
    assert (b.admin.address, b.admin.port) == ("0.0.0.0", 8001)


def test_json_file_loads(tmp_path):
    p = tmp_path / "envoy.json"
    p.write_text(json.dumps(_boot()))
    b = load_bootstrap(str(p))
    assert b.listeners[0].name == "http"


def test_json_text_in_yaml_file_loads(tmp_path):
    p = tmp_path / "envoy.yaml"
    p.write_text(json.dumps(_boot()))
    assert load_bootstrap(str(p)).clusters[0].name == "backend"


def test_invalid_yaml_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("static_resources:\n  listeners: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_bootstrap(str(p))


def test_invalid_json_error_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"admin": }')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1"):
        load_bootstrap(str(p))


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_bootstrap(str(tmp_path / "nope.yaml"))


def test_unknown_extension_and_proto_files_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown config file extension"):
        load_bootstrap(str(tmp_path / "envoy.txt"))
    with pytest.raises(ConfigError, match="not supported yet"):
        load_bootstrap(str(tmp_path / "envoy.pb"))


def test_top_level_list_is_refused(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n")
    with pytest.raises(ConfigError, match="top level must be an object"):
        load_bootstrap(str(p))


def test_config_yaml_merges_over_file(tmp_path):
    p = tmp_path / "envoy.json"
    p.write_text(json.dumps(_boot()))
    b = load_bootstrap(str(p), config_yaml="node: {id: n1}\nstatic_resources:\n  clusters:\n"
                       "  - name: extra\n    type: STATIC\n")
    assert b.node.id == "n1"
    assert [c.name for c in b.clusters] == ["backend", "extra"]


def test_merge_appends_lists_merges_objects_replaces_scalars():
    assert merge({"a": [1], "b": {"x": 1, "y": 2}, "c": 1}, {"a": [2], "b": {"y": 3}, "c": 5}) == \
        {"a": [1, 2], "b": {"x": 1, "y": 3}, "c": 5}


def test_validate_reports_ok_and_error(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_boot()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_boot(dynamic_resources={"ads_config": {"api_type": "GRPC"}})))
    assert validate(str(good)) == (0, f"configuration '{good}' OK")
    status, message = validate(str(bad))
    assert status == 1 and "dynamic_resources" in message


# -- bootstrap model ----------------------------------------------------------------------

def test_defaults_node_admin_flush_interval():
    b = parse_bootstrap(_boot())
    assert b.node.id == "" and b.admin is None and b.stats_flush_interval == 5.0


def test_node_and_flush_interval_parsed():
    b = parse_bootstrap(_boot(node={"id": "n", "cluster": "c", "metadata": {"k": "v"},
                                    "locality": {"zone": "z1"}},
                              stats_flush_interval="0.5s"))
    assert (b.node.id, b.node.cluster, b.node.metadata, b.node.zone) == ("n", "c", {"k": "v"}, "z1")
    assert b.stats_flush_interval == 0.5


def test_raw_is_a_copy_of_the_input():
    raw = _boot()
    b = parse_bootstrap(raw)
    raw["static_resources"]["clusters"].clear()
    assert b.raw["static_resources"]["clusters"][0]["name"] == "backend"


def test_admin_legacy_access_log_path_accepted():
    b = parse_bootstrap(_boot(admin={"access_log_path": "/dev/null", "address": {
        "socket_address": {"address": "127.0.0.1", "port_value": 9901}}}))
    assert b.admin.port == 9901


def test_dynamic_resources_grpc_sources_checked_files_need_the_node():
    node = {"id": "n", "cluster": "c"}
    grpc = {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "backend"}}]}
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    ads = {"ads_config": grpc, "cds_config": {"ads": {}}, "lds_config": {"ads": {}}}
    raw = _boot(node=node, dynamic_resources=ads)
    raw["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = h2
    b = parse_bootstrap(raw)
    assert b.dynamic_resources.ads_config.cluster_name == "backend"
    assert b.dynamic_resources.cds_config.kind == "ads"
    # The xDS cluster must be a static HTTP/2 cluster of the bootstrap.
    assert "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: cluster " \
           '"backend" must speak HTTP/2' in _error(_boot(node=node, dynamic_resources=ads))
    assert 'unknown static cluster "nope"' in _error(_boot(node=node, dynamic_resources={
        "ads_config": {**grpc, "grpc_services": [{"envoy_grpc": {"cluster_name": "nope"}}]}}))
    assert "dynamic_resources.cds_config.ads: needs dynamic_resources.ads_config" in _error(
        _boot(node=node, dynamic_resources={"cds_config": {"ads": {}}}))
    delta = dict(raw, dynamic_resources={**ads, "ads_config": {**grpc, "api_type": "DELTA_GRPC"}})
    assert parse_bootstrap(delta).dynamic_resources.ads_config.delta is True
    assert "dynamic_resources.cds_config.api_config_source.cluster_names: required field is missing" in _error(
        _boot(node=node, dynamic_resources={"cds_config": {"api_config_source": {"api_type": "REST"}}}))
    assert "dynamic_resources.ads_config.api_type: ads_config must be GRPC or DELTA_GRPC" in _error(
        _boot(node=node, dynamic_resources={"ads_config": {"api_type": "REST", "cluster_names": ["backend"]}}))
    rest = {"cds_config": {"api_config_source": {"api_type": "REST", "cluster_names": ["backend"]}}}
    assert parse_bootstrap(_boot(node=node, dynamic_resources=rest)).dynamic_resources.cds_config.kind == "rest"
    assert "dynamic_resources.cds_config: type.googleapis.com/envoy.config.cluster.v3.Cluster: node " \
           "'id' and 'cluster' are required" in _error(
        _boot(dynamic_resources={"cds_config": {"path_config_source": {"path": "/x/cds.yaml"}}}))


def test_unknown_top_level_field_suggests():
    assert _error(_boot(admn={})) == 'unknown field "admn" (did you mean "admin"?)'


def test_known_but_unsupported_top_level_field():
    assert _error(_boot(stats_flush_on_admin=True)) == "stats_flush_on_admin: not supported yet"
    assert _error(_boot(stats_sinks=[{"name": "envoy.stat_sinks.hystrix"}])) == (
        'stats_sinks[0].name: unsupported stats sink "envoy.stat_sinks.hystrix"; '
        "supported: envoy.stat_sinks.dog_statsd, envoy.stat_sinks.metrics_service, envoy.stat_sinks.statsd")


def test_cluster_field_typo_names_cluster_path():
    raw = _boot()
    raw["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    assert _error(raw) == 'static_resources.clusters[0]: unknown field "lb_polcy" (did you mean "lb_policy"?)'


def test_duplicate_cluster_names_refused():
    raw = _boot()
    raw["static_resources"]["clusters"].append(_cluster())
    assert "duplicate cluster name \"backend\"" in _error(raw)


def test_a_secret_must_hold_a_certificate_or_a_validation_context():
    raw = _boot()
    raw["static_resources"]["secrets"] = [{"name": "s"}]
    assert _error(raw) == ("static_resources.secrets[0]: one of tls_certificate, validation_context "
                           "is required")
    raw["static_resources"]["secrets"] = [{"name": "s", "generic_secret": {}}]
    assert _error(raw).startswith("static_resources.secrets[0].generic_secret: not supported yet")


def test_overload_manager_empty_accepted_but_monitors_refused():
    parse_bootstrap(_boot(overload_manager={}))
    assert "overload_manager.resource_monitors" in _error(
        _boot(overload_manager={"resource_monitors": [{"name": "x"}]}))


# -- listeners ----------------------------------------------------------------------------

def test_listener_defaults():
    raw = _boot()
    del raw["static_resources"]["listeners"][0]["name"]
    lis = parse_bootstrap(raw).listeners[0]
    assert lis.name == "listener_0"
    assert lis.stat_prefix == "127.0.0.1_10000"
    assert lis.enable_reuse_port is True
    assert lis.per_connection_buffer_limit_bytes == 1024 * 1024


def test_ipv6_listener_stat_prefix():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "::1"
    assert parse_bootstrap(raw).listeners[0].stat_prefix == "[__1]_10000"


def test_listener_accepted_fields():
    raw = _boot()
    raw["static_resources"]["listeners"][0].update(
        reuse_port=False, per_connection_buffer_limit_bytes=32768, traffic_direction="inbound",
        drain_type="default", listener_filters=[], stat_prefix="front")
    lis = parse_bootstrap(raw).listeners[0]
    assert (lis.enable_reuse_port, lis.per_connection_buffer_limit_bytes, lis.traffic_direction,
            lis.stat_prefix) == (False, 32768, "INBOUND", "front")


def test_duplicate_listener_name_refused():
    raw = _boot()
    raw["static_resources"]["listeners"].append(_hcm_listener(port=10001))
    assert _error(raw).startswith('static_resources.listeners[1].name: duplicate listener name "http"')


def test_duplicate_listener_address_refused():
    raw = _boot()
    raw["static_resources"]["listeners"].append(_hcm_listener(name="other"))
    assert _error(raw).startswith("static_resources.listeners[1].address: duplicate listener address "
                                  "127.0.0.1:10000")


def test_two_port_zero_listeners_allowed():
    raw = _boot()
    raw["static_resources"]["listeners"] = [_hcm_listener("a", 0), _hcm_listener("b", 0)]
    assert len(parse_bootstrap(raw).listeners) == 2


def test_listener_hostname_address_refused():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "localhost"
    assert _error(raw).startswith(
        "static_resources.listeners[0].address.socket_address.address: 'localhost' is not an IP address")


@pytest.mark.parametrize("field,value,where", [
    ("filter_chain_match", {"address_suffix": "a"}, "filter_chains[0].filter_chain_match.address_suffix"),
    ("transport_socket", {"name": "envoy.transport_sockets.tls"}, "filter_chains[0].transport_socket"),
])
def test_unsupported_filter_chain_fields_name_path(field, value, where):
    raw = _boot()
    raw["static_resources"]["listeners"][0]["filter_chains"][0][field] = value
    assert _error(raw).startswith(f"static_resources.listeners[0].{where}:")


def test_empty_filter_chain_match_accepted():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filter_chain_match"] = {}
    assert parse_bootstrap(raw).listeners[0].filter_chains[0].filters


@pytest.mark.parametrize("field,value", [
    ("listener_filters", [{"name": "envoy.filters.listener.tls_inspector", "filter_disabled": {}}]),
    ("filter_chain_matcher", {"matcher_tree": {}}),
    ("socket_options", [{"level": 1, "name": 2, "int_value": 1}]),
])
def test_unsupported_listener_fields_name_path(field, value):
    raw = _boot()
    raw["static_resources"]["listeners"][0][field] = value
    assert _error(raw).startswith(f"static_resources.listeners[0].{field}")


def test_pipe_address_refused():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["address"] = {"pipe": {"path": "/tmp/s"}}
    assert _error(raw).startswith("static_resources.listeners[0].address.pipe: not supported yet")


def test_two_filter_chains_with_same_match_refused():
    raw = _boot()
    chains = raw["static_resources"]["listeners"][0]["filter_chains"]
    chains.append(copy.deepcopy(chains[0]))
    # Envoy 1.40's words: "filter chain '' has the same matching rules defined as ''".
    assert _error(raw) == ("static_resources.listeners[0].filter_chains[1]: filter chain '' has "
                           "the same matching rules defined as ''")


def test_bad_network_filter_type_names_path():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["@type"] = \
        "type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope"
    assert _error(raw).startswith(
        'static_resources.listeners[0].filter_chains[0].filters[0].typed_config["@type"]: '
        "unsupported network filter type")


def test_terminal_filter_must_be_last():
    raw = _boot()
    filters = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    filters.append(copy.deepcopy(filters[0]))
    assert _error(raw).startswith("static_resources.listeners[0].filter_chains[0].filters[1]: "
                                  "the terminal filter")


def test_tcp_proxy_listener_loads():
    raw = _boot()
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"] = [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                         "stat_prefix": "tcp", "cluster": "backend"}}]
    cfg = parse_bootstrap(raw).listeners[0].filter_chains[0].filters[0].config
    assert isinstance(cfg, TcpProxyConfig) and cfg.cluster == "backend"


# -- route -> cluster cross-check ---------------------------------------------------------

def test_route_to_undefined_cluster_names_route_path():
    raw = _boot()
    raw["static_resources"]["listeners"][0] = _hcm_listener(cluster="missing")
    assert _error(raw) == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
        '.virtual_hosts[0].routes[0].route.cluster: unknown cluster "missing" '
        "(no cluster of that name in static_resources.clusters)")


def test_validate_clusters_false_allows_undefined_cluster():
    raw = _boot()
    raw["static_resources"]["listeners"][0] = _hcm_listener(cluster="missing")
    hcm = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["validate_clusters"] = False
    assert parse_bootstrap(raw).listeners[0].name == "http"


def _minimal_listener(**extra):
    l = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
         "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
             "stat_prefix": "t", "cluster": "c"}}]}]}
    l.update(extra)
    return l


def test_listener_access_log_is_parsed_and_its_errors_name_the_field():
    from proxy.config.load import parse_bootstrap
    log = [{"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"text_format_source": {"inline_string": "%FILTER_CHAIN_NAME%\n"}}},
        "filter": {"response_flag_filter": {"flags": ["NR"]}}}]
    b = parse_bootstrap({"static_resources": {"listeners": [_minimal_listener(access_log=log)]}})
    (cfg,) = b.listeners[0].access_logs
    assert cfg.target == "stdout" and cfg.log_filter is not None
    log[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"] = "%NOPE%"
    with pytest.raises(ConfigError) as e:
        parse_bootstrap({"static_resources": {"listeners": [_minimal_listener(access_log=log)]}})
    assert str(e.value).startswith("static_resources.listeners[0].access_log[0].typed_config."
                                   "log_format.text_format_source.inline_string: unknown command "
                                   "operator %NOPE%")
    udp = _minimal_listener(access_log=log[:1])
    udp["address"]["socket_address"]["protocol"] = "UDP"
    del udp["filter_chains"]
    udp["listener_filters"] = [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
        "stat_prefix": "u", "cluster": "c"}}]
    log[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"] = "x"
    with pytest.raises(ConfigError) as e:
        parse_bootstrap({"static_resources": {"listeners": [udp]}})
    assert "static_resources.listeners[0].access_log: not supported yet on a UDP listener" in str(e.value)


def test_admin_access_log_only_to_dev_null():
    from proxy.config.load import parse_bootstrap
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    assert parse_bootstrap({"admin": {**admin, "access_log_path": "/dev/null"}}).admin.port == 0
    with pytest.raises(ConfigError) as e:
        parse_bootstrap({"admin": {**admin, "access_log_path": "/tmp/admin.log"}})
    assert str(e.value) == "admin.access_log_path: not supported yet (admin access logs: only to /dev/null)"


def test_one_value_where_a_list_is_stands_for_a_list_of_it():
    """Envoy's protobuf JSON parser takes a single value for a repeated field (seen with
    `envoy --mode validate` 1.40: `domains: "*"`, a `routes` object, a `filter_chains`
    object); so does ftproxy, and the cross-references still see the items."""
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "s",
           "route_config": {"virtual_hosts": {"name": "v", "domains": "*",
                                              "routes": {"match": {"prefix": "/"}, "route": {"cluster": "c"}}}},
           "http_filters": {"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}
    raw = {"static_resources": {
        "listeners": {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                      "filter_chains": {"filters": {"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}}},
        "clusters": {"name": "c", "type": "STATIC", "connect_timeout": "1s",
                     "load_assignment": {"cluster_name": "c", "endpoints": {"lb_endpoints": {
                         "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}}}}}}
    b = parse_bootstrap(raw)
    assert [c.name for c in b.clusters] == ["c"]
    (listener,) = b.listeners
    vh = listener.filter_chains[0].filters[0].config.route_config.virtual_hosts[0]
    assert vh.domains == ("*",) and len(vh.routes) == 1
    bad = copy.deepcopy(raw)
    bad["static_resources"]["listeners"]["filter_chains"]["filters"]["typed_config"]["route_config"][
        "virtual_hosts"]["routes"]["route"]["cluster"] = "missing"
    with pytest.raises(Exception, match="missing"):
        parse_bootstrap(bad)  # the route -> cluster check still sees the one route
