"""Connection: watermark callbacks, counted read-disable, flush-then-close (real socketpairs)."""

import socket

from proxy.network.connection import Connection, ConnectionCallbacks
from proxy.network.transport_socket import RAW_BUFFER
from proxy.threads.dispatcher import Dispatcher


class Recorder(ConnectionCallbacks):
    def __init__(self):
        self.events = []
        self.data = bytearray()

    def on_data(self, data):
        self.data += data

    def on_eof(self):
        self.events.append("eof")

    def on_early_close(self):
        self.events.append("early_close")

    def on_close(self, reason):
        self.events.append(("close", reason))

    def on_above_write_watermark(self):
        self.events.append("above")

    def on_below_write_watermark(self):
        self.events.append("below")


def pair(limit=64 * 1024):
    d = Dispatcher("t")
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rec = Recorder()
    conn = Connection(d, RAW_BUFFER.create(a), rec, buffer_limit=limit)
    conn.start()
    return d, conn, rec, b


def test_write_beyond_limit_raises_high_watermark_once_and_low_after_drain():
    d, conn, rec, peer = pair(limit=64 * 1024)
    for _ in range(20):
        conn.write(b"x" * 16 * 1024)  # 320 KiB into a tiny socket buffer
    assert rec.events.count("above") == 1
    assert conn.above_high_watermark
    # Drain from the peer side while the dispatcher flushes.
    received = 0
    peer.setblocking(False)
    import time
    deadline = time.monotonic() + 5
    while received < 20 * 16 * 1024 and time.monotonic() < deadline:
        d.call_later(0, d.exit)
        d._exit_requested = False
        d.run()
        try:
            received += len(peer.recv(1 << 20))
        except BlockingIOError:
            pass
    assert received == 20 * 16 * 1024
    assert rec.events.count("below") == 1
    assert not conn.above_high_watermark


def test_read_disable_is_counted():
    d, conn, rec, peer = pair()
    conn.read_disable(True)
    conn.read_disable(True)
    conn.read_disable(False)
    assert not conn.reading_enabled
    conn.read_disable(False)
    assert conn.reading_enabled


def test_close_with_flush_delivers_buffered_bytes_then_closes():
    d, conn, rec, peer = pair(limit=1 << 20)
    payload = b"y" * 200_000
    conn.write(payload)
    conn.close(flush=True)
    assert not conn.closed  # still flushing
    got = bytearray()
    peer.settimeout(0.05)
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not conn.closed:
        d.call_later(0.001, d.exit)
        d._exit_requested = False
        d.run()
        try:
            got += peer.recv(1 << 20)
        except socket.timeout:
            pass
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        got += chunk
    assert conn.closed
    assert bytes(got) == payload
    assert ("close", "local") in rec.events


def test_close_with_flush_gives_up_only_after_a_stall_not_while_the_peer_reads():
    # Envoy's delayed_close_timeout: write progress restarts it. A peer reading slower than
    # `delay` per buffer-full still gets every byte (a `connection: close` response's tail).
    d, conn, rec, peer = pair(limit=1 << 20)
    payload = bytes(range(256)) * 800  # 200 KiB through 4 KiB socket buffers
    conn.write(payload)
    conn.close(flush=True, delay=0.2)
    got = bytearray()
    peer.settimeout(0.01)
    import time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not conn.closed:
        run_once(d, 0.005)
        try:
            got += peer.recv(16 * 1024)
        except socket.timeout:
            pass
        time.sleep(0.01)  # the whole transfer takes far longer than `delay`
    peer.settimeout(1)
    while chunk := peer.recv(1 << 20):
        got += chunk
    assert conn.closed and ("close", "local") in rec.events
    assert bytes(got) == payload


def test_peer_eof_reported():
    d, conn, rec, peer = pair()
    peer.shutdown(socket.SHUT_WR)
    d.call_later(0.05, d.exit)
    d.run()
    assert "eof" in rec.events


def run_once(d, seconds=0.05):
    d.call_later(seconds, d.exit)
    d._exit_requested = False
    d.run()


def test_peer_close_behind_unread_bytes_is_reported_while_reading_is_disabled():
    d, conn, rec, peer = pair()
    conn.set_detect_early_close(True)
    conn.read_disable(True)
    peer.sendall(b"GET /second HTTP/1.1\r\n\r\n")
    peer.shutdown(socket.SHUT_WR)
    run_once(d)
    assert "early_close" in rec.events
    assert rec.data == b""  # the bytes before the FIN are not read (Envoy's early close)


def test_no_early_close_without_detection_or_while_reading():
    d, conn, rec, peer = pair()
    conn.read_disable(True)
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)
    run_once(d)
    assert rec.events == [] and rec.data == b""
    # Reading again: the bytes, then the FIN in order, as on_eof.
    conn.set_detect_early_close(True)
    conn.read_disable(False)
    run_once(d)
    assert rec.data == b"abc" and rec.events == ["eof"]


