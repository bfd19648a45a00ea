"""Config model of the OpenTelemetry tracer (`envoy.tracers.opentelemetry`,
envoy.config.trace.v3.OpenTelemetryConfig): OTLP over gRPC to an `envoy_grpc` cluster.

Built: `grpc_service` (`envoy_grpc.cluster_name`, `envoy_grpc.authority`, `timeout`,
`initial_metadata`), or else `http_service` (OTLP/HTTP: `http_uri` `uri`, `cluster`, `timeout`,
`request_headers_to_add`), `service_name` (the `service.name` resource attribute, Envoy's
default `unknown_service:envoy`), `max_cache_size` (spans held before export, 1024). Refused
by name: `resource_detectors`, `sampler`, `google_grpc`, gRPC retry policies.

Must not: do I/O. Thread affinity: parsed on main; immutable, shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config.fields_table import Message, inert, refused, used
from ..config.grpc_metadata import parse_initial_metadata
from ..config.reader import ConfigError, Fields
from ..config.registry import Extension, register

__all__ = ["OpenTelemetryConfig", "OTEL_NAME", "parse_opentelemetry", "read_grpc_service"]

OTEL_NAME = "envoy.tracers.opentelemetry"
OTEL_PROTO = "envoy.config.trace.v3.OpenTelemetryConfig"
DEFAULT_SERVICE_NAME = "unknown_service:envoy"


@dataclass(frozen=True, slots=True)
class OtlpHttp:
    """`http_service`: OTLP/HTTP (protobuf) POSTs to `cluster`, as Envoy's
    OpenTelemetryHttpTraceExporter sends them."""
    path: str                             # http_uri.uri's path (Envoy: "/" when it has none)
    host: str                             # http_uri.uri's authority: the request's Host
    timeout: float                        # http_uri.timeout
    headers: tuple[tuple[bytes, bytes], ...] = ()   # request_headers_to_add (set, in order)


@dataclass(frozen=True, slots=True)
class OpenTelemetryConfig:
    cluster_name: str                     # envoy_grpc.cluster_name, or http_uri.cluster
    authority: str = ""                   # the Export request's :authority (default: the cluster)
    timeout: float | None = None          # grpc_service.timeout: grpc-timeout and the deadline
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    service_name: str = DEFAULT_SERVICE_NAME
    max_cache_size: int = 1024
    http: OtlpHttp | None = None          # http_service (when there is no grpc_service)

    # Envoy 1.40 accepts an unknown cluster (its gRPC client fails each export instead).
    cluster_checked_at_load = False

    @property
    def collector_cluster(self) -> str:
        return self.cluster_name

    @property
    def collector_tls(self) -> bool:
        """Its exporter speaks TLS to a TLS cluster (OTLP over gRPC; OTLP/HTTP does not)."""
        return self.http is None


OPENTELEMETRY = Message(OTEL_PROTO, title="OpenTelemetry tracer", model=OpenTelemetryConfig, fields=(
    used("grpc_service", attr="", why="OTLP over gRPC (envoy_grpc); it wins when both are set"),
    used("http_service", attr="http", why="OTLP over HTTP (protobuf)"),
    used("service_name", DEFAULT_SERVICE_NAME),
    used("max_cache_size", 1024),
    refused("resource_detectors", "only the service.name resource attribute"),
    refused("sampler", "the HCM's sampling decides (no OpenTelemetry sampler extensions)"),
))

GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService", title="gRPC service (tracing)",
                       model=OpenTelemetryConfig, fields=(
    used("envoy_grpc", attr="", why="the cluster the exports go to (its own table)"),
    used("timeout", attr="timeout"),
    used("initial_metadata", attr="initial_metadata"),
    refused("google_grpc", "use envoy_grpc"),
    refused("retry_policy", "no retries of span exports"),
))

ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc", title="Envoy gRPC client",
                     model=OpenTelemetryConfig, fields=(
    used("cluster_name"),
    used("authority", ""),
    refused("retry_policy", "no retries of span exports"),
    refused("max_receive_message_length", "the Export answer is read whole"),
    refused("skip_envoy_headers", "only false", default=False, only_default=True),
))


HTTP_SERVICE = Message("envoy.config.core.v3.HttpService", title="HTTP service (tracing)",
                       model=OtlpHttp, fields=(
    used("http_uri", attr="", why="the URI, cluster and timeout (its own table)"),
    used("request_headers_to_add", attr="headers"),
))

HTTP_URI = Message("envoy.config.core.v3.HttpUri (tracing)", model=OtlpHttp, fields=(
    used("uri", attr="path", why="its path and authority (the request's Host)"),
    used("cluster", attr="", why="the cluster the exports go to"),
    used("timeout", why="required, as in Envoy"),
))

HEADER_OPTION = Message("envoy.config.core.v3.HeaderValueOption (tracing)", fields=(
    used("header", attr="", why="its own table"),
    inert("append_action", "Envoy's OTLP/HTTP exporter sets each header whatever its action"),
    inert("append", "Envoy's OTLP/HTTP exporter sets each header whatever its action"),
    refused("keep_empty_value", "only false", default=False, only_default=True),
))

HEADER_VALUE = Message("envoy.config.core.v3.HeaderValue (tracing)", fields=(
    used("key", attr="", why="a header of every export request"),
    used("value", attr="", why="its value"),
    refused("raw_value"),
))


def _parse_http(raw: Mapping[str, Any], path: str) -> tuple[str, OtlpHttp]:
    f = HTTP_SERVICE.read(raw, path)
    u = HTTP_URI.read(f.value("http_uri", required=True), f.at("http_uri"))
    uri = u.str("uri", required=True)
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(u.at("uri"), f"expected an absolute http(s) URI, got {uri!r}")
    cluster = u.str("cluster", required=True)
    if not cluster:
        raise ConfigError(u.at("cluster"), "must not be empty")
    timeout = u.duration("timeout", required=True)
    if timeout <= 0:
        raise ConfigError(u.at("timeout"), "must be greater than 0")
    headers = []
    for item, ipath in f.list("request_headers_to_add"):
        o = HEADER_OPTION.read(item, ipath)
        HEADER_OPTION.require_default(o, "keep_empty_value", o.bool("keep_empty_value", False))
        h = HEADER_VALUE.read(o.value("header", required=True), o.at("header"))
        key = h.str("key", required=True)
        value = h.str("value", "")
        if not key or any(c in key for c in " \t\r\n\0:"):
            raise ConfigError(h.at("key"), f"invalid header name {key!r}")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(h.at("value"), "header values may not contain CR, LF or NUL")
        headers.append((key.lower().encode("latin-1"), value.encode("latin-1", "replace")))
    path_part = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cluster, OtlpHttp(path_part, parts.netloc, timeout, tuple(headers))


def parse_opentelemetry(raw: Mapping[str, Any], path: str) -> OpenTelemetryConfig:
    f = OPENTELEMETRY.read(raw, path, extra=("@type",))
    service = f.str("service_name", "") or DEFAULT_SERVICE_NAME
    cache = _max_cache_size(f)
    if not f.has("grpc_service"):
        if not f.has("http_service"):
            raise ConfigError(f.path, "one of grpc_service, http_service is required")
        cluster, http = _parse_http(f.raw_obj("http_service"), f.at("http_service"))
        return OpenTelemetryConfig(cluster_name=cluster, service_name=service,
                                   max_cache_size=cache, http=http)
    cluster, authority, timeout, metadata = read_grpc_service(f.raw_obj("grpc_service"),
                                                             f.at("grpc_service"))
    return OpenTelemetryConfig(cluster_name=cluster, authority=authority,
                               timeout=timeout, initial_metadata=metadata,
                               service_name=service, max_cache_size=cache)


def read_grpc_service(raw: Mapping[str, Any], path: str
                      ) -> tuple[str, str, float | None, tuple[tuple[bytes, bytes], ...]]:
    """A tracer's `grpc_service` (envoy_grpc only): (cluster, authority, timeout or None,
    initial_metadata); the SkyWalking tracer's too (skywalking_config.py)."""
    g = GRPC_SERVICE.read(raw, path)
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required")
    e = ENVOY_GRPC.read(g.raw_obj("envoy_grpc"), g.at("envoy_grpc"))
    ENVOY_GRPC.require_default(e, "skip_envoy_headers", e.bool("skip_envoy_headers", False))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    timeout = g.duration("timeout", None)
    if timeout is not None and timeout <= 0:
        timeout = None  # Envoy: 0 is no timeout
    return cluster, e.str("authority", "") or "", timeout, parse_initial_metadata(g)


def _max_cache_size(f: Fields) -> int:
    """A google.protobuf.UInt32Value: a bare number or {value: n}; 1024 when unset."""
    cache = f.value("max_cache_size", None)
    if isinstance(cache, Mapping):
        return Fields(cache, f.at("max_cache_size"), ("value",)).int("value", 0, min=0, max=2**32 - 1)
    if cache is None:
        return 1024
    return f.int("max_cache_size", 1024, min=0, max=2**32 - 1)


register(Extension(category="tracer", name=OTEL_NAME, proto=OTEL_PROTO, parse=parse_opentelemetry))
