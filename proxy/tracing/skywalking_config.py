"""Config model of the SkyWalking tracer (`envoy.tracers.skywalking`,
envoy.config.trace.v3.SkyWalkingConfig): trace segments streamed over gRPC
(`skywalking.v3.TraceSegmentReportService/collect`) to an `envoy_grpc` cluster.

Built: `grpc_service` (`envoy_grpc.cluster_name`, `envoy_grpc.authority`, `initial_metadata`;
`timeout` accepted: Envoy's segment stream is long-lived and carries no deadline), and
`client_config`: `service_name` (default: the node's cluster, else "EnvoyProxy"),
`instance_name` (default: the node's id, else "EnvoyProxy"), `backend_token` (the stream's
`authentication` metadata), `max_cache_size` (segments held while no stream is up, 1024).
The defaults that need the node are resolved by the exporter (skywalking_exporter.py).

Must not: do I/O. Thread affinity: parsed on main; immutable, shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, used
from ..config.reader import ConfigError, Fields
from ..config.registry import Extension, register
from .otel_config import read_grpc_service

__all__ = ["SkyWalkingConfig", "SKYWALKING_NAME", "parse_skywalking"]

SKYWALKING_NAME = "envoy.tracers.skywalking"
SKYWALKING_PROTO = "envoy.config.trace.v3.SkyWalkingConfig"
DEFAULT_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class SkyWalkingConfig:
    cluster_name: str                     # envoy_grpc.cluster_name
    authority: str = ""                   # the stream's :authority (default: the cluster)
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    service_name: str = ""                # "" : the node's cluster (or EnvoyProxy)
    instance_name: str = ""               # "" : the node's id (or EnvoyProxy)
    backend_token: str = ""
    max_cache_size: int = DEFAULT_CACHE_SIZE

    # Envoy 1.40 accepts an unknown cluster (its gRPC client fails the stream instead).
    cluster_checked_at_load = False

    @property
    def collector_cluster(self) -> str:
        return self.cluster_name


SKYWALKING = Message(SKYWALKING_PROTO, title="SkyWalking tracer", model=SkyWalkingConfig, fields=(
    used("grpc_service", attr="", why="the segment stream's cluster (envoy_grpc; the gRPC "
         "service table of the OpenTelemetry tracer)"),
    used("client_config", attr="", why="its own table"),
))

CLIENT_CONFIG = Message("envoy.config.trace.v3.ClientConfig", title="SkyWalking client config",
                        model=SkyWalkingConfig, fields=(
    used("service_name", ""),
    used("instance_name", ""),
    used("backend_token", ""),
    used("max_cache_size", DEFAULT_CACHE_SIZE),
))


def parse_skywalking(raw: Mapping[str, Any], path: str) -> SkyWalkingConfig:
    f = SKYWALKING.read(raw, path, extra=("@type",))
    if not f.has("grpc_service"):
        raise ConfigError(f.at("grpc_service"), "is required")
    cluster, authority, _timeout, metadata = read_grpc_service(f.raw_obj("grpc_service"),
                                                               f.at("grpc_service"))
    c = CLIENT_CONFIG.read(f.raw_obj("client_config") or {}, f.at("client_config"))
    return SkyWalkingConfig(
        cluster_name=cluster, authority=authority, initial_metadata=metadata,
        service_name=c.str("service_name", "") or "",
        instance_name=c.str("instance_name", "") or "",
        backend_token=c.str("backend_token", "") or "",
        max_cache_size=_uint32_value(c, "max_cache_size", DEFAULT_CACHE_SIZE),
    )


def _uint32_value(f: Fields, name: str, default: int) -> int:
    """A google.protobuf.UInt32Value: a bare number or {value: n}."""
    v = f.value(name, None)
    if isinstance(v, Mapping):
        return Fields(v, f.at(name), ("value",)).int("value", 0, min=0, max=2**32 - 1)
    if v is None:
        return default
    return f.int(name, default, min=0, max=2**32 - 1)


register(Extension(category="tracer", name=SKYWALKING_NAME, proto=SKYWALKING_PROTO,
                   parse=parse_skywalking))
