"""Cluster config: Envoy v3 `config.cluster.v3.Cluster` -> frozen `ClusterConfig`.

Job: validate one cluster (static file, or a CDS resource later) and return an immutable model.
Every error names the full JSON path (`static_resources.clusters[0].lb_policy: ...`). Fields
Envoy has but we do not implement are refused with "... is not supported"; fields Envoy does
not have get the reader's "unknown field" error with a did-you-mean hint.

Must not: do I/O (no DNS here: STATIC addresses must already be IP literals, DNS names are
resolved by `cluster_manager` on the main thread), keep state, or import other proxy layers
than `proxy.config.reader`. Pure; callable from any thread.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.reader import ConfigError, Fields

__all__ = [
    "ClusterConfig", "EndpointConfig", "Thresholds", "parse_cluster", "parse_clusters",
    "HTTP_PROTOCOL_OPTIONS",
]

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_PROTOCOL_OPTIONS_URL = "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS
_H2_UNSUPPORTED = "HTTP/2 upstreams are not supported yet"

# Envoy enum orders matter: proto enums may be written by number (reader maps index -> name).
_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST")
_SUPPORTED_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
_LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RING_HASH", "RANDOM", "ORIGINAL_DST_LB",
                "MAGLEV", "CLUSTER_PROVIDED", "LOAD_BALANCING_POLICY_CONFIG")
_SUPPORTED_LB = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
_DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
_PRIORITIES = ("DEFAULT", "HIGH")
_HEALTH = ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")

_SUPPORTED_FIELDS = (
    "name", "type", "connect_timeout", "lb_policy", "load_assignment", "hosts",
    "dns_refresh_rate", "dns_lookup_family", "respect_dns_ttl", "circuit_breakers",
    "per_connection_buffer_limit_bytes", "common_lb_config", "least_request_lb_config",
    "typed_extension_protocol_options", "common_http_protocol_options", "http_protocol_options",
    "max_requests_per_connection", "metadata",
)
# Real Envoy Cluster fields we refuse by name (so the user is told "not supported", not "unknown").
_UNSUPPORTED_FIELDS = {
    "transport_socket": "transport_socket is not supported yet (TLS upstreams come later)",
    "transport_socket_matches": "transport_socket_matches is not supported",
    "health_checks": "health_checks is not supported yet",
    "outlier_detection": "outlier_detection is not supported yet",
    "http2_protocol_options": _H2_UNSUPPORTED,
    "eds_cluster_config": "EDS clusters are not supported yet",
    "cluster_type": "custom cluster types (cluster_type) are not supported",
    "alt_stat_name": "alt_stat_name is not supported",
    "upstream_http_protocol_options": "upstream_http_protocol_options is not supported",
    "dns_failure_refresh_rate": "dns_failure_refresh_rate is not supported",
    "dns_resolvers": "dns_resolvers is not supported (the system resolver is used)",
    "use_tcp_for_dns_lookups": "use_tcp_for_dns_lookups is not supported",
    "dns_resolution_config": "dns_resolution_config is not supported",
    "typed_dns_resolver_config": "typed_dns_resolver_config is not supported",
    "dns_jitter": "dns_jitter is not supported",
    "wait_for_warm_on_init": "wait_for_warm_on_init is not supported",
    "cleanup_interval": "cleanup_interval is not supported (ORIGINAL_DST clusters are not supported)",
    "upstream_bind_config": "upstream_bind_config is not supported",
    "lb_subset_config": "lb_subset_config is not supported",
    "ring_hash_lb_config": "ring_hash_lb_config is not supported (RING_HASH is not supported)",
    "maglev_lb_config": "maglev_lb_config is not supported (MAGLEV is not supported)",
    "original_dst_lb_config": "original_dst_lb_config is not supported",
    "round_robin_lb_config": "round_robin_lb_config is not supported",
    "protocol_selection": "protocol_selection is not supported",
    "upstream_connection_options": "upstream_connection_options is not supported",
    "close_connections_on_host_health_failure": "close_connections_on_host_health_failure is not supported",
    "ignore_health_on_host_removal": "ignore_health_on_host_removal is not supported",
    "filters": "upstream network filters are not supported",
    "load_balancing_policy": "load_balancing_policy is not supported (use lb_policy)",
    "lrs_server": "lrs_server is not supported",
    "track_timeout_budgets": "track_timeout_budgets is not supported",
    "upstream_config": "upstream_config is not supported",
    "track_cluster_stats": "track_cluster_stats is not supported",
    "preconnect_policy": "preconnect_policy is not supported",
    "connection_pool_per_downstream_connection": "connection_pool_per_downstream_connection is not supported",
}

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_DNS_REFRESH_RATE = 5.0
# Envoy's default; bounds the memory one upstream connection may buffer before read-disable.
DEFAULT_BUFFER_LIMIT = 1024 * 1024
# Envoy's default upstream idle_timeout (1 h): an idle pooled connection is closed after it.
DEFAULT_IDLE_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One configured endpoint. `address` is an IP literal (STATIC) or a DNS name."""

    address: str
    port: int
    weight: int = 1
    hostname: str = ""
    health_status: str = "UNKNOWN"   # the load balancer skips UNHEALTHY, DRAINING, TIMEOUT (host.lb_hosts)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Circuit-breaker limits for one routing priority (DEFAULT or HIGH; Envoy's defaults)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    type: str = "STATIC"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    lb_policy: str = "ROUND_ROBIN"
    endpoints: tuple[EndpointConfig, ...] = ()
    dns_refresh_rate: float = DEFAULT_DNS_REFRESH_RATE
    dns_lookup_family: str = "AUTO"
    respect_dns_ttl: bool = False      # accepted; getaddrinfo gives no TTL, so not honoured
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    circuit_breakers: Thresholds = Thresholds()
    high_priority_circuit_breakers: Thresholds = Thresholds()
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT   # 0.0 = disabled (Envoy semantics)
    max_requests_per_connection: int | None = None
    least_request_choice_count: int = 2
    # common_lb_config.healthy_panic_threshold (percent): below this share of healthy (or
    # degraded) hosts the load balancer uses every host (host.lb_hosts). 0 disables panic.
    healthy_panic_threshold: float = 50.0
    # The original config object, for /config_dump. Never mutate it.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


