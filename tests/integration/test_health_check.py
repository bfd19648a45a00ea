"""Active health checking (cluster `health_checks`) through the proxy, against real upstreams
that flip between healthy, failing, retriable, hanging and resetting answers: Envoy's state
rules (first pass healthy at once, healthy_threshold passes to return, a non-retriable status
fails at once, retriable statuses / timeouts / network failures count to unhealthy_threshold),
traffic leaving and returning, the /clusters flags, the health_check.* stats, the event log,
TCP send/receive checks, no_traffic_interval, health_check_config.port_value and the request
the checker sends."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from proxy.config.reader import ConfigError, all_errors
from proxy.upstream.cluster_config import parse_cluster

from tests.ports import free_port

from .clients import request
from .harness import front_proxy_config


class HcUpstream:
    """An HTTP/1.1 upstream (keep-alive) whose `/hc` answer follows `mode`: "ok" (200),
    "503", "429", "immediate" (503 with x-envoy-immediate-health-check-fail), "degraded"
    (200 with x-envoy-degraded), "hang" (no answer), "reset" (close without an answer).
    Other paths answer 200 with its name. Records each /hc request (time, head, mode)."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.lock = threading.Lock()   # guards hc_log, traffic
        self.hc_log: list[tuple[float, bytes, str]] = []
        self.traffic = 0
        self.traffic_headers = b""   # extra header lines of the answers to other paths
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
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
                path = head.split(b" ", 2)[1]
                if path != b"/hc":
                    with self.lock:
                        self.traffic += 1
                    body = self.name.encode()
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s"
                              % (len(body), self.traffic_headers, body))
                    continue
                mode = self.mode
                with self.lock:
                    self.hc_log.append((time.monotonic(), head, mode))
                if mode == "hang":
                    continue
                if mode == "reset":
                    return
                status, extra = {"ok": (200, b""), "503": (503, b""), "429": (429, b""),
                                 "immediate": (503, b"x-envoy-immediate-health-check-fail: true\r\n"),
                                 "degraded": (200, b"x-envoy-degraded: true\r\n")}[mode]
                c.sendall(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n%s\r\nok" % (status, extra))

    def answers(self, mode: str, since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for t, _, m in self.hc_log if m == mode and t >= since)

    def close(self) -> None:
        self.closed = True
        self.lsock.close()


class TcpPingUpstream:
    """Answers "pong" (or `answer`) to each "ping" it reads; counts connections."""

    def __init__(self, answer: bytes = b"pong") -> None:
        self.answer = answer
        self.connections = 0
        self.lsock = socket.socket()
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
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            while True:
                try:
                    d = c.recv(100)
                except OSError:
                    return
                if not d:
                    return
                if b"ping" in d:
                    c.sendall(self.answer)

    def close(self) -> None:
        self.lsock.close()


def _hc(**kw) -> dict:
    hc = {"timeout": "0.3s", "interval": "0.1s", "no_traffic_interval": "0.1s",
          "unhealthy_threshold": 2, "healthy_threshold": 2, "http_health_check": {"path": "/hc"}}
    hc.update(kw)
    return hc


def _cluster(name: str, ports: list[int], checks: list[dict], **extra) -> dict:
    c = {"name": name, "connect_timeout": "0.5s", "health_checks": checks,
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
             for p in ports]}]}}
    c.update(extra)
    return c


def _proxy(proxy_factory, *clusters: dict):
    routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"]}} for c in clusters]
    return proxy_factory(front_proxy_config(routes, list(clusters)))


def _flags(p, cluster: str) -> dict[int, str]:
    _, text = p.admin("/clusters")
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if parts[0] == cluster and len(parts) == 4 and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def _served(p, cluster: str, n: int = 10) -> set[str]:
    return {request(p.port, f"/{cluster}/x").body.decode() for _ in range(n)}


