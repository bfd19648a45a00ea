"""HTTP/2 from clients (h2c, prior knowledge; codec_type AUTO chooses it from the connection
preface): real clients (curl, h2load) and an `h2`-library client for what they cannot do
(interleaved bodies, RST_STREAM, a small window), through the running proxy to HTTP/1.1
upstreams. Each stream is its own request: one's reset, refusal or slow body leaves the
others alone."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded,
                       StreamReset)

from .harness import front_proxy_config, static_cluster
from .servers import AcceptLoop

# Every test runs on both downstream HTTP/2 engines (ours and h2, the reference).
pytestmark = pytest.mark.usefixtures("h2_engine")

ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]


def _proxy(proxy_factory, port: int, **hcm):
    return proxy_factory(front_proxy_config(ROUTES, [static_cluster("c1", port)], **hcm))


class H2Client:
    """A blocking h2c client: send requests, read events per stream."""

    def __init__(self, port: int, window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({4: window})  # SETTINGS_INITIAL_WINDOW_SIZE
        self.sock.sendall(self.conn.data_to_send())
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict] = {}
        self.body: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: dict[int, int] = {}
        self.goaway: ConnectionTerminated | None = None
        self.ack = True

    def request(self, method: bytes, path: bytes, body: bytes | None = None, end: bool = True,
                extra=()) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(b":method", method), (b":path", path), (b":scheme", b"http"),
                   (b":authority", b"h2.test")] + list(extra)
        self.conn.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def data(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def wait(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out: status={self.status} reset={self.reset} goaway={self.goaway}"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                assert predicate(), "connection closed"
                return
            for ev in self.conn.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    self.status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                    self.headers[ev.stream_id] = dict(ev.headers)
                elif isinstance(ev, DataReceived):
                    self.body.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if self.ack:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, StreamEnded):
                    self.ended.add(ev.stream_id)
                elif isinstance(ev, StreamReset):
                    self.reset[ev.stream_id] = ev.error_code
                elif isinstance(ev, ConnectionTerminated):
                    self.goaway = ev
                    if ev.error_code == ErrorCodes.NO_ERROR:
                        # h2 takes a received GOAWAY as the connection's end; RFC 9113 §6.8
                        # lets the streams up to its last_stream_id finish: keep reading them.
                        self.conn.state_machine.state = ConnectionState.CLIENT_OPEN
            self.flush()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_h2c_and_http11_on_one_auto_listener(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge",
                          f"http://127.0.0.1:{p.port}/via-h2?q=1"], capture_output=True, timeout=10)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), out.stdout[:200]
    seen = json.loads(body)
    assert seen["path"] == "/via-h2?q=1" and seen["headers"]["host"] == f"127.0.0.1:{p.port}"
    assert not any(k.startswith(":") for k in seen["headers"])
    h1 = subprocess.run(["curl", "-s", "-i", f"http://127.0.0.1:{p.port}/via-h1"],
                        capture_output=True, timeout=10)
    assert h1.stdout.startswith(b"HTTP/1.1 200")
    c = p.counters()
    assert c["http.ingress_http.downstream_cx_http2_total"] == 1
    assert c["http.ingress_http.downstream_rq_http2_total"] == 1
    assert c["http.ingress_http.downstream_cx_http1_total"] == 1


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
def test_h2load_multiplexed_streams_all_succeed(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    out = subprocess.run(["h2load", "-n", "300", "-c", "2", "-m", "10",
                          f"http://127.0.0.1:{p.port}/load"], capture_output=True, timeout=60,
                         text=True)
    assert "300 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    c = p.counters()
    assert c["http.ingress_http.downstream_rq_http2_total"] == 300
    assert c["http.ingress_http.downstream_cx_http2_total"] == 2
    assert c["http.ingress_http.downstream_rq_2xx"] == 300


def test_interleaved_request_bodies_on_one_connection(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    c = H2Client(p.port)
    try:
        a = c.request(b"POST", b"/a", end=False)
        b = c.request(b"POST", b"/b", end=False)
        for _ in range(3):
            c.data(b, b"b" * 1000)
            c.data(a, b"a" * 10)
        c.data(a, b"", end=True)
        c.data(b, b"", end=True)
        c.wait(lambda: {a, b} <= c.ended)
        assert json.loads(c.body[a])["body_len"] == 30
        assert json.loads(c.body[b])["body_len"] == 3000
        assert c.status[a] == c.status[b] == 200
    finally:
        c.close()


def test_a_client_rst_stream_ends_that_stream_only(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    c = H2Client(p.port)
    try:
        slow = c.request(b"GET", b"/delay/0.5")
        fast = c.request(b"GET", b"/fast")
        c.conn.reset_stream(slow, ErrorCodes.CANCEL)
        c.flush()
        c.wait(lambda: fast in c.ended)
        assert c.status[fast] == 200 and slow not in c.status
        assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_rx_reset") == 1)
        after = c.request(b"GET", b"/after")  # the connection goes on
        c.wait(lambda: after in c.ended)
        assert c.status[after] == 200
    finally:
        c.close()


def test_streams_past_max_concurrent_streams_are_refused(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port, http2_protocol_options={"max_concurrent_streams": 1})
    c = H2Client(p.port)
    try:
        first = c.request(b"GET", b"/delay/0.3")
        second = c.request(b"GET", b"/refused")
        c.wait(lambda: first in c.ended and second in c.reset)
        assert c.reset[second] == ErrorCodes.REFUSED_STREAM
        assert c.status[first] == 200
    finally:
        c.close()


def test_a_large_response_flows_through_small_client_windows(proxy_factory, upstream):
    """The codec sends within the client's windows and the rest as WINDOW_UPDATEs open them."""
    p = _proxy(proxy_factory, upstream.port)
    c = H2Client(p.port, window=65535)
    try:
        sid = c.request(b"GET", b"/bytes/3000000")
        c.wait(lambda: sid in c.ended, timeout=20)
        assert c.status[sid] == 200 and len(c.body[sid]) == 3000000
    finally:
        c.close()


