"""OpenTelemetry span export: OTLP over gRPC or HTTP (`/opentelemetry.proto.collector.trace.v1.
TraceService/Export`, unary) from the main thread to a host of the `envoy_grpc` cluster, as
Envoy's OpenTelemetryGrpcTraceExporter does, batched as the Zipkin exporter batches.

- Workers hand finished spans over in batches (exporter.SpanBatcher, shared with Zipkin).
- Main (`OtlpExporter`): as Envoy's tracer, an export goes out once MIN_FLUSH_SPANS
  (`tracing.opentelemetry.min_flush_spans`, 5) are pending and every FLUSH_INTERVAL
  (`tracing.opentelemetry.flush_interval_ms`, 5 s; `timer_flushed` counts the ticks). One
  export is out at a time and the next carries every span gathered meanwhile (Envoy: one per
  5 spans per worker). At most `max_cache_size` spans wait (Envoy's span buffer bound,
  1024): more are dropped and counted in `spans_dropped`. `spans_sent` counts the spans of
  every export attempted (Envoy's names, `tracing.opentelemetry.*`).
- The gRPC call: HTTP/2 with prior knowledge (h2, as the gRPC health checks), or over TLS
  when the cluster's transport_socket is TLS (GrpcChannel), one connection
  kept and a stream per export; `:authority` the envoy_grpc authority or the cluster's name,
  `grpc-timeout` and a deadline from `grpc_service.timeout` (without one, REQUEST_TIMEOUT
  bounds the export: the deadline is ftproxy's, the header is not sent, as Envoy sends none),
  `initial_metadata` added. A failed export is not retried (Envoy neither); the cluster's
  `upstream_cx_total`, `upstream_cx_connect_fail`, `upstream_rq_total` and
  `upstream_rq_timeout` count what happened, as Envoy's gRPC client charges them.
- Or OTLP/HTTP (`http_service`): a POST of the same protobuf (`application/x-protobuf`) to the
  `http_uri`'s path with its authority as Host and `request_headers_to_add`, by
  exporter.CollectorPost (HTTP/1.1, one connection per export), within `http_uri.timeout`;
  success is a 200.

Thread affinity: `batcher_for` on any worker (under `_batchers_lock`); everything else on main.
"""

from __future__ import annotations

import logging
import threading

from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from .. import __version__
from ..http.codec.hpack_codec import install as install_hpack
from ..stats.grpc_client_stats import GrpcClientStats
from ..network.client_transport_socket import TransportClientSocket
from ..threads.client_socket import ClientSocket
from . import exporter as common
from .otlp import Resource, encode_export_request

__all__ = ["OtlpExporter", "EXPORT_PATH"]

log = logging.getLogger("ftproxy.tracing")

EXPORT_PATH = b"/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MIN_FLUSH_SPANS = 5
REQUEST_TIMEOUT = 5.0
SDK_NAME = "ftproxy"
SCOPE_NAME = "envoy"          # Envoy's instrumentation scope: the spans it defines
USER_AGENT = b"OTel-OTLP-Exporter-ftproxy/" + __version__.encode()  # Envoy: ...-Envoy/<version>


def _count(spans: list) -> int:
    return len(spans) + sum(1 for s in spans if s.child is not None and s.child.duration_us)


