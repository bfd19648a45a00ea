"""Envoy's OpenTelemetry access logger at run time: OTLP LogRecords made on the workers,
batched there as the gRPC access loggers batch (grpc_log.WorkerLogBuffer), exported by the main
thread as `opentelemetry.proto.collector.logs.v1.LogsService/Export` unary calls.

- Worker (`WorkerOtelLogger`): the access-log filter, then a LogRecord: `time_unix_nano` (the
  request's start, to the microsecond), `body` and `attributes` rendered from their format
  strings (otel_config.compile_template), `trace_id` / `span_id` of the request's span when it
  is traced. Encoded by hand (no protobuf package on the worker).
- Main (`OtelLogSink`): each batch is one ExportLogsServiceRequest: one ResourceLogs whose
  resource carries Envoy's built-in labels (`log_name`, `zone_name`, `cluster_name`,
  `node_name`; not with `disable_builtin_labels`) then `resource_attributes`, and one ScopeLogs
  (no scope, as Envoy) with the records. One call at a time on one HTTP/2 connection kept to a
  host of the cluster (tracing's otlp_exporter.GrpcChannel); batches arriving meanwhile wait,
  at most grpc_log.MAX_PENDING_BYTES (more are dropped: `logs_dropped`), and go together
  next. A failed export is not retried (Envoy neither); its records count in
  `grpc_entries_flush_failed`. ftproxy bounds an export by REQUEST_TIMEOUT (Envoy sends none).
  Counters: `access_logs.open_telemetry_access_log.[<stat_prefix>.]logs_written` (workers),
  `logs_dropped`, `grpc_entries_flush_failed` (main); the cluster's `upstream_cx_total`,
  `upstream_rq_total`, `upstream_cx_connect_fail`, `upstream_rq_timeout`.

Thread affinity: `OtelLogSink` on main; `WorkerOtelLogger` on its worker.
"""

from __future__ import annotations

import logging
from typing import Any

from ..grpc.protobuf_wire import length_delimited, string
from .grpc_log import MAX_PENDING_BYTES
from .otel_config import OtelAccessLogConfig, OtelSinkConfig

__all__ = ["WorkerOtelLogger", "OtelLogSink", "encode_log_record",
           "EXPORT_PATH", "STATS_PREFIX", "REQUEST_TIMEOUT"]

log = logging.getLogger("ftproxy.access_log")

EXPORT_PATH = b"/opentelemetry.proto.collector.logs.v1.LogsService/Export"
STATS_PREFIX = "access_logs.open_telemetry_access_log"
REQUEST_TIMEOUT = 5.0      # seconds an export may take (ftproxy's bound; Envoy sets none)


# -- records (worker) ----------------------------------------------------------------------------
def _render(node: tuple, info: Any) -> bytes:
    """An AnyValue from its compiled template."""
    kind, v = node
    if kind == "s":
        return length_delimited(1, v.format(info).encode("utf-8", "replace"))
    if kind == "kv":
        return length_delimited(6, b"".join(
            length_delimited(1, string(1, key) + length_delimited(2, _render(n, info)))
            for key, n in v))
    return length_delimited(5, b"".join(length_delimited(1, _render(n, info)) for n in v))


def _hex_bytes(text: Any) -> bytes:
    try:
        return bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        return b""


def encode_log_record(info: Any, body: tuple | None, attributes: tuple) -> bytes:
    """An OTLP LogRecord of one finished request or connection."""
    parts = []
    if info.start_time is not None:
        seconds = int(info.start_time)
        micros = round((info.start_time - seconds) * 1e6)
        parts.append(b"\x09" + ((seconds * 1_000_000 + micros) * 1000).to_bytes(8, "little"))
    if body is not None:
        parts.append(length_delimited(5, _render(body, info)))
    for key, node in attributes:
        parts.append(length_delimited(6, string(1, key) + length_delimited(2, _render(node, info))))
    span = getattr(info, "active_span", None)
    if span is not None:
        trace_id, span_id = _hex_bytes(span.trace_id), _hex_bytes(span.id)
        if trace_id:
            parts.append(length_delimited(9, trace_id))
        if span_id:
            parts.append(length_delimited(10, span_id))
    return b"".join(parts)