@pytest.fixture
def ups():
    made: list = []

    def make(*a, **kw):
        u = HcUpstream(*a, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def test_hosts_start_failed_and_traffic_waits_for_the_first_check(ups, proxy_factory):
    """Warming: the proxy serves only once each host has a first result; a host whose first
    check failed is /failed_active_hc, a passing one healthy at once (even with
    healthy_threshold 2). With the panic threshold at 0 a cluster of failed hosts answers
    503 UH; at the default 50 % it panics and uses them."""
    good, bad = ups("good"), ups("bad", mode="503")
    p = _proxy(proxy_factory,
               _cluster("mixed", [good.port, bad.port], [_hc(interval="5s", no_traffic_interval="5s")]),
               _cluster("none", [bad.port], [_hc(interval="5s", no_traffic_interval="5s")],
                        common_lb_config={"healthy_panic_threshold": {"value": 0}}),
               _cluster("panic", [bad.port], [_hc(interval="5s", no_traffic_interval="5s")]))
    # No waiting: ready means every first check has answered.
    assert _flags(p, "mixed") == {good.port: "healthy", bad.port: "/failed_active_hc"}
    assert _served(p, "mixed") == {"good"}
    r = request(p.port, "/none/x")
    assert (r.status, r.body) == (503, b"no healthy upstream")
    assert _served(p, "panic", 3) == {"bad"}
    c, g = p.counters(), p.gauges()
    assert c["cluster.mixed.health_check.attempt"] == 2
    assert c["cluster.mixed.health_check.success"] == 1
    assert c["cluster.mixed.health_check.failure"] == 1
    assert c.get("cluster.mixed.health_check.network_failure", 0) == 0
    assert g["cluster.mixed.health_check.healthy"] == 1
    assert (g["cluster.mixed.membership_healthy"], g["cluster.mixed.membership_total"]) == (1, 2)
    assert c["cluster.none.upstream_cx_none_healthy"] == 1
    assert c["cluster.panic.lb_healthy_panic"] == 3


def test_traffic_leaves_a_failing_host_and_returns_after_healthy_threshold(ups, proxy_factory):
    a, b = ups("a"), ups("b")
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port], [_hc(healthy_threshold=3)]))
    assert _served(p, "c") == {"a", "b"}
    a.mode = "503"   # neither expected nor retriable: unhealthy at the first such answer
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "/failed_active_hc")
    assert a.answers("503") == 1 or _flags(p, "c")[a.port] == "/failed_active_hc"
    assert _served(p, "c") == {"b"}
    flip = time.monotonic()
    a.mode = "ok"
    seen_pending = False
    while time.monotonic() - flip < 5:
        before = a.answers("ok", flip)
        flags = _flags(p, "c")[a.port]
        after = a.answers("ok", flip)
        if flags == "healthy":
            # Three consecutive passes were needed (the checker had answers 1..3 by then).
            assert after >= 3
            break
        if 1 <= before and after <= 2:
            seen_pending = True   # one or two passes so far: still failed
        time.sleep(0.01)
    else:
        pytest.fail("host a did not return")
    assert seen_pending
    assert _served(p, "c") == {"a", "b"}
    c = p.counters()
    assert c["cluster.c.health_check.failure"] >= 1
    assert c["cluster.c.health_check.success"] >= 5


