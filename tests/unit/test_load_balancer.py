"""Load balancers: weighted round robin, least request (P2C), weighted random."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxy.upstream.circuit_breaker import ResourceLimits
from proxy.upstream.cluster_config import ClusterConfig, Thresholds
from proxy.upstream.host import ClusterSnapshot, Host
from proxy.upstream.load_balancer import (
    LeastRequestLoadBalancer, RandomLoadBalancer, RoundRobinLoadBalancer, create_load_balancer,
)


def hosts(*weights: int) -> tuple[Host, ...]:
    return tuple(Host(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))


def snapshot(policy: str, hs: tuple[Host, ...], choice_count: int = 2) -> ClusterSnapshot:
    cfg = ClusterConfig(name="c", lb_policy=policy, least_request_choice_count=choice_count)
    return ClusterSnapshot("c", cfg, hs, ResourceLimits(Thresholds()), ResourceLimits(Thresholds()))


def no_load(_: Host) -> int:
    return 0


def fixed(value: int):
    return lambda n: value % n


class FakeRand:
    """Returns a scripted sequence of draws (each taken modulo n)."""

    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)

    def __call__(self, n: int) -> int:
        return self.draws.pop(0) % n


def test_host_key_and_str():
    assert Host("10.0.0.1", 80).key == ("10.0.0.1", 80)
    assert str(Host("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(Host("::1", 8080)) == "[::1]:8080"


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_every_policy_returns_none_without_hosts(policy):
    lb = create_load_balancer(snapshot(policy, ()), no_load, fixed(0))
    assert lb.choose() is None


def test_create_load_balancer_picks_the_configured_policy():
    assert isinstance(create_load_balancer(snapshot("ROUND_ROBIN", hosts(1)), no_load, fixed(0)),
                      RoundRobinLoadBalancer)
    assert isinstance(create_load_balancer(snapshot("LEAST_REQUEST", hosts(1)), no_load, fixed(0)),
                      LeastRequestLoadBalancer)
    assert isinstance(create_load_balancer(snapshot("RANDOM", hosts(1)), no_load, fixed(0)),
                      RandomLoadBalancer)


def test_round_robin_equal_weights_cycles_in_order_from_the_random_start():
    hs = hosts(1, 1, 1)
    lb = RoundRobinLoadBalancer(hs, fixed(1))
    assert [lb.choose() for _ in range(6)] == [hs[1], hs[2], hs[0], hs[1], hs[2], hs[0]]


def test_weighted_round_robin_gives_exact_proportions_over_whole_periods():
    hs = hosts(5, 1, 3, 1)
    lb = RoundRobinLoadBalancer(hs, fixed(0))
    picks = Counter(lb.choose() for _ in range(10 * 100))
    assert [picks[h] for h in hs] == [500, 100, 300, 100]


def test_weighted_round_robin_interleaves_instead_of_bursting():
    a, b = hosts(2, 1)
    lb = RoundRobinLoadBalancer((a, b), fixed(0))
    # Smooth WRR: a heavy host never gets its whole share in one burst when others wait.
    assert [lb.choose() for _ in range(6)] == [a, b, a, a, b, a]


def test_weighted_round_robin_is_deterministic_and_starts_with_the_heaviest_host():
    hs = hosts(3, 2, 7)
    lb1, lb2 = RoundRobinLoadBalancer(hs, fixed(0)), RoundRobinLoadBalancer(hs, fixed(5))
    seq1, seq2 = [lb1.choose() for _ in range(50)], [lb2.choose() for _ in range(50)]
    assert seq1 == seq2
    assert seq1[0] is hs[2]


def test_least_request_prefers_the_idle_host_of_the_two_drawn():
    hs = hosts(1, 1, 1)
    load = {hs[0]: 5, hs[1]: 0, hs[2]: 2}
    lb = LeastRequestLoadBalancer(hs, load.__getitem__, FakeRand(0, 1, 2, 0, 0, 0))
    assert lb.choose() is hs[1]   # drew hosts 0 and 1 -> 1 is idle
    assert lb.choose() is hs[2]   # drew 2 and 0 -> 2 has fewer active requests
    assert lb.choose() is hs[0]   # drew 0 twice -> no other choice


def test_least_request_never_picks_the_busiest_host_with_two_choices_over_all_pairs():
    hs = hosts(1, 1, 1, 1)
    load = {hs[0]: 0, hs[1]: 1, hs[2]: 2, hs[3]: 9}
    rng = random.Random(7)
    lb = LeastRequestLoadBalancer(hs, load.__getitem__, rng.randrange)
    picks = Counter(lb.choose() for _ in range(4000))
    # hs[3] is chosen only when both draws hit it (p = 1/16); the idle host wins most often.
    assert picks[hs[0]] > picks[hs[1]] > picks[hs[2]] > picks[hs[3]]
    assert picks[hs[3]] < 4000 * 0.1


def test_least_request_uses_the_configured_choice_count():
    hs = hosts(1, 1, 1)
    load = {hs[0]: 3, hs[1]: 2, hs[2]: 0}
    lb = LeastRequestLoadBalancer(hs, load.__getitem__, FakeRand(0, 1, 2), choice_count=3)
    assert lb.choose() is hs[2]


def test_least_request_with_unequal_weights_discounts_busy_hosts():
    a, b = hosts(2, 1)
    rng = random.Random(3)
    idle = LeastRequestLoadBalancer((a, b), no_load, rng.randrange)
    share_idle = Counter(idle.choose() for _ in range(3000))[a] / 3000
    busy = LeastRequestLoadBalancer((a, b), {a: 3, b: 0}.__getitem__, rng.randrange)
    share_busy = Counter(busy.choose() for _ in range(3000))[a] / 3000
    assert share_idle == pytest.approx(2 / 3, abs=0.04)       # weight 2:1 when idle
    assert share_busy == pytest.approx(0.5 / 1.5, abs=0.04)   # 2/(3+1) : 1/(0+1)


@pytest.mark.parametrize("bias,expected", [
    (0.0, 2 / 3),                                   # load ignored: weights only
    (0.5, (2 / 2) / (2 / 2 + 1)),                   # 2/(3+1)^0.5 : 1/(0+1)^0.5 = 1 : 1
    (2.0, (2 / 16) / (2 / 16 + 1)),                 # 2/16 : 1
])
def test_active_request_bias_scales_how_much_load_counts(bias, expected):
    a, b = hosts(2, 1)
    lb = LeastRequestLoadBalancer((a, b), {a: 3, b: 0}.__getitem__, random.Random(5).randrange,
                                  active_request_bias=bias)
    share = Counter(lb.choose() for _ in range(4000))[a] / 4000
    assert share == pytest.approx(expected, abs=0.04)


def test_random_is_roughly_weighted_with_a_seeded_rand():
    hs = hosts(1, 3, 6)
    lb = RandomLoadBalancer(hs, random.Random(42).randrange)
    n = 20000
    picks = Counter(lb.choose() for _ in range(n))
    for h, expected in zip(hs, (0.1, 0.3, 0.6)):
        assert picks[h] / n == pytest.approx(expected, abs=0.02)


def test_random_maps_draws_to_weight_ranges_exactly():
    hs = hosts(1, 3)
    lb = RandomLoadBalancer(hs, FakeRand(0, 1, 3))
    assert [lb.choose() for _ in range(3)] == [hs[0], hs[1], hs[1]]
