"""Priority levels and locality-weighted balancing through the proxy, with real loopback
upstreams: traffic fails over to priority 1 when priority 0's hosts fail their health checks
or are ejected by outlier detection, and comes back; with the overprovisioning factor 1.4 a
partly healthy level keeps its share (health x 1.4) and the rest spills over; panic serves
every host and counts lb_healthy_panic; locality weights split a level; /clusters shows each
host's priority and locality; RING_HASH picks the priority by the request's hash."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter

from .clients import request
from .harness import front_proxy_config


class Backend:
    """An HTTP/1.1 keep-alive upstream: `/hc` answers 200 while `healthy`, else 503; other
    paths answer `status` (200 with its name as the body). Counts what it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.status = 200
        self.lock = threading.Lock()   # guards served
        self.served = 0
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        d = c.recv(65536)
                    except OSError:
                        return
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                parts = head.split(b" ", 2)
                if len(parts) < 2:   # no request line (bytes of a connection cut short): done
                    return
                if parts[1] == b"/hc":
                    status = 200 if self.healthy else 503
                    body = b""
                else:
                    with self.lock:
                        self.served += 1
                    status = self.status
                    body = self.name.encode() if status == 200 else b""
                try:
                    c.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
                except OSError:
                    return

    def close(self) -> None:
        self.lsock.close()


def backends(*names: str) -> dict[str, Backend]:
    return {n: Backend(n) for n in names}


def _ep(b: Backend, status: str = "HEALTHY") -> dict:
    return {"health_status": status, "endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": b.port}}}}


def cluster(name: str, levels: list[dict], **extra) -> dict:
    """`levels`: LocalityLbEndpoints entries, each {"priority", "hosts": [(Backend, status)],
    and optional "locality", "load_balancing_weight"}."""
    endpoints = []
    for lv in levels:
        e = {"priority": lv.get("priority", 0),
             "lb_endpoints": [_ep(b, *rest) for b, *rest in lv["hosts"]]}
        for k in ("locality", "load_balancing_weight"):
            if k in lv:
                e[k] = lv[k]
        endpoints.append(e)
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": endpoints}}
    for k, v in extra.items():
        if k == "policy":
            c["load_assignment"]["policy"] = v
        else:
            c[k] = v
    return c


def proxy(proxy_factory, *clusters: dict, **route_extra):
    routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"], **route_extra}}
              for c in clusters]
    return proxy_factory(front_proxy_config(routes, list(clusters)))


def served(p, cluster_name: str, n: int, headers=None) -> Counter:
    got: Counter = Counter()
    for i in range(n):
        r = request(p.port, f"/{cluster_name}/x", headers=headers(i) if headers else None)
        got[r.body.decode() if r.status == 200 else r.status] += 1
    return got


def flags(p, cluster_name: str) -> dict[int, str]:
    _, text = p.admin("/clusters")
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if parts[0] == cluster_name and len(parts) == 4 and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


_HC = {"timeout": "1s", "interval": "0.1s", "no_traffic_interval": "0.1s", "unhealthy_threshold": 1,
       "healthy_threshold": 1, "http_health_check": {"path": "/hc"}}


# -- failover ------------------------------------------------------------------------------------

def test_failover_to_priority_1_when_priority_0_fails_health_checks_and_back(proxy_factory):
    b = backends("p0", "p1")
    try:
        c = cluster("c", [{"priority": 0, "hosts": [(b["p0"],)]}, {"priority": 1, "hosts": [(b["p1"],)]}],
                    health_checks=[_HC])
        p = proxy(proxy_factory, c)
        assert p.wait_for(lambda: set(flags(p, "c").values()) == {"healthy"})
        assert served(p, "c", 20) == {"p0": 20}
        b["p0"].healthy = False
        assert p.wait_for(lambda: flags(p, "c")[b["p0"].port] == "/failed_active_hc")
        assert served(p, "c", 20) == {"p1": 20}
        b["p0"].healthy = True
        assert p.wait_for(lambda: flags(p, "c")[b["p0"].port] == "healthy")
        assert served(p, "c", 20) == {"p0": 20}
        assert p.counters().get("cluster.c.lb_healthy_panic", 0) == 0
    finally:
        for x in b.values():
            x.close()