def test_retriable_statuses_and_timeouts_count_to_the_unhealthy_threshold(ups, proxy_factory):
    a, b, d, hang = ups("a"), ups("b"), ups("d"), ups("hang")
    hc = _hc(unhealthy_threshold=3, http_health_check={
        "path": "/hc", "retriable_statuses": [{"start": 429, "end": 430}]})
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port, d.port, hang.port], [hc]))
    assert set(_flags(p, "c").values()) == {"healthy"}
    flip = time.monotonic()
    a.mode = "429"
    hang.mode = "hang"
    seen_pending = False
    while time.monotonic() - flip < 5:
        before = a.answers("429", flip)
        flags = _flags(p, "c")[a.port]
        after = a.answers("429", flip)
        if flags == "/failed_active_hc":
            assert after >= 3
            break
        if 1 <= before and after <= 2:
            seen_pending = True
        time.sleep(0.01)
    else:
        pytest.fail("host a was not ejected")
    assert seen_pending
    # The hanging host: three timeouts (0.3 s each), then failed, flagged as timed out.
    assert p.wait_for(lambda: _flags(p, "c")[hang.port] == "/failed_active_hc/active_hc_timeout", 5)
    assert hang.answers("hang", flip) >= 3
    assert _served(p, "c") == {"b", "d"}   # 2 of 4 healthy: no panic
    c = p.counters()
    assert c["cluster.c.health_check.network_failure"] >= 3   # the timeouts
    assert p.gauges()["cluster.c.health_check.healthy"] == 2


def test_immediate_fail_header_resets_and_refused_connections(ups, proxy_factory):
    a, b, reset, c3 = ups("a"), ups("b"), ups("reset"), ups("c3")
    closed_port = free_port()  # nothing listens there
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port, reset.port, c3.port, closed_port],
                                       [_hc(unhealthy_threshold=1)]))
    assert _flags(p, "c")[closed_port] == "/failed_active_hc"
    assert p.counters()["cluster.c.health_check.network_failure"] >= 1
    a.mode = "immediate"
    reset.mode = "reset"
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "/failed_active_hc/excluded_via_immediate_hc_fail")
    assert p.wait_for(lambda: _flags(p, "c")[reset.port] == "/failed_active_hc")
    # 2 healthy of 4 counted hosts (the excluded one counts neither way): no panic.
    assert _served(p, "c") == {"b", "c3"}
    a.mode = "ok"   # passing again clears both flags (healthy_threshold 2)
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "healthy")
    _, js = p.admin("/clusters?format=json")
    hosts = json.loads(js)["cluster_statuses"][0]["host_statuses"]
    by_port = {h["address"]["socket_address"]["port_value"]: h["health_status"] for h in hosts}
    assert by_port[closed_port].get("failed_active_health_check") is True


def test_immediate_fail_header_on_routed_traffic(ups, proxy_factory):
    """Passive: a routed response carrying x-envoy-immediate-health-check-fail counts a passive
    failure of its host on main and excludes it (with unhealthy_threshold 1: failed at once);
    its passing checks bring it back."""
    a, b, c3 = ups("a"), ups("b"), ups("c3")
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port, c3.port], [_hc(
        unhealthy_threshold=1, healthy_threshold=3, interval="0.3s", no_traffic_interval="0.3s")]))
    a.traffic_headers = b"x-envoy-immediate-health-check-fail: true\r\n"
    for _ in range(3):   # round robin: one of these reaches a
        request(p.port, "/c/x")
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "/failed_active_hc/excluded_via_immediate_hc_fail")
    assert p.wait_for(lambda: p.counters().get("cluster.c.health_check.passive_failure") == 1)
    assert _served(p, "c") == {"b", "c3"}
    a.traffic_headers = b""
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "healthy", 5)


def test_degraded_header(ups, proxy_factory):
    a, b = ups("a"), ups("b")
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port], [_hc()]))
    a.mode = "degraded"
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "/degraded_active_hc")
    # Envoy's priority load: 1 healthy of 2 is 70 % (overprovisioning 1.4); the degraded host
    # takes the other 30 %.
    served = [request(p.port, "/c/x").body.decode() for _ in range(60)]
    assert set(served) == {"a", "b"} and served.count("b") > served.count("a")
    g = p.gauges()
    assert g["cluster.c.health_check.degraded"] == 1
    assert g["cluster.c.membership_degraded"] == 1


