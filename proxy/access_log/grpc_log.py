"""Envoy's gRPC access loggers at run time: entries encoded on the workers, batched there,
streamed by the main thread to the AccessLogService
(`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`, client streaming) over the
main-thread gRPC client xDS uses (proxy/xds/grpc_stream.py GrpcStream).

- Worker (`WorkerGrpcLogger`, one per configured logger and worker): the access-log filter
  first, then the entry is encoded (grpc_log_entry.py, no protobuf package) and added to the
  worker's `WorkerLogBuffer` of that stream (loggers with the same common config share one,
  as Envoy's per-thread logger cache keys them). As Envoy's GrpcAccessLogger, the buffer is
  flushed once `buffer_size_bytes` of entries are held (every entry with 0), and within
  `buffer_flush_interval` of the first entry held; a flush hands the entries to main in one
  post. No lock, no I/O, no wait on the request path. HTTP entries count
  `access_logs.grpc_access_log.logs_written` (Envoy counts only HTTP entries there).
- Main (`LogStream`, one per stream config): a batch goes out as one StreamAccessLogsMessage
  (`http_logs` or `tcp_logs`); the first message of each stream also carries the
  `identifier` (the bootstrap's node as xDS sends it, and the log name). A stream is started
  when a batch arrives and none is open, to a host of the envoy_grpc cluster (in turn), with
  `:authority` the envoy_grpc authority (default: the cluster's name) and the
  `initial_metadata`. While it connects, batches wait (at most MAX_PENDING_BYTES); when the
  stream fails or ends, what was waiting is dropped, and the next batch starts a new stream
  (Envoy: the same, with no retry timer). Batches that find more than MAX_PENDING_BYTES
  unsent on an open stream (a stalled service: Envoy's write-buffer high watermark) are
  dropped too. Counters (main store, Envoy's names): `grpc_entries_flushed` (entries put on
  a stream), `logs_dropped` (entries dropped), `grpc_entries_flush_failed` (those of them that
  were due on a stream that could not take them: no host, a connection that failed, too much
  unsent). Envoy counts entries sent on a stream whose connection then fails as flushed (they
  are lost unseen); ftproxy holds them until the stream is open, and counts them dropped.
  The stream charges its cluster's `upstream_cx_*` / `upstream_rq_*` stats as Envoy's gRPC
  client does (proxy/stats/grpc_client_stats.py), one connection per stream.
- Unlike Envoy (one stream per worker), one stream per logger config for the whole process.
- The OpenTelemetry access logger (otel_log.py) reuses the worker side and this service: its
  OtelLogSink takes a LogStream's place (`logger()` picks by the config's type).

Thread affinity: `GrpcAccessLogService.logger` and everything of `LogStream` on main;
`ServiceLogger.for_worker` on main or the worker; `WorkerGrpcLogger.log` and
`WorkerLogBuffer` on their worker. `_buffers_lock` guards the service's buffer registry only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..grpc.protobuf_wire import length_delimited, string
from ..stats.grpc_client_stats import GrpcClientStats
from .grpc_config import GrpcAccessLogConfig, GrpcLogStreamConfig
from .grpc_log_entry import encode_http_entry, encode_tcp_entry

__all__ = ["GrpcAccessLogService", "ServiceLogger", "WorkerGrpcLogger", "WorkerLogBuffer",
           "LogStream", "PATH", "MAX_PENDING_BYTES", "STATS_PREFIX"]

log = logging.getLogger("ftproxy.access_log")

PATH = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
STATS_PREFIX = "access_logs.grpc_access_log"
# Bytes of entries a stream may hold unsent (connecting, or the service not reading): Envoy's
# default per_connection_buffer_limit_bytes, the async stream's high watermark. Past it new
# batches are dropped and counted, so a dead or stalled service costs bounded memory.
MAX_PENDING_BYTES = 1024 * 1024


class GrpcAccessLogService:
    """The server's gRPC access logging (main thread): one LogStream per stream config."""

    def __init__(self, main, store, node: Any, hosts: Callable[[str], list[tuple[str, int]]],
                 cluster_config: Callable[[str], Any]) -> None:
        """`main`: the main Dispatcher; `store`: the main stats store; `node`: the bootstrap's
        node; `hosts(cluster)`: its hosts' (address, port); `cluster_config(cluster)`: its
        config (connect timeout, HTTP/2 options) or None."""
        self.main = main
        self.store = store
        self.node = node
        self.hosts = hosts
        self.cluster_config = cluster_config
        self.streams: dict[GrpcLogStreamConfig, LogStream] = {}
        self.closed = False
        self._node_bytes: bytes | None = None
        self._buffers_lock = threading.Lock()   # guards _buffers (for_worker from any thread)
        self._buffers: dict[tuple[int, GrpcLogStreamConfig], WorkerLogBuffer] = {}
        self._cluster_stats: dict[str, GrpcClientStats] = {}

    def cluster_stats(self, cluster: str) -> GrpcClientStats:
        """The `cluster.<cluster>.upstream_*` stats the streams to it charge (main thread)."""
        s = self._cluster_stats.get(cluster)
        if s is None:
            s = self._cluster_stats[cluster] = GrpcClientStats(self.store, cluster)
        return s

    def logger(self, config: Any) -> Any:
        """A configured logger (config load, main thread): a GrpcAccessLogConfig's, or an
        OpenTelemetry one's (otel_log.py), whose sink (stream or exporter) is shared by the
        loggers with the same `stream` config."""
        stream = self.streams.get(config.stream)
        if isinstance(config, GrpcAccessLogConfig):
            if stream is None:
                stream = self.streams[config.stream] = LogStream(self, config.stream)
            return ServiceLogger(self, config, stream, WorkerGrpcLogger)
        from .otel_log import OtelLogSink, WorkerOtelLogger
        if stream is None:
            stream = self.streams[config.stream] = OtelLogSink(self, config.stream)
        return ServiceLogger(self, config, stream, WorkerOtelLogger)

    def buffer_for(self, worker, sink) -> WorkerLogBuffer:
        """The worker's buffer of entries due to `sink` (a LogStream or an OtelLogSink)."""
        key = (id(worker), sink.config)
        with self._buffers_lock:
            b = self._buffers.get(key)
            if b is None:
                b = self._buffers[key] = WorkerLogBuffer(sink, worker.dispatcher, worker.stats)
            return b

    def node_bytes(self) -> bytes:
        """The bootstrap's node as `config.core.v3.Node` bytes, as xDS sends it (main)."""
        if self._node_bytes is None:
            from ..xds.proto import node_message
            from ..xds.xds_manager import USER_AGENT_NAME, USER_AGENT_VERSION
            self._node_bytes = node_message(self.node, USER_AGENT_NAME,
                                            USER_AGENT_VERSION).SerializeToString()
        return self._node_bytes

    def close(self) -> None:
        self.closed = True
        for s in self.streams.values():
            s.close()


