"""The in-memory store behind `envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig`:
one per configured cache filter, shared by every worker of the process.

What it holds: immutable `CachedResponse`s (a frozen dataclass: the response's header fields
as a tuple, its body as bytes, its trailers, and when it was received) by key, and for a
response that varies a `VaryIndex` (the varied names) at the base key with each variant under
the base key plus its vary identifier (Envoy's SimpleHttpCache layout).

Synchronisation: one lock, `CacheStore.lock` ("cache store lock"), guards the entry map and
its byte count. It is held only for dictionary operations (a get with its LRU touch, a put
with its evictions); never while a response is read from or written to a socket, never while
a filter runs. What a lookup gets out is an immutable object: the worker copies headers from
it after the lock is released, and an update replaces the object instead of changing it.

Bounded memory: `max_bytes` over every stored body and header (least recently used entries
go first), and `max_entry_bytes` per response (a bigger response is streamed through and not
stored). Envoy's SimpleHttpCache has no bound; these are ftproxy's defaults (the config message
has no field for them).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["CachedResponse", "VaryIndex", "CacheStore", "DEFAULT_MAX_BYTES",
           "DEFAULT_MAX_ENTRY_BYTES"]

# A process's whole cache: 64 MiB of bodies and headers. The threat: an origin serving many
# distinct cacheable URLs would otherwise grow the proxy without limit.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# One response: 8 MiB (a bigger one is passed through, uncached), so that one large object
# cannot evict the whole cache.
DEFAULT_MAX_ENTRY_BYTES = 8 * 1024 * 1024
_ENTRY_OVERHEAD = 256  # a rough per-entry cost (key, objects) so that empty bodies count too


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...] | None
    response_time: float   # when its headers arrived (or were last refreshed by a 304)
    freshness: Any = None  # the cache rules' parsed view of its headers (cache_policy.Freshness)

    def size(self) -> int:
        return (len(self.body) + sum(len(k) + len(v) for k, v in self.headers)
                + sum(len(k) + len(v) for k, v in self.trailers or ()) + _ENTRY_OVERHEAD)


@dataclass(frozen=True, slots=True)
class VaryIndex:
    """At a base key: the response there varies on these header names."""
    names: tuple[str, ...]

    def size(self) -> int:
        return sum(len(n) for n in self.names) + _ENTRY_OVERHEAD


class CacheStore:
    """Thread-safe map key -> CachedResponse | VaryIndex, LRU-bounded (see the module doc)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        # "cache store lock": guards _entries and _bytes (dictionary operations only).
        self.lock = threading.Lock()
        self._entries: OrderedDict[bytes, CachedResponse | VaryIndex] = OrderedDict()
        self._bytes = 0

    def get(self, key: bytes) -> CachedResponse | VaryIndex | None:
        with self.lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: CachedResponse | VaryIndex) -> bool:
        """Store (or replace) `entry`; False when it is bigger than one entry may be."""
        size = entry.size()
        if size > self.max_entry_bytes:
            return False
        with self.lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size()
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size()
        return True

    def replace_if_same(self, key: bytes, old: CachedResponse, new: CachedResponse) -> None:
        """A 304's refreshed headers: replace `old` only if it is still what `key` holds (a
        newer response stored meanwhile wins)."""
        with self.lock:
            if self._entries.get(key) is old:
                self._entries[key] = new
                self._bytes += new.size() - old.size()

    def stats(self) -> tuple[int, int]:
        """(entries, bytes), for tests and debugging."""
        with self.lock:
            return len(self._entries), self._bytes
