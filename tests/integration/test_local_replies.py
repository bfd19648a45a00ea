"""Envoy-style local replies produced by the real proxy: 404 NR, 503 NC / UH / UF / UO, and a
downstream close when the upstream dies mid-response. Flags are read from a real file access log.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from .clients import RawUpstream, closed_port, read_request_head, request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
CONNECT_ERROR = ("upstream connect error or disconnect/reset before headers. "
                 "reset reason: remote connection failure")


def _midway_closer(sock: socket.socket) -> None:
    """Answer with a 100-byte content-length, send 10 bytes, then close."""
    read_request_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    up = EchoUpstream("service1")
    raw = RawUpstream(_midway_closer)
    dead_port = closed_port()
    log_path = str(tmp_path_factory.mktemp("local") / "access.log")
    routes = [
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
        {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/midway"}, "route": {"cluster": "midway"}},
        {"match": {"prefix": "/limited/"}, "route": {"cluster": "limited", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/api"}, "route": {"cluster": "c1"}},
    ]
    clusters = [
        static_cluster("c1", up.port),
        {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "empty", "endpoints": []}},
        static_cluster("dead", dead_port),
        static_cluster("midway", raw.port),
        static_cluster("limited", up.port, circuit_breakers={"thresholds": [{"max_requests": 1}]}),
    ]
    cfg = front_proxy_config(routes, clusters, access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": log_path, "log_format": {"text_format_source": {
                "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}])
    p = ProxyUnderTest(cfg)
    yield p, log_path
    p.stop()
    raw.close()
    up.close()


def _wait_logged(p, log_path: str, line: str) -> None:
    def logged():
        return os.path.exists(log_path) and line + "\n" in open(log_path).read()
    assert p.wait_for(logged), f"{line!r} not in access log"


def test_no_route_gives_404_and_counts_no_route(env):
    p, log_path = env
    before = p.counters().get("http.ingress_http.no_route", 0)
    r = request(p.port, "/nowhere")
    assert r.status == 404
    assert r.body == b""
    assert p.counters()["http.ingress_http.no_route"] == before + 1
    _wait_logged(p, log_path, "/nowhere 404 NR")


def test_unknown_cluster_gives_503_nc(env):
    p, log_path = env
    before = p.counters().get("http.ingress_http.no_cluster", 0)
    r = request(p.port, "/by-header/x", headers={"x-cluster": "no-such-cluster"})
    assert r.status == 503
    assert p.counters()["http.ingress_http.no_cluster"] == before + 1
    _wait_logged(p, log_path, "/by-header/x 503 NC")


def test_cluster_without_hosts_gives_503_no_healthy_upstream_uh(env):
    p, log_path = env
    r = request(p.port, "/empty")
    assert r.status == 503
    assert r.body == b"no healthy upstream"
    assert r.headers["content-type"] == "text/plain"
    _wait_logged(p, log_path, "/empty 503 UH")


def test_connect_failure_gives_503_connect_error_uf(env):
    p, log_path = env
    before = p.counters().get("cluster.dead.upstream_cx_connect_fail", 0)
    r = request(p.port, "/dead")
    assert r.status == 503
    assert r.text.startswith(CONNECT_ERROR), r.text
    assert p.counters()["cluster.dead.upstream_cx_connect_fail"] > before
    _wait_logged(p, log_path, "/dead 503 UF")


def test_upstream_close_mid_response_closes_downstream_connection(env):
    p, _ = env
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"GET /midway HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(65536)      # a socket.timeout here means the proxy kept it open
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < 100          # the response was cut short, not padded or completed


def test_circuit_breaker_max_requests_overflow_gives_503_uo(env):
    p, log_path = env
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", request(p.port, "/limited/delay/1")))
    t.start()
    try:
        assert p.wait_for(lambda: p.gauges().get("cluster.limited.upstream_rq_active") == 1)
        r = request(p.port, "/limited/second")
        assert r.status == 503
        assert p.counters()["cluster.limited.upstream_rq_active_overflow"] == 1  # Envoy's name for max_requests
        _wait_logged(p, log_path, "/limited/second 503 UO")
    finally:
        t.join(5)
    assert slow["r"].status == 200     # the request in flight was not affected
