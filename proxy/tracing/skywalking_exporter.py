"""SkyWalking segment export: a client-streaming gRPC call
(`/skywalking.v3.TraceSegmentReportService/collect`) kept open from the main thread to a host
of the `envoy_grpc` cluster, each finished request's segment one message on it, as Envoy's
TraceSegmentReporter does.

- Workers hand finished segments over in batches (exporter.SpanBatcher, shared with the other
  tracers); main encodes each (skywalking.encode_segment) and writes it to the stream at once.
- The stream is opened at start and, after it ends (the collector closed it, answered,
  reset it, or the connection failed), opened again after a jittered exponential back-off
  (RETRY_INITIAL 0.5 s doubling up to RETRY_MAX 30 s, Envoy's). While no stream is up,
  segments wait in a cache of `max_cache_size` (Envoy's 1024); past it the oldest is dropped.
  Once a stream is up the cache is flushed into it.
- Stats, Envoy's names (`tracing.skywalking.*`): `segments_sent` (every segment written to a
  stream), `segments_dropped` (pushed out of the full cache, or over MAX_OUTBOX when the
  collector does not read), `segments_flushed` (sent from the cache), `cache_flushed` (cache
  flushes). The collector cluster's `upstream_cx_total`, `upstream_cx_connect_fail` and
  `upstream_rq_total` (one per stream) count as Envoy's gRPC client charges them.
- Unlike Envoy (one stream per worker and per driver, the stream counted up as soon as it is
  started) one stream per tracer config, from main, counted up once its connection is made:
  a segment written before is cached, not lost.
- The stream's headers: `:authority` the envoy_grpc authority or the cluster's name,
  `initial_metadata`, and `authentication: <backend_token>` when one is set. No grpc-timeout:
  the stream is long-lived (Envoy sends none).

Thread affinity: `batcher_for` on any worker (under `_batchers_lock`); everything else on main.
"""

from __future__ import annotations

import collections
import logging
import random
import threading

from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error

from ..threads.client_socket import ClientSocket
from . import exporter as common
from .skywalking import encode_segment
from .sw8 import b64

__all__ = ["SkyWalkingExporter", "COLLECT_PATH"]

log = logging.getLogger("ftproxy.tracing")

COLLECT_PATH = b"/skywalking.v3.TraceSegmentReportService/collect"
DEFAULT_NAME = "EnvoyProxy"   # Envoy's service and instance name when nothing names them
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
MAX_OUTBOX = 4 * 1024 * 1024  # bytes written but not yet taken by a collector that stalls


