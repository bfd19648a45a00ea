"""Small real clients for integration tests: http.client requests that never follow redirects.

`request()` opens a fresh TCP connection to 127.0.0.1 per call (no pooling, no redirects),
and returns a `Reply` with lower-cased headers (multi-valued ones kept in `all_headers`).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
from dataclasses import dataclass, field

from tests.ports import free_port

from .servers import close_listener


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    all_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(port: int, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None, host: str | None = None, timeout: float = 5.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        skip_host = host is not None or any(k.lower() == "host" for k in hdrs)
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        items = [(k.lower(), v) for k, v in r.getheaders()]
        return Reply(r.status, dict(items), data, items)
    finally:
        conn.close()


def echo(port: int, path: str = "/", **kw) -> dict:
    """GET through the proxy to an EchoUpstream; returns what the upstream saw (asserts 200)."""
    r = request(port, path, **kw)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def curl(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run the real curl binary (`-s`, no proxy from the environment)."""
    return subprocess.run(["curl", "-s", "--noproxy", "*", *args], capture_output=True, timeout=timeout, text=True)


class RawUpstream:
    """A TCP server on 127.0.0.1:0 that hands each accepted socket to `handler(sock)` on a thread."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True, name="raw-upstream")
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        close_listener(self.sock, self.thread)


def read_request_head(sock) -> bytes:
    """Read from `sock` until the end of an HTTP request head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (tests/ports.py: below the ephemeral range, so no
    upstream another test binds to port 0 can take it meanwhile)."""
    return free_port()
