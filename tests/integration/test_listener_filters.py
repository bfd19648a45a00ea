"""Listener filters and filter-chain matching through the running proxy, real sockets only:
SNI passthrough (tls_inspector + server_names -> tcp_proxy to two real TLS upstreams) with
Python's ssl, curl and openssl s_client; the default chain; no match; a ClientHello in 1-byte
writes; garbage; 200 stalled connections and the listener_filters_timeout; http_inspector
routing h2c and HTTP/1.1 apart; PROXY protocol v1/v2 through the HCM; drain with sockets still
in their listener filters."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from tests.tls_upstream import TlsHttpUpstream, client_context

from .harness import EchoUpstream, front_proxy_config, static_cluster

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}


def proxy_protocol(**cfg) -> dict:
    return {"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
        **cfg}}


def tcp_chain(cluster: str, name: str = "", **match) -> dict:
    chain = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP, "stat_prefix": cluster, "cluster": cluster}}]}
    if name:
        chain["name"] = name
    if match:
        chain["filter_chain_match"] = match
    return chain


def bootstrap(chains, clusters, listener_filters=(), **listener) -> dict:
    lis = {"name": "l", "stat_prefix": "l",
           "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
           "listener_filters": list(listener_filters), "filter_chains": chains, **listener}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [lis], "clusters": clusters}}


@pytest.fixture
def tls_upstreams():
    ups = {n: TlsHttpUpstream(n) for n in ("a", "b", "fallback")}
    yield ups
    for u in ups.values():
        u.close()


@pytest.fixture
def sni_proxy(proxy_factory, tls_upstreams):
    def make(default=True, **listener):
        cfg = bootstrap(
            [tcp_chain("a", "chain-a", server_names=["a.example.com"]),
             tcp_chain("b", "chain-b", server_names=["*.b.example.com", "b.example.com"])],
            [static_cluster(n, u.port) for n, u in tls_upstreams.items()], [TLS_INSPECTOR], **listener)
        if default:
            cfg["static_resources"]["listeners"][0]["default_filter_chain"] = tcp_chain("fallback")
        return proxy_factory(cfg)
    return make


def https_get(port: int, server_name: str | None, path: str = "/", alpn=None) -> dict:
    ctx = client_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def closed_without_answer(port: int, data: bytes, timeout: float = 5.0) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


# -- SNI passthrough ---------------------------------------------------------------------------

def test_sni_passthrough_reaches_the_upstream_the_server_name_names(sni_proxy, tls_upstreams):
    p = sni_proxy()
    assert https_get(p.port, "a.example.com")["server"] == "a"
    assert https_get(p.port, "x.b.example.com", "/deep")["server"] == "b"
    assert https_get(p.port, "B.Example.COM")["server"] == "b"            # SNI compares lower-cased
    assert https_get(p.port, "unknown.example.org")["server"] == "fallback"
    assert https_get(p.port, None)["server"] == "fallback"                 # no SNI at all
    # The upstream got the client's own handshake: tcp_proxy relays the TLS bytes untouched.
    assert tls_upstreams["a"].snis == ["a.example.com"]
    c = p.counters()
    assert (c["tls_inspector.tls_found"], c["tls_inspector.sni_found"], c["tls_inspector.sni_not_found"]) == (5, 4, 1)
    assert c["listener.l.downstream_cx_total"] == 5
    assert c["tcp.a.downstream_cx_total"] == 1 and c["tcp.fallback.downstream_cx_total"] == 2


def test_alpn_offered_is_counted(sni_proxy):
    p = sni_proxy()
    assert https_get(p.port, "a.example.com", alpn=["h2", "http/1.1"])["server"] == "a"
    assert p.counters()["tls_inspector.alpn_found"] == 1


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
def test_curl_with_resolve_reaches_the_right_upstream(sni_proxy):
    p = sni_proxy()
    for name, expect in (("a.example.com", "a"), ("www.b.example.com", "b"), ("c.example.net", "fallback")):
        out = subprocess.run(["curl", "-sk", "--max-time", "5", "--resolve", f"{name}:{p.port}:127.0.0.1",
                              f"https://{name}:{p.port}/curl"], capture_output=True, timeout=10)
        assert json.loads(out.stdout)["server"] == expect, out


@pytest.mark.skipif(not shutil.which("openssl"), reason="no openssl")
def test_openssl_s_client_servername(sni_proxy):
    p = sni_proxy()
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-servername",
                          "a.example.com", "-quiet"], input=b"GET /ossl HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
                         capture_output=True, timeout=10)
    assert b'"server": "a"' in out.stdout, out


def test_no_matching_chain_closes_the_connection_and_counts_it(sni_proxy, tls_upstreams):
    p = sni_proxy(default=False)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        https_get(p.port, "nobody.example.org")
    # Plain bytes are not TLS: transport raw_buffer, no server name: no chain either.
    assert closed_without_answer(p.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert p.wait_for(lambda: p.counters().get("listener.l.no_filter_chain_match") == 2)
    c = p.counters()
    assert c["tls_inspector.tls_not_found"] == 1
    assert c.get("listener.l.downstream_cx_total", 0) == 0     # as Envoy: never a connection
    # The worker counts the close a moment before it lets go of the socket: wait for both.
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 0)
    assert sum(u.connections for u in tls_upstreams.values()) == 0


def test_a_client_hello_written_one_byte_at_a_time(sni_proxy):
    p = sni_proxy()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hello)):
            s.sendall(hello[i:i + 1])
            time.sleep(0.0005)
        # Finish the handshake over the socket and ask for a page.
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    s.sendall(out)
                data = s.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        if out := outgoing.read():
            s.sendall(out)
        obj.write(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        s.sendall(outgoing.read())
        body = b""
        while not body.endswith(b"}"):
            try:
                body += obj.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(s.recv(65536))
    assert json.loads(body.split(b"\r\n\r\n", 1)[1]) == {"server": "a", "path": "/slow"}


def test_garbage_is_not_tls_and_goes_to_the_default_chain(sni_proxy, tls_upstreams):
    p = sni_proxy()
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(os.urandom(64).replace(b"\x16", b"\x17"))
        s.recv(100)   # relayed to the fallback TLS upstream, which gives up on it
    assert p.wait_for(lambda: p.counters().get("tcp.fallback.downstream_cx_total") == 1)
    assert p.counters()["tls_inspector.tls_not_found"] == 1


def test_a_client_hello_over_the_maximum_is_closed(sni_proxy):
    p = sni_proxy(default=False)
    body = b"\x01" + (16380).to_bytes(3, "big") + bytes(16380)
    data = (b"\x16\x03\x01" + struct.pack(">H", 10000) + body[:10000] +
            b"\x16\x03\x01" + struct.pack(">H", len(body) - 10000) + body[10000:])
    assert closed_without_answer(p.port, data)
    assert p.wait_for(lambda: p.counters().get("tls_inspector.client_hello_too_large") == 1)
    assert p.counters().get("listener.l.no_filter_chain_match", 0) == 0


# -- the timeout, stalled clients, drain --------------------------------------------------------

def test_stalled_connections_time_out_while_a_good_client_is_served(sni_proxy):
    p = sni_proxy(listener_filters_timeout="2s")
    stalled = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(200)]
    try:
        assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 200)
        assert p.wait_for(lambda: p.gauges().get("server.total_connections") == 200)
        assert https_get(p.port, "a.example.com")["server"] == "a"
        # Served while every stalled connection still waited in the listener filters.
        assert p.counters().get("listener.l.downstream_pre_cx_timeout", 0) == 0
        for s in stalled:
            assert s.recv(10) == b""            # closed by the proxy at the timeout (< 10 s)
    finally:
        for s in stalled:
            s.close()
    assert p.wait_for(lambda: p.counters().get("listener.l.downstream_pre_cx_timeout") == 200)
    # The worker counts the close a moment before it lets go of the socket: wait for both.
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 0)
    assert p.wait_for(lambda: p.gauges()["server.total_connections"] == 0)


def test_continue_on_timeout_hands_the_connection_on_with_what_was_found(proxy_factory):
    up = EchoUpstream("plain")
    try:
        p = proxy_factory(bootstrap([tcp_chain("plain", transport_protocol="raw_buffer")],
                                    [static_cluster("plain", up.port)], [TLS_INSPECTOR],
                                    listener_filters_timeout="0.3s",
                                    continue_on_listener_filters_timeout=True))
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GE")                      # too short for a verdict: waits, then times out
            time.sleep(0.6)
            s.sendall(b"T /late HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        assert out.startswith(b"HTTP/1.0 200") or out.startswith(b"HTTP/1.1 200"), out
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["path"] == "/late"
        assert p.counters()["listener.l.downstream_pre_cx_timeout"] == 1
    finally:
        up.close()


def test_a_peer_closing_in_the_listener_filters_is_counted(sni_proxy):
    p = sni_proxy()
    s = socket.create_connection(("127.0.0.1", p.port))
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 1)
    s.close()
    assert p.wait_for(lambda: p.counters().get("listener.l.downstream_listener_filter_remote_close") == 1)
    # The worker counts the close a moment before it lets go of the socket: wait for both.
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 0)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_drain_closes_sockets_waiting_in_listener_filters_without_leaking_fds(sni_proxy):
    before = _fds()
    p = sni_proxy(listener_filters_timeout="60s")
    waiting = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(20)]
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 20)
    started = time.monotonic()
    p.stop()                                      # SIGTERM's drain
    assert p.exit_code == 0
    assert time.monotonic() - started < 5         # not held for the 60 s filter timeout
    for s in waiting:
        assert s.recv(10) == b""
        s.close()
    assert _fds() <= before + 1


def test_hot_restart_parent_drain_closes_sockets_in_listener_filters(sni_proxy):
    p = sni_proxy(listener_filters_timeout="60s")
    waiting = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(5)]
    assert p.wait_for(lambda: p.gauges()["listener.l.downstream_pre_cx_active"] == 5)
    p.server.main.post(p.server.start_parent_drain)   # what the next epoch asks of its parent
    for s in waiting:
        assert s.recv(10) == b""
        s.close()
    p.thread.join(10)
    assert p.exit_code == 0


# -- http_inspector ---------------------------------------------------------------------------

def hcm_chain(body: str, **match) -> dict:
    return {"filter_chain_match": match, "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                      "typed_config": {
        "@type": HCM, "stat_prefix": body, "codec_type": "AUTO",
        "http_protocol_options": {"accept_http_10": True},
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
def test_http_inspector_routes_h2c_and_http11_to_different_chains(proxy_factory):
    p = proxy_factory(bootstrap([hcm_chain("chain-h2c", application_protocols=["h2c"]),
                                 hcm_chain("chain-http11", application_protocols=["http/1.1"]),
                                 hcm_chain("chain-other")], [], [HTTP_INSPECTOR]))
    url = f"http://127.0.0.1:{p.port}/"
    h2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", url], capture_output=True, timeout=10)
    h1 = subprocess.run(["curl", "-s", "--http1.1", url], capture_output=True, timeout=10)
    h10 = subprocess.run(["curl", "-s", "--http1.0", url], capture_output=True, timeout=10)
    assert (h2.stdout, h1.stdout, h10.stdout) == (b"chain-h2c", b"chain-http11", b"chain-other")
    c = p.counters()
    assert (c["http_inspector.http2_found"], c["http_inspector.http11_found"],
            c["http_inspector.http10_found"]) == (1, 1, 1)


# -- proxy_protocol ---------------------------------------------------------------------------

@pytest.fixture
def pp_proxy(proxy_factory, tmp_path):
    def make(**pp_cfg):
        up = EchoUpstream("pp")
        log = tmp_path / "access.log"
        cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                 [static_cluster("c", up.port)], use_remote_address=True,
                                 access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
                                     "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                     "path": str(log), "log_format": {"text_format_source": {"inline_string":
                                         "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% "
                                         "%DOWNSTREAM_LOCAL_ADDRESS%\n"}}}}])
        cfg["static_resources"]["listeners"][0]["listener_filters"] = [proxy_protocol(**pp_cfg)]
        p = proxy_factory(cfg)
        p.upstream = up
        p.log = log
        return p
    yield make


def _ask(port: int, header: bytes) -> tuple[bytes, tuple]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(header + b"GET /pp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out, s.getsockname()


def v2_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack(">H", len(addrs) + 7) + addrs + b"\x01\x00\x04abcd"


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_protocol_addresses_reach_xff_and_the_access_log(pp_proxy, version):
    p = pp_proxy()
    try:
        header = (b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 8443\r\n" if version == 1
                  else v2_header("203.0.113.7", "198.51.100.1", 4242, 8443))
        out, me = _ask(p.port, header)
        assert out.startswith(b"HTTP/1.1 200"), out
        seen = json.loads(out.split(b"\r\n\r\n", 1)[1])
        assert seen["headers"]["x-forwarded-for"] == "203.0.113.7"
        assert seen["headers"]["x-envoy-external-address"] == "203.0.113.7"
        assert p.wait_for(lambda: p.log.exists() and p.log.read_text())
        assert p.log.read_text().split() == ["203.0.113.7:4242", f"127.0.0.1:{me[1]}", "198.51.100.1:8443"]
        assert p.counters()[f"proxy_proto.versions.v{version}.found"] == 1
    finally:
        p.upstream.close()


def test_proxy_protocol_refuses_what_is_not_a_header_unless_allowed(pp_proxy):
    p = pp_proxy()
    try:
        assert closed_without_answer(p.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert closed_without_answer(p.port, b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n")
        assert p.wait_for(lambda: p.counters().get("downstream_cx_proxy_proto_error") == 2)
        c = p.counters()
        assert (c["proxy_proto.not_found_disallowed"], c["proxy_proto.versions.v1.error"]) == (1, 1)
    finally:
        p.upstream.close()
    q = pp_proxy(allow_requests_without_proxy_protocol=True, disallowed_versions=["V2"], stat_prefix="edge")
    try:
        out, me = _ask(q.port, b"")
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]["x-forwarded-for"] != "203.0.113.7"
        assert q.counters()["proxy_proto.edge.not_found_allowed"] == 1
    finally:
        q.upstream.close()


# -- original_dst --------------------------------------------------------------------------------

def test_original_dst_keeps_the_local_address_of_a_socket_that_was_not_redirected(proxy_factory):
    up = EchoUpstream("plain")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        cfg = bootstrap([tcp_chain("plain", destination_port=port), tcp_chain("plain", "other")],
                        [static_cluster("plain", up.port)],
                        [{"name": "envoy.filters.listener.original_dst"}])
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
        p = proxy_factory(cfg)
        out = _ask(p.port, b"")[0]
        assert out.startswith(b"HTTP/1.0 200") or out.startswith(b"HTTP/1.1 200"), out
        # The chain naming the listener's own port took it: no NAT, so nothing was restored.
        assert p.counters()["tcp.plain.downstream_cx_total"] == 1
    finally:
        up.close()
