"""The demo upstreams (`proxyctl demo`, cli/demo.py) answer keep-alive requests at once.

They used to send each response head and body with two send()s on a socket with Nagle on:
on a kept-alive connection the body waited for the ACK of the head, which the client delays
by up to 40 ms, so half the requests through the proxy took 42-46 ms and a newcomer blamed
the proxy. Timing would make a flaky test; what makes the delay impossible is checked
instead: every response leaves in one write on a TCP_NODELAY socket, over many sequential
keep-alive requests (GET, HEAD and POST with a body) on one connection.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from cli import demo

N_REQUESTS = 40


class _RecordingHandler(demo._EchoHandler):
    """The demo's handler, recording what reaches the socket: TCP_NODELAY and each write."""

    writes: list[bytes]
    nodelay: list[int]
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        cls = type(self)
        with cls.lock:
            cls.nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        raw = getattr(self.wfile, "raw", self.wfile)  # BufferedWriter -> SocketIO, or _SocketWriter
        send = raw.write

        def write(data) -> int:
            with cls.lock:
                cls.writes.append(bytes(data))
            return send(data)

        raw.write = write


@pytest.fixture
def service():
    servers = demo.start_demo_upstreams(http_services=(("service1", 0),), tcp_echo_port=None)
    server = servers[0]
    server.RequestHandlerClass = type("Recording", (_RecordingHandler,), {"writes": [], "nodelay": []})
    try:
        yield server
    finally:
        demo.stop_demo_upstreams(servers)


def _read_response(sock: socket.socket, buf: bytearray, head_only: bool) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the demo service closed the keep-alive connection"
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    length = 0 if head_only else int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                          if line.lower().startswith(b"content-length:")))
    end = len(head) + 4 + length
    while len(buf) < end:
        chunk = sock.recv(65536)
        assert chunk, "the demo service closed the keep-alive connection"
        buf += chunk
    response = bytes(buf[:end])
    del buf[:end]
    return response


def test_keep_alive_responses_leave_in_one_write_on_a_nodelay_socket(service):
    handler = service.RequestHandlerClass
    port = service.server_address[1]
    responses = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buf = bytearray()
        for i in range(N_REQUESTS):
            kind = i % 3
            if kind == 0:
                sock.sendall(b"GET /n/%d HTTP/1.1\r\nhost: demo\r\n\r\n" % i)
            elif kind == 1:
                sock.sendall(b"HEAD /n/%d HTTP/1.1\r\nhost: demo\r\n\r\n" % i)
            else:
                sock.sendall(b"POST /n/%d HTTP/1.1\r\nhost: demo\r\ncontent-length: 5\r\n\r\nhello" % i)
            responses.append(_read_response(sock, buf, head_only=kind == 1))
    assert handler.nodelay == [1]  # one connection, Nagle off
    assert len(handler.writes) == N_REQUESTS, [w[:40] for w in handler.writes]
    assert handler.writes == responses  # each response is exactly one write, head and body together
    for i, r in enumerate(responses):
        assert r.startswith(b"HTTP/1.1 200 ")
        if i % 3 != 1:
            doc = json.loads(r.partition(b"\r\n\r\n")[2])
            assert doc["path"] == f"/n/{i}" and doc["body_bytes"] == (5 if i % 3 == 2 else 0)
