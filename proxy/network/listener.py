"""Listen sockets and the per-worker accept loop.

`bind_listen_sockets` runs on the main thread before workers start: with `enable_reuse_port`
(Envoy's Linux default) one SO_REUSEPORT socket per worker, so the kernel balances accepts;
port 0 is resolved by the first bind and the rest bind the same port. `ActiveListener` is a
worker's view of one listener: it accepts on that worker's socket and hands each connection
to the filter chain's network filter (HCM or tcp_proxy) — a connection lives and dies there —
wrapped in a transport socket from the filter chain's `transport_socket` factory.
"""

from __future__ import annotations

import logging
import socket

from ..threads.dispatcher import READ
from ..threads.shared_count import SharedCount
from .transport_socket import downstream_transport_factory

__all__ = ["bind_listen_sockets", "ActiveListener"]

log = logging.getLogger("ftproxy.listener")

# Accepts per readiness event: bounded so that one busy listener cannot starve a worker's
# established connections (Envoy accepts in a loop too, one event per socket).
ACCEPT_BATCH = 64
BACKLOG = 1024


def bind_listen_sockets(address: str, port: int, count: int, reuse_port: bool,
                        backlog: int | None = None, *, name: str | None = None) -> list[socket.socket]:
    """`count` sockets (reuse_port) or one shared socket; non-blocking, inheritable for hot restart.

    A failed bind raises OSError (same errno) naming the listener and its address ("unable to
    bind listener "ingress" on 127.0.0.1:10000: Address already in use"): the bare errno text
    does not say which of a bootstrap's addresses is taken.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks: list[socket.socket] = []
    n = count if reuse_port else 1
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # Envoy's default (ipv4_compat false): "[::]" takes IPv6 only, whatever the
                # kernel's net.ipv6.bindv6only says.
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((address, port))
            except OSError as e:
                host = f"[{address}]" if family == socket.AF_INET6 else address
                what = f'listener "{name}"' if name else "listener"
                raise OSError(e.errno, f"unable to bind {what} on {host}:{port}: {e.strerror}") from None
            port = s.getsockname()[1]
            s.listen(backlog or BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class ActiveListener:
    def __init__(self, worker, config, sock: socket.socket, network_filter_ctx, shared: bool,
                 global_limit: tuple[SharedCount, int] | None = None,
                 listener_limit: tuple[SharedCount, int] | None = None) -> None:
        self.worker = worker
        self.config = config
        self.sock = sock
        self.ctx = network_filter_ctx
        self.shared = shared  # one socket registered in every worker (reuse_port off)
        self.buffer_limit = config.per_connection_buffer_limit_bytes
        scope = worker.stats.scope(f"listener.{config.stat_prefix}")
        # One filter chain per listener today (config/listener.py): its transport for all,
        # counting TLS stats as listener.<stat_prefix>.ssl.*.
        self.transport_factory = downstream_transport_factory(config.filter_chains[0]).for_worker(
            scope.scope("ssl"))
        self.cx_total = scope.counter("downstream_cx_total")
        self.cx_destroy = scope.counter("downstream_cx_destroy")
        self.cx_active = scope.gauge("downstream_cx_active")
        wscope = scope.scope(f"worker_{worker.index}")
        self.w_cx_total = wscope.counter("downstream_cx_total")
        self.w_cx_active = wscope.gauge("downstream_cx_active")
        # overload.global_downstream_max_connections: (the count of every listener, limit)
        self.global_limit = None if config.ignore_global_conn_limit else global_limit
        self.global_cx_overflow = scope.counter("downstream_global_cx_overflow")
        # envoy.resource_limits.listener.<name>.connection_limit: (this listener's count over
        # every worker, limit); over it, a connection is closed unread (downstream_cx_overflow).
        self.listener_limit = listener_limit
        self.cx_overflow = scope.counter("downstream_cx_overflow")
        self.accepting = False

    def start(self) -> None:
        self.worker.dispatcher.register(self.sock, READ, self._on_readable)
        self.accepting = True

    def stop(self, close_socket: bool = True) -> None:
        if self.accepting:
            self.worker.dispatcher.unregister(self.sock)
            self.accepting = False
        if close_socket and not self.shared:
            self.sock.close()

    def _on_readable(self, _mask: int) -> None:
        worker = self.worker
        for _ in range(ACCEPT_BATCH):
            try:
                sock, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("listener %s: accept failed: %s", self.config.name, e)
                return
            # As Envoy: the global limit first (the socket listener), then the listener's own
            # (ActiveTcpListener); either way the connection is closed at once, unread.
            if self.global_limit is not None and not self.global_limit[0].try_acquire(
                    self.global_limit[1]):
                self.global_cx_overflow.value += 1
                sock.close()
                continue
            if self.listener_limit is not None and not self.listener_limit[0].try_acquire(
                    self.listener_limit[1]):
                self.cx_overflow.value += 1
                if self.global_limit is not None:
                    self.global_limit[0].release()
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                local = sock.getsockname()
            except OSError:
                sock.close()
                self._release_limits()
                continue
            self.cx_total.value += 1
            self.cx_active.value += 1
            self.w_cx_total.value += 1
            self.w_cx_active.value += 1
            try:
                conn = self.ctx.new_connection(self.transport_factory.create(sock), remote[:2], local[:2],
                                               worker.next_connection_id(), self.buffer_limit, self._on_closed)
            except Exception:
                log.exception("listener %s: creating a connection failed", self.config.name)
                worker.unhandled_exceptions.value += 1
                sock.close()
                self._on_closed(None)
                continue
            if not getattr(conn, "finished", False) and not _closed(conn):
                worker.add_connection(conn)

    def _release_limits(self) -> None:
        if self.global_limit is not None:
            self.global_limit[0].release()
        if self.listener_limit is not None:
            self.listener_limit[0].release()

    def _on_closed(self, conn) -> None:
        self._release_limits()
        self.cx_active.value -= 1
        self.w_cx_active.value -= 1
        self.cx_destroy.value += 1
        if conn is not None:
            self.worker.connections.discard(conn)
            self.worker.on_connection_closed()


def _closed(conn) -> bool:
    c = getattr(conn, "connection", None) or getattr(conn, "downstream", None)
    return c is not None and c.closed
