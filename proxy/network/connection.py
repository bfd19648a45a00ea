"""Non-blocking TCP connection with bounded buffers and watermark flow control.

A `Connection` wraps one socket registered with one Dispatcher (thread-confined). It reads
whenever reading is enabled and hands each chunk to its `ConnectionCallbacks.on_data`; it
writes through `write()`, which queues; the dispatcher calls `flush_scheduled()` once per loop
iteration, sending everything queued in one `send`/`sendmsg` and keeping what the socket did
not take (then it waits for writability). The flush waits for the end of the iteration on
purpose: sending at once, in the middle of the batch of events, measured 35-50 % more CPU per
request (perf/RESULTS.md, sixth round). When the
write buffer grows past the high watermark (the `per_connection_buffer_limit_bytes`) the
callbacks get `on_above_write_watermark()` — the owner then read-disables the *other* side —
and `on_below_write_watermark()` once it drains under half of it (Envoy's flow_control.md).
Read-disable is a counter because several parties may pause the same connection.

Client connections connect asynchronously with a timeout (`connect()`).
Must not: parse protocols or know about stats names (owners count bytes from the callbacks).
"""

from __future__ import annotations

import errno
import socket
from .address import format_address
from collections import deque

from ..threads.dispatcher import PEER_CLOSED, READ, WRITE, Dispatcher

__all__ = ["Connection", "ConnectionCallbacks", "CloseReason"]

# One recv reads at most this much. 64 KiB matches the default loopback/TCP window growth
# step; larger reads cut syscalls for bulk transfer, smaller ones bound latency per event.
READ_SIZE = 64 * 1024
BULK_READ_SIZE = 256 * 1024  # tcp_proxy: measured 1.3 GB/s with 256 KiB reads (python-runtime §5)
_IOV_MAX = 1024  # Linux limit on buffers per sendmsg
# Up to this many queued bytes are joined and sent with one `send`: `sendmsg` costs ~2,700 more
# instructions per call in CPython (argument parsing, the iovec) than copying a small response.
_JOIN_MAX = 16 * 1024


class CloseReason:
    LOCAL = "local"
    REMOTE = "remote"            # peer closed (EOF or reset)
    CONNECT_FAILED = "connect_failure"
    CONNECT_TIMEOUT = "connect_timeout"
    ERROR = "error"


