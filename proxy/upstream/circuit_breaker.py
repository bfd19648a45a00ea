"""Circuit breakers: cluster-wide resource limits shared by all workers.

Job: count open upstream connections, pending (queued) requests, active requests and active
retries for one cluster across every worker, and refuse a new one when its threshold is
reached (the caller then answers 503 with response flag UO and bumps `upstream_cx_overflow`,
`upstream_rq_pending_overflow` or `upstream_rq_retry_overflow`).

Envoy keeps these as atomics and accepts small overshoot; we use one short lock per cluster
so there is no overshoot at all, with or without a GIL. The lock is never held across I/O or
callbacks: each operation is a compare-and-increment.

Must not: do I/O, call back into pools or filters, or know about workers.
Thread affinity: any thread (shared by all workers of the process).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .cluster_config import Thresholds

__all__ = ["ResourceLimits", "LimitsState"]


@dataclass(frozen=True, slots=True)
class LimitsState:
    """A consistent copy of the counts, for stats and /clusters."""

    connections: int
    pending_requests: int
    requests: int
    retries: int
    max_retries: int = 3   # the retry limit now (max_retries, or the retry budget's)


class ResourceLimits:
    """One per cluster (same object across that cluster's snapshots). Thread-safe.

    Every `try_acquire_*` that returns True must be paired with exactly one `release_*`.
    """

    __slots__ = ("thresholds", "_counts_lock", "_cx", "_pending", "_rq", "_retries", "had_traffic")

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        # _counts_lock guards _cx, _pending, _rq and _retries (read-compare-increment must
        # be atomic across worker threads). Held only for the arithmetic, never across I/O.
        self._counts_lock = threading.Lock()
        self._cx = 0
        self._pending = 0
        self._rq = 0
        self._retries = 0
        # Set (never cleared) at the cluster's first upstream connection: active health checks
        # use no_traffic_interval until then (Envoy: upstream_cx_total used). Read by main.
        self.had_traffic = False

    # -- connections --------------------------------------------------------------------
    def try_acquire_connection(self) -> bool:
        with self._counts_lock:
            if self._cx >= self.thresholds.max_connections:
                return False
            self._cx += 1
            self.had_traffic = True
            return True

    def release_connection(self) -> None:
        with self._counts_lock:
            if self._cx <= 0:
                raise RuntimeError("release_connection without a matching acquire")
            self._cx -= 1

    # -- pending requests ---------------------------------------------------------------
    def try_acquire_pending(self) -> bool:
        with self._counts_lock:
            if self._pending >= self.thresholds.max_pending_requests:
                return False
            self._pending += 1
            return True

    def release_pending(self) -> None:
        with self._counts_lock:
            if self._pending <= 0:
                raise RuntimeError("release_pending without a matching acquire")
            self._pending -= 1

    # -- requests -----------------------------------------------------------------------
    def try_acquire_request(self) -> bool:
        with self._counts_lock:
            if self._rq >= self.thresholds.max_requests:
                return False
            self._rq += 1
            return True

    def release_request(self) -> None:
        with self._counts_lock:
            if self._rq <= 0:
                raise RuntimeError("release_request without a matching acquire")
            self._rq -= 1

    # -- retries ------------------------------------------------------------------------
    def _max_retries(self) -> int:
        """max_retries, or with a retry_budget Envoy's RetryBudgetImpl::max(): that percent of
        the active and pending requests, at least min_retry_concurrency. Under the lock."""
        budget = self.thresholds.retry_budget
        if budget is None:
            return self.thresholds.max_retries
        return max(int(budget[0] / 100 * (self._rq + self._pending)), budget[1])

    def try_acquire_retry(self) -> bool:
        with self._counts_lock:
            if self._retries >= self._max_retries():
                return False
            self._retries += 1
            return True

    def release_retry(self) -> None:
        with self._counts_lock:
            if self._retries <= 0:
                raise RuntimeError("release_retry without a matching acquire")
            self._retries -= 1

    # -- stats --------------------------------------------------------------------------
    def state(self) -> LimitsState:
        with self._counts_lock:
            return LimitsState(self._cx, self._pending, self._rq, self._retries,
                               self._max_retries())

    def gauges(self, priority: str = "default") -> dict[str, int]:
        """Envoy's `circuit_breakers.<priority>.*` gauges (names relative to `cluster.<name>.`;
        `priority` is `default` or `high`).

        `*_open` is 1 while the resource is at its limit; `remaining_*` are present only when
        the thresholds set `track_remaining`, as in Envoy.
        """
        s = self.state()
        t = self.thresholds
        p = f"circuit_breakers.{priority}."
        out = {
            p + "cx_open": int(s.connections >= t.max_connections),
            p + "rq_pending_open": int(s.pending_requests >= t.max_pending_requests),
            p + "rq_open": int(s.requests >= t.max_requests),
            p + "rq_retry_open": int(s.retries >= s.max_retries),
        }
        if t.track_remaining:
            out[p + "remaining_cx"] = max(0, t.max_connections - s.connections)
            out[p + "remaining_pending"] = max(0, t.max_pending_requests - s.pending_requests)
            out[p + "remaining_rq"] = max(0, t.max_requests - s.requests)
            out[p + "remaining_retries"] = max(0, s.max_retries - s.retries)
        return out

    def __repr__(self) -> str:
        s = self.state()
        return (f"ResourceLimits(cx={s.connections}, pending={s.pending_requests}, "
                f"rq={s.requests}, retries={s.retries}, thresholds={self.thresholds})")