def test_the_check_request_as_envoy_sends_it(ups, proxy_factory):
    """GET path, host: the cluster's name (or `host`, or the endpoint's health_check_config
    hostname), user-agent Envoy/HC, headers added and removed; health_check_config.port_value
    sends the checks to another port than the traffic."""
    a, b, checks_of_b = ups("a"), ups("b"), ups("checks-of-b")
    one = _cluster("one", [a.port], [_hc(interval="5s", no_traffic_interval="5s")])
    two = _cluster("two", [b.port], [_hc(interval="5s", no_traffic_interval="5s", http_health_check={
        "path": "/hc", "host": "svc.local", "method": "HEAD",
        "request_headers_to_add": [{"header": {"key": "x-hc", "value": "yes"}}],
        "request_headers_to_remove": ["user-agent"]})])
    two["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["health_check_config"] = {
        "port_value": checks_of_b.port}
    three = _cluster("three", [a.port], [_hc(interval="5s", no_traffic_interval="5s", http_health_check={
        "path": "/hc", "host": "svc.local"})])
    three["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["health_check_config"] = {
        "hostname": "ep.example"}
    p = _proxy(proxy_factory, one, two, three)
    heads = sorted(h for _, h, _ in a.hc_log)
    assert heads == [b"GET /hc HTTP/1.1\r\nhost: ep.example\r\nuser-agent: Envoy/HC",
                     b"GET /hc HTTP/1.1\r\nhost: one\r\nuser-agent: Envoy/HC"]
    assert b.hc_log == []
    assert [h for _, h, _ in checks_of_b.hc_log] == [b"HEAD /hc HTTP/1.1\r\nhost: svc.local\r\nx-hc: yes"]
    assert _served(p, "two", 2) == {"b"}


def test_tcp_send_receive(proxy_factory):
    good, wrong = TcpPingUpstream(b"xxpongxx"), TcpPingUpstream(b"nope")
    try:
        tcp = {"timeout": "0.3s", "interval": "0.1s", "no_traffic_interval": "0.1s",
               "unhealthy_threshold": 1, "healthy_threshold": 1,
               "tcp_health_check": {"send": {"text": "70696e67"}, "receive": [{"text": "706f6e67"}]}}
        connect_only = dict(tcp, tcp_health_check={})
        closed_port = free_port()  # nothing listens there
        p = _proxy(proxy_factory, _cluster("t", [good.port, wrong.port], [tcp]),
                   _cluster("conn", [good.port, closed_port], [connect_only]))
        assert _flags(p, "t") == {good.port: "healthy", wrong.port: "/failed_active_hc/active_hc_timeout"}
        assert _flags(p, "conn") == {good.port: "healthy", closed_port: "/failed_active_hc"}
        # reuse_connection (default): the checker keeps its connection to the good host.
        n = good.connections
        time.sleep(0.5)
        assert p.counters()["cluster.t.health_check.success"] >= 4
        assert good.connections - n <= 5   # the connect-only cluster's checks (0.1 s) only
        good.answer = b"nope"
        assert p.wait_for(lambda: _flags(p, "t")[good.port] == "/failed_active_hc/active_hc_timeout")
    finally:
        good.close()
        wrong.close()


def test_no_traffic_interval_until_the_cluster_carries_traffic(ups, proxy_factory):
    a = ups("a")
    p = _proxy(proxy_factory, _cluster("c", [a.port], [_hc(interval="0.05s", no_traffic_interval="0.6s")]))
    t0 = time.monotonic()
    time.sleep(1.0)
    quiet = a.answers("ok", t0)
    assert 1 <= quiet <= 2            # the 0.6 s no-traffic interval
    assert request(p.port, "/c/x").status == 200
    time.sleep(0.7)                   # (the timer armed before the traffic runs out first)
    t1 = time.monotonic()
    time.sleep(0.5)
    assert a.answers("ok", t1) >= 5   # now every 0.05 s