class ConnectionCallbacks:
    """What a connection's owner implements. All calls happen on the owner dispatcher."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...                # peer half-closed; default owners close
    def on_close(self, reason: str) -> None: ...  # socket is gone
    def on_connected(self) -> None: ...
    def on_above_write_watermark(self) -> None: ...
    def on_below_write_watermark(self) -> None: ...
    # Only after set_detect_early_close(True): the peer closed (FIN or reset) while reading was
    # disabled; bytes it sent before may still be unread. The owner closes the connection or
    # turns detection off (`set_detect_early_close(False)`), or it is called again.
    def on_early_close(self) -> None: ...


class Connection:
    __slots__ = ("dispatcher", "sock", "fd", "callbacks", "limit", "read_size", "_out", "buffered_bytes",
                 "_read_disable", "_interest", "closed", "_connecting", "_connect_timer",
                 "above_high_watermark", "_close_after_flush", "_shutdown_after_flush", "_read_eof",
                 "remote_address", "local_address", "bytes_received", "bytes_sent", "id",
                 "_delayed_close_timer", "_flush_scheduled", "_detect_early_close", "_close_delay")

    def __init__(self, dispatcher: Dispatcher, sock: socket.socket, callbacks: ConnectionCallbacks,
                 *, buffer_limit: int = 1024 * 1024, read_size: int = READ_SIZE,
                 remote_address: str = "", local_address: str = "", conn_id: int = 0) -> None:
        self.dispatcher = dispatcher
        self.sock = sock
        self.fd = sock.fileno()
        self.callbacks = callbacks
        self.limit = buffer_limit
        self.read_size = read_size
        self._out: deque[bytes | memoryview] = deque()
        self.buffered_bytes = 0
        self._read_disable = 0
        self._interest = 0
        self.closed = False
        self._connecting = False
        self._connect_timer = None
        self._delayed_close_timer = None
        self._close_delay = 0.0
        self._flush_scheduled = False
        self._detect_early_close = False
        self.above_high_watermark = False
        self._close_after_flush = False
        self._shutdown_after_flush = False
        self._read_eof = False
        self.remote_address = remote_address
        self.local_address = local_address
        self.bytes_received = 0
        self.bytes_sent = 0
        self.id = conn_id

    # -- setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin reading (server side, after accept)."""
        self._update_interest()

    def connect(self, address: tuple[str, int], timeout: float) -> None:
        """Start a non-blocking connect; the outcome arrives as on_connected or on_close."""
        self._connecting = True
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._connecting = False
            self.dispatcher.defer(lambda: self._fail_connect(CloseReason.CONNECT_FAILED))
            return
        if timeout > 0:
            self._connect_timer = self.dispatcher.call_later(
                timeout, lambda: self._fail_connect(CloseReason.CONNECT_TIMEOUT))
        self._update_interest()

    # -- state -----------------------------------------------------------------------------
    # Plain attributes read on every request: `closed` (the socket is gone),
    # `buffered_bytes` (queued, not yet sent) and `above_high_watermark` (the write buffer
    # passed the limit and has not drained to half of it since).

    @property
    def connecting(self) -> bool:
        return self._connecting

    def read_disable(self, disable: bool) -> None:
        """Counted pause/resume of reading: n disables need n enables."""
        if disable:
            self._read_disable += 1
        elif self._read_disable > 0:
            self._read_disable -= 1
        self._update_interest()

    def set_detect_early_close(self, enabled: bool) -> None:
        """While reading is disabled, watch for the peer closing anyway (EPOLLRDHUP) and report
        it as `on_early_close` (Envoy's detect_early_close), for owners to whom a peer's FIN
        means "abort" even when it waits behind bytes not read yet."""
        self._detect_early_close = enabled
        self._update_interest()

    @property
    def reading_enabled(self) -> bool:
        return self._read_disable == 0

    def _update_interest(self) -> None:
        if self.closed:
            return
        want = 0
        if self._connecting:
            want = WRITE
        else:
            if self._read_disable == 0 and not self._read_eof:
                want |= READ
            elif self._detect_early_close and not self._read_eof and not self._close_after_flush:
                want |= PEER_CLOSED
            if self._out:
                want |= WRITE
        if want == self._interest:
            return
        if self._interest == 0:
            self.dispatcher.register(self.fd, want, self._on_event)
        elif want == 0:
            self.dispatcher.unregister(self.fd)
        else:
            self.dispatcher.modify(self.fd, want, self._on_event)
        self._interest = want

    # -- I/O -------------------------------------------------------------------------------
    def _on_event(self, mask: int) -> None:
        try:
            if self._connecting:
                self._finish_connect()
                return
            if mask & WRITE:
                self._flush()
            if mask & READ and not self.closed and self._read_disable == 0:
                try:
                    data = self.sock.recv(self.read_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.close(flush=False, reason=CloseReason.REMOTE)
                    return
                if data:
                    self.bytes_received += len(data)
                    self.callbacks.on_data(data)
                else:
                    self._read_eof = True
                    self._update_interest()
                    self.callbacks.on_eof()
            elif mask & PEER_CLOSED and self._read_disable and not self.closed:
                self.callbacks.on_early_close()
        except Exception:
            # A bug in an owner's callback must cost only this connection, never the worker.
            if not self.closed:
                self.close(flush=False, reason=CloseReason.ERROR)
            raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`; it goes out in one `sendmsg` with everything else written to this
        connection during the current loop iteration (one syscall per response, not per
        piece: each extra send on loopback costs ~6 µs of kernel time, python-runtime §5)."""
        if self.closed or not data:
            return
        self._out.append(data)
        self.buffered_bytes += len(data)
        if not self._flush_scheduled and not self._interest & WRITE and not self._connecting:
            self._flush_scheduled = True
            self.dispatcher.pending_flushes.append(self)
        if not self.above_high_watermark and self.buffered_bytes > self.limit:
            self.above_high_watermark = True
            self.callbacks.on_above_write_watermark()

    def flush_scheduled(self) -> None:
        """Called by the dispatcher at the end of the iteration in which write() queued data.
        The usual case (a response head and body that fit in the socket buffer) is one
        syscall in this one frame; anything else goes through `_flush`."""
        self._flush_scheduled = False
        out = self._out
        if self.closed or not out or self._interest & WRITE:
            return
        if (self.above_high_watermark or self._close_after_flush or self._shutdown_after_flush
                or len(out) > _IOV_MAX):
            self._flush()
            return
        try:
            if len(out) == 1:
                n = self.sock.send(out[0])
            elif self.buffered_bytes <= _JOIN_MAX:
                n = self.sock.send(b"".join(out))
            else:
                n = self.sock.sendmsg(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close(flush=False, reason=CloseReason.REMOTE)
            return
        if n == self.buffered_bytes:
            self.bytes_sent += n
            self.buffered_bytes = 0
            out.clear()
            return
        self._sent(n)
        self._update_interest()  # the socket buffer is full: wait for writability

    def _sent(self, n: int) -> None:
        """Drop the first `n` bytes from the write queue (they were sent)."""
        self.bytes_sent += n
        self.buffered_bytes -= n
        out = self._out
        while n:
            chunk = out[0]
            size = len(chunk)
            if n >= size:
                out.popleft()
                n -= size
            else:
                out[0] = memoryview(chunk)[n:]
                n = 0

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                if len(out) == 1:
                    n = self.sock.send(out[0])
                else:
                    n = self.sock.sendmsg(list(out) if len(out) <= _IOV_MAX else list(out)[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(flush=False, reason=CloseReason.REMOTE)
                return
            self._sent(n)
            if n and self._delayed_close_timer is not None:
                # Closing after the flush: the delay bounds a stall, not the whole flush
                # (Envoy's delayed_close_timeout restarts on write progress), or a slow
                # reader loses the tail of a `connection: close` response.
                self._delayed_close_timer.enable(self._close_delay)
            if out:
                # Partial write: the socket buffer is full; wait for writability.
                break
        if self.above_high_watermark and self.buffered_bytes <= self.limit // 2:
            self.above_high_watermark = False
            self.callbacks.on_below_write_watermark()
        if not out:
            if self._close_after_flush:
                self.close(flush=False, reason=CloseReason.LOCAL)
                return
            if self._shutdown_after_flush:
                self._shutdown_after_flush = False
                self._shutdown_now()
            if self._interest & WRITE:
                self._update_interest()
        elif not self._interest & WRITE:
            self._update_interest()

    def _finish_connect(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail_connect(CloseReason.CONNECT_FAILED)
            return
        self._connecting = False
        if self._connect_timer is not None:
            self._connect_timer.disable()
            self._connect_timer = None
        try:
            self.local_address = format_address(self.sock.getsockname()[:2])
        except OSError:
            pass
        self._update_interest()
        self.callbacks.on_connected()

    def _fail_connect(self, reason: str) -> None:
        if self.closed:
            return
        self._connecting = False
        self.close(flush=False, reason=reason)

    # -- closing ---------------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """Half-close: send FIN after the buffered data is written."""
        if self.closed:
            return
        if self._out:
            self._shutdown_after_flush = True
        else:
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, flush: bool = True, reason: str = CloseReason.LOCAL, delay: float = 1.0) -> None:
        """Close; with `flush`, after the write buffer drains (given up after `delay` seconds
        without write progress, Envoy's delayed_close_timeout)."""
        if self.closed:
            return
        if flush and self._out and not self._connecting:
            if not self._close_after_flush:
                self._close_after_flush = True
                self._read_disable += 1
                self._update_interest()
                self._close_delay = delay
                self._delayed_close_timer = self.dispatcher.call_later(
                    delay, lambda: self.close(flush=False, reason=reason))
            return
        self.closed = True
        for t in (self._connect_timer, self._delayed_close_timer):
            if t is not None:
                t.disable()
        if self._interest:
            self.dispatcher.unregister(self.fd)
            self._interest = 0
        try:
            self.sock.close()
        except OSError:
            pass
        self._out.clear()
        self.buffered_bytes = 0
        self.callbacks.on_close(reason)
