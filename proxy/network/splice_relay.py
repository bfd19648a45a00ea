"""Zero-copy relay between two connected TCP sockets with Linux splice(2).

Job: once tcp_proxy has both a downstream and a connected upstream socket, move bytes in both
directions socket -> pipe -> socket without copying them through Python (`os.splice`). Each
direction has its own non-blocking pipe, sized with F_SETPIPE_SZ to the per-connection buffer
limit; the pipe *is* that direction's buffer:
- bytes the destination cannot take yet stay in the pipe, and the relay waits for WRITE on
  the destination;
- when the pipe is full, reading from the source pauses (no READ interest) until a write to
  the destination made room again. Memory is therefore bounded by the two pipes.
- EOF on a source -> shutdown(SHUT_WR) of the destination once that direction's pipe drained;
  when both directions are shut the relay is done (reason "local").
- a socket error on either side ends the relay (reason "remote") after a last non-blocking
  attempt to hand over what the other direction still holds.
If the kernel refuses splice on these sockets (EINVAL) before any byte moved, the owner is told
(`on_relay_unsupported`) and can fall back to copying through Python.

Each socket is registered once with the dispatcher; its mask is READ for the direction it feeds
and WRITE for the direction it drains. The relay never closes the sockets (their owner does,
after `close()`, which unregisters both and closes the pipes).
Must not: know about stats names, clusters or access logs (the owner reads the byte counters).
Thread affinity: the dispatcher's thread (one worker); nothing here is shared.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable

from ..threads.dispatcher import READ, WRITE, Dispatcher

__all__ = ["SpliceRelay", "RelayCallbacks", "splice_supported", "DEFAULT_PIPE_SIZE"]

DEFAULT_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def splice_supported() -> bool:
    """True when os.splice exists and moves bytes from a socket into a pipe here (a one-off
    probe on a socketpair; call once per filter factory, not per connection)."""
    splice = getattr(os, "splice", None)
    if splice is None:
        return False
    a = b = None
    r = w = -1
    try:
        a, b = socket.socketpair()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        a.sendall(b"x")
        b.setblocking(False)
        return splice(b.fileno(), w, 1, flags=_FLAGS) == 1
    except OSError:
        return False
    finally:
        for s in (a, b):
            if s is not None:
                s.close()
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


class RelayCallbacks:
    """What the relay's owner implements; all calls happen on the owner dispatcher."""

    def on_relay_done(self, reason: str) -> None: ...      # "local" (both sides EOF) or "remote"
    def on_relay_unsupported(self) -> None: ...            # EINVAL before any byte moved
    def on_relay_paused(self, from_downstream: bool) -> None: ...   # a pipe filled up
    def on_relay_resumed(self, from_downstream: bool) -> None: ...