class WorkerOtelLogger:
    __slots__ = ("config", "buffer")

    def __init__(self, config: OtelAccessLogConfig, buffer) -> None:
        self.config = config
        self.buffer = buffer

    def for_worker(self, worker) -> WorkerOtelLogger:
        return self

    def log(self, info) -> None:
        config = self.config
        if config.log_filter is not None and not config.log_filter.passes(info):
            return
        self.buffer.add(encode_log_record(info, config.body, config.attributes))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- export (main) -------------------------------------------------------------------------------
def _label(key: str, value: str) -> bytes:
    """A Resource attribute (KeyValue, field 1) with a string value."""
    return length_delimited(1, string(1, key) + length_delimited(2, length_delimited(
        1, value.encode("utf-8", "replace"))))


class OtelLogSink:
    """One exporter of log records to the LogsService (main thread)."""

    entry_field = 2            # ScopeLogs.log_records
    counts_written = True

    def __init__(self, service, config: OtelSinkConfig) -> None:
        self.service = service
        self.config = config
        self.stats_prefix = STATS_PREFIX + (f".{config.stat_prefix}" if config.stat_prefix else "")
        node = service.node
        labels = b""
        if not config.disable_builtin_labels:
            labels = (_label("log_name", config.log_name)
                      + _label("zone_name", getattr(node, "zone", "") or "")
                      + _label("cluster_name", getattr(node, "cluster", "") or "")
                      + _label("node_name", getattr(node, "id", "") or ""))
        self.resource = length_delimited(1, labels + config.resource_attributes)
        authority = (config.authority or config.cluster_name).encode()
        self.headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority),
                        (b":path", EXPORT_PATH), (b"content-type", b"application/grpc"),
                        (b"te", b"trailers"), *config.initial_metadata]
        self.main = service.main
        store = service.store
        self.logs_dropped = store.counter(f"{self.stats_prefix}.logs_dropped")
        self.flush_failed = store.counter(f"{self.stats_prefix}.grpc_entries_flush_failed")
        self._cluster = service.cluster_stats(config.cluster_name)
        self.channel = None
        self.in_flight = 0            # records of the export out (0: none)
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self._next_host = 0

    def count(self, name: str) -> None:
        """One more of the cluster's `upstream_*` counter `name` (GrpcChannel's callback)."""
        self._cluster.count(name)

    def receive(self, parts: list[bytes], size: int) -> None:
        if self.service.closed:
            return
        if self.in_flight:
            if self.waiting_bytes + size > MAX_PENDING_BYTES:
                self.logs_dropped.inc(len(parts))
                return
            self.waiting.extend(parts)
            self.waiting_bytes += size
            return
        self._export(parts)

    def _export(self, parts: list[bytes]) -> None:
        from ..tracing.otlp_exporter import GrpcChannel
        hosts = self.service.hosts(self.config.cluster_name)
        if not hosts:
            log.debug("OpenTelemetry access log %r: cluster %r has no host", self.config.log_name,
                      self.config.cluster_name)
            self.logs_dropped.inc(len(parts))
            self.flush_failed.inc(len(parts))
            return
        body = length_delimited(1, self.resource + length_delimited(2, b"".join(parts)))
        channel = self.channel
        if channel is None or channel.closed:
            address = hosts[self._next_host % len(hosts)]
            self._next_host += 1
            self.count("upstream_cx_total")
            cluster = self.service.cluster_config(self.config.cluster_name)
            channel = self.channel = GrpcChannel(self, address, getattr(cluster, "transport_socket", None),
                                                 self._cluster)
        self.in_flight = len(parts)
        self.count("upstream_rq_total")
        channel.call(self.headers, b"\x00" + len(body).to_bytes(4, "big") + body, REQUEST_TIMEOUT)

    def call_done(self, ok: bool) -> None:
        """The export's outcome (GrpcChannel's callback)."""
        n, self.in_flight = self.in_flight, 0
        if not ok:
            self.flush_failed.inc(n)
            log.debug("OpenTelemetry access log %r: an export of %d records failed",
                      self.config.log_name, n)
        if self.waiting:
            self.main.defer(self._export_waiting)   # not from inside the channel's callback

    def _export_waiting(self) -> None:
        if self.in_flight or not self.waiting or self.service.closed:
            return
        parts, self.waiting, self.waiting_bytes = self.waiting, [], 0
        self._export(parts)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
