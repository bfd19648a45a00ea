"""Outlier detection (cluster `outlier_detection`) through the proxy, against real loopback
upstreams that answer 5xx / 503 on purpose or refuse connections: a host that fails N times in a
row is ejected at once and traffic goes to the others; it comes back after base_ejection_time
(on an interval tick); ejected again soon after, it stays out twice as long;
max_ejection_percent caps ejections; gateway failures and plain 5xx count apart; local-origin
failures (connect failures) count apart with split_external_local_origin_errors. Observed
through the upstreams' request counts, /clusters and the outlier_detection.* stats."""

from __future__ import annotations

import socket
import threading
import time

from tests.ports import free_port

from .clients import request
from .harness import front_proxy_config, static_cluster


class StatusUpstream:
    """An HTTP/1.1 keep-alive upstream answering every request with `status` (200: its name
    as the body), but `/hc` (active health checks) with 200. Counts the requests it answered
    (not the health checks)."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.lock = threading.Lock()   # guards served, checks
        self.served = 0
        self.checks = 0
        self.headers = b""   # extra header lines of every answer but the health checks
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
                if head.split(b" ", 2)[1] == b"/hc":   # active health checks always pass
                    with self.lock:
                        self.checks += 1
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                with self.lock:
                    self.served += 1
                status = self.status
                body = self.name.encode() if status == 200 else b""
                try:
                    c.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s"
                              % (status, len(body), self.headers, body))
                except OSError:
                    return

    def close(self) -> None:
        self.lsock.close()


def _closed_port() -> int:
    port = free_port()  # nothing listens there
    return port


def _config(ports, **od) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                              [static_cluster("c", *ports, outlier_detection=od)])


def _stat(proxy, name: str) -> int:
    return proxy.counters().get(f"cluster.c.outlier_detection.{name}", 0)


def _active(proxy) -> int:
    return proxy.gauges().get("cluster.c.outlier_detection.ejections_active", 0)


# An ejection on main (outlier_detector.py on_consecutive/_eject, then cluster_outlier's
# on_change -> cluster_manager _rebuild and _publish_all): ejections_detected, the
# ejections_active gauge, ejections_enforced_*, the membership gauges, then the flags /clusters
# shows. A test that waited on the gauge waits for what comes after it.
def _flags(proxy, port: int) -> str:
    _, text = proxy.admin("/clusters")
    return next(line.rsplit("::", 1)[1] for line in text.splitlines()
                if line.startswith(f"c::127.0.0.1:{port}::health_flags::"))


def _until(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def _send_until(proxy, pred, limit: int = 50) -> list[int]:
    """Requests one by one until `pred()`; their statuses."""
    out = []
    for _ in range(limit):
        if pred():
            break
        out.append(request(proxy.port, "/x").status)
    assert pred()
    return out


def test_a_host_failing_consecutive_5xx_times_is_ejected_and_traffic_goes_to_the_others(proxy_factory):
    good1, good2, bad = StatusUpstream("good1"), StatusUpstream("good2"), StatusUpstream("bad", 500)
    try:
        # Two workers, a new connection per request: the count is the host's, over both.
        proxy = proxy_factory(_config([good1.port, good2.port, bad.port], consecutive_5xx=3,
                                      max_ejection_percent=50, interval="30s"), concurrency=2)
        assert _flags(proxy, bad.port) == "healthy"
        _send_until(proxy, lambda: bad.served == 3)
        assert _until(lambda: _active(proxy) == 1)
        assert _until(lambda: _flags(proxy, bad.port) == "/failed_outlier_check")
        assert _flags(proxy, good1.port) == "healthy"
        statuses = [request(proxy.port, "/x").status for _ in range(20)]
        assert statuses == [200] * 20 and bad.served == 3
        assert good1.served > 0 and good2.served > 0
        assert (_stat(proxy, "ejections_detected_consecutive_5xx"),
                _stat(proxy, "ejections_enforced_consecutive_5xx"),
                _stat(proxy, "ejections_enforced_total"), _stat(proxy, "ejections_overflow")) == (1, 1, 1, 0)
        assert proxy.gauges()["cluster.c.membership_healthy"] == 2
    finally:
        for u in (good1, good2, bad):
            u.close()


def test_an_ejected_host_returns_after_base_ejection_time(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad", 503)
    try:
        proxy = proxy_factory(_config([good.port, bad.port], consecutive_5xx=2, max_ejection_percent=50,
                                      interval="0.1s", base_ejection_time="0.6s"))
        _send_until(proxy, lambda: bad.served == 2)
        t0 = time.monotonic()
        assert _until(lambda: _active(proxy) == 1)
        bad.status = 200   # it recovered, but stays out for its ejection time
        assert _until(lambda: _active(proxy) == 0, 3.0)
        out = time.monotonic() - t0
        assert 0.55 <= out < 1.5, out
        assert _until(lambda: _flags(proxy, bad.port) == "healthy")
        served = bad.served
        bodies = {request(proxy.port, "/x").body for _ in range(4)}
        assert bodies == {b"good", b"bad"} and bad.served == served + 2
    finally:
        good.close()
        bad.close()


def test_a_host_ejected_again_soon_after_it_returned_stays_out_twice_as_long(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad", 500)
    try:
        proxy = proxy_factory(_config([good.port, bad.port], consecutive_5xx=1, max_ejection_percent=50,
                                      interval="0.5s", base_ejection_time="0.5s"))
        _send_until(proxy, lambda: bad.served == 1)
        assert _until(lambda: _active(proxy) == 1)
        t0 = time.monotonic()
        assert _until(lambda: _active(proxy) == 0, 3.0)
        first = time.monotonic() - t0
        # Straight back in, straight out again (before the next tick shrinks the back-off).
        _send_until(proxy, lambda: bad.served == 2, limit=3)
        assert _until(lambda: _active(proxy) == 1)
        t1 = time.monotonic()
        assert _until(lambda: _active(proxy) == 0, 4.0)
        second = time.monotonic() - t1
        assert 0.45 <= first < 1.1 and second >= 0.95, (first, second)
        assert _stat(proxy, "ejections_enforced_consecutive_5xx") == 2
    finally:
        good.close()
        bad.close()


def test_max_ejection_percent_caps_the_ejections(proxy_factory):
    a, b = StatusUpstream("a", 500), StatusUpstream("b", 500)
    try:
        proxy = proxy_factory(_config([a.port, b.port], consecutive_5xx=2, max_ejection_percent=50,
                                      interval="30s"))
        _send_until(proxy, lambda: _stat(proxy, "ejections_overflow") >= 1
                    and _stat(proxy, "ejections_enforced_total") == 1, limit=20)
        assert _active(proxy) == 1
        flags = sorted([_flags(proxy, a.port), _flags(proxy, b.port)])
        assert flags == ["/failed_outlier_check", "healthy"]
        # The one left takes everything (no panic: 50 % are healthy).
        before = a.served + b.served
        assert [request(proxy.port, "/x").status for _ in range(4)] == [500] * 4
        assert a.served + b.served == before + 4
    finally:
        a.close()
        b.close()


def test_default_max_ejection_percent_ejects_none_of_two_hosts(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad", 500)
    try:
        proxy = proxy_factory(_config([good.port, bad.port], consecutive_5xx=1, interval="30s"))
        _send_until(proxy, lambda: bad.served == 1)
        assert _until(lambda: _stat(proxy, "ejections_overflow") == 1)
        assert _active(proxy) == 0 and _stat(proxy, "ejections_detected_consecutive_5xx") == 1
    finally:
        good.close()
        bad.close()


def test_gateway_failures_count_apart_from_other_5xx(proxy_factory):
    good, e500, e503 = StatusUpstream("good"), StatusUpstream("e500", 500), StatusUpstream("e503", 503)
    try:
        proxy = proxy_factory(_config([good.port, e500.port, e503.port], consecutive_5xx=10,
                                      consecutive_gateway_failure=2, enforcing_consecutive_gateway_failure=100,
                                      max_ejection_percent=50, interval="30s"))
        _send_until(proxy, lambda: e503.served == 2 and e500.served >= 2)
        assert _until(lambda: _active(proxy) == 1)
        assert _until(lambda: _flags(proxy, e503.port) == "/failed_outlier_check")
        assert _flags(proxy, e500.port) == "healthy"
        assert (_stat(proxy, "ejections_detected_consecutive_gateway_failure"),
                _stat(proxy, "ejections_enforced_consecutive_gateway_failure"),
                _stat(proxy, "ejections_enforced_consecutive_5xx")) == (1, 1, 0)
    finally:
        for u in (good, e500, e503):
            u.close()


def test_connect_failures_count_as_5xx_without_the_split(proxy_factory):
    good, dead = StatusUpstream("good"), _closed_port()
    try:
        proxy = proxy_factory(_config([good.port, dead], consecutive_5xx=2, max_ejection_percent=50,
                                      interval="30s"))
        statuses = _send_until(proxy, lambda: _active(proxy) == 1, limit=10)
        assert statuses.count(503) >= 2   # (one more may beat the new host set to the worker)
        assert _until(lambda: _flags(proxy, dead) == "/failed_outlier_check")
        assert _stat(proxy, "ejections_enforced_consecutive_5xx") == 1
        assert [request(proxy.port, "/x").status for _ in range(4)] == [200] * 4
    finally:
        good.close()


def test_local_origin_failures_count_apart_with_the_split(proxy_factory):
    good, e500, dead = StatusUpstream("good"), StatusUpstream("e500", 500), _closed_port()
    try:
        proxy = proxy_factory(_config([good.port, e500.port, dead], consecutive_5xx=100,
                                      split_external_local_origin_errors=True,
                                      consecutive_local_origin_failure=2, max_ejection_percent=50,
                                      interval="30s"))
        _send_until(proxy, lambda: _active(proxy) == 1, limit=10)
        assert _until(lambda: _flags(proxy, dead) == "/failed_outlier_check")
        assert (_stat(proxy, "ejections_detected_consecutive_local_origin_failure"),
                _stat(proxy, "ejections_enforced_consecutive_local_origin_failure"),
                _stat(proxy, "ejections_detected_consecutive_5xx")) == (1, 1, 0)
        # The 500s go on counting toward consecutive_5xx only (100: not reached).
        _send_until(proxy, lambda: e500.served >= 6)
        assert _flags(proxy, e500.port) == "healthy"
    finally:
        good.close()
        e500.close()


def test_outlier_detection_shows_in_clusters_and_stats_from_the_start(proxy_factory):
    good = StatusUpstream("good")
    try:
        proxy = proxy_factory(_config([good.port]))
        _, text = proxy.admin("/clusters")
        assert "c::outlier::success_rate_average::-1" in text
        assert f"c::127.0.0.1:{good.port}::success_rate::-1" in text
        _, stats = proxy.admin("/stats")
        assert "cluster.c.outlier_detection.ejections_enforced_total: 0" in stats
        assert "cluster.c.outlier_detection.ejections_active: 0" in stats
    finally:
        good.close()


def _hc_config(ports, uneject: bool) -> dict:
    cfg = _config(ports, consecutive_5xx=1, max_ejection_percent=50, interval="30s",
                  base_ejection_time="30s", successful_active_health_check_uneject_host=uneject)
    cfg["static_resources"]["clusters"][0]["health_checks"] = [{
        "timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
        "unhealthy_threshold": 1, "healthy_threshold": 1,
        "http_health_check": {"path": "/hc"}}]
    return cfg


def test_a_passing_active_health_check_takes_an_ejected_host_back(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad", 500)
    try:
        proxy = proxy_factory(_hc_config([good.port, bad.port], uneject=True))
        _send_until(proxy, lambda: bad.served == 1)
        # (The worker reports the 500 to main, which ejects: a moment after the upstream served.)
        assert _until(lambda: _stat(proxy, "ejections_enforced_total") == 1)
        # The next check of `bad` passes (0.2 s): back in long before base_ejection_time.
        assert _until(lambda: _active(proxy) == 0)
        assert _until(lambda: _flags(proxy, bad.port) == "healthy")
    finally:
        good.close()
        bad.close()


def test_without_successful_active_health_check_uneject_host_it_stays_out(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad", 500)
    try:
        proxy = proxy_factory(_hc_config([good.port, bad.port], uneject=False))
        _send_until(proxy, lambda: bad.served == 1)
        assert _until(lambda: _active(proxy) == 1)
        checks = bad.checks
        assert _until(lambda: bad.checks >= checks + 2)   # passing checks of `bad` meanwhile
        assert _active(proxy) == 1 and _flags(proxy, bad.port) == "/failed_outlier_check"
        assert [request(proxy.port, "/x").status for _ in range(4)] == [200] * 4
    finally:
        good.close()
        bad.close()


def test_success_rate_ejects_the_host_far_below_the_others(proxy_factory):
    ups = [StatusUpstream(f"good{i}") for i in range(4)] + [StatusUpstream("bad", 500)]
    try:
        proxy = proxy_factory(_config([u.port for u in ups], consecutive_5xx=0, success_rate_request_volume=5,
                                      max_ejection_percent=50, interval="1s"))
        # 80 requests in well under a second: whichever way the interval ticks split them, one
        # interval sees at least 5 requests to every host (4 at 100 %, `bad` at 0 %: mean 80,
        # stdev 40, threshold 80 - 1.9 x 40 = 4).
        for _ in range(80):
            request(proxy.port, "/x")
        assert _until(lambda: _active(proxy) == 1, 3.0)
        assert _until(lambda: _flags(proxy, ups[-1].port) == "/failed_outlier_check")
        assert (_stat(proxy, "ejections_detected_success_rate"),
                _stat(proxy, "ejections_enforced_success_rate")) == (1, 1)
    finally:
        for u in ups:
            u.close()


def test_the_tcp_proxy_reports_connect_failures_and_an_unreachable_host_is_ejected(proxy_factory):
    from .servers import TcpEchoUpstream

    echo, dead = TcpEchoUpstream(), _closed_port()
    try:
        cluster = static_cluster("c", echo.port, dead, outlier_detection={
            "consecutive_5xx": 2, "max_ejection_percent": 50, "interval": "30s"})
        proxy = proxy_factory({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                               "filter_chains": [{"filters": [{
                                   "name": "envoy.filters.network.tcp_proxy",
                                   "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                                    "stat_prefix": "t", "cluster": "c"}}]}]}],
                "clusters": [cluster]}})

        def echoed() -> bool:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(b"ping")
                try:
                    return s.recv(16) == b"ping"
                except OSError:
                    return False

        results = []
        for _ in range(8):
            if _active(proxy) == 1:
                break
            results.append(echoed())
        assert _until(lambda: _active(proxy) == 1)
        # Two failures eject it; a connect to a closed port fails so fast that one or two more
        # may start before the new host set reaches the worker (they find it already out).
        assert results.count(False) >= 2
        assert _stat(proxy, "ejections_detected_consecutive_5xx") == 1
        assert _until(lambda: _flags(proxy, dead) == "/failed_outlier_check")
        assert all(echoed() for _ in range(4))
    finally:
        echo.close()


def test_a_grpc_status_in_the_response_headers_counts_as_its_http_status(proxy_factory):
    good, bad = StatusUpstream("good"), StatusUpstream("bad")
    bad.headers = b"grpc-status: 14\r\n"   # UNAVAILABLE: a 503 to outlier detection
    try:
        proxy = proxy_factory(_config([good.port, bad.port], consecutive_5xx=2, max_ejection_percent=50,
                                      interval="30s"))
        # Not a gRPC request: a 200.
        _send_until(proxy, lambda: bad.served == 3)
        assert _active(proxy) == 0
        grpc = {"content-type": "application/grpc"}
        for _ in range(6):
            if bad.served == 5:
                break
            request(proxy.port, "/svc/M", method="POST", headers=grpc, body=b"")
        assert _until(lambda: _active(proxy) == 1)
        assert _until(lambda: _stat(proxy, "ejections_enforced_consecutive_5xx") == 1)
    finally:
        good.close()
        bad.close()
