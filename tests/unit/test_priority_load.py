"""Priority levels and locality weights: Envoy's load math (priority_load.py) and the worker's
balancer over it (priority_lb.py), without sockets. The expected numbers are worked from
Envoy's formulas (load_balancer_impl.cc, locality_wrr.cc) and the examples in its docs and
source comments."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.upstream.cluster_config import AssignmentPolicy, ClusterConfig, HashingConfig
from proxy.upstream.circuit_breaker import ResourceLimits
from proxy.upstream.cluster_config import Thresholds
from proxy.upstream.host import ClusterSnapshot, Host
from proxy.upstream.priority_lb import LocalityScheduler, PriorityLoadBalancer
from proxy.upstream.priority_load import build_priority_state, choose_priority, effective_locality_weight

_next_port = iter(range(10000, 60000))


def level(priority: int, healthy: int, unhealthy: int = 0, degraded: int = 0, *,
          locality=("", "", ""), locality_weight: int = 0, weight: int = 1) -> list[Host]:
    """`healthy` + `degraded` + `unhealthy` hosts at `priority` (unhealthy: failed active HC)."""
    out = []
    for kind, n in (("ok", healthy), ("deg", degraded), ("bad", unhealthy)):
        for _ in range(n):
            out.append(Host("10.0.0.1", next(_next_port), weight, priority=priority, locality=locality,
                            locality_weight=locality_weight,
                            health_status="DEGRADED" if kind == "deg" else "HEALTHY",
                            failed_active_hc=kind == "bad"))
    return out


def loads(*levels, factor=140, threshold=50.0, weighted=False):
    hosts = tuple(h for lv in levels for h in lv)
    s = build_priority_state(hosts, factor, threshold, weighted)
    return s.healthy_load, s.degraded_load, s.panic


# -- per-priority loads: Envoy's docs table (overprovisioning factor 1.4) --------------------------

@pytest.mark.parametrize("p0,p1,expected", [
    ((100, 0), (100, 0), (100, 0)),   # all healthy: P0 takes everything
    ((72, 28), (100, 0), (100, 0)),   # 72 % * 1.4 = 100.8: still whole
    ((71, 29), (71, 29), (99, 1)),    # 71 % * 1.4 = 99: one percent spills over
    ((50, 50), (60, 40), (70, 30)),   # 50 % * 1.4 = 70
    ((25, 75), (100, 0), (35, 65)),
])
def test_spill_over_to_the_next_priority_follows_the_overprovisioning_factor(p0, p1, expected):
    healthy, degraded, panic = loads(level(0, *p0), level(1, *p1))
    assert healthy == expected and degraded == (0, 0) and panic == (False, False)


def test_three_levels_share_by_availability_and_the_rounding_remainder_goes_to_the_first():
    # 1 of 4, 1 of 4, 1 of 5 healthy: health 35, 35, 28 (sum 98, normalized); loads 35, 35, 28
    # by integer division, the remaining 2 to P0 (Envoy's first healthy priority).
    # (Panic off: with the default threshold all three levels, 25 % healthy, would panic.)
    healthy, _, panic = loads(level(0, 1, 3), level(1, 1, 3), level(2, 1, 4), threshold=0.0)
    assert healthy == (37, 35, 28) and panic == (False, False, False)
    # With it, total panic: the load follows host counts (4, 4, 5 of 13).
    assert loads(level(0, 1, 3), level(1, 1, 3), level(2, 1, 4)) == ((32, 30, 38), (0, 0, 0), (True,) * 3)


def test_degraded_hosts_take_what_healthy_ones_cannot_as_in_envoys_source_comment():
    # load_balancer_impl.cc: 10 % / 20 % / 10 % healthy and 20 % / 10 % / 0 % degraded get
    # 16 / 28 / 14 to healthy hosts and 28 / 14 / 0 to degraded ones.
    healthy, degraded, _ = loads(level(0, 1, 7, 2), level(1, 2, 7, 1), level(2, 1, 9), threshold=0.0)
    assert healthy == (16, 28, 14) and degraded == (28, 14, 0)


def test_one_level_half_healthy_half_degraded_sends_30_percent_to_the_degraded():
    healthy, degraded, panic = loads(level(0, 1, 0, 1))
    assert healthy == (70,) and degraded == (30,) and panic == (False,)


def test_a_larger_overprovisioning_factor_keeps_a_level_whole_longer():
    assert loads(level(0, 1, 1), level(1, 1), factor=200)[0] == (100, 0)
    assert loads(level(0, 1, 1), level(1, 1), factor=100)[0] == (50, 50)


def test_weighted_priority_health_counts_host_weights():
    # P0: a healthy host of weight 3 and an unhealthy one of weight 1: 75 % by weight
    # (1.4 * 75 = 105 -> whole), 50 % by count (70).
    p0 = level(0, 1, weight=3) + level(0, 0, 1)
    assert loads(p0, level(1, 1), weighted=True)[0] == (100, 0)
    assert loads(p0, level(1, 1))[0] == (70, 30)


# -- panic: Envoy's docs table ----------------------------------------------------------------

@pytest.mark.parametrize("p0,p1,expected_load,expected_panic", [
    ((72, 28), (72, 28), (100, 0), (False, False)),
    ((71, 29), (71, 29), (99, 1), (False, False)),   # total health 100: nobody panics
    ((50, 50), (60, 40), (70, 30), (False, False)),
    ((25, 75), (100, 0), (35, 65), (False, False)),
    ((25, 75), (25, 75), (50, 50), (True, True)),    # total panic: by host counts
    ((1, 19), (13, 7), (8, 92), (True, False)),      # 5 % and 65 %: health 7 and 91
])
def test_per_priority_panic(p0, p1, expected_load, expected_panic):
    healthy, degraded, panic = loads(level(0, *p0), level(1, *p1))
    assert healthy == expected_load and panic == expected_panic


def test_total_panic_splits_by_each_levels_share_of_all_hosts():
    healthy, degraded, panic = loads(level(0, 0, 1), level(1, 0, 3))
    assert healthy == (25, 75) and degraded == (0, 0) and panic == (True, True)


def test_panic_threshold_zero_never_panics_and_puts_the_load_on_p0():
    healthy, _, panic = loads(level(0, 0, 2), level(1, 0, 2), threshold=0.0)
    assert healthy == (100, 0) and panic == (False, False)


def test_a_gap_between_priorities_is_an_empty_level():
    s = build_priority_state(tuple(level(0, 0, 2) + level(2, 2)))
    assert [len(lv.hosts) for lv in s.levels] == [0 + 2, 0, 2]
    assert s.healthy_load == (0, 0, 100) and s.panic == (False, False, False)


def test_excluded_hosts_count_neither_way():
    hosts = level(0, 1) + [Host("10.0.0.9", 1, failed_active_hc=True, excluded_via_immediate_hc_fail=True)]
    s = build_priority_state(tuple(hosts + level(1, 1)))
    assert s.healthy_load == (100, 0)   # 1 healthy of 1 counted host


# -- choosing a priority --------------------------------------------------------------------

def test_choose_priority_walks_healthy_then_degraded_loads():
    picks = Counter(choose_priority(h, (16, 28, 14), (28, 14, 0)) for h in range(100))
    assert picks == {(0, False): 16, (1, False): 28, (2, False): 14, (0, True): 28, (1, True): 14}
    assert choose_priority(99, (100,), (0,)) == (0, False)
    assert choose_priority(2**64 - 1, (16, 84), (0, 0)) == (0, False)   # 2^64-1 % 100 = 15 -> 16: P0
    assert choose_priority(2**64 - 1, (15, 85), (0, 0)) == (1, False)


# -- locality weights --------------------------------------------------------------------------

def test_effective_locality_weight_scales_by_availability_with_the_factor():
    # Envoy's docs: X weight 1, Y weight 2; Y fully available -> 1 : 2; Y half available ->
    # 2 * min(1, 1.4 * 0.5) = 1.4.
    assert effective_locality_weight(2, 2, 2, 0) == 2.0
    assert effective_locality_weight(2, 1, 2, 0) == pytest.approx(1.4)
    assert effective_locality_weight(2, 0, 2, 0) == 0.0
    assert effective_locality_weight(5, 1, 0, 0) == 0.0
    assert effective_locality_weight(1, 3, 4, 0) == 1.0     # 75 % * 1.4 > 1: capped
    assert effective_locality_weight(1, 1, 3, 1) == pytest.approx(0.7)   # excluded hosts don't count


def test_locality_scheduler_gives_each_locality_its_share_interleaved():
    sched = LocalityScheduler([(0, 1.0), (1, 1.4)])
    picks = [sched.pick() for _ in range(24)]
    assert Counter(picks) == {0: 10, 1: 14}
    assert picks[:4] != [1, 1, 1, 1]


# -- the worker's balancer -----------------------------------------------------------------------

class Counted:
    value = 0


def cycling():
    n = [0]

    def rand(k: int) -> int:
        n[0] += 1
        return (n[0] - 1) % k
    return rand


def balancer(hosts, policy="ROUND_ROBIN", locality=False, factor=140, threshold=50.0):
    cfg = ClusterConfig("c", lb_policy=policy, locality_weighted_lb=locality,
                        healthy_panic_threshold=threshold,
                        hashing=HashingConfig() if policy in ("RING_HASH", "MAGLEV") else None)
    snap = ClusterSnapshot("c", cfg, tuple(hosts), ResourceLimits(Thresholds()), ResourceLimits(Thresholds()),
                           policy=AssignmentPolicy(factor))
    counter = Counted()
    return PriorityLoadBalancer(snap.priority_state, cfg, lambda h: 0, cycling(), counter), counter


def test_a_single_healthy_level_uses_its_balancers_own_choose():
    hosts = level(0, 3)
    lb, _ = balancer(hosts)
    assert lb.choose.__self__.hosts == tuple(hosts)   # a bound method of the host balancer


def test_picks_follow_the_priority_loads():
    p0, p1 = level(0, 1, 1), level(1, 2)        # P0 health 70
    lb, _ = balancer(p0 + p1)
    picks = Counter(lb.choose().priority for _ in range(100))
    assert picks == {0: 70, 1: 30}


def test_a_level_in_panic_serves_all_its_hosts_and_counts_lb_healthy_panic():
    p0 = level(0, 0, 2)
    lb, counter = balancer(p0, threshold=50.0)
    got = {lb.choose() for _ in range(4)}
    assert got == set(p0) and counter.value == 4


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_locality_weights_split_a_level(policy):
    a = level(0, 1, locality=("r", "a", ""), locality_weight=1)
    b = level(0, 1, locality=("r", "b", ""), locality_weight=3)
    lb, _ = balancer(a + b, policy=policy, locality=True)
    picks = Counter(lb.choose().locality[1] for _ in range(400))
    assert picks == {"a": 100, "b": 300}


def test_a_half_healthy_locality_counts_its_availability():
    a = level(0, 1, locality=("r", "a", ""), locality_weight=1)
    b = level(0, 1, 1, locality=("r", "b", ""), locality_weight=2)   # 2 * 0.7 = 1.4
    lb, _ = balancer(a + b, locality=True)
    picks = Counter(lb.choose().locality[1] for _ in range(240))
    assert picks == {"a": 100, "b": 140}


def test_without_locality_weighted_lb_config_localities_are_one_set():
    a = level(0, 1, locality=("r", "a", ""), locality_weight=1)
    b = level(0, 3, locality=("r", "b", ""), locality_weight=1)
    lb, _ = balancer(a + b)
    assert Counter(lb.choose().locality[1] for _ in range(400)) == {"a": 100, "b": 300}


def test_localities_all_without_weight_fall_back_to_the_level():
    a = level(0, 1, locality=("r", "a", ""))
    b = level(0, 1, locality=("r", "b", ""))
    lb, _ = balancer(a + b, locality=True)
    assert Counter(lb.choose().locality[1] for _ in range(10)) == {"a": 5, "b": 5}


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_hashing_balancers_choose_the_priority_by_the_hash(policy):
    p0, p1 = level(0, 1, 1), level(1, 2)          # loads 70 / 30
    lb, _ = balancer(p0 + p1, policy=policy)
    for h in range(200):
        want = 0 if h % 100 < 70 else 1
        assert lb.choose_hash(h).priority == want
    # The same hash always lands on the same host.
    assert lb.choose_hash(12345) is lb.choose_hash(12345)


def test_a_ring_in_panic_uses_every_host_and_counts():
    p0 = level(0, 0, 3)
    lb, counter = balancer(p0, policy="RING_HASH")
    assert lb.choose_hash(7) in p0 and counter.value == 1


def test_locality_weights_shape_the_ring():
    a = level(0, 1, locality=("r", "a", ""), locality_weight=1)
    b = level(0, 1, locality=("r", "b", ""), locality_weight=9)
    lb, _ = balancer(a + b, policy="MAGLEV", locality=True)
    picks = Counter(lb.choose_hash(h * 7919).locality[1] for h in range(2000))
    assert picks["b"] > 5 * picks["a"]


def test_the_snapshot_orders_levels_and_keeps_single_priority_clusters_cheap():
    s = build_priority_state(tuple(level(0, 2)))
    assert s.single_source == (0, False)
    assert build_priority_state(tuple(level(0, 1, 1) + level(1, 1))).single_source is None


# -- EDS: priorities and the policy come with each assignment ------------------------------------

def test_an_eds_assignment_brings_its_priorities_localities_and_overprovisioning_factor():
    from proxy.upstream.cluster_config import parse_load_assignment
    from proxy.upstream.cluster_manager import ClusterManager
    from proxy.xds.eds import EdsApplier

    published = []
    appliers = []

    def subscribe(cfg, on_endpoints):
        appliers.append(EdsApplier(cfg.name, cfg.name, on_endpoints))
        return type("H", (), {"stop": lambda self: None})()

    cm = ClusterManager([ClusterConfig("e", type="EDS")], published.append, eds_subscribe=subscribe)
    cm.initialize()

    def cla(factor):
        return {"cluster_name": "e", "policy": {"overprovisioning_factor": factor}, "endpoints": [
            {"priority": 0, "locality": {"zone": "z0"}, "load_balancing_weight": 2, "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}},
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}},
                 "health_status": "UNHEALTHY"}]},
            {"priority": 1, "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.3", "port_value": 80}}}}]}]}

    assert parse_load_assignment(cla(140), "cla")[2] == AssignmentPolicy(140)
    appliers[0].on_update([(cla(140), "cla")], "v1")
    snap = cm.snapshots()["e"]
    assert snap.priority_state.healthy_load == (70, 30)
    assert [(h.address, h.priority, h.locality, h.locality_weight) for h in snap.hosts] == [
        ("10.0.0.1", 0, ("", "z0", ""), 2), ("10.0.0.2", 0, ("", "z0", ""), 2), ("10.0.0.3", 1, ("", "", ""), 0)]
    n = len(published)
    appliers[0].on_update([(cla(200), "cla")], "v2")   # same hosts, another factor: republished
    assert len(published) == n + 1
    assert cm.snapshots()["e"].priority_state.healthy_load == (100, 0)


def test_a_single_level_ring_is_used_directly_and_a_level_without_load_gets_no_ring():
    lb, _ = balancer(level(0, 3), policy="MAGLEV")
    assert lb.choose_hash.__self__.hosts == lb._rings[0].hosts   # the table's own bound method
    lb, _ = balancer(level(0, 2) + level(1, 2), policy="MAGLEV")  # P1 gets no load
    assert lb._rings[1] is None and lb.choose_hash(5).priority == 0
