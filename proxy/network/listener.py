"""Listen sockets and the per-worker accept loop.

`bind_listen_sockets` runs on the main thread before workers start: with `enable_reuse_port`
(Envoy's Linux default) one SO_REUSEPORT socket per worker, so the kernel balances accepts;
port 0 is resolved by the first bind and the rest bind the same port. `ActiveListener` is a
worker's view of one listener: it accepts on that worker's socket, runs the listener filters
on each accepted socket (active_socket.py; none configured: straight on), chooses its filter
chain (filter_chain_match.py: no match closes it, `no_filter_chain_match`), and hands it to
that chain's network filters and terminal (HCM or tcp_proxy) — a connection lives and dies
there — wrapped in a transport socket from that chain's `transport_socket` factory, with a
`DownstreamInfo` (connection_info.py) of what the listener found. Per connection, Envoy's
listener accounting: `downstream_cx_*`, the `downstream_cx_length_ms` and
`connections_accepted_per_socket_event` histograms, and the listener's access logs
(listener_access_log.py: at close, at no match, when the listener filters close the socket).
"""

from __future__ import annotations

import logging
import socket
import time

from ..threads.dispatcher import READ
from ..threads.shared_count import SharedCount
from .active_socket import ActiveSocket
from .connection import CloseReason
from .connection_info import DownstreamInfo
from .filter_chain_match import FilterChainMatcher
from .listener_access_log import (accepted, log_closed, log_rejected, log_unmatched,
                                  note_listener_filters)
from .transport_socket import downstream_transport_factory

__all__ = ["bind_listen_sockets", "ActiveListener", "ActiveConnection", "ListenerFactory", "WorkerListener"]

log = logging.getLogger("ftproxy.listener")

# Accepts per readiness event: bounded so that one busy listener cannot starve a worker's
# established connections (Envoy accepts in a loop too, one event per socket).
ACCEPT_BATCH = 64
BACKLOG = 1024


