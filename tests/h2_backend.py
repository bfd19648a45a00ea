"""A real h2c (HTTP/2, prior knowledge) upstream server for the tests: its own thread, its own
sockets on 127.0.0.1:0, the `h2` library as the server side. With `ssl_context` (a server
`ssl.SSLContext`, whose ALPN list the test sets, e.g. ["h2"]) it is HTTP/2 over TLS: each
connection's handshake runs first and `alpns` records what each one negotiated. With
`http1_too`, a connection that does not start with the HTTP/2 preface (or, over TLS, whose
ALPN is "http/1.1") is served as HTTP/1.1 instead: each request gets the summary (its record
has "protocol": "http/1.1"; HTTP/2 ones have "h2").

Per path (query parameters in brackets):
- anything else: 200 with a JSON summary of what it saw (method, path, authority, stream id,
  connection number, body length, headers);
- /echo: 200 with the request's body; its trailers come back as x-echo-<name> trailers;
- /slow [ms]: the summary after `ms` milliseconds (streams held open at once);
- /chunks [n, size, ms]: `n` DATA frames of `size` bytes, one every `ms` milliseconds;
- /big [size]: `size` bytes, as fast as the proxy's window allows (counts its waits);
- /trailers: a body, then trailers (x-trailer: yes);
- /rst [code]: RST_STREAM (INTERNAL_ERROR, or REFUSED_STREAM with code=refused);
- /goaway: GOAWAY naming this stream as the last, then the summary;
- /goaway-refuse: on the first connection, GOAWAY naming the stream before this one as the
  last (this one is refused, unanswered); elsewhere the summary;
- /garbage: a DATA frame on stream 0 (a connection error the client must detect);
- /grpc [status, where, fail]: a gRPC-style answer (200, application/grpc) whose grpc-status
  (default 14) is in the response headers (where=headers: trailers-only) or in trailers after
  an empty message (where=trailers); with fail=n, of each n+1 requests with the same query
  the first n get that status and the next grpc-status 0 (a cycle).
- /grpcecho [status, msg, n, split]: a gRPC answer (200, application/grpc) carrying the
  request's body (its gRPC messages as received) `n` times (default 1), in DATA frames of at
  most `split` bytes, then trailers: grpc-status (default 0), grpc-message `msg` if given,
  x-md: trailing;
- /plain [status]: not a gRPC answer: `status` (default 200), text/plain, a body with a space,
  a `%`, a `~` and non-ASCII bytes (what a gRPC-Web proxy must percent-encode).
`name` appears in the summary as "server" (the differential runner's echo JSON). It records
each connection and each request (headers as received, body, trailers) and the most
streams it saw open at once on one connection.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, RequestReceived, StreamEnded,
                       StreamReset, TrailersReceived, WindowUpdated)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

__all__ = ["H2Backend"]


class _Conn:
    def __init__(self, number: int, sock: socket.socket, h2: H2Connection) -> None:
        self.number = number
        self.sock = sock
        self.h2 = h2
        self.streams: dict[int, dict] = {}      # open requests by stream id
        self.out: dict[int, list] = {}          # stream id -> [bytes left, then-trailers]
        self.waiting: dict[int, tuple] = {}     # stream id -> a _queue's rest, for the window
        self.http1 = False                      # an HTTP/1.1 connection (http1_too)
        self.buf = b""                          # ... its unparsed bytes


class H2Backend:
    def __init__(self, max_concurrent_streams: int | None = None,
                 initial_window_size: int | None = None, name: str = "h2-upstream",
                 ssl_context: ssl.SSLContext | None = None, http1_too: bool = False) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.http1_too = http1_too
        self.alpns: list[str | None] = []  # with ssl_context: each handshake's ALPN result
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.lock = threading.Lock()   # guards the records below (read by the test thread)
        self.connections = 0
        self.requests: list[dict] = []
        self.max_active = 0            # most streams open at once on one connection
        self.max_active_by_conn: dict[int, int] = {}  # ... on each connection (by number)
        self.window_waits = 0          # times /big waited for the proxy's window
        self.big_sent = 0              # /big bytes handed to h2 so far
        self.grpc_counts: dict[str, int] = {}  # /grpc with fail=: requests seen per query
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.timers: list[tuple[float, object]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="h2-backend")
        self.thread.start()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()

    # -- loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            due = [t for t in self.timers if t[0] <= now]
            for t in due:
                self.timers.remove(t)
                t[1]()
            for key, _ in self.sel.select(0.01):
                if key.data is None:
                    self._accept()
                else:
                    self._readable(key.data)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        sock.settimeout(10)
        if self.ssl_context is not None:
            try:  # (blocking, on this thread: the proxy's handshake is quick)
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            except (OSError, ValueError):
                sock.close()
                return
            with self.lock:
                self.alpns.append(sock.selected_alpn_protocol())
        http1 = False
        if self.http1_too:
            if self.ssl_context is not None:
                http1 = sock.selected_alpn_protocol() == "http/1.1"
            else:
                try:
                    http1 = not sock.recv(4, socket.MSG_PEEK).startswith(b"PRI ")
                except OSError:
                    sock.close()
                    return
        if http1:
            with self.lock:
                self.connections += 1
                conn = _Conn(self.connections, sock, None)
            conn.http1 = True
            self.sel.register(sock, selectors.EVENT_READ, conn)
            return
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        settings = {}
        if self.max_concurrent_streams is not None:
            settings[SettingCodes.MAX_CONCURRENT_STREAMS] = self.max_concurrent_streams
        if self.initial_window_size is not None:
            settings[SettingCodes.INITIAL_WINDOW_SIZE] = self.initial_window_size
        h2.initiate_connection()
        if settings:
            h2.update_settings(settings)
        with self.lock:
            self.connections += 1
            conn = _Conn(self.connections, sock, h2)
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        data = conn.h2.data_to_send()
        if data:
            try:
                conn.sock.sendall(data)
            except OSError:
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
            # TLS: records already decrypted are not signalled by the socket again.
            while data and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                data += conn.sock.recv(conn.sock.pending())
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn.http1:
            self._http1(conn, data)
            return
        try:
            events = conn.h2.receive_data(data)
        except H2Error:
            self._send(conn)
            self._drop(conn)
            return
        for ev in events:
            self._event(conn, ev)
        self._send(conn)

    def _event(self, conn: _Conn, ev) -> None:
        h2 = conn.h2
        if isinstance(ev, RequestReceived):
            headers = [(n.decode(), v.decode()) for n, v in ev.headers]
            rec = {"conn": conn.number, "stream_id": ev.stream_id, "headers": headers,
                   "body": b"", "trailers": None, "protocol": "h2"}
            with self.lock:
                self.requests.append(rec)
                conn.streams[ev.stream_id] = rec
                self.max_active = max(self.max_active, len(conn.streams))
                self.max_active_by_conn[conn.number] = max(
                    self.max_active_by_conn.get(conn.number, 0), len(conn.streams))
            if ev.stream_ended is not None:
                self._respond(conn, ev.stream_id)
        elif isinstance(ev, DataReceived):
            rec = conn.streams.get(ev.stream_id)
            if rec is not None:
                rec["body"] += ev.data
            h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, TrailersReceived):
            rec = conn.streams.get(ev.stream_id)
            if rec is not None:
                rec["trailers"] = [(n.decode(), v.decode()) for n, v in ev.headers]
        elif isinstance(ev, StreamEnded):
            if ev.stream_id in conn.streams and not isinstance(ev, RequestReceived):
                rec = conn.streams[ev.stream_id]
                if not rec.get("responding"):
                    self._respond(conn, ev.stream_id)
        elif isinstance(ev, StreamReset):
            with self.lock:
                rec = conn.streams.pop(ev.stream_id, None)
                if rec is not None:
                    rec["reset_by_peer"] = ev.error_code
            conn.out.pop(ev.stream_id, None)
            conn.waiting.pop(ev.stream_id, None)
        elif isinstance(ev, WindowUpdated):
            for sid in list(conn.out):
                self._pump(conn, sid)
            for sid in list(conn.waiting):
                try:
                    self._queue(conn, sid, *conn.waiting.pop(sid))
                except H2Error:
                    pass   # the stream closed meanwhile
        elif isinstance(ev, ConnectionTerminated):
            self._send(conn)
            self._drop(conn)

    def _http1(self, conn: _Conn, data: bytes) -> None:
        """http1_too: bodiless HTTP/1.1 requests, each answered with the summary."""
        conn.buf += data
        while b"\r\n\r\n" in conn.buf:
            head, conn.buf = conn.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ")
            headers = [(k.strip().lower(), v.strip()) for k, _, v in
                       (line.partition(":") for line in lines[1:])]
            rec = {"conn": conn.number, "stream_id": 0, "headers": headers, "body": b"",
                   "trailers": None, "protocol": "http/1.1", "method": method, "path": path,
                   "version": version}
            with self.lock:
                self.requests.append(rec)
            body = json.dumps({"server": self.name, "protocol": "http/1.1", "method": method,
                               "path": path, "conn": conn.number, "headers": headers}).encode()
            try:
                conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                self._drop(conn)
                return

    # -- responses --------------------------------------------------------------------------
    def _respond(self, conn: _Conn, sid: int) -> None:
        rec = conn.streams[sid]
        rec["responding"] = True
        hd = dict(rec["headers"])
        url = urlsplit(hd.get(":path", "/"))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        h2 = conn.h2
        if path == "/slow":
            self.timers.append((time.monotonic() + int(q.get("ms", "200")) / 1000.0,
                                lambda: self._later(conn, sid, lambda: self._summary(conn, sid))))
        elif path == "/echo":
            trailers = [(f"x-echo-{n}".encode(), v.encode()) for n, v in rec["trailers"] or []]
            h2.send_headers(sid, [(b":status", b"200"), (b"x-echo", b"1")])
            self._queue(conn, sid, rec["body"], trailers or None)
        elif path == "/chunks":
            n, size, ms = int(q.get("n", "5")), int(q.get("size", "1000")), int(q.get("ms", "20"))
            h2.send_headers(sid, [(b":status", b"200")])
            for k in range(n):
                last = k == n - 1
                self.timers.append((time.monotonic() + ms * (k + 1) / 1000.0,
                                    lambda last=last, k=k: self._later(
                                        conn, sid, lambda: self._queue(
                                            conn, sid, bytes([97 + k % 26]) * size, None, last))))
        elif path == "/big":
            h2.send_headers(sid, [(b":status", b"200"), (b"content-length", q["size"].encode())])
            conn.out[sid] = [int(q["size"]), None, True]
            self._pump(conn, sid)
        elif path == "/trailers":
            h2.send_headers(sid, [(b":status", b"200")])
            self._queue(conn, sid, b"body-before-trailers", [(b"x-trailer", b"yes")])
        elif path == "/rst":
            code = ErrorCodes.REFUSED_STREAM if q.get("code") == "refused" else ErrorCodes.INTERNAL_ERROR
            h2.reset_stream(sid, code)
            conn.streams.pop(sid, None)
        elif path == "/grpc":
            code = q.get("status", "14")
            fail = int(q.get("fail", "-1"))
            if fail >= 0:
                with self.lock:
                    seen = self.grpc_counts[url.query] = self.grpc_counts.get(url.query, 0) + 1
                if (seen - 1) % (fail + 1) >= fail:
                    code = "0"
            head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
            if q.get("where", "headers") == "headers":
                h2.send_headers(sid, head + [(b"grpc-status", code.encode())], end_stream=True)
                with self.lock:
                    conn.streams.pop(sid, None)
            else:
                h2.send_headers(sid, head)
                self._queue(conn, sid, b"\x00\x00\x00\x00\x00", [(b"grpc-status", code.encode())])
        elif path == "/grpcecho":
            body = rec["body"] * int(q.get("n", "1"))
            split = int(q.get("split", "0")) or len(body) or 1
            trailers = [(b"grpc-status", q.get("status", "0").encode())]
            if "msg" in q:
                trailers.append((b"grpc-message", q["msg"].encode()))
            trailers.append((b"x-md", b"trailing"))
            h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                  (b"x-md-head", b"leading")])
            for k in range(0, len(body), split):
                h2.send_data(sid, body[k:k + split])  # (small bodies: within the window)
            self._queue(conn, sid, b"", trailers)
        elif path == "/plain":
            body = "no gRPC here: 100% été ~\n".encode()
            h2.send_headers(sid, [(b":status", q.get("status", "200").encode()),
                                  (b"content-type", b"text/plain"),
                                  (b"content-length", b"%d" % len(body))])
            self._queue(conn, sid, body, None)
        elif path == "/garbage":
            self._send(conn)
            conn.sock.sendall(b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc")  # DATA on stream 0
        elif path == "/goaway":
            # GOAWAY first, then this (last) stream's answer: the client must take frames of
            # the streams a GOAWAY lets finish (h2 itself would refuse to send them).
            h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=sid)
            h2.state_machine.state = ConnectionState.SERVER_OPEN
            self._summary(conn, sid)
        elif path == "/goaway-refuse" and conn.number == 1:
            h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=sid - 2)  # not this one
            conn.streams.pop(sid, None)
        else:
            self._summary(conn, sid)

    def _later(self, conn: _Conn, sid: int, fn) -> None:
        if sid in conn.streams:
            try:
                fn()
            except H2Error:
                return
            self._send(conn)

    def _summary(self, conn: _Conn, sid: int) -> None:
        rec = conn.streams[sid]
        hd = dict(rec["headers"])
        body = json.dumps({"server": self.name, "protocol": "h2", "method": hd.get(":method"),
                           "path": hd.get(":path"),
                           "authority": hd.get(":authority"), "stream_id": sid,
                           "conn": conn.number, "body_len": len(rec["body"]),
                           "headers": rec["headers"]}).encode()
        conn.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/json"),
                                   (b"content-length", b"%d" % len(body))])
        self._queue(conn, sid, body, None)

    def _queue(self, conn: _Conn, sid: int, data: bytes, trailers, end: bool = True) -> None:
        """Send `data` (then trailers or END_STREAM if `end`) as the window allows; what it
        does not allow waits for the proxy's WINDOW_UPDATE (a small body too: the connection
        window may be taken by another stream the proxy has not read yet)."""
        h2 = conn.h2
        while data:
            window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if window <= 0:
                conn.waiting[sid] = (data, trailers, end)
                return
            h2.send_data(sid, data[:window])
            data = data[window:]
        if end:
            if trailers:
                h2.send_headers(sid, trailers, end_stream=True)
            else:
                h2.end_stream(sid)
            with self.lock:
                conn.streams.pop(sid, None)

    def _pump(self, conn: _Conn, sid: int) -> None:
        left = conn.out.get(sid)
        if left is None:
            return
        h2 = conn.h2
        try:
            while left[0]:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    with self.lock:
                        self.window_waits += 1
                    break
                n = min(window, left[0])
                h2.send_data(sid, b"x" * n)
                left[0] -= n
                with self.lock:
                    self.big_sent += n
            if not left[0]:
                del conn.out[sid]
                h2.end_stream(sid)
                with self.lock:
                    conn.streams.pop(sid, None)
        except H2Error:
            conn.out.pop(sid, None)
        self._send(conn)

    # -- for the tests ----------------------------------------------------------------------
    @property
    def echo_requests(self) -> list:
        """The requests as the HTTP/1.1 EchoUpstream records them: (method, path, headers,
        body), the headers by name with :authority and :scheme among them."""
        with self.lock:
            out = []
            for r in self.requests:
                h = dict(r["headers"])
                out.append((h.get(":method", r.get("method")), h.get(":path", r.get("path")),
                            {k: v for k, v in h.items() if k not in (":method", ":path")},
                            r["body"]))
            return out

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.01)
        with self.lock:
            return predicate()
