"""Zipkin span export: workers batch finished spans and post them to the main thread, which
POSTs them as JSON v2 to a host of the collector cluster, as Envoy's zipkin ReporterImpl does.

- Workers (`SpanBatcher`, one per worker and exporter): spans are handed to main in batches of
  WORKER_BATCH, or within WORKER_HOLD seconds of the first one held: one post per batch,
  never a lock or a wait on the request path.
- Main (`ZipkinExporter`): as Envoy's reporter, a report goes out once MIN_FLUSH_SPANS
  (Envoy's `tracing.zipkin.min_flush_spans`, 5) are pending, and every FLUSH_INTERVAL
  (`tracing.zipkin.flush_interval_ms`, 5 s; `timer_flushed` counts the ticks). Unlike Envoy
  (a report per 5 spans per worker, as many out as its circuit breakers allow) one report is
  out at a time per exporter, and the next carries every span gathered meanwhile: at 10,000
  requests a second that is a few reports a second instead of 2,000 connections. Pending
  spans are bounded (MAX_PENDING_SPANS: past it they count as a failed report, as Envoy counts
  a report its circuit breaker refuses). A report is a POST of `collector_endpoint` with Host
  `collector_hostname` (default: the cluster's name) to the cluster's hosts in turn, with a
  REQUEST_TIMEOUT (`tracing.zipkin.request_timeout`, 5 s).
  Stats (Envoy's names, `tracing.zipkin.*`): `spans_sent` (spans in reports attempted),
  `reports_sent` (answered 202), `reports_dropped` (answered anything else; a cluster without
  a host counts here, as Envoy's async client answers 503), `reports_failed` (connection
  failed, reset or timed out, or spans over the bound), `reports_skipped_no_cluster`.

Thread affinity: `SpanBatcher.add` on its worker; everything else of the exporter on main
(`_batchers_lock` guards only the registration of batchers, done once per worker).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from ..threads.dispatcher import READ, WRITE
from .zipkin import encode_spans

__all__ = ["ZipkinExporter", "SpanBatcher", "SpanExporter", "Exporters", "LocalInfo"]

log = logging.getLogger("ftproxy.tracing")

MIN_FLUSH_SPANS = 5
FLUSH_INTERVAL = 5.0
REQUEST_TIMEOUT = 5.0
WORKER_BATCH = 64        # spans a worker hands over at once: one post per batch
WORKER_HOLD = 1.0        # ... or this long after the first span it holds
MAX_PENDING_SPANS = 10_000  # spans waiting on main while a report is out; more fail the report
MAX_RESPONSE_HEAD = 16 * 1024  # enough for a status line and a collector's headers


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """What Envoy's local_info gives a tracer: node id, cluster (the service name), zone and
    this host's address."""
    node_id: str = ""
    cluster: str = ""
    zone: str = ""
    address: str = ""

    def endpoint_json(self) -> str:
        """Zipkin's localEndpoint: the node's cluster and this host's address, port 0."""
        family = "ipv6" if ":" in self.address else "ipv4"
        return json.dumps({"serviceName": self.cluster, family: self.address, "port": 0},
                          separators=(",", ":"))

    def common_tags_json(self) -> str:
        """The tags Envoy's tracer sets on every request span: component, and node_id and
        zone when they are set; JSON members without the braces."""
        tags = {"component": "proxy"}
        if self.node_id:
            tags["node_id"] = self.node_id
        if self.zone:
            tags["zone"] = self.zone
        return json.dumps(tags, separators=(",", ":"))[1:-1]


def _count(spans: list) -> int:
    """Spans in a report: each request span, and its upstream span when it has one."""
    return len(spans) + sum(1 for s in spans if s.child is not None and s.child.duration_us)


