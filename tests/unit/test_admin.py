"""Admin server over a real loopback socket (port 0) with a fake AdminContext."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import AdminServer
from proxy.stats import StatsRegistry, StatsSnapshot


class FakeAdminContext:
    def __init__(self) -> None:
        self.registry = StatsRegistry()
        store = self.registry.new_store("main")
        store.counter("cluster.backend.upstream_rq_200").inc(3)
        store.counter("cluster.backend.upstream_rq_retry")
        store.gauge("server.live").set(1)
        store.histogram("cluster.backend.upstream_rq_time").record(12)
        self.state_value = "LIVE"
        self.healthcheck_failed: bool | None = None
        self.quit_called = threading.Event()
        self.reopened = 0
        self.fail_clusters = False

    def stats_snapshot(self) -> StatsSnapshot:
        return self.registry.snapshot()

    def clusters(self) -> list[dict[str, Any]]:
        if self.fail_clusters:
            raise RuntimeError("cluster manager exploded")
        return [{
            "name": "backend",
            "hosts": [{"address": "127.0.0.1", "port": 8080, "weight": 1, "health_flags": "healthy",
                       "stats": {"cx_active": 2, "rq_total": 9}}],
            "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 1024,
                                                 "max_pending_requests": 1024, "max_requests": 1024,
                                                 "max_retries": 3}]},
        }]

    def config_dump(self) -> dict[str, Any]:
        return {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]}

    def listeners(self) -> list[dict[str, Any]]:
        return [{"name": "listener_0", "address": "127.0.0.1:10000"}]

    def server_info(self) -> dict[str, Any]:
        return {"version": "ftproxy/0.1.0", "state": self.state_value}

    def state(self) -> str:
        return self.state_value

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed

    def quit(self) -> None:
        self.quit_called.set()

    def reopen_logs(self) -> None:
        self.reopened += 1


@pytest.fixture
def admin():
    ctx = FakeAdminContext()
    server = AdminServer(ctx, "127.0.0.1", 0)
    server.start()
    try:
        yield ctx, server
    finally:
        server.stop()


def request(server: AdminServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_start_binds_an_ephemeral_port_on_a_thread_named_admin(admin):
    _, server = admin
    assert server.port > 0
    # Its own thread (another admin thread still alive in this process must not satisfy this).
    mine = server._thread
    assert mine is not None and mine.name == "admin" and mine.daemon and mine.is_alive()


def test_root_lists_endpoints(admin):
    _, server = admin
    status, ctype, body = request(server, "/")
    assert status == 200 and ctype.startswith("text/plain")
    assert body.startswith("admin commands are:\n")
    assert "  /stats: print server stats\n" in body and "  /quitquitquit: exit the server\n" in body


def test_unknown_path_is_404_with_help(admin):
    _, server = admin
    status, _, body = request(server, "/nope")
    assert status == 404
    assert body.startswith("invalid path. admin commands are:")


def test_stats_text_filter_and_usedonly(admin):
    _, server = admin
    status, ctype, body = request(server, "/stats")
    assert status == 200 and ctype.startswith("text/plain")
    assert "cluster.backend.upstream_rq_200: 3\n" in body
    assert "cluster.backend.upstream_rq_time: P0(nan,12)" in body
    _, _, filtered = request(server, "/stats?filter=rq_2")
    assert filtered == "cluster.backend.upstream_rq_200: 3\n"
    _, _, used = request(server, "/stats?usedonly")
    assert "upstream_rq_retry" not in used and "upstream_rq_200" in used


def test_stats_invalid_filter_regex_is_400(admin):
    _, server = admin
    status, _, body = request(server, "/stats?filter=(")
    assert status == 400 and "regex" in body


def test_stats_json_format(admin):
    _, server = admin
    status, ctype, body = request(server, "/stats?format=json")
    assert status == 200 and ctype == "application/json"
    assert {"name": "server.live", "value": 1} in json.loads(body)["stats"]


@pytest.mark.parametrize("path", ["/stats/prometheus", "/stats?format=prometheus"])
def test_stats_prometheus_parses(admin, path):
    _, server = admin
    status, _, body = request(server, path)
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["envoy_cluster_upstream_rq"].samples[0].labels["envoy_response_code"] == "200"
    assert fams["envoy_cluster_upstream_rq_time"].type == "histogram"


def test_clusters_text_lines(admin):
    _, server = admin
    status, ctype, body = request(server, "/clusters")
    assert status == 200 and ctype.startswith("text/plain")
    lines = body.splitlines()
    for expected in (
        "backend::default_priority::max_connections::1024",
        "backend::default_priority::max_retries::3",
        "backend::127.0.0.1:8080::cx_active::2",
        "backend::127.0.0.1:8080::rq_total::9",
        "backend::127.0.0.1:8080::health_flags::healthy",
        "backend::127.0.0.1:8080::weight::1",
    ):
        assert expected in lines


def test_clusters_json(admin):
    _, server = admin
    status, ctype, body = request(server, "/clusters?format=json")
    assert status == 200 and ctype == "application/json"
    c = json.loads(body)["cluster_statuses"][0]
    host = c["host_statuses"][0]
    assert c["name"] == "backend"
    assert host["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    assert {"name": "cx_active", "value": "2", "type": "GAUGE"} in host["stats"]
    assert host["health_status"] == {"eds_health_status": "HEALTHY"}


def test_listeners_text_and_json(admin):
    _, server = admin
    assert request(server, "/listeners")[2] == "listener_0::127.0.0.1:10000\n"
    doc = json.loads(request(server, "/listeners?format=json")[2])
    assert doc == {"listener_statuses": [{"name": "listener_0", "local_address": {
        "socket_address": {"address": "127.0.0.1", "port_value": 10000}}}]}


def test_config_dump_and_server_info_are_json(admin):
    _, server = admin
    status, ctype, body = request(server, "/config_dump")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["configs"][0]["@type"].endswith("BootstrapConfigDump")
    assert json.loads(request(server, "/server_info")[2])["version"] == "ftproxy/0.1.0"


def test_ready_is_200_when_live_and_503_otherwise(admin):
    ctx, server = admin
    assert request(server, "/ready")[::2] == (200, "LIVE\n")
    ctx.state_value = "DRAINING"
    assert request(server, "/ready")[::2] == (503, "DRAINING\n")


def test_healthcheck_fail_and_ok_require_post(admin):
    ctx, server = admin
    assert request(server, "/healthcheck/fail") == (405, "text/plain; charset=UTF-8", "Method GET not allowed, POST required.")
    assert ctx.healthcheck_failed is None
    assert request(server, "/healthcheck/fail", "POST")[::2] == (200, "OK\n")
    assert ctx.healthcheck_failed is True
    assert request(server, "/healthcheck/ok", "POST")[::2] == (200, "OK\n")
    assert ctx.healthcheck_failed is False


def test_reopen_logs_needs_post_and_reopens(admin):
    ctx, server = admin
    assert request(server, "/reopen_logs")[0] == 405
    assert ctx.reopened == 0
    assert request(server, "/reopen_logs", "POST")[::2] == (200, "OK\n")
    assert ctx.reopened == 1


def test_quitquitquit_answers_ok_then_quits(admin):
    ctx, server = admin
    assert request(server, "/quitquitquit")[0] == 405
    assert not ctx.quit_called.is_set()
    assert request(server, "/quitquitquit", "POST")[::2] == (200, "OK\n")
    assert ctx.quit_called.wait(5)


def test_handler_exception_is_500_and_server_keeps_serving(admin):
    ctx, server = admin
    ctx.fail_clusters = True
    status, _, body = request(server, "/clusters")
    assert status == 500 and "cluster manager exploded" in body
    assert request(server, "/ready")[0] == 200


def test_keep_alive_serves_two_requests_on_one_connection(admin):
    _, server = admin
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/ready")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"LIVE\n"
    finally:
        conn.close()


def test_stop_closes_the_listen_socket():
    server = AdminServer(FakeAdminContext(), "127.0.0.1", 0)
    server.start()
    port = server.port
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server.stop()  # idempotent


def test_stats_filter_refuses_constructs_re2_does_not_support(admin):
    from urllib.parse import quote

    _, server = admin
    status, _, body = request(server, "/stats?filter=" + quote(r"(a)\1"))
    assert status == 400
    assert body.startswith("Invalid re2 regex: ") and "unsupported by RE2: backreference" in body


def test_stats_filter_with_catastrophic_backtracking_pattern_answers(admin):
    from urllib.parse import quote

    ctx, server = admin
    long_name = "cluster." + "a" * 5000 + ".upstream_rq_total"  # `re` would never finish on it
    ctx.registry.new_store("worker_0").counter(long_name).inc()
    _, _, everything = request(server, "/stats")
    assert f"{long_name}: 1\n" in everything
    status, _, body = request(server, "/stats?filter=" + quote("(.|.)*!"))
    assert (status, body) == (200, "")
    # Matches the short names holding a "b" (backend); the long name has none.
    status, _, body = request(server, "/stats?filter=" + quote("(a*)*b"))
    with_b = [line for line in everything.splitlines(keepends=True) if "b" in line.split(":")[0]]
    assert status == 200 and with_b and body == "".join(with_b)
    status, _, body = request(server, "/stats?filter=" + quote("^cluster\\.(a|aa)*\\.upstream_rq_t"))
    assert (status, body) == (200, f"{long_name}: 1\n")


def test_stats_filter_over_the_work_budget_is_400(admin, monkeypatch):
    from urllib.parse import quote

    import proxy.admin.endpoints as endpoints

    _, server = admin
    monkeypatch.setattr(endpoints, "STATS_FILTER_MAX_STEPS", 50)
    status, _, body = request(server, "/stats?filter=" + quote("(.?){20}!"))
    assert status == 400 and "too expensive" in body
    status, _, body = request(server, "/stats?filter=live")  # substring fast path: no NFA work
    assert (status, body) == (200, "server.live: 1\n")


def test_logging_lists_and_changes_levels_as_envoys_does(admin):
    """/logging over a real admin socket: POST alone lists ftproxy's loggers, level= sets all,
    <name>= one, paths= several; a bad level or name is 400 with the usage; GET is 405."""
    import logging
    _, server = admin
    saved = {name: logging.getLogger(name).level for name in ("ftproxy", "ftproxy.server", "ftproxy.http")}
    try:
        assert request(server, "/logging")[0] == 405
        status, _, body = request(server, "/logging", "POST")
        assert status == 200 and body.startswith("active loggers:\n")
        assert "  server: " in body and "  main: " in body
        status, _, body = request(server, "/logging?level=debug", "POST")
        assert status == 200 and "  server: debug\n" in body and "  http: debug\n" in body
        assert logging.getLogger("ftproxy.server").getEffectiveLevel() == logging.DEBUG
        status, _, body = request(server, "/logging?server=trace", "POST")
        assert "  server: trace\n" in body and "  http: debug\n" in body
        status, _, body = request(server, "/logging?paths=server:error,http:off", "POST")
        assert "  server: error\n" in body and "  http: off\n" in body
        assert not logging.getLogger("ftproxy.http").isEnabledFor(logging.CRITICAL)
        status, _, body = request(server, "/logging?level=bogus", "POST")
        assert status == 400 and body.startswith("error: unknown logger level\n")
        status, _, body = request(server, "/logging?nosuch=debug", "POST")
        assert status == 400 and body.startswith("error: unknown logger name\n")
        status, _, body = request(server, "/logging?level=info&server=debug", "POST")
        assert status == 400 and body.startswith("error: invalid number of parameters\n")
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for name in logging.Logger.manager.loggerDict:
            if name.startswith("ftproxy."):
                logging.getLogger(name).setLevel(logging.NOTSET)
