"""The floor: a lean single-threaded HTTP/1.1 reverse proxy in Python, for comparison only.

Job: measure what CPython itself costs per proxied request on this machine, next to ftproxy
and HAProxy in the same peers.sh run. It does what the issue's probe did and nothing more:
parse the request with httptools (llhttp), rebuild the upstream head (drop Connection, add
x-forwarded-for and x-request-id), keep one upstream connection per client, parse the
response, drop Connection, send head and body in one sendmsg. No routing, stats, timeouts,
limits, flow control or error handling worth the name: it is a yardstick, not a proxy.

    PROXY_NAME=floor PROXY_CMD="exec .venv/bin/python perf/probe_floor.py" ../shared/tools/peers.sh
Listens on 127.0.0.1:18090, forwards to 127.0.0.1:18080 (peers.sh's upstream); with
PERF_PORT_BASE set (perf/ports.py), on that base's proxy and upstream ports. Loopback only.
Must not: be imported by the proxy.
"""

from __future__ import annotations

import select
import socket

import httptools
from ports import plan  # perf/ports.py (perf/ is on sys.path: run as a script)

LISTEN = ("127.0.0.1", plan()["proxy"])
UPSTREAM = ("127.0.0.1", plan()["upstream"])


class Loop:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, object] = {}

    def add(self, sock: socket.socket, handler) -> None:
        self.handlers[sock.fileno()] = handler
        self.epoll.register(sock.fileno(), select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        self.handlers.pop(sock.fileno(), None)
        self.epoll.unregister(sock.fileno())
        sock.close()

    def run(self) -> None:
        handlers = self.handlers
        while True:
            for fd, _ in self.epoll.poll():
                handler = handlers.get(fd)
                if handler is not None:
                    handler()


class Downstream:
    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop, self.sock, self.upstream = loop, sock, None
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list = []
        self.url = b""
        self.rid = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parts = [self.parser.get_method() + b" " + self.url + b" HTTP/1.1"]
        parts += [n + b": " + v for n, v in self.headers if n != b"connection"]
        self.rid += 1
        parts += [b"x-forwarded-for: 127.0.0.1", b"x-request-id: %d-%d" % (id(self), self.rid),
                  b"", b""]
        self.headers, self.url = [], b""
        if self.upstream is None:
            up = socket.create_connection(UPSTREAM)
            up.setblocking(False)
            self.upstream = Upstream(self, up)
            self.loop.add(up, self.upstream.on_readable)
        self.upstream.sock.send(b"\r\n".join(parts))

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove(self.sock)
            if self.upstream is not None:
                self.loop.remove(self.upstream.sock)
            return
        self.parser.feed_data(data)


class Upstream:
    def __init__(self, down: Downstream, sock: socket.socket) -> None:
        self.down, self.sock = down, sock
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list = []
        self.out: list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parts = [b"HTTP/1.1 %d OK" % self.parser.get_status_code()]
        parts += [n + b": " + v for n, v in self.headers if n != b"connection"]
        parts += [b"", b""]
        self.headers = []
        self.out.append(b"\r\n".join(parts))

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.down.sock.sendmsg(self.out)
        self.out = []

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if data:
            self.parser.feed_data(data)


def serve(loop, handler_for) -> None:
    """Listen on LISTEN and run `loop`; each accepted socket gets `handler_for(loop, sock)`
    (a callable run when the socket is readable). Shared with probe_lane.py."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(LISTEN)
    listener.listen(1024)
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop.add(sock, handler_for(loop, sock))

    loop.add(listener, accept)
    loop.run()


def main() -> None:
    serve(Loop(), lambda loop, sock: Downstream(loop, sock).on_readable)


if __name__ == "__main__":
    main()
