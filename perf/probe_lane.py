"""A yardstick for option 1 of RESULTS.md ("a specialised HTTP/1 path"): the floor probe plus
the per-request work ftproxy does for perf/configs/http.yaml, written as one fused path.

Job: bound from below what a per-route specialised path would cost, next to ftproxy, the
floor probe and HAProxy in one peers.sh run (or under `PROBE=lane perf/instr_count.sh`).
Per request it does what ftproxy does for this config, each step once and inline:
- framing policy with the codec's own `framing.analyze`, header count/size limit checks;
- Envoy's request rules for this HCM (hop-by-hop and Connection-named fields dropped,
  x-forwarded-proto added, x-request-id generated), host sent first, the route's raw-prefix
  match and its cluster;
- the cluster's circuit breaker (a lock, as ftproxy's cross-worker limits), a per-worker pool
  of idle upstream connections (most recent first), byte and request counters;
- the response rules: hop-by-hop dropped, x-envoy-upstream-service-time, date (formatted once a
  second), `server: envoy`, Content-Length kept, else chunked; keep-alive from both sides;
- Envoy's counters (downstream_rq_total/_http1_total/_active/_completed/_2xx,
  upstream_rq_total/_active/_2xx/_200/_completed, cx rx/tx bytes) and the two histograms
  (downstream_rq_time, upstream_rq_time) with the proxy's own `Histogram`;
- timestamps for a stream record (start, upstream start, first byte, end) and the idle time.
It leaves out what a specialised path would still need: timeouts that fire, request bodies,
flow control, errors, retries, pipelining, access logs. So it is a lower bound.

    PROXY_NAME=lane PROXY_CMD="exec .venv/bin/python perf/probe_lane.py" ../shared/tools/peers.sh
Listens on 127.0.0.1:18090, forwards to 127.0.0.1:18080 (peers.sh's upstream); with
PERF_PORT_BASE set, on that base's ports (perf/ports.py, as probe_floor.py). Loopback only.
Must not: be imported by the proxy.
"""

from __future__ import annotations

import email.utils
import os
import socket
import sys
import threading
import time
from binascii import hexlify

import httptools

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from probe_floor import UPSTREAM, serve  # noqa: E402  (perf/ is on sys.path: run as a script)
from probe_floor import Loop as FloorLoop  # noqa: E402
from proxy.http.codec.framing import SPECIAL, analyze  # noqa: E402
from proxy.stats.histogram import Histogram  # noqa: E402
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"te", b"proxy-authenticate", b"trailer"})
RESPONSE_DROP = HOP_BY_HOP | {b"server", b"content-length"}
MS = tuple(b"%d" % i for i in range(1000))


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Stats:
    def __init__(self, names: str) -> None:
        for name in names.split():
            setattr(self, name, Counter())


HCM = Stats("rq_total rq_http1_total rq_active rq_completed rq_2xx cx_rx_bytes cx_tx_bytes")
CLUSTER = Stats("rq_total rq_active rq_2xx rq_200 rq_completed cx_rx_bytes cx_tx_bytes")
RQ_TIME, UPSTREAM_RQ_TIME = Histogram(), Histogram()


class Breaker:
    """max_requests, shared by workers in ftproxy: a lock around the count."""

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.limit, self.active = limit, 0

    def acquire(self) -> bool:
        with self.lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.active -= 1


BREAKER = Breaker(100000)


