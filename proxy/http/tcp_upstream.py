"""The upstream of a terminated CONNECT: a plain TCP connection carrying the tunnel's bytes.

Envoy's TcpUpstream / TcpConnPool (a route whose CONNECT upgrade config has `connect_config`):
the router asks the host's "tcp" pool for a stream as it would for HTTP; the pool opens a TCP
connection (through the cluster's transport socket factory); once it is up, the request head
is not written anywhere: `send_headers` answers the router at once with a 200 (the CONNECT's
answer, Envoy's synthesized response headers), and from then on the stream's bytes are the
connection's bytes both ways. The request's end (HTTP/2 END_STREAM, the client's FIN) is a
half-close (FIN) upstream; the upstream's FIN ends the response (the tunnel then closes, as
Envoy's does); a connection never carries a second tunnel.

A `PoolConnection` (codec/client_protocol.py) of capacity 1 that is its own `UpstreamStream`,
as the HTTP/1.1 connection is; registered in conn_pool.CLIENT_CONNECTIONS as TCP.
Thread affinity: the worker that owns its pool. Must not: parse the bytes it carries.
"""

from __future__ import annotations

import socket
import time

from ..network.address import format_address
from ..network.connection import CloseReason, Connection, ConnectionCallbacks
from .codec.client_protocol import CLOSED, CONNECTING, PoolConnectionPredicates
from .codec.events import ResponseHeaders
from .codec_client import lost_stream_reset, transport_failure

__all__ = ["TcpUpstreamConnection", "TCP"]

TCP = "tcp"  # its pools' PoolKey protocol


class TcpUpstreamConnection(PoolConnectionPredicates, ConnectionCallbacks):
    """PoolConnection (capacity 1, never reused) and, while it serves a router, that router's
    UpstreamStream."""

    __slots__ = ("pool", "connection", "router", "state", "capacity", "active_streams",
                 "total_streams", "holds_slot", "stats", "idle_since", "connect_started",
                 "write_shut")

    cx_total_stat = None  # no HTTP codec: neither upstream_cx_http1_total nor _http2_total
    alpn = ()

    def __init__(self, pool, dispatcher, address: tuple[str, int], connect_timeout: float,
                 buffer_limit: int, codec_impl: str, conn_id: int, transport_factory) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pool = pool
        self.connection = Connection(dispatcher, transport_factory.create(sock, pool.host.hostname, self.alpn),
                                     self, buffer_limit=buffer_limit,
                                     remote_address=format_address(address), conn_id=conn_id)
        self.router = None
        self.state = CONNECTING
        self.capacity = 1
        self.active_streams = 0
        self.total_streams = 0
        self.holds_slot = False
        self.stats = pool.cluster.stats
        self.idle_since = 0.0
        self.connect_started = time.monotonic()
        self.write_shut = False
        self.connection.connect(address, connect_timeout)

    # -- PoolConnection ---------------------------------------------------------------------
    def new_stream(self, router) -> TcpUpstreamConnection:
        self.router = router
        self.capacity = 0
        self.active_streams = 1
        self.total_streams += 1
        return self

    def close(self) -> None:
        self.connection.close(flush=False)

    # -- UpstreamStream -----------------------------------------------------------------------
    @property
    def local_address(self) -> str:
        return self.connection.local_address

    @property
    def ssl(self):
        return self.connection.transport_socket.ssl()

    def send_headers(self, head, end_stream: bool, upgrade: bool) -> None:
        """The connection is up: the CONNECT is answered 200 (nothing is written upstream).
        `end_stream` (a CONNECT with no body, Envoy's "buggy headers" case): a half-close."""
        router = self.router
        if router is not None:
            router.on_upstream_headers(ResponseHeaders(200, b"OK", b"1.1", [], True, None, False))
        if end_stream:
            self.shutdown_write()

    def send_data(self, data: bytes) -> None:
        if data and not self.write_shut:
            self.stats.upstream_cx_tx_bytes_total.value += len(data)
            self.connection.write(data)

    def end(self, trailers) -> None:
        """The request's end: the tunnel's half-close (trailers have nowhere to go)."""
        self.shutdown_write()

    def shutdown_write(self) -> None:
        if not self.write_shut:
            self.write_shut = True
            self.connection.shutdown_write()

    def read_disable(self, disable: bool) -> None:
        self.connection.read_disable(disable)

    def release(self, reusable: bool) -> None:
        """The router is done: a tunnel's connection is never reused; what was written still
        goes out before it closes."""
        self.router = None
        if not self.active_streams:
            return
        self.active_streams = 0
        self.pool.on_stream_done(self)  # capacity stays 0
        self.connection.close(flush=True)

    def reset(self) -> None:
        self.router = None
        if self.active_streams:
            self.active_streams = 0
            self.pool.on_stream_done(self)
        self.connection.close(flush=False)

    # -- connection callbacks -------------------------------------------------------------------
    def on_connected(self) -> None:
        self.stats.upstream_cx_connect_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        self.idle_since = time.monotonic()
        self.pool.on_connected(self)

    def on_data(self, data: bytes) -> None:
        self.stats.upstream_cx_rx_bytes_total.value += len(data)
        router = self.router
        if router is not None:
            router.on_upstream_data(data)

    def on_eof(self) -> None:
        """The upstream's FIN: the tunnel's response ends (the router releases us: closed)."""
        router = self.router
        if router is not None:
            router.on_upstream_complete(None)
        if not self.connection.closed:
            self.connection.close(flush=True, reason=CloseReason.REMOTE)

    def on_close(self, reason: str) -> None:
        prev = self.state
        self.state = CLOSED
        self.stats.upstream_cx_length_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        router = self.router
        self.router = None
        lost = self.active_streams
        self.active_streams = 0
        self.capacity = 0
        self.pool.on_closed(self, prev, reason, lost)
        if router is not None:
            reset_reason, flag = lost_stream_reset(reason)
            router.on_upstream_reset(reset_reason, flag,
                                     transport_failure=transport_failure(self.connection))

    def on_above_write_watermark(self) -> None:
        if self.router is not None:
            self.router.on_upstream_watermark(True)

    def on_below_write_watermark(self) -> None:
        if self.router is not None:
            self.router.on_upstream_watermark(False)
