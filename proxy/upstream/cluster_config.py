"""Cluster config: Envoy v3 `config.cluster.v3.Cluster` -> frozen `ClusterConfig`.

Job: validate one cluster (static file, or a CDS resource later) and return an immutable model.
Every error names the full JSON path (`static_resources.clusters[0].lb_policy: ...`). Every
field of the Cluster and its sub-messages is declared once in the tables below (used, inert
with the reason, or refused with "<path>: not supported yet (<why>)"); fields Envoy does not
have get the reader's "unknown field" error with a did-you-mean hint. Independent mistakes of
one cluster are reported together.

Must not: do I/O (no DNS here: STATIC addresses must already be IP literals, DNS names are
resolved by `cluster_manager` on the main thread), keep state, or import other proxy layers
than `proxy.config` (reader, fields_table). Pure; callable from any thread.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.config.config_source import ConfigSourceConfig, parse_config_source
from proxy.config.fields_table import Message, inert, not_supported, refused, used
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields
from proxy.http.codec.keepalive_config import KeepaliveSettings, parse_keepalive
from proxy.network.transport_socket import RAW_BUFFER, UPSTREAM, parse_transport_socket

from .outlier_config import OutlierDetectionConfig, parse_outlier_detection
from .health_check_config import (EndpointHealthCheck, HealthCheckConfig, parse_endpoint_health_check,
                                  parse_health_checks)

log = logging.getLogger("proxy.upstream.cluster_config")

__all__ = [
    "ClusterConfig", "EndpointConfig", "Thresholds", "parse_cluster", "parse_clusters",
    "HTTP_PROTOCOL_OPTIONS", "Http2Options", "EdsClusterConfig", "parse_load_assignment",
    "AssignmentPolicy",
]

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_PROTOCOL_OPTIONS_URL = "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS

# Envoy enum orders matter: proto enums may be written by number (reader maps index -> name).
_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST")
_SUPPORTED_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST")
# The load balancer of an ORIGINAL_DST cluster is the cluster's own; neither name is valid on
# another type (Envoy's rule).
_ORIGINAL_DST_LB = ("CLUSTER_PROVIDED", "ORIGINAL_DST_LB")
DEFAULT_ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"
DEFAULT_CLEANUP_INTERVAL = 5.0
_LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RING_HASH", "RANDOM", "ORIGINAL_DST_LB",
                "MAGLEV", "CLUSTER_PROVIDED", "LOAD_BALANCING_POLICY_CONFIG")
_SUPPORTED_LB = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
_DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
_PRIORITIES = ("DEFAULT", "HIGH")
_HEALTH = ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_DNS_REFRESH_RATE = 5.0
# Envoy's default; bounds the memory one upstream connection may buffer before read-disable.
DEFAULT_BUFFER_LIMIT = 1024 * 1024
# Envoy's default upstream idle_timeout (1 h): an idle pooled connection is closed after it.
DEFAULT_IDLE_TIMEOUT = 3600.0
# The highest LocalityLbEndpoints.priority (Envoy's proto constraint: lte 128).
MAX_PRIORITY = 128


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One configured endpoint. `address` is an IP literal (STATIC) or a DNS name."""

    address: str
    port: int
    weight: int = 1
    hostname: str = ""
    health_status: str = "UNKNOWN"   # the load balancer skips UNHEALTHY, DRAINING, TIMEOUT (host.lb_hosts)
    # health_check_config: where active health checks go (None: the endpoint itself).
    health_check: EndpointHealthCheck | None = None
    # Its LocalityLbEndpoints' priority, locality (region, zone, sub_zone) and
    # load_balancing_weight (0 when unset, as Envoy reads it: such a locality gets no share
    # under locality_weighted_lb_config).
    priority: int = 0
    locality: tuple[str, str, str] = ("", "", "")
    locality_weight: int = 0