class OtlpExporter:
    def __init__(self, config, local, main, store, clusters) -> None:
        """`local`: this process's node (common attributes); `main`: the main Dispatcher;
        `store`: the main stats store; `clusters()`: the cluster snapshots (main thread)."""
        self.config = config
        self.main = main
        self.store = store
        self.clusters = clusters
        version = f"ftproxy/{__version__}"
        self.resource = Resource(
            [("service.name", config.service_name), ("telemetry.sdk.name", SDK_NAME),
             ("telemetry.sdk.version", version), ("telemetry.sdk.language", "python")],
            SCOPE_NAME, version, local.node_id, local.zone)
        scope = store.scope("tracing.opentelemetry")
        self.spans_sent = scope.counter("spans_sent")
        self.spans_dropped = scope.counter("spans_dropped")
        self.timer_flushed = scope.counter("timer_flushed")
        # Made on first use: only for a cluster that exists (an unknown one loads).
        self._cluster_stats: GrpcClientStats | None = None
        authority = (config.authority or config.cluster_name).encode()
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority),
                   (b":path", EXPORT_PATH), (b"content-type", b"application/grpc"),
                   (b"te", b"trailers")]
        if config.timeout is not None:
            headers.append((b"grpc-timeout", b"%dm" % max(1, round(config.timeout * 1000))))
        headers.extend(config.initial_metadata)
        self.request_headers = headers
        self.timeout = config.timeout if config.timeout is not None else REQUEST_TIMEOUT
        self.http = http = config.http
        self.post = None
        if http is not None:
            fields = {b"host": http.host.encode("latin-1"),
                      b"content-type": b"application/x-protobuf", b"user-agent": USER_AGENT}
            fields.update(http.headers)   # set, as Envoy's setCopy: a later one replaces
            fields.pop(b"content-length", None)
            fields[b"connection"] = b"close"
            self.http_head = b"POST %s HTTP/1.1\r\n" % http.path.encode("latin-1") + b"".join(
                k + b": " + v + b"\r\n" for k, v in fields.items())
        self.pending: list = []
        self.pending_count = 0
        self.channel: GrpcChannel | None = None
        self.in_flight = False
        self._next_host = 0
        self._timer = None
        self.exports_ok = 0          # answered grpc-status 0 (tests, /stats has no such name)
        self.exports_failed = 0
        self._batchers_lock = threading.Lock()  # guards _batchers (registered from workers)
        self._batchers: dict[int, common.SpanBatcher] = {}

    def count(self, name: str) -> None:
        """One more of the collector cluster's `upstream_*` counter `name` (main thread)."""
        if self._cluster_stats is None:
            self._cluster_stats = GrpcClientStats(self.store, self.config.cluster_name)
        self._cluster_stats.count(name)

    def batcher_for(self, worker) -> common.SpanBatcher:
        with self._batchers_lock:
            b = self._batchers.get(id(worker))
            if b is None:
                b = self._batchers[id(worker)] = common.SpanBatcher(self, worker.dispatcher)
            return b

    # -- main thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._timer = self.main.create_timer(self._on_timer)
        self._timer.enable(common.FLUSH_INTERVAL)

    def receive(self, spans: list) -> None:
        room = self.config.max_cache_size - self.pending_count
        for span in spans:
            n = 2 if span.child is not None and span.child.duration_us else 1
            if n > room:
                self.spans_dropped.inc(n)
                continue
            room -= n
            self.pending.append(span)
            self.pending_count += n
        if self.pending_count >= MIN_FLUSH_SPANS and not self.in_flight:
            self.flush()

    def _on_timer(self) -> None:
        try:
            self.timer_flushed.inc()
            if not self.in_flight:
                self.flush()
        finally:
            self._timer.enable(common.FLUSH_INTERVAL)

    def flush(self) -> None:
        spans, self.pending, self.pending_count = self.pending, [], 0
        if not spans:
            return
        self.spans_sent.inc(_count(spans))
        cluster = self.clusters().get(self.config.cluster_name)
        hosts = (cluster.lb_hosts or cluster.hosts) if cluster is not None else ()
        if not hosts:
            self.exports_failed += 1   # Envoy: the async client fails the call (no host)
            return
        body = encode_export_request(spans, self.resource)
        if self.http is not None:
            self._post(hosts, body)
            return
        message = b"\x00" + len(body).to_bytes(4, "big") + body
        channel = self.channel
        if channel is None or channel.closed:
            host = hosts[self._next_host % len(hosts)]
            self._next_host += 1
            self.count("upstream_cx_total")
            channel = self.channel = GrpcChannel(self, (host.address, host.port),
                                                 cluster.config.transport_socket, self._cluster_stats)
        self.in_flight = True
        self.count("upstream_rq_total")
        channel.call(self.request_headers, message, self.timeout)

    def _post(self, hosts, body: bytes) -> None:
        """OTLP/HTTP: POST the protobuf body to the uri's path, with its authority as Host, as
        Envoy's OpenTelemetryHttpTraceExporter (content-type application/x-protobuf, its
        user-agent, request_headers_to_add)."""
        host = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        self.count("upstream_cx_total")
        self.count("upstream_rq_total")
        self.in_flight = True
        post = self.post = common.CollectorPost(
            self, (host.address, host.port), self.http_head + b"content-length: %d\r\n\r\n" % len(body)
            + body, self.http.timeout)
        post.start()

    def report_done(self, post, status: int | None) -> None:
        """An OTLP/HTTP post's outcome (None: no answer); success is 200, as the OTLP/HTTP
        specification answers."""
        if post is self.post:
            self.post = None
        self.call_done(status == 200)

    def call_done(self, ok: bool) -> None:
        self.in_flight = False
        if ok:
            self.exports_ok += 1
        else:
            self.exports_failed += 1
        if self.pending_count >= MIN_FLUSH_SPANS:
            self.main.defer(self._flush_if_idle)  # not from inside the channel's callback

    def _flush_if_idle(self) -> None:
        if not self.in_flight and self.pending_count >= MIN_FLUSH_SPANS:
            self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.disable()
        if self.channel is not None:
            self.channel.close()
        if self.post is not None:
            self.post.abort()


