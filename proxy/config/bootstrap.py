"""Config model of the Envoy v3 bootstrap (`config.bootstrap.v3.Bootstrap`), static subset.

Job: validate a bootstrap tree (plain dicts from YAML/JSON) into an immutable `Bootstrap`:
node, admin, static listeners and clusters, stats flush interval; then check what only the
whole tree can tell (unique listener names and addresses, unique cluster names, inline routes
naming defined clusters). Real Envoy fields we do not implement are refused with "not
supported yet"; misspellings are refused as unknown fields with a suggestion.

Must not: do I/O (see `proxy.config.load`), or import extension modules — the registry must
already be filled (`proxy.extensions`). Thread affinity: main thread; the result is immutable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.access_log.config import parse_access_logs
from proxy.config.listener import ListenerConfig, address_string, parse_address, parse_listener
from proxy.config.reader import ConfigError, Fields, index, join
from proxy.upstream.cluster_config import parse_cluster

__all__ = ["Bootstrap", "NodeConfig", "AdminConfig", "parse_bootstrap"]

_TOP_SUPPORTED = ("node", "admin", "static_resources", "stats_flush_interval", "layered_runtime",
                  "overload_manager", "dynamic_resources", "enable_dispatcher_stats")
_TOP_UNSUPPORTED = (
    "node_context_params", "cluster_manager", "hds_config", "flags_path", "stats_sinks",
    "deferred_stat_options", "stats_config", "stats_flush_on_admin", "watchdog", "watchdogs",
    "tracing", "header_prefix", "stats_server_version_override", "use_tcp_for_dns_lookups",
    "dns_resolution_config", "typed_dns_resolver_config", "bootstrap_extensions",
    "fatal_actions", "config_sources", "default_config_source", "default_socket_interface",
    "certificate_provider_instances", "inline_headers", "perf_tracing_file_path",
    "default_regex_engine", "xds_delegate_extension", "xds_config_tracker_extension",
    "listener_manager", "application_log_config", "grpc_async_client_manager_config",
    "memory_allocator_manager",
)
_NODE_FIELDS = ("id", "cluster", "metadata", "locality", "user_agent_name", "user_agent_version",
                "user_agent_build_version", "extensions", "client_features",
                "listening_addresses", "dynamic_parameters")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str = ""
    cluster: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: str
    port: int
    access_logs: tuple[Any, ...] = ()
    access_log_path: str | None = None     # legacy field, still accepted by Envoy
    profile_path: str | None = None

    @property
    def access_log(self) -> tuple[Any, ...]:
        """Alias of `access_logs` under Envoy's field name."""
        return self.access_logs


@dataclass(frozen=True, slots=True)
class Bootstrap:
    node: NodeConfig
    admin: AdminConfig | None
    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[Any, ...]              # proxy.upstream.cluster_config.ClusterConfig
    stats_flush_interval: float = 5.0
    raw: Mapping[str, Any] | None = None   # deep copy of the input, for /config_dump


def parse_bootstrap(raw: Any) -> Bootstrap:
    """Validate a whole bootstrap. The registry must be filled (import proxy.extensions)."""
    f = Fields(raw, "", _TOP_SUPPORTED + _TOP_UNSUPPORTED)
    if f.has("dynamic_resources"):
        raise ConfigError(f.at("dynamic_resources"), "dynamic_resources (xDS) is not supported yet")
    for key in _TOP_UNSUPPORTED:
        if f.has(key):
            raise ConfigError(f.at(key), "not supported yet")
    _check_overload_manager(f)
    f.raw_obj("layered_runtime")         # accepted, not used yet
    f.bool("enable_dispatcher_stats", False)
    interval = f.duration("stats_flush_interval", 5.0)
    if not 0.001 <= interval <= 300.0:
        raise ConfigError(f.at("stats_flush_interval"), "must be between 1ms and 300s")
    listeners, clusters = _parse_static_resources(f)
    _check_route_clusters(listeners, {c.name for c in clusters})
    return Bootstrap(
        node=_parse_node(f),
        admin=_parse_admin(f),
        listeners=listeners,
        clusters=clusters,
        stats_flush_interval=interval,
        raw=copy.deepcopy(dict(raw)),
    )


def _check_overload_manager(f: Fields) -> None:
    o = f.obj("overload_manager", ("refresh_interval", "resource_monitors", "actions",
                                   "loadshed_points", "buffer_factory_config"))
    if o is None:
        return
    for key in ("resource_monitors", "actions", "loadshed_points", "buffer_factory_config"):
        if o.has(key) and o.raw[key] not in ([], {}):
            raise ConfigError(o.at(key), "overload manager is not supported yet")


def _parse_node(f: Fields) -> NodeConfig:
    n = f.obj("node", _NODE_FIELDS)
    if n is None:
        return NodeConfig()
    loc = n.obj("locality", ("region", "zone", "sub_zone"))
    metadata = n.raw_obj("metadata")
    return NodeConfig(
        id=n.str("id", ""),
        cluster=n.str("cluster", ""),
        metadata=copy.deepcopy(dict(metadata)) if metadata is not None else {},
        region=loc.str("region", "") if loc else "",
        zone=loc.str("zone", "") if loc else "",
        sub_zone=loc.str("sub_zone", "") if loc else "",
    )