@dataclass(frozen=True, slots=True)
class AssignmentPolicy:
    """ClusterLoadAssignment.Policy: the overprovisioning factor (percent; Envoy's default 140,
    i.e. 1.4) and whether a priority's health counts host weights (weighted_priority_health)."""

    overprovisioning_factor: int = 140
    weighted_priority_health: bool = False


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Circuit-breaker limits for one routing priority (DEFAULT or HIGH; Envoy's defaults)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False
    # retry_budget: (budget_percent, min_retry_concurrency) when it sets either; it then
    # replaces max_retries (Envoy's RetryBudgetImpl).
    retry_budget: tuple[float, int] | None = None


@dataclass(frozen=True, slots=True)
class Http2Options:
    """An upstream Http2ProtocolOptions (Envoy's defaults): the cluster speaks HTTP/2 (h2c,
    prior knowledge) to its hosts. Read by http/codec/http2_client.py."""

    # The most streams one connection carries at once (also capped by the peer's SETTINGS).
    max_concurrent_streams: int = 2147483647
    # Our receive windows (Envoy's 256 MiB defaults): what a host may send ahead of the
    # consumer, per stream and per connection.
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    # connection_keepalive (http/codec/h2_keepalive.py), or None.
    connection_keepalive: KeepaliveSettings | None = None
    # SETTINGS_ENABLE_CONNECT_PROTOCOL=1 in our SETTINGS (RFC 8441), as Envoy sends it. An
    # upgrade goes as extended CONNECT with or without it (Envoy 1.40, probed).
    allow_connect: bool = False


@dataclass(frozen=True, slots=True)
class EdsClusterConfig:
    """`Cluster.EdsClusterConfig`: the source of the cluster's endpoints and the name of its
    ClusterLoadAssignment (`service_name`, else the cluster's name)."""
    eds_config: ConfigSourceConfig
    service_name: str


@dataclass(frozen=True, slots=True)
class OriginalDstConfig:
    """An ORIGINAL_DST cluster's `original_dst_lb_config` and `cleanup_interval`
    (upstream/original_dst.py picks and forgets its hosts)."""
    use_http_header: bool = False
    http_header_name: str = DEFAULT_ORIGINAL_DST_HEADER   # lower-case; ":authority" allowed
    upstream_port_override: int | None = None
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """upstream/hashing_lb.py's parameters (Envoy's defaults)."""
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8 * 1024 * 1024
    table_size: int = 65537
    use_hostname_for_hashing: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    type: str = "STATIC"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    lb_policy: str = "ROUND_ROBIN"
    endpoints: tuple[EndpointConfig, ...] = ()
    dns_refresh_rate: float = DEFAULT_DNS_REFRESH_RATE
    dns_lookup_family: str = "AUTO"
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    circuit_breakers: Thresholds = Thresholds()
    high_priority_circuit_breakers: Thresholds = Thresholds()
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT   # 0.0 = disabled (Envoy semantics)
    max_requests_per_connection: int | None = None
    # http_protocol_options.enable_trailers: HTTP/1.1 trailers sent and received upstream
    # (without it Envoy's codec drops them both ways).
    http1_enable_trailers: bool = False
    # typed_extension_protocol_options "envoy.filters.network.redis_proxy": the AUTH a Redis
    # proxy's upstream connection sends first, (username or None, password); None: no AUTH.
    redis_auth: tuple[bytes | None, bytes] | None = None
    least_request_choice_count: int = 2
    # least_request_lb_config.active_request_bias: a weighted LEAST_REQUEST host's weight is
    # divided by (active requests + 1) ** bias (Envoy's default 1.0).
    least_request_active_request_bias: float = 1.0
    # common_lb_config.locality_weighted_lb_config: pick a locality by its weight and
    # availability, then a host in it (priority_lb.py).
    locality_weighted_lb: bool = False
    # load_assignment.policy (an EDS cluster's comes with each assignment instead).
    assignment_policy: AssignmentPolicy = AssignmentPolicy()
    # RING_HASH / MAGLEV settings (ring_hash_lb_config, maglev_lb_config and
    # common_lb_config.consistent_hashing_lb_config), or None for the other policies.
    hashing: HashingConfig | None = None
    # common_lb_config.healthy_panic_threshold (percent): below this share of healthy (or
    # degraded) hosts the load balancer uses every host (host.lb_hosts). 0 disables panic.
    healthy_panic_threshold: float = 50.0
    # Active health checks (health_check_config.py; run by health_checker.py on main).
    health_checks: tuple[HealthCheckConfig, ...] = ()
    # Passive health checking (outlier_config.py; decided on main by outlier_detector.py).
    outlier_detection: OutlierDetectionConfig | None = None
    # How the upstream protocol is chosen (worker_cluster.upstream_protocol). Neither flag:
    # fixed by config, HTTP/2 when `http2` is set (explicit_http_config.http2_protocol_options
    # or the legacy http2_protocol_options), else HTTP/1.1.
    # auto_config: by ALPN over TLS on each connection (h2, else HTTP/1.1).
    auto_config: bool = False
    # use_downstream_protocol_config: each request's downstream protocol (HTTP/2 or HTTP/1.1).
    use_downstream_protocol: bool = False
    # The options of its HTTP/2 connections: set when the cluster may speak HTTP/2 upstream
    # (fixed HTTP/2, or auto_config / use_downstream_protocol_config, with their
    # http2_protocol_options or Envoy's defaults); None: HTTP/1.1 only.
    http2: Http2Options | None = None
    # The factory of its upstream connections' transport sockets (raw_buffer or TLS), built
    # at load on the main thread and shared by every worker. Compared by identity: a reload
    # builds a new one, and its pools start afresh.
    transport_socket: Any = field(default=RAW_BUFFER, compare=False)
    # type EDS: where its ClusterLoadAssignment comes from (eds_cluster_config).
    eds: EdsClusterConfig | None = None
    # type ORIGINAL_DST: how each request's host is found (original_dst_lb_config).
    original_dst: OriginalDstConfig | None = None
    # The original config object, for /config_dump. Never mutate it.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


# -- declared fields (proxy.config.fields_table) -----------------------------------------

_NO_DNS_CONFIG = "the system resolver (getaddrinfo) is used"

CLUSTER = Message("envoy.config.cluster.v3.Cluster", title="Clusters", fields=(
    used("name"),
    used("type", "STATIC", why="STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST"),
    used("connect_timeout", "5s"),
    used("lb_policy", "ROUND_ROBIN", why="ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV; "
         "CLUSTER_PROVIDED or ORIGINAL_DST_LB for ORIGINAL_DST"),
    used("load_assignment", attr="endpoints"),
    used("hosts", attr="endpoints", why="legacy form of load_assignment"),
    used("dns_refresh_rate", "5s"),
    used("dns_lookup_family", "AUTO"),
    refused("respect_dns_ttl", "getaddrinfo reports no TTL; refresh follows dns_refresh_rate",
            default=False, only_default=True),
    used("circuit_breakers", attr="circuit_breakers"),
    used("per_connection_buffer_limit_bytes", 1024 * 1024),
    used("common_lb_config", attr="healthy_panic_threshold",
         why="also locality_weighted_lb_config and consistent_hashing_lb_config"),
    used("least_request_lb_config", attr="least_request_choice_count"),
    used("typed_extension_protocol_options", attr="idle_timeout",
         why="envoy.extensions.upstreams.http.v3.HttpProtocolOptions and the redis_proxy's "
             "RedisProtocolOptions (upstream AUTH)"),
    used("common_http_protocol_options", attr="idle_timeout", why="deprecated spelling"),
    used("http_protocol_options", attr="", why="deprecated spelling; its own table"),
    used("max_requests_per_connection", attr="max_requests_per_connection", why="deprecated spelling"),
    inert("metadata", "no filter or subset load balancer here reads cluster metadata"),
    used("transport_socket", why="raw_buffer or envoy.transport_sockets.tls (UpstreamTlsContext)"),
    refused("transport_socket_matches", "one transport_socket per cluster"),
    used("health_checks", why="HTTP and TCP checkers: health_check_config.py"),
    used("outlier_detection", why="passive health checking: outlier_config.py, outlier_detector.py"),
    used("http2_protocol_options", attr="http2", why="deprecated spelling; its own table"),
    used("eds_cluster_config", attr="eds", why="type EDS: its own table"),
    refused("cluster_type", "custom cluster types"),
    refused("alt_stat_name"),
    refused("upstream_http_protocol_options"),
    refused("dns_failure_refresh_rate"),
    refused("dns_resolvers", _NO_DNS_CONFIG),
    refused("use_tcp_for_dns_lookups", _NO_DNS_CONFIG),
    refused("dns_resolution_config", _NO_DNS_CONFIG),
    refused("typed_dns_resolver_config", _NO_DNS_CONFIG),
    refused("dns_jitter"),
    refused("wait_for_warm_on_init"),
    used("cleanup_interval", "5s", attr="original_dst", why="ORIGINAL_DST: how long an unused host is kept"),
    refused("upstream_bind_config"),
    refused("lb_subset_config"),
    used("ring_hash_lb_config", attr="hashing", why="its own table"),
    used("maglev_lb_config", attr="hashing", why="its own table"),
    used("original_dst_lb_config", attr="original_dst", why="its own table"),
    refused("round_robin_lb_config"),
    refused("protocol_selection"),
    refused("upstream_connection_options"),
    refused("close_connections_on_host_health_failure"),
    refused("ignore_health_on_host_removal"),
    refused("filters", "upstream network filters"),
    refused("load_balancing_policy", "use lb_policy"),
    refused("lrs_server"),
    refused("lrs_report_endpoint_metrics"),
    refused("track_timeout_budgets"),
    refused("upstream_config"),
    refused("track_cluster_stats"),
    refused("preconnect_policy"),
    refused("connection_pool_per_downstream_connection"),
), model=ClusterConfig, bookkeeping=("raw",))

EDS_CLUSTER_CONFIG = Message("envoy.config.cluster.v3.Cluster.EdsClusterConfig",
                             model=EdsClusterConfig, fields=(
    used("eds_config", why="a file source (proxy/xds/file_source.py); a control plane is refused"),
    used("service_name", why="the ClusterLoadAssignment's cluster_name (default: the cluster's name)"),
))

ORIGINAL_DST_LB_CONFIG = Message("envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
                                 model=OriginalDstConfig, fields=(
    used("use_http_header", False),
    used("http_header_name", DEFAULT_ORIGINAL_DST_HEADER),
    used("upstream_port_override"),
    refused("metadata_key", "the destination from dynamic metadata"),
), bookkeeping=("cleanup_interval",))
LOAD_ASSIGNMENT = Message("envoy.config.endpoint.v3.ClusterLoadAssignment", fields=(
    used("cluster_name", attr="", why="EDS: must be the cluster's service_name (or name); a "
                                       "static cluster's endpoints are its own"),
    used("endpoints", attr="endpoints"),
    used("policy", attr="assignment_policy", why="its own table"),
    refused("named_endpoints"),
))

LB_POLICY = Message("envoy.config.endpoint.v3.ClusterLoadAssignment.Policy", fields=(
    refused("drop_overloads", "a drop_overloads category drops that share of every request"),
    used("overprovisioning_factor", 140, attr="assignment_policy",
         why="a priority's and a locality's health are scaled by it (priority_load.py)"),
    refused("endpoint_stale_after", "EDS"),
    used("weighted_priority_health", False, attr="assignment_policy"),
))

LOCALITY_ENDPOINTS = Message("envoy.config.endpoint.v3.LocalityLbEndpoints", fields=(
    used("locality", attr="endpoints", why="locality-weighted balancing and /clusters; its own table"),
    used("lb_endpoints", attr="endpoints"),
    used("load_balancing_weight", attr="endpoints",
         why="as in Envoy, it acts only with common_lb_config.locality_weighted_lb_config"),
    used("priority", 0, attr="endpoints", why="priority levels (priority_load.py)"),
    inert("metadata", "no filter or subset load balancer here reads it"),
    refused("proximity"),
    refused("leds_cluster_locality_config"),
))

ENDPOINT_LOCALITY = Message("envoy.config.core.v3.Locality (endpoint)", fields=(
    used("region", attr="endpoints"),
    used("zone", attr="endpoints"),
    used("sub_zone", attr="endpoints"),
))

LB_ENDPOINT = Message("envoy.config.endpoint.v3.LbEndpoint", model=None, fields=(
    used("endpoint", attr="address"),
    used("health_status", "UNKNOWN"),
    used("load_balancing_weight", 1, attr="weight"),
    inert("metadata", "no filter or subset load balancer here reads it"),
    refused("endpoint_name"),
))

ENDPOINT = Message("envoy.config.endpoint.v3.Endpoint", fields=(
    used("address"),
    used("hostname"),
    used("health_check_config", attr="health_check", why="its own table"),
    refused("additional_addresses"),
))

UPSTREAM_ADDRESS = Message("envoy.config.core.v3.Address (upstream)", fields=(
    used("socket_address", attr="address"),
    refused("pipe", "upstream hosts are TCP"),
    refused("envoy_internal_address", "upstream hosts are TCP"),
))

UPSTREAM_SOCKET_ADDRESS = Message("envoy.config.core.v3.SocketAddress (upstream)", fields=(
    used("address"),
    used("port_value", attr="port"),
    refused("protocol", "upstream hosts are TCP", default="TCP", only_default=True),
    refused("named_port"),
    refused("resolver_name", _NO_DNS_CONFIG),
    inert("ipv4_compat", "only binding a listen socket reads it", default=False),
    refused("network_namespace_filepath"),
))

CIRCUIT_BREAKERS = Message("envoy.config.cluster.v3.CircuitBreakers", fields=(
    used("thresholds", attr="circuit_breakers"),
    refused("per_host_thresholds"),
))

THRESHOLDS = Message("envoy.config.cluster.v3.CircuitBreakers.Thresholds", model=None, fields=(
    used("priority", "DEFAULT", attr="high_priority_circuit_breakers"),
    used("max_connections", 1024),
    used("max_pending_requests", 1024),
    used("max_requests", 1024),
    used("max_retries", 3),
    used("track_remaining", False),
    used("retry_budget", why="its own table"),
    refused("max_connection_pools"),
))
PERCENT_VALUE = Message("envoy.type.v3.Percent (retry_budget)", fields=(
    used("value", 20.0, attr="retry_budget"),
))
RETRY_BUDGET = Message("envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
                       model=None, fields=(
    used("budget_percent", 20.0, attr="retry_budget"),
    used("min_retry_concurrency", 3, attr="retry_budget"),
))

COMMON_LB = Message("envoy.config.cluster.v3.Cluster.CommonLbConfig", fields=(
    used("healthy_panic_threshold", 50.0, why="its own table"),
    inert("zone_aware_lb_config", "zone-aware routing needs cluster_manager.local_cluster_name, "
                                  "which is refused: Envoy does not apply it either"),
    used("locality_weighted_lb_config", attr="locality_weighted_lb", why="an empty message"),
    inert("update_merge_window", "host updates are applied at once; the window only batches them",
          default="1s"),
    refused("ignore_new_hosts_until_first_hc", "hosts added later are not held back until their first check",
            default=False, only_default=True),
    refused("close_connections_on_host_set_change", default=False, only_default=True),
    used("consistent_hashing_lb_config", attr="hashing", why="its own table"),
    refused("override_host_status"),
))

PERCENT = Message("envoy.type.v3.Percent (healthy_panic_threshold)", fields=(
    used("value", 50.0, attr="healthy_panic_threshold"),
))

RING_HASH = Message("envoy.config.cluster.v3.Cluster.RingHashLbConfig", fields=(
    used("minimum_ring_size", 1024, attr="hashing"),
    used("maximum_ring_size", 8388608, attr="hashing"),
    refused("hash_function", "MURMUR_HASH_2 (XX_HASH, the default, is the hash here)",
            default="XX_HASH", only_default=True),
))
MAGLEV = Message("envoy.config.cluster.v3.Cluster.MaglevLbConfig", fields=(
    used("table_size", 65537, attr="hashing", why="a prime"),
))
CONSISTENT_HASHING = Message("envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig",
                             fields=(
    used("use_hostname_for_hashing", False, attr="hashing"),
    refused("hash_balance_factor", "bounded-load hashing"),
    refused("hash_policy", "use the route's hash_policy"),
))

LEAST_REQUEST = Message("envoy.config.cluster.v3.Cluster.LeastRequestLbConfig", fields=(
    used("choice_count", 2, attr="least_request_choice_count"),
    used("active_request_bias", 1.0, attr="least_request_active_request_bias",
         why="a RuntimeDouble: its default_value"),
    refused("slow_start_config"),
    refused("locality_lb_config"),
    refused("enable_full_scan"),
    refused("selection_method"),
))

LOCALITY_WEIGHTED = Message("envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
                            fields=())

RUNTIME_DOUBLE = Message("envoy.config.core.v3.RuntimeDouble (active_request_bias)", fields=(
    used("default_value", 1.0, attr="least_request_active_request_bias"),
    inert("runtime_key", "no runtime layer overrides it here"),
))

REDIS_PROTOCOL_OPTIONS_KEY = "envoy.filters.network.redis_proxy"
_REDIS_PROTOCOL_OPTIONS_URL = ("type.googleapis.com/"
                               "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions")

REDIS_PROTOCOL_OPTIONS = Message("envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions", fields=(
    used("auth_password", attr="redis_auth"),
    used("auth_username", attr="redis_auth"),
    refused("aws_iam", "AWS IAM authentication"),
    refused("credentials", "per-endpoint credentials"),
))

REDIS_AUTH_SOURCE = Message("envoy.config.core.v3.DataSource (redis upstream auth)", fields=(
    used("filename", attr="", why="read at load"),
    used("inline_bytes", attr="", why="read at load"),
    used("inline_string", attr="", why="read at load"),
    used("environment_variable", attr="", why="read at load"),
    refused("watched_directory"),
))


def _redis_auth(f: Fields) -> tuple[bytes | None, bytes] | None:
    """The cluster's Redis upstream AUTH (what a redis_proxy sends on each new connection)."""
    from proxy.config.data_source import read_data_source
    typed = f.raw_obj("typed_extension_protocol_options") or {}
    if REDIS_PROTOCOL_OPTIONS_KEY not in typed:
        return None
    p = f"{f.at('typed_extension_protocol_options')}.{REDIS_PROTOCOL_OPTIONS_KEY}"
    o = REDIS_PROTOCOL_OPTIONS.read(typed[REDIS_PROTOCOL_OPTIONS_KEY], p, extra=("@type",))
    url = o.str("@type")
    if url is not None and url != _REDIS_PROTOCOL_OPTIONS_URL:
        raise ConfigError(o.at("@type"), f'expected "{_REDIS_PROTOCOL_OPTIONS_URL}", got "{url}"')
    password = (read_data_source(REDIS_AUTH_SOURCE, o.value("auth_password"), o.at("auth_password"))
                if o.has("auth_password") else b"")
    username = (read_data_source(REDIS_AUTH_SOURCE, o.value("auth_username"), o.at("auth_username"))
                if o.has("auth_username") else b"")
    if not password and not username:
        return None
    return (username or None, password)


UPSTREAM_HTTP_OPTIONS = Message("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", fields=(
    used("common_http_protocol_options", attr="idle_timeout"),
    used("explicit_http_config", attr="", why="http_protocol_options (HTTP/1.1) or "
                                              "http2_protocol_options (h2c, prior knowledge)"),
    used("use_downstream_protocol_config", attr="use_downstream_protocol",
         why="each request goes up in its downstream protocol; its own table"),
    used("auto_config", attr="auto_config", why="HTTP/2 or HTTP/1.1 by ALPN over TLS; its own table"),
    refused("upstream_http_protocol_options"),
    refused("http_filters", "upstream HTTP filters"),
    refused("header_validation_config"),
    refused("outlier_detection"),
))

EXPLICIT_HTTP = Message("envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
                        fields=(
    used("http_protocol_options", attr="", why="HTTP/1.1, its own table"),
    used("http2_protocol_options", attr="http2", why="HTTP/2 (h2c, prior knowledge), its own table"),
    refused("http3_protocol_options", "HTTP/3 upstreams"),
))

AUTO_HTTP = Message("envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig",
                    fields=(
    used("http_protocol_options", attr="", why="HTTP/1.1, its own table"),
    used("http2_protocol_options", attr="http2", why="its own table"),
    refused("http3_protocol_options", "HTTP/3 upstreams"),
    refused("alternate_protocols_cache_options", "HTTP/3 upstreams (Alt-Svc)"),
))

USE_DOWNSTREAM_HTTP = Message(
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig", fields=(
        used("http_protocol_options", attr="", why="HTTP/1.1, its own table"),
        used("http2_protocol_options", attr="http2", why="its own table"),
        refused("http3_protocol_options", "HTTP/3 upstreams"),
    ))

