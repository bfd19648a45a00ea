"""Config model of the bootstrap's `dynamic_resources` (LDS and CDS sources), and the check
that file sources (these, RDS, EDS) have a node id and cluster, as Envoy requires.

Must not: do I/O (the files are read by proxy/xds/). Thread affinity: main thread; the result
is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.config_source import ConfigSourceConfig, parse_config_source
from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields

__all__ = ["DynamicResources", "DYNAMIC_RESOURCES", "parse_dynamic_resources",
           "check_file_sources_need_node"]


@dataclass(frozen=True, slots=True)
class DynamicResources:
    """`dynamic_resources`: where listeners (LDS) and clusters (CDS) come from (files only)."""
    lds_config: ConfigSourceConfig | None = None
    cds_config: ConfigSourceConfig | None = None


DYNAMIC_RESOURCES = Message("envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
                            model=DynamicResources, fields=(
    used("lds_config", why="a file source (ConfigSource); a control plane is refused"),
    used("cds_config", why="a file source (ConfigSource); a control plane is refused"),
    refused("ads_config", "ADS needs a control plane: only file sources so far"),
    refused("lds_resources_locator", "xdstp:// resource locators"),
    refused("cds_resources_locator", "xdstp:// resource locators"),
))


def parse_dynamic_resources(f: Fields, node: Any) -> DynamicResources:
    if not f.has("dynamic_resources"):
        return DynamicResources()
    d = DYNAMIC_RESOURCES.read(f.value("dynamic_resources"), f.at("dynamic_resources"))
    errors = ErrorCollector()
    out = {}
    for key, type_url in (("lds_config", "envoy.config.listener.v3.Listener"),
                          ("cds_config", "envoy.config.cluster.v3.Cluster")):
        if d.has(key):
            out[key] = errors.run(parse_config_source, d.value(key), d.at(key))
            if node is not MISSING and not (node.id and node.cluster):
                # Envoy refuses a file subscription without them, at start.
                errors.add(ConfigError(d.at(key), f"type.googleapis.com/{type_url}: node 'id' and "
                                                  "'cluster' are required (set node.id and node.cluster)"))
    errors.raise_if_any()
    return DynamicResources(**out)


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