def parse_clusters(items: Any, path: str) -> tuple[ClusterConfig, ...]:
    """A list of clusters at `path` (e.g. "static_resources.clusters"); names must be unique."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(path, "expected a list")
    out: list[ClusterConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        cfg = parse_cluster(item, f"{path}[{i}]")
        if cfg.name in seen:
            raise ConfigError(f"{path}[{i}].name", f'duplicate cluster name "{cfg.name}"')
        seen.add(cfg.name)
        out.append(cfg)
    return tuple(out)


def parse_cluster(raw: Mapping, path: str) -> ClusterConfig:
    """Validate one Cluster object at `path`; raises ConfigError naming the offending field."""
    f = Fields(raw, path, (*_SUPPORTED_FIELDS, *_UNSUPPORTED_FIELDS))
    for key, why in _UNSUPPORTED_FIELDS.items():
        if f.has(key):
            if key == "transport_socket" and _is_raw_buffer(f.raw[key]):
                continue  # plaintext is what we do anyway
            raise ConfigError(f.at(key), why)
    name = f.str("name", required=True)
    if not name:
        raise ConfigError(f.at("name"), "must not be empty")
    ctype = f.enum("type", _TYPES, "STATIC")
    if ctype not in _SUPPORTED_TYPES:
        raise ConfigError(f.at("type"), f"cluster type {ctype} is not supported; "
                                        f"expected one of {', '.join(_SUPPORTED_TYPES)}")
    lb_policy = f.enum("lb_policy", _LB_POLICIES, "ROUND_ROBIN")
    if lb_policy not in _SUPPORTED_LB:
        raise ConfigError(f.at("lb_policy"), f"lb_policy {lb_policy} is not supported; "
                                             f"expected one of {', '.join(_SUPPORTED_LB)}")
    connect_timeout = f.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if connect_timeout <= 0:
        raise ConfigError(f.at("connect_timeout"), "must be greater than 0s")
    dns_refresh_rate = f.duration("dns_refresh_rate", DEFAULT_DNS_REFRESH_RATE)
    if dns_refresh_rate < 0.001:
        raise ConfigError(f.at("dns_refresh_rate"), "must be at least 1ms")
    f.raw_obj("metadata")             # accepted, ignored
    f.raw_obj("http_protocol_options")  # legacy Http1ProtocolOptions: accepted
    endpoints = _endpoints(f, ctype)
    default_cb, high_cb = _circuit_breakers(f)
    idle_timeout, max_rpc = _protocol_options(f)
    return ClusterConfig(
        name=name,
        type=ctype,
        connect_timeout=connect_timeout,
        lb_policy=lb_policy,
        endpoints=endpoints,
        dns_refresh_rate=dns_refresh_rate,
        dns_lookup_family=f.enum("dns_lookup_family", _DNS_FAMILIES, "AUTO"),
        respect_dns_ttl=_no_dns_ttl(f),
        per_connection_buffer_limit_bytes=f.int("per_connection_buffer_limit_bytes",
                                                DEFAULT_BUFFER_LIMIT, min=0, max=2**32 - 1),
        circuit_breakers=default_cb,
        high_priority_circuit_breakers=high_cb,
        idle_timeout=idle_timeout,
        max_requests_per_connection=max_rpc,
        least_request_choice_count=_choice_count(f),
        healthy_panic_threshold=_panic_threshold(f),
        raw=raw,
    )


def _is_raw_buffer(ts: Any) -> bool:
    if not isinstance(ts, Mapping) or ts.get("name") != "envoy.transport_sockets.raw_buffer":
        return False
    typed = ts.get("typed_config")
    return not typed or (isinstance(typed, Mapping) and str(typed.get("@type", "")).endswith(
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"))


# -- endpoints ---------------------------------------------------------------------------

def _endpoints(f: Fields, ctype: str) -> tuple[EndpointConfig, ...]:
    if f.has("load_assignment") and f.has("hosts"):
        raise ConfigError(f.path, "only one of load_assignment, hosts may be set")
    out: list[EndpointConfig] = []
    if f.has("hosts"):
        for item, p in f.list("hosts"):
            address, port = _address(item, p, ctype)
            out.append(EndpointConfig(address, port))
    la = f.obj("load_assignment", ("cluster_name", "endpoints", "policy", "named_endpoints"))
    if la is not None:
        if la.has("named_endpoints"):
            raise ConfigError(la.at("named_endpoints"), "named_endpoints is not supported")
        la.str("cluster_name")
        la.raw_obj("policy")  # accepted (overprovisioning_factor, drop_overloads): not acted on
        for loc in la.objs("endpoints", ("locality", "priority", "load_balancing_weight",
                                         "lb_endpoints", "proximity", "metadata",
                                         "leds_cluster_locality_config")):
            for key in ("proximity", "leds_cluster_locality_config"):
                if loc.has(key):
                    raise ConfigError(loc.at(key), f"{key} is not supported")
            loc.raw_obj("locality")
            loc.raw_obj("metadata")
            if loc.int("priority", 0, min=0) != 0:
                raise ConfigError(loc.at("priority"), "only priority 0 is supported")
            loc.int("load_balancing_weight", 1, min=1)  # locality weight: needs locality LB
            for lb in loc.objs("lb_endpoints", ("endpoint", "health_status", "metadata",
                                                "load_balancing_weight", "endpoint_name")):
                out.append(_lb_endpoint(lb, ctype))
    if ctype != "STATIC" and not out:
        raise ConfigError(f.at("load_assignment"), f"{ctype} clusters need at least one endpoint")
    if ctype == "LOGICAL_DNS" and len(out) != 1:
        raise ConfigError(f.at("load_assignment"), "LOGICAL_DNS clusters must have exactly one "
                                                   f"endpoint, got {len(out)}")
    return tuple(out)


def _lb_endpoint(lb: Fields, ctype: str) -> EndpointConfig:
    if lb.has("endpoint_name"):
        raise ConfigError(lb.at("endpoint_name"), "endpoint_name is not supported")
    lb.raw_obj("metadata")
    health = lb.enum("health_status", _HEALTH, "UNKNOWN")
    weight = lb.int("load_balancing_weight", 1, min=1, max=2**32 - 1)
    ep = lb.obj("endpoint", ("address", "hostname", "health_check_config",
                             "additional_addresses"), required=True)
    assert ep is not None
    if ep.has("additional_addresses"):
        raise ConfigError(ep.at("additional_addresses"), "additional_addresses is not supported")
    ep.raw_obj("health_check_config")  # ignored until health checking exists
    address, port = _address(ep.value("address", required=True), ep.at("address"), ctype)
    return EndpointConfig(address, port, weight, ep.str("hostname", ""), health)


def _address(raw: Any, path: str, ctype: str) -> tuple[str, int]:
    a = Fields(raw, path, ("socket_address", "pipe", "envoy_internal_address"))
    for key in ("pipe", "envoy_internal_address"):
        if a.has(key):
            raise ConfigError(a.at(key), f"{key} addresses are not supported for upstream hosts")
    sa = a.obj("socket_address", ("address", "port_value", "protocol", "named_port",
                                  "resolver_name", "ipv4_compat"), required=True)
    assert sa is not None
    for key in ("named_port", "resolver_name"):
        if sa.has(key):
            raise ConfigError(sa.at(key), f"{key} is not supported")
    sa.bool("ipv4_compat", False)
    if sa.enum("protocol", ("TCP", "UDP"), "TCP") != "TCP":
        raise ConfigError(sa.at("protocol"), "only TCP upstreams are supported")
    address = sa.str("address", required=True)
    if not address:
        raise ConfigError(sa.at("address"), "must not be empty")
    port = sa.int("port_value", required=True, min=1, max=65535)
    if ctype == "STATIC":
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ConfigError(sa.at("address"), f'STATIC cluster addresses must be IP addresses, '
                                                f'got "{address}" (use type: STRICT_DNS or '
                                                f'LOGICAL_DNS for host names)') from None
    return address, port


# -- circuit breakers ----------------------------------------------------------------------

def _circuit_breakers(f: Fields) -> tuple[Thresholds, Thresholds]:
    cb = f.obj("circuit_breakers", ("thresholds", "per_host_thresholds"))
    found: dict[str, Thresholds] = {}
    if cb is not None:
        if cb.has("per_host_thresholds"):
            raise ConfigError(cb.at("per_host_thresholds"), "per_host_thresholds is not supported")
        for t in cb.objs("thresholds", ("priority", "max_connections", "max_pending_requests",
                                        "max_requests", "max_retries", "track_remaining",
                                        "retry_budget", "max_connection_pools")):
            for key in ("retry_budget", "max_connection_pools"):
                if t.has(key):
                    raise ConfigError(t.at(key), f"{key} is not supported")
            prio = t.enum("priority", _PRIORITIES, "DEFAULT")
            if prio in found:
                raise ConfigError(t.at("priority"), f"duplicate thresholds for priority {prio}")
            d = Thresholds()
            found[prio] = Thresholds(
                max_connections=t.int("max_connections", d.max_connections, min=0),
                max_pending_requests=t.int("max_pending_requests", d.max_pending_requests, min=0),
                max_requests=t.int("max_requests", d.max_requests, min=0),
                max_retries=t.int("max_retries", d.max_retries, min=0),
                track_remaining=t.bool("track_remaining", False),
            )
    return found.get("DEFAULT", Thresholds()), found.get("HIGH", Thresholds())


# -- protocol options ----------------------------------------------------------------------

_COMMON_HTTP = ("idle_timeout", "max_requests_per_connection", "max_connection_duration",
                "max_headers_count", "max_response_headers_kb", "max_stream_duration",
                "headers_with_underscores_action")


def _common_http(c: Fields | None) -> tuple[float | None, int | None]:
    if c is None:
        return None, None
    for key in _COMMON_HTTP[2:]:
        if c.has(key):
            raise ConfigError(c.at(key), f"{key} is not supported for upstreams yet")
    return c.duration("idle_timeout"), c.int("max_requests_per_connection", min=0)


def _protocol_options(f: Fields) -> tuple[float, int | None]:
    idle, max_rpc = _common_http(f.obj("common_http_protocol_options", _COMMON_HTTP))
    legacy_max = f.int("max_requests_per_connection", min=0)
    typed = f.raw_obj("typed_extension_protocol_options") or {}
    for key, value in typed.items():
        p = f"{f.at('typed_extension_protocol_options')}.{key}"
        if key != HTTP_PROTOCOL_OPTIONS:
            raise ConfigError(p, f'protocol options "{key}" are not supported; only '
                                 f'"{HTTP_PROTOCOL_OPTIONS}"')
        o = Fields(value, p, ("@type", "common_http_protocol_options", "explicit_http_config",
                              "upstream_http_protocol_options", "use_downstream_protocol_config",
                              "auto_config", "http_filters", "header_validation_config"))
        url = o.str("@type")
        if url is not None and url != _HTTP_PROTOCOL_OPTIONS_URL:
            raise ConfigError(o.at("@type"), f'expected "{_HTTP_PROTOCOL_OPTIONS_URL}", got "{url}"')
        for k in ("use_downstream_protocol_config", "auto_config"):
            if o.has(k):
                raise ConfigError(o.at(k), f"{k}: {_H2_UNSUPPORTED}; use explicit_http_config "
                                           "with http_protocol_options")
        for k in ("upstream_http_protocol_options", "http_filters", "header_validation_config"):
            if o.has(k):
                raise ConfigError(o.at(k), f"{k} is not supported")
        explicit = o.obj("explicit_http_config", ("http_protocol_options", "http2_protocol_options",
                                                  "http3_protocol_options"))
        if explicit is not None:
            if explicit.has("http2_protocol_options"):
                raise ConfigError(explicit.at("http2_protocol_options"), _H2_UNSUPPORTED)
            if explicit.has("http3_protocol_options"):
                raise ConfigError(explicit.at("http3_protocol_options"),
                                  "HTTP/3 upstreams are not supported")
            explicit.raw_obj("http_protocol_options")
        t_idle, t_max = _common_http(o.obj("common_http_protocol_options", _COMMON_HTTP))
        idle = t_idle if t_idle is not None else idle
        max_rpc = t_max if t_max is not None else max_rpc
    if max_rpc is None:
        max_rpc = legacy_max
    if max_rpc == 0:
        max_rpc = None   # Envoy: 0 means unlimited
    return (DEFAULT_IDLE_TIMEOUT if idle is None else idle), max_rpc


def _panic_threshold(f: Fields) -> float:
    """common_lb_config.healthy_panic_threshold.value (a percent, default 50); the rest of
    common_lb_config is accepted and ignored."""
    c = f.raw_obj("common_lb_config")
    if c is None or c.get("healthy_panic_threshold") is None:
        return 50.0
    path = f"{f.at('common_lb_config')}.healthy_panic_threshold"
    p = Fields(c["healthy_panic_threshold"], path, ("value",))
    value = p.float("value", 0.0)  # an empty Percent is 0 (proto3 default)
    if not 0.0 <= value <= 100.0:
        raise ConfigError(p.at("value"), f"must be between 0 and 100, got {value}")
    return value


def _choice_count(f: Fields) -> int:
    lr = f.obj("least_request_lb_config", ("choice_count", "active_request_bias", "slow_start_config",
                                           "locality_lb_config", "enable_full_scan",
                                           "selection_method"))
    if lr is None:
        return 2
    for key in ("active_request_bias", "slow_start_config", "locality_lb_config",
                "enable_full_scan", "selection_method"):
        if lr.has(key):
            raise ConfigError(lr.at(key), f"{key} is not supported")
    return lr.int("choice_count", 2, min=2)


def _no_dns_ttl(f: Fields) -> bool:
    if f.bool("respect_dns_ttl", False):
        # getaddrinfo reports no TTL; honouring it needs a DNS client of our own.
        raise ConfigError(f.at("respect_dns_ttl"), "not supported yet (refresh follows dns_refresh_rate)")
    return False
