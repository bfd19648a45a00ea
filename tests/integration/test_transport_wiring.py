"""Transport sockets through the running proxy: every socket a connection is made on gets its
transport from the factory config chooses (listener filter chain, cluster), a non-raw
transport works through the HCM, the HTTP pool and tcp_proxy without any change to them
(test-only FakeHandshakeXorFactory, patched in where config would choose TLS), and splice
only relays raw_buffer sockets."""

from __future__ import annotations

import socket

import pytest

from proxy.network import listener as listener_module
from proxy.network import splice_relay
from proxy.network.transport_socket import RAW_BUFFER
from proxy.upstream import worker_cluster
from tests.transport_fakes import HELLO, OK, FakeHandshakeXorFactory, client_handshake, xor

from .clients import echo
from .harness import front_proxy_config, static_cluster
from .servers import AcceptLoop, TcpEchoUpstream
from .test_tcp_proxy import tcp_proxy_config


# -- a non-raw transport chosen by the factories, through the real proxy ----------------------

class FakeXorEchoUpstream(AcceptLoop):
    """Speaks the fake transport as its server: HELLO/OK, then echoes the (XORed) bytes as
    they are, so the proxy's transport must un-XOR them; records the wire bytes."""

    def __init__(self) -> None:
        self.wire = bytearray()
        super().__init__("fake-xor-echo")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            got = b""
            while len(got) < len(HELLO):
                got += s.recv(len(HELLO) - len(got))
            assert got == HELLO
            s.sendall(OK)
            while data := s.recv(65536):
                self.wire += data
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            s.close()


class FakeXorHttpUpstream(AcceptLoop):
    """An HTTP/1.1 upstream behind the fake transport: answers every request head with a
    small 200, keep-alive; records the plaintext it received."""

    def __init__(self) -> None:
        self.plaintext = bytearray()
        super().__init__("fake-xor-http")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            s.recv(len(HELLO))
            s.sendall(OK)
            buf = b""
            while data := s.recv(65536):
                buf += xor(data)
                self.plaintext += xor(data)
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    s.sendall(xor(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nxor-ok\n"))
        except OSError:
            pass
        finally:
            s.close()


@pytest.fixture
def relay_starts(monkeypatch) -> list:
    starts: list = []
    real = splice_relay.SpliceRelay.start

    def start(self):
        starts.append(self)
        return real(self)
    monkeypatch.setattr(splice_relay.SpliceRelay, "start", start)
    return starts


def test_tcp_proxy_upstream_over_a_non_raw_transport_copies_instead_of_splicing(
        proxy_factory, monkeypatch, relay_starts):
    fake = FakeHandshakeXorFactory(server=False)
    monkeypatch.setattr(worker_cluster, "upstream_transport_factory", lambda config: fake)
    up = FakeXorEchoUpstream()
    try:
        p = proxy_factory(tcp_proxy_config(up.port))
        msg = bytes(range(256)) * 64
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
        assert got == msg
        assert bytes(up.wire[:len(msg)]) == xor(msg)  # the transport, not raw bytes, on the wire
        assert fake.created and relay_starts == []      # one side not raw: no splice
    finally:
        up.close()


def test_tcp_proxy_with_both_sides_raw_still_splices(proxy_factory, relay_starts):
    if not splice_relay.splice_supported():
        pytest.skip("no splice(2) here")
    up = TcpEchoUpstream()
    try:
        p = proxy_factory(tcp_proxy_config(up.port))
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        assert len(relay_starts) == 1
    finally:
        up.close()


def test_http_upstream_pool_uses_the_clusters_transport_and_keys_pools_by_it(
        proxy_factory, monkeypatch):
    fake = FakeHandshakeXorFactory(server=False)
    monkeypatch.setattr(worker_cluster, "upstream_transport_factory", lambda config: fake)
    up = FakeXorHttpUpstream()
    try:
        p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                             [static_cluster("c1", up.port)]))
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(b"GET /over-fake HTTP/1.1\r\nhost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b"xor-ok\n"):
                chunk = s.recv(65536)
                assert chunk, reply
                reply += chunk
            s.close()
            assert reply.startswith(b"HTTP/1.1 200")
        assert b"GET /over-fake HTTP/1.1" in up.plaintext
        assert len(fake.created) == 1  # the second request reused the pooled connection
        wc = p.server.workers[0].clusters["c1"]
        (key,) = list(wc.pools)
        assert key.host == ("127.0.0.1", up.port) and key.protocol == "http/1.1"
        assert key.transport == fake.key != RAW_BUFFER.key
    finally:
        up.close()


def test_http_downstream_over_the_listeners_transport_reaches_the_hcm_unchanged(
        upstream, proxy_factory, monkeypatch):
    fake = FakeHandshakeXorFactory(server=True)
    monkeypatch.setattr(listener_module, "downstream_transport_factory", lambda chain: fake)
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)]))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        client_handshake(s)
        s.sendall(xor(b"GET /via-fake HTTP/1.1\r\nhost: example\r\n\r\n"))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, reply
            reply += xor(chunk)
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"/via-fake" in reply  # the echo upstream's JSON names the path it saw
    assert len(fake.created) == 1


def test_the_default_factories_are_raw_buffer(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(
        [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
        [static_cluster("c1", upstream.port, transport_socket={"name": "envoy.transport_sockets.raw_buffer"})]))
    echo(p.port, "/")
    w = p.server.workers[0]
    assert w.listeners[0].transport_factory is RAW_BUFFER
    assert w.clusters["c1"].transport_factory is RAW_BUFFER
    assert [k.transport for k in w.clusters["c1"].pools] == [RAW_BUFFER.key]

