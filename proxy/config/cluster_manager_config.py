"""Config model of the bootstrap's `cluster_manager`: only `load_stats_config`, the gRPC
LoadReportingService (LRS) stream that reports per-locality request counts of the clusters a
management server asks for (proxy/server/load_stats_reporter.py). Its other fields are refused
by path.

Must not: do I/O. Thread affinity: main thread; the result is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.config_source import ApiConfigSourceConfig, parse_api_config_source
from proxy.config.fields_table import Message, refused, used
from proxy.config.grpc_client_tls import check_grpc_client_http2, check_grpc_client_tls
from proxy.config.reader import ConfigError, Fields

__all__ = ["ClusterManagerConfig", "CLUSTER_MANAGER", "parse_cluster_manager"]


@dataclass(frozen=True, slots=True)
class ClusterManagerConfig:
    """`cluster_manager`: where load reports go (None: no load reporting)."""
    load_stats_config: ApiConfigSourceConfig | None = None


CLUSTER_MANAGER = Message("envoy.config.bootstrap.v3.ClusterManager", model=ClusterManagerConfig, fields=(
    used("load_stats_config", why="api_type GRPC to a static HTTP/2 cluster: the "
                                  "LoadReportingService stream (load_reporter.* stats)"),
    refused("local_cluster_name", "zone-aware routing"),
    refused("outlier_detection", "the outlier event log"),
    refused("upstream_bind_config", "a source address for upstream connections"),
    refused("enable_deferred_cluster_creation", default=False, only_default=True),
))


def parse_cluster_manager(f: Fields) -> ClusterManagerConfig:
    if not f.has("cluster_manager"):
        return ClusterManagerConfig()
    cm = CLUSTER_MANAGER.read(f.value("cluster_manager"), f.at("cluster_manager"))
    CLUSTER_MANAGER.require_default(cm, "enable_deferred_cluster_creation",
                                    cm.bool("enable_deferred_cluster_creation", False))
    if not cm.has("load_stats_config"):
        return ClusterManagerConfig()
    at = cm.at("load_stats_config")
    raw = cm.value("load_stats_config")
    if isinstance(raw, dict) and "rate_limit_settings" in raw:
        # Envoy's load reporter sends one request per interval and ignores the bucket.
        raise ConfigError(at + ".rate_limit_settings",
                          "not supported yet (the load reporter sends one report per interval)")
    api = parse_api_config_source(raw, at, False)
    if api.rest:
        # Envoy: "envoy.config.core.v3.ApiConfigSource must have a gRPC api_type".
        raise ConfigError(at + ".api_type", "load reporting is a gRPC stream: api_type must be GRPC")
    return ClusterManagerConfig(load_stats_config=api)


def check_load_stats_cluster(config: ClusterManagerConfig, clusters: tuple[Any, ...]) -> None:
    """The LRS cluster must be a static HTTP/2 cluster of the bootstrap, as an xDS one."""
    api = config.load_stats_config
    if api is None:
        return
    at = "cluster_manager.load_stats_config.grpc_services[0].envoy_grpc.cluster_name"
    found = {c.name: c for c in clusters}.get(api.cluster_name)
    if found is None:
        raise ConfigError(at, f'unknown static cluster "{api.cluster_name}" (the load reporting '
                              "service must name a static cluster)")
    check_grpc_client_http2(found, at)
    if getattr(found, "type", "STATIC") == "EDS":
        raise ConfigError(at, f'cluster "{found.name}" is an EDS cluster: the load reporting '
                              "service needs a static or DNS cluster")
    i = next(k for k, c in enumerate(clusters) if c is found)
    check_grpc_client_tls(found, at, f"static_resources.clusters[{i}]", "load reporting service")
