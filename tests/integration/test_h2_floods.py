"""Envoy's HTTP/2 flood limits on the downstream codec, through the running proxy: each flood
(raw frames from a client written with hyperframe, or a peer that never reads) closes that
connection — with GOAWAY ENHANCE_YOUR_CALM when it can still be written — and counts its
`http2.*` stat, while a well-behaved client on another connection is served."""

from __future__ import annotations

import socket
import time

import pytest

from h2.config import H2Configuration
from h2.connection import H2Connection
from hyperframe.frame import (DataFrame, Frame, PingFrame, PriorityFrame,
                              WindowUpdateFrame)

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .test_h2_downstream import H2Client

# Every test runs on both downstream HTTP/2 engines (ours and h2, the reference).
pytestmark = pytest.mark.usefixtures("h2_engine")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _proxy(upstream, **h2) -> ProxyUnderTest:
    return ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                             [static_cluster("c1", upstream.port)], codec_type="HTTP2",
                                             http2_protocol_options=h2))


def _raw_client(port: int) -> tuple[socket.socket, H2Connection]:
    """A socket past the preface and SETTINGS, and an h2 encoder for HEADERS blocks."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def _open_stream(s: socket.socket, conn: H2Connection, sid: int = 1) -> None:
    conn.send_headers(sid, [(b":method", b"POST"), (b":path", b"/flood"), (b":scheme", b"http"),
                            (b":authority", b"h2.test")])
    s.sendall(conn.data_to_send())


def _goaway_after(s: socket.socket, timeout: float = 5.0) -> int | None:
    """Read until the connection closes; the GOAWAY error code seen, if any."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    code, i = None, 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == 7:  # GOAWAY
            frame, _ = Frame.parse_frame_header(memoryview(data[i:i + 9]))
            frame.parse_body(memoryview(data[i + 9:i + 9 + length]))
            code = frame.error_code
        i += 9 + length
    return code


def _served(port: int) -> bool:
    c = H2Client(port)
    sid = c.request(b"GET", b"/fine")
    c.wait(lambda: sid in c.ended)
    ok = c.status.get(sid) == 200
    c.sock.close()
    return ok


ENHANCE_YOUR_CALM = 0xB


def test_empty_data_frames_flood(upstream):
    p = _proxy(upstream, max_consecutive_inbound_frames_with_empty_payload=3)
    try:
        s, conn = _raw_client(p.port)
        _open_stream(s, conn)
        s.sendall(b"".join(DataFrame(1, b"").serialize() for _ in range(10)))
        assert _goaway_after(s) == ENHANCE_YOUR_CALM
        s.close()
        assert p.counters()["http2.inbound_empty_frames_flood"] == 1
        assert _served(p.port)
    finally:
        p.stop()


def test_empty_frames_under_the_limit_are_fine(upstream):
    p = _proxy(upstream, max_consecutive_inbound_frames_with_empty_payload=3)
    try:
        c = H2Client(p.port)
        sid = c.request(b"POST", b"/ok", end=False)
        for _ in range(3):
            c.data(sid, b"")
        c.data(sid, b"x")   # a payload resets the count
        for _ in range(3):
            c.data(sid, b"")
        c.data(sid, b"", end=True)
        c.wait(lambda: sid in c.ended)
        assert c.status[sid] == 200
        assert p.counters()["http2.inbound_empty_frames_flood"] == 0
    finally:
        p.stop()


def test_priority_frames_flood(upstream):
    p = _proxy(upstream, max_inbound_priority_frames_per_stream=5)
    try:
        s, _ = _raw_client(p.port)
        s.sendall(b"".join(PriorityFrame(3 + 2 * i, depends_on=0, stream_weight=16).serialize()
                           for i in range(20)))
        assert _goaway_after(s) == ENHANCE_YOUR_CALM
        s.close()
        assert p.counters()["http2.inbound_priority_frames_flood"] == 1
    finally:
        p.stop()


def test_window_update_frames_flood(upstream):
    p = _proxy(upstream)
    try:
        s, _ = _raw_client(p.port)
        # 5 + 2 x (0 streams + 10 x 0 DATA frames sent) = 5 allowed on a fresh connection.
        s.sendall(b"".join(WindowUpdateFrame(0, window_increment=1).serialize() for _ in range(10)))
        assert _goaway_after(s) == ENHANCE_YOUR_CALM
        s.close()
        assert p.counters()["http2.inbound_window_update_frames_flood"] == 1
    finally:
        p.stop()


def test_a_ping_flood_from_a_peer_that_never_reads(upstream):
    p = _proxy(upstream, max_outbound_control_frames=100)
    try:
        s, _ = _raw_client(p.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ping = PingFrame(0, opaque_data=b"12345678").serialize()
        # Until the ACKs fill the kernel's buffers on both sides (megabytes on loopback) and
        # the proxy's queue passes its limit: seconds, more on a loaded machine.
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                s.sendall(ping * 2000)  # and never read the PING ACKs
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, "the proxy kept the connection of a peer that does not read its ACKs"
        s.close()
        assert p.wait_for(lambda: p.counters()["http2.outbound_control_flood"] == 1)
        assert _served(p.port)
    finally:
        p.stop()


def test_http2_stats_count_resets_and_trailers(upstream):
    p = _proxy(upstream)
    try:
        c = H2Client(p.port)
        sid = c.request(b"POST", b"/t", body=b"x", end=False)
        c.conn.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
        c.flush()
        c.wait(lambda: sid in c.ended)
        sid2 = c.request(b"POST", b"/r", end=False)
        c.conn.reset_stream(sid2)
        c.flush()
        assert p.wait_for(lambda: p.counters().get("http2.rx_reset") == 1)
        assert p.counters()["http2.trailers"] == 1
    finally:
        p.stop()


def test_the_hpack_table_size_is_advertised(upstream):
    p = _proxy(upstream, hpack_table_size=1024)
    try:
        c = H2Client(p.port)
        sid = c.request(b"GET", b"/x")
        c.wait(lambda: sid in c.ended)
        assert c.conn.remote_settings.header_table_size == 1024
    finally:
        p.stop()
