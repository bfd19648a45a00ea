"""Config model of the HTTP connection manager (`envoy.filters.network.http_connection_manager`).

Job: validate an `http_connection_manager.v3.HttpConnectionManager` typed_config into an
immutable `HcmConfig` (Envoy field names and defaults), resolve its HTTP filters through the
registry, and register the network filter. Fields we do not implement yet are refused with
"not supported yet" naming the path, never silently ignored.

Must not: do I/O, build runtime objects (codecs, streams), or import HTTP filter modules (the
router is recognised by its registered name). Thread affinity: parsed on the main thread;
the resulting `HcmConfig` is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxy.access_log.config import parse_access_logs
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register, resolve
from proxy.router.config import parse_route_configuration

__all__ = ["HcmConfig", "HttpFilterConfig", "Http1Options", "UpgradeConfig", "parse_hcm",
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

_SUPPORTED = (
    "codec_type", "stat_prefix", "route_config", "http_filters", "access_log",
    "use_remote_address", "xff_num_trusted_hops", "skip_xff_append", "generate_request_id",
    "preserve_external_request_id", "always_set_request_id_in_response", "server_name",
    "server_header_transformation", "via", "stream_idle_timeout", "request_timeout",
    "request_headers_timeout", "drain_timeout", "delayed_close_timeout",
    "common_http_protocol_options", "max_request_headers_kb", "upgrade_configs",
    "http_protocol_options", "normalize_path", "merge_slashes", "internal_address_config",
    "add_user_agent", "proxy_100_continue", "strip_matching_host_port", "strip_any_host_port",
    "strip_trailing_host_dot", "path_with_escaped_slashes_action", "forward_client_cert_details",
    "stream_error_on_invalid_http_message", "append_x_forwarded_port",
)
# Real HttpConnectionManager fields we refuse for now (distinct from typos).
_UNSUPPORTED = (
    "rds", "scoped_routes", "tracing", "http2_protocol_options", "http3_protocol_options",
    "http1_safe_max_connection_duration", "scheme_header_transformation",
    "access_log_flush_interval", "flush_access_log_on_new_request", "access_log_options",
    "original_ip_detection_extensions", "early_header_mutation_extensions",
    "set_current_client_cert_details", "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
    "request_id_extension", "local_reply_config", "path_normalization_options",
    "proxy_status_config", "typed_header_validation_config", "append_local_overload",
    "add_proxy_protocol_connection_state",
)
_COMMON_OPTS = ("idle_timeout", "max_connection_duration", "max_headers_count",
                "max_stream_duration", "headers_with_underscores_action",
                "max_requests_per_connection", "max_response_headers_kb")
_H1_SUPPORTED = ("accept_http_10", "default_host_for_http_10", "allow_absolute_url",
                 "enable_trailers", "allow_chunked_length",
                 "override_stream_error_on_invalid_http_message")
_H1_UNSUPPORTED = ("header_key_format", "send_fully_qualified_url", "use_balsa_parser",
                   "allow_custom_methods", "ignore_http_11_upgrade")


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
    allow_absolute_url: bool = True
    enable_trailers: bool = False
    allow_chunked_length: bool = False
    override_stream_error_on_invalid_http_message: bool | None = None


@dataclass(frozen=True, slots=True)
class HcmConfig:
    stat_prefix: str
    route_config: Any                      # proxy.router.config.RouteConfiguration
    http_filters: tuple[HttpFilterConfig, ...]
    codec_type: str = "AUTO"
    access_logs: tuple[Any, ...] = ()
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    server_name: str = "envoy"
    server_header_transformation: str = "OVERWRITE"
    via: str | None = None
    # Timeouts in seconds; 0 disables (Envoy's meaning of a zero duration).
    stream_idle_timeout: float = 300.0     # slow-loris defence per stream
    request_timeout: float = 0.0
    request_headers_timeout: float = 0.0
    drain_timeout: float = 5.0
    delayed_close_timeout: float = 1.0
    idle_timeout: float = 3600.0           # connection with no active streams
    max_connection_duration: float | None = None
    max_stream_duration: float | None = None
    max_headers_count: int = 100           # header-flood defence; over -> 431
    max_requests_per_connection: int | None = None
    headers_with_underscores_action: str = "ALLOW"
    max_request_headers_kb: int = 60       # header-size bound; over -> 431
    upgrade_configs: tuple[UpgradeConfig, ...] = ()
    http_protocol_options: Http1Options = Http1Options()
    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: str = "KEEP_UNCHANGED"
    internal_cidr_ranges: tuple[tuple[str, int], ...] = ()
    internal_unix_sockets: bool = False
    add_user_agent: bool = False
    proxy_100_continue: bool = False
    strip_matching_host_port: bool = False
    strip_any_host_port: bool = False
    strip_trailing_host_dot: bool = False
    forward_client_cert_details: str = "SANITIZE"
    stream_error_on_invalid_http_message: bool = False
    append_x_forwarded_port: bool = False
    raw: Mapping[str, Any] | None = None   # the typed_config body as written (config_dump)


def _refuse_unsupported(f: Fields, keys: tuple[str, ...]) -> None:
    for key in keys:
        if f.has(key):
            raise ConfigError(f.at(key), "not supported yet")


def parse_hcm(raw: Mapping[str, Any], path: str) -> HcmConfig:
    f = Fields(raw, path, _SUPPORTED + _UNSUPPORTED)
    if f.has("rds"):
        raise ConfigError(f.at("rds"), "rds (dynamic route configuration) is not supported yet; "
                                       "use an inline route_config")
    _refuse_unsupported(f, _UNSUPPORTED)
    stat_prefix = f.str("stat_prefix", required=True)
    codec = f.enum("codec_type", _CODECS, "AUTO")
    if codec in ("HTTP2", "HTTP3"):
        raise ConfigError(f.at("codec_type"), f"{codec} is not supported yet (use AUTO or HTTP1)")
    if not f.has("route_config"):
        raise ConfigError(path, "one of route_config or rds is required")
    route_config = parse_route_configuration(f.raw_obj("route_config"), f.at("route_config"))
    kwargs: dict[str, Any] = {}
    _parse_common_options(f, kwargs)
    _parse_internal_address_config(f, kwargs)
    max_kb = f.int("max_request_headers_kb", 60, min=1, max=8192)
    config = HcmConfig(
        stat_prefix=stat_prefix,
        route_config=route_config,
        http_filters=_parse_http_filters(f),
        codec_type=codec,
        access_logs=tuple(parse_access_logs(f.list("access_log"))),
        use_remote_address=f.bool("use_remote_address", False),
        xff_num_trusted_hops=f.int("xff_num_trusted_hops", 0, min=0),
        skip_xff_append=f.bool("skip_xff_append", False),
        generate_request_id=f.bool("generate_request_id", True),
        preserve_external_request_id=f.bool("preserve_external_request_id", False),
        always_set_request_id_in_response=f.bool("always_set_request_id_in_response", False),
        server_name=f.str("server_name", "envoy") or "envoy",
        server_header_transformation=f.enum("server_header_transformation", _SERVER_HEADER, "OVERWRITE"),
        via=f.str("via") or None,
        stream_idle_timeout=f.duration("stream_idle_timeout", 300.0),
        request_timeout=f.duration("request_timeout", 0.0),
        request_headers_timeout=f.duration("request_headers_timeout", 0.0),
        drain_timeout=f.duration("drain_timeout", 5.0),
        delayed_close_timeout=f.duration("delayed_close_timeout", 1.0),
        max_request_headers_kb=max_kb,
        upgrade_configs=_parse_upgrades(f),
        http_protocol_options=_parse_http1(f),
        normalize_path=f.bool("normalize_path", False),
        merge_slashes=f.bool("merge_slashes", False),
        path_with_escaped_slashes_action=_escaped_slashes(f),
        add_user_agent=f.bool("add_user_agent", False),
        proxy_100_continue=f.bool("proxy_100_continue", False),
        strip_matching_host_port=f.bool("strip_matching_host_port", False),
        strip_any_host_port=f.bool("strip_any_host_port", False),
        strip_trailing_host_dot=f.bool("strip_trailing_host_dot", False),
        forward_client_cert_details=f.enum("forward_client_cert_details", _XFCC, "SANITIZE"),
        stream_error_on_invalid_http_message=f.bool("stream_error_on_invalid_http_message", False),
        append_x_forwarded_port=f.bool("append_x_forwarded_port", False),
        raw=raw,
        **kwargs,
    )
    _refuse_unimplemented(config, path)
    return config


# Options parsed (so a config naming them is understood) whose runtime behaviour is not built
# yet: a value other than the default is refused rather than silently ignored.
_NOT_IMPLEMENTED = (
    ("xff_num_trusted_hops", 0),
    ("max_connection_duration", None), ("max_stream_duration", None),
    ("normalize_path", False), ("merge_slashes", False),
    ("path_with_escaped_slashes_action", "KEEP_UNCHANGED"), ("add_user_agent", False),
    ("proxy_100_continue", False), ("strip_matching_host_port", False), ("strip_any_host_port", False),
    ("strip_trailing_host_dot", False), ("forward_client_cert_details", "SANITIZE"),
    ("stream_error_on_invalid_http_message", False), ("append_x_forwarded_port", False),
    ("internal_cidr_ranges", ()), ("internal_unix_sockets", False),
)
_FIELD_PATHS = {
    "max_connection_duration": "common_http_protocol_options.max_connection_duration",
    "max_stream_duration": "common_http_protocol_options.max_stream_duration",
    "headers_with_underscores_action": "common_http_protocol_options.headers_with_underscores_action",
    "internal_cidr_ranges": "internal_address_config.cidr_ranges",
    "internal_unix_sockets": "internal_address_config.unix_sockets",
}


def _refuse_unimplemented(config: HcmConfig, path: str) -> None:
    for name, default in _NOT_IMPLEMENTED:
        if getattr(config, name) != default:
            field = _FIELD_PATHS.get(name, name)
            raise ConfigError(f"{path}.{field}" if path else field,
                              f"not supported yet (only the default, {default!r}, is)")
    h1 = config.http_protocol_options
    for name, default in (("allow_absolute_url", True), ("enable_trailers", False),
                          ("allow_chunked_length", False)):
        if getattr(h1, name) != default:
            raise ConfigError(f"{path}.http_protocol_options.{name}",
                              f"not supported yet (only the default, {default!r}, is)")


def _parse_common_options(f: Fields, out: dict[str, Any]) -> None:
    c = f.obj("common_http_protocol_options", _COMMON_OPTS)
    if c is None:
        return
    if c.has("max_response_headers_kb"):
        raise ConfigError(c.at("max_response_headers_kb"), "not supported yet")
    out["idle_timeout"] = c.duration("idle_timeout", 3600.0)
    out["max_connection_duration"] = c.duration("max_connection_duration") or None
    out["max_stream_duration"] = c.duration("max_stream_duration") or None
    out["max_headers_count"] = c.int("max_headers_count", 100, min=1)
    out["max_requests_per_connection"] = c.int("max_requests_per_connection", min=0) or None
    out["headers_with_underscores_action"] = c.enum("headers_with_underscores_action",
                                                    _UNDERSCORES, "ALLOW")


def _parse_internal_address_config(f: Fields, out: dict[str, Any]) -> None:
    c = f.obj("internal_address_config", ("unix_sockets", "cidr_ranges"))
    if c is None:
        return
    ranges = []
    for r in c.objs("cidr_ranges", ("address_prefix", "prefix_len")):
        ranges.append((r.str("address_prefix", required=True), r.int("prefix_len", 0, min=0, max=128)))
    out["internal_cidr_ranges"] = tuple(ranges)
    out["internal_unix_sockets"] = c.bool("unix_sockets", False)


def _escaped_slashes(f: Fields) -> str:
    v = f.enum("path_with_escaped_slashes_action", _ESCAPED_SLASHES, "KEEP_UNCHANGED")
    return "KEEP_UNCHANGED" if v == "IMPLEMENTATION_SPECIFIC_DEFAULT" else v


def _parse_http1(f: Fields) -> Http1Options:
    h = f.obj("http_protocol_options", _H1_SUPPORTED + _H1_UNSUPPORTED)
    if h is None:
        return Http1Options()
    _refuse_unsupported(h, _H1_UNSUPPORTED)
    return Http1Options(
        accept_http_10=h.bool("accept_http_10", False),
        default_host_for_http_10=h.str("default_host_for_http_10", ""),
        allow_absolute_url=h.bool("allow_absolute_url", True),
        enable_trailers=h.bool("enable_trailers", False),
        allow_chunked_length=h.bool("allow_chunked_length", False),
        override_stream_error_on_invalid_http_message=h.bool("override_stream_error_on_invalid_http_message"),
    )


def _parse_upgrades(f: Fields) -> tuple[UpgradeConfig, ...]:
    out = []
    for u in f.objs("upgrade_configs", ("upgrade_type", "filters", "enabled")):
        if u.list("filters"):
            raise ConfigError(u.at("filters"), "per-upgrade filter chains are not supported yet")
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