class Loop(FloorLoop):
    """The floor probe's loop, plus the end-of-iteration flush, the pool and the clocks."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes: list = []
        self.idle: list = []          # the pool: idle upstream connections, most recent last
        self.date_second, self.date = 0, b""
        self.rid_prefix, self.rid = b"%08x-0000-4000-8000-" % os.getpid(), 0

    def http_date(self) -> bytes:
        now = int(time.time())
        if now != self.date_second:
            self.date_second = now
            self.date = email.utils.formatdate(now, usegmt=True).encode()
        return self.date

    def run(self) -> None:
        handlers = self.handlers
        while True:
            for fd, _ in self.epoll.poll():
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
            if self.flushes:
                flushes, self.flushes = self.flushes, []
                for conn in flushes:
                    try:
                        conn.sock.sendmsg(conn.out)
                    except OSError:
                        pass  # closed by its peer in this iteration
                    conn.out = []


class Downstream:
    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        self.headers: list = []
        self.specials: list = []
        self.url: list = []
        self.on_url = self.url.append  # before the parser: httptools looks callbacks up once
        self.parser = httptools.HttpRequestParser(self)
        self.out: list = []
        self.keep_alive = True
        self.data = b""
        self.start = self.start_time = self.idle_since = 0.0

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.lower(), value.rstrip())
        self.headers.append(pair)
        if pair[0] in SPECIAL:
            self.specials.append(pair)

    def on_headers_complete(self) -> None:
        loop = self.loop
        self.start_time, self.start = time.time(), time.monotonic()
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        self.url.clear()
        headers, self.headers = self.headers, []
        data = self.data  # the version off the request line, as ftproxy's codec does
        end = data.find(b"\r\n")
        version = b"1.1" if data[end - 8:end] == b"HTTP/1.1" else b"1.0"
        if len(headers) > 100:
            raise ValueError("431")
        _, _, keep_alive, _, _, _ = analyze(self.specials, version, True)
        self.specials.clear()
        self.keep_alive = keep_alive
        HCM.rq_total.value += 1
        HCM.rq_http1_total.value += 1
        HCM.rq_active.value += 1
        if not url.startswith(b"/"):  # the route: prefix "/" -> cluster "upstream"
            raise ValueError("404")
        # Envoy's request rules for this HCM, and the upstream head, in one pass.
        host = b""
        parts = [self.parser.get_method() + b" " + url + b" HTTP/1.1", b""]
        has_proto = has_rid = False
        for field in headers:
            n = field[0]
            if n in HOP_BY_HOP:
                continue
            if n == b"host":
                host = field[1]
                continue
            if n == b"x-forwarded-proto":
                has_proto = True
            elif n == b"x-request-id":
                has_rid = True
            parts.append(b": ".join(field))
        parts[1] = b"host: " + host
        if not has_proto:
            parts.append(b"x-forwarded-proto: http")
        if not has_rid:
            loop.rid += 1
            parts.append(b"x-request-id: " + loop.rid_prefix + hexlify(loop.rid.to_bytes(6)))
        parts += (b"", b"")
        if not BREAKER.acquire():
            raise ValueError("503 UO")
        CLUSTER.rq_total.value += 1
        CLUSTER.rq_active.value += 1
        up = loop.idle.pop() if loop.idle else Upstream(loop)
        up.down = self
        up.start = time.monotonic()
        head = b"\r\n".join(parts)
        CLUSTER.cx_tx_bytes.value += len(head)
        up.out.append(head)
        loop.flushes.append(up)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove(self.sock)
            return
        HCM.cx_rx_bytes.value += len(data)
        self.data = data
        self.parser.feed_data(data)

    def respond(self, status: int, headers: list, body: list, up_keep_alive: bool) -> None:
        loop = self.loop
        parts = [b"HTTP/1.1 %d OK" % status]
        length = None
        has_date = False
        for field in headers:
            n = field[0]
            if n in RESPONSE_DROP:
                if n == b"content-length":
                    length = field
                continue
            if n == b"date":
                has_date = True
            parts.append(b": ".join(field))
        if not has_date:
            parts.append(b"date: " + loop.http_date())
        parts.append(b"server: envoy")
        if length is not None:
            parts.append(b": ".join(length))
        else:
            parts.append(b"transfer-encoding: chunked")
            body = [b"%x\r\n%s\r\n" % (len(b"".join(body)), b"".join(body)), b"0\r\n\r\n"]
        if not self.keep_alive:
            parts.append(b"connection: close")
        parts += (b"", b"")
        head = b"\r\n".join(parts)
        HCM.cx_tx_bytes.value += len(head) + sum(map(len, body))
        self.out.append(head)
        self.out += body
        loop.flushes.append(self)
        now = time.monotonic()
        HCM.rq_active.value -= 1
        HCM.rq_completed.value += 1
        HCM.rq_2xx.value += 1
        RQ_TIME.record((now - self.start) * 1000.0)
        self.idle_since = now


class Upstream:
    def __init__(self, loop: Loop) -> None:
        self.loop, self.down = loop, None
        self.sock = socket.create_connection(UPSTREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.add(self.sock, self.on_readable)
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list = []
        self.specials: list = []
        self.out: list = []
        self.body: list = []
        self.status = 0
        self.start = 0.0
        self.keep_alive = True
        self.data = b""

    on_header = Downstream.on_header

    def on_headers_complete(self) -> None:
        now = time.monotonic()
        self.status = status = self.parser.get_status_code()
        version = b"1.1" if self.data[5:8] == b"1.1" else b"1.0"
        _, _, self.keep_alive, _, _, _ = analyze(self.specials, version, False)
        self.specials.clear()
        ms = int((now - self.start) * 1000)
        self.headers.append((b"x-envoy-upstream-service-time", MS[ms] if ms < 1000 else b"%d" % ms))
        CLUSTER.rq_2xx.value += 1 if 200 <= status < 300 else 0
        CLUSTER.rq_200.value += 1 if status == 200 else 0
        CLUSTER.rq_completed.value += 1
        UPSTREAM_RQ_TIME.record(ms)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        down, self.down = self.down, None
        headers, self.headers = self.headers, []
        body, self.body = self.body, []
        down.respond(self.status, headers, body, self.keep_alive)
        CLUSTER.rq_active.value -= 1
        BREAKER.release()
        if self.keep_alive:
            self.loop.idle.append(self)
        else:
            self.loop.remove(self.sock)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            if self in self.loop.idle:
                self.loop.idle.remove(self)
            self.loop.remove(self.sock)
            return
        CLUSTER.cx_rx_bytes.value += len(data)
        self.data = data
        self.parser.feed_data(data)


def main() -> None:
    serve(Loop(), lambda loop, sock: Downstream(loop, sock).on_readable)


if __name__ == "__main__":
    main()