class _Direction:
    """One way: src socket -> pipe -> dst socket."""

    __slots__ = ("src", "dst", "dst_sock", "r", "w", "size", "queued", "moved_in", "moved_out",
                 "src_eof", "shut", "full", "from_downstream")

    def __init__(self, src: int, dst_sock: socket.socket, from_downstream: bool) -> None:
        self.src = src
        self.dst_sock = dst_sock
        self.dst = dst_sock.fileno()
        self.r = self.w = -1
        self.size = 0
        self.queued = 0        # bytes in the pipe
        self.moved_in = 0      # bytes read from src
        self.moved_out = 0     # bytes written to dst
        self.src_eof = False
        self.shut = False      # SHUT_WR sent to dst
        self.full = False      # reading src paused until dst takes something
        self.from_downstream = from_downstream

    def open_pipe(self, size: int) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
        except OSError:
            pass  # over pipe-max-size or the user's pipe page quota: keep the default size
        try:
            self.size = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        except OSError:
            self.size = 64 * 1024

    def close_pipe(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.r = self.w = -1


class SpliceRelay:
    __slots__ = ("dispatcher", "callbacks", "clock", "down", "up", "d2u", "u2d", "_masks",
                 "_closed", "_done", "last_activity", "pipe_size", "_splice")

    def __init__(self, dispatcher: Dispatcher, downstream: socket.socket, upstream: socket.socket,
                 callbacks: RelayCallbacks, *, pipe_size: int = DEFAULT_PIPE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.callbacks = callbacks
        self.clock = clock
        self.down = downstream
        self.up = upstream
        self.d2u = _Direction(downstream.fileno(), upstream, True)
        self.u2d = _Direction(upstream.fileno(), downstream, False)
        self._masks = {downstream.fileno(): 0, upstream.fileno(): 0}
        self._closed = False
        self._done = False
        self.pipe_size = pipe_size
        self.last_activity = clock()
        self._splice = os.splice

    # -- byte counters (for stats and access logs) ---------------------------------------------
    @property
    def downstream_rx(self) -> int:
        return self.d2u.moved_in

    @property
    def downstream_tx(self) -> int:
        return self.u2d.moved_out

    @property
    def upstream_rx(self) -> int:
        return self.u2d.moved_in

    @property
    def upstream_tx(self) -> int:
        return self.d2u.moved_out

    @property
    def buffered_bytes(self) -> int:
        return self.d2u.queued + self.u2d.queued

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the pipes and start watching both sockets. Raises OSError (e.g. EMFILE) with
        nothing left open; the caller then relays another way."""
        try:
            self.d2u.open_pipe(self.pipe_size)
            self.u2d.open_pipe(self.pipe_size)
        except OSError:
            self.d2u.close_pipe()
            self.u2d.close_pipe()
            self._closed = True
            raise
        self._update()

    def close(self) -> None:
        """Unregister both sockets and close the pipes (data still in them is dropped).
        Idempotent; the sockets stay open."""
        if self._closed:
            return
        self._closed = True
        for fd, mask in self._masks.items():
            if mask:
                self.dispatcher.unregister(fd)
                self._masks[fd] = 0
        self.d2u.close_pipe()
        self.u2d.close_pipe()

    # -- events --------------------------------------------------------------------------------
    def _on_down(self, mask: int) -> None:
        self._on_event(mask, self.u2d, self.d2u)

    def _on_up(self, mask: int) -> None:
        self._on_event(mask, self.d2u, self.u2d)

    def _on_event(self, mask: int, drain: _Direction, feed: _Direction) -> None:
        """`drain` writes to this socket, `feed` reads from it."""
        if self._closed:
            return
        self.last_activity = self.clock()
        if mask & WRITE and drain.queued:
            self._flush(drain)
        if mask & READ and not self._closed and not feed.src_eof and not feed.full:
            self._pump(feed)
        if not self._closed:
            if self.d2u.shut and self.u2d.shut:
                self._finish("local")
            else:
                self._update()

    def _pump(self, d: _Direction) -> None:
        try:
            n = self._splice(d.src, d.w, d.size, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            if d.queued:
                self._pause(d)  # readable source, but no room in the pipe
            return
        except OSError as e:
            self._error(e)
            return
        if n == 0:
            d.src_eof = True
        else:
            d.queued += n
            d.moved_in += n
        self._flush(d)
        if not self._closed and d.queued >= d.size:
            self._pause(d)

    def _flush(self, d: _Direction) -> None:
        if d.queued:
            try:
                n = self._splice(d.r, d.dst, d.queued, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._error(e)
                return
            d.queued -= n
            d.moved_out += n
            if n and d.full:
                d.full = False
                self.callbacks.on_relay_resumed(d.from_downstream)
        if not d.queued and d.src_eof and not d.shut:
            d.shut = True
            try:
                d.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _pause(self, d: _Direction) -> None:
        if not d.full:
            d.full = True
            self.callbacks.on_relay_paused(d.from_downstream)

    def _error(self, e: OSError) -> None:
        if e.errno == errno.EINVAL and not (self.d2u.moved_in or self.u2d.moved_in):
            self.close()
            self.callbacks.on_relay_unsupported()
            return
        # Hand over what the healthy direction still holds (best effort, non-blocking).
        for d in (self.d2u, self.u2d):
            if d.queued:
                try:
                    n = self._splice(d.r, d.dst, d.queued, flags=_FLAGS)
                    d.queued -= n
                    d.moved_out += n
                except OSError:
                    pass
        self._finish("remote")

    def _finish(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self.close()
        self.callbacks.on_relay_done(reason)

    def _update(self) -> None:
        d2u, u2d = self.d2u, self.u2d
        down_mask = (READ if not d2u.src_eof and not d2u.full else 0) | (WRITE if u2d.queued else 0)
        up_mask = (READ if not u2d.src_eof and not u2d.full else 0) | (WRITE if d2u.queued else 0)
        self._set(d2u.src, down_mask, self._on_down)
        self._set(u2d.src, up_mask, self._on_up)

    def _set(self, fd: int, mask: int, cb: Callable[[int], None]) -> None:
        old = self._masks[fd]
        if mask == old:
            return
        if old == 0:
            self.dispatcher.register(fd, mask, cb)
        elif mask == 0:
            self.dispatcher.unregister(fd)
        else:
            self.dispatcher.modify(fd, mask, cb)
        self._masks[fd] = mask
