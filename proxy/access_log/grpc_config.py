"""Config of Envoy's gRPC access loggers, `envoy.access_loggers.http_grpc` and
`envoy.access_loggers.tcp_grpc` (`envoy.extensions.access_loggers.grpc.v3.
HttpGrpcAccessLogConfig` / `TcpGrpcAccessLogConfig` and their `CommonGrpcAccessLogConfig`),
parsed into frozen objects and registered in `proxy.config.registry` (category
"access_logger").

`GrpcLogStreamConfig` is what one stream to the AccessLogService is made of (log name, the
envoy_grpc cluster, authority and metadata, the buffering): loggers with equal ones share the
stream, as Envoy's logger cache keys its loggers by the common config and the logger type.
`GrpcAccessLogConfig.create(grpc_logs=...)` binds a logger to the server's
grpc_log.GrpcAccessLogService (the runtime, proxy/access_log/grpc_log.py).

Thread affinity: parsing runs on the main thread; the objects are immutable and shared.
Must not: open connections (only the service does, on the main thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.grpc_metadata import parse_initial_metadata
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register

__all__ = ["GrpcLogStreamConfig", "GrpcAccessLogConfig", "HTTP_GRPC_LOGGER", "TCP_GRPC_LOGGER",
           "DEFAULT_FLUSH_INTERVAL", "DEFAULT_BUFFER_SIZE_BYTES"]

HTTP_GRPC_LOGGER = "envoy.access_loggers.http_grpc"
TCP_GRPC_LOGGER = "envoy.access_loggers.tcp_grpc"
HTTP_PROTO = "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP_PROTO = "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
DEFAULT_FLUSH_INTERVAL = 1.0        # seconds: Envoy's buffer_flush_interval default
DEFAULT_BUFFER_SIZE_BYTES = 16384   # Envoy's buffer_size_bytes default


@dataclass(frozen=True, slots=True)
class GrpcLogStreamConfig:
    """One AccessLogService stream's parameters (hashable: the service's key)."""

    kind: str                        # "http" or "tcp" (Envoy's GrpcAccessLoggerType)
    log_name: str
    cluster_name: str
    authority: str = ""
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES


@dataclass(frozen=True, slots=True)
class GrpcAccessLogConfig:
    """A parsed gRPC access logger (HTTP or TCP)."""

    logger: str
    stream: GrpcLogStreamConfig
    request_headers: tuple[str, ...] = ()
    response_headers: tuple[str, ...] = ()
    response_trailers: tuple[str, ...] = ()
    log_filter: Any = None

    def create(self, sinks: Any = None, grpc_logs: Any = None):
        """A logger bound to the server's GrpcAccessLogService (`grpc_logs`)."""
        if grpc_logs is None:
            raise RuntimeError(f"{self.logger}: a gRPC access logger needs the server's "
                               "GrpcAccessLogService")
        return grpc_logs.logger(self)


# -- declared fields -----------------------------------------------------------------------------
HTTP_GRPC = Message(HTTP_PROTO, title="HTTP gRPC access log", model=GrpcAccessLogConfig,
                    bookkeeping=("logger",), fields=(
    used("common_config", attr="stream"),
    used("additional_request_headers_to_log", attr="request_headers"),
    used("additional_response_headers_to_log", attr="response_headers"),
    used("additional_response_trailers_to_log", attr="response_trailers"),
))

TCP_GRPC = Message(TCP_PROTO, title="TCP gRPC access log", fields=(
    used("common_config", attr="stream"),
))

COMMON = Message("envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig",
                 title="gRPC access log stream", model=GrpcLogStreamConfig,
                 bookkeeping=("kind",), fields=(
    used("log_name"),
    used("grpc_service", attr="", why="the AccessLogService's cluster (its own table)"),
    used("transport_api_version", "AUTO", attr="", why="V3, the only one (AUTO means V3; V2 is refused)"),
    used("buffer_flush_interval", 1.0, attr="flush_interval"),
    used("buffer_size_bytes", 16384),
    refused("filter_state_objects_to_log", "filter state is not logged"),
    refused("grpc_stream_retry_policy", "a failed stream is started again by the next flush"),
    refused("custom_tags", "no custom tags in gRPC access log entries"),
))

GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (access log)", title="gRPC service (access log)",
                       model=GrpcLogStreamConfig, fields=(
    used("envoy_grpc", attr="", why="the cluster the stream goes to (its own table)"),
    used("initial_metadata"),
    inert("timeout", "Envoy starts the access-log stream without a deadline"),
    refused("google_grpc", "use envoy_grpc"),
    refused("retry_policy", "a failed stream is started again by the next flush"),
))

ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (access log)",
                     model=GrpcLogStreamConfig, fields=(
    used("cluster_name"),
    used("authority", ""),
    inert("max_receive_message_length", "the service answers once, with an empty message, at "
          "the stream's end"),
    inert("skip_envoy_headers", "ftproxy's gRPC streams add no x-envoy-internal / "
          "x-forwarded-for either way"),
    refused("retry_policy", "a failed stream is started again by the next flush"),
))

_HEADER_NAME_BAD = set(" \t\r\n\0")


def _header_names(f: Fields, name: str) -> tuple[str, ...]:
    out = []
    for i, (value, path) in enumerate(f.list(name)):
        if not isinstance(value, str) or not value or _HEADER_NAME_BAD & set(value):
            raise ConfigError(path, f"expected a header name, got {value!r}")
        out.append(value.lower())
    return tuple(out)


def _buffer_size(f: Fields) -> int:
    """A google.protobuf.UInt32Value: a bare number or {value: n}; 16384 when unset."""
    raw = f.value("buffer_size_bytes", None)
    if isinstance(raw, Mapping):
        return Fields(raw, f.at("buffer_size_bytes"), ("value",)).int("value", 0, min=0, max=2**32 - 1)
    if raw is None:
        return DEFAULT_BUFFER_SIZE_BYTES
    return f.int("buffer_size_bytes", DEFAULT_BUFFER_SIZE_BYTES, min=0, max=2**32 - 1)


def _parse_grpc_service(raw: Any, path: str) -> tuple[str, str, tuple[tuple[bytes, bytes], ...]]:
    g = GRPC_SERVICE.read(raw, path)
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required")
    e = ENVOY_GRPC.read(g.raw_obj("envoy_grpc"), g.at("envoy_grpc"))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    g.duration("timeout", None)          # checked, not used (inert)
    return cluster, e.str("authority", "") or "", parse_initial_metadata(g)


def _parse_common(raw: Any, path: str, kind: str) -> GrpcLogStreamConfig:
    c = COMMON.read(raw, path)
    log_name = c.str("log_name", required=True)
    if not log_name:
        raise ConfigError(c.at("log_name"), "must not be empty")
    version = c.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO")
    if version == "V2":
        raise ConfigError(c.at("transport_api_version"), "V2 is not supported (use V3)")
    if not c.has("grpc_service"):
        raise ConfigError(c.at("grpc_service"), "is required")
    cluster, authority, metadata = _parse_grpc_service(c.raw_obj("grpc_service"), c.at("grpc_service"))
    interval = c.duration("buffer_flush_interval", DEFAULT_FLUSH_INTERVAL)
    if interval <= 0:
        raise ConfigError(c.at("buffer_flush_interval"), "must be greater than 0")
    return GrpcLogStreamConfig(kind, log_name, cluster, authority, metadata, interval, _buffer_size(c))


def _parse_http(raw: Mapping[str, Any], path: str) -> GrpcAccessLogConfig:
    f = HTTP_GRPC.read(raw, path)
    if not f.has("common_config"):
        raise ConfigError(f.at("common_config"), "is required")
    stream = _parse_common(f.raw_obj("common_config"), f.at("common_config"), "http")
    return GrpcAccessLogConfig(HTTP_GRPC_LOGGER, stream,
                               _header_names(f, "additional_request_headers_to_log"),
                               _header_names(f, "additional_response_headers_to_log"),
                               _header_names(f, "additional_response_trailers_to_log"))


def _parse_tcp(raw: Mapping[str, Any], path: str) -> GrpcAccessLogConfig:
    f = TCP_GRPC.read(raw, path)
    if not f.has("common_config"):
        raise ConfigError(f.at("common_config"), "is required")
    stream = _parse_common(f.raw_obj("common_config"), f.at("common_config"), "tcp")
    return GrpcAccessLogConfig(TCP_GRPC_LOGGER, stream)


register(Extension("access_logger", HTTP_GRPC_LOGGER, HTTP_PROTO, _parse_http))
register(Extension("access_logger", TCP_GRPC_LOGGER, TCP_PROTO, _parse_tcp))

