"""Config model of the OpenTelemetry tracer (`envoy.tracers.opentelemetry`,
envoy.config.trace.v3.OpenTelemetryConfig): OTLP over gRPC to an `envoy_grpc` cluster.

Built: `grpc_service` (`envoy_grpc.cluster_name`, `envoy_grpc.authority`, `timeout`,
`initial_metadata`), `service_name` (the `service.name` resource attribute, Envoy's default
`unknown_service:envoy`), `max_cache_size` (spans held before export, 1024). Refused by name:
`http_service` (OTLP/HTTP), `resource_detectors`, `sampler`, `google_grpc`, gRPC retry
policies.

Must not: do I/O. Thread affinity: parsed on main; immutable, shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, refused, used
from ..config.reader import ConfigError, Fields
from ..config.registry import Extension, register

__all__ = ["OpenTelemetryConfig", "OTEL_NAME", "parse_opentelemetry"]

OTEL_NAME = "envoy.tracers.opentelemetry"
OTEL_PROTO = "envoy.config.trace.v3.OpenTelemetryConfig"
DEFAULT_SERVICE_NAME = "unknown_service:envoy"


@dataclass(frozen=True, slots=True)
class OpenTelemetryConfig:
    cluster_name: str                     # grpc_service.envoy_grpc.cluster_name
    authority: str = ""                   # the Export request's :authority (default: the cluster)
    timeout: float | None = None          # grpc_service.timeout: grpc-timeout and the deadline
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    service_name: str = DEFAULT_SERVICE_NAME
    max_cache_size: int = 1024

    # Envoy 1.40 accepts an unknown cluster (its gRPC client fails each export instead).
    cluster_checked_at_load = False

    @property
    def collector_cluster(self) -> str:
        return self.cluster_name


OPENTELEMETRY = Message(OTEL_PROTO, title="OpenTelemetry tracer", model=OpenTelemetryConfig, fields=(
    used("grpc_service", attr="", why="OTLP over gRPC (envoy_grpc)"),
    used("service_name", DEFAULT_SERVICE_NAME),
    used("max_cache_size", 1024),
    refused("http_service", "OTLP over HTTP: use grpc_service"),
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


def parse_opentelemetry(raw: Mapping[str, Any], path: str) -> OpenTelemetryConfig:
    f = OPENTELEMETRY.read(raw, path, extra=("@type",))
    if not f.has("grpc_service"):
        if f.has("http_service"):
            raise ConfigError(f.at("http_service"), "not supported yet (OTLP over HTTP)")
        raise ConfigError(f.at("grpc_service"), "is required (ftproxy exports OTLP over gRPC)")
    g = GRPC_SERVICE.read(f.raw_obj("grpc_service"), f.at("grpc_service"))
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
    metadata = []
    for item, ipath in g.list("initial_metadata"):
        m = Fields(item, ipath, ("key", "value", "raw_value"))
        key = m.str("key", required=True)
        if not key or key.lower() != key or key.startswith(":"):
            raise ConfigError(m.at("key"), "must be a non-empty lower-case header name")
        metadata.append((key.encode(), str(m.str("value", "")).encode("latin-1")))
    service = f.str("service_name", "") or DEFAULT_SERVICE_NAME
    cache = f.value("max_cache_size", None)
    if isinstance(cache, Mapping):
        cache = Fields(cache, f.at("max_cache_size"), ("value",)).int("value", 0, min=0, max=2**32 - 1)
    elif cache is None:
        cache = 1024
    else:
        cache = f.int("max_cache_size", 1024, min=0, max=2**32 - 1)
    return OpenTelemetryConfig(cluster_name=cluster, authority=e.str("authority", "") or "",
                               timeout=timeout, initial_metadata=tuple(metadata),
                               service_name=service, max_cache_size=cache)


register(Extension(category="tracer", name=OTEL_NAME, proto=OTEL_PROTO, parse=parse_opentelemetry))
