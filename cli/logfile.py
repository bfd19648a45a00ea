"""The daemon's `--log-file`, reopened on SIGUSR1 (log rotation) for the supervisor and its epochs.

Job: the supervisor's stdout/stderr are the log file (fds 1 and 2); the epochs' stdout and
stderr are the write end of one pipe, and a thread of the supervisor copies the pipe into
fd 2. `reopen()` opens the file again at its path and puts it in place of fds 1 and 2
(dup2 is atomic, so the copying thread writes either to the old file or the new one, never
nowhere). After logrotate renamed the file and sent SIGUSR1, every later line, from the
supervisor and from every epoch (old or new), lands in the new file.

Why a pipe: an epoch inherits its stdout/stderr as file descriptions shared with the
supervisor; nothing outside the epoch can repoint them, and the epoch (proxy.server.main) has
no log-file option to reopen, only its access logs.

Limits: the pipe holds up to 1 MiB (F_SETPIPE_SZ, best effort; 64 KiB otherwise) so an epoch
is not held up while the thread writes; if the file cannot be written (disk full) the thread
drops what it read rather than stop reading, so a full disk never blocks an epoch's workers.
Must not: import the proxy. Thread affinity: `reopen` and `close` on the supervisor's main
thread; the copying thread ("log-relay") only reads the pipe and writes fd 2.
"""

from __future__ import annotations

import fcntl
import os
import threading

__all__ = ["LogRelay", "open_log"]

_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


class LogRelay:
    """Owns the epochs' output pipe and the copying thread; `write_fd` is what epochs get as
    stdout and stderr."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._r, self.write_fd = os.pipe()  # both close-on-exec; Popen dup2s write_fd into the child
        try:
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default size still works
        self._thread = threading.Thread(target=self._copy, name="log-relay", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        while data := os.read(self._r, 65536):
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(2, view):]
            except OSError:
                pass  # dropped: see the module's Limits

    def reopen(self) -> None:
        """Open the file at its path again (logrotate renamed it) as fds 1 and 2."""
        fd = open_log(self.path)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)

    def close(self, timeout: float = 2.0) -> None:
        """Once the epochs have exited: copy what they left in the pipe, then stop the thread."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
            self._thread.join(timeout)
            if not self._thread.is_alive():
                os.close(self._r)
