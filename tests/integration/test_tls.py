"""TLS through the running proxy, configured as in Envoy (`envoy.transport_sockets.tls`):
termination on a listener's filter chain (curl, openssl s_client, Python `ssl` as clients)
and origination from a cluster (Python `ssl` servers as upstreams). Certificates are made
in the tests (tests/tls_certs.py). Real sockets on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import subprocess
import time

import pytest

from tests.tls_certs import CertAuthority, key_pem, pem

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster
from .servers import AcceptLoop
from .test_tcp_proxy import tcp_proxy_config
from .tls_config import downstream_tls, upstream_tls, with_listener_tls

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ROUTE_ALL = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]


@pytest.fixture
def ca():
    return CertAuthority()


@pytest.fixture
def server_files(ca, tmp_path):
    """(cert, key) files for localhost / 127.0.0.1, and the CA's file."""
    cert, key = ca.issue_files(tmp_path, "server", ["localhost", "127.0.0.1"])
    return cert, key, ca.pem_file(tmp_path)


def _https_proxy(upstream, transport_socket, **chain):
    cfg = front_proxy_config(ROUTE_ALL, [static_cluster("c1", upstream.port)])
    return ProxyUnderTest(with_listener_tls(cfg, transport_socket, **chain))


def _curl(port: int, path: str, *args: str, host: str = "localhost") -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "5", "--resolve",
                           f"{host}:{port}:127.0.0.1", *args, f"https://{host}:{port}{path}"],
                          capture_output=True, text=True, timeout=15)


def _client_ctx(cafile=None, cert=None, key=None, alpn=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# -- termination ------------------------------------------------------------------------------

def test_https_is_served_with_keep_alive_and_counted_in_listener_ssl_stats(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key)))
    try:
        r = _curl(p.port, "/hello", "--cacert", str(cafile))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["path"] == "/hello"
        conn = http.client.HTTPSConnection("localhost", p.port, timeout=5, context=_client_ctx(cafile))
        for path in ("/one", "/two"):  # keep-alive: both on one TLS connection
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["path"] == path
        conn.close()
        c = p.counters()
        prefix = [k for k in c if k.endswith(".ssl.handshake")][0].rsplit(".ssl.", 1)[0]
        assert c[f"{prefix}.ssl.handshake"] == 2
        assert c[f"{prefix}.ssl.versions.TLSv1.3"] == 2
        assert c[f"{prefix}.ssl.ciphers.TLS_AES_128_GCM_SHA256"] == 2  # BoringSSL's first choice, as Envoy
        assert c[f"{prefix}.ssl.no_certificate"] == 2
        assert c[f"{prefix}.ssl.connection_error"] == 0
        assert len(upstream.requests) == 3
    finally:
        p.stop()


def test_the_certificate_is_chosen_by_sni_exact_then_wildcard_else_the_first(upstream, ca, tmp_path):
    first = ca.issue_files(tmp_path, "first", ["first.example.com"])
    exact = ca.issue_files(tmp_path, "exact", ["api.example.com"])
    wild = ca.issue_files(tmp_path, "wild", ["*.wild.example.com"])
    cafile = ca.pem_file(tmp_path)
    p = _https_proxy(upstream, downstream_tls(first, exact, wild))
    try:
        def served_names(sni: str | None) -> list[str]:
            ctx = _client_ctx(cafile)
            ctx.check_hostname = False
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname=sni) as t:
                    sans = t.getpeercert()["subjectAltName"]
            return [v for _k, v in sans]
        assert served_names("api.example.com") == ["api.example.com"]
        assert served_names("x.wild.example.com") == ["*.wild.example.com"]
        assert served_names("a.b.wild.example.com") == ["first.example.com"]  # one label only
        assert served_names("unknown.example.org") == ["first.example.com"]
        assert served_names(None) == ["first.example.com"]
        # And with curl, verifying the name it asked for.
        r = _curl(p.port, "/sni", "--cacert", str(cafile), host="x.wild.example.com")
        assert r.returncode == 0, r.stderr
    finally:
        p.stop()


