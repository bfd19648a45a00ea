"""Network filters before the terminal filter, through the real proxy: connection_limit (max
connections, an immediate or delayed close of the next one, counted again once a connection
closes) and local_ratelimit (a token bucket) in front of tcp_proxy and of the HTTP connection
manager, with Envoy's stats.
"""

from __future__ import annotations

import socket
import time

import pytest

from .clients import request
from .harness import EchoUpstream, front_proxy_config
from .servers import TcpEchoUpstream
from .test_tcp_proxy import tcp_proxy_config

LIMIT = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
RATELIMIT = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"


def with_filters(config: dict, *filters: dict) -> dict:
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"] = list(filters) + chain["filters"]
    return config


def limit(max_connections: int, **extra) -> dict:
    return {"name": "envoy.filters.network.connection_limit", "typed_config": {
        "@type": LIMIT, "stat_prefix": "lim", "max_connections": max_connections, **extra}}


def ratelimit(max_tokens: int, fill_interval: str = "60s") -> dict:
    return {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": RATELIMIT, "stat_prefix": "rl",
        "token_bucket": {"max_tokens": max_tokens, "fill_interval": fill_interval}}}


@pytest.fixture
def echo():
    u = TcpEchoUpstream()
    yield u
    u.close()


def echoes(s: socket.socket, msg: bytes = b"ping") -> bool:
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(100)
        if not chunk:
            return False
        got += chunk
    return got == msg


def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_connection_limit_closes_connections_over_the_limit(proxy_factory, echo):
    p = proxy_factory(with_filters(tcp_proxy_config(echo.port), limit(2)))
    a = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    b = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert echoes(a) and echoes(b)
    c = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert closed_by_peer(c)
    assert p.counters()["connection_limit.lim.limited_connections"] == 1
    assert p.gauges()["connection_limit.lim.active_connections"] == 2
    # One closes: a new connection fits again.
    a.close()
    assert p.wait_for(lambda: p.gauges()["connection_limit.lim.active_connections"] == 1)
    d = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert echoes(d)
    for s in (b, c, d):
        s.close()


def test_connection_limit_delay_holds_the_rejected_connection_first(proxy_factory, echo):
    p = proxy_factory(with_filters(tcp_proxy_config(echo.port), limit(1, delay="0.5s")))
    a = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert echoes(a)
    b = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    b.sendall(b"ignored")
    assert p.wait_for(lambda: p.counters().get("connection_limit.lim.limited_connections") == 1)
    started = time.monotonic()
    assert closed_by_peer(b)
    assert time.monotonic() - started > 0.2  # still open for most of the delay
    a.close()
    b.close()


def test_connection_limit_in_front_of_the_http_connection_manager(proxy_factory):
    up = EchoUpstream("svc")
    try:
        cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
                                 [{"name": "svc", "type": "STATIC", "connect_timeout": "1s",
                                   "load_assignment": {"cluster_name": "svc", "endpoints": [
                                       {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                                           "address": "127.0.0.1", "port_value": up.port}}}}]}]}}])
        p = proxy_factory(with_filters(cfg, limit(1)))
        held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        held.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert held.recv(100).startswith(b"HTTP/1.1 200")
        with pytest.raises((ConnectionError, OSError)):
            request(p.port, "/")  # the second connection is closed without an answer
        held.close()
        assert p.wait_for(lambda: p.gauges()["connection_limit.lim.active_connections"] == 0)
        assert request(p.port, "/").status == 200
    finally:
        up.close()


def test_local_ratelimit_token_bucket(proxy_factory, echo):
    p = proxy_factory(with_filters(tcp_proxy_config(echo.port), ratelimit(2)))
    conns = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(2)]
    assert all(echoes(s) for s in conns)
    over = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert closed_by_peer(over)
    assert p.counters()["local_rate_limit.rl.rate_limited"] == 1
    for s in conns + [over]:
        s.close()


def test_local_ratelimit_refills(proxy_factory, echo):
    p = proxy_factory(with_filters(tcp_proxy_config(echo.port), ratelimit(1, "0.2s")))
    first = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert echoes(first)
    # A token comes back each fill_interval: within a few intervals a connection gets through.
    deadline = time.monotonic() + 5
    while True:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            if echoes(s):
                break
        except OSError:
            pass
        finally:
            s.close()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.close()


def test_runtime_global_downstream_max_connections(proxy_factory, echo):
    """layered_runtime overload.global_downstream_max_connections: every listener's
    connections count (but a listener with ignore_global_conn_limit); over it, a new
    connection is closed at once and listener.<prefix>.downstream_global_cx_overflow counts."""
    cfg = tcp_proxy_config(echo.port)
    free = dict(cfg["static_resources"]["listeners"][0], name="free", stat_prefix="free",
                ignore_global_conn_limit=True)
    cfg["static_resources"]["listeners"].append(free)
    cfg["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "overload": {"global_downstream_max_connections": 1}}}]}
    p = proxy_factory(cfg)
    port = p.port
    free_port = p.server.listener_addresses["free"][1]
    a = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert echoes(a)
    b = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert closed_by_peer(b)
    overflow = {k: v for k, v in p.counters().items() if k.endswith(".downstream_global_cx_overflow")}
    assert overflow == {f"listener.127.0.0.1_0.downstream_global_cx_overflow": 1,
                        "listener.free.downstream_global_cx_overflow": 0}
    c = socket.create_connection(("127.0.0.1", free_port), timeout=5)
    assert echoes(c)  # not held to the limit
    a.close()
    assert p.wait_for(lambda: p.gauges()[f"listener.127.0.0.1_0.downstream_cx_active"] == 0)
    d = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert echoes(d)
    for s in (b, c, d):
        s.close()


def test_runtime_listener_connection_limit(proxy_factory, echo):
    """envoy.resource_limits.listener.<name>.connection_limit: that listener's connections over
    every worker are held to it; over it, a new connection is closed at once and
    listener.<prefix>.downstream_cx_overflow counts; other listeners are not limited."""
    cfg = tcp_proxy_config(echo.port)
    other = dict(cfg["static_resources"]["listeners"][0], name="other", stat_prefix="other")
    cfg["static_resources"]["listeners"].append(other)
    cfg["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "envoy.resource_limits.listener.tcp_listener.connection_limit": 1}}]}
    p = proxy_factory(cfg, concurrency=2)
    port = p.port
    a = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert echoes(a)
    b = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert closed_by_peer(b)
    assert p.counters()["listener.127.0.0.1_0.downstream_cx_overflow"] == 1
    other_port = p.server.listener_addresses["other"][1]
    c1 = socket.create_connection(("127.0.0.1", other_port), timeout=5)
    c2 = socket.create_connection(("127.0.0.1", other_port), timeout=5)
    assert echoes(c1) and echoes(c2)
    a.close()
    assert p.wait_for(lambda: p.gauges()["listener.127.0.0.1_0.downstream_cx_active"] == 0)
    d = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert echoes(d)
    for s in (b, c1, c2, d):
        s.close()