class CountingUpstream(AcceptLoop):
    """HTTP/1.1: answers `/big/<n>` with n bytes in 64 KiB writes, counting what it got into
    its socket (`sent`); blocked writes mean the proxy stopped reading. Anything else: 200 ok."""

    def __init__(self) -> None:
        self.sent = 0
        super().__init__("counting-upstream")

    def handle(self, s: socket.socket, n: int) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if not path.startswith(b"/big/"):
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    continue
                size = int(path[5:])
                s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                chunk = b"x" * 65536
                left = size
                while left:
                    piece = chunk[:min(left, 65536)]
                    s.sendall(piece)
                    self.sent += len(piece)
                    left -= len(piece)
        except OSError:
            return
        finally:
            s.close()


def test_a_client_that_reads_slowly_holds_back_only_its_own_stream(proxy_factory):
    """A stream whose client window stays shut stops the proxy reading its upstream once the
    stream's buffer passes the buffer limit (per_connection_buffer_limit_bytes: Envoy's stream
    watermark), instead of buffering the whole response; other streams of the connection and
    other connections go on; once the client reads, the response completes intact."""
    up = CountingUpstream()
    size = 32 * 1024 * 1024
    limit = 256 * 1024
    try:
        cfg = front_proxy_config(ROUTES, [static_cluster("c1", up.port)])
        cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = limit
        p = proxy_factory(cfg)
        c = H2Client(p.port)
        try:
            c.ack = False  # read nothing past the 64 KiB initial window
            sid = c.request(b"GET", b"/big/%d" % size)
            c.wait(lambda: len(c.body.get(sid, b"")) >= 65535, timeout=10)
            # A second stream of this connection (its answer waits for the connection's
            # window, which the first stream used up) and another connection, served at once.
            other = c.request(b"GET", b"/small")
            h = H2Client(p.port)
            try:
                sid2 = h.request(b"GET", b"/other")
                h.wait(lambda: sid2 in h.ended)
                assert h.status[sid2] == 200 and h.body[sid2] == b"ok"
            finally:
                h.close()
            # The upstream stops once the stream's buffer limit and the kernel's socket buffers
            # (the proxy's receive buffer grows to a few MiB on loopback) are full: far short of
            # the response.
            stalled, deadline = -1, time.monotonic() + 10
            while up.sent != stalled and time.monotonic() < deadline:
                stalled = up.sent
                time.sleep(0.3)
            assert up.sent == stalled, "the upstream kept being read with the client's window shut"
            assert stalled < 12 * 1024 * 1024, stalled
            got = len(c.body[sid])
            c.conn.acknowledge_received_data(got, sid)
            c.ack = True
            c.flush()
            c.wait(lambda: sid in c.ended and other in c.ended, timeout=30)
            assert len(c.body[sid]) == size and c.body[sid] == b"x" * size
            assert c.status[other] == 200 and c.body[other] == b"ok"
        finally:
            c.close()
    finally:
        up.close()


