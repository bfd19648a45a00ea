"""tcp_proxy listener (envoy.filters.network.tcp_proxy) in front of a real TCP echo server:
echo, half-close propagation, connect failure, a 20 MiB bulk transfer, and its stats."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from .harness import static_cluster
from tests.ports import free_port

from .servers import TcpEchoUpstream, pattern_bytes, pattern_sha256

MiB = 1024 * 1024


def tcp_proxy_config(cluster_port: int, stat_prefix: str = "echo_tcp") -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "tcp_listener",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": stat_prefix, "cluster": "echo"}}]}],
            }],
            "clusters": [static_cluster("echo", cluster_port)],
        },
    }


@pytest.fixture
def echo():
    u = TcpEchoUpstream()
    yield u
    u.close()


def _recv_until_eof(s: socket.socket) -> bytes:
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out)


def test_bytes_are_echoed(proxy_factory, echo):
    p = proxy_factory(tcp_proxy_config(echo.port))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        for msg in (b"ping", b"x" * 10000, b"\x00\xff"):
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg


def test_half_close_propagates_and_echo_still_arrives(proxy_factory, echo):
    p = proxy_factory(tcp_proxy_config(echo.port))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        # The echo server only half-closes after it saw our FIN through the proxy.
        assert _recv_until_eof(s) == b"last words"
    assert p.wait_for(lambda: p.gauges().get("tcp.echo_tcp.downstream_cx_active") == 0)


def test_connect_failure_closes_downstream_and_counts_connect_fail(proxy_factory):
    p = proxy_factory(tcp_proxy_config(free_port()))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        try:
            s.sendall(b"anyone?")
            data = _recv_until_eof(s)
        except ConnectionResetError:
            data = b""
        assert data == b""
    assert p.wait_for(lambda: p.counters().get("cluster.echo.upstream_cx_connect_fail") == 1)


def test_20mib_bulk_transfer_intact(proxy_factory, echo):
    p = proxy_factory(tcp_proxy_config(echo.port))
    size = 20 * MiB
    h = hashlib.sha256()
    received = [0]
    with socket.create_connection(("127.0.0.1", p.port), timeout=20) as s:
        def reader() -> None:
            while chunk := s.recv(262144):
                h.update(chunk)
                received[0] += len(chunk)

        t = threading.Thread(target=reader)
        t.start()
        for piece in pattern_bytes(size):
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        t.join(30)
        assert not t.is_alive()
    assert received[0] == size
    assert h.hexdigest() == pattern_sha256(size)


def test_downstream_cx_total_counted_under_stat_prefix(proxy_factory, echo):
    p = proxy_factory(tcp_proxy_config(echo.port, stat_prefix="edge"))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(10) == b"x"
    assert p.wait_for(lambda: p.counters().get("tcp.edge.downstream_cx_total") == 3)
    assert p.wait_for(lambda: p.gauges().get("tcp.edge.downstream_cx_active") == 0)
    assert echo.connections == 3
