"""Outlier detection decisions: Envoy's DetectorImpl (outlier_detection_impl.cc) as pure logic.

Job: for one cluster, keep each host's ejection state and decide ejections and unejections:
- a consecutive-failure report (a worker's host monitor reached consecutive_5xx,
  consecutive_gateway_failure or consecutive_local_origin_failure) ejects the host at once
  (`on_consecutive`), unless it is already ejected;
- on each `interval` tick (`on_interval`): hosts whose ejection time is over are unejected
  (time = min(base_ejection_time x backoff, max_ejection_time) + jitter, where the backoff
  grows by one at each ejection and shrinks by one per interval the host stays in), then the
  success-rate and failure-percentage detectors run over the interval's request counts
  (external origin, then local origin);
- `max_ejection_percent` caps ejections (ejections_overflow), `always_eject_one_host` lets
  the first one through; each `enforcing_*` percentage decides whether a detected outlier is
  really ejected (`rand(100) < percent`).
Stats (`cluster.<name>.outlier_detection.*`) are counted through the injected `count` and
`set_active` callables; clocks and randomness are injected: this module does no I/O and
imports no threading or time.

Thread affinity: one thread (main). Must not: touch sockets, workers or snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .outlier_config import OutlierDetectionConfig

__all__ = ["OutlierDetector", "HostOutlierState", "Sample", "CONSECUTIVE_5XX",
           "CONSECUTIVE_GATEWAY_FAILURE", "CONSECUTIVE_LOCAL_ORIGIN_FAILURE", "SUCCESS_RATE",
           "SUCCESS_RATE_LOCAL_ORIGIN", "FAILURE_PERCENTAGE", "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
           "COUNTERS"]

# Envoy's OutlierEjectionType, spelled as its stats spell them.
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
SUCCESS_RATE = "success_rate"
SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"

_TYPES = (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE, SUCCESS_RATE,
          CONSECUTIVE_LOCAL_ORIGIN_FAILURE, SUCCESS_RATE_LOCAL_ORIGIN, FAILURE_PERCENTAGE,
          FAILURE_PERCENTAGE_LOCAL_ORIGIN)
# Every counter Envoy creates under outlier_detection. (ejections_total,
# ejections_consecutive_5xx and ejections_success_rate are Envoy's deprecated ones, kept.)
COUNTERS = tuple(sorted({f"ejections_{k}_{t}" for k in ("detected", "enforced") for t in _TYPES}
                        | {"ejections_enforced_total", "ejections_overflow", "ejections_total",
                           "ejections_detected_degradation",   # (detect_degraded_hosts: refused)
                           "ejections_consecutive_5xx", "ejections_success_rate"}))

_ENFORCING: dict[str, Callable[[OutlierDetectionConfig], int]] = {
    CONSECUTIVE_5XX: lambda c: c.enforcing_consecutive_5xx,
    CONSECUTIVE_GATEWAY_FAILURE: lambda c: c.enforcing_consecutive_gateway_failure,
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE: lambda c: c.enforcing_consecutive_local_origin_failure,
    SUCCESS_RATE: lambda c: c.enforcing_success_rate,
    SUCCESS_RATE_LOCAL_ORIGIN: lambda c: c.enforcing_local_origin_success_rate,
    FAILURE_PERCENTAGE: lambda c: c.enforcing_failure_percentage,
    FAILURE_PERCENTAGE_LOCAL_ORIGIN: lambda c: c.enforcing_failure_percentage_local_origin,
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One host's requests over the last interval: external origin (HTTP statuses; with the
    split off, local-origin failures too) and local origin (split on only)."""

    total: int = 0
    success: int = 0
    local_total: int = 0
    local_success: int = 0


class HostOutlierState:
    """Envoy's DetectorHostMonitorImpl, main-thread half: ejection bookkeeping."""

    __slots__ = ("ejected", "num_ejections", "backoff", "last_ejection", "last_unejection",
                 "jitter", "success_rate", "local_success_rate")

    def __init__(self) -> None:
        self.ejected = False
        self.num_ejections = 0
        self.backoff = 0
        self.last_ejection: float | None = None
        self.last_unejection: float | None = None
        self.jitter = 0.0
        self.success_rate = -1.0        # /clusters success_rate (-1: none this interval)
        self.local_success_rate = -1.0  # /clusters local_origin_success_rate


