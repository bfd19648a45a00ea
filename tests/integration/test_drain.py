"""Draining a worker (hot restart's parent drain, or SIGTERM) with requests in every phase.

The drain promises: in-flight requests finish, keep-alive clients get `connection: close`,
and no client loses a request. HTTP/1.1 has one way to say "this connection ends" that a
client cannot race: `connection: close` in a response head. A response whose head already
went out promising keep-alive therefore must not be followed by a close, or the request the
client sends next meets EOF (issue 13 §6: 20 busy connections each lost one request per
reload). Real servers and sockets; the upstream holds a response's body back until the test
has started the drain, so each phase is reached deterministically.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.integration.clients import read_request_head
from tests.integration.harness import ProxyUnderTest, front_proxy_config, static_cluster
from tests.integration.servers import AcceptLoop, new_reader, read_response


class HeldBodyUpstream(AcceptLoop):
    """Keep-alive upstream. `/held` sends its head at once and its body when `release` is
    set; `/hold-all` sends nothing until `release`; anything else is a small 200 at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        super().__init__("held-body-upstream")

    def handle(self, conn: socket.socket, n: int) -> None:
        with conn:
            try:
                self._serve(conn)
            except OSError:
                return  # the proxy closed its pooled connection (its server exited)

    def _serve(self, conn: socket.socket) -> None:
        while True:
            head = read_request_head(conn)
            if b"\r\n\r\n" not in head:
                return
            target = head.split(b" ", 2)[1]
            if target == b"/hold-all":
                self.release.wait(10)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")
            elif target == b"/held":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
                self.release.wait(10)
                conn.sendall(b"held")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture
def held():
    up = HeldBodyUpstream()
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "held"}}],
                                          [static_cluster("held", up.port)]))
    yield p, up
    up.release.set()
    p.stop()
    up.close()


def start_drain(p: ProxyUnderTest, kind: str) -> None:
    """Drain as a hot restart's parent does (idle connections get a grace period), or as
    SIGTERM does (idle connections close at once); return once the worker is draining."""
    server = p.server
    if kind == "parent":
        server.main.post(server.start_parent_drain)
    else:
        server.request_shutdown()
    assert p.wait_for(lambda: all(w.draining for w in server.workers))


def connect(p: ProxyUnderTest) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=5)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # one byte at a time: nothing of the body is consumed
        assert chunk, "EOF before a response head"
        data += chunk
    return data


@pytest.mark.parametrize("kind", ["parent", "shutdown"])
def test_a_response_whose_head_went_out_before_the_drain_keeps_its_connection_for_the_next_request(
        held, kind):
    p, up = held
    s = connect(p)
    s.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
    head = read_head(s)  # the head is out, promising keep-alive
    assert b"connection: close" not in head.lower()
    start_drain(p, kind)
    up.release.set()
    assert s.recv(4) == b"held"
    # The client trusts the keep-alive head and sends its next request at once: it is
    # answered, and that answer is the one that says the connection ends.
    s.sendall(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    r = read_response(s)
    assert (r.status, r.body, r.header("connection")) == (200, b"ok", "close")
    assert s.recv(1) == b""
    s.close()
    p.thread.join(10)  # the last connection closed: the drained server exits
    assert not p.thread.is_alive()


@pytest.mark.parametrize("kind", ["parent", "shutdown"])
def test_a_request_in_flight_at_the_drain_is_answered_with_connection_close(held, kind):
    p, up = held
    s = connect(p)
    s.sendall(b"GET /hold-all HTTP/1.1\r\nhost: x\r\n\r\n")
    assert p.wait_for(lambda: p.counters().get("cluster.held.upstream_rq_total", 0) == 1)
    start_drain(p, kind)
    up.release.set()
    r = read_response(s)
    assert (r.status, r.body, r.header("connection")) == (200, b"held", "close")
    assert s.recv(1) == b""
    s.close()
    p.thread.join(10)
    assert not p.thread.is_alive()


@pytest.mark.parametrize("kind", ["parent", "shutdown"])
def test_a_connection_idle_since_its_last_answer_gets_connection_close_on_its_next_request(held, kind):
    # A keep-alive client between two requests at the drain (the common case under load):
    # its next request, sent at once, is answered. On shutdown too: only a connection idle
    # for longer than the grace is closed at once.
    p, _ = held
    s = connect(p)
    reader = new_reader(s)
    s.sendall(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
    assert read_response(s, reader=reader).header("connection") is None
    start_drain(p, kind)
    s.sendall(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
    r = read_response(s, reader=reader)
    assert (r.status, r.header("connection")) == (200, "close")
    s.close()


@pytest.mark.parametrize("kind", ["parent", "shutdown"])
def test_a_keep_alive_response_finished_during_the_drain_leaves_its_idle_connection_to_close(held, kind):
    # The stream's own timer (stream_idle_timeout, 5 minutes) must not hold the connection:
    # once idle, a draining connection closes after the short grace, and the server exits.
    p, up = held
    s = connect(p)
    s.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
    read_head(s)
    start_drain(p, kind)
    up.release.set()
    assert s.recv(4) == b"held"
    s.settimeout(10)
    assert s.recv(1) == b""  # closed by the proxy, no request sent
    s.close()
    p.thread.join(10)
    assert not p.thread.is_alive()


@pytest.mark.parametrize("kind", ["parent", "shutdown"])
def test_an_http2_stream_in_flight_at_the_drain_finishes_after_a_goaway(held, kind):
    """HTTP/2: the drain sends GOAWAY(NO_ERROR) naming the streams taken; they finish, a new
    stream is refused."""
    from h2.errors import ErrorCodes
    from tests.integration.test_h2_downstream import H2Client
    p, up = held
    c = H2Client(p.port)
    try:
        sid = c.request(b"GET", b"/held")
        c.wait(lambda: sid in c.status)  # its head came; its body waits for `release`
        start_drain(p, kind)
        c.wait(lambda: c.goaway is not None)
        assert c.goaway.error_code == ErrorCodes.NO_ERROR and c.goaway.last_stream_id == sid
        up.release.set()
        c.wait(lambda: sid in c.ended)
        assert c.body[sid] == b"held"
    finally:
        c.close()