_SERVER_SIDE = "read only by a server (downstream) codec"
UPSTREAM_HTTP1 = Message("envoy.config.core.v3.Http1ProtocolOptions (upstream)", fields=(
    inert("allow_absolute_url", _SERVER_SIDE, default=True),
    inert("accept_http_10", _SERVER_SIDE, default=False),
    inert("default_host_for_http_10", _SERVER_SIDE),
    inert("override_stream_error_on_invalid_http_message", _SERVER_SIDE),
    inert("use_balsa_parser", "chooses between Envoy's own parsers; ftproxy has its own"),
    refused("header_key_format"),
    used("enable_trailers", False, attr="http1_enable_trailers"),
    refused("allow_chunked_length", default=False, only_default=True),
    refused("send_fully_qualified_url", default=False, only_default=True),
    refused("allow_custom_methods", default=False, only_default=True),
    refused("ignore_http_11_upgrade"),
))

_FLOOD = "flood limits of Envoy's HTTP/2 codec; h2 has its own"
UPSTREAM_HTTP2 = Message("envoy.config.core.v3.Http2ProtocolOptions (upstream)", model=Http2Options,
                         fields=(
    used("max_concurrent_streams", 2147483647),
    used("initial_stream_window_size", 268435456),
    used("initial_connection_window_size", 268435456),
    inert("use_oghttp2_codec", "chooses between Envoy's HTTP/2 codec libraries; ftproxy uses h2"),
    refused("hpack_table_size", default=4096, only_default=True),
    used("allow_connect", False, why="SETTINGS_ENABLE_CONNECT_PROTOCOL=1 sent to the host; "
         "an upgrade goes to an HTTP/2 host as extended CONNECT with or without it, as in Envoy"),
    refused("allow_metadata", default=False, only_default=True),
    refused("max_metadata_size"),
    refused("max_outbound_frames", _FLOOD),
    refused("max_outbound_control_frames", _FLOOD),
    refused("max_consecutive_inbound_frames_with_empty_payload", _FLOOD),
    refused("max_inbound_priority_frames_per_stream", _FLOOD),
    refused("max_inbound_window_update_frames_per_data_frame_sent", _FLOOD),
    refused("stream_error_on_invalid_http_messaging", default=False, only_default=True),
    refused("override_stream_error_on_invalid_http_message"),
    refused("custom_settings_parameters"),
    used("connection_keepalive", why="its own table"),
))

