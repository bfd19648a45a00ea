"""`envoy.filters.http.grpc_http1_bridge`: a gRPC call made over HTTP/1.1 by a client that
cannot read trailers gets the gRPC status in the response headers.

For a gRPC request (content-type application/grpc...) that came over HTTP/1.x, a response
with a body is held until its end (Envoy 1.40's Http1BridgeFilter): a grpc-status in its
trailers other than 0 turns the status into 503, grpc-status and grpc-message are copied into
the headers, and content-length is set to the body's length (the HTTP/1.1 codec drops the
trailers). A headers-only (trailers-only) answer passes as it is, and no gRPC stats are
counted, as Envoy 1.40 does (case `filter_grpc_http1_bridge`).

Config `envoy.extensions.filters.http.grpc_http1_bridge.v3.Config`: `upgrade_protobuf_to_grpc`
refused (not built yet), `ignore_query_parameters` (only false).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused
from ...config.registry import Extension, register
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter
from ..local_reply import is_grpc_request

__all__ = ["GrpcHttp1Bridge", "parse_grpc_http1_bridge"]

NAME = "envoy.filters.http.grpc_http1_bridge"
PROTO = "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"


@dataclass(frozen=True, slots=True)
class GrpcHttp1Bridge:
    pass


BRIDGE = Message(PROTO, title="HTTP filter grpc_http1_bridge", model=GrpcHttp1Bridge, fields=(
    refused("upgrade_protobuf_to_grpc", "framing application/x-protobuf as gRPC", default=False,
            only_default=True),
    refused("ignore_query_parameters", "only false", default=False, only_default=True),
))


def parse_grpc_http1_bridge(raw: Mapping[str, Any], path: str) -> GrpcHttp1Bridge:
    f = BRIDGE.read(raw, path)
    for name in ("upgrade_protobuf_to_grpc", "ignore_query_parameters"):
        BRIDGE.require_default(f, name, f.bool(name, False))
    return GrpcHttp1Bridge()


class GrpcHttp1BridgeFactory:
    def __init__(self, config: GrpcHttp1Bridge, name: str) -> None:
        self.name = name

    def for_worker(self, ctx) -> WorkerGrpcHttp1Bridge:
        return WorkerGrpcHttp1Bridge(self, ctx)


class WorkerGrpcHttp1Bridge:
    decoder = True
    encoder = True

    def __init__(self, factory: GrpcHttp1BridgeFactory, ctx) -> None:
        self.name = factory.name

    def create(self, callbacks) -> GrpcHttp1BridgeFilter:
        return GrpcHttp1BridgeFilter(callbacks, self)


class GrpcHttp1BridgeFilter(PassThroughFilter):
    __slots__ = ("cb", "bridging", "head")

    def __init__(self, callbacks, wf: WorkerGrpcHttp1Bridge) -> None:
        self.cb = callbacks
        self.bridging = False
        self.head = None

    def decode_headers(self, head, end_stream: bool) -> int:
        self.bridging = head.http_version != b"2" and is_grpc_request(head.headers)
        return FilterHeadersStatus.CONTINUE

    def _bridge(self, fields) -> None:
        """The held response's status and content-length from its trailers `fields`."""
        headers = self.head.headers
        status = fields.get(b"grpc-status")
        if status is not None and status != b"0":
            self.head.status = 503
        held = self.cb.encoding_buffer()
        headers.set(b"content-length", b"%d" % (len(held) if held else 0))

    def encode_headers(self, head, end_stream: bool) -> int:
        if not self.bridging or end_stream:
            return FilterHeadersStatus.CONTINUE
        self.head = head
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.bridging or end_stream:
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def encode_trailers(self, trailers) -> int:
        fields = _Fields(trailers)
        if self.bridging and self.head is not None:
            self._bridge(fields)
            headers = self.head.headers
            for name in (b"grpc-status", b"grpc-message"):
                value = fields.get(name)
                if value is not None:
                    headers.set(name, value)
        return FilterHeadersStatus.CONTINUE


class _Fields:
    """Trailers (a list of pairs) read like Headers."""

    __slots__ = ("items",)

    def __init__(self, items) -> None:
        self.items = items

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.items:
            if k.lower() == name:
                return v
        return None


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_grpc_http1_bridge,
    factory=GrpcHttp1BridgeFactory,
    empty_config_ok=True,
))
