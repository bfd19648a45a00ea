"""Stat-name lookups for the admin's `/stats/recentlookups` (Envoy's Stats::RecentLookups).

What counts as a lookup here: a stat name a store is asked for that its user had not cached,
i.e. every call that reaches `Store._create` (the stat's creation, or a second user finding
it under the store's lock). Envoy counts its symbol table's name encodings, which include
names built per request; ftproxy's request path asks its store by name only through
already-made stats, and counting those dict hits would cost every request, so it does not.

Envoy's behaviour kept: `total` counts always; the names are kept only while tracking is on
(off at start: `/stats/recentlookups/enable`), at most CAPACITY of them (the least recently
looked up is dropped); `disable` forgets the names, `clear` the names and the total.

Thread affinity: any thread (stores are created on workers, main and admin threads).
Must not: call out while holding its lock.
"""

from __future__ import annotations

import threading

__all__ = ["RecentLookups", "CAPACITY"]

CAPACITY = 100   # Envoy's admin sets its symbol table's recent-lookup capacity to 100


class RecentLookups:
    def __init__(self) -> None:
        # RecentLookups._lock guards total, _capacity and _names (dict order: least recent
        # first). Held for a few dict operations; never while calling out.
        self._lock = threading.Lock()
        self.total = 0
        self._capacity = 0
        self._names: dict[str, int] = {}

    def lookup(self, name: str) -> None:
        with self._lock:
            self.total += 1
            if not self._capacity:
                return
            n = self._names.pop(name, 0)
            self._names[name] = n + 1
            if len(self._names) > self._capacity:
                del self._names[next(iter(self._names))]

    def enable(self) -> None:
        with self._lock:
            self._capacity = CAPACITY

    def disable(self) -> None:
        with self._lock:
            self._capacity = 0
            self._names.clear()

    def clear(self) -> None:
        with self._lock:
            self.total = 0
            self._names.clear()

    def render(self) -> str:
        """The page Envoy 1.40 answers: each name with its count, fewest first (then by name),
        and the total; or, tracking off, how to turn it on."""
        with self._lock:
            enabled = bool(self._capacity)
            names = sorted(self._names.items(), key=lambda kv: (kv[1], kv[0]))
            total = self.total
        if not enabled:
            head = "Lookup tracking is not enabled. Use /stats/recentlookups/enable to enable.\n"
        else:
            head = "   Count Lookup\n" + "".join(f"{n:8d} {name}\n" for name, n in names)
        return f"{head}\ntotal: {total}\n"
