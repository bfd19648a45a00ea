"""Config model of static listeners (`config.listener.v3.Listener`).

Job: validate one listener — address, stat prefix, socket options we honour, and its filter
chains, whose network filters are resolved through the registry — into immutable
`ListenerConfig`. Real Envoy fields we do not implement yet are refused with "not supported
yet" naming the path; misspelt fields are refused as unknown with a suggestion.

Must not: do I/O (no sockets, no DNS: listener addresses must be IP literals), or import
filter modules (terminal filters are recognised by their registered names).
Thread affinity: parsed on the main thread; the result is immutable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxy.access_log.config import parse_access_logs
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import resolve

__all__ = ["ListenerConfig", "FilterChainConfig", "NetworkFilterConfig", "parse_listener",
           "parse_address", "TERMINAL_NETWORK_FILTERS"]

# Network filters that end a chain (Envoy's isTerminalFilter).
TERMINAL_NETWORK_FILTERS = frozenset({
    "envoy.filters.network.http_connection_manager",
    "envoy.filters.network.tcp_proxy",
})

DEFAULT_BUFFER_LIMIT = 1024 * 1024   # Envoy's per-connection soft watermark: 1 MiB

_LISTENER_SUPPORTED = (
    "name", "address", "stat_prefix", "filter_chains", "per_connection_buffer_limit_bytes",
    "enable_reuse_port", "reuse_port", "access_log", "traffic_direction",
    "connection_balance_config", "drain_type", "listener_filters", "listener_filters_timeout",
    "continue_on_listener_filters_timeout", "metadata", "tcp_backlog_size", "bind_to_port",
    "ignore_global_conn_limit", "max_connections_to_accept_per_socket_event",
)
_LISTENER_UNSUPPORTED = (
    "default_filter_chain", "filter_chain_matcher", "additional_addresses", "use_original_dst",
    "socket_options", "transparent", "freebind", "tcp_fast_open_queue_length",
    "udp_listener_config", "api_listener", "internal_listener", "enable_mptcp",
    "bypass_overload_manager", "fcds_config", "deprecated_v1",
)
_CHAIN_SUPPORTED = ("filter_chain_match", "filters", "name", "metadata")
_CHAIN_UNSUPPORTED = ("transport_socket", "transport_socket_connect_timeout",
                      "on_demand_configuration", "use_proxy_proto")
_CHAIN_V2 = ("tls_context",)
_MATCH_FIELDS = ("destination_port", "prefix_ranges", "address_suffix", "suffix_len",
                 "direct_source_prefix_ranges", "source_type", "source_prefix_ranges",
                 "source_ports", "server_names", "transport_protocol", "application_protocols")


class NetworkFilterConfig(NamedTuple):
    """One network filter: its name as written (or the extension's), its parsed config and
    its extension (whose `factory` makes a non-terminal filter run)."""
    name: str
    config: Any      # HcmConfig, TcpProxyConfig, ...
    extension: Any = None


@dataclass(frozen=True, slots=True)
class FilterChainConfig:
    filters: tuple[NetworkFilterConfig, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: str
    port: int                              # 0 = ephemeral; the real port is known after bind
    stat_prefix: str                       # stats root: listener.<stat_prefix>.
    filter_chains: tuple[FilterChainConfig, ...]
    enable_reuse_port: bool = True
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    access_logs: tuple[Any, ...] = ()
    traffic_direction: str = "UNSPECIFIED"
    drain_type: str = "DEFAULT"
    exact_balance: bool = False
    listener_filters_timeout: float = 15.0
    continue_on_listener_filters_timeout: bool = False
    tcp_backlog_size: int | None = None
    raw: Mapping[str, Any] | None = None

    @property
    def access_log(self) -> tuple[Any, ...]:
        """Alias of `access_logs` under Envoy's field name."""
        return self.access_logs


def parse_address(value: Any, path: str) -> tuple[str, int]:
    """`core.v3.Address` holding a TCP `socket_address` with an IP literal -> (ip, port)."""
    a = Fields(value, path, ("socket_address", "pipe", "envoy_internal_address"))
    for key in ("pipe", "envoy_internal_address"):
        if a.has(key):
            raise ConfigError(a.at(key), "not supported yet (only socket_address)")
    s = a.obj("socket_address", ("protocol", "address", "port_value", "named_port",
                                 "resolver_name", "ipv4_compat", "network_namespace_filepath"),
              required=True)
    assert s is not None
    if s.enum("protocol", ("TCP", "UDP"), "TCP") != "TCP":
        raise ConfigError(s.at("protocol"), "UDP is not supported yet")
    for key in ("named_port", "resolver_name", "network_namespace_filepath"):
        if s.has(key):
            raise ConfigError(s.at(key), "not supported yet")
    s.bool("ipv4_compat", False)
    host = s.str("address", required=True)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(s.at("address"), f"{host!r} is not an IP address "
                                           "(listener and admin addresses must be IP literals)") from None
    port = s.int("port_value", 0, min=0, max=65535)
    return str(ip), port


def address_string(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_listener(raw: Any, path: str, index: int = 0) -> ListenerConfig:
    """Validate one listener. `index` names it `listener_<index>` when `name` is absent."""
    f = Fields(raw, path, _LISTENER_SUPPORTED + _LISTENER_UNSUPPORTED)
    for key in _LISTENER_UNSUPPORTED:
        if f.has(key):
            raise ConfigError(f.at(key), "not supported yet")
    if f.list("listener_filters"):
        raise ConfigError(f.at("listener_filters"), "listener filters are not supported yet")
    if f.bool("bind_to_port", True) is False:
        raise ConfigError(f.at("bind_to_port"), "bind_to_port: false is not supported yet")
    name = f.str("name") or f"listener_{index}"
    ip, port = parse_address(f.value("address", required=True), f.at("address"))
    stat_prefix = f.str("stat_prefix") or address_string(ip, port).replace(":", "_")
    reuse = f.bool("enable_reuse_port")
    if reuse is None:
        reuse = f.bool("reuse_port", True)  # deprecated spelling
    return ListenerConfig(
        name=name,
        address=ip,
        port=port,
        stat_prefix=stat_prefix,
        filter_chains=_parse_filter_chains(f),
        enable_reuse_port=reuse,
        per_connection_buffer_limit_bytes=f.int("per_connection_buffer_limit_bytes",
                                                DEFAULT_BUFFER_LIMIT, min=0),
        access_logs=_listener_access_logs(f),
        traffic_direction=f.enum("traffic_direction", ("UNSPECIFIED", "INBOUND", "OUTBOUND"),
                                 "UNSPECIFIED"),
        drain_type=f.enum("drain_type", ("DEFAULT", "MODIFY_ONLY"), "DEFAULT"),
        exact_balance=_parse_balance(f),
        listener_filters_timeout=f.duration("listener_filters_timeout", 15.0),
        continue_on_listener_filters_timeout=f.bool("continue_on_listener_filters_timeout", False),
        tcp_backlog_size=f.int("tcp_backlog_size", min=1),
        raw=raw,
    )


def _parse_balance(f: Fields) -> bool:
    b = f.obj("connection_balance_config", ("exact_balance", "extend_balance"))
    if b is None:
        return False
    if b.has("extend_balance"):
        raise ConfigError(b.at("extend_balance"), "not supported yet")
    b.obj("exact_balance", ())
    return b.has("exact_balance")


def _parse_filter_chains(f: Fields) -> tuple[FilterChainConfig, ...]:
    chains = []
    for i, (item, path) in enumerate(f.list("filter_chains", required=True, min_items=1)):
        if i > 0:
            # Every chain has the (only supported) empty match, so they would all tie.
            raise ConfigError(path, "multiple filter chains with the same matching rules are "
                                    "defined (filter_chain_match is not supported yet)")
        chains.append(_parse_filter_chain(item, path))
    return tuple(chains)


def _parse_filter_chain(item: Any, path: str) -> FilterChainConfig:
    c = Fields(item, path, _CHAIN_SUPPORTED + _CHAIN_UNSUPPORTED + _CHAIN_V2)
    if c.has("tls_context"):
        raise ConfigError(c.at("tls_context"), "tls_context is a v2 field; v3 uses transport_socket "
                                              "(and TLS is not supported yet)")
    for key in _CHAIN_UNSUPPORTED:
        if c.has(key):
            raise ConfigError(c.at(key), "not supported yet")
    m = c.obj("filter_chain_match", _MATCH_FIELDS)
    if m is not None:
        for key in _MATCH_FIELDS:
            if m.has(key) and m.raw[key] not in ([], ""):
                raise ConfigError(m.at(key), "filter_chain_match is not supported yet "
                                             "(only an empty match)")
    filters: list[NetworkFilterConfig] = []
    terminal_at: str | None = None
    for fitem, fpath in c.list("filters"):
        if terminal_at is not None:
            raise ConfigError(fpath, f"the terminal filter at {terminal_at} must be the last filter")
        ext, cfg = resolve("network_filter", fitem, fpath)
        fname = fitem.get("name") or ext.name
        if ext.name in TERMINAL_NETWORK_FILTERS:
            terminal_at = fpath
        filters.append(NetworkFilterConfig(fname, cfg, ext))
    if terminal_at is None:
        raise ConfigError(c.at("filters"), "the last network filter must be a terminal filter "
                                           f"({', '.join(sorted(TERMINAL_NETWORK_FILTERS))})")
    return FilterChainConfig(filters=tuple(filters), name=c.str("name", ""))


def _listener_access_logs(f: Fields) -> tuple[Any, ...]:
    logs = tuple(parse_access_logs(f.list("access_log")))
    if logs:
        # Connection-level (listener) logging has no runtime yet; refusing beats silence.
        raise ConfigError(f.at("access_log"), "listener access logs are not supported yet; use the "
                                              "access_log of the http_connection_manager or tcp_proxy")
    return logs
