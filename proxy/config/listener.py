"""Config model of static listeners (`config.listener.v3.Listener`).

Job: validate one listener — address, stat prefix, socket options we honour, its listener
filters and its filter chains (each with its `filter_chain_match`, and the default chain),
whose filters are resolved through the registry — into immutable `ListenerConfig`. Filter
chains whose matches are the same message or overlap are refused here with Envoy 1.40's
messages (the match tree itself is built from the result by
proxy/network/filter_chain_match.py). Every field is declared once in the tables below (used, inert with the
reason, or refused with "<path>: not supported yet"); misspelt fields are refused as unknown
with a suggestion.

Must not: do I/O (no sockets, no DNS: listener addresses must be IP literals), or import
filter modules (terminal filters are recognised by their registered names).
Thread affinity: parsed on the main thread; the result is immutable.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxy.access_log.config import parse_access_logs
from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields, index, join
from proxy.config.registry import resolve
from proxy.network.transport_socket import DOWNSTREAM, RAW_BUFFER, parse_transport_socket

__all__ = ["ListenerConfig", "FilterChainConfig", "FilterChainMatchConfig", "NetworkFilterConfig",
           "ListenerFilterConfig", "parse_listener", "parse_address", "parse_listener_address", "TERMINAL_NETWORK_FILTERS"]

# Network filters that end a chain (Envoy's isTerminalFilter).
TERMINAL_NETWORK_FILTERS = frozenset({
    "envoy.filters.network.http_connection_manager",
    "envoy.filters.network.tcp_proxy",
    "envoy.filters.network.redis_proxy",
})

DEFAULT_BUFFER_LIMIT = 1024 * 1024   # Envoy's per-connection soft watermark: 1 MiB

class NetworkFilterConfig(NamedTuple):
    """One network filter: its name as written (or the extension's), its parsed config and
    its extension (whose `factory` makes a non-terminal filter run)."""
    name: str
    config: Any      # HcmConfig, TcpProxyConfig, ...
    extension: Any = None


class ListenerFilterConfig(NamedTuple):
    """One listener filter (tls_inspector, proxy_protocol, ...): its name as written (or the
    extension's), its parsed config and its extension (whose `factory` makes it run)."""
    name: str
    config: Any
    extension: Any = None


@dataclass(frozen=True, slots=True)
class FilterChainMatchConfig:
    """`config.listener.v3.FilterChainMatch`, normalised: CIDR ranges as "10.0.0.0/8" (host
    bits cleared, prefix lengths clamped as Envoy's CidrRange does), server names lower-cased.
    Read by proxy/network/filter_chain_match.py."""
    destination_port: int = 0
    prefix_ranges: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    direct_source_prefix_ranges: tuple[str, ...] = ()
    source_type: str = "ANY"
    source_prefix_ranges: tuple[str, ...] = ()
    source_ports: tuple[int, ...] = ()


EMPTY_MATCH = FilterChainMatchConfig()


@dataclass(frozen=True, slots=True)
class FilterChainConfig:
    filters: tuple[NetworkFilterConfig, ...]
    name: str = ""
    filter_chain_match: FilterChainMatchConfig = EMPTY_MATCH
    # The factory of accepted connections' transport sockets (raw_buffer or TLS), built at
    # load on the main thread; its sockets carry transport_socket_connect_timeout.
    transport_socket: Any = RAW_BUFFER


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: str
    port: int                              # 0 = ephemeral; the real port is known after bind
    stat_prefix: str                       # stats root: listener.<stat_prefix>.
    filter_chains: tuple[FilterChainConfig, ...]
    # Run on each accepted socket before its filter chain is chosen (proxy/network/active_socket.py).
    listener_filters: tuple[ListenerFilterConfig, ...] = ()
    # Takes the connections no filter chain matches (else they are closed).
    default_filter_chain: FilterChainConfig | None = None
    enable_reuse_port: bool = True
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    traffic_direction: str = "UNSPECIFIED"
    listener_filters_timeout: float = 15.0
    continue_on_listener_filters_timeout: bool = False
    tcp_backlog_size: int | None = None
    ignore_global_conn_limit: bool = False  # not held to overload.global_downstream_max_connections
    # "UDP": the address's protocol; such a listener has no filter chains, and its one listener
    # filter (udp_proxy, category "udp_listener_filter") proxies its datagrams (network/udp/).
    protocol: str = "TCP"
    # Listener access logs (proxy.access_log AccessLogConfig): one entry per connection.
    access_logs: tuple[Any, ...] = ()
    raw: Mapping[str, Any] | None = None


# -- declared fields (proxy.config.fields_table) -----------------------------------------


LISTENER = Message("envoy.config.listener.v3.Listener", title="Listeners", model=ListenerConfig,
                   bookkeeping=("raw", "port"), fields=(
    used("name"),
    used("address"),
    used("stat_prefix"),
    used("filter_chains"),
    used("per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT),
    used("enable_reuse_port", True),
    used("reuse_port", attr="enable_reuse_port", why="deprecated spelling"),
    used("tcp_backlog_size"),
    used("traffic_direction", "UNSPECIFIED", why="OUTBOUND: the HCM's tracing is egress "
         "(the route decorator's operation goes upstream in x-envoy-decorator-operation)"),
    used("listener_filters_timeout", default="15s"),
    used("continue_on_listener_filters_timeout", default=False),
    inert("metadata", "no filter here reads listener metadata"),
    used("ignore_global_conn_limit", default=False),
    inert("bypass_overload_manager", "the overload manager has no actions (they are refused)",
          default=False),
    used("access_log", attr="access_logs", why="once per connection when it closes, and for a "
         "connection closed before it had a filter chain (no match: NR; a listener filter); "
         "proxy/network/listener_access_log.py"),
    refused("drain_type", "MODIFY_ONLY: a hot restart or shutdown drains every listener",
            default="DEFAULT", only_default=True),
    refused("connection_balance_config", "the kernel balances connections across workers "
                                         "(SO_REUSEPORT), or workers share one socket"),
    refused("max_connections_to_accept_per_socket_event",
            "a listener accepts up to 64 connections per socket event", only_default=True),
    refused("bind_to_port", default=True, only_default=True),
    used("listener_filters"),
    used("default_filter_chain"),
    refused("filter_chain_matcher", "the xDS matcher tree: filter chains are chosen by their "
                                    "filter_chain_match"),
    refused("additional_addresses"),
    refused("use_original_dst"),
    refused("socket_options"),
    refused("transparent"),
    refused("freebind"),
    refused("tcp_fast_open_queue_length"),
    refused("udp_listener_config", "UDP"),
    refused("api_listener"),
    refused("internal_listener"),
    refused("enable_mptcp"),
    refused("fcds_config"),
    refused("deprecated_v1"),
))

FILTER_CHAIN = Message("envoy.config.listener.v3.FilterChain", model=FilterChainConfig, fields=(
    used("filters"),
    used("filter_chain_match"),
    used("name", why="in duplicate-match errors and the connection's DownstreamInfo.filter_chain_name"),
    inert("metadata", "no filter here reads filter chain metadata"),
    used("transport_socket", why="raw_buffer or envoy.transport_sockets.tls (DownstreamTlsContext)"),
    used("transport_socket_connect_timeout", attr="transport_socket",
         why="the transport socket's connect_timeout: an unfinished handshake is closed"),
    refused("on_demand_configuration"),
    refused("use_proxy_proto"),
))

FILTER_CHAIN_MATCH = Message("envoy.config.listener.v3.FilterChainMatch",
                             model=FilterChainMatchConfig, fields=(
    used("destination_port"),
    used("prefix_ranges"),
    used("server_names", why="exact names and *.suffix wildcards"),
    used("transport_protocol"),
    used("application_protocols"),
    used("direct_source_prefix_ranges"),
    used("source_type", default="ANY"),
    used("source_prefix_ranges"),
    used("source_ports"),
    refused("address_suffix", "Envoy refuses it too: an unimplemented field"),
    refused("suffix_len", "Envoy refuses it too: an unimplemented field"),
))

CIDR_RANGE = Message("envoy.config.core.v3.CidrRange", fields=(
    used("address_prefix", attr="", why="an IP literal; with prefix_len, one item of the "
                                        "range list that carries it"),
    used("prefix_len", attr="", why="clamped to the address's length, as Envoy does"),
))

LISTENER_FILTER = Message("envoy.config.listener.v3.ListenerFilter", title="Listener filters",
                          fields=(
    used("name", attr="", why="with typed_config, resolves the extension (its own table)"),
    used("typed_config", attr="", why="the extension's own table"),
    refused("config_discovery", "extension config discovery (ECDS) is xDS"),
    refused("filter_disabled", "listener filter match predicates"),
))

ADDRESS = Message("envoy.config.core.v3.Address", fields=(
    used("socket_address", attr="address"),
    refused("pipe", "only socket_address"),
    refused("envoy_internal_address", "only socket_address"),
))

SOCKET_ADDRESS = Message("envoy.config.core.v3.SocketAddress", fields=(
    used("address", why="an IP literal"),
    used("port_value", attr="port"),
    used("protocol", default="TCP", why="UDP on a listener: its udp_proxy listener filter proxies "
                                        "datagrams (the admin address: only TCP)"),
    refused("named_port"),
    refused("resolver_name"),
    refused("network_namespace_filepath"),
    refused("ipv4_compat", "only false: an IPv6 listen socket takes IPv6 only (IPV6_V6ONLY), as "
                           "Envoy's default", default=False, only_default=True),
))


def parse_address(value: Any, path: str) -> tuple[str, int]:
    """`core.v3.Address` holding a TCP `socket_address` with an IP literal -> (ip, port)."""
    ip, port, protocol = parse_listener_address(value, path)
    if protocol != "TCP":
        raise ConfigError(join(join(path, "socket_address"), "protocol"),
                          "not supported yet (only TCP here)")
    return ip, port


def parse_listener_address(value: Any, path: str) -> tuple[str, int, str]:
    """`core.v3.Address` holding a `socket_address` with an IP literal -> (ip, port, protocol)."""
    a = ADDRESS.read(value, path)
    s = SOCKET_ADDRESS.read(a.value("socket_address", required=True), a.at("socket_address"))
    protocol = s.enum("protocol", ("TCP", "UDP"), "TCP")
    SOCKET_ADDRESS.require_default(s, "ipv4_compat", s.bool("ipv4_compat", False))
    host = s.str("address", required=True)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(s.at("address"), f"{host!r} is not an IP address "
                                           "(listener and admin addresses must be IP literals)") from None
    port = s.int("port_value", 0, min=0, max=65535)
    return str(ip), port, protocol


def address_string(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_listener(raw: Any, path: str, index: int = 0) -> ListenerConfig:
    """Validate one listener. `index` names it `listener_<index>` when `name` is absent.
    Independent mistakes (several fields, the filter chain) are reported together."""
    errors = ErrorCollector()
    f = LISTENER.read(raw, path, errors_to=errors)
    errors.run(_refuse_listener_defaults, f)
    name = errors.run(f.str, "name")
    address = errors.run(parse_listener_address, f.value("address", required=True), f.at("address"))
    udp = address is not MISSING and address[2] == "UDP"
    reuse = errors.run(_reuse_port, f)
    default_chain = None
    if udp:
        chains = ()
        errors.run(_refuse_udp_chains, f)
        listener_filters = errors.run(_parse_udp_listener_filters, f)
    else:
        chains = errors.run(_parse_filter_chains, f)
        if f.has("default_filter_chain"):
            default_chain = errors.run(_parse_filter_chain, f.value("default_filter_chain"),
                                       f.at("default_filter_chain"))
        listener_filters = errors.run(_parse_listener_filters, f)
    buffer_limit = errors.run(f.int, "per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT, min=0)
    direction = errors.run(f.enum, "traffic_direction", ("UNSPECIFIED", "INBOUND", "OUTBOUND"),
                           "UNSPECIFIED")
    lf_timeout = errors.run(f.duration, "listener_filters_timeout", 15.0)
    if isinstance(lf_timeout, float) and lf_timeout < 0:
        errors.add(ConfigError(f.at("listener_filters_timeout"), "must not be negative"))
    lf_continue = errors.run(f.bool, "continue_on_listener_filters_timeout", False)
    backlog = errors.run(f.int, "tcp_backlog_size", min=1)
    stat_prefix = errors.run(f.str, "stat_prefix")
    ignore_global = errors.run(f.bool, "ignore_global_conn_limit", False)
    errors.run(f.bool, "bypass_overload_manager", False)
    errors.run(f.raw_obj, "metadata")
    access_logs = errors.run(lambda: parse_access_logs(f.list("access_log")))
    if udp and access_logs:
        errors.add(ConfigError(f.at("access_log"), "not supported yet on a UDP listener"))
    errors.raise_if_any()
    ip, port, protocol = address
    return ListenerConfig(
        name=name or f"listener_{index}",
        address=ip,
        port=port,
        stat_prefix=stat_prefix or address_string(ip, port).replace(":", "_"),
        filter_chains=chains,
        listener_filters=listener_filters,
        default_filter_chain=default_chain if default_chain is not MISSING else None,
        enable_reuse_port=reuse,
        per_connection_buffer_limit_bytes=buffer_limit,
        traffic_direction=direction,
        listener_filters_timeout=lf_timeout,
        continue_on_listener_filters_timeout=lf_continue,
        tcp_backlog_size=backlog,
        ignore_global_conn_limit=ignore_global,
        protocol=protocol,
        access_logs=access_logs,
        raw=raw,
    )


def _refuse_listener_defaults(f: Fields) -> None:
    """Fields whose default is what the runtime does: any other value is refused."""
    errors = ErrorCollector()
    errors.run(lambda: LISTENER.require_default(f, "drain_type", f.enum(
        "drain_type", ("DEFAULT", "MODIFY_ONLY"), "DEFAULT")))
    errors.run(lambda: LISTENER.require_default(f, "bind_to_port", f.bool("bind_to_port", True)))
    # A UInt32Value greater than 0 (Envoy's type and range), then refused: the accept batch is fixed.
    errors.run(lambda: LISTENER.require_default(f, "max_connections_to_accept_per_socket_event", f.int(
        "max_connections_to_accept_per_socket_event", min=1, max=2**32 - 1)))
    errors.raise_if_any()


def _reuse_port(f: Fields) -> bool:
    reuse = f.bool("enable_reuse_port")
    if reuse is None:
        reuse = f.bool("reuse_port", True)  # deprecated spelling
    return reuse


def _parse_filter_chains(f: Fields) -> tuple[FilterChainConfig, ...]:
    """Every chain, then Envoy's two refusals of ambiguous matches: two chains with the same
    filter_chain_match message, and two whose rules overlap (reach the same leaf of the match
    tree: proxy/network/filter_chain_match.py). Messages as Envoy 1.40 writes them."""
    chains: list[tuple[FilterChainConfig, str, tuple]] = []
    errors = ErrorCollector()
    for item, path in f.list("filter_chains", required=True, min_items=1):
        chain = errors.run(_parse_filter_chain, item, path)
        if chain is not MISSING:
            written = item.get("filter_chain_match") if isinstance(item, Mapping) else None
            chains.append((chain, path, _match_identity(chain.filter_chain_match, written)))
    errors.raise_if_any()
    seen: dict[tuple, str] = {}
    leaves: set[tuple] = set()
    for chain, path, identity in chains:
        if identity in seen:
            errors.add(ConfigError(path, f"filter chain '{chain.name}' has the same matching rules "
                                         f"defined as '{seen[identity]}'"))
            continue
        seen[identity] = chain.name
        keys = _match_leaves(chain.filter_chain_match)
        if keys & leaves:
            errors.add(ConfigError(path, "multiple filter chains with overlapping matching rules "
                                         "are defined"))
        leaves |= keys
    errors.raise_if_any()
    return tuple(c for c, _p, _i in chains)


def _match_identity(m: FilterChainMatchConfig, written: Any) -> tuple:
    """Equal for two FilterChainMatch messages Envoy holds equal (server names as written)."""
    names = ()
    if isinstance(written, Mapping) and isinstance(written.get("server_names"), list):
        names = tuple(written["server_names"])
    elif isinstance(written, Mapping) and isinstance(written.get("server_names"), str):
        names = (written["server_names"],)
    return (m.destination_port, m.prefix_ranges, names, m.transport_protocol,
            m.application_protocols, m.direct_source_prefix_ranges, m.source_type,
            m.source_prefix_ranges, m.source_ports)


def _match_leaves(m: FilterChainMatchConfig) -> set[tuple]:
    """The leaves of Envoy's match tree this match fills: the product of its criteria."""
    return set(itertools.product(
        (m.destination_port,), m.prefix_ranges or ("",),
        tuple(n[1:] if n.startswith("*.") else n for n in m.server_names) or ("",),
        (m.transport_protocol,), m.application_protocols or ("",),
        m.direct_source_prefix_ranges or ("",), (m.source_type,),
        m.source_prefix_ranges or ("",), m.source_ports or (0,)))


def _parse_listener_filters(f: Fields) -> tuple[ListenerFilterConfig, ...]:
    out = []
    errors = ErrorCollector()
    for item, path in f.list("listener_filters"):
        lf = errors.run(LISTENER_FILTER.read, item, path)
        if lf is MISSING:
            continue
        resolved = errors.run(resolve, "listener_filter",
                              {k: v for k, v in lf.raw.items() if k in ("name", "typed_config")}, path)
        if resolved is MISSING:
            continue
        ext, cfg = resolved
        out.append(ListenerFilterConfig(lf.str("name") or ext.name, cfg, ext))
    errors.raise_if_any()
    return tuple(out)


def _refuse_udp_chains(f: Fields) -> None:
    """A UDP listener's datagrams go to its udp_proxy listener filter: filter chains are for
    QUIC, which is not supported."""
    for key in ("filter_chains", "default_filter_chain"):
        if f.has(key) and f.value(key) not in (None, [], {}):
            raise ConfigError(f.at(key), "not supported yet (filter chains on a UDP listener: "
                                         "QUIC); a UDP listener proxies with its udp_proxy listener filter")


def _parse_udp_listener_filters(f: Fields) -> tuple[ListenerFilterConfig, ...]:
    """A UDP listener's listener filters: exactly one, envoy.filters.udp_listener.udp_proxy."""
    items = f.list("listener_filters")
    if len(items) != 1:
        raise ConfigError(f.at("listener_filters"), "a UDP listener needs exactly one listener "
                                                    "filter, envoy.filters.udp_listener.udp_proxy")
    item, path = items[0]
    lf = LISTENER_FILTER.read(item, path)
    ext, cfg = resolve("udp_listener_filter",
                       {k: v for k, v in lf.raw.items() if k in ("name", "typed_config")}, path)
    return (ListenerFilterConfig(lf.str("name") or ext.name, cfg, ext),)


def parse_cidr_ranges(items: list) -> tuple:
    """CidrRanges (`(value, path)` pairs, as Fields.list gives them) as ipaddress networks
    (host bits cleared, prefix_len clamped to the address's length, as Envoy's CidrRange)."""
    out = []
    for item, path in items:
        c = CIDR_RANGE.read(item, path)
        prefix = c.str("address_prefix", required=True)
        try:
            ip = ipaddress.ip_address(prefix)
        except ValueError:
            raise ConfigError(c.at("address_prefix"), f"malformed IP address: {prefix}") from None
        length = min(c.int("prefix_len", 0, min=0, max=128), ip.max_prefixlen)
        out.append(ipaddress.ip_network((ip, length), strict=False))
    return tuple(out)


def _parse_cidrs(f: Fields, key: str) -> tuple[str, ...]:
    return tuple(str(n) for n in parse_cidr_ranges(f.list(key)))


def _parse_filter_chain_match(raw: Any, path: str) -> FilterChainMatchConfig:
    errors = ErrorCollector()
    m = FILTER_CHAIN_MATCH.read(raw, path, errors_to=errors)
    port = errors.run(m.int, "destination_port", 0, min=1, max=65535)
    ranges = {k: errors.run(_parse_cidrs, m, k) for k in (
        "prefix_ranges", "direct_source_prefix_ranges", "source_prefix_ranges")}
    names = errors.run(m.strs, "server_names")
    if names is not MISSING:
        for i, name in enumerate(names):
            if "*" in name and not name.startswith("*."):
                errors.add(ConfigError(index(m.at("server_names"), i),
                                       'partial wildcards are not supported in "server_names"'))
        names = tuple(n.lower() for n in names)
    transport = errors.run(m.str, "transport_protocol", "")
    alpns = errors.run(m.strs, "application_protocols")
    source_type = errors.run(m.enum, "source_type", ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"), "ANY")
    ports = []
    for item, ppath in m.list("source_ports"):
        p = errors.run(lambda item=item, ppath=ppath: _source_port(item, ppath))
        if p is not MISSING:
            ports.append(p)
    errors.raise_if_any()
    return FilterChainMatchConfig(
        destination_port=port or 0, prefix_ranges=ranges["prefix_ranges"], server_names=names,
        transport_protocol=transport, application_protocols=alpns,
        direct_source_prefix_ranges=ranges["direct_source_prefix_ranges"],
        source_type=source_type, source_prefix_ranges=ranges["source_prefix_ranges"],
        source_ports=tuple(ports))


def _source_port(item: Any, path: str) -> int:
    """One source port: an integer 0..65535 (proto3 JSON may quote it)."""
    if isinstance(item, str) and item.strip().isdigit():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, int):
        raise ConfigError(path, f"expected an integer, got {item!r}")
    if not 0 <= item <= 65535:
        raise ConfigError(path, f"must be <= 65535, got {item}")
    return item


def _parse_filter_chain(item: Any, path: str) -> FilterChainConfig:
    if isinstance(item, Mapping) and item.get("tls_context") is not None:
        raise ConfigError(join(path, "tls_context"), "tls_context is a v2 field; v3 uses "
                                                     "transport_socket")
    c = FILTER_CHAIN.read(item, path)
    match = EMPTY_MATCH
    if c.has("filter_chain_match"):
        match = _parse_filter_chain_match(c.value("filter_chain_match"), c.at("filter_chain_match"))
    c.raw_obj("metadata")
    filters: list[NetworkFilterConfig] = []
    terminal_at: str | None = None
    errors = ErrorCollector()
    for fitem, fpath in c.list("filters"):
        if terminal_at is not None:
            errors.add(ConfigError(fpath, f"the terminal filter at {terminal_at} must be the last filter"))
            continue
        if isinstance(fitem, Mapping) and isinstance(fitem.get("name"), str) and (
                fitem["name"] in TERMINAL_NETWORK_FILTERS):
            terminal_at = fpath  # even if its config is wrong: what follows it is misplaced
        resolved = errors.run(resolve, "network_filter", fitem, fpath)
        if resolved is MISSING:
            continue
        ext, cfg = resolved
        fname = fitem.get("name") or ext.name
        if ext.name in TERMINAL_NETWORK_FILTERS:
            terminal_at = fpath
        filters.append(NetworkFilterConfig(fname, cfg, ext))
    if terminal_at is None and not errors.errors:
        errors.add(ConfigError(c.at("filters"), "the last network filter must be a terminal filter "
                                                f"({', '.join(sorted(TERMINAL_NETWORK_FILTERS))})"))
    timeout = errors.run(c.duration, "transport_socket_connect_timeout", 0.0)
    transport = RAW_BUFFER
    if timeout is not MISSING:
        transport = errors.run(parse_transport_socket, c.value("transport_socket"), c.at("transport_socket"),
                               DOWNSTREAM, connect_timeout=timeout)
    errors.raise_if_any()
    return FilterChainConfig(filters=tuple(filters), name=c.str("name", ""), filter_chain_match=match,
                             transport_socket=transport)
