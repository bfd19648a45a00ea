"""SharedCount: a count every worker changes, bounded by a limit (max_active_faults, a
connection_limit filter's connections, overload.global_downstream_max_connections).

Thread affinity: any worker. `lock` guards `count` and is held for one compare-and-add; never
across I/O or callbacks.
"""

from __future__ import annotations

import threading

__all__ = ["SharedCount"]


class SharedCount:
    __slots__ = ("lock", "count")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def try_acquire(self, limit: int | None) -> bool:
        """Add one unless `limit` (None: no limit) is reached."""
        with self.lock:
            if limit is not None and self.count >= limit:
                return False
            self.count += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.count -= 1