class SkyWalkingExporter:
    def __init__(self, config, local, main, store, clusters) -> None:
        """`local`: this process's node (the default service and instance names, the
        node_id and zone tags); `main`: the main Dispatcher; `store`: the main stats store;
        `clusters()`: the cluster snapshots (main thread)."""
        self.config = config
        self.main = main
        self.store = store
        self.clusters = clusters
        self.node_id, self.zone = local.node_id, local.zone
        service = config.service_name or local.cluster or DEFAULT_NAME
        instance = config.instance_name or local.node_id or DEFAULT_NAME
        self.service, self.instance = service.encode(), instance.encode()
        self.sw8_names = (b64(self.service), b64(self.instance))  # read by the workers' tracers
        scope = store.scope("tracing.skywalking")
        self.cache_flushed = scope.counter("cache_flushed")
        self.segments_dropped = scope.counter("segments_dropped")
        self.segments_flushed = scope.counter("segments_flushed")
        self.segments_sent = scope.counter("segments_sent")
        self._cluster_stats: dict[str, object] = {}
        authority = (config.authority or config.cluster_name).encode()
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority),
                   (b":path", COLLECT_PATH), (b"content-type", b"application/grpc"),
                   (b"te", b"trailers")]
        headers.extend(config.initial_metadata)
        if config.backend_token:
            headers.append((b"authentication", config.backend_token.encode("latin-1")))
        self.request_headers = headers
        self.cache: collections.deque[bytes] = collections.deque()
        self.stream: SegmentStream | None = None
        self.ready = False
        self._next_host = 0
        self._retries = 0
        self._retry_timer = None
        self._closed = False
        self._rng = random.Random()
        self._batchers_lock = threading.Lock()  # guards _batchers (registered from workers)
        self._batchers: dict[int, common.SpanBatcher] = {}

    def count(self, name: str) -> None:
        c = self._cluster_stats.get(name)
        if c is None:
            c = self._cluster_stats[name] = self.store.scope(
                f"cluster.{self.config.cluster_name}").counter(name)
        c.inc()

    def batcher_for(self, worker) -> common.SpanBatcher:
        with self._batchers_lock:
            b = self._batchers.get(id(worker))
            if b is None:
                b = self._batchers[id(worker)] = common.SpanBatcher(self, worker.dispatcher)
            return b

    # -- main thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._open()

    def receive(self, spans: list) -> None:
        for span in spans:
            try:
                body = encode_segment(span, self.service, self.instance, self.node_id, self.zone)
            except Exception:  # a bug here must not stop the main loop
                log.exception("skywalking: a segment failed to encode")
                continue
            message = b"\x00" + len(body).to_bytes(4, "big") + body
            if self.ready and self.stream is not None:
                self._send(message)
                continue
            self.cache.append(message)
            if len(self.cache) > self.config.max_cache_size:
                self.cache.popleft()
                self.segments_dropped.inc()

    def _send(self, message: bytes) -> bool:
        if self.stream.send(message):
            self.segments_sent.inc()
            return True
        self.segments_dropped.inc()
        return False

    def _open(self) -> None:
        self._retry_timer = None
        if self._closed:
            return
        cluster = self.clusters().get(self.config.cluster_name)
        hosts = (cluster.lb_hosts or cluster.hosts) if cluster is not None else ()
        if not hosts:
            self._retry()   # Envoy: the stream fails at once; retried after the back-off
            return
        host = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        self.count("upstream_cx_total")
        self.count("upstream_rq_total")
        self.stream = SegmentStream(self, (host.address, host.port))

    def stream_ready(self, stream: SegmentStream) -> None:
        """The stream's connection is made: flush the cache into it."""
        if stream is not self.stream:
            return
        self.ready = True
        self._retries = 0
        if self.cache:
            cache, self.cache = self.cache, collections.deque()
            for message in cache:
                if self._send(message):
                    self.segments_flushed.inc()
            self.cache_flushed.inc()

    def stream_closed(self, stream: SegmentStream, connected: bool) -> None:
        if stream is not self.stream:
            return
        if not connected:
            self.count("upstream_cx_connect_fail")
        self.stream = None
        self.ready = False
        self._retry()

    def _retry(self) -> None:
        if self._closed or self._retry_timer is not None:
            return
        ceiling = min(RETRY_MAX, RETRY_INITIAL * (2 ** min(self._retries, 16)))
        self._retries += 1
        delay = self._rng.uniform(RETRY_INITIAL / 2, max(RETRY_INITIAL / 2, ceiling))
        self._retry_timer = self.main.call_later(delay, self._open)

    def close(self) -> None:
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.disable()
            self._retry_timer = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class SegmentStream:
    """One collect call on its own HTTP/2 (h2c) connection, on the main Dispatcher: the
    headers go out at once, `send(message)` writes one length-prefixed SegmentObject (as far
    as the peer's flow-control windows allow; the rest when they open), and the exporter
    hears `stream_ready` when connected and `stream_closed` exactly once when it ends."""

    def __init__(self, exporter: SkyWalkingExporter, address: tuple[str, int]) -> None:
        self.exporter = exporter
        self.closed = False
        self.connected = False
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self.stream_id, exporter.request_headers)
        self.outbox = bytearray()     # message bytes not yet sent (flow control)
        self.sock = ClientSocket(exporter.main, address, self._on_connected, self._on_data,
                                 self._on_closed)
        if not self.sock.closed:
            self._flush()

    def send(self, message: bytes) -> bool:
        """False (the message dropped) when the collector has not taken MAX_OUTBOX bytes."""
        if self.closed:
            return False
        if len(self.outbox) + len(message) > MAX_OUTBOX:
            return False
        self.outbox += message
        try:
            self._send_body()
        except H2Error as e:
            log.debug("skywalking stream: %s", e)
            self._end()
            return False
        self._flush()
        return True

    def _send_body(self) -> None:
        h2c, sid, out = self.h2, self.stream_id, self.outbox
        while out:
            n = min(len(out), h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if n <= 0:
                break
            h2c.send_data(sid, bytes(out[:n]))
            del out[:n]

    def _flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.sock.write(out)

    def _on_connected(self) -> None:
        self.connected = True
        self.exporter.stream_ready(self)

    def _on_data(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self._end()
            return
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, (h2events.WindowUpdated, h2events.RemoteSettingsChanged)):
                if self.outbox:
                    try:
                        self._send_body()
                    except H2Error:
                        self._end()
                        return
            elif isinstance(ev, h2events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2events.TrailersReceived) and sid == self.stream_id:
                log.debug("skywalking stream ended by the collector: %s", ev.headers)
            elif isinstance(ev, (h2events.StreamEnded, h2events.StreamReset)) and sid == self.stream_id:
                self._end()
                return
            elif isinstance(ev, h2events.ConnectionTerminated):
                self._end()
                return
        self._flush()

    def _on_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.exporter.stream_closed(self, self.connected)

    def _end(self) -> None:
        """The call is over (Envoy's onRemoteClose): close and tell the exporter."""
        if not self.closed:
            self.closed = True
            self.sock.close()
            self.exporter.stream_closed(self, True)

    def close(self) -> None:
        """The exporter is done with it (shutdown): end the call, close the connection."""
        if self.closed:
            return
        self.closed = True
        try:
            self.h2.end_stream(self.stream_id)
            self._flush()
        except H2Error:
            pass
        self.sock.close()
