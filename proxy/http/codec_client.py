"""Upstream HTTP/1.1 connection: a client Connection plus a client codec, one request at a time.

A `PoolConnection` (codec/client_protocol.py) with capacity 1: 1 while idle in the pool, 0
while it serves a request. A connection that takes one stream at a time is its own stream: it
is also the `UpstreamStream` the router holds (no object per request). The pool decides; this
object answers predicates and forwards codec events to the router that holds it.
States (`state`, client_protocol's): CONNECTING -> READY (idle in the pool) <-> BUSY (serving
one router) -> CLOSED.
Thread affinity: the worker that owns its pool.
"""

from __future__ import annotations

import os
import socket
import time

from ..network.address import format_address
from ..network.connection import CloseReason, Connection, ConnectionCallbacks
from .codec import make_client_codec
from .codec.client_protocol import CLOSED, CONNECTING, PoolConnectionPredicates
from .codec.errors import CodecError
from .codec.events import END_OF_MESSAGE, Data, Informational, MessageComplete, ResponseHeaders

__all__ = ["UpstreamHttpConnection", "lost_stream_reset"]

# Envoy 1.40's reset reasons: a refused (or otherwise failed) connect is a "remote connection
# failure", whose transport failure reason is "delayed_connect_error: <strerror>".
_RESET_REASON = {
    CloseReason.CONNECT_FAILED: ("remote connection failure", "UF"),
    CloseReason.CONNECT_TIMEOUT: ("connection timeout", "UF"),
}


def transport_failure(connection) -> str:
    """Envoy's upstream transport failure reason for a connection that failed: its connect's
    errno ("delayed_connect_error: <strerror>"), else what its transport socket said (a TLS
    handshake or verification failure), else ""."""
    errno = connection.connect_errno
    if errno:
        return f"delayed_connect_error: {os.strerror(errno)}"
    return connection.transport_failure_reason


def lost_stream_reset(close_reason: str) -> tuple[str, str]:
    """Envoy's reset reason and response flag for a stream that ended with its upstream
    connection (closed for `close_reason`): every client connection class says it so."""
    return _RESET_REASON.get(close_reason, ("connection termination", "UC"))