def test_event_log(ups, proxy_factory, tmp_path):
    a, b = ups("a", mode="503"), ups("b")
    path = tmp_path / "hc_events.log"
    p = _proxy(proxy_factory, _cluster("c", [a.port, b.port], [_hc(event_log_path=str(path))]))
    a.mode = "ok"
    assert p.wait_for(lambda: _flags(p, "c")[a.port] == "healthy")
    b.mode = "503"
    assert p.wait_for(lambda: _flags(p, "c")[b.port] == "/failed_active_hc")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [(e["host"]["socket_address"]["port_value"],
              next(k for k in e if k.endswith(("_event", "_host")))) for e in events]
    # The two first checks answer in either order.
    assert sorted(kinds[:2]) == sorted([(a.port, "health_check_failure_event"), (b.port, "add_healthy_event")])
    assert kinds[2:] == [(a.port, "add_healthy_event"), (b.port, "eject_unhealthy_event")]
    if kinds[0][0] == b.port:
        events[:2] = events[1::-1]
    first = events[0]
    assert list(first) == ["health_checker_type", "host", "cluster_name", "timestamp",
                           "health_check_failure_event", "locality"]
    assert first["health_check_failure_event"] == {"failure_type": "ACTIVE", "first_check": True,
                                                   "http_status_code": 503}
    assert events[1]["add_healthy_event"] == {"first_check": True}
    assert events[2]["add_healthy_event"] == {"first_check": False}
    assert events[3]["eject_unhealthy_event"] == {"failure_type": "ACTIVE", "http_status_code": 503}
    assert first["timestamp"].endswith("Z") and first["cluster_name"] == "c"


@pytest.mark.parametrize("hc, error", [
    ({"http_health_check": {"path": "/", "codec_client_type": "HTTP3"}},
     "c.health_checks[0].http_health_check.codec_client_type: not supported yet"),
    ({"tcp_health_check": {"send": {"text": "zz"}}},
     "c.health_checks[0].tcp_health_check.send.text: invalid hex string 'zz'"),
    ({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 200}]}},
     "c.health_checks[0].http_health_check.expected_statuses[0]: Invalid http expected status range"),
    ({"http_health_check": {"path": "/"}, "event_logger": [{}]},
     "c.health_checks[0].event_logger: not supported yet"),
])
def test_config_refusals(hc, error):
    base = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}
    raw = _cluster("c", [1], [dict(base, **hc)])
    with pytest.raises(ConfigError) as e:
        parse_cluster(raw, "c")
    assert any(str(x).startswith(error) for x in all_errors(e.value)), str(e.value)


def test_required_fields_and_tls_clusters_are_refused():
    with pytest.raises(ConfigError, match=r"health_checks\[0\]\.timeout"):
        parse_cluster(_cluster("c", [1], [{"interval": "1s", "unhealthy_threshold": 1,
                                           "healthy_threshold": 1, "tcp_health_check": {}}]), "c")
    tls = _cluster("c", [1], [_hc()], transport_socket={
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}})
    with pytest.raises(ConfigError, match=r"c\.health_checks: not supported yet \(health checks of "
                                          r"clusters with a TLS transport_socket\)"):
        parse_cluster(tls, "c")


# -- HTTP/2 and gRPC checks ---------------------------------------------------------------------