class OutlierDetector:
    """Decisions for one cluster. `count(stat)` adds one to `outlier_detection.<stat>`;
    `set_active(n)` sets the ejections_active gauge; `reset(key, types)` clears the host
    monitor's consecutive counters of those types; `rand(n)` is uniform in [0, n)."""

    def __init__(self, config: OutlierDetectionConfig, count: Callable[[str], None],
                 set_active: Callable[[int], None], rand: Callable[[int], int],
                 reset: Callable[[object, tuple[str, ...]], None] = lambda key, types: None) -> None:
        self.config = config
        self._count = count
        self._set_active = set_active
        self._rand = rand
        self._reset = reset
        self.hosts: dict[object, HostOutlierState] = {}
        self.active = 0
        # (average, ejection threshold) of the last success-rate run: external, local origin.
        self.sr_numbers = {SUCCESS_RATE: (-1.0, -1.0), SUCCESS_RATE_LOCAL_ORIGIN: (-1.0, -1.0)}

    # -- membership ----------------------------------------------------------------------------
    def set_hosts(self, keys: Iterable[object]) -> None:
        """The cluster's hosts now: new ones start in, removed ones are forgotten (an
        ejected one leaves ejections_active)."""
        keep = set(keys)
        for key in [k for k in self.hosts if k not in keep]:
            if self.hosts.pop(key).ejected:
                self._add_active(-1)
        for key in keys:
            if key not in self.hosts:
                self.hosts[key] = HostOutlierState()

    def is_ejected(self, key: object) -> bool:
        st = self.hosts.get(key)
        return st is not None and st.ejected

    # -- events ---------------------------------------------------------------------------------
    def on_consecutive(self, key: object, kind: str, now: float) -> bool:
        """A host monitor's consecutive counter of `kind` reached its threshold (Envoy's
        onConsecutiveErrorWorker). Returns whether the host was ejected."""
        st = self.hosts.get(key)
        if st is None or st.ejected:
            return False  # removed meanwhile, or already out: the counter is left as it is
        self._count(f"ejections_detected_{kind}")
        ejected = self._eject(key, st, kind, now)
        if kind == CONSECUTIVE_5XX:
            self._count("ejections_consecutive_5xx")  # deprecated twin
        self._reset(key, (kind,))
        return ejected

    def uneject(self, key: object, now: float) -> bool:
        """Take a host back in before its time (a passing active health check, with
        successful_active_health_check_uneject_host)."""
        st = self.hosts.get(key)
        if st is None or not st.ejected:
            return False
        self._uneject(key, st, now)
        return True

    def on_interval(self, now: float, samples: Mapping[object, Sample]) -> bool:
        """The interval timer (Envoy's onIntervalTimer). `samples`: each host's requests since
        the previous tick. Returns whether some host was ejected or unejected."""
        changed = False
        cfg = self.config
        for key, st in self.hosts.items():
            if st.ejected and self._ejection_over(st, now):
                self._uneject(key, st, now)
                changed = True
            st.success_rate = st.local_success_rate = -1.0
        changed |= self._success_rate_ejections(now, samples, local=False)
        changed |= self._success_rate_ejections(now, samples, local=True)
        for st in self.hosts.values():
            if (not st.ejected and st.last_unejection is not None
                    and now - st.last_unejection >= cfg.interval and st.backoff):
                st.backoff -= 1
        return changed

    def ejection_time(self, st: HostOutlierState) -> float:
        cfg = self.config
        return min(cfg.base_ejection_time * st.backoff, cfg.max_ejection_time) + st.jitter

    # -- internals --------------------------------------------------------------------------------
    def _ejection_over(self, st: HostOutlierState, now: float) -> bool:
        assert st.last_ejection is not None
        # Compared in whole milliseconds, as Envoy's chrono milliseconds.
        return round(self.ejection_time(st) * 1000) <= round((now - st.last_ejection) * 1000)

    def _add_active(self, d: int) -> None:
        self.active += d
        self._set_active(self.active)

    def _enforced(self, kind: str) -> bool:
        pct = _ENFORCING[kind](self.config)
        return pct >= 100 or (pct > 0 and self._rand(100) < pct)

    def _eject(self, key: object, st: HostOutlierState, kind: str, now: float) -> bool:
        """Envoy's ejectHost."""
        cfg = self.config
        max_percent = min(100, cfg.max_ejection_percent)
        ejected_percent = 100.0 * (self.active + 1) / len(self.hosts)
        allowed = ejected_percent <= max_percent
        if cfg.always_eject_one_host:
            allowed = self.active == 0 or allowed
        if not allowed:
            self._count("ejections_overflow")
            return False
        if kind in (CONSECUTIVE_5XX, SUCCESS_RATE):
            self._count("ejections_total")  # deprecated
        if not self._enforced(kind):
            return False
        self._add_active(1)
        self._count("ejections_enforced_total")
        self._count(f"ejections_enforced_{kind}")
        st.ejected = True
        st.num_ejections += 1
        st.last_ejection = now
        jitter_ms = int(cfg.max_ejection_time_jitter * 1000)
        st.jitter = (self._rand(jitter_ms + 1) if jitter_ms > 0 else 0) / 1000
        if st.backoff * cfg.base_ejection_time < cfg.max_ejection_time + cfg.base_ejection_time:
            st.backoff += 1
        return True

    def _uneject(self, key: object, st: HostOutlierState, now: float) -> None:
        self._add_active(-1)
        st.ejected = False
        st.last_unejection = now
        self._reset(key, (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE,
                          CONSECUTIVE_LOCAL_ORIGIN_FAILURE))

    def _success_rate_ejections(self, now: float, samples: Mapping[object, Sample],
                                local: bool) -> bool:
        """Envoy's processSuccessRateEjections for one monitor type."""
        cfg = self.config
        sr_kind = SUCCESS_RATE_LOCAL_ORIGIN if local else SUCCESS_RATE
        fp_kind = FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else FAILURE_PERCENTAGE
        self.sr_numbers[sr_kind] = (-1.0, -1.0)
        n = len(self.hosts)
        if n < cfg.success_rate_minimum_hosts and n < cfg.failure_percentage_minimum_hosts:
            return False
        sr_hosts: list[tuple[object, float]] = []
        fp_hosts: list[tuple[object, float]] = []
        total_rate = 0.0
        min_volume = min(cfg.success_rate_request_volume, cfg.failure_percentage_request_volume)
        for key, st in self.hosts.items():
            if st.ejected:
                continue
            s = samples.get(key)
            if s is None:
                continue
            total, success = (s.local_total, s.local_success) if local else (s.total, s.success)
            if not total:
                continue
            rate = success * 100.0 / total
            if total >= min_volume:
                if local:
                    st.local_success_rate = rate
                else:
                    st.success_rate = rate
            if total >= cfg.success_rate_request_volume:
                sr_hosts.append((key, rate))
                total_rate += rate
            if total >= cfg.failure_percentage_request_volume:
                fp_hosts.append((key, rate))
        changed = False
        if sr_hosts and len(sr_hosts) >= cfg.success_rate_minimum_hosts:
            mean = total_rate / len(sr_hosts)
            stdev = math.sqrt(sum((r - mean) ** 2 for _, r in sr_hosts) / len(sr_hosts))
            threshold = mean - cfg.success_rate_stdev_factor / 1000.0 * stdev
            self.sr_numbers[sr_kind] = (mean, threshold)
            for key, rate in sr_hosts:
                if rate < threshold:
                    self._count("ejections_success_rate")  # deprecated
                    self._count(f"ejections_detected_{sr_kind}")
                    changed |= self._eject(key, self.hosts[key], sr_kind, now)
        if fp_hosts and len(fp_hosts) >= cfg.failure_percentage_minimum_hosts:
            for key, rate in fp_hosts:
                st = self.hosts[key]
                if 100.0 - rate >= cfg.failure_percentage_threshold and not st.ejected:
                    self._count(f"ejections_detected_{fp_kind}")
                    changed |= self._eject(key, st, fp_kind, now)
        return changed
