"""The health checker's pure parts: Envoy's PayloadMatcher, the next-check interval rules
(HealthCheckerImplBase::interval with its jitter), the gRPC answer decoding, and the config
defaults of health_check_config."""

from __future__ import annotations

import random

from proxy.stats.store import Store
from proxy.upstream.health_check_config import parse_health_check
from proxy.upstream.health_checker import (CHANGE_PENDING, CHANGED, UNCHANGED, ClusterHealthChecker,
                                           _serving_status, _varint, payload_match)


def test_payload_match_finds_segments_in_order():
    assert payload_match((b"po", b"ng"), b"xxpoyyngzz")
    assert not payload_match((b"ng", b"po"), b"xxpoyyngzz")
    assert payload_match((), b"")
    assert not payload_match((b"pong",), b"pon")


def test_config_defaults_follow_envoy():
    c = parse_health_check({"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3,
                            "healthy_threshold": 0, "tcp_health_check": {}}, "hc")
    assert (c.no_traffic_interval, c.no_traffic_healthy_interval) == (60.0, 60.0)
    assert (c.unhealthy_interval, c.unhealthy_edge_interval, c.healthy_edge_interval) == (2.0, 2.0, 2.0)
    assert c.reuse_connection and c.healthy_threshold == 1
    c = parse_health_check({"timeout": "1s", "interval": "2s", "unhealthy_threshold": 1,
                            "healthy_threshold": 1, "unhealthy_interval": "5s",
                            "no_traffic_interval": "7s", "http_health_check": {"path": "/"}}, "hc")
    assert (c.unhealthy_edge_interval, c.no_traffic_healthy_interval) == (5.0, 7.0)
    assert c.http.expected_statuses == ((200, 201),) and c.http.method == "GET"


def _checker(traffic: list[bool], **hc):
    raw = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
           "unhealthy_interval": "2s", "unhealthy_edge_interval": "3s", "healthy_edge_interval": "4s",
           "no_traffic_interval": "5s", "no_traffic_healthy_interval": "6s",
           "tcp_health_check": {}}
    raw.update(hc)
    owner = ClusterHealthChecker("c", [parse_health_check(raw, "hc")], None, Store("t"),
                                 had_traffic=lambda: traffic[0], on_change=lambda: None,
                                 rng=random.Random(1))
    return owner.checkers[0]


def test_intervals_as_envoy_chooses_them():
    traffic = [False]
    c = _checker(traffic)
    assert c.interval(True, UNCHANGED) == 6.0         # no traffic yet, healthy
    assert c.interval(True, CHANGE_PENDING) == 5.0    # no traffic, a transition pending
    assert c.interval(False, CHANGED) == 5.0
    traffic[0] = True
    assert c.interval(True, UNCHANGED) == 1.0
    assert c.interval(True, CHANGED) == 1.0
    assert c.interval(True, CHANGE_PENDING) == 4.0    # healthy_edge_interval
    assert c.interval(False, UNCHANGED) == 2.0        # unhealthy_interval
    assert c.interval(False, CHANGE_PENDING) == 3.0   # unhealthy_edge_interval


def test_jitter_adds_within_bounds():
    traffic = [True]
    c = _checker(traffic, interval_jitter="0.1s", interval_jitter_percent=10)
    values = {c.interval(True, UNCHANGED) for _ in range(200)}
    assert min(values) >= 1.0 and max(values) < 1.0 + 0.1 + 0.1
    assert len(values) > 20


def test_grpc_health_response_decoding():
    assert _serving_status(b"\x08\x01") == 1
    assert _serving_status(b"\x08\x02") == 2
    assert _serving_status(b"") == 0
    assert _serving_status(b"\x12\x02ab\x08\x01") == 1   # an unknown field skipped
    assert _serving_status(b"\x08") == 0                 # truncated
    assert _varint(300) == b"\xac\x02"
