"""Extra real upstream servers and a raw HTTP/1.1 client reader for the integration tests.

- `RawHttpUpstream`: a raw-socket HTTP/1.1 server (threads) that records exactly the bytes it
  receives (optional) and streams request bodies into a SHA-256 (no buffering), so 100 MiB
  bodies cost no memory. Routes: `/sink` (answers the body length and hash), `/stream/<n>`
  (n bytes with Content-Length), `/chunked/<n>/<k>` (n bytes as k-byte chunks), `/raw/<name>`
  (a canned raw response from `canned`), anything else a small 200.
- `WebSocketEchoUpstream`: `websockets.sync.server` echo server.
- `TcpEchoUpstream`: echoes bytes; on EOF from the client it half-closes its side.
- `AcceptLoop`: the listener + accept thread the raw servers here and in other tests share.
- `DecidingService`: a small HTTP/1.1 service whose answers a function decides (an
  authorization or key service for filters that ask one).
- `read_response(sock)`: reads one HTTP/1.1 response (CL, chunked, bodiless or close-delimited).
Everything binds 127.0.0.1 port 0. No mocks.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading

PATTERN = bytes(range(256)) * 256  # 64 KiB of a non-trivial pattern


def pattern_bytes(n: int):
    """Yield n bytes of the repeating PATTERN in 64 KiB pieces."""
    left = n
    while left:
        k = min(left, len(PATTERN))
        yield PATTERN[:k]
        left -= k


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_bytes(n):
        h.update(piece)
    return h.hexdigest()


class _Reader:
    """Buffered reads on a blocking socket."""

    def __init__(self, sock: socket.socket, tap=None) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.tap = tap

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        if not data:
            return False
        if self.tap is not None:
            self.tap(data)
        self.buf += data
        return True

    def until(self, sep: bytes) -> bytes | None:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if not self._fill():
                return None

    def exactly_into(self, n: int, sink) -> bool:
        while n:
            if not self.buf and not self._fill():
                return False
            k = min(n, len(self.buf))
            sink(bytes(self.buf[:k]))
            del self.buf[:k]
            n -= k
        return True

    def rest_into(self, sink) -> None:
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            if not self._fill():
                return


def _parse_head(raw: bytes) -> tuple[str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def _read_body(r: _Reader, headers: dict[str, str], sink, trailers: list | None = None) -> bool:
    """Read a body into `sink`; a chunked one's trailer fields are appended to `trailers`."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = r.until(b"\r\n")
            if line is None:
                return False
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (t := r.until(b"\r\n")) not in (b"\r\n", None):
                    if trailers is not None:
                        k, _, v = t.decode("latin-1").partition(":")
                        trailers.append((k.strip().lower(), v.strip()))
                return True
            if not r.exactly_into(size, sink) or r.until(b"\r\n") is None:
                return False
    n = int(headers.get("content-length") or 0)
    return r.exactly_into(n, sink)


