"""redis_proxy's config (proxy/network/redis/config.py): what is honoured is parsed, each field
not built is refused naming its path, and the routes come out longest prefix first."""

from __future__ import annotations

import pytest

from proxy.config.reader import ConfigError
from proxy.network.redis.config import parse_redis_proxy

BASE = {"stat_prefix": "r", "settings": {"op_timeout": "0.25s"},
        "prefix_routes": {"catch_all_route": {"cluster": "c"}}}


def _with(**changes):
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def test_honoured_fields_are_parsed():
    cfg = parse_redis_proxy(_with(settings__enable_hashtagging=True, settings__max_buffer_size_before_flush=1024,
                                  prefix_routes__case_insensitive=True,
                                  prefix_routes__routes=[{"prefix": "Ab", "cluster": "a"},
                                                         {"prefix": "ABC", "cluster": "b", "remove_prefix": True}],
                                  downstream_auth_password={"inline_string": "p1"},
                                  downstream_auth_passwords=[{"inline_string": "p2"}],
                                  downstream_auth_username={"inline_string": "u"}), "f")
    assert cfg.op_timeout == 0.25 and cfg.enable_hashtagging and cfg.max_buffer_size_before_flush == 1024
    assert cfg.buffer_flush_timeout == 0.003      # Envoy's default once batching is on
    assert [(r.prefix, r.cluster, r.remove_prefix) for r in cfg.routes] == [(b"abc", "b", True), (b"ab", "a", False)]
    assert cfg.catch_all_route.cluster == "c"
    assert cfg.downstream_auth_passwords == (b"p1", b"p2") and cfg.downstream_auth_username == b"u"


@pytest.mark.parametrize("changes,where", [
    ({"settings__enable_redirection": True}, "f.settings.enable_redirection"),
    ({"settings__read_policy": "REPLICA"}, "f.settings.read_policy"),
    ({"settings__enable_command_stats": True}, "f.settings.enable_command_stats"),
    ({"settings__dns_cache_config": {"name": "x"}}, "f.settings.dns_cache_config"),
    ({"settings__connection_rate_limit": {"connection_rate_limit_per_sec": 1}}, "f.settings.connection_rate_limit"),
    ({"prefix_routes__catch_all_route": {"cluster": "c", "request_mirror_policy": [{"cluster": "m"}]}},
     "f.prefix_routes.catch_all_route.request_mirror_policy"),
    ({"prefix_routes__routes": [{"prefix": "a", "cluster": "a", "key_formatter": "{%KEY%}"}]},
     "f.prefix_routes.routes[0].key_formatter"),
    ({"prefix_routes__routes": [{"prefix": "a", "cluster": "a", "read_command_policy": {"cluster": "r"}}]},
     "f.prefix_routes.routes[0].read_command_policy"),
    ({"faults": [{"fault_type": "ERROR"}]}, "f.faults"),
    ({"latency_in_micros": True}, "f.latency_in_micros"),
    ({"custom_commands": ["x"]}, "f.custom_commands"),
    ({"external_auth_provider": {}}, "f.external_auth_provider"),
])
def test_what_is_not_built_is_refused_by_name(changes, where):
    with pytest.raises(ConfigError) as e:
        parse_redis_proxy(_with(**changes), "f")
    assert where in str(e.value) and "not supported yet" in str(e.value)


@pytest.mark.parametrize("raw,where", [
    ({"stat_prefix": "r", "prefix_routes": {"catch_all_route": {"cluster": "c"}}}, "f.settings"),
    ({"stat_prefix": "r", "settings": {}}, "f.settings.op_timeout"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"}},
     "f.prefix_routes: cannot configure a redis-proxy without any upstream"),
    ({**BASE, "stat_prefix": ""}, "f.stat_prefix"),
    (_with(prefix_routes__routes=[{"prefix": "a", "cluster": "x"}, {"prefix": "a", "cluster": "y"}]),
     "f.prefix_routes.routes[1]"),
    (_with(prefix_routes__catch_all_route={"cluster": ""}), "f.prefix_routes.catch_all_route.cluster"),
    (_with(settings__op_timeot="1s"), "f.settings: unknown field \"op_timeot\""),
])
def test_bad_config_names_the_field(raw, where):
    with pytest.raises(ConfigError) as e:
        parse_redis_proxy(raw, "f")
    assert where in str(e.value)
