"""ext_authz's gRPC authorization service config (`grpc_service`, envoy.config.core.v3.GrpcService):
`envoy_grpc.cluster_name`, `envoy_grpc.authority` (default the cluster's name), `timeout`
(ext_authz's default 200 ms), `initial_metadata` (values with Envoy's header value syntax,
formatted per call). The messages are ext_authz_wire.py's; the filter is ext_authz.py.

Thread affinity: main thread (config load).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError, Fields, header_bytes
from ...router.header_mutation import ValueFormat, compile_value_format

__all__ = ["GrpcAuthzService", "parse_grpc_service", "SERVICE_PATH"]

SERVICE_PATH = b"/envoy.service.auth.v3.Authorization/Check"


@dataclass(frozen=True, slots=True)
class GrpcAuthzService:
    cluster: str
    authority: bytes
    timeout: float
    initial_metadata: tuple[tuple[bytes, ValueFormat], ...] = ()


GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (ext_authz)", model=GrpcAuthzService, fields=(
    used("envoy_grpc", attr="cluster", why="its own table"),
    refused("google_grpc", "the Google C++ gRPC client (envoy_grpc is the one built)"),
    used("timeout", why="default 200 ms, as ext_authz's"),
    used("initial_metadata"),
    refused("retry_policy", "retries of the check call"),
))
ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (ext_authz)", fields=(
    used("cluster_name", attr="cluster"),
    used("authority", why="default: the cluster's name"),
    refused("retry_policy", "retries of the check call"),
    refused("max_receive_message_length", "a limit on the CheckResponse's size"),
    refused("skip_envoy_headers", "the x-envoy-* headers are always sent"),
))
METADATA_VALUE = Message("envoy.config.core.v3.HeaderValue (ext_authz initial_metadata)", fields=(
    used("key", attr="initial_metadata"),
    used("value", attr="initial_metadata"),
    refused("raw_value"),
))


def parse_grpc_service(f: Fields, key: str) -> GrpcAuthzService:
    g = GRPC_SERVICE.read(f.value(key), f.at(key))
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required (google_grpc is not supported yet)")
    e = ENVOY_GRPC.read(g.value("envoy_grpc"), g.at("envoy_grpc"))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    metadata = []
    for item, p in g.list("initial_metadata"):
        h = METADATA_VALUE.read(item, p)
        name = h.str("key", required=True).lower()
        metadata.append((header_bytes(name, h.at("key")), compile_value_format(h.str("value", ""), h.at("value"))))
    authority = e.str("authority", "") or cluster
    return GrpcAuthzService(cluster=cluster, authority=authority.encode("latin-1"),
                            timeout=g.duration("timeout", 0.2) if g.has("timeout") else 0.2,
                            initial_metadata=tuple(metadata))