def test_failover_when_outlier_detection_ejects_priority_0(proxy_factory):
    b = backends("p0", "p1")
    try:
        c = cluster("c", [{"priority": 0, "hosts": [(b["p0"],)]}, {"priority": 1, "hosts": [(b["p1"],)]}],
                    outlier_detection={"consecutive_5xx": 2, "interval": "60s", "base_ejection_time": "60s",
                                       "max_ejection_percent": 100})
        p = proxy(proxy_factory, c)
        assert served(p, "c", 5) == {"p0": 5}
        b["p0"].status = 503
        assert served(p, "c", 2) == {503: 2}
        assert p.wait_for(lambda: flags(p, "c")[b["p0"].port] == "/failed_outlier_check")
        assert served(p, "c", 10) == {"p1": 10}
        assert p.counters()["cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    finally:
        for x in b.values():
            x.close()


# -- gradual spill-over with the overprovisioning factor ------------------------------------------

def test_a_half_healthy_priority_0_keeps_70_percent_and_spills_30_to_priority_1(proxy_factory):
    b = backends("a", "bad", "p1")
    try:
        levels = [{"priority": 0, "hosts": [(b["a"],), (b["bad"], "UNHEALTHY")]},
                  {"priority": 1, "hosts": [(b["p1"],)]}]
        p = proxy(proxy_factory, cluster("c", levels), cluster("f", levels, policy={"overprovisioning_factor": 200}))
        got = served(p, "c", 300)
        assert set(got) == {"a", "p1"}
        assert 0.6 < got["a"] / 300 < 0.8      # 1/2 healthy x 1.4 = 70 %
        assert served(p, "f", 30) == {"a": 30}  # x 2.0: the level is whole
        assert b["bad"].served == 0
    finally:
        for x in b.values():
            x.close()


def test_spill_over_grows_as_priority_0_hosts_fail_their_health_checks(proxy_factory):
    """P0 of four hosts, P1 of one: 3/4 healthy x 1.4 > 100 % (P0 keeps all), 2/4 -> 70 %,
    1/4 -> 35 % (the rest to P1)."""
    b = backends("a", "b", "c", "d", "p1")
    try:
        p0 = [b[n] for n in "abcd"]
        c = cluster("c", [{"priority": 0, "hosts": [(x,) for x in p0]}, {"priority": 1, "hosts": [(b["p1"],)]}],
                    health_checks=[_HC])
        p = proxy(proxy_factory, c)
        assert p.wait_for(lambda: set(flags(p, "c").values()) == {"healthy"})
        for down, p0_share in ((1, (1.0, 1.0)), (2, (0.6, 0.8)), (3, (0.25, 0.45))):
            p0[down - 1].healthy = False
            assert p.wait_for(lambda: flags(p, "c")[p0[down - 1].port] == "/failed_active_hc")
            got = served(p, "c", 200)
            share = sum(got[x.name] for x in p0) / 200
            assert p0_share[0] <= share <= p0_share[1], (down, got)
            assert all(got[x.name] == 0 for x in p0[:down])
    finally:
        for x in b.values():
            x.close()


def test_three_of_four_healthy_is_still_a_whole_level(proxy_factory):
    b = backends("a", "b", "c", "bad", "p1")
    try:
        levels = [{"priority": 0, "hosts": [(b["a"],), (b["b"],), (b["c"],), (b["bad"], "UNHEALTHY")]},
                  {"priority": 1, "hosts": [(b["p1"],)]}]
        p = proxy(proxy_factory, cluster("c", levels))
        got = served(p, "c", 60)
        assert got == {"a": 20, "b": 20, "c": 20}   # 75 % x 1.4 > 100 %
    finally:
        for x in b.values():
            x.close()


# -- panic -----------------------------------------------------------------------------------

def test_total_panic_serves_every_host_by_level_size_and_counts(proxy_factory):
    b = backends("a", "b", "c", "d")
    try:
        levels = [{"priority": 0, "hosts": [(b["a"],), (b["b"], "UNHEALTHY"), (b["c"], "UNHEALTHY")]},
                  {"priority": 1, "hosts": [(b["d"], "UNHEALTHY")]}]
        p = proxy(proxy_factory, cluster("c", levels))
        got = served(p, "c", 200)
        assert set(got) == {"a", "b", "c", "d"}        # 33 % and 0 % healthy: both levels panic
        assert 0.6 < (got["a"] + got["b"] + got["c"]) / 200 < 0.9   # 3 of 4 hosts: 75 %
        assert p.counters()["cluster.c.lb_healthy_panic"] == 200
    finally:
        for x in b.values():
            x.close()


def test_no_panic_while_the_levels_together_are_whole(proxy_factory):
    b = backends("a", "b", "c", "d", "e")
    try:
        # P0: 1 of 3 healthy (46 %), P1 whole: total 100 %, so P0 does not panic even though
        # only a third of its hosts are healthy.
        levels = [{"priority": 0, "hosts": [(b["a"],), (b["b"], "UNHEALTHY"), (b["c"], "UNHEALTHY")]},
                  {"priority": 1, "hosts": [(b["d"],), (b["e"],)]}]
        p = proxy(proxy_factory, cluster("c", levels))
        got = served(p, "c", 300)
        assert set(got) == {"a", "d", "e"} and 0.35 < got["a"] / 300 < 0.57
        assert p.counters().get("cluster.c.lb_healthy_panic", 0) == 0
    finally:
        for x in b.values():
            x.close()


# -- locality weights ----------------------------------------------------------------------------

def test_locality_weights_split_traffic_with_locality_weighted_lb_config(proxy_factory):
    b = backends("a", "b", "b2")
    try:
        levels = [{"locality": {"region": "r", "zone": "za"}, "load_balancing_weight": 1, "hosts": [(b["a"],)]},
                  {"locality": {"region": "r", "zone": "zb"}, "load_balancing_weight": 3,
                   "hosts": [(b["b"],), (b["b2"],)]}]
        weighted = cluster("w", levels, common_lb_config={"locality_weighted_lb_config": {}})
        plain = cluster("plain", levels)
        p = proxy(proxy_factory, weighted, plain)
        assert served(p, "w", 80) == {"a": 20, "b": 30, "b2": 30}
        # Without locality_weighted_lb_config the weights do not act (as in Envoy).
        assert served(p, "plain", 60) == {"a": 20, "b": 20, "b2": 20}
    finally:
        for x in b.values():
            x.close()


def test_an_unhealthy_locality_loses_its_share_with_the_factor(proxy_factory):
    b = backends("a", "b", "bad")
    try:
        levels = [{"locality": {"zone": "za"}, "load_balancing_weight": 1, "hosts": [(b["a"],)]},
                  {"locality": {"zone": "zb"}, "load_balancing_weight": 2,
                   "hosts": [(b["b"],), (b["bad"], "UNHEALTHY")]}]   # 2 x min(1, 1.4 x 0.5) = 1.4
        p = proxy(proxy_factory, cluster("w", levels, common_lb_config={"locality_weighted_lb_config": {}}))
        assert served(p, "w", 120) == {"a": 50, "b": 70}
    finally:
        for x in b.values():
            x.close()


# -- /clusters -------------------------------------------------------------------------------

def test_clusters_admin_shows_priority_and_locality(proxy_factory):
    b = backends("a", "b")
    try:
        levels = [{"priority": 0, "locality": {"region": "us", "zone": "z1", "sub_zone": "rack1"}, "hosts": [(b["a"],)]},
                  {"priority": 1, "locality": {"region": "eu"}, "hosts": [(b["b"],)]}]
        p = proxy(proxy_factory, cluster("c", levels))
        _, text = p.admin("/clusters")
        a, bb = f"c::127.0.0.1:{b['a'].port}", f"c::127.0.0.1:{b['b'].port}"
        lines = set(text.splitlines())
        assert {f"{a}::region::us", f"{a}::zone::z1", f"{a}::sub_zone::rack1", f"{a}::priority::0",
                f"{bb}::region::eu", f"{bb}::zone::", f"{bb}::priority::1"} <= lines
        _, js = p.admin("/clusters?format=json")
        (c,) = [c for c in json.loads(js)["cluster_statuses"] if c["name"] == "c"]
        hosts = {h["address"]["socket_address"]["port_value"]: h for h in c["host_statuses"]}
        assert hosts[b["a"].port]["locality"] == {"region": "us", "zone": "z1", "sub_zone": "rack1"}
        assert "priority" not in hosts[b["a"].port]   # 0: left out, as Envoy's protobuf JSON
        assert hosts[b["b"].port]["locality"] == {"region": "eu"} and hosts[b["b"].port]["priority"] == 1
    finally:
        for x in b.values():
            x.close()


# -- hashing balancers ----------------------------------------------------------------------------

def test_ring_hash_chooses_the_priority_by_the_hash_and_fails_over(proxy_factory):
    b = backends("a", "bad", "p1")
    try:
        levels = [{"priority": 0, "hosts": [(b["a"],), (b["bad"], "UNHEALTHY")]},
                  {"priority": 1, "hosts": [(b["p1"],)]}]
        p = proxy(proxy_factory, cluster("r", levels, lb_policy="RING_HASH"),
                  hash_policy=[{"header": {"header_name": "x-user"}}])
        first = served(p, "r", 100, headers=lambda i: {"x-user": f"user-{i}"})
        again = served(p, "r", 100, headers=lambda i: {"x-user": f"user-{i}"})
        assert first == again and set(first) == {"a", "p1"}   # each key sticks; 70 / 30 by hash
        assert 0.5 < first["a"] / 100 < 0.9
    finally:
        for x in b.values():
            x.close()
