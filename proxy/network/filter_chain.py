"""Network (L4) filter chains: the filters before a listener's terminal filter.

Envoy's read filters, in Python's idiom. A chain is the listener's network filters in order;
the last one is the terminal filter (http_connection_manager or tcp_proxy), which owns the
connection once it exists. Each filter before it gets `on_new_connection()` when a connection
is accepted and returns CONTINUE (the next filter, and at the end the terminal, takes over) or
STOP_ITERATION (the connection waits, reading nothing, until the filter calls
`continue_reading()` or `close()` on its callbacks: a filter that rejects a connection after
a delay, or that waits for an answer). `on_close()` tells each filter that ran that its
connection is gone (from the terminal's close, or from a filter's `close()`).

A filter that also has `on_data(data, end_stream)` reads the connection's bytes before the
terminal does (Envoy's onData): once the terminal took the connection, a `ReadFilterRelay`
stands between the Connection and the terminal and runs each chunk through those filters in
order; CONTINUE passes it on, STOP_ITERATION holds it (and pauses reading) until the filter
calls `continue_reading()`, and a filter may `close()` the connection instead. Filters see the
bytes; they do not rewrite them. A chain whose filters have no `on_data` has no relay (the
terminal reads the Connection directly, as on the hot path).

Thread affinity: a `NetworkFilterChain` is per worker; its filters and `ConnectionCallbacks`
belong to the worker that accepted the connection. Factories are built on the main thread.
Must not: read from the socket (the terminal filter does).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

__all__ = ["NetworkFilterStatus", "NetworkReadFilter", "NetworkFilterCallbacks",
           "NetworkFilterChainFactory", "NetworkFilterChain", "ReadFilterRelay"]

log = logging.getLogger("ftproxy.network")


class NetworkFilterStatus:
    CONTINUE = 0
    STOP_ITERATION = 1


class NetworkReadFilter(Protocol):
    def on_new_connection(self) -> int: ...
    def on_close(self) -> None: ...
    # Optional: def on_data(self, data: bytes, end_stream: bool) -> int (CONTINUE/STOP_ITERATION)


class NetworkFilterCallbacks(Protocol):
    """What a network filter may do with its connection before the terminal takes it."""

    remote: tuple[str, int]
    local: tuple[str, int]
    info: Any            # DownstreamInfo (connection_info.py): SNI, ALPN, direct addresses
    dispatcher: Any

    def continue_reading(self) -> None: ...
    def close(self) -> None: ...


class NetworkFilterChainFactory:
    """Main thread: the per-filter factories (each `for_worker(worker)` -> an object with
    `create(callbacks)`), and the terminal filter's factory."""

    def __init__(self, filters: tuple, terminal) -> None:
        self.filters = filters
        self.terminal = terminal

    def for_worker(self, worker) -> NetworkFilterChain:
        return NetworkFilterChain(tuple(f.for_worker(worker) for f in self.filters),
                                  self.terminal.for_worker(worker), worker)


class NetworkFilterChain:
    """Per worker: runs `on_new_connection` through the filters, then hands the socket to the
    terminal's `new_connection` (the listener's interface for a filter chain context)."""

    def __init__(self, filters: tuple, terminal, worker) -> None:
        self.filters = filters
        self.terminal = terminal
        self.worker = worker

    def new_connection(self, sock, remote, local, conn_id, buffer_limit, on_closed, info=None):
        pending = PendingConnection(self, sock, remote, local, conn_id, buffer_limit, on_closed, info)
        pending.run()
        return pending


