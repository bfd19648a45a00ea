"""Config model of the bootstrap's `dynamic_resources` (LDS and CDS sources, the ADS stream),
the check that xDS sources (these, RDS, EDS) have a node id and cluster, as Envoy requires,
and the check that a gRPC source's cluster is a static HTTP/2 cluster of the bootstrap.

Must not: do I/O (the files are read by proxy/xds/). Thread affinity: main thread; the result
is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.config_source import (ApiConfigSourceConfig, ConfigSourceConfig,
                                        parse_api_config_source, parse_config_source)
from proxy.config.fields_table import Message, refused, used
from proxy.config.grpc_client_tls import check_grpc_client_http2, check_grpc_client_tls
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields

_RAW_BUFFER = "envoy.transport_sockets.raw_buffer"

__all__ = ["DynamicResources", "DYNAMIC_RESOURCES", "parse_dynamic_resources",
           "check_file_sources_need_node", "check_grpc_sources"]


@dataclass(frozen=True, slots=True)
class DynamicResources:
    """`dynamic_resources`: where listeners (LDS) and clusters (CDS) come from, and the
    aggregated stream (`ads_config`) that `ads: {}` sources share."""
    lds_config: ConfigSourceConfig | None = None
    cds_config: ConfigSourceConfig | None = None
    ads_config: ApiConfigSourceConfig | None = None


DYNAMIC_RESOURCES = Message("envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
                            model=DynamicResources, fields=(
    used("lds_config", why="a ConfigSource: a file, ads or a GRPC api_config_source"),
    used("cds_config", why="a ConfigSource: a file, ads or a GRPC api_config_source"),
    used("ads_config", why="api_type GRPC (state of the world), its own table"),
    refused("lds_resources_locator", "xdstp:// resource locators"),
    refused("cds_resources_locator", "xdstp:// resource locators"),
))


def parse_dynamic_resources(f: Fields, node: Any) -> DynamicResources:
    if not f.has("dynamic_resources"):
        return DynamicResources()
    d = DYNAMIC_RESOURCES.read(f.value("dynamic_resources"), f.at("dynamic_resources"))
    errors = ErrorCollector()
    out = {}
    if d.has("ads_config"):
        out["ads_config"] = errors.run(parse_api_config_source, d.value("ads_config"),
                                       d.at("ads_config"), True)
    for key, type_url in (("lds_config", "envoy.config.listener.v3.Listener"),
                          ("cds_config", "envoy.config.cluster.v3.Cluster")):
        if d.has(key):
            out[key] = errors.run(parse_config_source, d.value(key), d.at(key))
            if node is not MISSING and not (node.id and node.cluster):
                # Envoy refuses a file subscription without them, at start.
                errors.add(ConfigError(d.at(key), f"type.googleapis.com/{type_url}: node 'id' and "
                                                  "'cluster' are required (set node.id and node.cluster)"))
            src = out[key]
            if src is not MISSING and src.kind == "ads" and not d.has("ads_config"):
                errors.add(ConfigError(d.at(key) + ".ads", "needs dynamic_resources.ads_config"))
    errors.raise_if_any()
    return DynamicResources(**{k: v for k, v in out.items() if v is not MISSING})


def check_grpc_sources(dynamic: DynamicResources, clusters: tuple[Any, ...]) -> None:
    """Envoy requires a gRPC xDS service's cluster to be a static cluster of the bootstrap;
    ftproxy speaks HTTP/2 to it (prior knowledge, or ALPN h2 over TLS), so it must say HTTP/2;
    a TLS cluster must not need an xDS-delivered secret (grpc_client_tls.py)."""
    by_name = {c.name: (i, c) for i, c in enumerate(clusters)}
    errors = ErrorCollector()
    where = {"ads_config": dynamic.ads_config}
    for key in ("lds_config", "cds_config"):
        src = getattr(dynamic, key)
        if src is not None and src.api is not None:
            where[f"{key}.api_config_source"] = src.api
    for key, api in where.items():
        if api is None:
            continue
        at = (f"dynamic_resources.{key}.cluster_names[0]" if api.rest
              else f"dynamic_resources.{key}.grpc_services[0].envoy_grpc.cluster_name")
        found = by_name.get(api.cluster_name)
        if found is None:
            errors.add(ConfigError(at, f'unknown static cluster "{api.cluster_name}" (a gRPC xDS '
                                       "service must name a static cluster)"))
            continue
        i, c = found
        if not api.rest:
            errors.run(check_grpc_client_http2, c, at)
        if getattr(c, "type", "STATIC") == "EDS":
            errors.add(ConfigError(at, f'cluster "{c.name}" is an EDS cluster: a gRPC xDS service '
                                       "needs a static or DNS cluster"))
        if not api.rest:
            errors.run(check_grpc_client_tls, c, at, f"static_resources.clusters[{i}]",
                       "control plane", xds=True)
        elif getattr(c.transport_socket, "name", _RAW_BUFFER) != _RAW_BUFFER:
            errors.add(ConfigError(at, f'cluster "{c.name}": TLS to a REST control plane is not '
                                       "supported yet"))
    errors.raise_if_any()



def check_file_sources_need_node(listeners: tuple[Any, ...], paths: tuple[str, ...],
                                 clusters: tuple[Any, ...]) -> None:
    """Envoy refuses a file subscription (RDS, EDS) when the node has no id or cluster."""
    errors = ErrorCollector()
    need = "node 'id' and 'cluster' are required (set node.id and node.cluster)"
    for i, c in enumerate(clusters):
        if getattr(c, "eds", None) is not None:
            errors.add(ConfigError(f"static_resources.clusters[{i}].eds_cluster_config.eds_config",
                                   f"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment: {need}"))
    for lis, lpath in zip(listeners, paths):
        for ci, chain in enumerate(lis.filter_chains):
            for fi, flt in enumerate(chain.filters):
                if getattr(flt.config, "rds", None) is not None:
                    errors.add(ConfigError(
                        f"{lpath}.filter_chains[{ci}].filters[{fi}].typed_config.rds.config_source",
                        f"type.googleapis.com/envoy.config.route.v3.RouteConfiguration: {need}"))
    errors.raise_if_any()