def test_rsa_and_ecdsa_certificates_for_the_same_name_are_chosen_by_the_client(upstream, ca, tmp_path):
    ec_files = ca.issue_files(tmp_path, "ec", ["localhost"], kind="ecdsa")
    rsa_files = ca.issue_files(tmp_path, "rsa", ["localhost"], kind="rsa")
    p = _https_proxy(upstream, downstream_tls(ec_files, rsa_files, common={"tls_params": {
        "tls_maximum_protocol_version": "TLSv1_2"}}))
    try:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2",
                              "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], input="",
                             capture_output=True, text=True, timeout=10).stdout
        assert "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in out
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2",
                              "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], input="",
                             capture_output=True, text=True, timeout=10).stdout
        assert "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in out
    finally:
        p.stop()


def test_protocol_versions_are_bounded_as_configured_and_tls_1_1_is_refused(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key), common={"tls_params": {
        "tls_minimum_protocol_version": "TLSv1_3"}}))
    try:
        ctx = _client_ctx(cafile)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(s, server_hostname="localhost")
        assert _curl(p.port, "/", "--cacert", str(cafile), "--tlsv1.3").returncode == 0
        assert p.wait_for(lambda: any(k.endswith("ssl.connection_error") and v == 1
                                      for k, v in p.counters().items()))
    finally:
        p.stop()
    p = _https_proxy(upstream, downstream_tls((cert, key)))  # default: TLS 1.2 and 1.3
    try:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_1"],
                             input="", capture_output=True, text=True, timeout=10)
        assert "Cipher is (NONE)" in out.stdout or out.returncode != 0
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2"],
                             input="", capture_output=True, text=True, timeout=10)
        assert "Protocol  : TLSv1.2" in out.stdout or "TLSv1.2" in out.stdout
    finally:
        p.stop()


def test_alpn_is_chosen_by_server_preference_and_no_overlap_completes_without_one(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key), common={"alpn_protocols": ["h2", "http/1.1"]}))
    try:
        for offered, chosen in ((["http/1.1"], "http/1.1"), (["http/1.1", "h2"], "h2"), (["foo"], None)):
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                with _client_ctx(cafile, alpn=offered).wrap_socket(s, server_hostname="localhost") as t:
                    assert t.selected_alpn_protocol() == chosen
        # curl offering h2 and http/1.1 over TLS gets h2 and is served (the codec follows).
        r = subprocess.run(["curl", "-sS", "--http2", "--max-time", "5", "--cacert", str(cafile),
                            "--resolve", f"localhost:{p.port}:127.0.0.1", "-w", "%{http_version}",
                            "-o", "/dev/null", f"https://localhost:{p.port}/h2"],
                           capture_output=True, text=True, timeout=15)
        assert (r.returncode, r.stdout) == (0, "2"), r.stderr
        # ALPN h2 chooses the HTTP/2 codec (codec_type AUTO), as Envoy: HTTP/1.1 bytes after
        # it are a bad connection preface, a connection error (closed), not a request.
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            with _client_ctx(cafile, alpn=["h2"]).wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET /h1-over-h2 HTTP/1.1\r\nhost: localhost\r\n\r\n")
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
        frame_types, i = [], 0
        while i + 9 <= len(data):  # HTTP/2 frames: 3-byte length, type, flags, stream id
            frame_types.append(data[i + 3])
            i += 9 + int.from_bytes(data[i:i + 3], "big")
        assert b"HTTP/1.1" not in data and frame_types[:1] == [0x4], frame_types  # our SETTINGS
    finally:
        p.stop()


def _mtls_proxy(upstream, server_files, ca, **validation):
    cert, key, cafile = server_files
    return _https_proxy(upstream, downstream_tls(
        (cert, key), require_client_certificate=True,
        common={"validation_context": {"trusted_ca": {"filename": str(cafile)}, **validation}}))


def _ssl_stat(p, name: str) -> int:
    return sum(v for k, v in p.counters().items() if k.startswith("listener.") and k.endswith(f".ssl.{name}"))


def test_mtls_needs_a_client_certificate_from_the_trusted_ca(upstream, server_files, ca, tmp_path):
    _cert, _key, cafile = server_files
    good = ca.issue_files(tmp_path, "client", [], cn="client-a", client=True, uris=["spiffe://test/a"])
    stranger = CertAuthority("another CA").issue_files(tmp_path, "stranger", [], cn="x", client=True)
    p = _mtls_proxy(upstream, server_files, ca)
    try:
        r = _curl(p.port, "/m", "--cacert", str(cafile), "--cert", str(good[0]), "--key", str(good[1]))
        assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/m", r.stderr
        assert _curl(p.port, "/m", "--cacert", str(cafile)).returncode != 0
        assert p.wait_for(lambda: _ssl_stat(p, "fail_verify_no_cert") == 1)
        assert _curl(p.port, "/m", "--cacert", str(cafile), "--cert", str(stranger[0]),
                     "--key", str(stranger[1])).returncode != 0
        assert p.wait_for(lambda: _ssl_stat(p, "fail_verify_error") == 1)
        assert _ssl_stat(p, "handshake") == 1 and _ssl_stat(p, "connection_error") == 0  # as Envoy: fail_verify_* only
        assert len(upstream.requests) == 1
    finally:
        p.stop()


