"""Config model of the HTTP connection manager (`envoy.filters.network.http_connection_manager`).

Job: validate an `http_connection_manager.v3.HttpConnectionManager` typed_config into an
immutable `HcmConfig` (Envoy field names and defaults), resolve its HTTP filters through the
registry, and register the network filter. Each message's fields are declared once (used,
inert with the reason, or refused: proxy.config.fields_table), so a field we do not implement
is refused by its path, never silently ignored.

Must not: do I/O, build runtime objects (codecs, streams), or import HTTP filter modules (the
router is recognised by its registered name). Thread affinity: parsed on the main thread;
the resulting `HcmConfig` is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxy.access_log.config import parse_access_logs
from proxy.config.config_source import ConfigSourceConfig, parse_config_source
from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.listener import parse_cidr_ranges
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register, resolve
from proxy.router.config import parse_route_configuration
from proxy.tracing.config import parse_tracing

from .codec.keepalive_config import KeepaliveSettings, parse_keepalive
from .local_reply_config import parse_local_reply_config
from .original_ip import InternalAddresses

__all__ = ["RdsConfig", "HcmConfig", "HttpFilterConfig", "Http1Options", "Http2Config", "UpgradeConfig", "parse_hcm",
           "ROUTER_FILTER_NAME", "HCM_FILTER_NAME", "HCM_PROTO"]

HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"
HCM_PROTO = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_FILTER_NAME = "envoy.filters.http.router"

_CODECS = ("AUTO", "HTTP1", "HTTP2", "HTTP3")
_SERVER_HEADER = ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")
_UNDERSCORES = ("ALLOW", "REJECT_REQUEST", "DROP_HEADER")
_ESCAPED_SLASHES = ("IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED", "REJECT_REQUEST",
                    "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD")
_XFCC = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")

class HttpFilterConfig(NamedTuple):
    """One entry of `http_filters`: the name as written (or the extension's), its parsed
    config, its extension (whose `factory` makes it run) and whether it is disabled unless a
    route enables it (typed_per_filter_config with a FilterConfig saying `disabled: false`)."""
    name: str
    config: Any
    extension: Any = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class UpgradeConfig:
    upgrade_type: str        # lower-case, e.g. "websocket"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Http1Options:
    """`http_protocol_options` (core.v3.Http1ProtocolOptions)."""
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    # Trailers of chunked requests reach the filters and the upstream, and response trailers
    # are written, only with enable_trailers (Envoy's HTTP/1.1 codec drops them otherwise).
    enable_trailers: bool = False


@dataclass(frozen=True, slots=True)
class Http2Config:
    """`http2_protocol_options` (core.v3.Http2ProtocolOptions), what the HTTP/2 codec honours;
    Envoy's defaults."""
    max_concurrent_streams: int = 2147483647
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    hpack_table_size: int = 4096
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    connection_keepalive: KeepaliveSettings | None = None
    allow_connect: bool = False   # extended CONNECT (RFC 8441) offered and taken


@dataclass(frozen=True, slots=True)
class RdsConfig:
    """HCM `rds`: the route table comes from `config_source` (a file), named `route_config_name`."""
    config_source: ConfigSourceConfig
    route_config_name: str


@dataclass(frozen=True, slots=True)
class HcmConfig:
    stat_prefix: str
    route_config: Any                      # proxy.router.config.RouteConfiguration
    http_filters: tuple[HttpFilterConfig, ...]
    codec_type: str = "AUTO"
    access_logs: tuple[Any, ...] = ()
    use_remote_address: bool = False
    skip_xff_append: bool = False
    # The original client's address (original_ip.py, request_headers.py): x-forwarded-for
    # entries from the right to trust; the detection extensions (without use_remote_address);
    # the networks whose addresses are internal (x-envoy-internal).
    xff_num_trusted_hops: int = 0
    original_ip_detection: tuple[Any, ...] = ()
    internal_address_config: Any = None    # original_ip.InternalAddresses, or None: no network
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    server_name: str = "envoy"
    server_header_transformation: str = "OVERWRITE"
    via: str | None = None
    # Timeouts in seconds; 0 disables (Envoy's meaning of a zero duration).
    stream_idle_timeout: float = 300.0     # slow-loris defence per stream
    request_timeout: float = 0.0
    max_stream_duration: float = 0.0      # common_http_protocol_options'; routes may override
    add_user_agent: bool = False
    request_headers_timeout: float = 0.0
    drain_timeout: float = 5.0
    delayed_close_timeout: float = 1.0
    idle_timeout: float = 3600.0           # connection with no active streams
    max_headers_count: int = 100           # header-flood defence; over -> 431
    max_requests_per_connection: int | None = None
    headers_with_underscores_action: str = "ALLOW"
    max_request_headers_kb: int = 60       # header-size bound; over -> 431
    upgrade_configs: tuple[UpgradeConfig, ...] = ()
    http_protocol_options: Http1Options = Http1Options()
    http2_protocol_options: Http2Config = Http2Config()
    # x-forwarded-client-cert (request_headers.py): SANITIZE, FORWARD_ONLY, APPEND_FORWARD,
    # SANITIZE_SET or ALWAYS_FORWARD_ONLY; and what APPEND_FORWARD / SANITIZE_SET write of the
    # client certificate, in Envoy's order ("cert", "chain", "subject", "uri", "dns").
    forward_client_cert_details: str = "SANITIZE"
    set_current_client_cert_details: tuple[str, ...] = ()
    # rds: the route table is RDS's (route_config is then an empty table until it arrives).
    rds: RdsConfig | None = None
    tracing: Any = None                    # proxy.tracing.config.TracingConfig, or None
    local_reply: Any = None                # local_reply_config.LocalReplyConfig, or None
    # Path and host normalisation before routing (path_normalize.py compiles them).
    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: str = "KEEP_UNCHANGED"
    strip_matching_host_port: bool = False
    strip_any_host_port: bool = False
    strip_trailing_host_dot: bool = False
    append_x_forwarded_port: bool = False
    raw: Mapping[str, Any] | None = None   # the typed_config body as written (config_dump)


_ONLY_DEFAULT = "only the default: no runtime behaviour yet"

HCM = Message(HCM_PROTO, title="HTTP connection manager", model=HcmConfig, bookkeeping=("raw",),
              fields=(
    used("stat_prefix"),
    used("route_config"),
    used("http_filters"),
    used("codec_type", "AUTO"),
    used("access_log", attr="access_logs"),
    used("use_remote_address", False),
    used("skip_xff_append", False),
    used("generate_request_id", True),
    used("preserve_external_request_id", False),
    used("always_set_request_id_in_response", False),
    used("server_name", "envoy"),
    used("server_header_transformation", "OVERWRITE"),
    used("via"),
    used("stream_idle_timeout", "300s"),
    used("request_timeout", "0s"),
    used("request_headers_timeout", "0s"),
    inert("drain_timeout", "the grace between Envoy's two HTTP/2 GOAWAY frames; ftproxy sends one, "
                           "naming the last stream taken (a stream opened after it gets "
                           "REFUSED_STREAM, which clients retry); HTTP/1.1 has none",
          default="5s", attr="drain_timeout"),
    used("delayed_close_timeout", "1s"),
    used("common_http_protocol_options", attr="", why="its own table"),
    used("max_request_headers_kb", 60),
    used("upgrade_configs"),
    used("http_protocol_options"),
    used("http2_protocol_options"),
    used("internal_address_config", why="its own table: the networks of internal requests"),
    used("xff_num_trusted_hops", 0),
    used("normalize_path", False),
    used("merge_slashes", False),
    used("path_with_escaped_slashes_action", "IMPLEMENTATION_SPECIFIC_DEFAULT",
         why="its default is Envoy 1.40's, KEEP_UNCHANGED"),
    used("add_user_agent", False, why="user-agent and x-envoy-downstream-service-* from the node"),
    refused("proxy_100_continue", "the proxy answers expect: 100-continue itself",
            default=False, only_default=True),
    used("strip_matching_host_port", False),
    used("strip_any_host_port", False),
    used("strip_trailing_host_dot", False),
    used("forward_client_cert_details", "SANITIZE"),
    used("set_current_client_cert_details"),
    used("tracing"),
    used("local_reply_config", attr="local_reply", why="its own table"),
    refused("stream_error_on_invalid_http_message", _ONLY_DEFAULT, default=False, only_default=True),
    used("append_x_forwarded_port", False),
    inert("path_normalization_options", "Envoy 1.40 validates it and does nothing with it "
          "(hidden in its API, not implemented)"),
    used("original_ip_detection_extensions", attr="original_ip_detection",
         why="xff and custom_header (original_ip.py); not with use_remote_address or "
             "xff_num_trusted_hops, as Envoy"),
    used("rds", why="from a file (path_config_source): its own table; a control plane is refused"),
    *(refused(name) for name in (
        "scoped_routes", "http3_protocol_options",
        "http1_safe_max_connection_duration", "scheme_header_transformation",
        "access_log_flush_interval", "flush_access_log_on_new_request", "access_log_options",
        "early_header_mutation_extensions",
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        "request_id_extension",
        "proxy_status_config", "typed_header_validation_config", "append_local_overload",
        "add_proxy_protocol_connection_state")),
))

COMMON_HTTP = Message("envoy.config.core.v3.HttpProtocolOptions (downstream)", fields=(
    used("idle_timeout", "3600s"),
    used("max_headers_count", 100),
    used("max_requests_per_connection"),
    used("headers_with_underscores_action", "ALLOW"),
    refused("max_connection_duration", _ONLY_DEFAULT, only_default=True),
    used("max_stream_duration", why="routes' max_stream_duration replaces it"),
    refused("max_response_headers_kb"),
))

HTTP1 = Message("envoy.config.core.v3.Http1ProtocolOptions (downstream)", model=Http1Options, fields=(
    used("accept_http_10", False),
    used("default_host_for_http_10", ""),
    refused("allow_absolute_url", "only true: absolute-form targets are accepted", default=True,
            only_default=True),
    used("enable_trailers", False),
    refused("allow_chunked_length", "only false", default=False, only_default=True),
    refused("override_stream_error_on_invalid_http_message", "only false: an invalid request "
            "closes the connection", default=False, only_default=True),
    refused("header_key_format"),
    refused("send_fully_qualified_url"),
    refused("use_balsa_parser"),
    refused("allow_custom_methods"),
    refused("ignore_http_11_upgrade"),
))

_H2_WINDOW = dict(min=65535, max=2147483647)

HTTP2 = Message("envoy.config.core.v3.Http2ProtocolOptions (downstream)", model=Http2Config, fields=(
    used("max_concurrent_streams", 2147483647),
    used("initial_stream_window_size", 268435456),
    used("initial_connection_window_size", 268435456),
    used("allow_connect", False, why="extended CONNECT (RFC 8441, WebSocket over HTTP/2: an HTTP/1.1 "
         "upgrade for the router); plain CONNECT is taken either way, as in Envoy"),
    refused("allow_metadata", "METADATA frames", default=False, only_default=True),
    refused("stream_error_on_invalid_http_messaging", "only false: an invalid request is a "
            "connection error (GOAWAY)", default=False, only_default=True),
    refused("override_stream_error_on_invalid_http_message", "only false: an invalid request "
            "is a connection error (GOAWAY)", default=False, only_default=True),
    used("max_outbound_frames", 10000),
    used("max_outbound_control_frames", 1000),
    used("max_consecutive_inbound_frames_with_empty_payload", 1),
    used("max_inbound_priority_frames_per_stream", 100),
    used("max_inbound_window_update_frames_per_data_frame_sent", 10),
    used("hpack_table_size", 4096),
    refused("custom_settings_parameters"),
    used("connection_keepalive", why="its own table"),
    refused("use_oghttp2_codec"),
    refused("max_metadata_size"),
    refused("enable_huffman_encoding"),
))

CLIENT_CERT_DETAILS = Message("envoy.extensions.filters.network.http_connection_manager.v3"
                              ".HttpConnectionManager.SetCurrentClientCertDetails",
                              fields=tuple(used(name, False, attr="set_current_client_cert_details")
                                           for name in ("subject", "cert", "chain", "dns", "uri")))

UPGRADE = Message("envoy.extensions.filters.network.http_connection_manager.v3"
                  ".HttpConnectionManager.UpgradeConfig", model=UpgradeConfig, fields=(
    used("upgrade_type"),
    used("enabled", True),
    refused("filters", "per-upgrade filter chains"),
))


def parse_hcm(raw: Mapping[str, Any], path: str) -> HcmConfig:
    f = HCM.read(raw, path)
    stat_prefix = f.str("stat_prefix", required=True)
    if not stat_prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty (as Envoy's min_len 1)")
    codec = f.enum("codec_type", _CODECS, "AUTO")
    if codec == "HTTP3":
        raise ConfigError(f.at("codec_type"), "HTTP3 is not supported yet (use AUTO, HTTP1 or HTTP2)")
    which = f.oneof("route_config", "rds", "scoped_routes")
    if which is None:
        raise ConfigError(path, "one of route_config or rds is required")
    rds = _parse_rds(f) if which == "rds" else None
    route_config = parse_route_configuration(f.raw_obj("route_config") or {}, f.at("route_config"))
    kwargs: dict[str, Any] = {}
    _parse_common_options(f, kwargs)
    _parse_normalization(f, kwargs)
    _refuse_non_defaults(f)
    max_kb = f.int("max_request_headers_kb", 60, min=1, max=8192)
    return HcmConfig(
        stat_prefix=stat_prefix,
        route_config=route_config,
        http_filters=_parse_http_filters(f),
        codec_type=codec,
        access_logs=tuple(parse_access_logs(f.list("access_log"))),
        use_remote_address=f.bool("use_remote_address", False),
        skip_xff_append=f.bool("skip_xff_append", False),
        xff_num_trusted_hops=f.int("xff_num_trusted_hops", 0, min=0, max=2**32 - 1),
        original_ip_detection=_parse_ip_detection(f),
        internal_address_config=_parse_internal_addresses(f),
        generate_request_id=f.bool("generate_request_id", True),
        preserve_external_request_id=f.bool("preserve_external_request_id", False),
        always_set_request_id_in_response=f.bool("always_set_request_id_in_response", False),
        server_name=f.str("server_name", "envoy") or "envoy",
        server_header_transformation=f.enum("server_header_transformation", _SERVER_HEADER, "OVERWRITE"),
        via=f.str("via") or None,
        stream_idle_timeout=f.duration("stream_idle_timeout", 300.0),
        request_timeout=f.duration("request_timeout", 0.0),
        add_user_agent=f.bool("add_user_agent", False),
        request_headers_timeout=f.duration("request_headers_timeout", 0.0),
        drain_timeout=f.duration("drain_timeout", 5.0),
        delayed_close_timeout=f.duration("delayed_close_timeout", 1.0),
        max_request_headers_kb=max_kb,
        upgrade_configs=_parse_upgrades(f),
        http_protocol_options=_parse_http1(f),
        http2_protocol_options=_parse_http2(f),
        forward_client_cert_details=f.enum("forward_client_cert_details", _XFCC, "SANITIZE"),
        set_current_client_cert_details=_parse_client_cert_details(f),
        rds=rds,
        tracing=parse_tracing(f.raw_obj("tracing"), f.at("tracing")) if f.has("tracing") else None,
        local_reply=(parse_local_reply_config(f.value("local_reply_config"), f.at("local_reply_config"))
                     if f.has("local_reply_config") else None),
        raw=raw,
        **kwargs,
    )


RDS = Message("envoy.extensions.filters.network.http_connection_manager.v3.Rds", model=RdsConfig,
              fields=(
    used("config_source", why="a file source (ConfigSource); a control plane is refused"),
    used("route_config_name", why="the RouteConfiguration's name the file must hold"),
))


def _parse_rds(f: Fields) -> RdsConfig:
    r = RDS.read(f.value("rds"), f.at("rds"))
    source = parse_config_source(r.value("config_source", required=True), r.at("config_source"))
    name = r.str("route_config_name", required=True)
    if not name:
        raise ConfigError(r.at("route_config_name"), "must not be empty")
    return RdsConfig(source, name)


def _refuse_non_defaults(f: Fields) -> None:
    """Fields understood but without runtime behaviour yet: only their default is accepted."""
    for name in ("proxy_100_continue", "stream_error_on_invalid_http_message"):
        HCM.require_default(f, name, f.bool(name, False))


INTERNAL_ADDRESS = Message("envoy.extensions.filters.network.http_connection_manager.v3"
                           ".HttpConnectionManager.InternalAddressConfig",
                           model=InternalAddresses, fields=(
    used("cidr_ranges"),
    inert("unix_sockets", "a peer on a Unix socket is internal; ftproxy's listeners are IP "
                          "sockets only (pipe is refused)", default=False),
))


def _parse_internal_addresses(f: Fields) -> InternalAddresses | None:
    """internal_address_config: None when it lists no network (Envoy 1.40: then no address
    is internal)."""
    if f.value("internal_address_config") is None:
        return None
    i = INTERNAL_ADDRESS.read(f.value("internal_address_config"), f.at("internal_address_config"))
    ranges = parse_cidr_ranges(i.list("cidr_ranges"))
    i.bool("unix_sockets", False)  # type-checked
    return InternalAddresses(ranges) if ranges else None


def _parse_ip_detection(f: Fields) -> tuple[Any, ...]:
    """original_ip_detection_extensions, each resolved by its registered proto; Envoy refuses
    them beside use_remote_address or xff_num_trusted_hops."""
    items = f.list("original_ip_detection_extensions")
    if not items:
        return ()
    at = f.at("original_ip_detection_extensions")
    if f.bool("use_remote_address", False):
        raise ConfigError(at, "Original IP detection extensions and use_remote_address may not "
                              "be mixed (as Envoy)")
    if f.int("xff_num_trusted_hops", 0, min=0):
        raise ConfigError(at, "Original IP detection extensions and xff_num_trusted_hops may not "
                              "be mixed (as Envoy)")
    return tuple(resolve("original_ip_detection", item, path)[1] for item, path in items)


def _parse_normalization(f: Fields, out: dict[str, Any]) -> None:
    """Path and host normalisation (path_normalize.py has what each does)."""
    for name in ("normalize_path", "merge_slashes", "strip_matching_host_port",
                 "strip_any_host_port", "strip_trailing_host_dot", "append_x_forwarded_port"):
        out[name] = f.bool(name, False)
    if out["strip_matching_host_port"] and out["strip_any_host_port"]:
        raise ConfigError(f.at("strip_any_host_port"), "only one of strip_matching_host_port "
                          "or strip_any_host_port can be set (as Envoy says)")
    slashes = f.enum("path_with_escaped_slashes_action", _ESCAPED_SLASHES, "KEEP_UNCHANGED")
    out["path_with_escaped_slashes_action"] = (
        "KEEP_UNCHANGED" if slashes == "IMPLEMENTATION_SPECIFIC_DEFAULT" else slashes)
    if f.has("path_normalization_options"):
        _check_path_normalization_options(f.value("path_normalization_options"),
                                          f.at("path_normalization_options"))


def _check_path_normalization_options(raw: Any, path: str) -> None:
    """Validated as Envoy validates it (each operation names one transformation), then
    ignored as Envoy ignores it."""
    opts = Fields(raw, path, ("forwarding_transformation", "http_filter_transformation"))
    for which in ("forwarding_transformation", "http_filter_transformation"):
        if not opts.has(which):
            continue
        t = Fields(opts.value(which), opts.at(which), ("operations",))
        for item, op_path in t.list("operations"):
            op = Fields(item, op_path, ("normalize_path_rfc_3986", "merge_slashes"))
            name = op.oneof("normalize_path_rfc_3986", "merge_slashes", required=True)
            Fields(op.value(name), op.at(name), ())  # both are empty messages


def _parse_client_cert_details(f: Fields) -> tuple[str, ...]:
    """What APPEND_FORWARD / SANITIZE_SET add to x-forwarded-client-cert, in the order Envoy
    writes them (Cert, Chain, Subject, URI, DNS after By and Hash), whatever the YAML's order."""
    if f.value("set_current_client_cert_details") is None:
        return ()
    d = CLIENT_CERT_DETAILS.read(f.value("set_current_client_cert_details"),
                                 f.at("set_current_client_cert_details"))
    return tuple(name for name in ("cert", "chain", "subject", "uri", "dns") if d.bool(name, False))


def _parse_common_options(f: Fields, out: dict[str, Any]) -> None:
    if f.value("common_http_protocol_options") is None:
        return
    c = COMMON_HTTP.read(f.value("common_http_protocol_options"), f.at("common_http_protocol_options"))
    out["idle_timeout"] = c.duration("idle_timeout", 3600.0)
    COMMON_HTTP.require_default(c, "max_connection_duration", c.duration("max_connection_duration") or None)
    out["max_stream_duration"] = c.duration("max_stream_duration", 0.0)
    out["max_headers_count"] = c.int("max_headers_count", 100, min=1)
    out["max_requests_per_connection"] = c.int("max_requests_per_connection", min=0) or None
    out["headers_with_underscores_action"] = c.enum("headers_with_underscores_action",
                                                    _UNDERSCORES, "ALLOW")


def _parse_http1(f: Fields) -> Http1Options:
    if f.value("http_protocol_options") is None:
        return Http1Options()
    h = HTTP1.read(f.value("http_protocol_options"), f.at("http_protocol_options"))
    HTTP1.require_default(h, "allow_absolute_url", h.bool("allow_absolute_url", True))
    for name in ("allow_chunked_length", "override_stream_error_on_invalid_http_message"):
        HTTP1.require_default(h, name, h.bool(name, False))
    return Http1Options(
        accept_http_10=h.bool("accept_http_10", False),
        default_host_for_http_10=h.str("default_host_for_http_10", ""),
        enable_trailers=h.bool("enable_trailers", False),
    )


def _parse_http2(f: Fields) -> Http2Config:
    if f.value("http2_protocol_options") is None:
        return Http2Config()
    h = HTTP2.read(f.value("http2_protocol_options"), f.at("http2_protocol_options"))
    for name in ("allow_metadata", "stream_error_on_invalid_http_messaging"):
        HTTP2.require_default(h, name, h.bool(name, False))
    if h.has("override_stream_error_on_invalid_http_message"):
        HTTP2.require_default(h, "override_stream_error_on_invalid_http_message",
                              h.bool("override_stream_error_on_invalid_http_message", False))
    return Http2Config(
        allow_connect=h.bool("allow_connect", False),
        max_concurrent_streams=h.int("max_concurrent_streams", 2147483647, min=1, max=2147483647),
        initial_stream_window_size=h.int("initial_stream_window_size", 268435456, **_H2_WINDOW),
        initial_connection_window_size=h.int("initial_connection_window_size", 268435456,
                                             **_H2_WINDOW),
        hpack_table_size=h.int("hpack_table_size", 4096, min=0, max=2**32 - 1),
        max_outbound_frames=h.int("max_outbound_frames", 10000, min=1, max=2**32 - 1),
        max_outbound_control_frames=h.int("max_outbound_control_frames", 1000, min=1, max=2**32 - 1),
        max_consecutive_inbound_frames_with_empty_payload=h.int(
            "max_consecutive_inbound_frames_with_empty_payload", 1, min=0, max=2**32 - 1),
        max_inbound_priority_frames_per_stream=h.int("max_inbound_priority_frames_per_stream", 100,
                                                     min=0, max=2**32 - 1),
        max_inbound_window_update_frames_per_data_frame_sent=h.int(
            "max_inbound_window_update_frames_per_data_frame_sent", 10, min=1, max=2**32 - 1),
        connection_keepalive=(parse_keepalive(h.value("connection_keepalive"), h.at("connection_keepalive"),
                                              client=False) if h.has("connection_keepalive") else None),
    )


def _parse_upgrades(f: Fields) -> tuple[UpgradeConfig, ...]:
    out = []
    for item, upath in f.list("upgrade_configs"):
        u = UPGRADE.read(item, upath)
        kind = u.str("upgrade_type", required=True)
        if not kind:
            raise ConfigError(u.at("upgrade_type"), "must not be empty")
        out.append(UpgradeConfig(kind.lower(), u.bool("enabled", True)))
    return tuple(out)


def _parse_http_filters(f: Fields) -> tuple[HttpFilterConfig, ...]:
    items = f.list("http_filters")
    if not items:
        # Envoy adds the router when no HTTP filter is configured.
        ext, cfg = resolve("http_filter", {"name": ROUTER_FILTER_NAME}, f.at("http_filters"))
        return (HttpFilterConfig(ext.name, cfg, ext),)
    out: list[HttpFilterConfig] = []
    router_at: str | None = None
    for item, path in items:
        entry = _parse_http_filter(item, path)
        if entry is None:
            continue
        ext_name, flt = entry
        if router_at is not None:
            raise ConfigError(path, f"the router filter ({router_at}) must be the last HTTP filter")
        if ext_name == ROUTER_FILTER_NAME:
            router_at = path
        out.append(flt)
    if router_at is None:
        raise ConfigError(f.at("http_filters"),
                          f"the last HTTP filter must be the router ({ROUTER_FILTER_NAME})")
    return tuple(out)


def _parse_http_filter(item: Any, path: str) -> tuple[str, HttpFilterConfig] | None:
    """(extension name, entry), or None for a filter that is disabled or optional-and-unknown."""
    if isinstance(item, Mapping) and item.get("typed_config") == {}:
        # `typed_config: {}` is how examples spell "default config" for name-only filters.
        item = {k: v for k, v in item.items() if k != "typed_config"}
    opts = Fields(item, path, ("name", "typed_config", "disabled", "is_optional", "config_discovery"))
    if opts.has("config_discovery"):
        raise ConfigError(opts.at("config_discovery"), "not supported yet")
    try:
        ext, cfg = resolve("http_filter", item, path, extra_fields=("disabled", "is_optional"))
    except ConfigError as e:
        unknown = e.message.startswith("unsupported") and e.path in (
            opts.at("name"), f'{opts.at("typed_config")}["@type"]')
        if unknown and opts.bool("is_optional", False):
            return None  # Envoy skips optional filters it does not know
        raise
    disabled = opts.bool("disabled", False)
    if disabled and ext.name == ROUTER_FILTER_NAME:
        raise ConfigError(opts.at("disabled"), "the router filter cannot be disabled")
    return ext.name, HttpFilterConfig(opts.str("name") or ext.name, cfg, ext, disabled)


register(Extension(
    category="network_filter",
    name=HCM_FILTER_NAME,
    proto=HCM_PROTO,
    parse=parse_hcm,
))
