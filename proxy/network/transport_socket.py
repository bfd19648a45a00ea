"""Transport sockets: the only code that touches a connected socket (Envoy's TransportSocket).

A `Connection` (connection.py) owns exactly one transport socket and does every byte of its
I/O through it; it never learns which implementation it has. `raw_buffer` (`RawBufferSocket`,
plaintext: the bytes on the wire are the application's bytes) is the one implementation here;
TLS (pyOpenSSL in memory-BIO mode) is the second one and plugs in as a `TransportSocketFactory`
registered under its Envoy name, with no change to `Connection`.

Contract of the seam (`TransportSocket`, `TransportSocketCallbacks`):
- Ownership: the transport socket owns the socket from `TransportSocketFactory.create(sock)` on;
  `close()` closes it. Nothing else reads, writes, connects, shuts down or closes it — except
  a zero-copy relay (splice_relay.py) given `raw_socket`, which only raw_buffer exposes.
- Thread affinity: the worker of its Connection, like the Connection itself; nothing here is
  shared between threads or locked. Factories are immutable and shared by every worker.
- Who calls whom: `Connection` calls the transport (`set_callbacks` once, then `connect`,
  `connect_error`, `on_connected`, `do_read`, `do_write`, `shutdown_write`, `close`, and the
  read-only `protocol()`, `ssl()`, `failure_reason`, `local_address()`). The transport calls
  back only through the `TransportSocketCallbacks` it was handed (`raise_connected`,
  `set_transport_interest`, `set_transport_readable`); it never calls the Connection's owner.
- Connected: after `on_connected` the transport calls `raise_connected()` once it carries
  application bytes (raw_buffer: at once, from inside `on_connected`; TLS: when the handshake
  is done, from inside a `do_read`/`do_write`). Only then is the Connection's owner told
  (`on_connected`, on accepted connections too: a pool may hand the connection out,
  `protocol()` and `ssl()` are final) and the connect timeout stopped. Bytes written before
  that wait in the Connection.
- Re-entrancy: callbacks may be called from inside `on_connected`/`do_read`/`do_write`.
  `set_transport_interest` and `set_transport_readable` only record the request and update
  the dispatcher registration (a read is re-driven from a deferred call); `raise_connected`
  runs the owner's `on_connected`, which may `write()` (queued: the transport is not re-entered
  until the end of the loop iteration) or close the Connection (the transport then sees
  `close()` before its own call returns, and must not touch the socket after that).
  `close()` must not call any callback.
- Interest: the Connection registers READ while its owner reads and WRITE while it has bytes
  queued. A transport that needs more for its own protocol (TLS: READ to finish a handshake
  while a write waits, WRITE to flush a handshake reply produced while reading) says so with
  `set_transport_interest(mask)`; while that mask is non-zero it *replaces* the Connection's
  own wait-for-writability (a write the transport cannot take yet must not spin on an
  always-writable socket), and the Connection calls `do_read` on READ and `do_write` (maybe
  with nothing queued) on WRITE. While the owner has reading disabled, a READ the transport
  asked for is served with `do_read(0)`: advance the protocol, keep application bytes, and
  call `set_transport_readable()` when bytes are held that the socket will not signal again.
- Errors: `on_connected`/`do_read`/`do_write` raise `OSError` for a fatal error (a socket
  error, or a protocol failure the transport describes in `failure_reason`); the Connection
  closes (reason "remote"; "connect_failure" from a client's `on_connected`). `connect`
  returns an errno instead. Waiting is not an error: `do_read` raises `BlockingIOError`,
  `do_write` returns fewer bytes than offered.

Hot path: `do_read` is called once per readable event and `do_write` once per flush, one
call each. raw_buffer's `do_read` *is* the socket's `recv` (no Python frame in between), and
its `do_write` is one frame choosing send/sendmsg.
Must not: know about stats, clusters, codecs or the Connection's owner.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from itertools import islice
from typing import Any, Protocol

from ..config.reader import ConfigError, Fields
from ..config.registry import Extension, register, resolve
from ..threads.dispatcher import READ, WRITE

__all__ = ["TransportSocket", "TransportSocketCallbacks", "TransportSocketFactory", "RawBufferSocket",
           "RawBufferSocketFactory", "RAW_BUFFER", "RAW_BUFFER_NAME", "READ", "WRITE",
           "parse_transport_socket", "downstream_transport_factory", "upstream_transport_factory",
           "DOWNSTREAM", "UPSTREAM"]

_IOV_MAX = 1024  # Linux limit on buffers per sendmsg
# Up to this many queued bytes are joined and sent with one `send`: `sendmsg` costs ~2,700 more
# instructions per call in CPython (argument parsing, the iovec) than copying a small response.
_JOIN_MAX = 16 * 1024


class TransportSocketCallbacks(Protocol):
    """What a transport socket may ask of its Connection (which implements this)."""

    def raise_connected(self) -> None:
        """The transport is ready for application bytes (raw_buffer: from `on_connected`
        itself; TLS: once the handshake is done). The Connection then tells its owner
        (`on_connected`) and stops its connect timer."""

    def set_transport_interest(self, mask: int) -> None:
        """READ/WRITE bits the transport needs for its own progress, until it sets another
        mask (0: none; the Connection's own interest rules alone apply again)."""

    def set_transport_readable(self) -> None:
        """The transport holds bytes for the owner that the socket will not signal again
        (TLS: plaintext decrypted beyond `max_bytes`, or while reading was disabled): the
        Connection calls `do_read` again from a deferred call, once reading is enabled."""


class TransportSocket(Protocol):
    """One connected (or connecting) socket's I/O. See the module docstring for the contract."""

    fd: int                                # what the Connection registers with its dispatcher
    connect_timeout: float                 # accepted sockets: seconds to become connected
    #                                        (a filter chain's transport_socket_connect_timeout;
    #                                        0: none), else the Connection closes it
    raw_socket: socket.socket | None       # set only when the wire bytes ARE the application's
    #                                        bytes (raw_buffer): a relay may splice(2) them
    failure_reason: str                    # why the transport failed ("" if it did not)

    def set_callbacks(self, callbacks: TransportSocketCallbacks) -> None:
        """Called once, by the Connection's constructor."""

    def connect(self, address: tuple[str, int]) -> int:
        """Start a non-blocking connect; returns an errno (0 or EINPROGRESS: under way)."""

    def connect_error(self) -> int:
        """After the socket turned writable while connecting: 0, or the connect's errno."""

    def on_connected(self) -> None:
        """The TCP connection is up (client: connect completed; server: accepted, called by
        `Connection.start()`). TLS starts its handshake here."""

    def do_read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` application bytes; b"" is the peer's end of stream. Raises
        BlockingIOError when there is nothing for the owner now."""

    def do_write(self, buffers: deque, size: int) -> int:
        """Write from the front of `buffers` (`size` bytes in all, maybe 0); returns how many
        bytes it took. Taking fewer than `size` means: wait (for writability, or for the
        interest the transport asked for) and offer the rest again. Never mutates `buffers`."""

    def shutdown_write(self) -> None:
        """Half-close once everything was written (raw: FIN; TLS: close_notify, then FIN)."""

    def close(self) -> None:
        """Close the socket (idempotent); no callback is called."""

    def local_address(self) -> tuple[str, int]:
        """The socket's own address (raises OSError if it is gone)."""

    def protocol(self) -> str | None:
        """The negotiated application protocol (ALPN, e.g. "h2"); None without one."""

    def ssl(self) -> Any | None:
        """TLS connection info (peer certificate, cipher, SNI); None for plaintext."""


class TransportSocketFactory(Protocol):
    """Creates the transport socket of each new connection of a listener's filter chain or of
    a cluster. Immutable after construction; shared by every worker."""

    name: str                              # the Envoy extension name
    implements_secure_transport: bool      # TLS: True; raw_buffer: False
    key: Hashable                          # equal keys create interchangeable sockets: part of
    #                                        the upstream connection pool's key

    def create(self, sock: socket.socket, server_name: str | None = None,
               alpn_fallback: tuple[str, ...] = ()) -> TransportSocket:
        """A transport socket owning `sock` (connected, or about to be connected).
        `server_name`: an upstream host's name (its DNS name or endpoint hostname), which TLS
        sends as SNI under `auto_host_sni`; ignored by raw_buffer and downstream.
        `alpn_fallback`: the application protocols an upstream HTTP pool speaks (Envoy's ALPN
        fallback: "http/1.1", "h2", or both for auto_config), which TLS offers when its
        context configures no `alpn_protocols`; ignored by raw_buffer and downstream."""

    def for_worker(self, scope: Any) -> TransportSocketFactory:
        """This factory as one worker uses it: its sockets count the transport's stats under
        `scope` (TLS: `<listener or cluster scope>.ssl.*`; the worker's own store) and keep
        per-worker state (TLS: upstream sessions to resume). raw_buffer: itself."""


# -- raw_buffer ------------------------------------------------------------------------------

class RawBufferSocket:
    """Plaintext: application bytes go to and come from the socket unchanged. It never asks
    for interest of its own, so the Connection's rules alone decide what it waits for."""

    __slots__ = ("raw_socket", "fd", "do_read", "callbacks")
    failure_reason = ""  # raw_buffer has no failure of its own: socket errors are OSErrors
    connect_timeout = 0.0  # connected as soon as accepted

    def __init__(self, sock: socket.socket) -> None:
        self.raw_socket = sock
        self.fd = sock.fileno()
        # do_read is recv itself: same contract (bytes, b"" at EOF, BlockingIOError when
        # nothing is there, OSError on failure), and no Python frame per read.
        self.do_read: Callable[[int], bytes] = sock.recv
        self.callbacks: TransportSocketCallbacks | None = None

    def set_callbacks(self, callbacks: TransportSocketCallbacks) -> None:
        self.callbacks = callbacks

    def connect(self, address: tuple[str, int]) -> int:
        return self.raw_socket.connect_ex(address)

    def connect_error(self) -> int:
        return self.raw_socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def on_connected(self) -> None:
        self.callbacks.raise_connected()  # nothing to set up: application bytes flow now

    def do_write(self, buffers: deque, size: int) -> int:
        sock = self.raw_socket
        try:
            if len(buffers) == 1:
                return sock.send(buffers[0])
            if size <= _JOIN_MAX:
                return sock.send(b"".join(buffers))
            if len(buffers) <= _IOV_MAX:
                return sock.sendmsg(buffers)
            return sock.sendmsg(list(islice(buffers, _IOV_MAX)))
        except (BlockingIOError, InterruptedError):
            return 0

    def shutdown_write(self) -> None:
        try:
            self.raw_socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already: the next read or write reports it

    def close(self) -> None:
        try:
            self.raw_socket.close()
        except OSError:
            pass

    def local_address(self) -> tuple[str, int]:
        return self.raw_socket.getsockname()[:2]

    def protocol(self) -> str | None:
        return None

    def ssl(self) -> Any | None:
        return None


class RawBufferSocketFactory:
    __slots__ = ()
    name = "envoy.transport_sockets.raw_buffer"
    implements_secure_transport = False
    key = ("envoy.transport_sockets.raw_buffer",)

    def create(self, sock: socket.socket, server_name: str | None = None,
               alpn_fallback: tuple[str, ...] = ()) -> RawBufferSocket:
        return RawBufferSocket(sock)

    def for_worker(self, scope: Any) -> RawBufferSocketFactory:
        return self

    def __repr__(self) -> str:
        return "RawBufferSocketFactory()"


RAW_BUFFER_NAME = RawBufferSocketFactory.name
RAW_BUFFER = RawBufferSocketFactory()

# -- choosing a factory from config ----------------------------------------------------------

# A `transport_socket` (Envoy's `config.core.v3.TransportSocket`: `name` + `typed_config`) is
# resolved through proxy.config.registry like any extension, in one of two categories: the
# same name (`envoy.transport_sockets.tls`) has a downstream config (DownstreamTlsContext, a
# listener's filter chain) and an upstream one (UpstreamTlsContext, a cluster). An extension's
# `factory(config, name)` builds the TransportSocketFactory once, at load, on the main thread:
# TLS contexts are made there (a bad certificate is a config error), and workers share them.
DOWNSTREAM = "downstream_transport_socket"
UPSTREAM = "upstream_transport_socket"
RAW_BUFFER_PROTO = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"


def _parse_raw_buffer(raw: Mapping[str, Any], path: str) -> None:
    Fields(raw, path, ())  # RawBuffer has no fields
    return None


for _category in (DOWNSTREAM, UPSTREAM):
    register(Extension(category=_category, name=RAW_BUFFER_NAME, proto=RAW_BUFFER_PROTO,
                       parse=_parse_raw_buffer, empty_config_ok=True,
                       factory=lambda _config, _name, **_options: RAW_BUFFER))


def parse_transport_socket(raw: Any, path: str, category: str, **options: Any) -> TransportSocketFactory:
    """The factory for the `transport_socket` message at `path` (raw_buffer when absent, as in
    Envoy). `category`: DOWNSTREAM or UPSTREAM. `options` go to the extension's factory
    (a filter chain's `connect_timeout`). Raises ConfigError naming the field."""
    if raw is None:
        return RAW_BUFFER
    ext, config = resolve(category, raw, path)
    try:
        return ext.factory(config, ext.name, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(path, str(e)) from None


def downstream_transport_factory(filter_chain: Any) -> TransportSocketFactory:
    """The transport of connections accepted on a listener's filter chain (built at load)."""
    return filter_chain.transport_socket


def upstream_transport_factory(cluster_config: Any) -> TransportSocketFactory:
    """The transport of a cluster's upstream connections (built at load)."""
    return cluster_config.transport_socket
