"""An accepted socket on its way through the listener filters (Envoy's ActiveTcpSocket with
its ListenerFilterBuffer).

`ActiveSocket` runs a listener's filters (proxy/network/listener_filters/) in order on one
accepted socket and is the `callbacks` each of them gets. A filter that wants bytes
(`max_read_bytes` > 0, STOP_ITERATION from `on_accept`) is fed by peeking: the socket is
registered with the worker's dispatcher for READ, edge-triggered (as Envoy's buffer), and each
time more bytes arrived `recv(max_read_bytes, MSG_PEEK)` hands everything unread so far to the
filter's `on_data`, so nothing is consumed unless a filter drains it (proxy_protocol's
header). Edge-triggered matters: peeked bytes stay in the socket, and a level-triggered READ
would fire for them forever while a filter waits for more. Then the listener chooses the
filter chain from what the filters found (`ActiveListener.new_connection`) and the
connection starts there, with a `DownstreamInfo` (connection_info.py).

Envoy's outcomes and stats (`listener.<stat_prefix>.*`):
- `downstream_pre_cx_active`: sockets in listener filters now.
- `listener_filters_timeout` (default 15 s, 0 = none) without the filters done:
  `downstream_pre_cx_timeout`; closed, or with `continue_on_listener_filters_timeout`
  handed to a filter chain with what was found so far (the remaining filters are skipped).
- The peer closed before the filters were done: `downstream_listener_filter_remote_close`;
  the peek failed: `downstream_listener_filter_error`; closed either way.
- A filter refused the connection (`callbacks.close()`): closed, counted by the filter.
While it waits, an ActiveSocket is one of its worker's connections (the worker's drain and
hot restart close it, `server.total_connections` counts it); it never leaks its fd: every
path ends in `_finish`, which unregisters, stops the timer and closes or hands over.
Thread affinity: the worker that accepted the socket.
"""

from __future__ import annotations

import logging
import socket

from ..threads.dispatcher import EDGE, PEER_CLOSED, READ
from .listener_filters import ListenerFilterStatus

__all__ = ["ActiveSocket"]

log = logging.getLogger("ftproxy.listener")

_CONTINUE = ListenerFilterStatus.CONTINUE


class ActiveSocket:
    """One accepted socket in its listener filters; the filters' `callbacks`."""

    __slots__ = ("listener", "socket", "fd", "remote", "local", "direct_remote", "direct_local",
                 "requested_server_name", "application_protocols", "transport_protocol",
                 "filters", "index", "current", "timer", "registered", "capacity", "done",
                 "log_info")

    def __init__(self, listener, sock: socket.socket, remote: tuple[str, int],
                 local: tuple[str, int]) -> None:
        self.listener = listener
        self.socket = sock
        self.fd = sock.fileno()
        self.remote = self.direct_remote = remote
        self.local = self.direct_local = local
        self.requested_server_name = ""
        self.application_protocols: tuple[str, ...] = ()
        self.transport_protocol = ""
        self.filters = listener.listener_filters   # per-worker filter factories, in order
        self.index = -1
        self.current = None        # the filter waiting for bytes
        self.timer = None
        self.registered = False
        self.capacity = 0          # how many bytes the current filter wants to see
        self.done = False
        # The listener's access-log StreamInfo, from the accept (listener_access_log.py), or None.
        self.log_info = None

    @property
    def dispatcher(self):
        return self.listener.worker.dispatcher

    # -- running the filters -------------------------------------------------------------------
    def start(self) -> None:
        """Run the filters; if one waits, arm the timeout (Envoy starts it only then)."""
        self._continue()
        if not self.done:
            timeout = self.listener.config.listener_filters_timeout
            if timeout > 0:
                self.timer = self.dispatcher.call_later(timeout, self._on_timeout)

    def _continue(self) -> None:
        """Run the filters after the current one, until one waits or all are done."""
        filters = self.filters
        while not self.done:
            self.index += 1
            if self.index >= len(filters):
                self._hand_over()
                return
            flt = filters[self.index].create(self)
            self.current = flt
            if flt.on_accept(self) == _CONTINUE:
                continue
            if self.done:
                return      # the filter closed the connection
            self.capacity = flt.max_read_bytes
            if self.capacity > 0:
                if not self.registered:
                    self.dispatcher.register(self.fd, READ | PEER_CLOSED | EDGE, self._on_event)
                    self.registered = True
                self._peek()   # bytes may be there already (or from an earlier filter)
            return              # (a filter that reads nothing continues by itself: none here)

    def _on_event(self, _mask: int) -> None:
        if not self.done:
            self._peek()

    def _peek(self) -> None:
        """Envoy's ListenerFilterBufferImpl::onFileEvent, and what ActiveTcpSocket does with
        the filter's answer."""
        while not self.done:
            try:
                data = self.socket.recv(self.capacity, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.listener.listener_filter_error.value += 1
                self._peer_gone()
                return
            if not data:
                self.listener.listener_filter_remote_close.value += 1
                self._peer_gone()
                return
            flt = self.current
            if flt.on_data(data) == _CONTINUE:
                if not self.done:
                    self._continue()
                return
            if self.done or flt.max_read_bytes <= self.capacity:
                return      # closed by the filter, or waiting for the next bytes
            self.capacity = flt.max_read_bytes   # it wants more than the buffer held: peek again

    def _peer_gone(self) -> None:
        try:
            self.current.on_close()
        finally:
            self._finish(close=True)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        listener = self.listener
        listener.pre_cx_timeout.value += 1
        if listener.config.continue_on_listener_filters_timeout:
            self._hand_over()
        else:
            self._finish(close=True)

    def _hand_over(self) -> None:
        """The filters are done (or timed out, continuing): on to the filter chain."""
        if not self.transport_protocol:
            self.transport_protocol = "raw_buffer"
        self._finish(close=False)
        self.listener.new_connection(self.socket, self)

    def _finish(self, close: bool) -> None:
        if self.done:
            return
        self.done = True
        if self.registered:
            self.registered = False
            self.dispatcher.unregister(self.fd)   # the Connection registers the fd anew
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        self.current = None
        self.listener.pending_done(self, close)

    # -- ListenerFilterCallbacks -----------------------------------------------------------------
    def close(self) -> None:
        """A filter refuses the connection: closed now, unread."""
        self._finish(close=True)

    def drain(self, n: int) -> bool:
        """Consume `n` bytes a filter peeked (they were there: no wait); False on failure."""
        left = n
        while left > 0:
            try:
                got = self.socket.recv(left)
            except OSError:
                return False
            if not got:
                return False
            left -= len(got)
        return True

    def set_requested_server_name(self, name: str) -> None:
        self.requested_server_name = name.lower()

    def set_application_protocols(self, protocols) -> None:
        self.application_protocols = tuple(protocols)

    def set_transport_protocol(self, protocol: str) -> None:
        self.transport_protocol = protocol

    def set_remote_address(self, address: tuple[str, int]) -> None:
        self.remote = address

    def restore_local_address(self, address: tuple[str, int]) -> None:
        self.local = address

    # -- the worker's view: one of its connections ------------------------------------------------
    def start_drain(self, close_idle: bool = True) -> None:
        self._finish(close=True)

    def close_idle(self) -> None:
        self._finish(close=True)
