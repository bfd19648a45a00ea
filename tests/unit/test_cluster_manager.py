"""ClusterManager (fake resolver, fake clock, fake stats) and cluster-wide circuit breakers."""

from __future__ import annotations

import socket
import threading
from collections import defaultdict

import pytest

from proxy.upstream.circuit_breaker import ResourceLimits
from proxy.upstream.cluster_config import Thresholds, parse_cluster
from proxy.upstream.cluster_manager import ClusterManager
from proxy.upstream.dns import order_by_family
from proxy.upstream.host import Host


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeResolver:
    """Answers from `answers[hostname]`: a list of IPs, or an exception instance to raise."""

    def __init__(self, **answers) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, hostname: str, port: int, family: str) -> list[str]:
        self.calls.append((hostname, port, family))
        answer = self.answers[hostname]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


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


def dns_cluster(name: str, ctype: str, *hostnames: str, refresh: str = "5s", **extra):
    return parse_cluster({
        "name": name, "type": ctype, "dns_refresh_rate": refresh,
        "load_assignment": {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": h, "port_value": 80}}}}
            for h in hostnames]}]},
        **extra,
    }, f"clusters.{name}")


def static_cluster(name: str, *ips: str):
    return parse_cluster({"name": name, "hosts": [
        {"socket_address": {"address": ip, "port_value": 8080}} for ip in ips]}, f"clusters.{name}")


def make(configs, resolver, stats=None):
    published = []
    clock = FakeClock()
    cm = ClusterManager(configs, published.append, resolver=resolver, clock=clock, stats=stats)
    return cm, published, clock


def addresses(snap) -> list[str]:
    return [h.address for h in snap.hosts]


# -- initialization --------------------------------------------------------------------------

def test_initialize_publishes_static_and_dns_clusters_once():
    resolver = FakeResolver(**{"svc.local": ["10.0.0.1", "10.0.0.2", "10.0.0.1"]})
    cm, published, _ = make([static_cluster("s", "127.0.0.1", "127.0.0.2"),
                             dns_cluster("d", "STRICT_DNS", "svc.local")], resolver)
    cm.initialize()
    assert len(published) == 1 and published[0] is cm.snapshots()
    snaps = cm.snapshots()
    assert addresses(snaps["s"]) == ["127.0.0.1", "127.0.0.2"]
    assert snaps["d"].hosts == (Host("10.0.0.1", 80, 1, "svc.local"), Host("10.0.0.2", 80, 1, "svc.local"))
    with pytest.raises(TypeError):
        snaps["x"] = snaps["s"]  # read-only mapping


def test_strict_dns_uses_every_address_and_logical_dns_only_the_first():
    resolver = FakeResolver(a=["10.0.0.1", "10.0.0.2"], b=["10.0.1.1", "10.0.1.2"])
    cm, _, _ = make([dns_cluster("strict", "STRICT_DNS", "a"),
                     dns_cluster("logical", "LOGICAL_DNS", "b")], resolver)
    cm.initialize()
    assert addresses(cm.snapshots()["strict"]) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(cm.snapshots()["logical"]) == ["10.0.1.1"]


def test_resolver_gets_port_and_lookup_family():
    resolver = FakeResolver(a=["10.0.0.1"])
    cm, _, _ = make([dns_cluster("d", "STRICT_DNS", "a", dns_lookup_family="V4_ONLY")], resolver)
    cm.initialize()
    assert resolver.calls == [("a", 80, "V4_ONLY")]


def test_initial_dns_failure_publishes_an_empty_cluster_and_counts_failure():
    stats = FakeStats()
    cm, published, _ = make([dns_cluster("d", "STRICT_DNS", "a")],
                            FakeResolver(a=socket.gaierror("no such host")), stats)
    cm.initialize()
    assert cm.snapshots()["d"].hosts == ()
    assert (stats["cluster.d.update_attempt"], stats["cluster.d.update_failure"]) == (1, 1)
    assert len(published) == 1


# -- refresh ---------------------------------------------------------------------------------

def test_refresh_happens_only_after_dns_refresh_rate():
    resolver = FakeResolver(a=["10.0.0.1"])
    cm, _, clock = make([dns_cluster("d", "STRICT_DNS", "a", refresh="5s")], resolver)
    cm.initialize()
    assert cm.next_deadline() == 105.0
    clock.now = 104.9
    cm.tick()
    assert len(resolver.calls) == 1
    clock.now = 105.0
    cm.tick()
    assert len(resolver.calls) == 2 and cm.next_deadline() == 110.0