def test_a_protocol_error_is_a_goaway_and_others_are_served(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    bad = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None,
                                            validate_outbound_headers=False,
                                            normalize_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                              (b":authority", b"x"), (b"Upper-Case", b"refused")], end_stream=True)
        bad.sendall(conn.data_to_send())
        got = b""
        while chunk := bad.recv(65536):
            got += chunk
        events = conn.receive_data(got)
        assert any(isinstance(e, ConnectionTerminated) and e.error_code == ErrorCodes.PROTOCOL_ERROR
                   for e in events), events
    finally:
        bad.close()
    assert p.counters()["http.ingress_http.downstream_cx_protocol_error"] == 1
    c = H2Client(p.port)
    try:
        sid = c.request(b"GET", b"/still-served")
        c.wait(lambda: sid in c.ended)
        assert c.status[sid] == 200
    finally:
        c.close()


def test_codec_type_http2_and_cookie_crumbs(proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port, codec_type="HTTP2")
    c = H2Client(p.port)
    try:
        sid = c.request(b"GET", b"/cookies", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        c.wait(lambda: sid in c.ended)
        assert json.loads(c.body[sid])["headers"]["cookie"] == "a=1; b=2"
    finally:
        c.close()


def test_rapid_reset_closes_the_connection_and_spares_others(proxy_factory, upstream):
    """CVE-2023-44487: a client that opens streams and resets them before any response gets
    GOAWAY(ENHANCE_YOUR_CALM) once it passed the threshold; a well-behaved client is served."""
    from proxy.http.codec.http2_server import PREMATURE_RESET_MIN
    p = _proxy(proxy_factory, upstream.port)
    abuser = H2Client(p.port)
    try:
        for _ in range(PREMATURE_RESET_MIN + 10):
            sid = abuser.request(b"GET", b"/delay/1")
            abuser.conn.reset_stream(sid, ErrorCodes.CANCEL)
        abuser.flush()
        abuser.wait(lambda: abuser.goaway is not None, timeout=10)
        assert abuser.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        abuser.close()
    good = H2Client(p.port)
    try:
        sid = good.request(b"GET", b"/well-behaved")
        good.wait(lambda: sid in good.ended)
        assert good.status[sid] == 200
    finally:
        good.close()
    assert p.counters()["http.ingress_http.downstream_cx_protocol_error"] == 1


def test_h2_downstream_to_an_h2_upstream_streams_end_to_end(proxy_factory):
    """HTTP/2 on both sides: three client streams, one of them reset by the upstream, on one
    downstream and one upstream connection; the others are answered."""
    from tests.h2_backend import H2Backend
    from .test_h2_upstream import h2_cluster
    backend = H2Backend()
    try:
        p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "h2c"}}],
                                             [h2_cluster(backend.port)]))
        c = H2Client(p.port)
        try:
            a = c.request(b"POST", b"/echo", body=b"both sides h2")
            b = c.request(b"GET", b"/rst")
            d = c.request(b"GET", b"/slow?ms=100")
            c.wait(lambda: {a, d} <= c.ended and b in c.status)
            assert c.status[a] == 200 and c.body[a] == b"both sides h2"
            assert c.status[b] == 503 and c.status[d] == 200
            assert backend.connections == 1
            counters = p.counters()
            assert counters["http.ingress_http.downstream_cx_http2_total"] == 1
            assert counters["cluster.h2c.upstream_cx_http2_total"] == 1
        finally:
            c.close()
    finally:
        backend.close()


def test_a_header_block_over_max_request_headers_kb_is_refused(proxy_factory, upstream):
    """The decoded header list is capped by max_request_headers_kb (an HPACK bomb too): a
    connection error; the limit is advertised (SETTINGS_MAX_HEADER_LIST_SIZE); others go on."""
    p = _proxy(proxy_factory, upstream.port, max_request_headers_kb=4)
    c = H2Client(p.port)
    try:
        c.wait(lambda: c.conn.remote_settings.max_header_list_size == 4096)
        small = c.request(b"GET", b"/small", extra=[(b"x-fits", b"a" * 1000)])
        c.wait(lambda: small in c.ended)
        assert c.status[small] == 200
        c.request(b"GET", b"/big", extra=[(b"x-big", b"a" * 8000)])
        c.wait(lambda: c.goaway is not None)
        assert c.goaway.error_code != ErrorCodes.NO_ERROR
    finally:
        c.close()
    assert p.counters()["http.ingress_http.downstream_cx_protocol_error"] == 1
    good = H2Client(p.port)
    try:
        sid = good.request(b"GET", b"/after")
        good.wait(lambda: sid in good.ended)
        assert good.status[sid] == 200
    finally:
        good.close()