class GrpcChannel:
    """One HTTP/2 connection to a collector on the main Dispatcher, one unary call at a
    time: `call(headers, message, timeout)`, then `exporter.call_done(ok)` exactly once.
    Cleartext (h2c), or TLS when `transport` (the cluster's transport_socket) is TLS: the
    workers' TLS client (proxy/network/client_transport_socket.py), ALPN h2, `:scheme https`,
    the handshake counted on the cluster's `ssl.*` through `stats` (a GrpcClientStats)."""

    def __init__(self, exporter, address: tuple[str, int], transport=None, stats=None) -> None:
        self.exporter = exporter
        self.closed = False
        self.connected = False
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        install_hpack(self.h2)
        self.h2.initiate_connection()
        self.stream_id = 0
        self.calling = False
        self.outbox = memoryview(b"")     # the message's bytes not yet sent (flow control)
        self._reset()
        self.timer = None
        self.secure = transport is not None and transport.implements_secure_transport
        if self.secure:
            bound = stats.transport(transport) if stats is not None else transport
            self.sock = TransportClientSocket(exporter.main, address, bound, self._on_connected,
                                              self._on_data, self._on_closed, alpn=("h2",))
        else:
            self.sock = ClientSocket(exporter.main, address, self._on_connected, self._on_data,
                                     self._on_closed)

    def _reset(self) -> None:
        self.status = 0
        self.grpc_status: bytes | None = None

    def call(self, headers: list, message: bytes, timeout: float) -> None:
        self._reset()
        self.calling = True
        self.stream_id = sid = self.h2.get_next_available_stream_id()
        self.outbox = memoryview(message)
        if self.secure:
            headers = [(k, b"https") if k == b":scheme" else (k, v) for k, v in headers]
        try:
            self.h2.send_headers(sid, headers)
            self._send_body()
        except H2Error as e:
            log.debug("otlp export: %s", e)
            self.close()
            self._finish(False)
            return
        self.timer = self.exporter.main.call_later(timeout, self._on_timeout)
        self._flush()

    def _send_body(self) -> None:
        """As much of the message as the peer's flow-control windows take, in frames of its
        maximum size; the rest when it opens them (WindowUpdated)."""
        h2c, sid = self.h2, self.stream_id
        out = self.outbox
        while out:
            n = min(len(out), h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if n <= 0:
                break
            h2c.send_data(sid, out[:n].tobytes(), end_stream=n == len(out))
            out = out[n:]
        self.outbox = out

    def _flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.sock.write(out)

    def _on_connected(self) -> None:
        self.connected = True

    def _on_data(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.close()
            self._finish(False)
            return
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, (h2events.ResponseReceived, h2events.TrailersReceived)) \
                    and sid == self.stream_id:
                for k, v in ev.headers:
                    if k == b":status":
                        self.status = int(v)
                    elif k == b"grpc-status":
                        self.grpc_status = v
            elif isinstance(ev, (h2events.WindowUpdated, h2events.RemoteSettingsChanged)):
                if self.calling and self.outbox:
                    try:
                        self._send_body()
                    except H2Error:
                        self.close()
                        self._finish(False)
                        return
            elif isinstance(ev, h2events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2events.StreamEnded) and sid == self.stream_id:
                self._finish(self.status == 200 and self.grpc_status == b"0")
            elif isinstance(ev, h2events.StreamReset) and sid == self.stream_id:
                self._finish(False)
            elif isinstance(ev, h2events.ConnectionTerminated):
                self.close()
                self._finish(False)
                return
        if not self.closed:
            self._flush()

    def _on_timeout(self) -> None:
        self.timer = None
        if not self.calling:
            return
        self.exporter.count("upstream_rq_timeout")
        try:
            self.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            self._flush()
        except H2Error:
            self.close()
        self._finish(False)

    def _on_closed(self) -> None:
        self.closed = True
        if not self.connected:
            self.exporter.count("upstream_cx_connect_fail")
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if not self.calling:
            return
        self.calling = False
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        if not ok:
            log.debug("otlp export failed (status %s, grpc-status %s)", self.status, self.grpc_status)
        self.exporter.call_done(ok)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