class AcceptLoop:
    """A 127.0.0.1 listener (`port`) whose daemon thread accepts until `close()` and hands each
    connection to `handle(conn, n)` on a daemon thread of its own (n = 1, 2, ... in accept
    order). `connections` counts the accepted ones; only the accept thread writes it.
    Subclasses set their own fields before calling `__init__` (accepting starts there)."""

    def __init__(self, name: str) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name=name)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self.handle, args=(conn, self.connections), daemon=True).start()

    def handle(self, conn: socket.socket, n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        close_listener(self.lsock, self._thread)


def close_listener(lsock: socket.socket, accept_thread: threading.Thread) -> None:
    """Stop an accept thread, then close its socket. Closing first is not enough: a thread
    blocked in (or about to enter) accept() keeps the listening socket alive, or, once the fd
    number is reused, accepts on whatever socket gets it next, and serves a later test's
    connections with this server's handler (seen on free-threaded 3.14t). shutdown() wakes
    accept() with an error; the join makes sure the thread is gone before the fd is freed."""
    try:
        lsock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    accept_thread.join(5)
    lsock.close()


class RawHttpUpstream(AcceptLoop):
    def __init__(self, record: bool = True, canned: dict[str, bytes] | None = None) -> None:
        self.record = record
        self.canned = canned or {}
        self.lock = threading.Lock()  # guards received, requests
        self.received = bytearray()
        self.requests: list[dict] = []
        super().__init__("raw-upstream")

    def handle(self, conn: socket.socket, n: int) -> None:
        self._serve(conn)

    def _tap(self, data: bytes) -> None:
        if self.record:
            with self.lock:
                self.received += data

    def _serve(self, s: socket.socket) -> None:
        r = _Reader(s, self._tap)
        try:
            while True:
                raw = r.until(b"\r\n\r\n")
                if raw is None:
                    return
                start, headers = _parse_head(raw)
                method, target, _ = start.split(" ", 2)
                h = hashlib.sha256()
                n = [0]

                def sink(b: bytes) -> None:
                    h.update(b)
                    n[0] += len(b)

                if not _read_body(r, headers, sink):
                    return
                req = {"method": method, "path": target, "headers": headers, "body_len": n[0],
                       "sha256": h.hexdigest()}
                with self.lock:
                    self.requests.append(req)
                if not self._respond(s, req):
                    return
        except OSError:
            return
        finally:
            s.close()

    def _respond(self, s: socket.socket, req: dict) -> bool:
        path = req["path"]
        parts = path.strip("/").split("/")
        if parts[0] == "raw":
            s.sendall(self.canned[parts[1]])
            return True
        if parts[0] == "stream":
            n = int(parts[1])
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            if req["method"] != "HEAD":
                for piece in pattern_bytes(n):
                    s.sendall(piece)
            return True
        if parts[0] == "chunked":
            n, k = int(parts[1]), int(parts[2])
            s.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            data = b"".join(pattern_bytes(n))
            for i in range(0, n, k):
                piece = data[i:i + k]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
            return True
        body = json.dumps(req).encode()
        s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(body), body))
        return True

    def received_bytes(self) -> bytes:
        with self.lock:
            return bytes(self.received)



class WebSocketEchoUpstream:
    def __init__(self) -> None:
        from websockets.sync.server import serve

        def echo(ws) -> None:
            for msg in ws:
                ws.send(msg)

        self.server = serve(echo, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ws-upstream")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


class TcpEchoUpstream(AcceptLoop):
    def __init__(self) -> None:
        super().__init__("tcp-echo")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            while True:
                data = s.recv(262144)
                if not data:
                    s.shutdown(socket.SHUT_WR)
                    return
                s.sendall(data)
        except OSError:
            pass
        finally:
            s.close()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def read_response(sock: socket.socket, method: str = "GET", reader: _Reader | None = None) -> Response:
    """Read one response from a blocking socket (pass the same `reader` for pipelined reads)."""
    r = reader or _Reader(sock)
    while True:
        raw = r.until(b"\r\n\r\n")
        if raw is None:
            raise ConnectionError("connection closed before a response head")
        start, _ = _parse_head(raw)
        status = int(start.split(" ")[1])
        if status != 100:
            break
    lines = raw.decode("latin-1").split("\r\n")[1:]
    headers = []
    for line in lines:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
    hmap = dict(headers)
    body = bytearray()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200 or (
            method == "CONNECT" and 200 <= status < 300):  # (a tunnel follows: RFC 9110 §9.3.6)
        return Response(status, headers, b"")
    if "content-length" in hmap or hmap.get("transfer-encoding", "").lower() == "chunked":
        trailers: list[tuple[str, str]] = []
        if not _read_body(r, hmap, body.extend, trailers):
            raise ConnectionError("connection closed inside a response body")
        # Trailers are listed after the head's fields as "trailer:<name>".
        headers.extend((f"trailer:{k}", v) for k, v in trailers)
    else:
        r.rest_into(body.extend)
    return Response(status, headers, bytes(body))


def new_reader(sock: socket.socket) -> _Reader:
    return _Reader(sock)


class DecidingService:
    """A small HTTP/1.1 service on 127.0.0.1 whose every answer `decide(path, headers)` gives
    as (status, [(name, value)...], body); it records the paths and headers it was asked."""

    def __init__(self, decide) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.path, headers))
                status, extra, body = decide(self.path, headers)
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="deciding-service").start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