def test_mtls_subject_alt_name_matchers_and_pins(upstream, server_files, ca, tmp_path):
    _cert, _key, cafile = server_files
    a = ca.issue_files(tmp_path, "a", [], cn="a", client=True, uris=["spiffe://test/a"])
    b = ca.issue_files(tmp_path, "b", [], cn="b", client=True, uris=["spiffe://test/b"])
    p = _mtls_proxy(upstream, server_files, ca, match_typed_subject_alt_names=[
        {"san_type": "URI", "matcher": {"exact": "spiffe://test/a"}}])
    try:
        assert _curl(p.port, "/", "--cacert", str(cafile), "--cert", str(a[0]), "--key", str(a[1])).returncode == 0
        assert _curl(p.port, "/", "--cacert", str(cafile), "--cert", str(b[0]), "--key", str(b[1])).returncode != 0
        assert p.wait_for(lambda: _ssl_stat(p, "fail_verify_san") == 1)
    finally:
        p.stop()
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    der = x509.load_pem_x509_certificate(b[0].read_bytes()).public_bytes(serialization.Encoding.DER)
    p = _mtls_proxy(upstream, server_files, ca, verify_certificate_hash=[hashlib.sha256(der).hexdigest()])
    try:
        assert _curl(p.port, "/", "--cacert", str(cafile), "--cert", str(b[0]), "--key", str(b[1])).returncode == 0
        assert _curl(p.port, "/", "--cacert", str(cafile), "--cert", str(a[0]), "--key", str(a[1])).returncode != 0
        assert p.wait_for(lambda: _ssl_stat(p, "fail_verify_cert_hash") == 1)
    finally:
        p.stop()


def test_garbage_instead_of_a_client_hello_closes_that_connection_only(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key)))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):  # an alert at most, then the close
                data += chunk
            assert b"HTTP/1.1" not in data
        assert p.wait_for(lambda: _ssl_stat(p, "connection_error") == 1)
        assert _curl(p.port, "/after", "--cacert", str(cafile)).returncode == 0
    finally:
        p.stop()


def test_a_client_hello_written_one_byte_at_a_time_is_served(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key)))
    try:
        ctx = _client_ctx(cafile)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            assert len(hello) > 200
            for i in range(len(hello)):
                s.send(hello[i:i + 1])
                time.sleep(0.0005)
            while True:  # finish the handshake over the socket
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if out := outgoing.read():
                        s.sendall(out)
                    incoming.write(s.recv(65536))
            s.sendall(outgoing.read())
            tls.write(b"GET /bytewise HTTP/1.1\r\nhost: localhost\r\n\r\n")
            s.sendall(outgoing.read())
            body = b""
            while b"/bytewise" not in body:
                incoming.write(s.recv(65536))
                try:
                    while chunk := tls.read(65536):  # every record held, before waiting for more
                        body += chunk
                except ssl.SSLWantReadError:
                    pass
        assert b"200 OK" in body
    finally:
        p.stop()


