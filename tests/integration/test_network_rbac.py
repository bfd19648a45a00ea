"""The RBAC network filter through the running proxy: an mTLS identity decides at the first
bytes of a tcp_proxy connection (TLS terminated on the listener), and `delay_deny`. Its
agreement with real Envoy is tests/differential/cases/filter_network_rbac.yaml."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.tls_certs import CertAuthority

from .harness import ProxyUnderTest
from .test_tcp_proxy import echo, tcp_proxy_config  # noqa: F401  (echo: the fixture)
from .tls_config import downstream_tls, with_listener_tls

RBAC_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _with_rbac(cfg: dict, **rbac) -> dict:
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"].insert(0, {"name": "envoy.filters.network.rbac",
                                "typed_config": {"@type": RBAC_URL, "stat_prefix": "net.", **rbac}})
    return cfg


def _echo_over_tls(port: int, cafile, cert=None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"ping")
            try:
                return t.recv(100)
            except (ssl.SSLError, ConnectionResetError):
                return b""


def test_an_mtls_identity_decides_at_the_first_bytes(echo, tmp_path):
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", ["localhost"])
    cafile = ca.pem_file(tmp_path)
    alice = ca.issue_files(tmp_path, "alice", [], cn="alice", client=True, uris=["spiffe://t/alice"])
    bob = ca.issue_files(tmp_path, "bob", [], cn="bob", client=True, uris=["spiffe://t/bob"])
    cfg = _with_rbac(tcp_proxy_config(echo.port), rules={"action": "ALLOW", "policies": {"alice": {
        "permissions": [{"any": True}],
        "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://t/alice"}}}]}}})
    cfg = with_listener_tls(cfg, downstream_tls((cert, key), common={
        "validation_context": {"trusted_ca": {"filename": str(cafile)}}}))
    p = ProxyUnderTest(cfg)
    try:
        assert _echo_over_tls(p.port, cafile, alice) == b"ping"
        assert _echo_over_tls(p.port, cafile, bob) == b""
        assert _echo_over_tls(p.port, cafile) == b""  # TLS, but no identity
        c = p.counters()
        assert (c["net.rbac.allowed"], c["net.rbac.denied"]) == (1, 2)
        # (tcp_proxy opens its upstream connection at accept, as Envoy's does; a denied
        # connection's bytes never reach it: nothing was echoed above.)
    finally:
        p.stop()


def test_delay_deny_closes_a_denied_connection_later(echo):
    cfg = _with_rbac(tcp_proxy_config(echo.port), delay_deny="0.5s", rules={
        "action": "DENY", "policies": {"all": {"permissions": [{"any": True}], "principals": [{"any": True}]}}})
    p = ProxyUnderTest(cfg)
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(b"hello")
            assert s.recv(10) == b""
            assert 0.4 < time.monotonic() - t0 < 3.0
        assert p.counters()["net.rbac.denied"] == 1
    finally:
        p.stop()


def test_http_matchers_are_refused_in_the_network_filter(echo):
    cfg = _with_rbac(tcp_proxy_config(echo.port), rules={"policies": {"p": {
        "permissions": [{"url_path": {"path": {"prefix": "/"}}}], "principals": [{"any": True}]}}})
    with pytest.raises(ConfigError, match="a url_path matcher needs HTTP: use envoy.filters.http.rbac"):
        parse_bootstrap(cfg)
