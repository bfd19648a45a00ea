"""tcp_proxy's zero-copy relay (splice_relay): it is the path taken on Linux, moves bytes and
counts them, bounds buffering when a peer stops reading, honours the idle timeout, leaks no
fds over 50 sessions, and falls back to copying through Python when splice is refused."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from proxy.network import splice_relay, tcp_proxy

from .servers import AcceptLoop, TcpEchoUpstream
from .test_tcp_proxy import _recv_until_eof, tcp_proxy_config

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not splice_relay.splice_supported(), reason="no splice(2) here")


@pytest.fixture
def echo():
    u = TcpEchoUpstream()
    yield u
    u.close()


class SinkUpstream(AcceptLoop):
    """Accepts connections and never reads from them (until closed)."""

    def __init__(self) -> None:
        self.conns: list[socket.socket] = []
        super().__init__("sink-upstream")

    def handle(self, conn: socket.socket, n: int) -> None:
        self.conns.append(conn)

    def close(self) -> None:
        super().close()
        for c in self.conns:
            c.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _echo_roundtrip(port: int, msg: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        return _recv_until_eof(s)


def _record_relay_starts(monkeypatch) -> list:
    """The SpliceRelays started from now on (each still starts)."""
    started: list = []
    real_start = splice_relay.SpliceRelay.start

    def spy(self):
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(splice_relay.SpliceRelay, "start", spy)
    return started


def test_sessions_use_splice_relay_and_count_bytes_both_ways(proxy_factory, echo, monkeypatch):
    started = _record_relay_starts(monkeypatch)
    p = proxy_factory(tcp_proxy_config(echo.port, stat_prefix="sp"))
    assert _echo_roundtrip(p.port, b"a" * 300_000) == b"a" * 300_000
    assert len(started) == 1
    assert p.wait_for(lambda: p.gauges().get("tcp.sp.downstream_cx_active") == 0)
    # (tcp_proxy's _finish lowers downstream_cx_active before it adds the byte totals: wait.)
    assert p.wait_for(lambda: p.counters().get("tcp.sp.downstream_cx_tx_bytes_total") == 300_000)
    c = p.counters()
    assert c["tcp.sp.downstream_cx_rx_bytes_total"] == 300_000
    assert c["cluster.echo.upstream_cx_rx_bytes_total"] == 300_000
    assert c["cluster.echo.upstream_cx_tx_bytes_total"] == 300_000
    assert c["cluster.echo.upstream_cx_destroy"] == 1
    assert p.gauges().get("cluster.echo.upstream_cx_active") == 0


def test_fifty_sessions_leave_no_fds_behind(proxy_factory, echo):
    p = proxy_factory(tcp_proxy_config(echo.port, stat_prefix="fd"))
    assert _echo_roundtrip(p.port, b"warm-up") == b"warm-up"
    assert p.wait_for(lambda: p.gauges().get("tcp.fd.downstream_cx_active") == 0)
    assert p.wait_for(lambda: echo.connections == 1)
    time.sleep(0.1)
    baseline = _fd_count()
    for i in range(50):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"x%d" % i)
            assert s.recv(16) == b"x%d" % i
            if i % 2:
                s.shutdown(socket.SHUT_WR)  # half the sessions end by half-close, half by close
                assert _recv_until_eof(s) == b""
    assert p.wait_for(lambda: p.counters().get("tcp.fd.downstream_cx_total") == 51)
    assert p.wait_for(lambda: p.gauges().get("tcp.fd.downstream_cx_active") == 0)
    assert p.wait_for(lambda: _fd_count() <= baseline, timeout=5), (_fd_count(), baseline)


def test_upstream_that_stops_reading_pauses_downstream_reads(proxy_factory):
    sink = SinkUpstream()
    try:
        p = proxy_factory(tcp_proxy_config(sink.port, stat_prefix="fc"))
        sent = 0
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.settimeout(1.0)
            chunk = b"z" * 65536
            try:
                while sent < 256 * MiB:
                    sent += s.send(chunk)
            except TimeoutError:
                pass
            # Sender blocked: what is in flight is socket buffers plus one bounded pipe.
            assert sent < 64 * MiB
            assert p.wait_for(lambda: p.counters().get("tcp.fc.downstream_flow_control_paused_reading_total", 0) >= 1)
    finally:
        sink.close()


def test_idle_timeout_closes_quiet_session_but_not_active_one(proxy_factory, echo):
    cfg = tcp_proxy_config(echo.port, stat_prefix="idle")
    tcp = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    tcp["idle_timeout"] = "0.4s"
    p = proxy_factory(cfg)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as active:
        for _ in range(6):  # 0.9 s of traffic every 0.15 s: never idle for 0.4 s
            active.sendall(b"k")
            assert active.recv(1) == b"k"
            time.sleep(0.15)
        assert p.counters().get("tcp.idle.idle_timeout", 0) == 0
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as quiet:
        quiet.sendall(b"q")
        assert quiet.recv(1) == b"q"
        t0 = time.monotonic()
        assert _recv_until_eof(quiet) == b""
        assert time.monotonic() - t0 < 4.0   # the 0.4 s idle timeout, not the 5 s recv timeout
    assert p.wait_for(lambda: p.counters().get("tcp.idle.idle_timeout") == 1)


def test_einval_from_splice_falls_back_to_python_copy(proxy_factory, echo, monkeypatch):
    p = proxy_factory(tcp_proxy_config(echo.port, stat_prefix="fb"))
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.EINVAL, "splice refused")

    monkeypatch.setattr(os, "splice", refuse)
    assert _echo_roundtrip(p.port, b"copied" * 1000) == b"copied" * 1000
    assert calls, "splice was never attempted"
    assert p.wait_for(lambda: p.counters().get("tcp.fb.downstream_cx_rx_bytes_total") == 6000)


def test_without_splice_the_python_copy_path_relays(proxy_factory, echo, monkeypatch):
    monkeypatch.setattr(tcp_proxy, "splice_supported", lambda: False)
    started = _record_relay_starts(monkeypatch)
    p = proxy_factory(tcp_proxy_config(echo.port, stat_prefix="np"))
    assert _echo_roundtrip(p.port, b"plain" * 50_000) == b"plain" * 50_000
    assert started == []  # the bytes went through the Python copy, not a SpliceRelay
    assert p.wait_for(lambda: p.counters().get("tcp.np.downstream_cx_tx_bytes_total") == 250_000)


def test_access_log_line_has_spliced_byte_counts(proxy_factory, echo, tmp_path):
    path = tmp_path / "tcp.log"
    cfg = tcp_proxy_config(echo.port, stat_prefix="al")
    tcp = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    tcp["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(path),
        "log_format": {"text_format_source": {
            "inline_string": "%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER%\n"}}}}]
    p = proxy_factory(cfg)
    assert _echo_roundtrip(p.port, b"L" * 123_456) == b"L" * 123_456
    assert p.wait_for(lambda: path.exists() and path.read_text().strip() != "")
    assert path.read_text().split() == ["123456", "123456", "echo"]


def test_half_close_waits_for_queued_bytes_before_fin(proxy_factory):
    """The client sends 8 MiB and FIN to an upstream that reads only after a pause: the FIN
    must arrive after every byte (shutdown only once the pipe drained)."""
    srv = socket.create_server(("127.0.0.1", 0))
    got = bytearray()

    def upstream() -> None:
        c, _ = srv.accept()
        with c:
            time.sleep(0.5)  # let the proxy's pipe and socket buffers fill up
            while chunk := c.recv(262144):
                got.extend(chunk)
            c.sendall(b"done")

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    try:
        p = proxy_factory(tcp_proxy_config(srv.getsockname()[1], stat_prefix="hc"))
        data = os.urandom(1024) * 8192
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            assert _recv_until_eof(s) == b"done"
        t.join(10)
        assert bytes(got) == data
    finally:
        srv.close()
