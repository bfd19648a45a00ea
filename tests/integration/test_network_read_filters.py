"""Network read filters' `on_data` (Envoy's onData) through the running proxy: a filter before
the terminal sees the connection's bytes first, in order, and may let them on (CONTINUE), hold
them until it calls continue_reading() (STOP_ITERATION), or close the connection; before the
HCM and before tcp_proxy (where it turns zero-copy splicing off: the bytes must pass through
the filter). The filter is a test extension, registered for the test only."""

from __future__ import annotations

import socket
import time

import pytest

from proxy.config import registry
from proxy.network.filter_chain import NetworkFilterStatus

from .harness import front_proxy_config, raw_request, static_cluster
from .servers import TcpEchoUpstream
from .test_tcp_proxy import tcp_proxy_config

PROTO = "test.ReadGate"
SEEN: list[tuple[bytes, bool]] = []  # every on_data call, in order (the worker appends)


class _GateFilter:
    """BLOCK... closes the connection; a chunk with `x-hold` is held 0.3 s; else CONTINUE."""

    def __init__(self, callbacks) -> None:
        self.cb = callbacks
        self.timer = None

    def on_new_connection(self) -> int:
        return NetworkFilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> int:
        SEEN.append((data, end_stream))
        if data.startswith(b"BLOCK"):
            self.cb.close()
            return NetworkFilterStatus.STOP_ITERATION
        if b"x-hold" in data:
            self.timer = self.cb.dispatcher.call_later(0.3, self.cb.continue_reading)
            return NetworkFilterStatus.STOP_ITERATION
        return NetworkFilterStatus.CONTINUE

    def on_close(self) -> None:
        if self.timer is not None:
            self.timer.disable()


class _Factory:
    def __init__(self, config, name) -> None:
        pass

    def for_worker(self, worker):
        return self

    def create(self, callbacks):
        return _GateFilter(callbacks)


@pytest.fixture(autouse=True)
def gate_registered(monkeypatch):
    ext = registry.Extension(category="network_filter", name="test.read_gate", proto=PROTO,
                             parse=lambda raw, path: dict(raw), factory=_Factory)
    monkeypatch.setitem(registry._BY_NAME, ("network_filter", ext.name), ext)
    monkeypatch.setitem(registry._BY_PROTO, ("network_filter", PROTO), ext)
    SEEN.clear()


def _with_gate(config: dict) -> dict:
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"].insert(0, {"name": "test.read_gate",
                                "typed_config": {"@type": "type.googleapis.com/" + PROTO}})
    return config


def _http(proxy_factory, port):
    return proxy_factory(_with_gate(front_proxy_config(
        [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}], [static_cluster("c1", port)])))


def test_the_filter_sees_the_request_bytes_before_the_hcm(proxy_factory, upstream):
    p = _http(proxy_factory, upstream.port)
    request = b"GET /gated HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    reply = raw_request(p.port, request)
    assert reply.startswith(b"HTTP/1.1 200") and b"/gated" in reply
    assert b"".join(d for d, _ in SEEN).startswith(request)


def test_a_filter_that_closes_keeps_the_bytes_from_the_terminal(proxy_factory, upstream):
    p = _http(proxy_factory, upstream.port)
    reply = raw_request(p.port, b"BLOCK / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply == b""  # closed, unanswered
    assert upstream.requests == []
    assert p.counters().get("http.ingress_http.downstream_rq_total", 0) == 0


def test_stop_iteration_holds_the_bytes_until_continue_reading(proxy_factory, upstream):
    p = _http(proxy_factory, upstream.port)
    first = b"GET /held HTTP/1.1\r\nx-hold: 1\r\n"
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(first)  # the filter holds it
        time.sleep(0.05)
        s.sendall(b"host: x\r\nconnection: close\r\n\r\n")  # queued behind it, in order
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b"/held" in reply
    assert time.monotonic() - start >= 0.3
    assert SEEN[0] == (first, False)
    assert upstream.requests[0][1] == "/held"


def test_before_tcp_proxy_the_bytes_pass_through_the_filter_and_eof_is_end_stream(proxy_factory):
    up = TcpEchoUpstream()
    try:
        p = proxy_factory(_with_gate(tcp_proxy_config(up.port)))
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"ping-through-filter")
            got = b""
            while len(got) < len(b"ping-through-filter"):
                got += s.recv(65536)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        assert got == b"ping-through-filter"
        assert b"".join(d for d, _ in SEEN) == b"ping-through-filter"  # not spliced past it
        assert SEEN[-1] == (b"", True)
    finally:
        up.close()