class ServiceLogger:
    """A configured logger whose entries go through this service (gRPC or OpenTelemetry):
    each worker logs through its own logger, `worker_logger(config, buffer)` made by
    `for_worker` over the worker's buffer of entries due to `sink`."""

    def __init__(self, service: GrpcAccessLogService, config: Any, sink: Any,
                 worker_logger: Callable[[Any, WorkerLogBuffer], Any]) -> None:
        self.service = service
        self.config = config
        self.sink = sink
        self.worker_logger = worker_logger

    def for_worker(self, worker) -> Any:
        return self.worker_logger(self.config, self.service.buffer_for(worker, self.sink))

    def log(self, info) -> None:   # pragma: no cover - a wiring bug, not a runtime path
        raise RuntimeError(f"{self.config.logger}: log through for_worker(worker)'s logger")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class WorkerGrpcLogger:
    """One logger on one worker: filter, encode, buffer (worker thread)."""

    __slots__ = ("config", "buffer", "_http", "_headers", "_cache")

    def __init__(self, config: GrpcAccessLogConfig, buffer: WorkerLogBuffer) -> None:
        self.config = config
        self.buffer = buffer
        self._http = config.stream.kind == "http"
        self._headers = (config.request_headers, config.response_headers, config.response_trailers)
        self._cache: dict = {}   # encodings that repeat (addresses); this worker's, bounded

    def for_worker(self, worker) -> WorkerGrpcLogger:
        return self

    def log(self, info) -> None:
        log_filter = self.config.log_filter
        if log_filter is not None and not log_filter.passes(info):
            return
        if self._http:
            self.buffer.add(encode_http_entry(info, *self._headers, self._cache))
        else:
            self.buffer.add(encode_tcp_entry(info, self._cache))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class WorkerLogBuffer:
    """A worker's entries of one sink on their way to main (worker thread). The sink says
    the field its entries are framed as (`entry_field`), its counters' prefix and whether its
    entries count as `logs_written` (`counts_written`)."""

    __slots__ = ("stream", "dispatcher", "parts", "size", "timer", "limit", "interval",
                 "logs_written", "_field")

    def __init__(self, stream, dispatcher, store) -> None:
        self.stream = stream
        self.dispatcher = dispatcher
        self.parts: list[bytes] = []
        self.size = 0
        self.timer = None
        self.limit = stream.config.buffer_size_bytes
        self.interval = stream.config.flush_interval
        self._field = stream.entry_field
        self.logs_written = (store.counter(f"{stream.stats_prefix}.logs_written")
                             if stream.counts_written else None)

    def add(self, entry: bytes) -> None:
        if self.logs_written is not None:
            self.logs_written.inc()
        self.parts.append(length_delimited(self._field, entry))
        self.size += len(entry)
        if self.size >= self.limit:
            self.flush()
        elif self.timer is None:
            self.timer = self.dispatcher.call_later(self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        if not self.parts:
            return
        parts, size = self.parts, self.size
        self.parts, self.size = [], 0
        stream = self.stream
        stream.service.main.post(lambda: stream.receive(parts, size))


class LogStream:
    """One AccessLogService stream and what waits for it (main thread)."""

    entry_field = 1           # HTTPAccessLogEntries / TCPAccessLogEntries.log_entry
    stats_prefix = STATS_PREFIX

    def __init__(self, service: GrpcAccessLogService, config: GrpcLogStreamConfig) -> None:
        self.service = service
        self.config = config
        self.counts_written = config.kind == "http"        # Envoy counts HTTP entries only
        self.field = 2 if config.kind == "http" else 3     # http_logs / tcp_logs
        self.stream = None           # GrpcStream while one is started
        self.opened = False
        self.identified = False      # the identifier went out on this stream
        self.waiting: list[tuple[list[bytes], int]] = []
        self.waiting_bytes = 0
        self._next_host = 0
        self._warned = False
        store = service.store
        self.logs_dropped = store.counter(f"{STATS_PREFIX}.logs_dropped")
        self.flushed = store.counter(f"{STATS_PREFIX}.grpc_entries_flushed")
        self.flush_failed = store.counter(f"{STATS_PREFIX}.grpc_entries_flush_failed")

    # -- batches from the workers -------------------------------------------------------------
    def receive(self, parts: list[bytes], size: int) -> None:
        if self.service.closed:
            return
        if self.stream is None and not self._start():
            self._drop(len(parts), failed=True)
            return
        if not self.opened:
            if self.waiting_bytes + size > MAX_PENDING_BYTES:
                self._drop(len(parts))
                return
            self.waiting.append((parts, size))
            self.waiting_bytes += size
            return
        self._send(parts)

    def _send(self, parts: list[bytes]) -> None:
        stream = self.stream
        if len(stream.pending) > MAX_PENDING_BYTES:
            self._drop(len(parts), failed=True)
            return
        message = length_delimited(self.field, b"".join(parts))
        if not self.identified:
            self.identified = True
            identifier = (length_delimited(1, self.service.node_bytes())
                          + string(2, self.config.log_name))
            message = length_delimited(1, identifier) + message
        stream.send(message)
        self.flushed.inc(len(parts))

    def _drop(self, n: int, failed: bool = False) -> None:
        """`failed`: the entries were due on a stream that could not take them (it could not
        be made, failed before it opened, or holds too much unsent)."""
        self.logs_dropped.inc(n)
        if failed:
            self.flush_failed.inc(n)

    # -- the stream -------------------------------------------------------------------------
    def _start(self) -> bool:
        from ..xds.grpc_stream import GrpcStream
        cfg = self.config
        hosts = self.service.hosts(cfg.cluster_name)
        if not hosts:
            self._warn(f"cluster {cfg.cluster_name!r} has no host")
            return False
        address = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        cluster = self.service.cluster_config(cfg.cluster_name)
        self.opened = self.identified = False
        stream = GrpcStream(self.service.main, address, cfg.authority or cfg.cluster_name,
                            PATH, self._on_open, self._on_message, self._on_close,
                            http2=getattr(cluster, "http2", None),
                            connect_timeout=getattr(cluster, "connect_timeout", None),
                            metadata=cfg.initial_metadata,
                            stats=self.service.cluster_stats(cfg.cluster_name).call(),
                            transport=getattr(cluster, "transport_socket", None))
        if stream.closed:      # failed at once (its on_close has run)
            return False
        self.stream = stream
        return True

    def _on_open(self) -> None:
        self.opened = True
        self._warned = False
        waiting, self.waiting, self.waiting_bytes = self.waiting, [], 0
        if waiting:
            self._send([p for parts, _ in waiting for p in parts])

    def _on_message(self, data: bytes) -> None:
        pass    # StreamAccessLogsResponse is empty and comes at the stream's end

    def _on_close(self, status: int | None, message: str) -> None:
        self.stream = None
        self.opened = self.identified = False
        dropped = sum(len(parts) for parts, _ in self.waiting)
        self.waiting, self.waiting_bytes = [], 0
        if dropped:
            self._drop(dropped, failed=True)
        self._warn(f"stream to {self.config.cluster_name!r} ended: {status}, {message}")

    def _warn(self, what: str) -> None:
        """Logged once until a stream opens again (a dead service is tried every flush)."""
        if not self._warned:
            self._warned = True
            log.warning("gRPC access log %r: %s", self.config.log_name, what)
        else:
            log.debug("gRPC access log %r: %s", self.config.log_name, what)

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()