UPSTREAM_COMMON_HTTP = Message("envoy.config.core.v3.HttpProtocolOptions (upstream)", fields=(
    used("idle_timeout", "3600s"),
    used("max_requests_per_connection"),
    refused("max_connection_duration"),
    refused("max_headers_count"),
    refused("max_response_headers_kb"),
    refused("max_stream_duration"),
    refused("headers_with_underscores_action"),
))


def parse_clusters(items: Any, path: str) -> tuple[ClusterConfig, ...]:
    """A list of clusters at `path` (e.g. "static_resources.clusters"); names must be unique."""
    if items is None:
        return ()
    if not isinstance(items, list):
        items = [items]  # one cluster where the list is: a list of it, as Envoy reads it
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
    """Validate one Cluster object at `path`; raises ConfigError naming the offending field
    (ConfigErrors when several independent parts of the cluster are wrong)."""
    errors = ErrorCollector()
    f = CLUSTER.read(raw, path, errors_to=errors)
    transport = errors.run(parse_transport_socket, f.value("transport_socket"), f.at("transport_socket"),
                           UPSTREAM)
    name = errors.run(_name, f)
    ctype = errors.run(_type, f)
    if ctype is MISSING:
        errors.raise_if_any()  # the endpoints cannot be checked without the type
    lb_policy = errors.run(_lb_policy, f, ctype)
    original_dst = errors.run(_original_dst, f, ctype)
    connect_timeout = errors.run(_connect_timeout, f)
    dns_refresh_rate = errors.run(_dns_refresh_rate, f)
    endpoints = errors.run(_endpoints, f, ctype)
    eds = errors.run(_eds_cluster_config, f, ctype, name)
    cbs = errors.run(_circuit_breakers, f)
    options = errors.run(_protocol_options, f)
    choice = errors.run(_http2_choice, f)
    auto, downstream, http2 = (False, False, None) if choice is MISSING else choice
    errors.run(_alpn_needs_tls, f, auto, transport, name)
    dns_family = errors.run(f.enum, "dns_lookup_family", _DNS_FAMILIES, "AUTO")
    buffer_limit = errors.run(f.int, "per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT,
                              min=0, max=2**32 - 1)
    least_request = errors.run(_least_request, f)
    panic = errors.run(_panic_threshold, f)
    locality_weighted = errors.run(_locality_weighted, f)
    policy = errors.run(_static_policy, f)
    health_checks = errors.run(parse_health_checks, f)
    errors.run(_health_checks_need_plaintext, f, health_checks, transport)
    errors.run(_grpc_checks_need_http2, f, health_checks, choice, name)
    hashing = errors.run(_hashing, f, lb_policy)
    outlier = (errors.run(parse_outlier_detection, f.value("outlier_detection"), f.at("outlier_detection"))
               if f.has("outlier_detection") else None)
    errors.run(lambda: CLUSTER.require_default(f, "respect_dns_ttl", f.bool("respect_dns_ttl", False)))
    errors.run(f.raw_obj, "metadata")
    redis_auth = errors.run(_redis_auth, f)
    errors.raise_if_any()
    default_cb, high_cb = cbs
    idle_timeout, max_rpc, http1_trailers = options
    return ClusterConfig(
        name=name,
        type=ctype,
        connect_timeout=connect_timeout,
        lb_policy=lb_policy,
        endpoints=endpoints,
        dns_refresh_rate=dns_refresh_rate,
        dns_lookup_family=dns_family,
        per_connection_buffer_limit_bytes=buffer_limit,
        circuit_breakers=default_cb,
        high_priority_circuit_breakers=high_cb,
        idle_timeout=idle_timeout,
        max_requests_per_connection=max_rpc,
        http1_enable_trailers=http1_trailers,
        redis_auth=redis_auth,
        least_request_choice_count=least_request[0],
        least_request_active_request_bias=least_request[1],
        locality_weighted_lb=locality_weighted,
        assignment_policy=policy,
        hashing=hashing,
        healthy_panic_threshold=panic,
        health_checks=health_checks,
        outlier_detection=outlier,
        transport_socket=transport,
        auto_config=auto,
        use_downstream_protocol=downstream,
        http2=http2,
        eds=eds,
        original_dst=original_dst,
        raw=raw,
    )


