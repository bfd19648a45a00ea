"""A client connection for the main thread's gRPC streams (proxy/xds/grpc_stream.py) over a
cluster's transport socket (TLS): `ClientSocket`'s interface (proxy/threads/client_socket.py)
on a `Connection` (connection.py) whose transport comes from the cluster's factory.

The TLS itself is the workers' (proxy/tls/transport_socket.py `TlsSocket`: the same context,
SNI, ALPN, verification, sessions and `ssl.*` stats); `Connection` drives its non-blocking
handshake, as it does for the workers' upstream connections. This class only adapts the
callbacks: `on_connected()` once the handshake is done (application bytes can flow),
`on_data(bytes)`, `on_closed()` once, after a failed connect or handshake too (then
`failure_reason` says why: Envoy's transport failure reason); `write`, `close` (no callback).

A plaintext cluster keeps `ClientSocket` (no `Connection`, no per-iteration flush): callers
choose by `factory.implements_secure_transport`.
Thread affinity: the dispatcher's thread only (main). Must not: know about gRPC or stats.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from .address import format_address
from .connection import Connection, ConnectionCallbacks

__all__ = ["TransportClientSocket"]


class TransportClientSocket(ConnectionCallbacks):
    """See the module docstring. `factory`: a transport socket factory bound to the caller's
    stats (`for_worker(scope)`); `alpn`: offered when the TLS context configures none."""

    __slots__ = ("connection", "connected", "closed", "_on_connected", "_on_data", "_on_closed")

    def __init__(self, dispatcher, address: tuple[str, int], factory, on_connected: Callable[[], None],
                 on_data: Callable[[bytes], None], on_closed: Callable[[], None],
                 alpn: tuple[str, ...] = ()) -> None:
        self._on_connected, self._on_data, self._on_closed = on_connected, on_data, on_closed
        self.connected = False
        self.closed = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = Connection(dispatcher, factory.create(sock, None, alpn), self,
                                     remote_address=format_address(address))
        # The caller's own timer bounds the connect and the handshake (`connected` turns True
        # only once the handshake is done), as the cluster's connect_timeout does in Envoy.
        self.connection.connect(address, 0)

    @property
    def failure_reason(self) -> str:
        """Why the transport failed (a TLS alert, a certificate check), or ""."""
        return self.connection.transport_failure_reason

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.connection.write(data)

    def close(self) -> None:
        """Close without reporting (our own close)."""
        if not self.closed:
            self.closed = True
            self.connection.close(flush=False)

    # -- ConnectionCallbacks ---------------------------------------------------------------------
    def on_connected(self) -> None:
        if self.closed:
            return
        self.connected = True
        self._on_connected()

    def on_data(self, data: bytes) -> None:
        if not self.closed:
            self._on_data(data)

    def on_eof(self) -> None:
        if not self.closed:
            self.connection.close(flush=False)   # on_close reports it

    def on_close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed()

    def on_above_write_watermark(self) -> None:
        pass   # GrpcStream bounds what it queues itself (flow control, its users' limits)

    def on_below_write_watermark(self) -> None:
        pass
