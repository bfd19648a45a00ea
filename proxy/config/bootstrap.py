"""Config model of the Envoy v3 bootstrap (`config.bootstrap.v3.Bootstrap`), static subset.

Job: validate a bootstrap tree (plain dicts from YAML/JSON) into an immutable `Bootstrap`:
node, admin, static listeners and clusters, stats flush interval; then check what only the
whole tree can tell (unique listener names and addresses, unique cluster names, inline routes
naming defined clusters, the admin and the listeners on distinct ports). Every field is declared
once in the tables below (used, inert with the reason, or refused with "<path>: not supported
yet"); misspellings are refused as unknown fields with a suggestion. Independent parts are all
checked and their errors raised together.

Must not: do I/O (see `proxy.config.load`), or import extension modules — the registry must
already be filled (`proxy.extensions`). Thread affinity: main thread; the result is immutable.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.access_log.config import parse_access_logs
from proxy.config.cluster_manager_config import (ClusterManagerConfig, check_load_stats_cluster,
                                                 parse_cluster_manager)
from proxy.config.dynamic_resources import (DynamicResources, check_file_sources_need_node,
                                             check_grpc_sources, parse_dynamic_resources)
from proxy.config.listener import ListenerConfig, address_string, parse_address, parse_listener
from proxy.config.fields_table import Message, inert, not_supported, refused, used
from proxy.config.grpc_client_tls import check_grpc_client_tls
from proxy.config.stats_config import StatsConfig, parse_stats_config
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields, index, join
from proxy.config.registry import resolve
from proxy.network.transport_socket import RawBufferSocketFactory
from proxy.tls.secrets import SecretScope, SecretSource, parse_static_secrets, secret_scope
from proxy.upstream.cluster_config import parse_cluster

__all__ = ["Bootstrap", "NodeConfig", "AdminConfig", "DynamicResources", "parse_bootstrap"]

@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str = ""
    cluster: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    zone: str = ""
    region: str = ""      # locality, sent to xDS control planes with zone and sub_zone
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Bootstrap:
    node: NodeConfig
    admin: AdminConfig | None
    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[Any, ...]              # proxy.upstream.cluster_config.ClusterConfig
    stats_flush_interval: float = 5.0
    stats_sinks: tuple[Any, ...] = ()      # (extension, parsed config) of each stats sink
    stats_config: StatsConfig = StatsConfig()  # tags, stats_matcher, histogram buckets
    # The runtime key overload.global_downstream_max_connections (None: no limit).
    global_downstream_max_connections: int | None = None
    # envoy.resource_limits.listener.<listener name>.connection_limit, by listener name.
    listener_connection_limits: Mapping[str, int] = field(default_factory=dict)
    dynamic_resources: DynamicResources = DynamicResources()
    cluster_manager: ClusterManagerConfig = ClusterManagerConfig()   # load_stats_config
    raw: Mapping[str, Any] | None = None   # deep copy of the input, for /config_dump
    # What the operator should hear about a config that loads (e.g. one that serves nothing).
    warnings: tuple[str, ...] = ()


# -- declared fields (proxy.config.fields_table) -----------------------------------------

_NOT_SENT = "not sent to xDS control planes yet (Envoy sends it in the node)"
_NO_RUNTIME = "no runtime key is honoured yet"

BOOTSTRAP = Message("envoy.config.bootstrap.v3.Bootstrap", title="Bootstrap", model=Bootstrap,
                    bookkeeping=("raw", "warnings", "listener_connection_limits"), fields=(
    used("node"),
    used("admin"),
    used("static_resources", attr="listeners"),
    used("stats_flush_interval", "5s", why="how often stats_sinks are flushed (the admin merges "
                                            "the workers' stats when read)"),
    used("stats_sinks"),
    used("stats_config", why="tag extraction, stats_matcher and histogram buckets: its own table"),
    used("layered_runtime", attr="global_downstream_max_connections",
         why="its honoured keys, overload.global_downstream_max_connections and "
             "envoy.resource_limits.listener.<name>.connection_limit; others refused"),
    used("overload_manager", attr="", why="only without monitors or actions: its own table"),
    refused("enable_dispatcher_stats", default=False, only_default=True),
    used("dynamic_resources", why="lds_config and cds_config from files: its own table"),
    used("cluster_manager", why="only load_stats_config (load reporting): its own table"),
    *(refused(name) for name in (
        "node_context_params", "hds_config", "flags_path",
        "deferred_stat_options", "stats_flush_on_admin", "watchdog", "watchdogs",
        "tracing", "header_prefix", "stats_server_version_override", "use_tcp_for_dns_lookups",
        "dns_resolution_config", "typed_dns_resolver_config", "bootstrap_extensions",
        "fatal_actions", "config_sources", "default_config_source", "default_socket_interface",
        "certificate_provider_instances", "inline_headers", "perf_tracing_file_path",
        "default_regex_engine", "xds_delegate_extension", "xds_config_tracker_extension",
        "listener_manager", "application_log_config", "grpc_async_client_manager_config",
        "memory_allocator_manager")),
))

STATIC_RESOURCES = Message("envoy.config.bootstrap.v3.Bootstrap.StaticResources", fields=(
    used("listeners"),
    used("clusters"),
    used("secrets", attr="", why="TLS certificates and validation contexts by name (SDS without a "
                                 "control plane): resolved into the TLS contexts that name them"),
))

NODE = Message("envoy.config.core.v3.Node", model=NodeConfig, fields=(
    used("id"),
    used("cluster"),
    used("metadata", attr="metadata", why="sent to xDS control planes in the node"),
    used("locality", attr="", why="its own table"),
    *(inert(name, "Envoy and ftproxy fill the user agent of the node they send themselves")
      for name in ("user_agent_name", "user_agent_version", "user_agent_build_version")),
    *(inert(name, "Envoy sends its own list; ftproxy sends none yet")
      for name in ("extensions", "client_features")),
    *(inert(name, _NOT_SENT) for name in ("listening_addresses", "dynamic_parameters")),
))

LOCALITY = Message("envoy.config.core.v3.Locality", fields=(
    used("region", why="sent to xDS control planes in the node"),
    used("zone", why="the `zone` tag of tracing spans; sent to xDS control planes"),
    used("sub_zone", why="sent to xDS control planes in the node"),
))

ADMIN = Message("envoy.config.bootstrap.v3.Admin", model=AdminConfig, fields=(
    used("address", attr="address"),
    inert("access_log", "only to /dev/null: the admin writes no access log"),
    inert("access_log_path", "only /dev/null: the admin writes no access log"),
    inert("profile_path", "there is no CPU profiler endpoint"),
    inert("ignore_global_conn_limit", "there is no global connection limit", default=False),
    refused("socket_options"),
))

LAYERED_RUNTIME = Message("envoy.config.bootstrap.v3.LayeredRuntime", fields=(
    used("layers", attr="", why="each layer checked: its own table"),
))

RUNTIME_LAYER = Message("envoy.config.bootstrap.v3.RuntimeLayer", fields=(
    inert("name", "names the layer in /runtime, which ftproxy does not serve"),
    refused("static_layer", f"{_NO_RUNTIME}: each key is refused by name (an empty layer passes)",
            only_default=True),
    refused("disk_layer", _NO_RUNTIME),
    inert("admin_layer", "the admin has no /runtime_modify, so this layer stays empty"),
    refused("rtds_layer", "xDS"),
))

OVERLOAD_MANAGER = Message("envoy.config.overload.v3.OverloadManager", fields=(
    inert("refresh_interval", "there are no resource monitors to refresh", default="1s"),
    refused("resource_monitors"),
    refused("actions"),
    refused("loadshed_points"),
    refused("buffer_factory_config"),
))


def parse_bootstrap(raw: Any) -> Bootstrap:
    """Validate a whole bootstrap. The registry must be filled (import proxy.extensions).
    Independent parts (each top-level field, each listener, each cluster) are all checked:
    their errors are raised together (ConfigErrors), each naming its path."""
    errors = ErrorCollector()
    f = BOOTSTRAP.read(raw, "", errors_to=errors)
    errors.run(_check_overload_manager, f)
    limits = errors.run(_check_layered_runtime, f)
    extra_warnings: list[str] = []
    errors.run(lambda: BOOTSTRAP.require_default(f, "enable_dispatcher_stats",
                                                 f.bool("enable_dispatcher_stats", False)))
    interval = errors.run(_stats_flush_interval, f)
    sinks = tuple(errors.run(resolve, "stats_sink", item, spath) for item, spath in f.list("stats_sinks"))
    stats_config = (errors.run(parse_stats_config, f.value("stats_config"), f.at("stats_config"))
                    if f.has("stats_config") else StatsConfig())
    node = errors.run(_parse_node, f)
    admin = errors.run(_parse_admin, f)
    resources = errors.run(_parse_static_resources, f, errors, node)
    dynamic = errors.run(parse_dynamic_resources, f, node)
    cm_config = errors.run(parse_cluster_manager, f)
    if resources is not MISSING:
        listeners, clusters, cluster_names, paths = resources
        errors.run(check_route_clusters, listeners, paths, cluster_names)
        errors.run(check_tracing_collectors, listeners, paths, clusters)
        for i, sink in enumerate(sinks):   # a sink that streams to a cluster checks it (metrics_service)
            check = getattr(sink[1], "check_clusters", None) if isinstance(sink, tuple) else None
            if check is not None:
                errors.run(check, clusters, f"stats_sinks[{i}].typed_config")
        if limits is not MISSING:
            extra_warnings = [f"runtime key envoy.resource_limits.listener.{name}.connection_limit "
                              f"names no listener: it limits nothing (as in Envoy)"
                              for name in limits[1] if name not in {lc.name for lc in listeners}]
        if admin is not MISSING:
            errors.run(_check_admin_port, admin, listeners, paths)
        if node is not MISSING and not (node.id and node.cluster):
            errors.run(check_file_sources_need_node, listeners, paths, clusters)
        if dynamic is not MISSING:
            errors.run(check_grpc_sources, dynamic, clusters)
        if cm_config is not MISSING:
            errors.run(check_load_stats_cluster, cm_config, clusters)
    errors.raise_if_any()
    global_limit, listener_limits = limits
    return Bootstrap(
        node=node,
        admin=admin,
        listeners=listeners,
        clusters=clusters,
        stats_flush_interval=interval,
        stats_sinks=sinks,
        stats_config=stats_config,
        dynamic_resources=dynamic,
        cluster_manager=cm_config,
        global_downstream_max_connections=global_limit,
        listener_connection_limits=listener_limits,
        raw=copy.deepcopy(dict(raw)),
        warnings=(_warnings(listeners) if dynamic.lds_config is None else ()) + tuple(extra_warnings),
    )


def _warnings(listeners: tuple[ListenerConfig, ...]) -> tuple[str, ...]:
    if listeners:
        return ()
    return ("the configuration has no listeners: the proxy will accept no traffic "
            "(only the admin, if configured, answers)",)


def _stats_flush_interval(f: Fields) -> float:
    interval = f.duration("stats_flush_interval", 5.0)
    if not 0.001 <= interval < 300.0:
        raise ConfigError(f.at("stats_flush_interval"), "must be inside range [1ms, 5m) (as Envoy's)")
    return interval


def _check_overload_manager(f: Fields) -> None:
    if f.has("overload_manager"):
        o = OVERLOAD_MANAGER.read(f.value("overload_manager"), f.at("overload_manager"))
        o.duration("refresh_interval")


# Runtime keys ftproxy honours (static layers; a later layer overrides an earlier one, as
# Envoy's layering does).
GLOBAL_MAX_CONNECTIONS_KEY = "overload.global_downstream_max_connections"


_LISTENER_LIMIT = re.compile(r"envoy\.resource_limits\.listener\.(.+)\.connection_limit")


def _check_layered_runtime(f: Fields) -> tuple[int | None, dict[str, int]]:
    """Runtime layers: `overload.global_downstream_max_connections` (the process-wide limit on
    downstream connections) and `envoy.resource_limits.listener.<name>.connection_limit` (one
    listener's, across its workers) are honoured and returned; any other key (a feature flag)
    is refused by its path rather than silently not enforced."""
    listener_limits: dict[str, int] = {}
    if not f.has("layered_runtime"):
        return None, listener_limits
    lr = LAYERED_RUNTIME.read(f.value("layered_runtime"), f.at("layered_runtime"))
    errors = ErrorCollector()
    limit = None
    for item, path in lr.list("layers"):
        layer = errors.run(RUNTIME_LAYER.read, item, path)
        if layer is MISSING:
            continue
        layer.str("name")
        layer.oneof("static_layer", "disk_layer", "admin_layer", "rtds_layer")
        layer.raw_obj("admin_layer")
        static = layer.raw_obj("static_layer")
        base = layer.at("static_layer")
        for key_path in _runtime_keys(static or {}, base):
            key = key_path[len(base) + 1:]
            per_listener = _LISTENER_LIMIT.fullmatch(key)
            if key == GLOBAL_MAX_CONNECTIONS_KEY or per_listener:  # written flat or nested
                value = _runtime_value(static, key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    errors.add(ConfigError(key_path, f"expected a non-negative integer, got {value!r}"))
                elif per_listener:
                    listener_limits[per_listener.group(1)] = value
                else:
                    limit = value
                continue
            errors.add(not_supported(key_path, f"a runtime key: ftproxy honours only "
                                               f"{GLOBAL_MAX_CONNECTIONS_KEY} and "
                                               f"envoy.resource_limits.listener.<name>.connection_limit, "
                                               f"so it would not be enforced"))
    errors.raise_if_any()
    return limit, listener_limits


def runtime_layers(raw: Mapping[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """A loaded bootstrap's runtime layers (its raw `layered_runtime`, validated at load), in
    order: (name, {dotted key: value as Envoy prints it}); an admin layer holds nothing."""
    layers = []
    for layer in (raw.get("layered_runtime") or {}).get("layers") or ():
        static = layer.get("static_layer") or {}
        values = {}
        for key_path in _runtime_keys(static, ""):
            key = key_path.lstrip(".")
            value = _runtime_value(static, key)
            values[key] = (str(value).lower() if isinstance(value, bool) else str(value))
        layers.append((str(layer.get("name", "")), values))
    return layers


def _runtime_value(tree: Mapping[str, Any], key: str) -> Any:
    """A dotted runtime key's value in a static layer written flat or nested."""
    if key in tree:
        return tree[key]
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _runtime_keys(tree: Mapping[str, Any], path: str) -> Iterator[str]:
    """The path of every leaf of a static runtime layer (nested objects flatten into dotted
    keys, as Envoy's runtime does)."""
    for key, value in tree.items():
        kpath = join(path, str(key))
        if isinstance(value, Mapping) and value:
            yield from _runtime_keys(value, kpath)
        else:
            yield kpath


def _parse_node(f: Fields) -> NodeConfig:
    if not f.has("node"):
        return NodeConfig()
    n = NODE.read(f.value("node"), f.at("node"))
    loc = LOCALITY.read(n.value("locality"), n.at("locality")) if n.has("locality") else None
    metadata = n.raw_obj("metadata")
    return NodeConfig(
        id=n.str("id", ""),
        cluster=n.str("cluster", ""),
        metadata=copy.deepcopy(dict(metadata)) if metadata is not None else {},
        zone=loc.str("zone", "") if loc else "",
        region=loc.str("region", "") if loc else "",
        sub_zone=loc.str("sub_zone", "") if loc else "",
    )


def _parse_admin(f: Fields) -> AdminConfig | None:
    if not f.has("admin"):
        return None
    a = ADMIN.read(f.value("admin"), f.at("admin"))
    a.bool("ignore_global_conn_limit", False)
    if not a.has("address"):
        # Envoy runs without an admin listener when admin has no address.
        return None
    ip, port = parse_address(a.value("address"), a.at("address"))
    _check_admin_access_logs(a)
    a.str("profile_path")
    return AdminConfig(address=ip, port=port)


def _parse_static_resources(f: Fields, errors: ErrorCollector, node: Any
                            ) -> tuple[tuple[ListenerConfig, ...], tuple[Any, ...], set[str], tuple[str, ...]]:
    """(listeners, clusters, every cluster name written, each listener's path): a listener or
    cluster that fails is recorded in `errors` and left out, and the others are still checked.
    TLS contexts among them resolve secrets by name from `secrets` (proxy/tls/secrets.py)."""
    if not f.has("static_resources"):
        return (), (), set(), ()
    s = STATIC_RESOURCES.read(f.value("static_resources"), f.at("static_resources"), errors_to=errors)
    static = errors.run(parse_static_secrets, s.list("secrets"))
    scope = SecretScope(static if static is not MISSING else {},
                        getattr(node, "id", "") or "", getattr(node, "cluster", "") or "")
    if static is not MISSING:
        for name, (message, spath) in static.items():  # used or not, each must be valid
            for kind in ("tls_certificate", "validation_context"):
                if message.get(kind) is not None:
                    from proxy.tls.config import parse_secret  # (cryptography: only with static secrets)
                    errors.run(parse_secret, SecretSource(name, kind), message[kind], join(spath, kind))
    with secret_scope(scope):
        return _parse_listeners_and_clusters(s, errors)


def _parse_listeners_and_clusters(s: Fields, errors: ErrorCollector
                                  ) -> tuple[tuple[ListenerConfig, ...], tuple[Any, ...], set[str], tuple[str, ...]]:
    clusters = []
    cluster_seen: dict[str, str] = {}
    for item, path in s.list("clusters"):
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name:
            if name in cluster_seen:
                errors.add(ConfigError(join(path, "name"), f'duplicate cluster name "{name}" '
                                                           f"(also at {cluster_seen[name]})"))
                continue
            cluster_seen[name] = path
        cluster = errors.run(parse_cluster, item, path)
        if cluster is not MISSING:
            clusters.append(cluster)
    listeners = []
    paths = []
    names: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    for i, (item, path) in enumerate(s.list("listeners")):
        lis = errors.run(parse_listener, item, path, i)
        if lis is MISSING:
            continue
        if lis.name in names:
            errors.add(ConfigError(join(path, "name"), f'duplicate listener name "{lis.name}" '
                                                       f"(also at {names[lis.name]})"))
            continue
        names[lis.name] = path
        key = (lis.address, lis.port, lis.protocol)   # TCP and UDP may share a port
        if lis.port != 0 and key in addresses:
            errors.add(ConfigError(join(path, "address"), f"duplicate listener address "
                                                          f"{address_string(*key[:2])} (also at {addresses[key]})"))
            continue
        addresses[key] = path
        listeners.append(lis)
        paths.append(path)
    return tuple(listeners), tuple(clusters), set(cluster_seen), tuple(paths)


def overlaps(a: str, b: str) -> bool:
    """Two listen addresses on one port conflict: the same address, or a wildcard (0.0.0.0 or
    ::, which on Linux also takes IPv4) with any address it covers."""
    if a == b:
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    for wild, other in ((ia, ib), (ib, ia)):
        if wild.is_unspecified and (wild.version == 6 or other.version == 4):
            return True
    return False


def _check_admin_port(admin: AdminConfig | None, listeners: tuple[ListenerConfig, ...],
                      paths: tuple[str, ...]) -> None:
    """The admin and a listener on one address and port cannot both bind: refuse it here, naming
    both (Envoy's --mode validate binds nothing and says OK; Envoy then fails at start)."""
    if admin is None or admin.port == 0:
        return
    errors = ErrorCollector()
    for lis, path in zip(listeners, paths):
        if lis.protocol == "TCP" and lis.port == admin.port and overlaps(lis.address, admin.address):
            errors.add(ConfigError(
                join(path, "address"),
                f"{address_string(lis.address, lis.port)} is also the admin's address "
                f"(admin.address, {address_string(admin.address, admin.port)}): both cannot bind"))
    errors.raise_if_any()


# -- inline routes must name defined clusters (Envoy: validate_clusters defaults to true for
#    a route_config given inline); so must a tracer's collector_cluster ------------------------

def check_tracing_collectors(listeners: tuple[ListenerConfig, ...], paths: tuple[str, ...],
                             clusters) -> None:
    """A tracer's collector cluster must be plaintext unless its exporter speaks TLS (OTLP over
    gRPC: `collector_tls`, then grpc_client_tls.py's rules apply): the other span exports
    (proxy/tracing) open their own connections without TLS, so a cluster with a TLS
    transport_socket is refused rather than sent spans in the clear."""
    by_name = {c.name: c for c in clusters}
    errors = ErrorCollector()
    for lis, lpath in zip(listeners, paths):
        for ci, chain in enumerate(lis.filter_chains):
            cpath = index(join(lpath, "filter_chains"), ci)
            for fi, flt in enumerate(chain.filters):
                tracing = getattr(flt.config, "tracing", None)
                cluster = by_name.get(tracing.provider.collector_cluster) if tracing is not None else None
                if cluster is None or isinstance(cluster.transport_socket, RawBufferSocketFactory):
                    continue
                if getattr(tracing.provider, "collector_tls", False):
                    errors.run(check_grpc_client_tls, cluster,
                               join(index(join(cpath, "filters"), fi), "typed_config.tracing.provider"),
                               None, "trace collector")
                else:
                    errors.add(ConfigError(
                        join(index(join(cpath, "filters"), fi), "typed_config.tracing.provider"),
                        f'not supported yet (the collector cluster "{cluster.name}" has a TLS '
                        "transport_socket: span export over TLS)"))
    errors.raise_if_any()


def check_route_clusters(listeners: tuple[ListenerConfig, ...], paths: tuple[str, ...],
                         clusters: set[str], where: str = "static_resources.clusters") -> None:
    errors = ErrorCollector()
    for lis, lpath in zip(listeners, paths):
        for ci, chain in enumerate(lis.filter_chains):
            cpath = index(join(lpath, "filter_chains"), ci)
            for fi, flt in enumerate(chain.filters):
                raw_hcm = getattr(flt.config, "raw", None)
                tracing = getattr(flt.config, "tracing", None)
                if (tracing is not None and tracing.provider.collector_cluster not in clusters
                        and getattr(tracing.provider, "cluster_checked_at_load", True)):
                    # Envoy's zipkin driver checks its collector cluster at load (the
                    # OpenTelemetry one does not: its gRPC client fails each export).
                    errors.add(ConfigError(
                        join(index(join(cpath, "filters"), fi),
                             "typed_config.tracing.provider.typed_config.collector_cluster"),
                        f'unknown cluster "{tracing.provider.collector_cluster}" (no cluster of '
                        "that name in static_resources.clusters)"))
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
                        errors.add(ConfigError(path, f'unknown cluster "{name}" (no cluster of '
                                                     f"that name in {where})"))
    errors.raise_if_any()


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
            # Envoy checks a mirror's static cluster too ("unknown shadow cluster").
            for mi, m in enumerate(_as_list(action.get("request_mirror_policies"))):
                if isinstance(m, Mapping) and isinstance(m.get("cluster"), str):
                    yield m["cluster"], join(index(join(apath, "request_mirror_policies"), mi), "cluster")


def _as_list(v: Any) -> list[Any]:
    """A list field's items (one value where the list is counts as a list of it)."""
    return v if isinstance(v, list) else [] if v is None else [v]


# The admin server does not write access logs yet. Envoy's examples commonly send them to
# /dev/null, which is what we do anyway; any other destination is refused, not ignored.
def _check_admin_access_logs(a: Fields) -> None:
    items = a.list("access_log")
    for log, (_, path) in zip(parse_access_logs(items), items):
        if log.target != "/dev/null":
            raise not_supported(path, "admin access logs: only to /dev/null")
    if a.str("access_log_path") not in (None, "", "/dev/null"):
        raise not_supported(a.at("access_log_path"), "admin access logs: only to /dev/null")