def _name(f: Fields) -> str:
    name = f.str("name", required=True)
    if not name:
        raise ConfigError(f.at("name"), "must not be empty")
    return name


def _type(f: Fields) -> str:
    ctype = f.enum("type", _TYPES, "STATIC")
    if ctype not in _SUPPORTED_TYPES:
        raise not_supported(f.at("type"), f"cluster type {ctype}; expected one of "
                                          f"{', '.join(_SUPPORTED_TYPES)}")
    return ctype


def _lb_policy(f: Fields, ctype: str) -> str:
    lb_policy = f.enum("lb_policy", _LB_POLICIES, "ROUND_ROBIN")
    if ctype == "ORIGINAL_DST":
        if lb_policy not in _ORIGINAL_DST_LB:
            raise ConfigError(f.at("lb_policy"), f"lb_policy {lb_policy} is not valid for cluster "
                              "type ORIGINAL_DST: only CLUSTER_PROVIDED or ORIGINAL_DST_LB is")
        return lb_policy
    if lb_policy in _ORIGINAL_DST_LB:
        raise ConfigError(f.at("lb_policy"), f"lb_policy {lb_policy} is only valid for cluster "
                          "type ORIGINAL_DST")
    if lb_policy not in _SUPPORTED_LB:
        raise not_supported(f.at("lb_policy"), f"lb_policy {lb_policy}; expected one of "
                                               f"{', '.join(_SUPPORTED_LB)}")
    return lb_policy


def _original_dst(f: Fields, ctype: str) -> OriginalDstConfig | None:
    """ORIGINAL_DST's settings (original_dst_lb_config, cleanup_interval); either on another
    type is an error, as in Envoy."""
    if ctype != "ORIGINAL_DST":
        for name in ("original_dst_lb_config", "cleanup_interval"):
            if f.has(name):
                raise ConfigError(f.at(name), "only for cluster type ORIGINAL_DST")
        return None
    cleanup = f.duration("cleanup_interval", DEFAULT_CLEANUP_INTERVAL)
    if cleanup <= 0:
        raise ConfigError(f.at("cleanup_interval"), "must be greater than 0s")
    if not f.has("original_dst_lb_config"):
        return OriginalDstConfig(cleanup_interval=cleanup)
    o = ORIGINAL_DST_LB_CONFIG.read(f.value("original_dst_lb_config"), f.at("original_dst_lb_config"))
    name = o.str("http_header_name", "") or DEFAULT_ORIGINAL_DST_HEADER
    port = o.int("upstream_port_override", None, min=0, max=65535)
    return OriginalDstConfig(use_http_header=o.bool("use_http_header", False),
                             http_header_name=name.lower(), upstream_port_override=port,
                             cleanup_interval=cleanup)


