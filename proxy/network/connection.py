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

All socket I/O — connect, read, write, half-close, close — goes through the connection's
`TransportSocket` (transport_socket.py: raw_buffer or, later, TLS), which this class does not
tell apart; it implements the transport's `TransportSocketCallbacks` (extra interest a TLS
handshake needs, bytes held by the transport). `transport_socket.raw_socket` is the socket for
a zero-copy relay, set only for raw_buffer.
Must not: parse protocols or know about stats names (owners count bytes from the callbacks).
"""

from __future__ import annotations

import errno
from collections import deque

from .address import format_address
from .transport_socket import TransportSocket
from ..threads.dispatcher import PEER_CLOSED, READ, WRITE, Dispatcher

__all__ = ["Connection", "ConnectionCallbacks", "CloseReason"]

# One recv reads at most this much. 64 KiB matches the default loopback/TCP window growth
# step; larger reads cut syscalls for bulk transfer, smaller ones bound latency per event.
READ_SIZE = 64 * 1024
BULK_READ_SIZE = 256 * 1024  # tcp_proxy: measured 1.3 GB/s with 256 KiB reads (python-runtime §5)


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


class _Lingering(ConnectionCallbacks):
    """A lingering close's callbacks (Connection.close(linger=True)): the peer's bytes are
    dropped, its FIN ends the connection; the owner hears only the close, with the reason it
    closed for."""

    __slots__ = ("connection", "owner", "reason")

    def __init__(self, connection: Connection, owner: ConnectionCallbacks, reason: str) -> None:
        self.connection = connection
        self.owner = owner
        self.reason = reason

    def on_data(self, data: bytes) -> None:
        pass

    def on_eof(self) -> None:
        self.connection.close(flush=False, reason=self.reason)

    def on_early_close(self) -> None:
        self.connection.close(flush=False, reason=self.reason)

    def on_close(self, reason: str) -> None:
        self.owner.on_close(reason)


class Connection:
    __slots__ = ("dispatcher", "transport_socket", "fd", "callbacks", "limit", "read_size", "_out",
                 "buffered_bytes", "_read_disable", "_interest", "closed", "_connecting", "_connect_timer",
                 "above_high_watermark", "_close_after_flush", "_shutdown_after_flush", "_read_eof",
                 "remote_address", "local_address", "bytes_received", "bytes_sent", "id",
                 "_delayed_close_timer", "_flush_scheduled", "_do_read",
                 "_transport_interest", "_transport_readable", "connect_errno",
                 "_detect_early_close", "_close_delay", "close_reason", "_linger")

    def __init__(self, dispatcher: Dispatcher, transport_socket: TransportSocket, callbacks: ConnectionCallbacks,
                 *, buffer_limit: int = 1024 * 1024, read_size: int = READ_SIZE,
                 remote_address: str = "", local_address: str = "", conn_id: int = 0) -> None:
        self.dispatcher = dispatcher
        self.transport_socket = transport_socket
        self.fd = transport_socket.fd
        # Each read and each flush is one call into the transport. do_read is kept bound
        # (raw_buffer's is the socket's recv itself); do_write is called as a method of
        # `transport_socket` (as cheap, and no bound-method object per connection: 72 bytes
        # on each of 10,000 idle connections).
        self._do_read = transport_socket.do_read
        self._transport_interest = 0    # what the transport asked for (set_transport_interest)
        self._transport_readable = False  # the transport holds bytes the fd will not signal
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
        self._linger = None  # close(linger=True): the reason it closes with, once lingering ends
        self._read_eof = False
        self.remote_address = remote_address
        self.local_address = local_address
        self.bytes_received = 0
        self.bytes_sent = 0
        self.connect_errno = 0  # why a connect failed (the socket's errno), for the owner's logs
        self.close_reason = ""  # once closed: the CloseReason it was closed for
        self.id = conn_id
        transport_socket.set_callbacks(self)

    # -- setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin reading (server side, after accept). A transport that is not connected at
        once (a TLS handshake) gets its `connect_timeout`, if it has one, to become so."""
        self._update_interest()
        timeout = self.transport_socket.connect_timeout
        if timeout > 0:
            self._connect_timer = self.dispatcher.call_later(
                timeout, lambda: self._fail_connect(CloseReason.CONNECT_TIMEOUT))
        self._transport_connected(CloseReason.REMOTE)

    def connect(self, address: tuple[str, int], timeout: float) -> None:
        """Start a non-blocking connect; the outcome arrives as on_connected or on_close.
        `timeout` covers the transport's setup too (a TLS handshake), as Envoy's
        connect_timeout does: on_connected comes once the transport says it is connected."""
        self._connecting = True
        err = self.transport_socket.connect(address)
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

    @property
    def transport_failure_reason(self) -> str:
        return self.transport_socket.failure_reason

    def read_disable(self, disable: bool) -> None:
        """Counted pause/resume of reading: n disables need n enables. (None once closing
        lingers: reading then only drops what the peer sends.)"""
        if self._linger is not None:
            return
        if disable:
            self._read_disable += 1
        elif self._read_disable > 0:
            self._read_disable -= 1
            if self._transport_readable and self._read_disable == 0:
                self.dispatcher.defer(self._read_transport)
        self._update_interest()

    def set_detect_early_close(self, enabled: bool) -> None:
        """While reading is disabled, watch for the peer closing anyway (EPOLLRDHUP) and report
        it as `on_early_close` (Envoy's detect_early_close), for owners to whom a peer's FIN
        means "abort" even when it waits behind bytes not read yet."""
        self._detect_early_close = enabled
        self._update_interest()

    @property
    def closing(self) -> bool:
        """A close was asked for and waits for the flush, or for the lingering to end (False
        once the socket is gone: `closed`)."""
        return not self.closed and (self._close_after_flush or self._linger is not None)

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
                want = READ
            elif self._detect_early_close and not self._read_eof and not self._close_after_flush:
                want = PEER_CLOSED
            if self._transport_interest:
                # The transport's needs replace waiting for writability on our own: a write it
                # cannot take yet (TLS handshake) must not spin on an always-writable socket.
                want |= self._transport_interest
            elif self._out:
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

    # -- TransportSocketCallbacks ------------------------------------------------------------
    def raise_connected(self) -> None:
        """TransportSocketCallbacks: the transport is ready for the owner's bytes (raw_buffer:
        at once; TLS: after the handshake). The connect timer stops here."""
        if self.closed:
            return
        if self._connect_timer is not None:
            self._connect_timer.disable()
            self._connect_timer = None
        self.callbacks.on_connected()

    def set_transport_interest(self, mask: int) -> None:
        """The transport needs READ/WRITE for its own progress (0: nothing more)."""
        if mask == self._transport_interest:
            return  # e.g. TLS saying "nothing" after each write: no epoll_ctl pair per response
        self._transport_interest = mask
        self._update_interest()

    def set_transport_readable(self) -> None:
        """The transport holds bytes for the owner that the socket will not signal again."""
        if self.closed or self._transport_readable:
            return
        self._transport_readable = True
        if self._read_disable == 0:
            self.dispatcher.defer(self._read_transport)

    def _read_transport(self) -> None:
        if self.closed or not self._transport_readable or self._read_disable:
            return  # read_disable(False) defers this again
        self._transport_readable = False
        self._on_event(READ)

    def _transport_connected(self, failure: str) -> None:
        try:
            self.transport_socket.on_connected()
        except OSError:
            self.close(flush=False, reason=failure)

    # -- I/O -------------------------------------------------------------------------------
    def _on_event(self, mask: int) -> None:
        try:
            if self._connecting:
                self._finish_connect()
                return
            if mask & WRITE:
                self._flush()
            if mask & READ and not self.closed:
                if self._read_disable == 0:
                    try:
                        data = self._do_read(self.read_size)
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
                elif self._transport_interest & READ:
                    self._transport_progress()
            elif mask & PEER_CLOSED and self._read_disable and not self.closed:
                self.callbacks.on_early_close()
        except Exception:
            # A bug in an owner's callback must cost only this connection, never the worker.
            if not self.closed:
                self.close(flush=False, reason=CloseReason.ERROR)
            raise

    def _transport_progress(self) -> None:
        """Reading is disabled but the transport asked for READ (e.g. to finish a handshake
        a queued write waits for): let it advance without handing us bytes."""
        try:
            self._do_read(0)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close(flush=False, reason=CloseReason.REMOTE)

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
        transport write in this one frame; anything else goes through `_flush`."""
        self._flush_scheduled = False
        out = self._out
        if self.closed or not out or self._interest & WRITE:
            return
        if self.above_high_watermark or self._close_after_flush or self._shutdown_after_flush:
            self._flush()
            return
        try:
            n = self.transport_socket.do_write(out, self.buffered_bytes)
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
        if out or self._transport_interest & WRITE:
            # One transport write; what it does not take waits for the next WRITE event.
            try:
                n = self.transport_socket.do_write(out, self.buffered_bytes)
            except OSError:
                self.close(flush=False, reason=CloseReason.REMOTE)
                return
            if n:
                self._sent(n)
                if self._delayed_close_timer is not None:
                    # Closing after the flush: the delay bounds a stall, not the whole flush
                    # (Envoy's delayed_close_timeout restarts on write progress), or a slow
                    # reader loses the tail of a `connection: close` response.
                    self._delayed_close_timer.enable(self._close_delay)
        if self.above_high_watermark and self.buffered_bytes <= self.limit // 2:
            self.above_high_watermark = False
            self.callbacks.on_below_write_watermark()
        if not out and not self._transport_interest & WRITE:
            if self._close_after_flush:
                if self._linger is not None:
                    self._start_lingering()
                    return
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
        err = self.transport_socket.connect_error()
        if err:
            self.connect_errno = err
            self._fail_connect(CloseReason.CONNECT_FAILED)
            return
        self._connecting = False
        try:
            self.local_address = format_address(self.transport_socket.local_address())
        except OSError:
            pass
        self._update_interest()
        self._transport_connected(CloseReason.CONNECT_FAILED)

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
        if self._out or self._transport_interest & WRITE:
            self._shutdown_after_flush = True
        else:
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        self.transport_socket.shutdown_write()

    def _start_lingering(self) -> None:
        """close(linger=True), the answer written: FIN, then read and drop until the peer's
        FIN or the delay (the delayed close timer, re-armed for the whole delay)."""
        self._close_after_flush = False
        self._shutdown_now()
        reason = self._linger
        self.callbacks = _Lingering(self, self.callbacks, reason)
        self._read_disable = 0
        self._update_interest()
        if self._delayed_close_timer is None:  # (nothing was left to flush)
            self._delayed_close_timer = self.dispatcher.call_later(
                self._close_delay, lambda: self.close(flush=False, reason=reason))
        else:
            self._delayed_close_timer.enable(self._close_delay)

    def close(self, flush: bool = True, reason: str = CloseReason.LOCAL, delay: float = 1.0,
              linger: bool = False) -> None:
        """Close; with `flush`, after the write buffer drains (given up after `delay` seconds
        without write progress, Envoy's delayed_close_timeout; 0: never). With `linger` too (the HCM's
        close after an answer: the peer may still be sending), once flushed the write side
        is shut (FIN) and what the peer still sends is read and dropped until it closes too,
        or `delay` seconds: closing with its bytes unread would send a reset, which can destroy
        the answer before the peer reads it. (Envoy's FlushWriteAndDelay instead waits up to
        the delay without a FIN and without reading.)"""
        if self.closed:
            return
        if flush and self._linger is not None:
            return  # (already closing: it ends when the lingering does)
        if flush and linger and not self._connecting:
            self._linger = reason
            if not (self._out or self._transport_interest & WRITE):
                self._close_delay = delay
                self._start_lingering()
                return
        if flush and (self._out or self._transport_interest & WRITE) and not self._connecting:
            if not self._close_after_flush:
                self._close_after_flush = True
                self._read_disable += 1
                self._update_interest()
                self._close_delay = delay
                if delay > 0:  # (0: no limit, as Envoy's delayed_close_timeout 0)
                    self._delayed_close_timer = self.dispatcher.call_later(
                        delay, lambda: self.close(flush=False, reason=reason))
            return
        self.closed = True
        self.close_reason = reason
        for t in (self._connect_timer, self._delayed_close_timer):
            if t is not None:
                t.disable()
        if self._interest:
            self.dispatcher.unregister(self.fd)
            self._interest = 0
        self.transport_socket.close()
        self._out.clear()
        self.buffered_bytes = 0
        self.callbacks.on_close(reason)
