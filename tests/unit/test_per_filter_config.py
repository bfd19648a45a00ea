"""typed_per_filter_config at route, virtual host and route configuration: parsed by the owning
filter's per-route parser, FilterConfig's `disabled` / `is_optional`, the most specific level
winning per filter (and per field for filters that want every level), and errors that name the
path."""

from __future__ import annotations

import pytest

import proxy.extensions  # noqa: F401  registers the filters and their per-route parsers
from proxy.config.reader import ConfigError
from proxy.router import parse_route_configuration

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def rc(route_level=None, vhost_level=None, config_level=None):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    if route_level is not None:
        route["typed_per_filter_config"] = route_level
    vh = {"name": "vh", "domains": ["*"], "routes": [route]}
    if vhost_level is not None:
        vh["typed_per_filter_config"] = vhost_level
    raw = {"name": "rc", "virtual_hosts": [vh]}
    if config_level is not None:
        raw["typed_per_filter_config"] = config_level
    return parse_route_configuration(raw, "route_config")


def route_of(config):
    return config.virtual_hosts[0].routes[0]


def test_most_specific_config_wins_and_every_level_is_kept_in_order():
    cfg = rc(route_level={"envoy.filters.http.cors": {"@type": CORS, "allow_methods": "GET"}},
             config_level={"envoy.filters.http.cors": {"@type": CORS, "max_age": "60"}})
    entry = route_of(cfg).per_filter_config["envoy.filters.http.cors"]
    assert entry.config.allow_methods == "GET"
    assert [c.max_age for c in entry.all_configs] == ["", "60"]
    assert entry.disabled is None
    assert cfg.filters_switched_per_route == frozenset()


def test_filter_config_wrapper_disables_and_is_remembered_as_switchable():
    cfg = rc(route_level={"envoy.filters.http.fault": {"@type": FILTER_CONFIG, "disabled": True}},
             vhost_level={"envoy.filters.http.fault": {"@type": FAULT,
                                                       "abort": {"http_status": 503}}})
    entry = route_of(cfg).per_filter_config["envoy.filters.http.fault"]
    assert entry.disabled is True
    assert entry.config.abort.http_status == 503  # the vhost's config is still the config
    assert cfg.filters_switched_per_route == frozenset({"envoy.filters.http.fault"})


def test_filter_config_wrapper_with_a_config_inside():
    cfg = rc(route_level={"envoy.filters.http.fault": {
        "@type": FILTER_CONFIG, "disabled": False,
        "config": {"@type": FAULT, "delay": {"fixed_delay": "1s"}}}})
    entry = route_of(cfg).per_filter_config["envoy.filters.http.fault"]
    assert entry.disabled is False and entry.config.delay.fixed_ms == 1000


def test_unknown_type_is_an_error_unless_optional():
    with pytest.raises(ConfigError) as e:
        rc(route_level={"x": {"@type": "type.googleapis.com/acme.Unknown"}})
    assert e.value.path == 'route_config.virtual_hosts[0].routes[0].typed_per_filter_config.x["@type"]'
    assert "unsupported per-filter config type" in e.value.message
    cfg = rc(route_level={"x": {"@type": FILTER_CONFIG, "is_optional": True,
                                "config": {"@type": "type.googleapis.com/acme.Unknown"}}})
    assert "x" not in route_of(cfg).per_filter_config


def test_errors_inside_a_per_route_config_name_their_path():
    with pytest.raises(ConfigError) as e:
        rc(vhost_level={"envoy.filters.http.fault": {"@type": FAULT,
                                                     "abort": {"http_status": 700}}})
    assert e.value.path == ("route_config.virtual_hosts[0].typed_per_filter_config"
                            ".envoy.filters.http.fault.abort.http_status")
    with pytest.raises(ConfigError) as e:
        rc(config_level={"envoy.filters.http.cors": {"@type": CORS, "allow_method": "GET"}})
    assert 'unknown field "allow_method"' in str(e.value)