def _connect_timeout(f: Fields) -> float:
    connect_timeout = f.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if connect_timeout <= 0:
        raise ConfigError(f.at("connect_timeout"), "must be greater than 0s")
    return connect_timeout


def _dns_refresh_rate(f: Fields) -> float:
    rate = f.duration("dns_refresh_rate", DEFAULT_DNS_REFRESH_RATE)
    if rate < 0.001:
        raise ConfigError(f.at("dns_refresh_rate"), "must be at least 1ms")
    return rate


# -- endpoints ---------------------------------------------------------------------------

def _eds_cluster_config(f: Fields, ctype: str, name: Any) -> EdsClusterConfig | None:
    if ctype != "EDS":
        if f.has("eds_cluster_config"):
            raise ConfigError(f.at("eds_cluster_config"), f"only for type EDS (the cluster is {ctype})")
        return None
    if not f.has("eds_cluster_config"):
        raise ConfigError(f.at("eds_cluster_config"), "an EDS cluster needs eds_cluster_config.eds_config")
    e = EDS_CLUSTER_CONFIG.read(f.value("eds_cluster_config"), f.at("eds_cluster_config"))
    source = parse_config_source(e.value("eds_config", required=True), e.at("eds_config"))
    service = e.str("service_name", "") or (name if isinstance(name, str) else "")
    return EdsClusterConfig(source, service)


def parse_load_assignment(raw: Any, path: str
                          ) -> tuple[str, tuple[EndpointConfig, ...], AssignmentPolicy]:
    """An EDS `ClusterLoadAssignment` at `path` -> (its cluster_name, its endpoints, its
    policy), validated as a static cluster's load_assignment (addresses must be IPs)."""
    la = LOAD_ASSIGNMENT.read(raw, path)
    name = la.str("cluster_name", required=True)
    endpoints = tuple(_assignment_endpoints(la, "STATIC"))
    return name, endpoints, _policy(la.value("policy"), la.at("policy"))


def _static_policy(f: Fields) -> AssignmentPolicy:
    """A static cluster's load_assignment.policy (checked again, with the endpoints, by
    _assignment_endpoints)."""
    la = f.value("load_assignment")
    if not isinstance(la, Mapping) or la.get("policy") is None:
        return AssignmentPolicy()
    try:
        return _policy(la["policy"], f"{f.at('load_assignment')}.policy")
    except ConfigError:
        return AssignmentPolicy()   # (reported once, by _assignment_endpoints)


def _endpoints(f: Fields, ctype: str) -> tuple[EndpointConfig, ...]:
    if f.has("load_assignment") and f.has("hosts"):
        raise ConfigError(f.path, "only one of load_assignment, hosts may be set")
    out: list[EndpointConfig] = []
    if f.has("hosts"):
        for item, p in f.list("hosts"):
            address, port = _address(item, p, ctype)
            out.append(EndpointConfig(address, port))
    if f.has("load_assignment"):
        if ctype == "EDS":
            raise ConfigError(f.at("load_assignment"), "an EDS cluster's endpoints come from its "
                                                       "eds_cluster_config, not load_assignment")
        la = LOAD_ASSIGNMENT.read(f.value("load_assignment"), f.at("load_assignment"))
        la.str("cluster_name")
        out.extend(_assignment_endpoints(la, ctype))
    if ctype == "EDS" and out:
        raise ConfigError(f.at("hosts"), "an EDS cluster's endpoints come from its eds_cluster_config")
    if ctype == "ORIGINAL_DST" and out:
        raise ConfigError(f.at("load_assignment"), "ORIGINAL_DST clusters take their hosts from "
                          "each request; they must have no load assignment")
    if ctype not in ("STATIC", "EDS", "ORIGINAL_DST") and not out:
        raise ConfigError(f.at("load_assignment"), f"{ctype} clusters need at least one endpoint")
    if ctype == "LOGICAL_DNS" and len(out) != 1:
        raise ConfigError(f.at("load_assignment"), "LOGICAL_DNS clusters must have exactly one "
                                                   f"endpoint, got {len(out)}")
    return tuple(out)


def _assignment_endpoints(la: Fields, ctype: str) -> list[EndpointConfig]:
    out = []
    if la.has("policy"):
        _policy(la.value("policy"), la.at("policy"))
    for item, lpath in la.list("endpoints"):
        loc = LOCALITY_ENDPOINTS.read(item, lpath)
        loc.raw_obj("metadata")
        locality = ("", "", "")
        if loc.has("locality"):
            lf = ENDPOINT_LOCALITY.read(loc.value("locality"), loc.at("locality"))
            locality = (lf.str("region", ""), lf.str("zone", ""), lf.str("sub_zone", ""))
        priority = loc.int("priority", 0, min=0, max=MAX_PRIORITY)   # Envoy's bound
        # Envoy: a locality weight is 1..2^32-1 when set; unset reads as 0.
        weight = loc.int("load_balancing_weight", None, min=1, max=2**32 - 1) or 0
        for lb, epath in loc.list("lb_endpoints"):
            ep = _lb_endpoint(LB_ENDPOINT.read(lb, epath), ctype)
            out.append(replace(ep, priority=priority, locality=locality, locality_weight=weight))
    return out


def _policy(raw: Any, path: str) -> AssignmentPolicy:
    """ClusterLoadAssignment.Policy: the overprovisioning factor (Envoy: at least 1) and
    weighted_priority_health; drop_overloads must be empty."""
    if raw is None:
        return AssignmentPolicy()
    p = LB_POLICY.read(raw, path)
    return AssignmentPolicy(p.int("overprovisioning_factor", 140, min=1, max=2**32 - 1),
                            p.bool("weighted_priority_health", False))


def _locality_weighted(f: Fields) -> bool:
    common = f.value("common_lb_config")
    if not isinstance(common, Mapping) or common.get("locality_weighted_lb_config") is None:
        return False
    LOCALITY_WEIGHTED.read(common["locality_weighted_lb_config"],
                           f"{f.at('common_lb_config')}.locality_weighted_lb_config")
    return True


def _lb_endpoint(lb: Fields, ctype: str) -> EndpointConfig:
    lb.raw_obj("metadata")
    health = lb.enum("health_status", _HEALTH, "UNKNOWN")
    weight = lb.int("load_balancing_weight", 1, min=1, max=2**32 - 1)
    ep = ENDPOINT.read(lb.value("endpoint", required=True), lb.at("endpoint"))
    hc = None
    if ep.has("health_check_config"):
        hc = parse_endpoint_health_check(ep.value("health_check_config"), ep.at("health_check_config"))
    address, port = _address(ep.value("address", required=True), ep.at("address"), ctype)
    return EndpointConfig(address, port, weight, ep.str("hostname", ""), health, hc)


