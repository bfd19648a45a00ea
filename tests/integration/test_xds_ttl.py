"""xDS resource TTLs (`Resource.ttl`) through the running proxy, fed by the real gRPC control
plane: a resource sent with a TTL stays while heartbeats refresh it and is removed as Envoy
removes it when they stop — a listener (LDS) or a cluster (CDS) goes away; a route
configuration (RDS) is kept, as Envoy ignores the removal of a named resource — in state of
the world and delta."""

from __future__ import annotations

import time

import pytest

from .test_xds_grpc import (CLUSTER, LISTENER, ROUTE, bootstrap, free_port, get, listener, route,
                            served_by, world)  # noqa: F401 (world: the fixture)
from .harness import ProxyUnderTest, static_cluster

TTL = 1.2   # seconds; heartbeats every TTL/6 leave room for a loaded machine's delays
XXH64_EMPTY = 17241709254077376921   # xxHash64("")


def _static_cluster_resource(name: str, port: int) -> dict:
    return {"@type": CLUSTER, **static_cluster(name, port)}


def _heartbeats(cp, type_url: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cp.heartbeat(type_url)
        time.sleep(TTL / 6)


def test_delta_heartbeats_keep_a_listener_with_a_ttl_and_it_is_removed_when_they_stop(world):
    cp, ups, proxies = world
    lport = free_port()
    cp.set(CLUSTER, "c1", [_static_cluster_resource("svc", ups["one"].port)])
    cp.set(ROUTE, "r1", [route("svc")])
    cp.set(LISTENER, "l1", [listener(lport)], ttl=TTL)
    p = ProxyUnderTest(bootstrap(cp.port, "DELTA_GRPC"))
    proxies.append(p)
    assert served_by(lport) == "one"
    _heartbeats(cp, LISTENER, 3 * TTL)       # well past the TTL: refreshed, still there
    assert served_by(lport) == "one"
    assert p.counters().get("listener_manager.listener_removed", 0) == 0
    # No more heartbeats: the listener expires and is removed (its port refuses).
    assert p.wait_for(lambda: p.counters().get("listener_manager.listener_removed", 0) == 1, 5)
    # Counted first, then the workers close the listening socket (dynamic_listeners.py).
    assert p.wait_for(lambda: get(lport)[0] == 0, 5), get(lport)
    assert p.wait_for(lambda: p.gauges().get("listener_manager.total_listeners_active") == 0)
    # As Envoy: the removal is an update with version "" (xxHash64 of the empty string),
    # recorded once the update applied (the listener went first: wait, do not race main).
    assert p.wait_for(lambda: p.gauges()["listener_manager.lds.version"] == XXH64_EMPTY, 5)
    # The routes (RDS) and the cluster were not TTL'd: both stay.
    assert "svc" in p.server.cluster_manager.states()


def test_sotw_a_listener_with_a_ttl_not_sent_again_is_removed(world):
    """State of the world refreshes a TTL by sending the resource again: a heartbeat-only LDS
    response is a state of the world without the listener (Envoy removes it too)."""
    cp, ups, proxies = world
    lport = free_port()
    cp.set(CLUSTER, "c1", [_static_cluster_resource("svc", ups["one"].port)])
    cp.set(ROUTE, "r1", [route("svc")])
    cp.set(LISTENER, "l1", [listener(lport)], ttl=4.0)
    p = ProxyUnderTest(bootstrap(cp.port, "GRPC"))
    proxies.append(p)
    assert served_by(lport) == "one"
    time.sleep(2.5)
    cp.set(LISTENER, "l2", [listener(lport)], ttl=4.0)   # the same listener again: refreshed
    assert cp.wait(lambda: cp.acked(LISTENER, "l2"))
    time.sleep(2.0)                                     # 4.5 s after the first one was taken
    assert served_by(lport) == "one"
    assert p.wait_for(lambda: p.counters().get("listener_manager.listener_removed", 0) == 1, 6)
    assert p.wait_for(lambda: get(lport)[0] == 0, 5), get(lport)  # the workers close it after
    assert p.wait_for(lambda: p.gauges()["listener_manager.lds.version"] == XXH64_EMPTY, 5)


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_an_expired_cluster_is_removed_and_an_expired_route_configuration_is_kept(world, api_type):
    cp, ups, proxies = world
    lport = free_port()
    cp.set(CLUSTER, "c1", [_static_cluster_resource("svc", ups["one"].port)], ttl=TTL)
    cp.set(LISTENER, "l1", [listener(lport)])
    cp.set(ROUTE, "r1", [route("svc")], ttl=TTL)
    p = ProxyUnderTest(bootstrap(cp.port, api_type))
    proxies.append(p)
    assert served_by(lport) == "one"
    before = p.counters()["http.ingress_http.rds.local_route.update_success"]
    assert p.wait_for(lambda: p.counters().get("cluster_manager.cluster_removed", 0) == 1, 5)
    assert "svc" not in p.server.cluster_manager.states()
    # The route configuration expired too: Envoy counts the (empty) update and keeps the routes,
    # which now name a cluster that is gone: 503 "no cluster", not 404 "no route".
    assert p.wait_for(lambda: p.counters()["http.ingress_http.rds.local_route.update_success"] > before, 5)
    assert p.wait_for(lambda: get(lport)[0] == 503, 5), get(lport)  # the workers' view follows
    # A new push brings the cluster back (without a TTL: it stays).
    cp.set(CLUSTER, "c2", [_static_cluster_resource("svc", ups["two"].port)])
    assert p.wait_for(lambda: served_by(lport) == "two", 5)
    time.sleep(3 * TTL)
    assert served_by(lport) == "two"
