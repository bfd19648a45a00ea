"""The Metrics Service stats sink (`envoy.stat_sinks.metrics_service`): every
`stats_flush_interval`, one `envoy.service.metrics.v3.StreamMetricsMessage` on a bidirectional
`MetricsService/StreamMetrics` gRPC call from the main thread to a host of the `envoy_grpc`
cluster, as Envoy's GrpcMetricsStreamerImpl sends them.

Config `envoy.config.metrics.v3.MetricsServiceConfig`: `grpc_service` (envoy_grpc
cluster_name/authority, initial_metadata), `transport_api_version` (V3; V2 refused),
`report_counters_as_deltas`, `emit_tags_as_labels`, `histogram_emit_mode`
(SUMMARY_AND_HISTOGRAM, SUMMARY, HISTOGRAM). What a message holds: metric_families.py.

- The stream opens at a flush that finds none; that flush's message carries the `identifier`
  (the node), later ones only the metrics (Envoy's "for perf reasons").
- The gRPC call (GrpcStream: HTTP/2 with prior knowledge, the cluster's HTTP/2 options and
  connect_timeout) has `:authority` the envoy_grpc authority or the cluster's name, the
  `initial_metadata` and `x-envoy-internal: true`, as Envoy's gRPC client sends them.
- A stream that ends (the server closed it, the connection failed or was lost) is dropped;
  the next flush opens a new one (Envoy's onRemoteClose). Nothing is retried: that flush's
  metrics are lost, as in Envoy. The cluster's stats, as Envoy's gRPC client charges them:
  grpc_client_stats.py (per stream `upstream_cx_total`, `upstream_cx_http2_total`,
  `upstream_rq_pending_total`, `upstream_rq_total` once connected, bytes, a failed
  connection's `upstream_cx_connect_fail`, `upstream_rq_pending_failure_eject` and local
  503, the answer's `upstream_rq_<code>`...). Not counted: Envoy's `internal.*` copies,
  `upstream_cx_destroy_local/remote`, flow-control counters.
- Limit: a server that stops reading leaves messages queued on the stream; past MAX_QUEUED
  bytes a flush's message is dropped (`metrics_service.messages_dropped`, ftproxy's own
  counter) instead of growing main's memory without bound.

Thread affinity: main thread only (built and flushed by the server's flush timer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.grpc_client_tls import check_grpc_client_http2, check_grpc_client_tls
from proxy.config.grpc_metadata import parse_initial_metadata
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

from .grpc_client_stats import GrpcClientStats
from .metric_families import FlushOptions, MetricsFlusher, encode_stream_message
from .sink import SinkContext

__all__ = ["MetricsServiceConfig", "MetricsServiceSink", "parse_metrics_service", "PATH", "MAX_QUEUED"]

log = logging.getLogger("ftproxy.stats")

NAME = "envoy.stat_sinks.metrics_service"
PROTO = "envoy.config.metrics.v3.MetricsServiceConfig"
PATH = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
MAX_QUEUED = 16 * 1024 * 1024   # bytes waiting on a stream the server does not read
HISTOGRAM_EMIT_MODES = ("SUMMARY_AND_HISTOGRAM", "SUMMARY", "HISTOGRAM")


@dataclass(frozen=True, slots=True)
class MetricsServiceConfig:
    cluster_name: str
    authority: str = ""
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    report_counters_as_deltas: bool = False
    emit_tags_as_labels: bool = False
    histogram_emit_mode: str = "SUMMARY_AND_HISTOGRAM"

    def check_clusters(self, clusters: tuple[Any, ...], path: str) -> None:
        """At load, as Envoy: the cluster must be a static one of the bootstrap (Envoy: "Unknown
        gRPC client cluster"); and, for ftproxy's gRPC client, speak HTTP/2 (over TLS too: grpc_client_tls.py)."""
        at = f"{path}.grpc_service.envoy_grpc.cluster_name"
        found = {c.name: c for c in clusters}.get(self.cluster_name)
        if found is None:
            raise ConfigError(at, f"Unknown gRPC client cluster '{self.cluster_name}' (as Envoy: "
                                  "no static cluster of that name)")
        check_grpc_client_http2(found, at)
        i = next(k for k, c in enumerate(clusters) if c is found)
        check_grpc_client_tls(found, at, f"static_resources.clusters[{i}]", "metrics service")

    def flush_options(self) -> FlushOptions:
        mode = self.histogram_emit_mode
        return FlushOptions(self.report_counters_as_deltas, self.emit_tags_as_labels,
                            emit_summary=mode != "HISTOGRAM", emit_histogram=mode != "SUMMARY")


METRICS_SERVICE = Message(PROTO, title="Stats sink metrics_service", model=MetricsServiceConfig, fields=(
    used("grpc_service", attr="", why="the stream's cluster and metadata (its own table)"),
    used("transport_api_version", "AUTO", attr="", why="V3 (AUTO means V3); V2 is refused"),
    used("report_counters_as_deltas", False),
    used("emit_tags_as_labels", False),
    used("histogram_emit_mode", "SUMMARY_AND_HISTOGRAM"),
    refused("batch_size", "only 0: one message per flush", default=0, only_default=True),
))

GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (metrics_service)", model=MetricsServiceConfig,
                       fields=(
    used("envoy_grpc", attr="", why="the cluster the stream goes to (its own table)"),
    used("initial_metadata"),
    inert("timeout", "Envoy's metrics stream takes no deadline from it: a stream lives on"),
    refused("google_grpc", "use envoy_grpc"),
    refused("retry_policy", "no retries: a failed stream is opened again at the next flush"),
))

ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (metrics_service)",
                     model=MetricsServiceConfig, fields=(
    used("cluster_name"),
    used("authority", ""),
    refused("retry_policy", "no retries: a failed stream is opened again at the next flush"),
    refused("max_receive_message_length", "the server sends one empty answer"),
    refused("skip_envoy_headers", "only false", default=False, only_default=True),
))