class SpanExporter(Protocol):
    """The seam between the workers' tracers and a provider's export (this module's
    ZipkinExporter, otlp_exporter.OtlpExporter): made on main at config load, one per
    distinct provider config. `batcher_for(worker)` is called on that worker (or on main
    before it starts) and must be safe from several threads at once; every other method runs
    on the main Dispatcher `main`: `receive(spans)` takes a worker's batch (posted by its
    SpanBatcher), `start()` arms the flush timer, `close()` stops it and drops what is out."""

    main: Any

    def batcher_for(self, worker) -> SpanBatcher: ...

    def receive(self, spans: list) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class SpanBatcher:
    """A worker's spans on their way to the main thread's exporter."""

    __slots__ = ("exporter", "dispatcher", "spans", "timer")

    def __init__(self, exporter: SpanExporter, dispatcher) -> None:
        self.exporter = exporter
        self.dispatcher = dispatcher
        self.spans: list = []
        self.timer = None

    def add(self, span) -> None:
        spans = self.spans
        spans.append(span)
        if len(spans) >= WORKER_BATCH:
            self._hand_over()
        elif self.timer is None:
            self.timer = self.dispatcher.call_later(WORKER_HOLD, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.spans:
            self._hand_over()

    def _hand_over(self) -> None:
        spans, self.spans = self.spans, []
        exporter = self.exporter
        exporter.main.post(lambda: exporter.receive(spans))


class ZipkinExporter:
    def __init__(self, config, local: LocalInfo, main, store, clusters) -> None:
        """`local`: this process's node (the spans' localEndpoint and common tags); `main`:
        the main Dispatcher; `store`: the main stats store; `clusters()`: the cluster
        manager's current snapshots (main thread)."""
        self.config = config
        self.endpoint = local.endpoint_json()
        self.common_tags = local.common_tags_json()
        self.main = main
        self.clusters = clusters
        self.host_header = (config.collector_hostname or config.collector_cluster).encode()
        scope = store.scope("tracing.zipkin")
        for name in ("spans_sent", "timer_flushed", "reports_sent", "reports_dropped",
                     "reports_failed", "reports_skipped_no_cluster"):
            setattr(self, name, scope.counter(name))
        self.pending: list = []
        self.in_flight: CollectorPost | None = None   # one report out at a time
        self._next_host = 0
        self._timer = None
        self._batchers_lock = threading.Lock()  # guards _batchers (registered from workers)
        self._batchers: dict[int, SpanBatcher] = {}

    def batcher_for(self, worker) -> SpanBatcher:
        """The batcher of `worker` (called on that worker, or on main before it starts)."""
        with self._batchers_lock:
            b = self._batchers.get(id(worker))
            if b is None:
                b = self._batchers[id(worker)] = SpanBatcher(self, worker.dispatcher)
            return b

    # -- main thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._timer = self.main.create_timer(self._on_timer)
        self._timer.enable(FLUSH_INTERVAL)

    def receive(self, spans: list) -> None:
        """A worker's batch. As Envoy's reporter, a report goes out once MIN_FLUSH_SPANS are
        pending; one report is out at a time, so under load the next one carries every span
        gathered meanwhile (up to MAX_PENDING_SPANS: past that, the pending spans are a
        report that failed)."""
        pending = self.pending
        pending.extend(spans)
        if len(pending) > MAX_PENDING_SPANS:
            self.pending = []
            self.spans_sent.inc(_count(pending))
            self.reports_failed.inc()
            return
        if len(pending) >= MIN_FLUSH_SPANS and self.in_flight is None:
            self.flush()

    def _on_timer(self) -> None:
        try:
            self.timer_flushed.inc()
            if self.in_flight is None:
                self.flush()
        finally:
            self._timer.enable(FLUSH_INTERVAL)

    def flush(self) -> None:
        spans, self.pending = self.pending, []
        if not spans:
            return
        self.spans_sent.inc(_count(spans))
        cluster = self.clusters().get(self.config.collector_cluster)
        if cluster is None:
            self.reports_skipped_no_cluster.inc()
            return
        hosts = cluster.lb_hosts or cluster.hosts
        if not hosts:
            self.reports_dropped.inc()
            return
        host = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        body = encode_spans(spans, self.endpoint, self.common_tags,
                            self.config.shared_span_context).encode()
        request = (b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                   b"content-length: %d\r\nconnection: close\r\n\r\n"
                   % (self.config.collector_endpoint.encode(), self.host_header, len(body))) + body
        post = self.in_flight = CollectorPost(self, (host.address, host.port), request)
        post.start()

    def report_done(self, post: CollectorPost, status: int | None) -> None:
        if self.in_flight is post:
            self.in_flight = None
        if status is None:
            self.reports_failed.inc()
        elif status == 202:
            self.reports_sent.inc()
        else:
            self.reports_dropped.inc()
        if len(self.pending) >= MIN_FLUSH_SPANS and self.in_flight is None:
            self.main.defer(self._flush_if_idle)  # not from inside the finished post's callback

    def _flush_if_idle(self) -> None:
        if self.in_flight is None and len(self.pending) >= MIN_FLUSH_SPANS:
            self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.disable()
        if self.in_flight is not None:
            self.in_flight.abort()


class CollectorPost:
    """One report: connect, write the request, read the status line, close (main thread,
    non-blocking on the main Dispatcher)."""

    def __init__(self, exporter: ZipkinExporter, address: tuple[str, int], request: bytes,
                 timeout: float | None = None) -> None:
        """`exporter`: whose `main` Dispatcher runs the post and whose `report_done(post,
        status)` hears the outcome (the OTLP/HTTP exporter's too)."""
        self.exporter = exporter
        self.timeout = REQUEST_TIMEOUT if timeout is None else timeout
        self.address = address
        self.out = memoryview(request)
        self.received = b""
        self.sock: socket.socket | None = None
        self.timer = None
        self.finished = False

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        try:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setblocking(False)
            err = self.sock.connect_ex(self.address)
        except OSError as e:
            log.debug("zipkin collector %s: %s", self.address, e)
            self._done(None)
            return
        if err not in (0, errno.EINPROGRESS):
            self._done(None)
            return
        main = self.exporter.main
        main.register(self.sock, WRITE, self._on_event)
        self.timer = main.call_later(self.timeout, lambda: self._done(None))

    def _on_event(self, mask: int) -> None:
        sock = self.sock
        if sock is None or self.finished:
            return
        try:
            if self.out:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._done(None)
                    return
                n = sock.send(self.out)
                self.out = self.out[n:]
                if not self.out:
                    self.exporter.main.modify(sock, READ, self._on_event)
                return
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._done(None)
            return
        if not data:
            self._done(self._status())
            return
        self.received += data
        status = self._status()
        if status is not None or len(self.received) > MAX_RESPONSE_HEAD:
            self._done(status)

    def _status(self) -> int | None:
        line, sep, _ = self.received.partition(b"\r\n")
        if not sep:
            return None
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return None
        return int(parts[1])

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        if self.sock is not None:
            self.exporter.main.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def _done(self, status: int | None) -> None:
        if self.finished:
            return
        self.finished = True
        self._close()
        self.exporter.report_done(self, status)


class Exporters:
    """The process's span exporters (main thread): one per distinct provider config (Zipkin's
    ZipkinExporter, OpenTelemetry's otlp_exporter.OtlpExporter, SkyWalking's
    skywalking_exporter.SkyWalkingExporter), as Envoy keeps one driver per tracer config;
    their stats share the `tracing.zipkin.` / `tracing.opentelemetry.` /
    `tracing.skywalking.` names."""

    def __init__(self, main, store, local: LocalInfo) -> None:
        self.main = main
        self.store = store
        self.local = local
        self.clusters = lambda: {}
        self._by_config: dict = {}

    def exporter_for(self, zipkin_config) -> SpanExporter:
        e = self._by_config.get(zipkin_config)
        if e is None:
            from .otel_config import OpenTelemetryConfig
            from .otlp_exporter import OtlpExporter
            from .skywalking_config import SkyWalkingConfig
            from .skywalking_exporter import SkyWalkingExporter
            if isinstance(zipkin_config, OpenTelemetryConfig):
                kind = OtlpExporter
            elif isinstance(zipkin_config, SkyWalkingConfig):
                kind = SkyWalkingExporter
            else:
                kind = ZipkinExporter
            e = self._by_config[zipkin_config] = kind(
                zipkin_config, self.local, self.main, self.store, lambda: self.clusters())
        return e

    def start(self, clusters) -> None:
        self.clusters = clusters
        for e in self._by_config.values():
            e.start()

    def close(self) -> None:
        for e in self._by_config.values():
            e.close()
