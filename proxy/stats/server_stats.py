"""Envoy's `server.*` stats beyond the life cycle that proxy/server/instance.py keeps
(`live`, `state`, `uptime`, `concurrency`, `hot_restart_epoch`, `total_connections`).

- `server.initialization_time_ms` (histogram): from the process's start to the workers
  serving, recorded once, as Envoy records it when its init manager is done.
- `server.memory_allocated`, `server.memory_heap_size`, `server.memory_physical_size`
  (gauges): Envoy reads tcmalloc; here glibc's `mallinfo2()` (bytes in use by malloc, and its
  arenas plus mmapped blocks: CPython's object arenas are malloc/mmap'ed too) and the resident
  set from /proc/self/statm; without glibc, the resident set for all three.
- `server.days_until_first_cert_expiring` (gauge): the fewest whole days until a certificate
  of any TLS context (listener filter chains and clusters: what /certs lists) expires; 2^32-1
  without one, as Envoy.
- `server.parent_connections` (gauge): made here at 0; the previous epoch's connections
  while it drains are carried into it (proxy/hotrestart/child.py parent_gauge_carryover).
- Counters Envoy has that are 0 by construction here, so dashboards find them:
  `debug_assertion_failures`, `envoy_bug_failures`, `envoy_notifications` (Envoy's internal
  assertion events; ours count as `server.worker_<n>.unhandled_exceptions`),
  `static_unknown_fields`, `dynamic_unknown_fields`, `wip_protos` (unknown or
  work-in-progress fields are refused at load, never counted and accepted),
  `dropped_stat_flushes` (a flush runs to its end on the main thread: none is skipped); gauges
  `compilation_settings.fips_mode` (0: not a FIPS build) and
  `seconds_until_first_ocsp_response_expiring` (0: OCSP stapling is not supported, Envoy's
  value without a staple).

Thread affinity: the main thread (the main store). Must not: be called per request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["ServerStats", "NO_CERTIFICATE_DAYS"]

NO_CERTIFICATE_DAYS = 2**32 - 1   # Envoy's value without any certificate (uint32 max)

_ZERO_COUNTERS = ("debug_assertion_failures", "envoy_bug_failures", "envoy_notifications",
                  "static_unknown_fields", "dynamic_unknown_fields", "wip_protos",
                  "dropped_stat_flushes")
_ZERO_GAUGES = ("compilation_settings.fips_mode", "seconds_until_first_ocsp_response_expiring",
                "parent_connections")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's mallinfo2, or None (another libc, or glibc older than 2.33)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class ServerStats:
    """The stats above in one store (`server.` prefix); `refresh` on the main thread's tick."""

    def __init__(self, store) -> None:
        scope = store.scope("server")
        for name in _ZERO_COUNTERS:
            scope.counter(name)
        for name in _ZERO_GAUGES:
            scope.gauge(name)
        self.initialization_time_ms = scope.histogram("initialization_time_ms", "ms")
        self.memory_allocated = scope.gauge("memory_allocated")
        self.memory_heap_size = scope.gauge("memory_heap_size")
        self.memory_physical_size = scope.gauge("memory_physical_size")
        self.days_until_first_cert_expiring = scope.gauge("days_until_first_cert_expiring")
        self.days_until_first_cert_expiring.set(NO_CERTIFICATE_DAYS)
        self._mallinfo2 = _mallinfo2()

    def initialized(self, seconds: float) -> None:
        """The server is serving, `seconds` after the process started."""
        self.initialization_time_ms.record(seconds * 1000.0)

    def refresh(self, certificates=None) -> None:
        """Memory gauges, and with `certificates` (the /certs entries) the expiry gauge."""
        rss = resident_bytes()
        self.memory_physical_size.set(rss)
        if self._mallinfo2 is not None:
            m = self._mallinfo2()
            self.memory_allocated.set(m.uordblks + m.hblkhd)
            self.memory_heap_size.set(m.arena + m.hblkhd)
        else:
            self.memory_allocated.set(rss)
            self.memory_heap_size.set(rss)
        if certificates is not None:
            self.days_until_first_cert_expiring.set(first_expiry_days(certificates))


def first_expiry_days(certificates) -> int:
    """The fewest days_until_expiration of /certs entries (each {"ca_cert": [...],
    "cert_chain": [...]}), NO_CERTIFICATE_DAYS without any."""
    days = [int(c["days_until_expiration"]) for entry in certificates
            for c in (*entry.get("ca_cert", ()), *entry.get("cert_chain", ()))]
    return min(days) if days else NO_CERTIFICATE_DAYS