def test_refresh_that_changes_hosts_publishes_a_new_mapping():
    stats = FakeStats()
    resolver = FakeResolver(a=["10.0.0.1"])
    cm, published, clock = make([dns_cluster("d", "STRICT_DNS", "a"), static_cluster("s", "127.0.0.1")],
                                resolver, stats)
    cm.initialize()
    before = cm.snapshots()
    resolver.answers["a"] = ["10.0.0.1", "10.0.0.9"]
    clock.now += 5
    cm.tick()
    assert len(published) == 2
    after = cm.snapshots()
    assert addresses(after["d"]) == ["10.0.0.1", "10.0.0.9"]
    assert addresses(before["d"]) == ["10.0.0.1"]          # old snapshot untouched
    assert after["s"] is before["s"]                        # unchanged clusters keep their snapshot
    assert after["d"].limits is before["d"].limits          # breakers survive host changes
    assert stats["cluster.d.membership_total"] == 2 and stats["cluster.d.membership_change"] == 1


def test_publish_is_not_called_when_hosts_are_unchanged_or_only_reordered():
    resolver = FakeResolver(a=["10.0.0.1", "10.0.0.2"])
    cm, published, clock = make([dns_cluster("d", "STRICT_DNS", "a")], resolver)
    cm.initialize()
    clock.now += 5
    cm.tick()
    resolver.answers["a"] = ["10.0.0.2", "10.0.0.1"]   # DNS servers rotate answers
    clock.now += 5
    cm.tick()
    assert len(resolver.calls) == 3 and len(published) == 1


def test_dns_failure_keeps_previous_hosts_and_counts_update_failure():
    stats = FakeStats()
    resolver = FakeResolver(a=["10.0.0.1"])
    cm, published, clock = make([dns_cluster("d", "STRICT_DNS", "a")], resolver, stats)
    cm.initialize()
    resolver.answers["a"] = socket.gaierror(-2, "Name or service not known")
    clock.now += 5
    cm.tick()
    assert addresses(cm.snapshots()["d"]) == ["10.0.0.1"] and len(published) == 1
    assert stats["cluster.d.update_attempt"] == 2
    assert stats["cluster.d.update_success"] == 1 and stats["cluster.d.update_failure"] == 1
    assert cm.next_deadline() == clock.now + 5   # retried at the normal refresh rate


def test_failure_of_one_strict_dns_target_keeps_only_that_targets_hosts():
    resolver = FakeResolver(a=["10.0.0.1"], b=["10.0.0.2"])
    cm, _, clock = make([dns_cluster("d", "STRICT_DNS", "a", "b")], resolver)
    cm.initialize()
    resolver.answers.update(a=OSError("timeout"), b=["10.0.0.3"])
    clock.now += 5
    cm.tick()
    assert addresses(cm.snapshots()["d"]) == ["10.0.0.1", "10.0.0.3"]


def test_logical_dns_empty_answer_keeps_previous_address():
    stats = FakeStats()
    resolver = FakeResolver(a=["10.0.0.1"])
    cm, _, clock = make([dns_cluster("d", "LOGICAL_DNS", "a")], resolver, stats)
    cm.initialize()
    resolver.answers["a"] = []
    clock.now += 5
    cm.tick()
    assert addresses(cm.snapshots()["d"]) == ["10.0.0.1"] and stats["cluster.d.update_failure"] == 1


def test_logical_dns_follows_a_changed_first_address():
    resolver = FakeResolver(a=["10.0.0.1", "10.0.0.2"])
    cm, published, clock = make([dns_cluster("d", "LOGICAL_DNS", "a")], resolver)
    cm.initialize()
    resolver.answers["a"] = ["10.0.0.7", "10.0.0.1"]
    clock.now += 5
    cm.tick()
    assert addresses(cm.snapshots()["d"]) == ["10.0.0.7"] and len(published) == 2


def test_each_cluster_refreshes_on_its_own_rate():
    resolver = FakeResolver(fast=["10.0.0.1"], slow=["10.0.0.2"])
    cm, _, clock = make([dns_cluster("f", "STRICT_DNS", "fast", refresh="1s"),
                         dns_cluster("s", "STRICT_DNS", "slow", refresh="10s")], resolver)
    cm.initialize()
    for _ in range(3):
        clock.now += 1
        cm.tick()
    assert [c[0] for c in resolver.calls].count("fast") == 4
    assert [c[0] for c in resolver.calls].count("slow") == 1
    assert cm.next_deadline() == clock.now + 1


def test_static_only_manager_never_needs_a_tick():
    cm, _, _ = make([static_cluster("s", "127.0.0.1")], FakeResolver())
    cm.initialize()
    assert cm.next_deadline() == float("inf")


def test_duplicate_cluster_names_are_refused():
    with pytest.raises(ValueError, match="duplicate cluster name"):
        make([static_cluster("s"), static_cluster("s")], FakeResolver())


