"""Outlier detection in the cluster manager (fake dispatcher and clock): a consecutive-failure
report posted from a worker ejects the host in the next published snapshot (failed_outlier_check,
out of the load balancer's hosts, membership gauges), the interval timer takes it back, a
cluster left without healthy hosts panics, and the /clusters health flags print in Envoy's
order."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from proxy.upstream.cluster_config import parse_cluster
from proxy.upstream.cluster_manager import ClusterManager
from proxy.upstream.host import Host, health_flags



class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeMetric:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def set(self, value: int) -> None:
        self.value = value


class FakeStats:
    def __init__(self) -> None:
        self.metrics: dict[str, FakeMetric] = defaultdict(FakeMetric)

    def counter(self, name: str) -> FakeMetric:
        return self.metrics[name]

    def gauge(self, name: str) -> FakeMetric:
        return self.metrics[name]

    def __getitem__(self, name: str) -> int:
        return self.metrics[name].value


class FakeTimer:
    def __init__(self, due: float, fn) -> None:
        self.due, self.fn, self.enabled = due, fn, True

    def disable(self) -> None:
        self.enabled = False


class FakeDispatcher:
    """call_later on a fake clock; post() queues until run_posted()."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.timers: list[FakeTimer] = []
        self.posted: list = []

    def call_later(self, delay: float, fn) -> FakeTimer:
        t = FakeTimer(self.clock.now + delay, fn)
        self.timers.append(t)
        return t

    def post(self, fn) -> None:
        self.posted.append(fn)

    def run_posted(self) -> None:
        while self.posted:
            self.posted.pop(0)()

    def advance(self, to: float) -> None:
        self.clock.now = to
        for t in [t for t in self.timers if t.enabled and t.due <= to]:
            t.enabled = False
            t.fn()


def _cluster(*ips: str, **od):
    return parse_cluster({"name": "c", "hosts": [
        {"socket_address": {"address": ip, "port_value": 80}} for ip in ips],
        "outlier_detection": od}, "clusters.c")


def _setup(*ips: str, **od):
    clock = FakeClock()
    disp = FakeDispatcher(clock)
    stats = FakeStats()
    published = []
    cm = ClusterManager([_cluster(*ips, **od)], published.append, clock=clock, stats=stats,
                        dispatcher=disp)
    cm.initialize()
    return cm, disp, stats, published


def _host(cm, ip: str) -> Host:
    return next(h for h in cm.snapshots()["c"].hosts if h.address == ip)


def test_hosts_carry_their_monitor_and_the_stats_exist_from_the_start():
    cm, _, stats, _ = _setup("10.0.0.1", "10.0.0.2")
    h = _host(cm, "10.0.0.1")
    assert h.outlier is not None and h.outlier.key == h.key and not h.failed_outlier_check
    assert stats["cluster.c.outlier_detection.ejections_enforced_total"] == 0
    assert "cluster.c.outlier_detection.ejections_active" in stats.metrics


def test_a_worker_report_ejects_the_host_in_the_next_snapshot_and_the_interval_brings_it_back():
    cm, disp, stats, published = _setup("10.0.0.1", "10.0.0.2", consecutive_5xx=2,
                                        max_ejection_percent=50, interval="1s", base_ejection_time="2s")
    mon = _host(cm, "10.0.0.1").outlier
    mon.put_http_code(500, 0)
    mon.put_http_code(502, 1)          # another worker: the count is the host's
    assert len(disp.posted) == 1       # the report waits for main
    n = len(published)
    disp.run_posted()
    assert len(published) == n + 1
    snap = cm.snapshots()["c"]
    bad = _host(cm, "10.0.0.1")
    assert bad.failed_outlier_check and health_flags(bad) == "/failed_outlier_check"
    assert [h.address for h in snap.lb_hosts] == ["10.0.0.2"] and not snap.panic
    assert snap.membership_healthy == 1 and stats["cluster.c.membership_healthy"] == 1
    assert stats["cluster.c.outlier_detection.ejections_active"] == 1
    assert _host(cm, "10.0.0.1").outlier is mon   # the same monitor across snapshots
    disp.advance(101.0)
    assert _host(cm, "10.0.0.1").failed_outlier_check
    disp.advance(102.0)
    assert not _host(cm, "10.0.0.1").failed_outlier_check
    assert len(cm.snapshots()["c"].lb_hosts) == 2
    assert stats["cluster.c.outlier_detection.ejections_active"] == 0


def test_the_only_host_ejected_leaves_the_cluster_in_panic():
    cm, disp, _, _ = _setup("10.0.0.1", consecutive_5xx=1, max_ejection_percent=100)
    _host(cm, "10.0.0.1").outlier.put_http_code(503, 0)
    disp.run_posted()
    snap = cm.snapshots()["c"]
    assert snap.panic and [h.address for h in snap.lb_hosts] == ["10.0.0.1"]


def test_health_flags_print_in_envoys_order():
    h = replace(Host("10.0.0.1", 80), failed_active_hc=True, failed_outlier_check=True,
                active_hc_timeout=True)
    assert health_flags(h) == "/failed_active_hc/failed_outlier_check/active_hc_timeout"


def test_a_report_after_the_cluster_is_gone_does_nothing():
    cm, disp, stats, published = _setup("10.0.0.1", "10.0.0.2", consecutive_5xx=1,
                                        max_ejection_percent=50)
    mon = _host(cm, "10.0.0.1").outlier
    cm.stop_health_checks()            # (shutdown stops the outlier timers too)
    mon.put_http_code(500, 0)
    n = len(published)
    disp.run_posted()
    assert len(published) == n and stats["cluster.c.outlier_detection.ejections_enforced_total"] == 0