def _parse_admin(f: Fields) -> AdminConfig | None:
    a = f.obj("admin", ("address", "access_log", "access_log_path", "profile_path",
                        "socket_options", "ignore_global_conn_limit"))
    if a is None:
        return None
    if a.list("socket_options"):
        raise ConfigError(a.at("socket_options"), "not supported yet")
    a.bool("ignore_global_conn_limit", False)
    if not a.has("address"):
        # Envoy runs without an admin listener when admin has no address.
        return None
    ip, port = parse_address(a.value("address"), a.at("address"))
    return AdminConfig(
        address=ip,
        port=port,
        access_logs=_admin_access_logs(a),
        access_log_path=_admin_access_log_path(a),
        profile_path=a.str("profile_path"),
    )


def _parse_static_resources(f: Fields) -> tuple[tuple[ListenerConfig, ...], tuple[Any, ...]]:
    s = f.obj("static_resources", ("listeners", "clusters", "secrets"))
    if s is None:
        return (), ()
    if s.list("secrets"):
        raise ConfigError(s.at("secrets"), "secrets are not supported yet")
    clusters = []
    cluster_seen: dict[str, str] = {}
    for item, path in s.list("clusters"):
        cluster = parse_cluster(item, path)
        if cluster.name in cluster_seen:
            raise ConfigError(join(path, "name"), f'duplicate cluster name "{cluster.name}" '
                                                  f"(also at {cluster_seen[cluster.name]})")
        cluster_seen[cluster.name] = path
        clusters.append(cluster)
    listeners = []
    names: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    for i, (item, path) in enumerate(s.list("listeners")):
        lis = parse_listener(item, path, i)
        if lis.name in names:
            raise ConfigError(join(path, "name"), f'duplicate listener name "{lis.name}" '
                                                  f"(also at {names[lis.name]})")
        names[lis.name] = path
        key = (lis.address, lis.port)
        if lis.port != 0 and key in addresses:
            raise ConfigError(join(path, "address"), f"duplicate listener address "
                                                     f"{address_string(*key)} (also at {addresses[key]})")
        addresses[key] = path
        listeners.append(lis)
    return tuple(listeners), tuple(clusters)


# -- inline routes must name defined clusters (Envoy: validate_clusters defaults to true for
#    a route_config given inline) ---------------------------------------------------------

def _check_route_clusters(listeners: tuple[ListenerConfig, ...], clusters: set[str]) -> None:
    for li, lis in enumerate(listeners):
        lpath = index("static_resources.listeners", li)
        for ci, chain in enumerate(lis.filter_chains):
            cpath = index(join(lpath, "filter_chains"), ci)
            for fi, flt in enumerate(chain.filters):
                raw_hcm = getattr(flt.config, "raw", None)
                route_config = raw_hcm.get("route_config") if isinstance(raw_hcm, Mapping) else None
                if not isinstance(route_config, Mapping):
                    continue
                rpath = join(index(join(cpath, "filters"), fi), "typed_config.route_config")
                if route_config.get("validate_clusters") is False or (
                        isinstance(route_config.get("validate_clusters"), Mapping)
                        and route_config["validate_clusters"].get("value") is False):
                    continue
                for name, path in _route_cluster_refs(route_config, rpath):
                    if name not in clusters:
                        raise ConfigError(path, f'unknown cluster "{name}" (no cluster of that '
                                                "name in static_resources.clusters)")


def _route_cluster_refs(rc: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(cluster name, path) for every static cluster an inline route table names."""
    for vi, vh in enumerate(_as_list(rc.get("virtual_hosts"))):
        vpath = index(join(path, "virtual_hosts"), vi)
        for ri, route in enumerate(_as_list(vh.get("routes") if isinstance(vh, Mapping) else None)):
            action = route.get("route") if isinstance(route, Mapping) else None
            if not isinstance(action, Mapping):
                continue
            apath = join(index(join(vpath, "routes"), ri), "route")
            if isinstance(action.get("cluster"), str):
                yield action["cluster"], join(apath, "cluster")
            wc = action.get("weighted_clusters")
            if isinstance(wc, Mapping):
                for wi, c in enumerate(_as_list(wc.get("clusters"))):
                    if isinstance(c, Mapping) and isinstance(c.get("name"), str):
                        yield c["name"], join(index(join(apath, "weighted_clusters.clusters"), wi), "name")


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


# The admin server does not write access logs yet. Envoy's examples commonly send them to
# /dev/null, which is what we do anyway; any other destination is refused, not ignored.
def _admin_access_logs(a: Fields) -> tuple[Any, ...]:
    logs = tuple(parse_access_logs(a.list("access_log")))
    for log, (_, path) in zip(logs, a.list("access_log")):
        if log.target != "/dev/null":
            raise ConfigError(path, "admin access logs are not supported yet (only /dev/null)")
    return logs


def _admin_access_log_path(a: Fields) -> str | None:
    path = a.str("access_log_path")
    if path not in (None, "", "/dev/null"):
        raise ConfigError(a.at("access_log_path"), "admin access logs are not supported yet (only /dev/null)")
    return path
