"""xDS resource TTLs against real Envoy: one control plane sends a listener (LDS) or the
clusters (CDS) with a TTL to Envoy 1.40 and ftproxy. Delta: heartbeats keep them, both serve;
when the heartbeats stop both remove them at expiry (the listener's port refuses; the route's
clusters are gone: 503) and count it the same way (`*.version` is xxHash64 of "", the removal
counts as one more update). State of the world: a heartbeat-only LDS/CDS response is a world
without them, so the TTL is refreshed by sending them again; without that both remove them.
(RDS with a TTL is not compared: Envoy 1.40 crashes when a route configuration's TTL passes.)
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLUSTER, LISTENER, ROUTE, ControlPlane

from .proxies import PortReservation
from .test_xds_grpc import Proxy, listener, routes, static

RDS = {"rds": {"route_config_name": "local_route", "config_source": {"ads": {}, "resource_api_version": "V3"}}}
STATS = ["listener_manager.listener_removed", "cluster_manager.cluster_removed",
         "listener_manager.lds.version", "cluster_manager.cds.version",
         "listener_manager.total_listeners_active", "cluster_manager.active_clusters"]


@pytest.mark.parametrize("api_type,which", [("DELTA_GRPC", LISTENER), ("DELTA_GRPC", CLUSTER),
                                            ("GRPC", LISTENER), ("GRPC", CLUSTER)])
def test_ttl_expiry_agrees_with_real_envoy(api_type, which, tmp_path):
    s1 = EchoUpstream("service1")
    cp = ControlPlane()
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports, cp.port, api_type),
               Proxy("ftproxy", tmp_path, ports, cp.port, api_type)]
    ports.release()
    delta = api_type == "DELTA_GRPC"
    ttl = 4.0 if delta else 3.0
    stop = threading.Event()
    problems = []
    try:
        cp.set(CLUSTER, "c1", [static("dyn", s1.port)], ttl=ttl if which == CLUSTER else None)
        for p in proxies:
            cp.set(LISTENER, "l1", [listener("l1", p.listener_ports["l1"], RDS)], node=p.kind,
                   ttl=ttl if which == LISTENER else None)
        cp.set(ROUTE, "r1", [{"@type": ROUTE, **routes(("/", "dyn"))}])

        def heartbeats() -> None:
            while not stop.wait(ttl / 8):
                cp.heartbeat(which)
        if delta:
            threading.Thread(target=heartbeats, daemon=True).start()
        for p in proxies:
            p.start()
        if delta:
            time.sleep(2 * ttl)
            seen = {p.kind: p.observe([("l1", "/")]) for p in proxies}
            if seen["envoy"] != seen["ftproxy"]:
                # Once in a CI run Envoy 1.40 answered 503 (its cluster gone) here on a loaded
                # machine; a second look, after a few more heartbeats, tells a blip from a loss.
                time.sleep(ttl / 2)
                seen = {p.kind: p.observe([("l1", "/")]) for p in proxies}
            if seen["envoy"] != seen["ftproxy"] or seen["ftproxy"]["l1/"] != (200, "service1"):
                problems.append(f"with heartbeats: {seen}")
            stop.set()
        gone = "listener_manager.listener_removed" if which == LISTENER else "cluster_manager.cluster_removed"
        for p in proxies:
            if not cp.wait(lambda: p.stats_of([gone])[gone] == "1", ttl + 5):
                problems.append(f"{p.kind}: not removed at expiry")
        seen = {p.kind: (p.observe([("l1", "/")]), p.stats_of(STATS)) for p in proxies}
        if seen["envoy"] != seen["ftproxy"]:
            problems.append(f"after expiry: envoy {seen['envoy']} ftproxy {seen['ftproxy']}")
    finally:
        stop.set()
        for p in proxies:
            p.stop()
        cp.close()
        s1.close()
    assert not problems, "\n".join(problems)
