"""The cluster stats a main-thread gRPC client charges for its calls, as Envoy's gRPC client
(an HTTP/2 stream of the cluster's connection pool, through its router) charges them.

One `GrpcClientStats` per (store, cluster) user: the gRPC access-log streams
(proxy/access_log/grpc_log.py), the Metrics Service sink (metrics_service.py), the OpenTelemetry
span and log exporters (proxy/tracing/otlp_exporter.py, proxy/access_log/otel_log.py). A
`GrpcStream` (proxy/xds/grpc_stream.py) given one as its `stats` reports its call's life
through `GrpcCallStats`; the unary exporters call `count` themselves.

Per call, on `cluster.<name>.`:
- started (its connection is being made): `upstream_cx_total`, `upstream_cx_http2_total`,
  `upstream_rq_pending_total`; gauges `upstream_cx_active`, `upstream_rq_pending_active`.
- connected (the stream has its connection): `upstream_rq_total`, gauge `upstream_rq_active`.
- the answer's headers: `upstream_rq_completed`, `upstream_rq_<code>`, `upstream_rq_<class>xx`
  (Envoy's chargeBasicResponseStat, charged at the response headers).
- bytes: `upstream_cx_tx_bytes_total`, `upstream_cx_rx_bytes_total` as they go (what was
  written before the connection was up, once it is: a connection that fails sent nothing).
- failed before it connected: `upstream_cx_connect_fail`, `upstream_rq_pending_failure_eject`
  and the router's local 503 (completed, `upstream_rq_503`, `upstream_rq_5xx`).
- ended: the gauges back down, `upstream_cx_destroy`.
Over TLS, the cluster's `ssl.*` counters (`handshake`, `connection_error`, `fail_verify_*`,
`ciphers.*`, ...) are charged by the TLS socket itself: `transport(factory)` binds the
cluster's transport socket factory to `cluster.<name>.ssl` in this store, once per factory.
Difference from Envoy: each call here has its own connection (Envoy multiplexes a cluster's
calls on one pooled connection), so two streams count two connections.

Thread affinity: main thread only (the main store). Must not: be used from a worker.
"""

from __future__ import annotations

__all__ = ["GrpcClientStats", "GrpcCallStats"]


class GrpcClientStats:
    """One cluster's gRPC client counters in one store; stats are made on first use."""

    def __init__(self, store, cluster_name: str) -> None:
        self.scope = store.scope(f"cluster.{cluster_name}")
        self._counters: dict[str, object] = {}
        self._gauges: dict[str, object] = {}
        self._transport: tuple[object, object] | None = None   # (factory key, bound factory)

    def count(self, name: str, n: int = 1) -> None:
        """`n` more of the cluster's counter `name`."""
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = self.scope.counter(name)
        c.inc(n)

    def gauge(self, name: str, delta: int) -> None:
        g = self._gauges.get(name)
        if g is None:
            g = self._gauges[name] = self.scope.gauge(name)
        g.inc(delta) if delta > 0 else g.dec(-delta)

    def response(self, status: bytes | str) -> None:
        """The answer's :status (Envoy's chargeBasicResponseStat)."""
        code = status.decode("latin-1") if isinstance(status, bytes) else status
        self.count("upstream_rq_completed")
        if code.isdigit() and len(code) == 3:
            self.count(f"upstream_rq_{code[0]}xx")
            self.count(f"upstream_rq_{code}")

    def transport(self, factory):
        """`factory` (the cluster's transport_socket) bound to this cluster's `ssl.*` stats
        and TLS session cache here, made once and kept while the factory is the same."""
        kept = self._transport
        if kept is None or kept[0] != factory.key:
            kept = self._transport = (factory.key, factory.for_worker(self.scope.scope("ssl")))
        return kept[1]

    def call(self) -> GrpcCallStats:
        """The stats hook of one new call (a GrpcStream's `stats`); counts it started."""
        return GrpcCallStats(self)


class GrpcCallStats:
    """One call's life, reported by its GrpcStream (main thread)."""

    __slots__ = ("client", "connected", "ended", "unsent")

    def __init__(self, client: GrpcClientStats) -> None:
        self.client = client
        self.connected = False
        self.ended = False
        self.unsent = 0       # bytes written before the connection was up: counted once it is
        client.count("upstream_cx_total")
        client.count("upstream_cx_http2_total")
        client.count("upstream_rq_pending_total")
        client.gauge("upstream_cx_active", 1)
        client.gauge("upstream_rq_pending_active", 1)

    def transport(self, factory):
        """The cluster's transport factory bound to its ssl.* stats (GrpcClientStats.transport)."""
        return self.client.transport(factory)

    def on_connected(self) -> None:
        if self.connected or self.ended:
            return
        self.connected = True
        c = self.client
        c.gauge("upstream_rq_pending_active", -1)
        c.count("upstream_rq_total")
        c.gauge("upstream_rq_active", 1)
        if self.unsent:
            c.count("upstream_cx_tx_bytes_total", self.unsent)
            self.unsent = 0

    def on_response(self, status: bytes) -> None:
        self.client.response(status)

    def on_sent(self, n: int) -> None:
        if self.connected:
            self.client.count("upstream_cx_tx_bytes_total", n)
        else:
            self.unsent += n

    def on_received(self, n: int) -> None:
        self.client.count("upstream_cx_rx_bytes_total", n)

    def on_end(self) -> None:
        """The call and its connection are over (idempotent)."""
        if self.ended:
            return
        self.ended = True
        c = self.client
        if self.connected:
            c.gauge("upstream_rq_active", -1)
        else:
            # Envoy's router ejects the pending stream and answers it a local 503.
            c.gauge("upstream_rq_pending_active", -1)
            c.count("upstream_cx_connect_fail")
            c.count("upstream_rq_pending_failure_eject")
            c.response(b"503")
        c.gauge("upstream_cx_active", -1)
        c.count("upstream_cx_destroy")
