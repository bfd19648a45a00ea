"""A real mux server on 127.0.0.1 for the tests: one thread with its own sockets and selector,
serving every connection's streams interleaved, and recording what it saw.

Per-path behaviour (the path's query string carries the parameters), decided when the request
ends:
- `/slow?ms=200`: the whole response (200, body `slow`) after `ms` milliseconds;
- `/stream?chunks=3&ms=30`: the head at once, then `chunks` DATA frames `ms` apart, the last
  one DATA_END (so two such streams' frames interleave on the wire);
- `/echo`: 200 with the request body (and `x-trailers: n` with the number of request trailers);
- `/reset`: a RESET of that stream; `/hold`: no answer at all (until the client resets it);
- `/goaway`: answered (200) and then a GOAWAY: the connection takes no new stream;
- anything else: 200 with body `ok:<path>`.
What it records (read under `lock`, or with `snapshot()`): `connections` (one ConnRecord each:
frames in and out in wire order, the most streams open at once) and `streams` (StreamRecord:
connection, id, method, path, request body, whether the client reset it).
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

from .frames import (DATA, DATA_END, GOAWAY, HEADERS, HEADERS_END, RESET, TRAILERS, FrameReader,
                     frame, header_block, parse_block)

__all__ = ["MuxBackend", "ConnRecord", "StreamRecord"]

_REQUEST_ENDS = (HEADERS_END, DATA_END, TRAILERS)


class StreamRecord:
    def __init__(self, conn: int, sid: int, fields) -> None:
        pseudo = dict((n, v) for n, v in fields if n.startswith(b":"))
        self.conn = conn
        self.id = sid
        self.method = pseudo.get(b":method", b"").decode()
        self.path = pseudo.get(b":path", b"").decode()
        self.headers = [(n, v) for n, v in fields if not n.startswith(b":")]
        self.body = b""
        self.trailers: list = []
        self.ended = False          # the request ended
        self.reset_by_client = False
        self.answered = False       # the response (or our RESET) went out completely

    def __repr__(self) -> str:
        return f"StreamRecord(conn={self.conn}, id={self.id}, path={self.path!r})"


class ConnRecord:
    def __init__(self, index: int) -> None:
        self.index = index
        self.frames_in: list[tuple[bytes, int]] = []
        self.frames_out: list[tuple[bytes, int]] = []
        self.open: set[int] = set()
        self.max_open = 0
        self.closed = False


class _Conn:
    def __init__(self, sock: socket.socket, record: ConnRecord) -> None:
        self.sock = sock
        self.record = record
        self.reader = FrameReader()
        self.streams: dict[int, StreamRecord] = {}


class MuxBackend:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        # MuxBackend.lock guards `connections`, `streams` and the records in them (written by
        # the server thread, read by the test thread). Never held across socket I/O.
        self.lock = threading.Lock()
        self.connections: list[ConnRecord] = []
        self.streams: list[StreamRecord] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._timers: list = []   # heap of (due, seq, fn)
        self._seq = itertools.count()
        self._stopping = False
        self._conns: list[_Conn] = []
        self._thread = threading.Thread(target=self._run, name="mux-backend", daemon=True)
        self._thread.start()

    # -- test thread --------------------------------------------------------------------------
    def close(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:  # the loop saw _stopping on its own and ended (its end closed _wake_r)
            pass
        self._thread.join(5)
        self._wake_w.close()  # here, not by the loop: this thread writes to it

    def stream(self, path: str) -> StreamRecord | None:
        with self.lock:
            return next((s for s in self.streams if s.path == path), None)

    def connection_count(self) -> int:
        with self.lock:
            return len(self.connections)

    # -- server thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, _ in self._sel.select(timeout):
                    if key.data == "wake":
                        self._wake_r.recv(64)
                    elif key.data is None:
                        self._accept()
                    else:
                        self._read(key.data)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    heapq.heappop(self._timers)[2]()
        finally:
            for c in self._conns:
                c.sock.close()
            self.listener.close()
            self._wake_r.close()
            self._sel.close()

    def _later(self, ms: float, fn) -> None:
        heapq.heappush(self._timers, (time.monotonic() + ms / 1000.0, next(self._seq), fn))

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)  # frames are small: sendall never waits long
        with self.lock:
            record = ConnRecord(len(self.connections))
            self.connections.append(record)
        c = _Conn(sock, record)
        self._conns.append(c)
        self._sel.register(sock, selectors.EVENT_READ, c)

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._sel.unregister(c.sock)
            c.sock.close()
            self._conns.remove(c)
            with self.lock:
                c.record.closed = True
            return
        for kind, sid, payload in c.reader.feed(data):
            self._on_frame(c, kind, sid, payload)

    def _on_frame(self, c: _Conn, kind: bytes, sid: int, payload: bytes) -> None:
        rec = c.record
        with self.lock:
            rec.frames_in.append((kind, sid))
            s = c.streams.get(sid)
            if kind in (HEADERS, HEADERS_END):
                s = c.streams[sid] = StreamRecord(rec.index, sid, parse_block(payload))
                self.streams.append(s)
                rec.open.add(sid)
                rec.max_open = max(rec.max_open, len(rec.open))
            elif s is None:
                return
            elif kind in (DATA, DATA_END):
                s.body += payload
            elif kind == TRAILERS:
                s.trailers = parse_block(payload)
            elif kind == RESET:
                s.reset_by_client = True
                rec.open.discard(sid)
                return
            if kind in _REQUEST_ENDS:
                s.ended = True
        if kind in _REQUEST_ENDS:
            self._respond(c, s)

    def _send(self, c: _Conn, s: StreamRecord | None, kind: bytes, sid: int, payload: bytes = b"") -> None:
        if s is not None and s.reset_by_client:
            return  # the client gave up on this stream: nothing more goes out for it
        if c.sock.fileno() < 0:
            return
        try:
            c.sock.sendall(frame(kind, sid, payload))
        except OSError:
            return
        with self.lock:
            c.record.frames_out.append((kind, sid))
            if s is not None and kind in (HEADERS_END, DATA_END, TRAILERS, RESET):
                s.answered = True
                c.record.open.discard(sid)

    def _respond(self, c: _Conn, s: StreamRecord) -> None:
        url = urlsplit(s.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        ok = header_block([(b":status", b"200")])
        if path == "/slow":
            self._later(float(q.get("ms", 200)),
                        lambda: self._send(c, s, HEADERS, s.id, ok) or self._send(c, s, DATA_END, s.id, b"slow"))
        elif path == "/stream":
            chunks, ms = int(q.get("chunks", 3)), float(q.get("ms", 30))
            self._send(c, s, HEADERS, s.id, ok)
            for i in range(chunks):
                kind = DATA_END if i == chunks - 1 else DATA
                self._later(ms * (i + 1), lambda kind=kind, i=i: self._send(
                    c, s, kind, s.id, b"%s#%d;" % (s.path.encode(), i)))
        elif path == "/echo":
            head = header_block([(b":status", b"200"), (b"x-trailers", b"%d" % len(s.trailers))])
            self._send(c, s, HEADERS, s.id, head)
            self._send(c, s, DATA_END, s.id, s.body)
        elif path == "/reset":
            self._send(c, s, RESET, s.id, b"refused")
        elif path == "/hold":
            pass
        elif path == "/goaway":
            self._send(c, s, HEADERS_END, s.id, ok)
            self._send(c, None, GOAWAY, 0)
        else:
            self._send(c, s, HEADERS, s.id, ok)
            self._send(c, s, DATA_END, s.id, b"ok:" + s.path.encode())