def bind_listen_sockets(address: str, port: int, count: int, reuse_port: bool,
                        backlog: int | None = None, *, name: str | None = None,
                        listen: bool = True) -> list[socket.socket]:
    """`count` sockets (reuse_port) or one shared socket; non-blocking, inheritable for hot restart.
    `listen=False`: bound only (a warming LDS listener: connections are refused until it is
    active, as Envoy's; the caller calls listen() then).

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
            if listen:
                s.listen(backlog or BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class ListenerFactory:
    """Main thread: what a listener runs on each accepted connection, shared by every worker:
    its listener filters' factories, the match tree choosing a filter chain
    (filter_chain_match.py), and each chain's factory (its network filters and terminal) with
    its config; the default chain, if any, is the last of `chains`; the listener's access
    loggers (`Listener.access_log`, made by `AccessLogConfig.create`). Immutable."""

    __slots__ = ("listener_filters", "matcher", "chains", "access_loggers")

    def __init__(self, listener_filters: tuple, matcher: FilterChainMatcher,
                 chains: tuple[tuple[object, object], ...], access_loggers: tuple = ()) -> None:
        self.listener_filters = listener_filters
        self.matcher = matcher
        self.chains = chains          # ((terminal or NetworkFilterChainFactory, FilterChainConfig), ...)
        self.access_loggers = access_loggers

    def for_worker(self, worker) -> WorkerListener:
        return WorkerListener(self, worker)


class WorkerListener:
    """Per worker: the listener filters' and filter chains' per-worker parts, and each chain's
    transport socket factory; its access loggers' (a gRPC logger's buffers are per worker)."""

    __slots__ = ("listener_filters", "matcher", "chains", "access_loggers")

    def __init__(self, factory: ListenerFactory, worker) -> None:
        self.listener_filters = tuple(f.for_worker(worker) for f in factory.listener_filters)
        self.matcher = factory.matcher
        self.chains = tuple((f.for_worker(worker), downstream_transport_factory(cfg), cfg.name)
                            for f, cfg in factory.chains)
        self.access_loggers = tuple(a.for_worker(worker) for a in factory.access_loggers)


class ActiveListener:
    def __init__(self, worker, config, sock: socket.socket, listener_ctx: WorkerListener, shared: bool,
                 global_limit: tuple[SharedCount, int] | None = None,
                 listener_limit: tuple[SharedCount, int] | None = None) -> None:
        self.worker = worker
        self.config = config
        self.sock = sock
        self.shared = shared  # one socket registered in every worker (reuse_port off)
        self.buffer_limit = config.per_connection_buffer_limit_bytes
        self.listener_filters = listener_ctx.listener_filters
        self.matcher = listener_ctx.matcher
        # Listener access logs (listener_access_log.py): empty unless configured, and then
        # each connection carries a StreamInfo from its accept.
        self.access_loggers = listener_ctx.access_loggers
        scope = worker.stats.scope(f"listener.{config.stat_prefix}")
        # (per-worker chain context, transport socket factory, chain name) by match index; the
        # transports count their TLS stats as listener.<stat_prefix>.ssl.* on this worker.
        ssl_scope = scope.scope("ssl")
        self.chains = tuple((ctx, transport.for_worker(ssl_scope), name)
                            for ctx, transport, name in listener_ctx.chains)
        self.cx_total = scope.counter("downstream_cx_total")
        self.cx_destroy = scope.counter("downstream_cx_destroy")
        self.cx_active = scope.gauge("downstream_cx_active")
        self.no_filter_chain_match = scope.counter("no_filter_chain_match")
        # Closed because the transport (a TLS handshake) was not connected within the chain's
        # transport_socket_connect_timeout.
        self.cx_transport_connect_timeout = scope.counter("downstream_cx_transport_socket_connect_timeout")
        self.pre_cx_active = scope.gauge("downstream_pre_cx_active")
        self.pre_cx_timeout = scope.counter("downstream_pre_cx_timeout")
        self.listener_filter_remote_close = scope.counter("downstream_listener_filter_remote_close")
        self.listener_filter_error = scope.counter("downstream_listener_filter_error")
        # Envoy's: how long each connection that had a filter chain lived; how many
        # connections each readiness event of the listen socket accepted.
        self.cx_length_ms = scope.histogram("downstream_cx_length_ms", "ms")
        self.accepted_per_event = scope.histogram("connections_accepted_per_socket_event", "unspecified")
        # Envoy's, never counted here: the overload manager has no actions (refused in config),
        # and extension config discovery (ECDS) is refused for listener and network filters.
        for name in ("downstream_cx_overload_reject", "extension_config_missing",
                     "network_extension_config_missing"):
            scope.counter(name)
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
        # Admin /drain_listeners: what this listener accepts from now on starts draining.
        self.draining = False

    @property
    def ctx(self):
        """The first filter chain's per-worker context (its HcmContext, ...)."""
        return self.chains[0][0]

    @property
    def transport_factory(self):
        """The first filter chain's transport socket factory."""
        return self.chains[0][1]

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
        # As Envoy's TcpListenerImpl: every socket event records how many connections it took
        # from the kernel (those then refused by a connection limit included).
        n = 0
        while n < ACCEPT_BATCH:
            try:
                sock, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("listener %s: accept failed: %s", self.config.name, e)
                break
            n += 1
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
                self._release()
                continue
            if self.listener_filters:
                pending = ActiveSocket(self, sock, remote[:2], local[:2])
                if self.access_loggers:
                    pending.log_info = accepted(remote[:2], local[:2])
                self.pre_cx_active.value += 1
                worker.add_connection(pending)
                try:
                    pending.start()
                except Exception:
                    log.exception("listener %s: a listener filter failed", self.config.name)
                    worker.unhandled_exceptions.value += 1
                    pending.close()
                continue
            self.new_connection(sock, None, remote[:2], local[:2])
        self.accepted_per_event.record(n)

    def pending_done(self, pending: ActiveSocket, close: bool) -> None:
        """`pending` left the listener filters: closed, or about to be handed to a chain."""
        self.pre_cx_active.value -= 1
        worker = self.worker
        worker.connections.discard(pending)
        if close:
            try:
                pending.socket.close()
            finally:
                self._release()
                worker.on_connection_closed()
                if self.access_loggers:
                    self._log(log_rejected, self.access_loggers, pending)

    def new_connection(self, sock: socket.socket, pending: ActiveSocket | None,
                       remote: tuple[str, int] | None = None, local: tuple[str, int] | None = None) -> None:
        """The filter chain for `sock` (what `pending`'s listener filters found, or the socket's
        own addresses), then its transport socket and network filter chain."""
        log_info = None
        if pending is not None:
            remote, local, direct_remote = pending.remote, pending.local, pending.direct_remote
            direct_local = pending.direct_local
            index = self.matcher.find(local, remote, direct_remote, pending.requested_server_name,
                                      pending.transport_protocol, pending.application_protocols)
            if self.access_loggers:
                log_info = pending.log_info
                note_listener_filters(log_info, pending)
        else:
            direct_remote, direct_local = remote, local
            index = self.matcher.find(local, remote, remote)
            if self.access_loggers:
                log_info = accepted(remote, local)
        if index is None:
            # Envoy: no_filter_chain_match, flag NR, details filter_chain_not_found; closed unread.
            self.no_filter_chain_match.value += 1
            log.debug("listener %s: closing connection from %s: no matching filter chain",
                      self.config.name, remote)
            sock.close()
            self._release()
            if log_info is not None:
                self._log(log_unmatched, self.access_loggers, log_info)
            return
        ctx, transport_factory, chain_name = self.chains[index]
        if pending is not None:
            info = DownstreamInfo(remote, local, direct_remote, direct_local,
                                  pending.requested_server_name, pending.application_protocols,
                                  pending.transport_protocol, chain_name)
        else:
            info = DownstreamInfo(remote, local, remote, local, filter_chain_name=chain_name)
        worker = self.worker
        self.cx_total.value += 1
        self.cx_active.value += 1
        self.w_cx_total.value += 1
        self.w_cx_active.value += 1
        conn_id = worker.next_connection_id()
        active = ActiveConnection(self, log_info, chain_name, conn_id)
        try:
            conn = ctx.new_connection(transport_factory.create(sock), remote, local,
                                      conn_id, self.buffer_limit, active.closed,
                                      info=info)
        except Exception:
            log.exception("listener %s: creating a connection failed", self.config.name)
            worker.unhandled_exceptions.value += 1
            sock.close()
            active.closed(None)
            return
        if not getattr(conn, "finished", False) and not _closed(conn):
            worker.add_connection(conn)
            if self.draining:
                conn.start_drain(False)

    def _release(self) -> None:
        if self.global_limit is not None:
            self.global_limit[0].release()
        if self.listener_limit is not None:
            self.listener_limit[0].release()

    def _log(self, emit, *args) -> None:
        """Run the listener's access loggers (listener_access_log.py); a failing logger is
        counted and logged, never raised into the worker loop."""
        try:
            emit(*args)
        except Exception:
            log.exception("listener %s: an access logger failed", self.config.name)
            self.worker.unhandled_exceptions.value += 1


