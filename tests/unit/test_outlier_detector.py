"""Outlier detection logic without I/O: results fed to host monitors, clock ticks to the
detector (proxy/upstream/outlier_detector.py, outlier_monitor.py), Envoy's DetectorImpl rules."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from proxy.upstream.outlier_config import OutlierDetectionConfig
from proxy.upstream.outlier_detector import (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE,
                                             CONSECUTIVE_LOCAL_ORIGIN_FAILURE, COUNTERS,
                                             OutlierDetector, Sample)
from proxy.upstream.outlier_monitor import HostOutlierMonitor

A, B, C, D = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)


class Rig:
    """A detector over `hosts`, one monitor per host whose reports go straight to it at
    `self.now` (as main would run the posted report)."""

    def __init__(self, hosts=(A, B), rand=lambda n: 0, **cfg) -> None:
        self.config = replace(OutlierDetectionConfig(max_ejection_percent=100), **cfg)
        self.stats: Counter[str] = Counter()
        self.active = 0
        self.now = 0.0
        self.ejections: list[tuple] = []
        self.detector = OutlierDetector(self.config, self._count, self._set_active, rand,
                                        reset=lambda key, kinds: self.monitors[key].reset(kinds))
        self.monitors = {k: HostOutlierMonitor(k, self.config, self._notify) for k in hosts}
        self.detector.set_hosts(hosts)

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    def _set_active(self, n: int) -> None:
        self.active = n

    def _notify(self, key, kind) -> None:
        if self.detector.on_consecutive(key, kind, self.now):
            self.ejections.append((key, kind))

    def codes(self, key, *codes: int) -> None:
        for c in codes:
            self.monitors[key].put_http_code(c, 0)

    def tick(self, to: float) -> bool:
        self.now = to
        return self.detector.on_interval(to, {k: m.harvest() for k, m in self.monitors.items()})

    def ejected(self, key) -> bool:
        return self.detector.is_ejected(key)


def test_consecutive_5xx_ejects_at_once_when_the_count_is_reached():
    r = Rig(consecutive_5xx=3)
    r.codes(A, 500, 500)
    assert not r.ejected(A)
    r.codes(A, 500)
    assert r.ejected(A) and r.ejections == [(A, CONSECUTIVE_5XX)]
    assert r.active == 1
    assert r.stats["ejections_detected_consecutive_5xx"] == 1
    assert r.stats["ejections_enforced_consecutive_5xx"] == 1
    assert r.stats["ejections_enforced_total"] == 1
    assert r.stats["ejections_total"] == 1 and r.stats["ejections_consecutive_5xx"] == 1


def test_a_success_in_between_resets_the_consecutive_count():
    r = Rig(consecutive_5xx=3)
    r.codes(A, 500, 500, 200, 500, 500)
    assert not r.ejected(A)
    r.codes(A, 503)
    assert r.ejected(A)


def test_the_host_returns_after_base_ejection_time_on_an_interval_tick():
    r = Rig(consecutive_5xx=1, interval=1.0, base_ejection_time=3.0)
    r.now = 0.5
    r.codes(A, 500)
    assert r.ejected(A)
    assert not r.tick(1.0) and not r.tick(2.0) and not r.tick(3.0)
    assert r.ejected(A)
    assert r.tick(4.0)  # 3.5 s >= 3 s
    assert not r.ejected(A) and r.active == 0


def test_a_host_ejected_again_soon_stays_out_twice_as_long_capped_at_max_ejection_time():
    r = Rig(consecutive_5xx=1, interval=1.0, base_ejection_time=2.0, max_ejection_time=5.0)
    r.codes(A, 500)
    r.tick(1.0)
    r.tick(2.0)
    assert not r.ejected(A)                          # out 2 s
    r.now = 2.5
    r.codes(A, 500)                                  # again within the interval: backoff 2
    assert r.ejected(A) and r.detector.ejection_time(r.detector.hosts[A]) == 4.0
    for t in (3.0, 4.0, 5.0, 6.0):
        r.tick(t)
        assert r.ejected(A)
    r.tick(7.0)
    assert not r.ejected(A)                          # out 4 s
    r.now = 7.1
    r.codes(A, 500)
    assert r.detector.ejection_time(r.detector.hosts[A]) == 5.0   # 6 s capped at 5
    assert r.detector.hosts[A].num_ejections == 3


def test_the_backoff_shrinks_by_one_per_interval_the_host_stays_in():
    r = Rig(consecutive_5xx=1, interval=1.0, base_ejection_time=1.0)
    r.codes(A, 500)
    r.tick(1.0)                      # back in, backoff 1
    r.now = 1.5
    r.codes(A, 500)                  # backoff 2
    r.tick(2.0)
    r.tick(3.0)
    r.tick(4.0)                      # back in at 4 (2 s)
    assert not r.ejected(A) and r.detector.hosts[A].backoff == 2
    r.tick(5.0)
    assert r.detector.hosts[A].backoff == 1
    r.tick(6.0)
    assert r.detector.hosts[A].backoff == 0
    r.now = 6.5
    r.codes(A, 500)
    assert r.detector.ejection_time(r.detector.hosts[A]) == 1.0


def test_max_ejection_percent_caps_ejections_and_counts_overflow():
    r = Rig(hosts=(A, B, C, D), consecutive_5xx=1, max_ejection_percent=50)
    r.codes(A, 500)
    r.codes(B, 500)
    r.codes(C, 500)
    assert r.ejected(A) and r.ejected(B) and not r.ejected(C)
    assert r.stats["ejections_overflow"] == 1 and r.active == 2


def test_default_max_ejection_percent_ejects_nothing_from_two_hosts_unless_always_eject_one_host():
    r = Rig(consecutive_5xx=1, max_ejection_percent=10)
    r.codes(A, 500)
    assert not r.ejected(A) and r.stats["ejections_overflow"] == 1
    r = Rig(consecutive_5xx=1, max_ejection_percent=10, always_eject_one_host=True)
    r.codes(A, 500)
    r.codes(B, 500)
    assert r.ejected(A) and not r.ejected(B)


def test_gateway_failures_are_detected_but_not_enforced_by_default():
    r = Rig(consecutive_5xx=10, consecutive_gateway_failure=2)
    r.codes(A, 502, 504)
    assert not r.ejected(A)
    assert r.stats["ejections_detected_consecutive_gateway_failure"] == 1
    assert r.stats["ejections_enforced_consecutive_gateway_failure"] == 0


def test_gateway_failures_eject_when_enforced_and_a_500_breaks_their_run():
    r = Rig(consecutive_5xx=10, consecutive_gateway_failure=2, enforcing_consecutive_gateway_failure=100)
    r.codes(A, 502, 500, 503)
    assert not r.ejected(A)
    r.codes(A, 504)
    assert r.ejections == [(A, CONSECUTIVE_GATEWAY_FAILURE)]


def test_enforcing_percentage_draws_a_random_number():
    r = Rig(consecutive_5xx=1, enforcing_consecutive_5xx=50, rand=lambda n: 70)
    r.codes(A, 500)
    assert not r.ejected(A) and r.stats["ejections_detected_consecutive_5xx"] == 1
    r = Rig(consecutive_5xx=1, enforcing_consecutive_5xx=50, rand=lambda n: 30)
    r.codes(A, 500)
    assert r.ejected(A)


def test_without_the_split_connect_failures_and_timeouts_count_as_503_and_504():
    r = Rig(consecutive_5xx=3)
    m = r.monitors[A]
    m.put_connect_failed(0)
    m.put_timeout(0)
    m.put_connect_success(0)   # nothing without the split
    m.put_connect_failed(0)
    assert r.ejections == [(A, CONSECUTIVE_5XX)]


def test_with_the_split_local_origin_failures_have_their_own_count():
    r = Rig(consecutive_5xx=2, consecutive_local_origin_failure=2,
            split_external_local_origin_errors=True)
    m = r.monitors[A]
    m.put_connect_failed(0)
    m.put_connect_success(0)   # resets the local-origin count
    m.put_connect_failed(0)
    assert not r.ejected(A)
    m.put_timeout(0)
    assert r.ejections == [(A, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)]
    assert r.stats["ejections_enforced_consecutive_local_origin_failure"] == 1
    # ... and do not touch the 5xx count
    assert m.consecutive_5xx == 0


def test_an_ejected_host_is_not_ejected_twice_and_its_counter_is_not_reset():
    r = Rig(hosts=(A, B, C), consecutive_5xx=1)
    r.codes(A, 500)
    r.codes(A, 500)
    assert r.stats["ejections_detected_consecutive_5xx"] == 1


def test_unejection_resets_every_consecutive_counter():
    r = Rig(consecutive_5xx=2, consecutive_gateway_failure=3, interval=1.0, base_ejection_time=1.0)
    r.codes(A, 500, 500)
    r.codes(A, 503)            # counted while ejected: gateway 1 (5xx was reset on detection)
    assert r.monitors[A].consecutive_gateway_failure == 1
    r.tick(1.0)
    assert not r.ejected(A)
    assert (r.monitors[A].consecutive_5xx, r.monitors[A].consecutive_gateway_failure) == (0, 0)


def test_success_rate_ejects_the_host_below_mean_minus_stdev_factor():
    hosts = (A, B, C, D, ("10.0.0.5", 80))
    r = Rig(hosts=hosts, success_rate_request_volume=10, success_rate_minimum_hosts=5,
            consecutive_5xx=0)
    for m in r.monitors.values():
        m.track_rates = True   # (main sets it for clusters with enough hosts)
    for k in hosts:
        r.codes(k, *([200] * 10))
    r.codes(A, *([500] * 10))          # A: 50 %, the others 100 %
    assert r.tick(10.0)
    assert r.ejected(A) and not any(r.ejected(k) for k in hosts[1:])
    mean, threshold = r.detector.sr_numbers["success_rate"]
    assert mean == 90.0 and threshold == pytest.approx(90 - 1.9 * 20)
    assert r.detector.hosts[B].success_rate == 100.0 and r.detector.hosts[A].success_rate == 50.0
    assert r.stats["ejections_detected_success_rate"] == 1
    assert r.stats["ejections_enforced_success_rate"] == 1


def test_success_rate_needs_request_volume_and_minimum_hosts():
    hosts = (A, B, C, D, ("10.0.0.5", 80))
    r = Rig(hosts=hosts, success_rate_request_volume=100, consecutive_5xx=0)
    for m in r.monitors.values():
        m.track_rates = True
    for k in hosts:
        r.codes(k, *([200] * 10))
    r.codes(A, *([500] * 10))
    assert not r.tick(10.0)
    assert r.detector.sr_numbers["success_rate"] == (-1.0, -1.0)
    assert r.detector.hosts[A].success_rate == -1.0   # below both volumes (100 and 50)


def test_failure_percentage_ejects_when_enforced():
    hosts = (A, B, C)
    r = Rig(hosts=hosts, failure_percentage_minimum_hosts=3, failure_percentage_request_volume=5,
            failure_percentage_threshold=50, enforcing_failure_percentage=100, consecutive_5xx=0)
    for m in r.monitors.values():
        m.track_rates = True
    r.codes(A, 500, 500, 500, 200, 200)   # 60 % failures
    r.codes(B, 500, 200, 200, 200, 200)
    r.codes(C, 200, 200, 200, 200, 200)
    assert r.tick(10.0)
    assert r.ejected(A) and not r.ejected(B)
    assert r.stats["ejections_enforced_failure_percentage"] == 1
    # the window is one interval: the next tick sees no requests
    r.tick(11.0)
    assert r.detector.hosts[B].success_rate == -1.0


def test_removed_hosts_leave_ejections_active():
    r = Rig(hosts=(A, B), consecutive_5xx=1)
    r.codes(A, 500)
    assert r.active == 1
    r.detector.set_hosts([B])
    assert r.active == 0


def test_max_ejection_time_jitter_adds_a_random_delay():
    r = Rig(consecutive_5xx=1, interval=1.0, base_ejection_time=1.0, max_ejection_time_jitter=2.0,
            rand=lambda n: 1500 if n == 2001 else 0)
    r.codes(A, 500)
    assert r.detector.ejection_time(r.detector.hosts[A]) == 2.5
    r.tick(2.0)
    assert r.ejected(A)
    r.tick(3.0)
    assert not r.ejected(A)


def test_every_counter_envoy_shows_is_declared():
    assert {"ejections_enforced_total", "ejections_overflow", "ejections_detected_consecutive_5xx",
            "ejections_enforced_consecutive_5xx", "ejections_detected_local_origin_failure_percentage",
            "ejections_detected_degradation"} <= set(COUNTERS)
    assert len(COUNTERS) == 20


def test_uneject_by_a_passing_health_check():
    r = Rig(consecutive_5xx=1)
    r.codes(A, 500)
    assert r.detector.uneject(A, 1.0) and not r.ejected(A) and r.active == 0
    assert not r.detector.uneject(A, 1.0)


def test_samples_harvest_the_requests_since_the_previous_harvest():
    cfg = OutlierDetectionConfig()
    m = HostOutlierMonitor(A, cfg, lambda k, t: None)
    m.track_rates = True
    m.put_http_code(200, 0)
    m.put_http_code(500, 1)
    assert m.harvest() == Sample(2, 1, 0, 0)
    m.put_http_code(200, 1)
    assert m.harvest() == Sample(1, 1, 0, 0)
    assert m.harvest() == Sample()


def test_concurrent_workers_count_every_failure_and_fire_the_threshold_once():
    """Four threads (workers) report failures of one host at once: the lock-guarded counter
    loses none and reaches the threshold exactly once (real threads: on 3.14t, in parallel)."""
    import threading

    fired = []
    cfg = OutlierDetectionConfig(consecutive_5xx=2000, consecutive_gateway_failure=0)
    m = HostOutlierMonitor(A, cfg, lambda key, kind: fired.append(kind))
    m.track_rates = True
    start = threading.Barrier(4)

    def worker(i: int) -> None:
        start.wait()
        for _ in range(1000):
            m.put_http_code(500, i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.consecutive_5xx == 4000 and fired == [CONSECUTIVE_5XX]
    assert m.harvest() == Sample(4000, 0, 0, 0)


def test_grpc_statuses_map_to_http_as_envoys_grpc_to_http_status():
    from proxy.upstream.outlier_monitor import grpc_http_status
    assert [grpc_http_status(b"%d" % i) for i in (0, 1, 4, 8, 12, 14, 16)] == [200, 499, 504, 429, 501, 503, 401]
    assert grpc_http_status(b"17") == 500 and grpc_http_status(b"x") == 500
