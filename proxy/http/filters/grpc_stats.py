"""`envoy.filters.http.grpc_stats`: per-cluster counters of gRPC calls and their messages, as
Envoy's gRPC context charges them.

For a gRPC request (content-type application/grpc...) to `/<service>/<method>` routed to a
cluster: the grpc-status of the response (in its headers, or its trailers) counts
`cluster.<name>.grpc[.<service>.<method>].{<grpc-status>,success|failure,total}`, and the
length-prefixed messages each way `...request_message_count` / `...response_message_count`;
`enable_upstream_stats` adds the `...upstream_rq_time` histogram (ms, from the request's
first byte upstream to the grpc-status). The service and method are in the names when `stats_for_all_methods` is
true, or for the methods `individual_method_stats_allowlist` lists; else (Envoy 1.40's
default) every call counts under `cluster.<name>.grpc.*`. `replace_dots_in_grpc_service_name`
writes a service's dots as underscores (with stats_for_all_methods; an allowlisted service
keeps them, as Envoy 1.40 does). `emit_filter_state` is refused (no filter state here).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.registry import Extension, register
from ...grpc.names import request_names
from ..filter import FilterHeadersStatus, PassThroughFilter
from ..local_reply import is_grpc_request

__all__ = ["GrpcStatsConfig", "parse_grpc_stats", "FrameCounter"]

NAME = "envoy.filters.http.grpc_stats"
PROTO = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


@dataclass(frozen=True, slots=True)
class GrpcStatsConfig:
    stats_for_all_methods: bool = False
    individual_method_stats_allowlist: frozenset[tuple[str, str]] = frozenset()
    enable_upstream_stats: bool = False
    replace_dots_in_grpc_service_name: bool = False


GRPC_STATS = Message(PROTO, title="HTTP filter grpc_stats", model=GrpcStatsConfig, fields=(
    refused("emit_filter_state", "filter state", default=False, only_default=True),
    used("individual_method_stats_allowlist", why="GrpcMethodList"),
    used("stats_for_all_methods", False),
    used("enable_upstream_stats", False),
    used("replace_dots_in_grpc_service_name", False),
))
METHOD_LIST = Message("envoy.config.core.v3.GrpcMethodList", fields=(
    used("services", attr="individual_method_stats_allowlist"),
))
METHOD_LIST_SERVICE = Message("envoy.config.core.v3.GrpcMethodList.Service", fields=(
    used("name", attr="individual_method_stats_allowlist"),
    used("method_names", attr="individual_method_stats_allowlist"),
))


def parse_grpc_stats(raw: Mapping[str, Any], path: str) -> GrpcStatsConfig:
    f = GRPC_STATS.read(raw, path)
    GRPC_STATS.require_default(f, "emit_filter_state", f.bool("emit_filter_state", False))
    f.oneof("individual_method_stats_allowlist", "stats_for_all_methods")
    allow: set[tuple[str, str]] = set()
    if f.has("individual_method_stats_allowlist"):
        ml = METHOD_LIST.read(f.value("individual_method_stats_allowlist"),
                              f.at("individual_method_stats_allowlist"))
        for item, p in ml.list("services"):
            svc = METHOD_LIST_SERVICE.read(item, p)
            name = svc.str("name", required=True)
            for method, _ in svc.list("method_names"):
                allow.add((name, str(method)))
    return GrpcStatsConfig(f.bool("stats_for_all_methods", False), frozenset(allow),
                           f.bool("enable_upstream_stats", False),
                           f.bool("replace_dots_in_grpc_service_name", False))


class FrameCounter:
    """Counts gRPC length-prefixed messages (1 flag byte, 4 length bytes, the message) in a
    byte stream cut anywhere (Envoy's Grpc::FrameInspector)."""

    __slots__ = ("frames", "_header", "_left")

    def __init__(self) -> None:
        self.frames = 0
        self._header = b""   # a frame header read in part
        self._left = 0       # message bytes still to skip

    def inspect(self, data: bytes) -> int:
        """Feed `data`; returns how many new frames began in it."""
        before = self.frames
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            need = 5 - len(self._header)
            self._header += data[i:i + need]
            i += need
            if len(self._header) == 5:
                self.frames += 1
                self._left = int.from_bytes(self._header[1:5], "big")
                self._header = b""
        return self.frames - before


class GrpcStatsFactory:
    def __init__(self, config: GrpcStatsConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerGrpcStats:
        return WorkerGrpcStats(self, ctx)


class WorkerGrpcStats:
    decoder = True
    encoder = True

    def __init__(self, factory: GrpcStatsFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.stats = ctx.worker.stats
        self.counters: dict[str, Any] = {}
        self.histograms: dict[str, Any] = {}

    def prefix(self, cluster: str, names: tuple[str, str] | None) -> str:
        if names is None:
            return f"cluster.{cluster}.grpc."
        service = names[0]
        if self.config.stats_for_all_methods and self.config.replace_dots_in_grpc_service_name:
            service = service.replace(".", "_")  # (Envoy: allowlisted names keep their dots)
        return f"cluster.{cluster}.grpc.{service}.{names[1]}."

    def add(self, name: str, n: int = 1) -> None:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = self.stats.counter(name)
        c.value += n

    def record(self, name: str, ms: float) -> None:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = self.stats.histogram(name, "ms")
        h.record(ms)

    def create(self, callbacks) -> GrpcStatsFilter:
        return GrpcStatsFilter(callbacks, self)


class GrpcStatsFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf", "prefix", "requests", "responses")

    def __init__(self, callbacks, wf: WorkerGrpcStats) -> None:
        self.cb = callbacks
        self.wf = wf
        self.prefix: str | None = None   # set for a tracked gRPC call
        self.requests: FrameCounter | None = None
        self.responses: FrameCounter | None = None

    def decode_headers(self, head, end_stream: bool) -> int:
        if not is_grpc_request(head.headers):
            return FilterHeadersStatus.CONTINUE
        self.requests = FrameCounter()
        names = request_names(head.path)
        route = self.cb.route()
        action = route.action if route is not None else None
        cluster = action.cluster if action is not None else None
        if names is None or not cluster:
            return FilterHeadersStatus.CONTINUE
        cfg = self.wf.config
        if not cfg.stats_for_all_methods and names not in cfg.individual_method_stats_allowlist:
            names = None  # counted without service and method
        self.prefix = self.wf.prefix(cluster, names)
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.requests is not None:
            n = self.requests.inspect(data)
            if n and self.prefix is not None:
                self.wf.add(self.prefix + "request_message_count", n)
        return 0

    def _charge(self, status: bytes | None) -> None:
        if status is None or self.prefix is None:
            return
        wf, prefix = self.wf, self.prefix
        wf.add(prefix + status.decode("latin-1"))
        wf.add(prefix + ("success" if status == b"0" else "failure"))
        wf.add(prefix + "total")
        if wf.config.enable_upstream_stats:
            start = self.cb.stream_info.first_upstream_tx_monotonic
            if start is not None:
                wf.record(prefix + "upstream_rq_time", (time.monotonic() - start) * 1000.0)

    def encode_headers(self, head, end_stream: bool) -> int:
        if self.requests is not None:
            ctype = head.headers.get(b"content-type") or b""
            if ctype.startswith(b"application/grpc"):
                self.responses = FrameCounter()
            self._charge(head.headers.get(b"grpc-status"))
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if self.responses is not None:
            n = self.responses.inspect(data)
            if n and self.prefix is not None:
                self.wf.add(self.prefix + "response_message_count", n)
        return 0

    def encode_trailers(self, trailers) -> int:
        for name, value in trailers:
            if name.lower() == b"grpc-status":
                self._charge(value)
                break
        return 0


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_grpc_stats,
    factory=GrpcStatsFactory,
    empty_config_ok=True,
))
