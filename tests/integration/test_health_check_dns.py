"""Active health checks of a STRICT_DNS cluster through the ClusterManager with the real main
Dispatcher and real sockets (the resolver is a table): a host that appears later starts
/failed_active_hc and is checked; a host that leaves stops being checked and leaves the
health_check.healthy gauge; the published snapshots carry the flags and the warm state."""

from __future__ import annotations

from proxy.stats.store import Store
from proxy.threads.dispatcher import Dispatcher
from proxy.upstream.cluster_config import parse_cluster
from proxy.upstream.cluster_manager import ClusterManager

from .test_health_check import HcUpstream


def test_dns_hosts_join_and_leave_health_checking():
    up = HcUpstream("a")
    d = Dispatcher("main-test")
    store = Store("main")
    answers = {"svc.test": ["127.0.0.1"]}
    cfg = parse_cluster({
        "name": "c", "type": "STRICT_DNS", "connect_timeout": "0.5s", "dns_refresh_rate": "0.05s",
        "health_checks": [{"timeout": "0.3s", "interval": "0.05s", "no_traffic_interval": "0.05s",
                           "unhealthy_threshold": 1, "healthy_threshold": 1,
                           "http_health_check": {"path": "/hc"}}],
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "svc.test", "port_value": up.port}}}}]}]},
    }, "c")
    published = []
    cm = ClusterManager([cfg], published.append, resolver=lambda name, port, fam: answers[name],
                        stats=store, dispatcher=d)
    try:
        cm.initialize()
        assert not cm.warm
        assert d.run_until(lambda: cm.warm, 2.0)

        def flags():
            return {h.address: h.failed_active_hc for h in cm.snapshots()["c"].hosts}

        assert d.run_until(lambda: flags() == {"127.0.0.1": False}, 2.0)
        # A second address (nothing listens on 127.0.0.2 at that port): starts failed, stays so.
        answers["svc.test"] = ["127.0.0.1", "127.0.0.2"]
        ticker = d.create_timer(lambda: (cm.tick(), ticker.enable(0.05)))
        ticker.enable(0)
        assert d.run_until(lambda: "127.0.0.2" in flags(), 2.0)
        assert flags()["127.0.0.2"] is True
        d.run_until(lambda: store.counter("cluster.c.health_check.network_failure").value >= 2, 2.0)
        assert flags() == {"127.0.0.1": False, "127.0.0.2": True}
        assert store.gauge("cluster.c.health_check.healthy").value == 1
        assert published[-1]["c"].membership_healthy == 1
        # The checked host leaves: its checks stop, the healthy gauge follows.
        answers["svc.test"] = ["127.0.0.2"]
        assert d.run_until(lambda: "127.0.0.1" not in flags(), 2.0)
        assert store.gauge("cluster.c.health_check.healthy").value == 0
        n = up.answers("ok")
        d.run_until(lambda: False, 0.3)
        assert up.answers("ok") == n
        ticker.disable()
    finally:
        cm.stop_health_checks()
        d.close()
        up.close()
