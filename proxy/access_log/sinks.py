"""Where access-log lines go: an append-only file, stdout or stderr, buffered like Envoy's.

Job: `FileSink(path)` opens the file once in append mode; `StreamSink(stream)` writes to a
text stream (sys.stdout / sys.stderr). Both are `BufferedSink`s: `write(line)` from any worker
thread only appends the whole line to an in-memory buffer; a flush thread per sink (Envoy's
access-log flush thread) writes the buffer out every `flush_interval` seconds (1 s), as soon as
64 KiB are pending, and on `flush()` / `close()`. Lines never interleave: a line is one list
element and a batch is written by one writer at a time.

`SinkRegistry` shares one sink per path (Envoy's AccessLogManager): loggers for the same path
acquire the same sink, which is closed when the last one releases it. `DEFAULT_SINKS` is the
process-wide registry used when the server does not pass its own.

Thread affinity: every method is safe from any thread. Locks (never held while formatting):
- `BufferedSink._buffer_lock` guards `_pending`, `_pending_bytes`, `_closed`, `dropped_lines`;
  held only to append or swap the list, never across I/O.
- `BufferedSink._flush_lock` serialises writes of batches to the destination (held across
  that I/O by design: it is the one writer) and the fd's reopen/close.
- `SinkRegistry._lock` guards the registry's dict and reference counts.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["BufferedSink", "FileSink", "StreamSink", "SinkRegistry", "DEFAULT_SINKS",
           "FLUSH_INTERVAL", "MIN_FLUSH_SIZE", "MAX_PENDING_BYTES"]

FLUSH_INTERVAL = 1.0             # seconds between timed flushes
MIN_FLUSH_SIZE = 64 * 1024       # Envoy's MIN_FLUSH_SIZE: wake the flusher early past this
# Bound on buffered bytes when the destination stalls (full disk, blocked pipe): past it new
# lines are dropped and counted instead of growing memory without limit.
MAX_PENDING_BYTES = 16 * 1024 * 1024


class BufferedSink:
    """Buffer lines from any thread; a flush thread hands batches to `_write_out`."""

    def __init__(self, name: str, flush_interval: float = FLUSH_INTERVAL,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.name = name
        self.flush_interval = flush_interval
        self.max_pending_bytes = max_pending_bytes
        self._buffer_lock = threading.Lock()
        self._wake = threading.Condition(self._buffer_lock)
        self._flush_lock = threading.Lock()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._closed = False
        self.dropped_lines = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name=f"access-log-flush:{name}",
                                        daemon=True)
        self._thread.start()

    # -- called by workers ----------------------------------------------------------------
    def write(self, line: str) -> None:
        with self._buffer_lock:
            if self._closed:
                self.dropped_lines += 1
                return
            if self._pending_bytes + len(line) > self.max_pending_bytes:
                self.dropped_lines += 1
                return
            self._pending.append(line)
            self._pending_bytes += len(line)
            if self._pending_bytes >= MIN_FLUSH_SIZE:
                self._wake.notify()

    # -- flushing ---------------------------------------------------------------------------
    def _take(self) -> list[str]:
        with self._buffer_lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            return batch

    def flush(self) -> None:
        """Write everything buffered so far, in the calling thread."""
        with self._flush_lock:
            batch = self._take()
            if batch:
                try:
                    self._write_out("".join(batch))
                except OSError as e:
                    self.write_errors += 1
                    print(f"access log {self.name}: write failed: {e}", file=sys.stderr)

    def _run(self) -> None:
        while True:
            with self._buffer_lock:
                if not self._closed and self._pending_bytes < MIN_FLUSH_SIZE:
                    self._wake.wait(self.flush_interval)
                closed = self._closed
            self.flush()
            if closed:
                return

    def close(self) -> None:
        """Flush what is buffered, stop the flush thread, release the destination."""
        with self._buffer_lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        with self._flush_lock:
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- destination (subclasses) -----------------------------------------------------------
    def _write_out(self, data: str) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def reopen(self) -> None:
        """Reopen the destination (log rotation: SIGUSR1, admin /reopen_logs)."""


class FileSink(BufferedSink):
    """Append-only log file, opened once (O_APPEND: each batch lands at the end even if
    another process appends to the same file)."""

    def __init__(self, path: str, flush_interval: float = FLUSH_INTERVAL,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.path = path
        self._fd = self._open(path)          # open errors surface to the caller (config time)
        super().__init__(path, flush_interval, max_pending_bytes)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                       0o644)

    def _write_out(self, data: str) -> None:
        view = memoryview(data.encode("utf-8", "backslashreplace"))
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def reopen(self) -> None:
        self.flush()
        with self._flush_lock:
            new_fd = self._open(self.path)
            old, self._fd = self._fd, new_fd
            os.close(old)

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamSink(BufferedSink):
    """sys.stdout / sys.stderr (or any text stream); flushed after each batch."""

    def __init__(self, stream: TextIO, flush_interval: float = FLUSH_INTERVAL,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.stream = stream
        super().__init__(getattr(stream, "name", "<stream>"), flush_interval, max_pending_bytes)

    def _write_out(self, data: str) -> None:
        if self.stream.closed:  # (at exit, under a test runner that closed its capture)
            return
        self.stream.write(data)
        self.stream.flush()


class SinkRegistry:
    """One shared sink per key (a file path, or "<stdout>" / "<stderr>"), reference-counted."""

    def __init__(self, flush_interval: float = FLUSH_INTERVAL) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[str, tuple[BufferedSink, int]] = {}
        # Of the sinks opened from now on: the server sets it once, before loading the config,
        # from --file-flush-interval-msec (Envoy's flag).
        self.flush_interval = flush_interval

    def acquire(self, key: str, factory: Callable[[], BufferedSink]) -> BufferedSink:
        with self._lock:
            entry = self._sinks.get(key)
            if entry is not None and not entry[0].closed:
                self._sinks[key] = (entry[0], entry[1] + 1)
                return entry[0]
            sink = factory()
            self._sinks[key] = (sink, 1)
            return sink

    def acquire_file(self, path: str) -> BufferedSink:
        return self.acquire(path, lambda: FileSink(path, self.flush_interval))

    def acquire_stream(self, which: str) -> BufferedSink:
        """`which` is "stdout" or "stderr"; the stream is looked up when first opened."""
        if which not in ("stdout", "stderr"):
            raise ValueError(which)
        return self.acquire(f"<{which}>", lambda: StreamSink(getattr(sys, which), self.flush_interval))

    def release(self, sink: BufferedSink) -> None:
        to_close = None
        with self._lock:
            for key, (s, refs) in self._sinks.items():
                if s is sink:
                    if refs <= 1:
                        del self._sinks[key]
                        to_close = s
                    else:
                        self._sinks[key] = (s, refs - 1)
                    break
        if to_close is not None:
            to_close.close()     # outside the registry lock: close does I/O

    def flush_all(self) -> None:
        for sink in self._snapshot():
            sink.flush()

    def reopen_all(self) -> None:
        for sink in self._snapshot():
            sink.reopen()

    def close_all(self) -> None:
        with self._lock:
            sinks = [s for s, _ in self._sinks.values()]
            self._sinks.clear()
        for sink in sinks:
            sink.close()

    def _snapshot(self) -> list[BufferedSink]:
        with self._lock:
            return [s for s, _ in self._sinks.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sinks)

    def __repr__(self) -> str:
        return f"SinkRegistry({sorted(self._sinks)!r})"


# Process-wide registry (the one module-level mutable object here; guarded by its own
# `_lock`). The server may pass its own SinkRegistry to AccessLogConfig.create instead.
DEFAULT_SINKS: Any = SinkRegistry()
# Lines buffered at interpreter exit are written out, not lost with the daemon flush threads.
atexit.register(DEFAULT_SINKS.flush_all)