def _h2_cluster(name: str, port: int, check: dict, **extra) -> dict:
    hc = _hc(**{"interval": "5s", "no_traffic_interval": "5s", **check})
    if "grpc_health_check" in hc:
        del hc["http_health_check"]
    c = _cluster(name, [port], [hc], **extra)
    c["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


class _GrpcHealth:
    """A grpclib server (h2c, its own thread and loop: both interpreters) whose
    grpc.health.v1.Health/Check answers `status` (1 SERVING, 2 NOT_SERVING) for any service,
    recording each request's bytes and metadata."""

    def __init__(self) -> None:
        import asyncio

        from grpclib.const import Cardinality, Handler
        from grpclib.server import Server

        from .grpc_peers import RawCodec
        self.status = 1
        self.calls: list[tuple[bytes, dict]] = []
        outer = self

        class Health:
            def __mapping__(self):
                return {"/grpc.health.v1.Health/Check": Handler(
                    self.check, Cardinality.UNARY_UNARY, bytes, bytes)}

            async def check(self, stream) -> None:
                request = await stream.recv_message()
                outer.calls.append((request, dict(stream.metadata)))
                await stream.send_message(b"\x08" + bytes([outer.status]))

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = Server([Health()], codec=RawCodec())
            self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="grpc-health")
        self.thread.start()
        assert ready.wait(10)
        self.port = self.server._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        # Not wait_closed(): the proxy's checker keeps its connection open (reuse_connection).
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_http2_health_check(proxy_factory):
    from tests.h2_backend import H2Backend
    up = H2Backend(name="h2up")
    try:
        p = _proxy(proxy_factory,
                   _h2_cluster("ok", up.port, {"http_health_check": {"path": "/hc", "codec_client_type": "HTTP2"}}),
                   _h2_cluster("bad", up.port, {"http_health_check": {
                       "path": "/rst", "codec_client_type": "HTTP2"}}))
        assert _flags(p, "ok") == {up.port: "healthy"}
        assert _flags(p, "bad") == {up.port: "/failed_active_hc"}
        hc = [dict(r["headers"]) for r in up.requests if dict(r["headers"])[":path"] == "/hc"]
        assert hc == [{":method": "GET", ":scheme": "http", ":authority": "ok", ":path": "/hc",
                       "user-agent": "Envoy/HC"}]
        c = p.counters()
        assert c["cluster.bad.health_check.network_failure"] == 1   # the reset stream
        assert c["cluster.ok.health_check.success"] == 1
    finally:
        up.close()


def test_grpc_health_check(proxy_factory):
    g = _GrpcHealth()
    try:
        p = _proxy(proxy_factory, _h2_cluster("g", g.port, {
            "interval": "0.1s", "no_traffic_interval": "0.1s", "healthy_threshold": 1,
            "grpc_health_check": {"service_name": "svc", "initial_metadata": [
                {"header": {"key": "x-md", "value": "v"}}]}}))
        assert _flags(p, "g") == {g.port: "healthy"}
        request_bytes, md = g.calls[0]
        assert request_bytes == b"\x0a\x03svc"
        assert md["x-md"] == "v"
        g.status = 2   # NOT_SERVING: unhealthy at once
        assert p.wait_for(lambda: _flags(p, "g")[g.port] == "/failed_active_hc")
        g.status = 1
        assert p.wait_for(lambda: _flags(p, "g")[g.port] == "healthy")
    finally:
        g.close()


def test_grpc_health_check_needs_an_http2_cluster():
    raw = _cluster("c", [1], [_hc(grpc_health_check={})])
    del raw["health_checks"][0]["http_health_check"]
    with pytest.raises(ConfigError, match="c cluster must support HTTP/2 for gRPC healthchecking"):
        parse_cluster(raw, "c")


def test_tcp_event_log_as_envoy_writes_it(proxy_factory, tmp_path):
    """(Envoy 1.40's line for this case, recorded: a TCP check also has http_status_code 0.)"""
    port = free_port()  # nothing listens there
    path = tmp_path / "ev.log"
    tcp = {"timeout": "1s", "interval": "60s", "unhealthy_threshold": 1, "healthy_threshold": 1,
           "event_log_path": str(path), "tcp_health_check": {}}
    _proxy(proxy_factory, _cluster("t", [port], [tcp]))
    event = json.loads(path.read_text().splitlines()[0])
    del event["timestamp"]
    assert event == {
        "health_checker_type": "TCP",
        "host": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": port,
                                    "resolver_name": "", "ipv4_compat": False,
                                    "network_namespace_filepath": ""}},
        "cluster_name": "t",
        "health_check_failure_event": {"failure_type": "NETWORK", "first_check": True,
                                       "http_status_code": 0},
        "locality": {"region": "", "zone": "", "sub_zone": ""}}