def _address(raw: Any, path: str, ctype: str) -> tuple[str, int]:
    a = UPSTREAM_ADDRESS.read(raw, path)
    sa = UPSTREAM_SOCKET_ADDRESS.read(a.value("socket_address", required=True), a.at("socket_address"))
    sa.bool("ipv4_compat", False)
    UPSTREAM_SOCKET_ADDRESS.require_default(sa, "protocol", sa.enum("protocol", ("TCP", "UDP"), "TCP"))
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
    found: dict[str, Thresholds] = {}
    if f.has("circuit_breakers"):
        cb = CIRCUIT_BREAKERS.read(f.value("circuit_breakers"), f.at("circuit_breakers"))
        for item, tpath in cb.list("thresholds"):
            t = THRESHOLDS.read(item, tpath)
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
                retry_budget=_retry_budget(t),
            )
    return found.get("DEFAULT", Thresholds()), found.get("HIGH", Thresholds())


def _retry_budget(t: Fields) -> tuple[float, int] | None:
    """Envoy uses the budget when it sets budget_percent or min_retry_concurrency (an empty
    retry_budget leaves max_retries in force)."""
    if not t.has("retry_budget"):
        return None
    b = RETRY_BUDGET.read(t.value("retry_budget"), t.at("retry_budget"))
    percent = None
    if b.has("budget_percent"):
        p = PERCENT_VALUE.read(b.value("budget_percent"), b.at("budget_percent"))
        percent = p.float("value", 0.0)
        if not 0.0 <= percent <= 100.0:
            raise ConfigError(p.at("value"), f"must be between 0 and 100, got {percent}")
    concurrency = b.int("min_retry_concurrency", None, min=0, max=2**32 - 1)
    if percent is None and concurrency is None:
        return None
    return (20.0 if percent is None else percent, 3 if concurrency is None else concurrency)


# -- protocol options ----------------------------------------------------------------------

def _common_http(f: Fields, key: str) -> tuple[float | None, int | None]:
    if not f.has(key):
        return None, None
    c = UPSTREAM_COMMON_HTTP.read(f.value(key), f.at(key))
    return c.duration("idle_timeout"), c.int("max_requests_per_connection", min=0)


def _http1_options(raw: Any, path: str) -> bool:
    """An upstream Http1ProtocolOptions: every field checked, the unimplemented refused; its
    enable_trailers."""
    h = UPSTREAM_HTTP1.read(raw, path)
    h.bool("allow_absolute_url", True)
    h.bool("accept_http_10", False)
    h.str("default_host_for_http_10", "")
    h.bool("override_stream_error_on_invalid_http_message")
    h.bool("use_balsa_parser")
    for key in ("allow_chunked_length", "send_fully_qualified_url", "allow_custom_methods"):
        UPSTREAM_HTTP1.require_default(h, key, h.bool(key, False))
    return h.bool("enable_trailers", False)


def _http2_options(raw: Any, path: str) -> Http2Options:
    """An upstream Http2ProtocolOptions: the three sizes honoured, the rest refused."""
    h = UPSTREAM_HTTP2.read(raw, path)
    h.bool("use_oghttp2_codec")
    for key, default in (("allow_metadata", False),
                         ("stream_error_on_invalid_http_messaging", False)):
        UPSTREAM_HTTP2.require_default(h, key, h.bool(key, default))
    UPSTREAM_HTTP2.require_default(h, "hpack_table_size", h.int("hpack_table_size", 4096, min=0))
    d = Http2Options()
    # Envoy's validation bounds (protoc-gen-validate rules of Http2ProtocolOptions).
    return Http2Options(
        max_concurrent_streams=h.int("max_concurrent_streams", d.max_concurrent_streams,
                                     min=1, max=2147483647),
        initial_stream_window_size=h.int("initial_stream_window_size",
                                         d.initial_stream_window_size, min=65535, max=2147483647),
        initial_connection_window_size=h.int("initial_connection_window_size",
                                             d.initial_connection_window_size,
                                             min=65535, max=2147483647),
        allow_connect=h.bool("allow_connect", False),
        connection_keepalive=(parse_keepalive(h.value("connection_keepalive"), h.at("connection_keepalive"),
                                              client=True) if h.has("connection_keepalive") else None),
    )


def _http2_choice(f: Fields) -> tuple[bool, bool, Http2Options | None]:
    """How the cluster chooses its upstream protocol: (auto_config, use_downstream_protocol,
    the options of its HTTP/2 connections or None for HTTP/1.1 only). The typed
    explicit_http_config.http2_protocol_options wins over the legacy cluster field, as in
    Envoy; auto_config and use_downstream_protocol_config speak HTTP/2 with their own
    http2_protocol_options, Envoy's defaults when absent (as Envoy's getHttp2Options)."""
    typed = f.raw_obj("typed_extension_protocol_options") or {}
    opts = typed.get(HTTP_PROTOCOL_OPTIONS)
    if isinstance(opts, Mapping):
        base = f"{f.at('typed_extension_protocol_options')}.{HTTP_PROTOCOL_OPTIONS}"
        for key, auto in (("auto_config", True), ("use_downstream_protocol_config", False)):
            sub = opts.get(key)
            if isinstance(sub, Mapping):
                raw_h2 = sub.get("http2_protocol_options")
                h2 = (Http2Options() if raw_h2 is None
                      else _http2_options(raw_h2, f"{base}.{key}.http2_protocol_options"))
                return auto, not auto, h2
        explicit = opts.get("explicit_http_config")
        if isinstance(explicit, Mapping):
            if explicit.get("http2_protocol_options") is not None:
                p = f"{base}.explicit_http_config.http2_protocol_options"
                return False, False, _http2_options(explicit["http2_protocol_options"], p)
            return False, False, None  # explicit HTTP/1.1
    if f.has("http2_protocol_options"):
        return False, False, _http2_options(f.value("http2_protocol_options"),
                                            f.at("http2_protocol_options"))
    return False, False, None


def _alpn_needs_tls(f: Fields, auto: bool, transport: Any, name: Any) -> None:
    """auto_config chooses by ALPN, which only a TLS transport socket negotiates: Envoy refuses
    the cluster otherwise (`envoy --mode validate` says this, then the cluster's dump)."""
    if auto and transport is not MISSING and not getattr(transport, "implements_secure_transport", False):
        raise ConfigError(f"{f.at('typed_extension_protocol_options')}.{HTTP_PROTOCOL_OPTIONS}.auto_config",
                          f"ALPN configured for cluster {name if name is not MISSING else ''} "
                          f"which has a non-ALPN transport socket")


