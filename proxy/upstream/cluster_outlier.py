"""ClusterOutlierDetection: one cluster's outlier detection on the main thread.

Job: the I/O shell around `OutlierDetector` (outlier_detector.py): it owns one
`HostOutlierMonitor` per host (handed to workers on the hosts of each snapshot), receives their
consecutive-failure reports (posted to the main dispatcher), runs the detector's interval on a
main-dispatcher timer with the request counts it harvests from the monitors, keeps the
`cluster.<name>.outlier_detection.*` stats, and when a host is ejected or unejected calls
`on_change()`, whose owner (cluster_manager) publishes new immutable snapshots: an ejected host
carries `failed_outlier_check` and the load balancers leave it out (host.lb_hosts).

Thread affinity: main (the Dispatcher's owner) except `notify`, which any worker calls (it
only posts). Must not: block, touch worker state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .host import Host
from .outlier_config import OutlierDetectionConfig
from .outlier_detector import COUNTERS, OutlierDetector
from .outlier_monitor import HostOutlierMonitor

__all__ = ["ClusterOutlierDetection"]


class ClusterOutlierDetection:
    def __init__(self, cluster: str, config: OutlierDetectionConfig, dispatcher, stats_store,
                 on_change: Callable[[], None], clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self.dispatcher = dispatcher
        self.on_change = on_change
        self.clock = clock
        rng = rng or random.Random()
        prefix = f"cluster.{cluster}.outlier_detection."
        counters = {n: stats_store.counter(prefix + n) for n in COUNTERS}
        self._active = stats_store.gauge(prefix + "ejections_active")
        self.detector = OutlierDetector(
            config, count=lambda n: counters[n].inc(), set_active=self._active.set,
            rand=lambda n: rng.randrange(n) if n > 0 else 0, reset=self._reset)
        self.monitors: dict[tuple[str, int], HostOutlierMonitor] = {}
        self._stopped = False
        self._timer = dispatcher.call_later(config.interval, self._on_interval)

    # -- hosts (cluster_manager, on each rebuild) -------------------------------------------------
    def set_hosts(self, hosts: tuple[Host, ...]) -> None:
        keys = [h.key for h in hosts]
        keep = set(keys)
        for key in [k for k in self.monitors if k not in keep]:
            del self.monitors[key]
        for key in keys:
            if key not in self.monitors:
                self.monitors[key] = HostOutlierMonitor(key, self.config, self.notify)
        self.detector.set_hosts(keys)
        cfg = self.config
        track = len(keys) >= min(cfg.success_rate_minimum_hosts, cfg.failure_percentage_minimum_hosts)
        for m in self.monitors.values():
            m.track_rates = track

    def apply(self, hosts: tuple[Host, ...]) -> tuple[Host, ...]:
        """The hosts with their monitor and their failed_outlier_check flag."""
        out = []
        for h in hosts:
            m = self.monitors.get(h.key)
            out.append(replace(h, outlier=m, failed_outlier_check=self.detector.is_ejected(h.key)))
        return tuple(out)

    def host_info(self, key: tuple[str, int]) -> tuple[float, float]:
        """(success_rate, local_origin_success_rate) of the last interval, -1 if none (/clusters)."""
        st = self.detector.hosts.get(key)
        return (-1.0, -1.0) if st is None else (st.success_rate, st.local_success_rate)

    # -- events ----------------------------------------------------------------------------------
    def notify(self, key: tuple[str, int], kind: str) -> None:
        """Any thread: a monitor's consecutive counter of `kind` reached its threshold."""
        self.dispatcher.post(lambda: self._on_consecutive(key, kind))

    def _on_consecutive(self, key: tuple[str, int], kind: str) -> None:
        if self._stopped:
            return
        if self.detector.on_consecutive(key, kind, self.clock()):
            self.on_change()

    def on_health_check_passed(self, key: tuple[str, int]) -> None:
        """Main: an active health check of the host passed and it is not failed_active_hc
        (successful_active_health_check_uneject_host)."""
        if (self.config.successful_active_health_check_uneject_host and not self._stopped
                and self.detector.uneject(key, self.clock())):
            self.on_change()

    def _on_interval(self) -> None:
        if self._stopped:
            return
        samples = {key: m.harvest() for key, m in self.monitors.items()}
        changed = self.detector.on_interval(self.clock(), samples)
        self._timer = self.dispatcher.call_later(self.config.interval, self._on_interval)
        if changed:
            self.on_change()

    def _reset(self, key: Any, kinds: tuple[str, ...]) -> None:
        m = self.monitors.get(key)
        if m is not None:
            m.reset(kinds)

    def stop(self) -> None:
        """The cluster was removed or replaced: no more timers, no more decisions; its ejected
        hosts leave ejections_active (Envoy's ~DetectorImpl)."""
        self._stopped = True
        self._timer.disable()
        self.detector.set_hosts(())
