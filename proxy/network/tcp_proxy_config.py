"""Config model of the TCP proxy network filter (`envoy.filters.network.tcp_proxy`).

Job: validate `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy` into an immutable
`TcpProxyConfig` and register the filter. Fields we do not implement yet are refused with
"not supported yet" naming the path.

Must not: do I/O or proxy bytes (that is the tcp_proxy filter runtime). Thread affinity:
parsed on the main thread; the result is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.access_log.config import parse_access_logs
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register

__all__ = ["TcpProxyConfig", "WeightedCluster", "parse_tcp_proxy", "TCP_PROXY_NAME", "TCP_PROXY_PROTO"]

TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
TCP_PROXY_PROTO = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

_SUPPORTED = ("stat_prefix", "cluster", "weighted_clusters", "idle_timeout",
              "downstream_idle_timeout", "upstream_idle_timeout", "access_log",
              "max_connect_attempts", "max_downstream_connection_duration")
_UNSUPPORTED = ("on_demand", "metadata_match", "hash_policy", "tunneling_config",
                "access_log_flush_interval", "flush_access_log_on_connected", "access_log_options",
                "backoff_options", "proxy_protocol_tlvs", "upstream_connect_mode",
                "max_early_data_bytes")


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpProxyConfig:
    stat_prefix: str
    cluster: str | None = None                         # exactly one of cluster / weighted_clusters
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    idle_timeout: float = 3600.0                       # 0 disables; bounds idle connections
    downstream_idle_timeout: float | None = None
    upstream_idle_timeout: float | None = None
    max_connect_attempts: int = 1
    max_downstream_connection_duration: float | None = None
    access_logs: tuple[Any, ...] = ()


def parse_tcp_proxy(raw: Mapping[str, Any], path: str) -> TcpProxyConfig:
    f = Fields(raw, path, _SUPPORTED + _UNSUPPORTED)
    for key in _UNSUPPORTED:
        if f.has(key):
            raise ConfigError(f.at(key), "not supported yet")
    stat_prefix = f.str("stat_prefix", required=True)
    if not stat_prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    which = f.oneof("cluster", "weighted_clusters", required=True)
    cluster = None
    weighted: tuple[WeightedCluster, ...] = ()
    if which == "cluster":
        cluster = f.str("cluster")
        if not cluster:
            raise ConfigError(f.at("cluster"), "must not be empty")
    else:
        weighted = _parse_weighted(f)
    # Parsed, but without runtime behaviour yet: refused unless left at the default.
    for key in ("downstream_idle_timeout", "upstream_idle_timeout", "max_downstream_connection_duration"):
        if f.has(key):
            raise ConfigError(f.at(key), "not supported yet (use idle_timeout)")
    if f.int("max_connect_attempts", 1, min=1) != 1:
        raise ConfigError(f.at("max_connect_attempts"), "not supported yet (only 1)")
    return TcpProxyConfig(
        stat_prefix=stat_prefix,
        cluster=cluster,
        weighted_clusters=weighted,
        idle_timeout=f.duration("idle_timeout", 3600.0),
        downstream_idle_timeout=f.duration("downstream_idle_timeout"),
        upstream_idle_timeout=f.duration("upstream_idle_timeout"),
        max_connect_attempts=f.int("max_connect_attempts", 1, min=1),
        max_downstream_connection_duration=f.duration("max_downstream_connection_duration"),
        access_logs=tuple(parse_access_logs(f.list("access_log"))),
    )


def _parse_weighted(f: Fields) -> tuple[WeightedCluster, ...]:
    w = f.obj("weighted_clusters", ("clusters",))
    assert w is not None
    out = []
    for c in w.objs("clusters", ("name", "weight", "metadata_match"), min_items=1):
        if c.has("metadata_match"):
            raise ConfigError(c.at("metadata_match"), "not supported yet")
        name = c.str("name", required=True)
        if not name:
            raise ConfigError(c.at("name"), "must not be empty")
        out.append(WeightedCluster(name, c.int("weight", required=True, min=1)))
    return tuple(out)


register(Extension(
    category="network_filter",
    name=TCP_PROXY_NAME,
    proto=TCP_PROXY_PROTO,
    parse=parse_tcp_proxy,
))