class UpstreamHttpConnection(PoolConnectionPredicates, ConnectionCallbacks):
    """PoolConnection (capacity 1) and, while it serves a router, that router's UpstreamStream."""

    __slots__ = ("pool", "connection", "codec", "router", "state", "capacity", "active_streams",
                 "total_streams", "response_done", "tunnel", "upgrade_requested", "holds_slot",
                 "stats", "idle_since", "connect_started", "trailers")

    cx_total_stat = "upstream_cx_http1_total"
    alpn = ("http/1.1",)  # offered over TLS when the context configures none (Envoy's fallback)

    def __init__(self, pool, dispatcher, address: tuple[str, int], connect_timeout: float,
                 buffer_limit: int, codec_impl: str, conn_id: int, transport_factory) -> None:
        """`transport_factory`: the cluster's TransportSocketFactory (its key is in the pool's)."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(dispatcher, transport_factory.create(sock, pool.host.hostname, self.alpn),
                                self, buffer_limit=buffer_limit,
                                remote_address=format_address(address), conn_id=conn_id)
        self._setup(pool, connection, codec_impl, time.monotonic())
        connection.connect(address, connect_timeout)

    @classmethod
    def adopt(cls, pool, connection: Connection, buffer_limit: int, codec_impl: str,
              connect_started: float) -> UpstreamHttpConnection:
        """The seam of a mixed (ALPN) pool (alpn_client_connection.py): a connection of this
        class on `connection`, whose transport is connected (ALPN chose HTTP/1.1). It becomes
        the connection's callbacks; its `on_connected()` is called next, by its maker."""
        self = cls.__new__(cls)
        self._setup(pool, connection, codec_impl, connect_started)
        connection.callbacks = self
        return self

    def _setup(self, pool, connection: Connection, codec_impl: str, connect_started: float) -> None:
        self.pool = pool
        self.connection = connection
        self.codec = make_client_codec(codec_impl)
        self.router = None
        self.state = CONNECTING
        self.capacity = 1
        self.active_streams = 0
        self.total_streams = 0
        self.response_done = True  # no response outstanding
        self.tunnel = False
        self.upgrade_requested = False  # the request in flight asked to switch protocols
        self.holds_slot = False
        # upstream_cx_{rx,tx}_bytes_total count as bytes are read and written (tx: queued).
        self.stats = pool.cluster.stats
        self.idle_since = 0.0  # when it last went back to the pool (cluster idle_timeout)
        self.connect_started = connect_started  # for cluster.<name>.upstream_cx_connect_ms
        # Trailers both ways only with the cluster's http_protocol_options.enable_trailers
        # (Envoy's HTTP/1.1 codec drops them otherwise).
        self.trailers = pool.cluster.config.http1_enable_trailers

    # -- PoolConnection (used by the pool) --------------------------------------------------------
    def new_stream(self, router) -> UpstreamHttpConnection:
        """Its one stream is itself."""
        self.router = router
        self.capacity = 0
        self.active_streams = 1
        self.total_streams += 1
        return self

    def close(self) -> None:
        self.connection.close(flush=False)

    # -- UpstreamStream (used by the router) ------------------------------------------------------
    @property
    def local_address(self) -> str:
        return self.connection.local_address

    @property
    def ssl(self):
        """What the TLS handshake established (TlsInfo), None for plaintext."""
        return self.connection.transport_socket.ssl()

    def send_headers(self, head, end_stream: bool, upgrade: bool) -> None:
        """`upgrade`: the request asks to switch protocols (only then may a 101 answer it)."""
        self.response_done = False
        self.upgrade_requested = upgrade
        if end_stream:
            chunked = False
        else:  # a body of unknown length is sent chunked (a tunnel's bytes go as they are)
            headers = head.headers
            chunked = headers.has(b"transfer-encoding") or (
                not upgrade and not headers.has(b"content-length"))
        data = self.codec.encode_request_head(head.method, head.path, head.headers.fields,
                                              chunked, head.authority, end_stream)
        self.stats.upstream_cx_tx_bytes_total.value += len(data)
        self.connection.write(data)

    def send_data(self, data: bytes) -> None:
        data = self.codec.encode_body(data)
        self.stats.upstream_cx_tx_bytes_total.value += len(data)
        self.connection.write(data)

    def end(self, trailers) -> None:
        data = self.codec.encode_end(trailers if self.trailers else None)
        if data:
            self.stats.upstream_cx_tx_bytes_total.value += len(data)
            self.connection.write(data)

    def shutdown_write(self) -> None:
        self.connection.shutdown_write()

    def read_disable(self, disable: bool) -> None:
        self.connection.read_disable(disable)

    def release(self, reusable: bool) -> None:
        """The router is done: back to the pool if the exchange ended cleanly, else close."""
        self.router = None
        if not self.active_streams:
            return
        self.active_streams = 0
        if reusable and self.response_done and not self.tunnel and self.codec.error is None:
            self.capacity = 1
            self.idle_since = time.monotonic()
            self.pool.on_stream_done(self)
            return
        self.pool.on_stream_done(self)  # capacity stays 0: it takes no other stream
        self.connection.close(flush=False)

    def reset(self) -> None:
        """HTTP/1.1 cannot end one exchange alone: the connection closes."""
        self.release(False)

    # -- connection callbacks ----------------------------------------------------------------------
    def on_connected(self) -> None:
        # Envoy's upstream_cx_connect_ms: connect start to the transport being connected.
        self.stats.upstream_cx_connect_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        self.idle_since = time.monotonic()
        self.pool.on_connected(self)

    def on_data(self, data: bytes) -> None:
        self.stats.upstream_cx_rx_bytes_total.value += len(data)
        router = self.router
        try:
            events = self.codec.feed(data)
        except CodecError as e:
            self._fail("protocol error", "UPE", 502, e)
            return
        n = len(events)
        if (n == 3 or n == 2) and events[-1] is END_OF_MESSAGE and router is not None \
                and type(events[0]) is ResponseHeaders:
            # The usual response: head, body (if any) and end in one read, in one call. (Such
            # a head is never a 101: a tunnel has no end.)
            self.response_done = True
            router.on_upstream_headers(events[0], events[1].data if n == 3 else b"")
            return
        for ev in events:
            router = self.router
            if router is None:
                # Bytes with no request outstanding (or after we gave up): not reusable.
                self.connection.close(flush=False)
                return
            cls = type(ev)
            if cls is Data:
                router.on_upstream_data(ev.data)
            elif cls is ResponseHeaders:
                if ev.status == 101:
                    if not self.upgrade_requested:
                        # RFC 9110 §15.2.2: a 101 answers only a request that asked to upgrade;
                        # what follows it would reach the client as raw bytes.
                        self._fail("protocol error", "UPE", 502, None)
                        return
                    self.tunnel = True
                router.on_upstream_headers(ev)
            elif cls is MessageComplete:
                self.response_done = True
                router.on_upstream_complete(ev.trailers if self.trailers else None)
            elif cls is Informational:
                pass  # 100-continue was answered by the connection manager already
        if not events and self.codec.error is not None and not self.connection.closed:
            self.connection.close(flush=False)  # bytes nobody asked for: never reuse it

    def on_eof(self) -> None:
        router = self.router
        if router is not None:
            try:
                events = self.codec.feed(b"")
            except CodecError:
                events = None
            if events:
                self.on_data_events(events)
        self.connection.close(flush=False, reason=CloseReason.REMOTE)

    def on_data_events(self, events) -> None:
        for ev in events:
            router = self.router
            if router is None:
                return
            if type(ev) is Data:
                router.on_upstream_data(ev.data)
            elif type(ev) is MessageComplete:
                self.response_done = True
                router.on_upstream_complete(ev.trailers if self.trailers else None)

    def on_close(self, reason: str) -> None:
        prev = self.state
        self.state = CLOSED
        # Envoy's upstream_cx_length_ms: the connection's life, from its connect to its close.
        self.stats.upstream_cx_length_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        router = self.router
        self.router = None
        lost = self.active_streams
        self.active_streams = 0
        self.capacity = 0
        self.pool.on_closed(self, prev, reason, lost)
        if router is not None:
            reset_reason, flag = lost_stream_reset(reason)
            router.on_upstream_reset(reset_reason, flag, reused=self.total_streams > 1,
                                     transport_failure=transport_failure(self.connection))

    def on_above_write_watermark(self) -> None:
        if self.router is not None:
            self.router.on_upstream_watermark(True)

    def on_below_write_watermark(self) -> None:
        if self.router is not None:
            self.router.on_upstream_watermark(False)

    def _fail(self, reason: str, flag: str, status: int, err: Exception) -> None:
        router = self.router
        self.router = None
        self.connection.close(flush=False)
        if router is not None:
            router.on_upstream_reset(reason, flag, status)
