"""No HTTP/1.1 answer lost to a TCP reset when the proxy ends a downstream connection.

Closing a socket whose receive buffer holds bytes the proxy has not read makes the kernel send
a reset (RST) in place of a FIN: what the proxy's send buffer still holds (the tail of the
answer) is thrown away, and the client's next read fails with ECONNRESET instead of reading
EOF. Each client here pipelines requests behind the one whose answer ends the connection and
then keeps sending (what a pipelining or uploading client does), with a small receive buffer
and reading slowly; it must read the whole answer and then EOF, and its sends must not fail.
The proxy closes these connections lingering (proxy/network/connection.py, `close(linger=True)`):
a FIN after the answer, then what the client still sends read and dropped until it closes too
or `delayed_close_timeout` passes. Real Envoy 1.40 closes after a `connection: close` answer
as soon as it is flushed: this file's client was reset there 20 times in 20, a 1 MB answer cut
short each time (README, "Where ftproxy answers differently").
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from .harness import front_proxy_config, static_cluster

BIG = 1_000_000   # a response that does not fit in the client's receive buffer


def routes():
    return [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "5s"}}]


def config(upstream, **hcm):
    return front_proxy_config(routes(), [static_cluster("backend", upstream.port)], **hcm)


class SendingClient:
    """One connection that sends `data`, then keeps sending (4 KiB a millisecond, at most
    `limit` bytes) until it has read to the end; it reads 16 KiB at a time with a pause, into
    a 32 KiB receive buffer (`read_to_end`). `reply` is what it read, `outcome` how the reading ended ("EOF",
    or the errno's name), `send_error` the errno's name of a send that failed (or None)."""

    def __init__(self, port: int, data: bytes, limit: int = 2 << 20) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(data)
        self.limit = limit
        self.done = threading.Event()
        self.send_error: str | None = None
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.sender.start()
        self.reply = b""
        self.outcome = ""

    def _send(self) -> None:
        sent = 0
        chunk = b"x" * 4096
        try:
            while not self.done.is_set() and sent < self.limit:
                self.sock.sendall(chunk)
                sent += len(chunk)
                time.sleep(0.001)
        except OSError as e:
            self.send_error = errno.errorcode.get(e.errno, str(e))

    def read_to_end(self, pause: float = 0.001) -> SendingClient:
        """Read until EOF or an error, after 50 ms (a slow client: it is still sending when
        the answer is complete), `pause` seconds after each read."""
        out = bytearray()
        time.sleep(0.05)
        try:
            while True:
                chunk = self.sock.recv(16384)
                if not chunk:
                    self.outcome = "EOF"
                    break
                out += chunk
                time.sleep(pause)
        except socket.timeout:
            self.outcome = "timeout"
        except OSError as e:
            self.outcome = errno.errorcode.get(e.errno, str(e))
        self.reply = bytes(out)
        self.done.set()
        self.sender.join(5)
        self.sock.close()
        return self

    def first_response(self) -> tuple[bytes, bytes, bytes]:
        """(head, body by its content-length, what followed it)."""
        head, sep, rest = self.reply.partition(b"\r\n\r\n")
        assert sep, self.reply[:300]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head, rest[:length], rest[length:]


def assert_whole_answer_then_eof(client: SendingClient, status: bytes, body_len: int) -> bytes:
    """The first response whole (`body_len` bytes of body), nothing after it, then EOF."""
    head, body, after = client.first_response()
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert b"connection: close" in head.lower(), head
    assert (len(body), after, client.outcome) == (body_len, b"", "EOF"), \
        (len(body), after[:200], client.outcome)
    assert client.send_error is None, client.send_error
    return head


@pytest.mark.parametrize("path,codec", [("/", "fast"), ("/", "h11"), (f"/bytes/{BIG}", "fast")])
def test_a_connection_close_request_with_more_pipelined_behind_it_gets_its_answer_and_eof(
        upstream, proxy_factory, path, codec):
    """GET (connection: close) + GET + bytes that keep coming: the first answer, whole, then
    EOF (never ECONNRESET); the pipelined request is not answered. Before the lingering close
    every connection was reset (the 1 MB answer cut short), 40 times in 40."""
    p = proxy_factory(config(upstream), codec=codec)
    for _ in range(3):
        c = SendingClient(p.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                  "GET /second HTTP/1.1\r\nHost: x\r\n\r\n".encode()).read_to_end()
        head = assert_whole_answer_then_eof(c, b"200", BIG if path != "/" else len(c.first_response()[1]))
        assert b"content-length:" in head.lower()
    assert [r[1] for r in upstream.requests] == [path] * 3   # the pipelined ones never went on
    assert p.wait_for(lambda: p.gauges()["http.ingress_http.downstream_cx_active"] == 0)


def test_an_upstream_connection_close_keeps_the_client_connection_as_envoy_does(upstream, proxy_factory):
    """The upstream's own `connection: close` ends only the upstream connection (as in Envoy
    1.40): the request pipelined behind it is answered on the same client connection."""
    p = proxy_factory(config(upstream))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n"
              b"Connection: close\r\n\r\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    assert reply.count(b"HTTP/1.1 200 ") == 2 and b"closed-body" in reply and b'"/next"' in reply


def test_an_http10_client_that_keeps_sending_gets_its_close_delimited_answer_and_eof(upstream, proxy_factory):
    """HTTP/1.0 without keep-alive: the connection ends after the answer (here a 1 MB one
    that needs several slow reads); a second request and more bytes behind it are dropped."""
    p = proxy_factory(config(upstream, http_protocol_options={"accept_http_10": True}))
    for _ in range(3):
        c = SendingClient(p.port, f"GET /bytes/{BIG} HTTP/1.0\r\nHost: x\r\n\r\n"
                                  "GET / HTTP/1.0\r\nHost: x\r\n\r\n".encode()).read_to_end()
        head, body, after = c.first_response()
        assert head.startswith(b"HTTP/1.0 200 ") or head.startswith(b"HTTP/1.1 200 "), head
        assert (len(body), after, c.outcome, c.send_error) == (BIG, b"", "EOF", None), \
            (len(body), after[:100], c.outcome, c.send_error)


def test_an_upstream_answer_without_length_to_an_http10_keep_alive_client_ends_without_reset(
        upstream, proxy_factory):
    """The upstream's close-delimited answer to an HTTP/1.0 keep-alive client can only be
    passed on close-delimited: that connection ends after it, the client's pipelined request
    and bytes behind it notwithstanding."""
    p = proxy_factory(config(upstream, http_protocol_options={"accept_http_10": True}))
    for _ in range(3):
        c = SendingClient(p.port, b"GET /close HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
                                  b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").read_to_end()
        head, rest = c.reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
        assert b"content-length" not in head.lower() and b"connection: close" in head.lower(), head
        assert (rest, c.outcome, c.send_error) == (b"closed-body", "EOF", None), (rest[:100], c.outcome, c.send_error)


def test_max_requests_per_connection_ends_a_pipelining_connection_without_reset(upstream, proxy_factory):
    """The connection's last allowed request is answered with `connection: close`; the
    request pipelined behind it (held, so what follows stays unread) and the bytes after it
    do not turn the close into a reset."""
    p = proxy_factory(config(upstream, common_http_protocol_options={"max_requests_per_connection": 1}))
    for _ in range(3):
        c = SendingClient(p.port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n").read_to_end()
        assert_whole_answer_then_eof(c, b"200", len(c.first_response()[1]))
    assert [r[1] for r in upstream.requests] == ["/one"] * 3


def test_a_drain_ends_a_pipelining_connection_after_its_answer_without_reset(upstream, proxy_factory):
    """/drain_listeners while a request is in flight, another pipelined behind it and the
    client still sending: the answer says `connection: close` and arrives whole, then EOF."""
    p = proxy_factory(config(upstream))
    c = SendingClient(p.port, b"GET /delay/0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert p.wait_for(lambda: len(upstream.requests) == 1)
    assert p.admin("/drain_listeners", "POST")[0] == 200
    c.read_to_end()
    assert_whole_answer_then_eof(c, b"200", len(c.first_response()[1]))
    assert [r[1] for r in upstream.requests] == ["/delay/0.3"]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_idle_timeout_close_lingers_until_the_client_closes_and_is_counted_once(upstream, proxy_factory):
    """The HCM's idle_timeout closes with a FIN; the connection is counted active until the
    client closes its end, then destroyed once (local), its fd released."""
    p = proxy_factory(config(upstream, common_http_protocol_options={"idle_timeout": "0.2s"},
                             delayed_close_timeout="5s"))
    gauges = lambda: p.gauges()["http.ingress_http.downstream_cx_active"]  # noqa: E731
    worker = p.server.workers[0]
    fds = _fd_count()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while b"}" not in reply:
        reply += s.recv(65536)
    assert s.recv(10) == b""   # the idle timeout's FIN
    assert len(worker.connections) == 1   # lingering: the proxy reads on until the client closes
    s.close()
    assert p.wait_for(lambda: gauges() == 0)
    # (The HCM's on_close lowers downstream_cx_active before it counts the destroy: wait.)
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_cx_destroy_local") == 1)
    assert p.counters()["http.ingress_http.downstream_cx_idle_timeout"] == 1
    assert p.wait_for(lambda: not worker.connections)
    # (+2: the pooled upstream connection, both its ends in this process)
    assert p.wait_for(lambda: _fd_count() <= fds + 2)


def test_a_lingering_close_ends_after_delayed_close_timeout_when_the_client_never_closes(
        upstream, proxy_factory):
    """A client that reads its answer and EOF but never closes: the proxy's side closes after
    delayed_close_timeout (not the idle_timeout or later) and the connection is accounted."""
    p = proxy_factory(config(upstream, delayed_close_timeout="0.3s"))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    started = time.monotonic()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert p.wait_for(lambda: p.gauges()["http.ingress_http.downstream_cx_active"] == 0, 3)
    assert time.monotonic() - started < 5   # not the drain time (10 s) nor idle_timeout (1 h)
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_cx_destroy_local") == 1)
    s.close()


def test_a_shutdown_drain_waits_for_a_lingering_connection_no_longer_than_its_delay(upstream, proxy_factory):
    """The server's drain (drain time 10 s here) ends once its last connection is gone: one
    lingering for a client that never closes goes after delayed_close_timeout."""
    p = proxy_factory(config(upstream, delayed_close_timeout="0.3s"))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    started = time.monotonic()
    p.server.request_shutdown()
    p.thread.join(5)
    assert not p.thread.is_alive()
    assert time.monotonic() - started < 5   # not the drain time (10 s) nor idle_timeout (1 h)
    s.close()


def test_delayed_close_timeout_0_waits_for_the_flush_however_long(upstream, proxy_factory):
    """Envoy: delayed_close_timeout 0 turns the delay off: a connection closing after its
    answer closes once the answer is flushed, however long the client takes to read it (with
    a delay, it is given up after that long without write progress)."""
    size = 4_000_000  # more than the kernel's buffers hold
    p = proxy_factory(config(upstream, delayed_close_timeout="0s"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.settimeout(10)
    s.connect(("127.0.0.1", p.port))
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
    time.sleep(1.5)  # past the 1 s the connection would have been given up after before
    reply = bytearray()
    while chunk := s.recv(1 << 20):
        reply += chunk
    s.close()
    head, _, body = bytes(reply).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == size
    assert p.wait_for(lambda: p.gauges()["http.ingress_http.downstream_cx_active"] == 0, 3)
