"""Timeouts for a request whose head is still arriving (slowloris), through the proxy.

Envoy's stream begins at a request's first byte, so a head trickled a byte at a time gets
its 408 at request_timeout, at request_headers_timeout, or at stream_idle_timeout (head
bytes do not count as stream activity); the same for a second request on a kept-alive
connection, timed from its own first byte. Checked against real Envoy 1.40 with each timeout
at 1 s and a byte every 0.1 s: the status, body, `connection: close`, the access log's
`- -` request line with details request_overall_timeout / request_header_timeout /
stream_idle_timeout (flag SI for the last), and the stats downstream_rq_timeout /
downstream_rq_header_timeout / downstream_rq_idle_timeout. Before, the stream started only
once the head was complete and such a head was cut off only by the connection idle_timeout.

The timeouts here are short and the connection idle_timeout long: each test waits for the
408 (never for a time), and a head answered by the idle timeout would fail it.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.integration.harness import ProxyUnderTest, front_proxy_config, static_cluster
from tests.integration.servers import new_reader, read_response

IDLE = "30s"  # the connection idle_timeout: a 408 must come long before it
HEAD = b"GET /slow HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 400 + b"\r\n\r\n"


@pytest.fixture
def proxy_with(upstream, codec):
    started = []

    def make(**hcm) -> ProxyUnderTest:
        hcm.setdefault("common_http_protocol_options", {"idle_timeout": IDLE})
        cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                                 [static_cluster("up", upstream.port)], **hcm)
        p = ProxyUnderTest(cfg, codec=codec)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


class Trickler:
    """Sends `data` one byte every `gap` seconds on `sock` until told to stop or the peer
    closes; the test reads the answer meanwhile."""

    def __init__(self, sock: socket.socket, data: bytes, gap: float = 0.05) -> None:
        self.sock, self.data, self.gap = sock, data, gap
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in range(len(self.data)):
            if self.stop.wait(self.gap):
                return
            try:
                self.sock.send(self.data[i:i + 1])
            except OSError:
                return
            self.sent += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)


def answer_to_trickled_head(p: ProxyUnderTest, before: bytes = b"") -> tuple:
    """Send `before` (whole requests), read their answers, then trickle HEAD; return the
    answer to it and how many of its bytes were sent by then."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)  # < IDLE
    reader = new_reader(s)
    try:
        if before:
            s.sendall(before)
            assert read_response(s, reader=reader).status == 200
        t = Trickler(s, HEAD)
        try:
            r = read_response(s, reader=reader)
        finally:
            t.finish()
        try:
            closed = reader.until(b"\r\n") is None  # the proxy closed after the 408
        except ConnectionResetError:  # (a trickled byte met the closed socket)
            closed = True
        return r, t.sent, closed
    finally:
        s.close()


def stat(p: ProxyUnderTest, name: str) -> int:
    return p.counters().get(f"http.ingress_http.{name}", 0)


@pytest.mark.parametrize("timeout,body,counter", [
    ("request_timeout", b"request timeout", "downstream_rq_timeout"),
    ("request_headers_timeout", b"request header timeout", "downstream_rq_header_timeout"),
    ("stream_idle_timeout", b"stream timeout", "downstream_rq_idle_timeout"),
])
def test_a_trickled_head_gets_408_at_its_timeout(proxy_with, timeout, body, counter):
    p = proxy_with(**{timeout: "0.5s"})
    r, sent, closed = answer_to_trickled_head(p)
    assert (r.status, r.body, r.header("connection")) == (408, body, "close")
    assert closed
    assert sent < len(HEAD), "the whole head went out: the test proves nothing"
    assert p.wait_for(lambda: stat(p, counter) == 1 and stat(p, "downstream_rq_4xx") == 1)
    assert stat(p, "downstream_rq_total") == 1


@pytest.mark.parametrize("timeout", ["request_timeout", "request_headers_timeout"])
def test_a_second_request_trickled_on_a_kept_alive_connection_gets_408(proxy_with, timeout):
    p = proxy_with(**{timeout: "0.5s"})
    r, _, _ = answer_to_trickled_head(p, before=b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
    assert r.status == 408
    assert stat(p, "downstream_rq_2xx") == 1


def test_request_headers_timeout_stops_at_the_end_of_the_head(proxy_with, upstream):
    # A body slower than request_headers_timeout is not cut by it (Envoy: the timer is
    # disarmed when the last byte of the head arrives).
    p = proxy_with(request_headers_timeout="0.3s")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n")
        t = Trickler(s, b"b" * 20, gap=0.05)  # 1 s of body
        r = read_response(s)
        t.finish()
    finally:
        s.close()
    assert r.status == 200 and t.sent == 20
    assert stat(p, "downstream_rq_header_timeout") == 0


def test_a_head_that_arrives_in_pieces_in_time_is_served_and_timed_from_its_first_byte(proxy_with):
    p = proxy_with(request_timeout="5s", request_headers_timeout="5s")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        t = Trickler(s, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", gap=0.01)
        r = read_response(s)
        t.finish()
    finally:
        s.close()
    assert r.status == 200
    assert stat(p, "downstream_rq_timeout") == stat(p, "downstream_rq_header_timeout") == 0