def parse_metrics_service(raw: Mapping[str, Any], path: str) -> MetricsServiceConfig:
    f = METRICS_SERVICE.read(raw, path)
    METRICS_SERVICE.require_default(f, "batch_size", f.int("batch_size", 0, min=0))
    if f.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO") == "V2":
        raise ConfigError(f.at("transport_api_version"), "V2 is not supported (Envoy removed it)")
    if not f.has("grpc_service"):
        raise ConfigError(f.at("grpc_service"), "required field is missing")
    g = GRPC_SERVICE.read(f.raw_obj("grpc_service"), f.at("grpc_service"))
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required")
    g.duration("timeout", None)   # checked, not used
    e = ENVOY_GRPC.read(g.raw_obj("envoy_grpc"), g.at("envoy_grpc"))
    ENVOY_GRPC.require_default(e, "skip_envoy_headers", e.bool("skip_envoy_headers", False))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    return MetricsServiceConfig(
        cluster_name=cluster, authority=e.str("authority", "") or "",
        initial_metadata=parse_initial_metadata(g),
        report_counters_as_deltas=bool(f.bool("report_counters_as_deltas", False)),
        emit_tags_as_labels=bool(f.bool("emit_tags_as_labels", False)),
        histogram_emit_mode=f.enum("histogram_emit_mode", HISTOGRAM_EMIT_MODES, "SUMMARY_AND_HISTOGRAM"))


class MetricsServiceSink:
    """Envoy's MetricsServiceSink + GrpcMetricsStreamerImpl. Main thread only."""

    def __init__(self, config: MetricsServiceConfig) -> None:
        self.config = config
        self.flusher = MetricsFlusher(config.flush_options())
        self.context: SinkContext | None = None
        self.stream = None
        self.node: bytes = b""
        self.streams = 0         # streams opened (tests, logs)
        self.host_index = 0

    def start(self, context: SinkContext) -> None:
        from proxy.xds.proto import node_message   # the protobuf Node, once, on main
        from proxy.xds.xds_manager import USER_AGENT_NAME, USER_AGENT_VERSION
        self.context = context
        self.node = node_message(context.node, USER_AGENT_NAME, USER_AGENT_VERSION).SerializeToString()
        self.cluster_stats = GrpcClientStats(context.store, self.config.cluster_name)
        self.dropped = context.store.counter("metrics_service.messages_dropped")
        self._opened = False

    def flush(self, snapshot) -> None:
        ctx = self.context
        if ctx is None:
            raise RuntimeError("metrics_service sink flushed before start()")
        families = self.flusher.flush(snapshot, int(ctx.wall_clock() * 1000))
        identifier = None
        if self.stream is None:
            self._establish()
            identifier = self.node
            if self.stream is None:
                return
        if len(self.stream.pending) > MAX_QUEUED:
            self.dropped.inc()
            return
        self.stream.send(encode_stream_message(identifier, families))

    def _establish(self) -> None:
        from proxy.xds.grpc_stream import GrpcStream
        ctx = self.context
        name = self.config.cluster_name
        hosts = ctx.cluster_hosts(name)
        if not hosts:
            log.warning("metrics_service: cluster %s has no host", name)
            return
        address = hosts[self.host_index % len(hosts)]
        self.host_index += 1
        cluster = ctx.cluster_config(name)
        self._opened = False
        self.streams += 1
        self.stream = GrpcStream(ctx.dispatcher, address, self.config.authority or name, PATH,
                                 self._on_open, self._on_message, self._on_close,
                                 http2=getattr(cluster, "http2", None),
                                 connect_timeout=getattr(cluster, "connect_timeout", None),
                                 metadata=(*self.config.initial_metadata, (b"x-envoy-internal", b"true")),
                                 stats=self.cluster_stats.call(),
                                 transport=getattr(cluster, "transport_socket", None))

    def _on_open(self) -> None:
        self._opened = True

    def _on_message(self, data: bytes) -> None:
        pass   # StreamMetricsResponse is empty; Envoy ignores it too

    def _on_close(self, status: int | None, message: str) -> None:
        self.stream = None
        log.debug("metrics_service: stream to %s closed: %s, %s", self.config.cluster_name, status, message)

    def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.close()


register(Extension(
    category="stats_sink",
    name=NAME,
    proto=PROTO,
    parse=parse_metrics_service,
    factory=lambda config, _name: MetricsServiceSink(config),
))
