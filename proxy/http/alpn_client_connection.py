"""A mixed pool's upstream connection while it connects: the protocol is chosen by ALPN.

`auto_config` (Envoy's HttpProtocolOptions.AutoHttpConfig) lets a cluster speak HTTP/2 or
HTTP/1.1 to each host, whichever the TLS handshake negotiates. As Envoy's mixed pool
(HttpConnPoolImplMixed) does, the pool opens an `AlpnClientConnection`: it connects a socket
whose TLS transport offers ALPN "h2", "http/1.1" (or the UpstreamTlsContext's own
`alpn_protocols`, which win, as in Envoy), and once the handshake is done it reads the
negotiated protocol and hands its connected `Connection` to a connection of that protocol's
class (`Http2ClientConnection.adopt` for "h2"; `UpstreamHttpConnection.adopt` for
"http/1.1", any other protocol, or none: an old TLS stack that negotiates nothing likely
does not speak HTTP/2), which the pool puts in its place (`HttpConnPool.on_protocol_selected`)
before that connection's own `on_connected` (the HTTP/2 preface) runs. From then on this
object is out of the picture: no indirection per request, and the codecs and Connection are
the same as in a fixed pool.

Each connection decides for itself, as in Envoy. While it connects it counts, for the pool's
decision to open more connections, as offering the cluster's HTTP/2 max_concurrent_streams,
or what the pool learned of this host (1 once a connection negotiated HTTP/1.1; Envoy keeps
that in its per-origin HTTP server properties cache).

States (client_protocol's): CONNECTING -> CLOSED (a failed connect or handshake: the pool's
on_closed, as any connection's) or replaced (state CLOSED, capacity 0, no callback).
Thread affinity: the worker that owns its pool. Must not: take a stream (it never is READY).
"""

from __future__ import annotations

import socket
import time

from ..network.address import format_address
from ..network.connection import CloseReason, Connection, ConnectionCallbacks
from .codec.client_protocol import CLOSED, CONNECTING, PoolConnectionPredicates
from .codec_client import UpstreamHttpConnection
from .http2_client_connection import HTTP2, Http2ClientConnection

__all__ = ["AlpnClientConnection", "MIXED", "HTTP11"]

HTTP11 = "http/1.1"
# The pool key's protocol of a mixed pool: the ALPN list its connections offer.
MIXED = "h2,http/1.1"


class AlpnClientConnection(PoolConnectionPredicates, ConnectionCallbacks):
    """PoolConnection of a mixed pool until its protocol is known (see the module docstring)."""

    __slots__ = ("pool", "connection", "state", "capacity", "active_streams", "total_streams",
                 "idle_since", "holds_slot", "buffer_limit", "codec_impl", "connect_started",
                 "stats")

    # Counted when the protocol is known: upstream_cx_http2_total or upstream_cx_http1_total.
    cx_total_stat = None
    alpn = (HTTP2, HTTP11)  # Envoy's default for auto_config: "h2,http/1.1"

    def __init__(self, pool, dispatcher, address: tuple[str, int], connect_timeout: float,
                 buffer_limit: int, codec_impl: str, conn_id: int, transport_factory) -> None:
        self.pool = pool
        self.state = CONNECTING
        # What it will offer, as the pool counts it (Envoy: calculateInitialStreamsLimit).
        learned = pool.alpn_streams
        configured = pool.cluster.config.http2.max_concurrent_streams
        self.capacity = min(learned, configured) if learned else configured
        self.active_streams = self.total_streams = 0
        self.idle_since = 0.0
        self.holds_slot = False
        self.buffer_limit = buffer_limit
        self.codec_impl = codec_impl
        self.stats = pool.cluster.stats
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = Connection(dispatcher, transport_factory.create(sock, pool.host.hostname, self.alpn),
                                     self, buffer_limit=buffer_limit,
                                     remote_address=format_address(address), conn_id=conn_id)
        self.connect_started = time.monotonic()
        self.connection.connect(address, connect_timeout)

    # -- PoolConnection -------------------------------------------------------------------------
    def new_stream(self, callbacks):
        raise AssertionError("a connecting mixed-pool connection takes no stream")

    def close(self) -> None:
        self.connection.close(flush=False)

    # -- connection callbacks -------------------------------------------------------------------
    def on_connected(self) -> None:
        """The transport (TLS) is connected: its ALPN result chooses the protocol."""
        negotiated = self.connection.transport_socket.protocol()
        if negotiated == HTTP2:
            protocol, cls = HTTP2, Http2ClientConnection
        else:  # "http/1.1", another protocol, or none: HTTP/1.1 (Envoy's mixed pool)
            protocol, cls = HTTP11, UpstreamHttpConnection
        chosen = cls.adopt(self.pool, self.connection, self.buffer_limit, self.codec_impl,
                           self.connect_started)
        self.state = CLOSED  # replaced: the pool forgets it below
        self.capacity = 0
        self.pool.on_protocol_selected(self, chosen, protocol)
        chosen.on_connected()

    def on_data(self, data: bytes) -> None:
        # (Not expected: a transport hands application bytes only once connected, and then
        # they go to the chosen connection.) Bytes before any request: never reusable.
        self.connection.close(flush=False)

    def on_eof(self) -> None:
        self.connection.close(flush=False, reason=CloseReason.REMOTE)

    def on_close(self, reason: str) -> None:
        prev = self.state
        if prev == CLOSED:
            return
        self.state = CLOSED
        self.capacity = 0
        self.stats.upstream_cx_length_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        self.pool.on_closed(self, prev, reason, 0)

    def on_above_write_watermark(self) -> None:
        pass

    def on_below_write_watermark(self) -> None:
        pass