def test_membership_and_circuit_breaker_gauges_are_reported():
    stats = FakeStats()
    cfg = parse_cluster({"name": "s", "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": 1}}],
                         "circuit_breakers": {"thresholds": [{"max_connections": 1, "track_remaining": True}]}},
                        "c")
    cm, _, _ = make([cfg], FakeResolver(), stats)
    cm.initialize()
    assert stats["cluster.s.membership_total"] == 1 and stats["cluster.s.membership_healthy"] == 1
    assert stats["cluster.s.circuit_breakers.default.remaining_cx"] == 1
    assert cm.snapshots()["s"].limits.try_acquire_connection()
    cm.tick()
    assert stats["cluster.s.circuit_breakers.default.cx_open"] == 1
    assert stats["cluster.s.circuit_breakers.default.remaining_cx"] == 0


# -- dns family rules ------------------------------------------------------------------------

@pytest.mark.parametrize("family,expected", [
    ("AUTO", ["::1", "::2"]), ("V4_PREFERRED", ["10.0.0.1", "10.0.0.2"]),
    ("V4_ONLY", ["10.0.0.1", "10.0.0.2"]), ("V6_ONLY", ["::1", "::2"]),
    ("ALL", ["10.0.0.1", "::1", "10.0.0.2", "::2"]),
])
def test_lookup_family_filters_and_dedups_in_order(family, expected):
    answer = ["10.0.0.1", "::1", "10.0.0.1", "10.0.0.2", "::2"]
    assert order_by_family(answer, family) == expected


def test_auto_falls_back_to_ipv4_when_there_is_no_ipv6():
    assert order_by_family(["10.0.0.1"], "AUTO") == ["10.0.0.1"]


# -- circuit breakers under real threads -----------------------------------------------------

@pytest.mark.parametrize("kind", ["connection", "pending", "request", "retry"])
def test_circuit_breaker_never_overshoots_under_8_threads(kind):
    limit = 37
    limits = ResourceLimits(Thresholds(limit, limit, limit, limit))
    acquire = getattr(limits, f"try_acquire_{kind}")
    release = getattr(limits, f"release_{kind}")
    barrier = threading.Barrier(8)
    granted = [0] * 8
    peak = [0]
    peak_lock = threading.Lock()  # guards peak[0] in this test only
    held = [0]

    def worker(i: int) -> None:
        barrier.wait()
        for round_ in range(300):
            if acquire():
                granted[i] += 1
                with peak_lock:
                    held[0] += 1
                    peak[0] = max(peak[0], held[0])
                if round_ % 2:
                    with peak_lock:
                        held[0] -= 1
                    release()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = limits.state()
    open_now = {"connection": state.connections, "pending": state.pending_requests,
                "request": state.requests, "retry": state.retries}[kind]
    assert peak[0] <= limit
    assert open_now == held[0] <= limit
    assert sum(granted) >= limit   # the limit was actually reached, not starved


def test_circuit_breaker_refuses_at_limit_and_recovers_after_release():
    limits = ResourceLimits(Thresholds(max_connections=2))
    assert limits.try_acquire_connection() and limits.try_acquire_connection()
    assert not limits.try_acquire_connection()
    assert limits.gauges()["circuit_breakers.default.cx_open"] == 1
    limits.release_connection()
    assert limits.gauges()["circuit_breakers.default.cx_open"] == 0
    assert limits.try_acquire_connection()


def test_release_without_acquire_fails_loudly():
    with pytest.raises(RuntimeError):
        ResourceLimits(Thresholds()).release_request()


def test_remaining_gauges_only_with_track_remaining():
    assert "circuit_breakers.default.remaining_rq" not in ResourceLimits(Thresholds()).gauges()
    tracked = ResourceLimits(Thresholds(max_requests=5, track_remaining=True))
    tracked.try_acquire_request()
    assert tracked.gauges()["circuit_breakers.default.remaining_rq"] == 4


def test_high_priority_circuit_breakers_are_their_own_limits_and_gauges():
    stats = FakeStats()
    cfg = parse_cluster({"name": "s", "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": 1}}],
                         "circuit_breakers": {"thresholds": [
                             {"max_requests": 1},
                             {"priority": "HIGH", "max_requests": 2, "track_remaining": True}]}},
                        "c")
    cm, _, _ = make([cfg], FakeResolver(), stats)
    cm.initialize()
    snap = cm.snapshots()["s"]
    assert snap.limits is not snap.high_limits
    assert snap.limits.try_acquire_request() and not snap.limits.try_acquire_request()
    assert snap.high_limits.try_acquire_request()  # DEFAULT being full does not touch HIGH
    cm.tick()
    assert stats["cluster.s.circuit_breakers.default.rq_open"] == 1
    assert stats["cluster.s.circuit_breakers.high.rq_open"] == 0
    assert stats["cluster.s.circuit_breakers.high.remaining_rq"] == 1
