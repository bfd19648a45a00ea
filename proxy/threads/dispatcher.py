"""Dispatcher: one epoll event loop per thread, with timers and a cross-thread post queue.

Every worker thread (and the main thread) runs exactly one Dispatcher. Everything registered
with it (sockets, timers) belongs to its thread: only the owner thread may register,
modify, or unregister. The one thread-safe entry point is `post(fn)`, which queues `fn` to run
on the owner thread and wakes the loop through an eventfd (Envoy's Dispatcher::post).

OS facts that shaped this:
- epoll keys on file descriptors: closing an fd that is still registered leaves a stale
  entry, so `unregister` always runs before `close` (Connection.close does that).
- Waking a thread blocked in epoll_wait from another thread needs a kernel object; an eventfd
  is one fd and one 8-byte write (a socketpair would be two fds).
- `select.epoll` is used directly rather than through `selectors`: the latter builds a key
  object per registration and a list of (key, mask) tuples per wake-up, measurable on a
  ~100 µs request budget. Linux only, like SO_REUSEPORT balancing and eventfd.

Errors: a callback that raises is logged and counted (`unhandled_exceptions`) and the loop
goes on; callers are expected to contain failures to their own connection first.
Must not: know about HTTP, config or stats names.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Dispatcher", "Timer", "READ", "WRITE", "PEER_CLOSED", "EDGE"]

log = logging.getLogger("ftproxy.dispatcher")

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# The peer shut down its sending side (FIN) or reset: asked for while a connection does not
# read, so that a close is seen behind bytes nobody reads yet (Envoy's early close detection).
PEER_CLOSED = select.EPOLLRDHUP
# Edge-triggered: an event when more bytes arrive, not while unread bytes wait. For a socket
# whose bytes are peeked and left in place (listener filters: network/active_socket.py).
EDGE = select.EPOLLET
# An error or hang-up is reported to the callback as both readable and writable: its next
# recv/send meets the error and handles it like any other failure.
_ERR = select.EPOLLERR | select.EPOLLHUP
_READ_WRITE = READ | WRITE


class Timer:
    """A one-shot timer owned by a Dispatcher. `enable(delay)` (re)arms, `disable()` cancels."""

    # `deadline` is a plain attribute (read on the hot path): the monotonic time at which the
    # timer fires, or None when it is disabled.
    __slots__ = ("_dispatcher", "_callback", "deadline", "_entry")

    def __init__(self, dispatcher: Dispatcher, callback: Callable[[], None]) -> None:
        self._dispatcher = dispatcher
        self._callback = callback
        self.deadline: float | None = None
        self._entry: list | None = None

    def enable(self, delay: float) -> None:
        if self._entry is not None:
            self.disable()
        self.deadline = deadline = time.monotonic() + delay
        self._entry = self._dispatcher._push_timer(deadline, self)

    def disable(self) -> None:
        if self._entry is not None:
            self._entry[2] = None  # lazy deletion: the heap entry is skipped when popped
            self._entry = None
            self._dispatcher._timer_cancelled()
        self.deadline = None

    @property
    def enabled(self) -> bool:
        return self._entry is not None

    def _fire(self) -> None:
        self._entry = None
        self.deadline = None
        self._callback()


class Dispatcher:
    def __init__(self, name: str, on_unhandled: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_unhandled = on_unhandled  # e.g. a stats counter's inc
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._timers: list[list] = []  # heap of [deadline, seq, Timer|None]
        self._cancelled = 0            # entries in _timers whose Timer is None
        self._seq = 0
        # Cross-thread queue. deque.append/popleft are atomic on GIL and free-threaded builds.
        self._posted: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.register(self._wake_fd, READ, self._on_wake)
        self._deferred: list[Callable[[], None]] = []
        # Connections with writes queued this iteration: a connection appends itself (once per
        # iteration) and its `flush_scheduled()` runs once all events are handled.
        self.pending_flushes: list = []
        self._running = False
        self._exit_requested = False
        self.unhandled_exceptions = 0
        self.loop_iterations = 0

    # -- thread-safe ---------------------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on this dispatcher's thread. Safe from any thread."""
        self._posted.append(fn)
        try:
            os.eventfd_write(self._wake_fd, 1)
        except (BlockingIOError, OSError):
            pass  # counter saturated or loop closed: the queue still holds fn

    def exit(self) -> None:
        """Ask the loop to return from run() after the current iteration. Safe from any thread."""
        self._exit_requested = True
        self.post(lambda: None)

    # -- owner thread only -----------------------------------------------------------------
    def register(self, fd, events: int, callback: Callable[[int], None]) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        self._epoll.register(fd, events)
        self._callbacks[fd] = callback

    def modify(self, fd, events: int, callback: Callable[[int], None]) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        self._epoll.modify(fd, events)
        self._callbacks[fd] = callback

    def unregister(self, fd) -> None:
        try:
            if not isinstance(fd, int):
                fd = fd.fileno()
            self._callbacks.pop(fd, None)
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def create_timer(self, callback: Callable[[], None]) -> Timer:
        return Timer(self, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        t = Timer(self, callback)
        t.enable(delay)
        return t

    def defer(self, fn: Callable[[], None]) -> None:
        """Run `fn` at the end of the current loop iteration (deferred deletion)."""
        self._deferred.append(fn)

    def _timer_cancelled(self) -> None:
        # Cancelled entries stay in the heap until they reach its top; long timers (idle
        # timeouts of an hour) would pile up, so compact once they are most of the heap.
        self._cancelled += 1
        if self._cancelled > 1024 and self._cancelled * 2 > len(self._timers):
            self._timers = [e for e in self._timers if e[2] is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def _push_timer(self, deadline: float, timer: Timer) -> list:
        self._seq += 1
        entry = [deadline, self._seq, timer]
        heapq.heappush(self._timers, entry)
        return entry

    def _on_wake(self, _mask: int) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _run_guarded(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:
            self._unhandled(f"in {fn!r}")

    def _unhandled(self, where: str) -> None:
        self.unhandled_exceptions += 1
        log.exception("dispatcher %s: unhandled exception %s", self.name, where)
        if self._on_unhandled is not None:
            self._on_unhandled()

    def run(self) -> None:
        """Run the loop on the calling thread until exit() is called."""
        self._running = True
        poll = self._epoll.poll
        callbacks = self._callbacks
        posted = self._posted
        try:
            while not self._exit_requested:
                self.loop_iterations += 1
                timers = self._timers  # may be replaced by a compaction
                timeout = None
                if posted or self._deferred or self.pending_flushes:
                    timeout = 0
                else:
                    while timers and timers[0][2] is None:
                        heapq.heappop(timers)
                        self._cancelled -= 1
                    if timers:
                        timeout = max(0.0, timers[0][0] - time.monotonic())
                for fd, mask in poll(-1 if timeout is None else timeout):
                    cb = callbacks.get(fd)
                    if cb is None:
                        continue  # unregistered by an earlier callback of this batch
                    if mask & _ERR:
                        mask |= _READ_WRITE
                    try:
                        cb(mask)
                    except Exception:
                        self._unhandled("in an I/O callback")
                timers = self._timers
                if timers:
                    now = time.monotonic()
                    while timers and (timers[0][2] is None or timers[0][0] <= now):
                        entry = heapq.heappop(timers)
                        timer = entry[2]
                        if timer is None:
                            self._cancelled -= 1
                        else:
                            self._run_guarded(timer._fire)
                            timers = self._timers
                # Run only what was queued when the drain started (trio's bounded drain).
                for _ in range(len(posted)):
                    self._run_guarded(posted.popleft())
                if self._deferred:
                    deferred, self._deferred = self._deferred, []
                    for fn in deferred:
                        self._run_guarded(fn)
                if self.pending_flushes:
                    flushes, self.pending_flushes = self.pending_flushes, []
                    for conn in flushes:
                        try:
                            conn.flush_scheduled()
                        except Exception:
                            self._unhandled("in a write flush")
        finally:
            self._running = False

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run the loop on the calling thread until `done()` (polled every 5 ms) or `timeout`
        seconds; then return `done()`. For start-up waits (cluster warming), before run()."""
        deadline = time.monotonic() + timeout

        def check() -> None:
            if done() or time.monotonic() >= deadline:
                self._exit_requested = True
            else:
                timer.enable(0.005)

        timer = self.create_timer(check)
        timer.enable(0)
        self.run()
        timer.disable()
        self._exit_requested = False
        return done()

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wake_fd)