class ActiveConnection:
    """Envoy's ActiveTcpConnection, reduced to what outlives the accept: when the connection
    began (downstream_cx_length_ms) and, with listener access logs, its StreamInfo and what
    the log needs at close. `closed` is the terminal's `on_closed` callback. Worker thread."""

    __slots__ = ("listener", "started", "log_info", "chain_name", "conn_id")

    def __init__(self, listener: ActiveListener, log_info, chain_name: str, conn_id: int) -> None:
        self.listener = listener
        self.started = time.monotonic()
        self.log_info = log_info
        self.chain_name = chain_name
        self.conn_id = conn_id

    def closed(self, conn) -> None:
        """The terminal's connection (None: making it failed) closed."""
        listener = self.listener
        listener._release()
        listener.cx_active.value -= 1
        listener.w_cx_active.value -= 1
        listener.cx_destroy.value += 1
        listener.cx_length_ms.record((time.monotonic() - self.started) * 1000.0)
        if conn is not None:
            c = getattr(conn, "connection", None) or getattr(conn, "downstream", None)
            if c is not None and c.close_reason == CloseReason.CONNECT_TIMEOUT:
                listener.cx_transport_connect_timeout.value += 1
            worker = listener.worker
            worker.connections.discard(conn)
            worker.on_connection_closed()
        if self.log_info is not None:
            listener._log(log_closed, listener.access_loggers, self.log_info, conn,
                          self.chain_name, self.conn_id)


def _closed(conn) -> bool:
    c = getattr(conn, "connection", None) or getattr(conn, "downstream", None)
    return c is not None and c.closed