def test_stalled_handshakes_close_at_the_connect_timeout_and_a_good_client_is_served(upstream, server_files):
    cert, key, cafile = server_files
    p = _https_proxy(upstream, downstream_tls((cert, key)), transport_socket_connect_timeout="1s")
    stalled = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            if i % 2:
                s.send(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello record header, then nothing
            stalled.append(s)
        t0 = time.monotonic()
        r = _curl(p.port, "/good", "--cacert", str(cafile))
        assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/good"
        for s in stalled:  # every stalled one is closed by the proxy, at about the timeout
            s.settimeout(10)
            assert s.recv(4096) == b""
        assert time.monotonic() - t0 < 8
        assert p.wait_for(lambda: sum(v for k, v in p.counters().items() if k.endswith(
            ".downstream_cx_transport_socket_connect_timeout") and "worker_" not in k) == 200)
        assert p.wait_for(lambda: sum(v for k, v in p.gauges().items()
                                      if k.startswith("listener.") and k.endswith("downstream_cx_active")
                                      and "worker_" not in k) == 0)
    finally:
        for s in stalled:
            s.close()
        p.stop()


def test_a_client_that_never_reads_a_large_response_holds_bounded_memory(server_files):
    from .servers import RawHttpUpstream
    cert, key, cafile = server_files
    up = RawHttpUpstream()
    p = _https_proxy(up, downstream_tls((cert, key)))
    try:
        size = 64 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            with _client_ctx(cafile).wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET /stream/%d HTTP/1.1\r\nhost: localhost\r\n\r\n" % size)
                time.sleep(1.0)  # read nothing: the proxy must stop reading the upstream
                worker = p.server.workers[0]
                conns = [c for c in list(worker.connections) if getattr(c, "connection", None) is not None]
                held = [c.connection.buffered_bytes + len(c.connection.transport_socket._out) for c in conns]
                assert held and max(held) < 4 * 1024 * 1024, held
                got = 0
                while got < size:
                    chunk = t.recv(1 << 20)
                    assert chunk
                    got += len(chunk)
                # the head and the body: at least the body's bytes arrived
                assert got >= size
    finally:
        p.stop()
        up.close()


# -- origination ------------------------------------------------------------------------------

class TlsHttpUpstream(AcceptLoop):
    """HTTP/1.1 over TLS (Python ssl), keep-alive: answers each request with its path, and
    records the SNI, TLS version and client certificate of each connection."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.heads: list[bytes] = []
        self.snis: list[str | None] = []
        self.versions: list[str] = []
        self.peer_subjects: list[object] = []
        self.reused: list[bool] = []
        ctx.sni_callback = lambda sslobj, name, _ctx: self.snis.append(name)
        super().__init__("tls-http")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            with self.ctx.wrap_socket(s, server_side=True) as t:
                self.versions.append(t.version())
                self.reused.append(t.session_reused)
                self.peer_subjects.append(t.getpeercert())
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


def _server_ctx(cert_key, client_ca=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_key[0]), str(cert_key[1]))
    if client_ca:
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _tls_upstream_proxy(up, transport_socket, tmp_path, **cluster_extra):
    log = tmp_path / "access.log"
    cfg = front_proxy_config(ROUTE_ALL, [static_cluster("c1", up.port, transport_socket=transport_socket,
                                                        **cluster_extra)],
                             access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
                                 "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
                                     "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% "
                                                      "[%UPSTREAM_TRANSPORT_FAILURE_REASON%]\n"}}}}])
    return ProxyUnderTest(cfg), log


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _log_lines(p, log, n: int) -> list[str]:
    assert p.wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= n)
    return log.read_text().splitlines()


def _cluster_ssl(p, name: str) -> int:
    return p.counters().get(f"cluster.c1.ssl.{name}", 0)


def test_upstream_tls_verifies_the_server_and_sends_the_configured_sni(ca, tmp_path):
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["backend.internal"])))
    cafile = ca.pem_file(tmp_path)
    p, _log = _tls_upstream_proxy(up, upstream_tls(sni="backend.internal", common={
        "validation_context": {"trusted_ca": {"filename": str(cafile)},
                               "match_typed_subject_alt_names": [
                                   {"san_type": "DNS", "matcher": {"exact": "backend.internal"}}]}}),
        tmp_path, max_requests_per_connection=1)
    try:
        for path in ("/a", "/b"):
            assert _get(p.port, path) == (200, path.encode())
        assert up.snis[:2] == ["backend.internal", "backend.internal"]
        assert up.versions[0] == "TLSv1.2"  # Envoy's upstream default: at most TLS 1.2
        assert p.wait_for(lambda: _cluster_ssl(p, "handshake") == 2)
        assert _cluster_ssl(p, "session_reused") == 1 and up.reused[1] is True  # resumption
        assert p.counters()["cluster.c1.ssl.versions.TLSv1.2"] == 2
    finally:
        p.stop()
        up.close()


@pytest.mark.parametrize("case,stat", [("self_signed", "fail_verify_error"), ("expired", "fail_verify_error"),
                                       ("wrong_host", "fail_verify_san")])
def test_an_upstream_that_fails_verification_gets_no_request_and_the_client_a_503_uf(ca, tmp_path, case, stat):
    if case == "self_signed":
        files = ca.issue_files(tmp_path, "up", ["backend.internal"], self_signed=True)
    elif case == "expired":
        files = ca.issue_files(tmp_path, "up", ["backend.internal"], expired=True)
    else:
        files = ca.issue_files(tmp_path, "up", ["other.internal"])
    up = TlsHttpUpstream(_server_ctx(files))
    cafile = ca.pem_file(tmp_path)
    p, log = _tls_upstream_proxy(up, upstream_tls(sni="backend.internal", common={
        "validation_context": {"trusted_ca": {"filename": str(cafile)},
                               "match_typed_subject_alt_names": [
                                   {"san_type": "DNS", "matcher": {"exact": "backend.internal"}}]}}),
        tmp_path)
    try:
        status, body = _get(p.port, "/secret")
        assert status == 503
        assert body.startswith(b"upstream connect error or disconnect/reset before headers")
        assert up.heads == []  # never a request byte to an unverified upstream
        line = _log_lines(p, log, 1)[0]
        assert line.startswith("503 UF [TLS_error:"), line
        assert "verify" in line
        assert _cluster_ssl(p, stat) == 1 and _cluster_ssl(p, "connection_error") == 0  # fail_verify_* only, as Envoy
    finally:
        p.stop()
        up.close()


def test_sni_alone_does_not_check_the_host_name_and_no_validation_context_accepts_any(ca, tmp_path):
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["other.internal"])))
    cafile = ca.pem_file(tmp_path)
    p, _ = _tls_upstream_proxy(up, upstream_tls(sni="backend.internal", common={
        "validation_context": {"trusted_ca": {"filename": str(cafile)}}}), tmp_path)
    try:
        assert _get(p.port, "/x") == (200, b"/x")
    finally:
        p.stop()
        up.close()
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "self", ["x"], self_signed=True)))
    p, _ = _tls_upstream_proxy(up, upstream_tls(), tmp_path)
    try:
        assert _get(p.port, "/y") == (200, b"/y")
        assert up.snis == [None]  # no sni configured: none sent
    finally:
        p.stop()
        up.close()


def test_a_client_certificate_is_presented_to_an_mtls_upstream(ca, tmp_path):
    client = ca.issue_files(tmp_path, "proxy-client", [], cn="ftproxy", client=True)
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["localhost"]), client_ca=ca.pem_file(tmp_path)))
    p, _ = _tls_upstream_proxy(up, upstream_tls(common={"tls_certificates": [
        {"certificate_chain": {"filename": str(client[0])}, "private_key": {"filename": str(client[1])}}]}),
        tmp_path)
    try:
        assert _get(p.port, "/m") == (200, b"/m")
        subject = dict(x[0] for x in up.peer_subjects[0]["subject"])
        assert subject["commonName"] == "ftproxy"
    finally:
        p.stop()
        up.close()


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


def test_tcp_proxy_relays_bulk_to_a_tls_upstream_and_half_closes_with_close_notify(ca, tmp_path):
    up = TlsEchoUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["localhost"])))
    cfg = tcp_proxy_config(up.port)
    cfg["static_resources"]["clusters"][0]["transport_socket"] = upstream_tls()
    p = ProxyUnderTest(cfg)
    try:
        msg = bytes(range(256)) * 4096  # 1 MiB
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(65536):
                got += chunk
        assert bytes(got) == msg
    finally:
        p.stop()
        up.close()


def test_tls_on_both_sides_of_tcp_proxy(ca, tmp_path):
    """TLS terminated and originated by one tcp_proxy listener (not passthrough: the proxy
    sees the plaintext): a bulk echo with Python ssl as client and upstream."""
    up = TlsEchoUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["localhost"])))
    cert, key = ca.issue_files(tmp_path, "front", ["localhost"])
    cfg = tcp_proxy_config(up.port)
    cfg["static_resources"]["clusters"][0]["transport_socket"] = upstream_tls()
    p = ProxyUnderTest(with_listener_tls(cfg, downstream_tls((cert, key))))
    try:
        msg = bytes(range(251)) * 12533  # ~3 MiB, a pattern that shows reordering
        got = bytearray()
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            with _client_ctx(ca.pem_file(tmp_path)).wrap_socket(s, server_hostname="localhost") as t:
                t.setblocking(False)  # one thread writes and reads: SSLSocket is not for two
                sent = 0
                deadline = time.monotonic() + 20
                while len(got) < len(msg) and time.monotonic() < deadline:
                    if sent < len(msg):
                        try:
                            sent += t.send(msg[sent:sent + 65536])
                        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                            pass
                    try:
                        got += t.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        select.select([t], [], [], 0.01)
        assert bytes(got) == msg
    finally:
        p.stop()
        up.close()


def test_a_key_that_does_not_match_its_certificate_is_a_config_error_naming_the_field(ca, tmp_path):
    from proxy.config.load import parse_bootstrap
    from proxy.config.reader import ConfigError
    cert, _ = ca.issue_files(tmp_path, "a", ["localhost"])
    _, other_key = ca.issue_files(tmp_path, "b", ["localhost"])
    cfg = with_listener_tls(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]),
                            downstream_tls((cert, other_key)))
    with pytest.raises(ConfigError, match=r"tls_certificates\[0\]: the private key does not match"):
        parse_bootstrap(cfg)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    cfg = with_listener_tls(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]),
                            downstream_tls((bad, other_key)))
    with pytest.raises(ConfigError, match=r"certificate_chain: not a PEM certificate"):
        parse_bootstrap(cfg)
    key_file = tmp_path / "enc.key"
    cert2, key2 = ca.issue(["localhost"])
    key_file.write_bytes(key_pem(key2, b"secret"))
    (tmp_path / "c2.pem").write_bytes(pem(cert2))
    ts = downstream_tls((tmp_path / "c2.pem", key_file))
    ts["typed_config"]["common_tls_context"]["tls_certificates"][0]["password"] = {"inline_string": "wrong"}
    with pytest.raises(ConfigError, match=r"private_key: cannot load the private key"):
        parse_bootstrap(with_listener_tls(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]), ts))
    ts["typed_config"]["common_tls_context"]["tls_certificates"][0]["password"] = {"inline_string": "secret"}
    parse_bootstrap(with_listener_tls(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]), ts))


@pytest.mark.parametrize("served_name,status", [("localhost", 200), ("other.internal", 503)])
def test_auto_host_sni_sends_the_hosts_dns_name_and_auto_sni_san_validation_checks_it(
        ca, tmp_path, served_name, status):
    """A STRICT_DNS host named `localhost`: auto_host_sni sends that name as SNI, and
    auto_sni_san_validation requires a DNS SAN matching it instead of the SAN matchers
    (which here would accept anything from backend.internal)."""
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "up", [served_name])))
    cafile = ca.pem_file(tmp_path)
    transport = upstream_tls(sni="configured.example", auto_host_sni=True, auto_sni_san_validation=True, common={
        "validation_context": {"trusted_ca": {"filename": str(cafile)}, "match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"suffix": ".internal"}}]}})
    log = tmp_path / "access.log"
    cluster = {"name": "c1", "type": "STRICT_DNS", "connect_timeout": "1s", "dns_lookup_family": "V4_ONLY",
               "load_assignment": {"cluster_name": "c1", "endpoints": [{"lb_endpoints": [{"endpoint": {
                   "address": {"socket_address": {"address": "localhost", "port_value": up.port}}}}]}]},
               "transport_socket": transport}
    p = ProxyUnderTest(front_proxy_config(ROUTE_ALL, [cluster]))
    try:
        got = _get(p.port, "/dns")
        assert got[0] == status
        assert up.snis[:1] == ["localhost"]
        if status == 503:
            assert _cluster_ssl(p, "fail_verify_san") == 1 and up.heads == []
    finally:
        p.stop()
        up.close()


def test_upstream_tls_1_3_sessions_are_resumed_from_the_servers_ticket(ca, tmp_path):
    up = TlsHttpUpstream(_server_ctx(ca.issue_files(tmp_path, "up", ["localhost"])))
    p, _ = _tls_upstream_proxy(up, upstream_tls(common={"tls_params": {
        "tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}}),
        tmp_path, max_requests_per_connection=1)
    try:
        for path in ("/a", "/b", "/c"):
            assert _get(p.port, path) == (200, path.encode())
        assert up.versions == ["TLSv1.3"] * 3
        assert p.wait_for(lambda: _cluster_ssl(p, "handshake") == 3)
        assert _cluster_ssl(p, "session_reused") == 2 and up.reused == [False, True, True]
    finally:
        p.stop()
        up.close()