def test_detection_turned_off_by_the_owner_stops_the_reports():
    d, conn, rec, peer = pair()
    conn.set_detect_early_close(True)
    conn.read_disable(True)
    rec.on_early_close = lambda: (rec.events.append("early_close"), conn.set_detect_early_close(False))
    peer.shutdown(socket.SHUT_WR)
    run_once(d)
    run_once(d)
    assert rec.events == ["early_close"]  # once: level-triggered, but the owner acted


class _SendSpy:
    """The real socket, with its send/sendmsg calls recorded."""

    def __init__(self, sock):
        self._sock = sock
        self.calls = []

    def send(self, data):
        self.calls.append(("send", bytes(data)))
        return self._sock.send(data)

    def sendmsg(self, buffers):
        self.calls.append(("sendmsg", [bytes(b) for b in buffers]))
        return self._sock.sendmsg(buffers)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _one_iteration(d):
    d.call_later(0, d.exit)
    d._exit_requested = False
    d.run()


def test_small_writes_of_one_iteration_leave_in_one_send_large_ones_in_one_sendmsg():
    d, conn, rec, peer = pair(limit=1 << 20)
    spy = conn.transport_socket.raw_socket = _SendSpy(conn.transport_socket.raw_socket)
    conn.write(b"HTTP/1.1 200 OK\r\n\r\n")
    conn.write(b"body")
    _one_iteration(d)
    assert spy.calls == [("send", b"HTTP/1.1 200 OK\r\n\r\nbody")]  # joined: one small copy
    peer.settimeout(5)
    assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    spy.calls.clear()
    big = b"y" * 3000
    conn.write(b"head")
    for _ in range(6):  # 18 KB: above the join limit, sent as it is queued
        conn.write(big)
    _one_iteration(d)
    assert [c[0] for c in spy.calls][:1] == ["sendmsg"]
    assert spy.calls[0][1][:2] == [b"head", big]
    got = b""
    while len(got) < 4 + 6 * 3000:
        _one_iteration(d)
        got += peer.recv(1 << 16)
    assert got == b"head" + big * 6
    assert conn.bytes_sent == 4 + 6 * 3000 + len(b"HTTP/1.1 200 OK\r\n\r\nbody")


def tcp_pair(d):
    """A real loopback TCP connection (a reset's behaviour is TCP's): the Connection's end
    and the peer's."""
    srv = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(srv.getsockname())
    mine, _ = srv.accept()
    srv.close()
    mine.setblocking(False)
    rec = Recorder()
    conn = Connection(d, RAW_BUFFER.create(mine), rec)
    conn.start()
    return conn, rec, peer


def test_a_lingering_close_sends_fin_and_drops_what_the_peer_still_sends_until_it_closes():
    """close(linger=True) with the peer's bytes unread (a client still sending when a GOAWAY
    goes out): the answer, then a FIN; the peer can go on sending (no reset) and reads the
    answer and the end; its own close ends the connection, long before the delay."""
    import time
    d = Dispatcher("t")
    conn, rec, peer = tcp_pair(d)
    peer.sendall(b"x" * 50_000)            # unread when the owner closes
    conn.write(b"bye")
    conn.close(flush=True, delay=5.0, linger=True)
    run_once(d, 0.05)
    assert not conn.closed
    conn.read_disable(True)                # an owner's pause no longer stops the draining
    peer.sendall(b"more" * 10_000)         # after the FIN: read and dropped, no reset
    peer.settimeout(2)
    got = b""
    while chunk := peer.recv(65536):
        got += chunk
    assert got == b"bye"
    t0 = time.monotonic()
    peer.close()
    while not conn.closed and time.monotonic() - t0 < 3:
        run_once(d, 0.02)
    assert conn.closed and time.monotonic() - t0 < 3
    assert ("close", "local") in rec.events and rec.data == b""


def test_a_lingering_close_ends_after_the_delay_when_the_peer_never_closes():
    import time
    d = Dispatcher("t")
    conn, rec, peer = tcp_pair(d)
    peer.sendall(b"x" * 1000)
    t0 = time.monotonic()
    conn.close(flush=True, delay=0.3, linger=True)
    while not conn.closed and time.monotonic() - t0 < 3:
        run_once(d, 0.02)
    assert conn.closed and time.monotonic() - t0 >= 0.3
    assert rec.events == [("close", "local")]
    peer.close()


def test_closing_says_a_close_waits_for_its_flush_or_its_lingering():
    """`closing` is what owners check before starting a close of their own (the HCM's idle
    timer, a drain): True from close(flush=True) until the socket is gone."""
    d = Dispatcher("t")
    conn, rec, peer = tcp_pair(d)
    assert not conn.closing
    conn.write(b"answer")
    conn.close(flush=True, delay=5.0, linger=True)
    assert conn.closing and not conn.closed      # the flush is pending
    run_once(d, 0.05)
    assert conn.closing and not conn.closed      # lingering
    peer.settimeout(2)
    assert peer.recv(100) == b"answer" and peer.recv(100) == b""
    peer.close()
    for _ in range(100):
        if conn.closed:
            break
        run_once(d, 0.02)
    assert conn.closed and not conn.closing and rec.events == [("close", "local")]
