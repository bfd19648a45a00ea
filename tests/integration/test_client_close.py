"""A client that half-closes (FIN) with requests in flight or pipelined behind them.

Envoy 1.40's HCM has no HTTP half-close: a client's FIN ends the connection, the request in
flight is reset (access log flag DC, no response) and the pipelined requests behind it are
never forwarded; it sees the FIN even while it does not read (early close detection).
ftproxy does the same (checked against real Envoy with two pipelined GETs then
shutdown(SHUT_WR): no response, the upstream got only the first). Before, the FIN sat
unread behind the pipelined request while reading was paused, so the first request was
answered and the second forwarded, executed, and then reset: a request sent upstream that
nobody would answer (issue 13 §6).
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.integration.clients import read_request_head
from tests.integration.harness import ProxyUnderTest, front_proxy_config, static_cluster
from tests.integration.servers import AcceptLoop


class RecordingUpstream(AcceptLoop):
    """Keep-alive upstream recording each request target; `/hold` answers once `release`
    is set, anything else at once."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.release = threading.Event()
        super().__init__("recording-upstream")

    def handle(self, conn: socket.socket, n: int) -> None:
        with conn:
            while True:
                try:
                    head = read_request_head(conn)
                except OSError:
                    return  # the proxy reset the request it aborted
                if b"\r\n\r\n" not in head:
                    return
                target = head.split(b" ", 2)[1]
                self.targets.append(target)
                if target == b"/hold":
                    self.release.wait(10)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                except OSError:
                    return


@pytest.fixture
def proxied(codec):
    up = RecordingUpstream()
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "rec"}}],
                                          [static_cluster("rec", up.port)]), codec=codec)
    yield p, up
    up.release.set()
    p.stop()
    up.close()


def read_all(s: socket.socket) -> bytes:
    s.settimeout(5)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_pipelined_requests_then_fin_forward_none_behind_the_request_in_flight(proxied):
    p, up = proxied
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\n\r\n")
    assert p.wait_for(lambda: up.targets == [b"/hold"])
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""  # Envoy: reset, no response
    s.close()
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_rx_reset") == 1)
    up.release.set()
    # The connection is gone and its queued request with it: nothing can forward it later.
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_active") == 0)
    assert up.targets == [b"/hold"]
    c = p.counters()
    assert (c["http.ingress_http.downstream_rq_total"], c["cluster.rec.upstream_rq_total"]) == (1, 1)


def test_pipelined_requests_with_the_fin_in_the_same_segment_forward_at_most_the_first(proxied):
    p, up = proxied
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    s.close()
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_active") == 0)
    up.release.set()
    assert b"/second" not in up.targets


def test_a_request_in_flight_is_reset_when_its_client_half_closes(proxied):
    p, up = proxied
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
    assert p.wait_for(lambda: up.targets == [b"/hold"])
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    s.close()
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_rx_reset") == 1)


def test_pipelined_requests_without_a_fin_are_all_answered_in_order(proxied):
    p, up = proxied
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n"
              b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert read_all(s).count(b"HTTP/1.1 200 OK") == 3
    s.close()
    assert up.targets == [b"/a", b"/b", b"/c"]
