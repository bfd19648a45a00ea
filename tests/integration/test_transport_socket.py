"""The transport socket seam, driven through real `Connection`s on real loopback sockets.

The same contract tests run over raw_buffer, FakeHandshakeXorSocket (tests/transport_fakes.py:
a handshake plus a byte transform) and the TLS transport (proxy/tls: pyOpenSSL in
memory-BIO mode), which plug in without any change to `Connection`; then the
fake's TLS-like needs one by one (deterministic, where TLS's timing is not): READ interest
while a write waits, WRITE interest while reading, handshake progress while the owner's
reading is disabled, bytes held by the transport, and a transport failure.
"""

from __future__ import annotations

import socket
import time

import pytest

from proxy.network.connection import CloseReason, Connection, ConnectionCallbacks
from proxy.network.transport_socket import RAW_BUFFER, READ, WRITE, RawBufferSocket
from proxy.threads.dispatcher import Dispatcher
from tests.tls_certs import tls_factories
from tests.transport_fakes import HELLO, OK, FakeHandshakeXorFactory, FakeHandshakeXorSocket, xor


class Owner(ConnectionCallbacks):
    """Records everything; with `echo`, writes back what it reads and half-closes on EOF."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.conn: Connection | None = None
        self.data = bytearray()
        self.events: list = []

    def on_data(self, data):
        self.data += data
        if self.echo:
            self.conn.write(data)

    def on_eof(self):
        self.events.append("eof")
        if self.echo:
            self.conn.shutdown_write()

    def on_close(self, reason):
        self.events.append(("close", reason))

    def on_connected(self):
        self.events.append("connected")


def run_until(d: Dispatcher, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        d.call_later(0.002, d.exit)
        d._exit_requested = False
        d.run()


def run_for(d: Dispatcher, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        d.call_later(0.01, d.exit)
        d._exit_requested = False
        d.run()


@pytest.fixture
def dispatcher():
    d = Dispatcher("transport-test")
    yield d
    d.close()


@pytest.fixture
def listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def _accept(listening: socket.socket) -> socket.socket:
    listening.settimeout(5)
    s, _ = listening.accept()
    s.setblocking(False)
    return s


def _client_sock() -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    return s


def _raw(server: bool):
    return RAW_BUFFER


def _fake(server: bool):
    return FakeHandshakeXorFactory(server)


_TLS = tls_factories(server_alpn=("http/1.1",))


def _tls(server: bool):
    return _TLS[0] if server else _TLS[1]


# -- the contract, for every implementation ------------------------------------------------------

@pytest.mark.parametrize("make_factory", [_raw, _fake, _tls], ids=["raw_buffer", "fake_xor", "tls"])
def test_connection_pair_relays_bulk_both_ways_and_half_closes_over_any_transport(
        dispatcher, listening, make_factory):
    d = dispatcher
    client_owner, server_owner = Owner(), Owner(echo=True)
    client = Connection(d, make_factory(False).create(_client_sock()), client_owner, buffer_limit=1 << 20)
    client_owner.conn = client
    client.connect(listening.getsockname(), 5.0)
    server = Connection(d, make_factory(True).create(_accept(listening)), server_owner, buffer_limit=1 << 20)
    server_owner.conn = server
    server.start()
    run_until(d, lambda: "connected" in client_owner.events)
    assert client_owner.events.count("connected") == 1
    payload = bytes(range(256)) * 2048  # 512 KiB: several partial writes on loopback
    client.write(payload)
    client.shutdown_write()
    run_until(d, lambda: "eof" in client_owner.events)
    assert bytes(server_owner.data) == payload
    assert bytes(client_owner.data) == payload
    assert client.bytes_sent == server.bytes_received == len(payload)
    assert client.transport_failure_reason == ""
    assert "eof" in server_owner.events
    client.close()
    server.close()
    assert client_owner.events[-1] == ("close", CloseReason.LOCAL)


@pytest.mark.parametrize("make_factory", [_fake, _tls], ids=["fake_xor", "tls"])
def test_a_request_written_before_the_handshake_is_sent_after_it(dispatcher, listening, make_factory):
    """What a pool does: write the request as soon as it has the connection object."""
    d = dispatcher
    client_owner, server_owner = Owner(), Owner(echo=True)
    client = Connection(d, make_factory(False).create(_client_sock()), client_owner)
    client_owner.conn = client
    client.connect(listening.getsockname(), 5.0)
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    server = Connection(d, make_factory(True).create(_accept(listening)), server_owner)
    server_owner.conn = server
    server.start()
    run_until(d, lambda: bytes(client_owner.data) == b"GET / HTTP/1.1\r\n\r\n")
    assert client_owner.events == ["connected"]
    client.close()
    server.close()


def test_tls_negotiates_alpn_and_exposes_the_session_once_connected(dispatcher, listening):
    d = dispatcher
    owner = Owner()
    server_factory, client_factory = tls_factories(server_alpn=("http/1.1",), client_alpn=("h2", "http/1.1"))
    client = Connection(d, client_factory.create(_client_sock(), server_name="localhost"), owner)
    client.connect(listening.getsockname(), 5.0)
    ts = client.transport_socket
    assert ts.protocol() is None and ts.ssl() is None
    server = Connection(d, server_factory.create(_accept(listening)), Owner())
    server.start()
    run_until(d, lambda: "connected" in owner.events)
    assert ts.protocol() == "http/1.1"
    assert ts.ssl().peer_subject == "O=ftproxy tests,CN=localhost"
    assert server.transport_socket.ssl().sni == "localhost"
    assert server.transport_socket.ssl().alpn == "http/1.1"
    client.close()
    server.close()


def test_raw_buffer_exposes_its_socket_for_splice_and_no_protocol():
    a, b = socket.socketpair()
    try:
        ts = RAW_BUFFER.create(a)
        assert isinstance(ts, RawBufferSocket)
        assert ts.raw_socket is a and ts.fd == a.fileno()
        assert ts.protocol() is None and ts.ssl() is None and ts.failure_reason == ""
        assert not RAW_BUFFER.implements_secure_transport
        assert hash(RAW_BUFFER.key) == hash(RAW_BUFFER.key)
    finally:
        a.close()
        b.close()


def test_fake_transport_changes_the_wire_bytes_and_hides_its_socket(dispatcher, listening):
    d = dispatcher
    owner = Owner()
    factory = FakeHandshakeXorFactory(server=False)
    client = Connection(d, factory.create(_client_sock()), owner)
    client.connect(listening.getsockname(), 5.0)
    peer = _accept(listening)
    ts = factory.created[0]
    assert ts.raw_socket is None  # nothing may splice transformed bytes
    run_until(d, lambda: _recv_exactly_nb(peer, len(HELLO)) == HELLO)
    peer.sendall(OK)
    run_until(d, lambda: "connected" in owner.events)
    assert ts.protocol() == "fake-xor"
    client.write(b"plaintext")
    got = bytearray()
    run_until(d, lambda: _drain(peer, got) >= 9)
    assert bytes(got) == xor(b"plaintext") != b"plaintext"
    client.close()
    peer.close()


# -- what TLS needs: interest of its own -----------------------------------------------------------

def test_write_queued_during_handshake_waits_on_read_interest_without_spinning(dispatcher, listening):
    """The client's request is written before the handshake is done (as a pool does): the
    transport cannot take it, and asks for READ; the Connection must not poll WRITE on an
    always-writable socket meanwhile."""
    d = dispatcher
    owner = Owner()
    factory = FakeHandshakeXorFactory(server=False)
    client = Connection(d, factory.create(_client_sock()), owner)
    client.connect(listening.getsockname(), 5.0)
    client.write(b"early request")   # queued while connecting
    peer = _accept(listening)
    run_until(d, lambda: _recv_exactly_nb(peer, len(HELLO)) == HELLO)
    ts: FakeHandshakeXorSocket = factory.created[0]
    before = d.loop_iterations
    d.call_later(0.3, d.exit)  # the handshake answer is late: one run of 0.3 s
    d._exit_requested = False
    d.run()
    assert d.loop_iterations - before < 10, "spinning on WRITE while the transport waits to read"
    assert ts.blocked_writes <= 2
    assert "connected" not in owner.events  # not before the transport says so
    assert client._interest & WRITE == 0 and client._interest & READ
    peer.sendall(OK)
    got = bytearray()
    run_until(d, lambda: _drain(peer, got) >= len(b"early request"))
    assert bytes(got) == xor(b"early request")
    assert owner.events == ["connected"]
    client.close()
    peer.close()


def test_server_transport_writes_its_handshake_answer_from_a_write_interest_asked_while_reading(
        dispatcher, listening):
    d = dispatcher
    owner = Owner(echo=True)
    peer = socket.create_connection(listening.getsockname())
    peer.setblocking(False)
    factory = FakeHandshakeXorFactory(server=True)
    server = Connection(d, factory.create(_accept(listening)), owner)
    owner.conn = server
    ts = factory.created[0]
    masks: list[int] = []
    real = server.set_transport_interest

    def spy(mask):
        masks.append(mask)
        real(mask)
    ts.callbacks = type("Spy", (), {"set_transport_interest": staticmethod(spy),
                                    "set_transport_readable": server.set_transport_readable,
                                    "raise_connected": server.raise_connected})()
    server.start()
    peer.sendall(HELLO)
    got = bytearray()
    run_until(d, lambda: _drain(peer, got) >= len(OK))
    assert bytes(got) == OK
    assert masks[:2] == [READ, WRITE]  # READ for the HELLO, then WRITE asked from do_read
    assert masks[-1] == 0 and "connected" in owner.events
    peer.sendall(xor(b"ping"))
    got.clear()
    run_until(d, lambda: _drain(peer, got) >= 4)
    assert bytes(got) == xor(b"ping") and bytes(owner.data) == b"ping"
    server.close()
    peer.close()


def test_handshake_progresses_while_the_owner_has_reading_disabled(dispatcher, listening):
    d = dispatcher
    owner = Owner()
    peer = socket.create_connection(listening.getsockname())
    peer.setblocking(False)
    server = Connection(d, FakeHandshakeXorFactory(server=True).create(_accept(listening)), owner)
    owner.conn = server
    server.read_disable(True)  # e.g. an owner applying back-pressure from the start
    server.start()
    peer.sendall(HELLO)
    got = bytearray()
    run_until(d, lambda: _drain(peer, got) >= len(OK))
    assert bytes(got) == OK
    peer.sendall(xor(b"held back"))
    run_for(d, 0.1)
    assert owner.data == b""  # reading is disabled: nothing delivered
    server.read_disable(False)
    run_until(d, lambda: bytes(owner.data) == b"held back")
    server.close()
    peer.close()


def test_bytes_the_transport_holds_are_delivered_without_another_readiness_event(dispatcher, listening):
    """OK and the first application bytes arrive in one segment: the transport holds the
    application part and asks for a read (set_transport_readable); the socket will not turn
    readable again."""
    d = dispatcher
    owner = Owner()
    client = Connection(d, FakeHandshakeXorFactory(server=False).create(_client_sock()), owner)
    client.connect(listening.getsockname(), 5.0)
    peer = _accept(listening)
    run_until(d, lambda: _recv_exactly_nb(peer, len(HELLO)) == HELLO)
    peer.sendall(OK + xor(b"greeting"))
    run_until(d, lambda: bytes(owner.data) == b"greeting")
    assert owner.events == ["connected"]
    client.close()
    peer.close()


def test_a_transport_failure_closes_the_connection_and_says_why(dispatcher, listening):
    d = dispatcher
    owner = Owner()
    peer = socket.create_connection(listening.getsockname())
    server = Connection(d, FakeHandshakeXorFactory(server=True).create(_accept(listening)), owner)
    owner.conn = server
    server.start()
    peer.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not our handshake
    run_until(d, lambda: server.closed)
    assert owner.events == [("close", CloseReason.REMOTE)]
    assert "bad handshake" in server.transport_failure_reason
    peer.close()


def test_connect_timeout_covers_the_transport_handshake(dispatcher, listening):
    """Envoy's connect_timeout runs until the transport is connected, not only TCP."""
    d = dispatcher
    owner = Owner()
    client = Connection(d, FakeHandshakeXorFactory(server=False).create(_client_sock()), owner)
    client.connect(listening.getsockname(), 0.2)
    peer = _accept(listening)  # TCP is up; the handshake answer never comes
    run_until(d, lambda: client.closed)
    assert owner.events == [("close", CloseReason.CONNECT_TIMEOUT)]
    peer.close()


# -- helpers -------------------------------------------------------------------------------------

def _drain(s: socket.socket, into: bytearray) -> int:
    try:
        while chunk := s.recv(65536):
            into += chunk
    except BlockingIOError:
        pass
    return len(into)


_partial: dict[int, bytes] = {}


def _recv_exactly_nb(s: socket.socket, n: int) -> bytes | None:
    """Non-blocking: the first `n` bytes once they are all there (kept across calls)."""
    s.setblocking(False)
    buf = _partial.get(id(s), b"")
    try:
        buf += s.recv(n - len(buf))
    except BlockingIOError:
        pass
    _partial[id(s)] = buf
    if len(buf) == n:
        del _partial[id(s)]
        return buf
    return None
