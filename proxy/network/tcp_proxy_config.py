"""Config model of the TCP proxy network filter (`envoy.filters.network.tcp_proxy`).

Job: validate `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy` into an immutable
`TcpProxyConfig` and register the filter. Every field is declared once in `TCP_PROXY` (used, or
refused with "<path>: not supported yet").

Must not: do I/O or proxy bytes (that is the tcp_proxy filter runtime). Thread affinity:
parsed on the main thread; the result is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.access_log.config import parse_access_logs
from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register

__all__ = ["TcpProxyConfig", "WeightedCluster", "parse_tcp_proxy", "TCP_PROXY_NAME", "TCP_PROXY_PROTO"]

TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
TCP_PROXY_PROTO = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

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
    access_logs: tuple[Any, ...] = ()
    # tunneling_config.hostname: the downstream's bytes go in an HTTP CONNECT to this
    # authority over the cluster's HTTP pool (tcp_proxy_tunnel.py); None: plain TCP upstream.
    tunneling_hostname: str | None = None
    # tunneling_config.headers_to_add (router/header_mutation.py), applied to each CONNECT.
    tunneling_headers: tuple[Any, ...] = ()


# -- declared fields (proxy.config.fields_table) -----------------------------------------

TCP_PROXY = Message(TCP_PROXY_PROTO, title="TCP proxy", model=TcpProxyConfig, fields=(
    used("stat_prefix"),
    used("cluster"),
    used("weighted_clusters"),
    used("idle_timeout", "3600s"),
    used("access_log", attr="access_logs"),
    refused("max_connect_attempts", "only 1: one connect attempt, no retry", default=1,
            only_default=True),
    refused("downstream_idle_timeout", "use idle_timeout"),
    refused("upstream_idle_timeout", "use idle_timeout"),
    refused("max_downstream_connection_duration"),
    refused("on_demand"),
    refused("metadata_match"),
    refused("hash_policy"),
    used("tunneling_config", attr="tunneling_hostname", why="its own table: the bytes go in a CONNECT"),
    refused("access_log_flush_interval"),
    refused("flush_access_log_on_connected"),
    refused("access_log_options"),
    refused("backoff_options"),
    refused("proxy_protocol_tlvs"),
    refused("upstream_connect_mode"),
    refused("max_early_data_bytes"),
))

TUNNELING_CONFIG = Message(TCP_PROXY_PROTO + ".TunnelingConfig", fields=(
    used("hostname", attr="tunneling_hostname", why="a literal authority (no %...% format operators)"),
    refused("use_post", "a POST instead of CONNECT", default=False, only_default=True),
    used("headers_to_add", attr="tunneling_headers"),
    refused("propagate_response_headers", "the CONNECT's response headers in filter state",
            default=False, only_default=True),
    refused("post_path", "a POST instead of CONNECT"),
    refused("propagate_response_trailers", "the tunnel's response trailers in filter state",
            default=False, only_default=True),
    refused("request_id_extension"),
    refused("request_id_header"),
    refused("request_id_metadata_key"),
))

WEIGHTED_CLUSTERS = Message(TCP_PROXY_PROTO + ".WeightedCluster", fields=(
    used("clusters", attr="weighted_clusters"),
))

WEIGHTED_CLUSTER = Message(TCP_PROXY_PROTO + ".WeightedCluster.ClusterWeight",
                           model=WeightedCluster, fields=(
    used("name"),
    used("weight"),
    refused("metadata_match"),
))


def parse_tcp_proxy(raw: Mapping[str, Any], path: str) -> TcpProxyConfig:
    f = TCP_PROXY.read(raw, path)
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
    TCP_PROXY.require_default(f, "max_connect_attempts", f.int("max_connect_attempts", 1, min=1))
    hostname, tunnel_headers = (_tunneling(f) if f.value("tunneling_config") is not None
                                else (None, ()))
    return TcpProxyConfig(
        stat_prefix=stat_prefix,
        cluster=cluster,
        weighted_clusters=weighted,
        idle_timeout=f.duration("idle_timeout", 3600.0),
        access_logs=tuple(parse_access_logs(f.list("access_log"))),
        tunneling_hostname=hostname,
        tunneling_headers=tunnel_headers,
    )


def _tunneling(f: Fields) -> tuple[str, tuple[Any, ...]]:
    t = TUNNELING_CONFIG.read(f.value("tunneling_config"), f.at("tunneling_config"))
    for name in ("use_post", "propagate_response_headers", "propagate_response_trailers"):
        TUNNELING_CONFIG.require_default(t, name, t.bool(name, False))
    hostname = t.str("hostname", required=True)
    if not hostname:
        raise ConfigError(t.at("hostname"), "must not be empty")
    if "%" in hostname:
        raise ConfigError(t.at("hostname"), "not supported yet (format operators in the hostname)")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7e for c in hostname):
        raise ConfigError(t.at("hostname"), "must be a valid authority")
    from proxy.router.header_mutation import parse_header_mutations
    return hostname, parse_header_mutations(t, "headers_to_add", None)


def _parse_weighted(f: Fields) -> tuple[WeightedCluster, ...]:
    w = WEIGHTED_CLUSTERS.read(f.value("weighted_clusters"), f.at("weighted_clusters"))
    out = []
    for item, cpath in w.list("clusters", min_items=1):
        c = WEIGHTED_CLUSTER.read(item, cpath)
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
