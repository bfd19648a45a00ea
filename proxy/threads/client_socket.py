"""A non-blocking client TCP connection driven by a Dispatcher (the main thread's, for active
health checks and xDS streams): connect, write with an output buffer, read callbacks.

Thread affinity: the dispatcher's thread only.
"""

from __future__ import annotations

import errno
import socket

from .dispatcher import READ, WRITE

__all__ = ["ClientSocket"]


class ClientSocket:
    """A non-blocking client TCP connection on the main Dispatcher: `on_connected()`,
    `on_data(bytes)`, `on_closed()` (after a failed connect too); `write`, `close`."""

    def __init__(self, dispatcher, address: tuple[str, int], on_connected, on_data, on_closed) -> None:
        self.dispatcher = dispatcher
        self.on_connected, self.on_data, self.on_closed = on_connected, on_data, on_closed
        self.out = bytearray()
        self.mask = 0
        self.connected = False
        self.closed = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            # Reported from the loop, never from inside the caller's own call.
            self.closed = True
            self.sock.close()
            dispatcher.defer(self._report_close)
            return
        self.mask = WRITE
        dispatcher.register(self.sock, WRITE, self._on_event)

    def _want(self, mask: int) -> None:
        if mask != self.mask:
            self.mask = mask
            self.dispatcher.modify(self.sock, mask, self._on_event)

    def _report_close(self) -> None:
        self.on_closed()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        if self.connected:
            self._flush()

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
            del self.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(report=True)
            return
        self._want(READ | (WRITE if self.out else 0))

    def _on_event(self, mask: int) -> None:
        if self.closed:
            return
        if not self.connected:
            if not mask & WRITE:
                return
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._close(report=True)
                return
            self.connected = True
            self._want(READ | (WRITE if self.out else 0))
            self.on_connected()
            if self.closed:
                return
            if self.out:
                self._flush()
            return
        if mask & WRITE and self.out:
            self._flush()
            if self.closed:
                return
        if mask & READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(report=True)
                return
            if not data:
                self._close(report=True)
                return
            self.on_data(data)

    def _close(self, report: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.dispatcher.unregister(self.sock)
        self.sock.close()
        if report:
            self.on_closed()

    def close(self) -> None:
        """Close without reporting (our own close)."""
        self._close(report=False)