class PendingConnection:
    """One accepted connection on its way through the chain (the filters' callbacks). After
    the terminal took it, `terminal` is the terminal's connection object."""

    __slots__ = ("chain", "sock", "remote", "local", "conn_id", "buffer_limit", "on_closed",
                 "filters", "next", "terminal", "finished", "relay", "info")

    def __init__(self, chain: NetworkFilterChain, sock, remote, local, conn_id, buffer_limit,
                 on_closed, info=None) -> None:
        self.chain = chain
        self.sock = sock
        self.remote = remote
        self.local = local
        self.conn_id = conn_id
        self.buffer_limit = buffer_limit
        self.on_closed = on_closed
        self.filters: list = []       # the filters made so far, told on_close at the end
        self.next = 0
        self.terminal = None
        self.finished = False         # closed before the terminal took it
        self.relay = None             # ReadFilterRelay, when a filter reads the bytes
        self.info = info              # DownstreamInfo (connection_info.py), from the listener

    @property
    def dispatcher(self):
        return self.chain.worker.dispatcher

    @property
    def connection(self):
        """The terminal's Connection (the worker's drain and the listener look at it)."""
        terminal = self.terminal
        if terminal is None:
            return None
        return getattr(terminal, "connection", None) or getattr(terminal, "downstream", None)

    def run(self) -> None:
        factories = self.chain.filters
        while self.next < len(factories) and not self.finished:
            flt = factories[self.next].create(self)
            self.filters.append(flt)
            self.next += 1
            if flt.on_new_connection() != NetworkFilterStatus.CONTINUE:
                return
        if not self.finished:
            self.terminal = self.chain.terminal.new_connection(
                self.sock, self.remote, self.local, self.conn_id, self.buffer_limit,
                self._terminal_closed, info=self.info)
            readers = tuple(f for f in self.filters if hasattr(f, "on_data"))
            conn = self.connection
            if readers and conn is not None and not conn.closed:
                self.relay = ReadFilterRelay(readers, conn)

    # -- NetworkFilterCallbacks ----------------------------------------------------------------
    def continue_reading(self) -> None:
        if self.terminal is None:
            if not self.finished:
                self.run()
        elif self.relay is not None:
            self.relay.continue_reading()

    def close(self) -> None:
        """Close the connection (before the terminal took it: the socket, unread)."""
        if self.terminal is not None:
            conn = self.connection
            if conn is not None:
                conn.close(flush=False)
            return
        if self.finished:
            return
        self.finished = True
        try:
            self.sock.close()
        finally:
            self._closed()

    # -- teardown ------------------------------------------------------------------------------
    def _terminal_closed(self, _conn) -> None:
        self._closed()

    def _closed(self) -> None:
        filters = self.filters
        self.filters = []
        for flt in filters:
            try:
                flt.on_close()
            except Exception:
                log.exception("network filter on_close failed")
        self.on_closed(self)

    # The worker's drain treats every accepted connection alike.
    def start_drain(self, close_idle: bool = True) -> None:
        terminal = self.terminal
        if terminal is None:
            self.close()
        elif hasattr(terminal, "start_drain"):
            terminal.start_drain(close_idle)

    def close_idle(self) -> None:
        terminal = self.terminal
        if terminal is None:
            self.close()
        elif hasattr(terminal, "close_idle"):
            terminal.close_idle()


class ReadFilterRelay:
    """Between a Connection and its terminal (which made it): each chunk read goes through the
    read filters' `on_data` first. The Connection's callbacks become this relay; every other
    callback goes straight to the terminal."""

    __slots__ = ("filters", "connection", "terminal", "held", "at", "eof_held")

    def __init__(self, filters: tuple, connection) -> None:
        self.filters = filters
        self.connection = connection
        self.terminal = connection.callbacks
        self.held: bytearray | None = None  # bytes a filter stopped, with what came after
        self.at = 0                          # the filter the held bytes go to next
        self.eof_held = False
        connection.callbacks = self

    def on_data(self, data: bytes) -> None:
        if self.held is not None:
            self.held += data  # (reading is paused; bytes already read queue behind)
            return
        self._run(data, 0, False)

    def on_eof(self) -> None:
        if self.held is not None:
            self.eof_held = True
            return
        self._run(b"", 0, True)

    def _run(self, data: bytes, start: int, end_stream: bool) -> None:
        filters = self.filters
        for i in range(start, len(filters)):
            if filters[i].on_data(data, end_stream) != NetworkFilterStatus.CONTINUE \
                    and not end_stream:
                if self.connection.closed:
                    return
                self.held = bytearray(data)
                self.at = i + 1
                self.connection.read_disable(True)
                return
            if self.connection.closed:
                return
        if end_stream:
            self.terminal.on_eof()
        elif data:
            self.terminal.on_data(data)

    def continue_reading(self) -> None:
        """A filter that stopped lets its held bytes on (to the next filters, the terminal)."""
        held = self.held
        if held is None or self.connection.closed:
            return
        self.held = None
        self.connection.read_disable(False)
        self._run(bytes(held), self.at, False)
        if self.eof_held and self.held is None and not self.connection.closed:
            self.eof_held = False
            self._run(b"", 0, True)

    # -- the rest of ConnectionCallbacks: the terminal's --------------------------------------
    def on_connected(self) -> None:
        self.terminal.on_connected()

    def on_early_close(self) -> None:
        self.terminal.on_early_close()

    def on_close(self, reason: str) -> None:
        self.terminal.on_close(reason)

    def on_above_write_watermark(self) -> None:
        self.terminal.on_above_write_watermark()

    def on_below_write_watermark(self) -> None:
        self.terminal.on_below_write_watermark()
