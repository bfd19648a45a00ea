"""Real TLS through the running proxy, with no change to Connection, the HCM, the pool or
tcp_proxy: the test-only pyOpenSSL transport (tests/tls_transport.py) is patched in where
config will choose the TLS issue's factory, and the peers are Python's own `ssl` module."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest
from cryptography.hazmat.primitives import serialization

from proxy.network import listener as listener_module
from proxy.upstream import worker_cluster
from tests.tls_transport import TlsTestFactory, self_signed

from .harness import front_proxy_config, static_cluster
from .servers import AcceptLoop
from .test_tcp_proxy import tcp_proxy_config


@pytest.fixture
def server_ctx(tmp_path) -> ssl.SSLContext:
    cert, key = self_signed()
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TlsEchoUpstream(AcceptLoop):
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        super().__init__("tls-echo")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            with self.ctx.wrap_socket(s, server_side=True) as t:
                while data := t.recv(65536):
                    t.sendall(data)
        except OSError:
            pass


class TlsHttpUpstream(AcceptLoop):
    """HTTP/1.1 over TLS, keep-alive: answers each request head with its path."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.heads: list[bytes] = []
        super().__init__("tls-http")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            with self.ctx.wrap_socket(s, server_side=True) as t:
                buf = b""
                while data := t.recv(65536):
                    buf += data
                    while b"\r\n\r\n" in buf:
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        self.heads.append(head)
                        body = head.split(b" ")[1]
                        t.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass


def test_https_clients_are_served_by_the_hcm_over_the_listeners_tls_transport(
        upstream, proxy_factory, monkeypatch):
    tls = TlsTestFactory(server=True)
    monkeypatch.setattr(listener_module, "downstream_transport_factory", lambda chain: tls)
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                         [static_cluster("c1", upstream.port)]))
    conn = http.client.HTTPSConnection("127.0.0.1", p.port, timeout=5, context=_client_ctx())
    try:
        for path in ("/one", "/two"):  # keep-alive: both on one TLS connection
            conn.request("GET", path)
            r = conn.getresponse()
            assert r.status == 200
            assert json.loads(r.read())["path"] == path
    finally:
        conn.close()
    assert len(tls.created) == 1 and tls.created[0].protocol() is None  # the client offered no ALPN


def test_tcp_proxy_relays_to_a_tls_upstream_over_the_clusters_transport(proxy_factory, monkeypatch, server_ctx):
    tls = TlsTestFactory(server=False)
    monkeypatch.setattr(worker_cluster, "upstream_transport_factory", lambda config: tls)
    up = TlsEchoUpstream(server_ctx)
    try:
        p = proxy_factory(tcp_proxy_config(up.port))
        msg = bytes(range(256)) * 4096  # 1 MiB
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)  # half-close travels as close_notify + FIN
            got = bytearray()
            while chunk := s.recv(65536):
                got += chunk
        assert bytes(got) == msg
        assert len(tls.created) == 1
    finally:
        up.close()


def test_http_pool_speaks_tls_to_the_upstream_and_reuses_the_connection(proxy_factory, monkeypatch, server_ctx):
    tls = TlsTestFactory(server=False)
    monkeypatch.setattr(worker_cluster, "upstream_transport_factory", lambda config: tls)
    up = TlsHttpUpstream(server_ctx)
    try:
        p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                             [static_cluster("c1", up.port)]))
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        for path in ("/a", "/b", "/c"):
            conn.request("GET", path)
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, path.encode())
        conn.close()
        assert [h.split(b" ")[1] for h in up.heads] == [b"/a", b"/b", b"/c"]
        assert len(tls.created) == 1 and up.connections == 1
        assert p.wait_for(lambda: p.counters().get("cluster.c1.upstream_cx_total") == 1)
    finally:
        up.close()