def _protocol_options(f: Fields) -> tuple[float, int | None, bool]:
    """(idle_timeout, max_requests_per_connection, HTTP/1.1 enable_trailers)."""
    idle, max_rpc = _common_http(f, "common_http_protocol_options")
    legacy_max = f.int("max_requests_per_connection", min=0)
    trailers = False
    if f.has("http_protocol_options"):
        trailers = _http1_options(f.value("http_protocol_options"), f.at("http_protocol_options"))
    typed = f.raw_obj("typed_extension_protocol_options") or {}
    for key, value in typed.items():
        p = f"{f.at('typed_extension_protocol_options')}.{key}"
        if key == REDIS_PROTOCOL_OPTIONS_KEY:
            continue   # _redis_auth
        if key != HTTP_PROTOCOL_OPTIONS:
            raise not_supported(p, f'protocol options "{key}"; only "{HTTP_PROTOCOL_OPTIONS}" and '
                                    f'"{REDIS_PROTOCOL_OPTIONS_KEY}"')
        o = UPSTREAM_HTTP_OPTIONS.read(value, p, extra=("@type",))
        url = o.str("@type")
        if url is not None and url != _HTTP_PROTOCOL_OPTIONS_URL:
            raise ConfigError(o.at("@type"), f'expected "{_HTTP_PROTOCOL_OPTIONS_URL}", got "{url}"')
        # Envoy: upstream_protocol_options is a required oneof (validate refuses its absence).
        which = o.oneof("explicit_http_config", "use_downstream_protocol_config", "auto_config",
                        required=True)
        if which == "explicit_http_config":
            explicit = EXPLICIT_HTTP.read(o.value(which), o.at(which))
            explicit.oneof("http_protocol_options", "http2_protocol_options", "http3_protocol_options",
                           required=True)
        else:  # (their http2_protocol_options: _http2_choice)
            explicit = (AUTO_HTTP if which == "auto_config" else USE_DOWNSTREAM_HTTP).read(
                o.value(which), o.at(which))
        if explicit.has("http_protocol_options"):
            trailers = _http1_options(explicit.value("http_protocol_options"),
                                      explicit.at("http_protocol_options"))
        t_idle, t_max = _common_http(o, "common_http_protocol_options")
        idle = t_idle if t_idle is not None else idle
        max_rpc = t_max if t_max is not None else max_rpc
    if max_rpc is None:
        max_rpc = legacy_max
    if max_rpc == 0:
        max_rpc = None   # Envoy: 0 means unlimited
    return (DEFAULT_IDLE_TIMEOUT if idle is None else idle), max_rpc, trailers


def _panic_threshold(f: Fields) -> float:
    """common_lb_config.healthy_panic_threshold.value (a percent, default 50)."""
    if not f.has("common_lb_config"):
        return 50.0
    c = COMMON_LB.read(f.value("common_lb_config"), f.at("common_lb_config"))
    c.raw_obj("zone_aware_lb_config")
    c.duration("update_merge_window")
    COMMON_LB.require_default(c, "ignore_new_hosts_until_first_hc",
                              c.bool("ignore_new_hosts_until_first_hc", False))
    COMMON_LB.require_default(c, "close_connections_on_host_set_change",
                              c.bool("close_connections_on_host_set_change", False))
    if not c.has("healthy_panic_threshold"):
        return 50.0
    p = PERCENT.read(c.value("healthy_panic_threshold"), c.at("healthy_panic_threshold"))
    value = p.float("value", 0.0)  # an empty Percent is 0 (proto3 default)
    if not 0.0 <= value <= 100.0:
        raise ConfigError(p.at("value"), f"must be between 0 and 100, got {value}")
    return value


def _health_checks_need_plaintext(f: Fields, checks: Any, transport: Any) -> None:
    """Health check connections are plaintext TCP here: a TLS cluster's checks are refused."""
    if (checks and checks is not MISSING and transport is not MISSING
            and getattr(transport, "implements_secure_transport", False)):
        raise not_supported(f.at("health_checks"), "health checks of clusters with a TLS transport_socket")


def _grpc_checks_need_http2(f: Fields, checks: Any, choice: Any, name: Any) -> None:
    """Envoy refuses gRPC health checks of a cluster that does not speak HTTP/2."""
    if not checks or checks is MISSING or choice is MISSING:
        return
    if any(c.grpc is not None for c in checks) and choice[2] is None:
        raise ConfigError(f.at("health_checks"), f"{name if name is not MISSING else ''} cluster "
                                                 f"must support HTTP/2 for gRPC healthchecking")
def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _hashing(f: Fields, lb_policy: Any) -> HashingConfig | None:
    """RING_HASH and MAGLEV's settings, with Envoy's checks (a ring's minimum above its
    maximum, a table size that is not prime)."""
    use_hostname = False
    common = f.value("common_lb_config")  # (its own table is read by _panic_threshold)
    if isinstance(common, Mapping) and common.get("consistent_hashing_lb_config") is not None:
        ch = CONSISTENT_HASHING.read(common["consistent_hashing_lb_config"],
                                     f"{f.at('common_lb_config')}.consistent_hashing_lb_config")
        use_hostname = ch.bool("use_hostname_for_hashing", False)
    d = HashingConfig()
    ring_min, ring_max, table = d.minimum_ring_size, d.maximum_ring_size, d.table_size
    if f.has("ring_hash_lb_config"):
        r = RING_HASH.read(f.value("ring_hash_lb_config"), f.at("ring_hash_lb_config"))
        RING_HASH.require_default(r, "hash_function", r.enum("hash_function", ("XX_HASH", "MURMUR_HASH_2"), "XX_HASH"))
        ring_min = r.int("minimum_ring_size", ring_min, min=0, max=8388608)
        ring_max = r.int("maximum_ring_size", ring_max, min=0, max=8388608)
        if ring_min > ring_max:
            raise ConfigError(r.path, f"ring hash: minimum_ring_size ({ring_min}) > maximum_ring_size ({ring_max})")
    if f.has("maglev_lb_config"):
        m = MAGLEV.read(f.value("maglev_lb_config"), f.at("maglev_lb_config"))
        table = m.int("table_size", table, min=1, max=5000011)
        if not _is_prime(table):
            raise ConfigError(m.at("table_size"), "The table size of maglev must be prime number")
    if lb_policy not in ("RING_HASH", "MAGLEV"):
        return None
    return HashingConfig(ring_min, ring_max, table, use_hostname)


def _least_request(f: Fields) -> tuple[int, float]:
    """(choice_count, active_request_bias) of least_request_lb_config."""
    if not f.has("least_request_lb_config"):
        return 2, 1.0
    lr = LEAST_REQUEST.read(f.value("least_request_lb_config"), f.at("least_request_lb_config"))
    count = lr.int("choice_count", 2, min=2)
    bias = 1.0
    if lr.has("active_request_bias"):
        # A RuntimeDouble: no runtime layer here, so its default_value.
        rd = RUNTIME_DOUBLE.read(lr.value("active_request_bias"), lr.at("active_request_bias"))
        rd.str("runtime_key", required=True)
        bias = rd.float("default_value", 0.0)
        if not bias >= 0.0:   # (NaN too) Envoy warns and uses 1.0
            log.warning("upstream: invalid active request bias supplied (runtime key %s), using 1.0",
                        rd.str("runtime_key", ""))
            bias = 1.0
    return count, bias
