"""What HTTP and the admin see of TLS, through the running proxy with its real TLS transport
(DownstreamTlsContext on the listener, UpstreamTlsContext on a cluster) and real clients
(Python's `ssl`/http.client, curl): x-forwarded-proto and :scheme, require_tls,
x-forwarded-client-cert in each forward_client_cert_details mode, the TLS access-log
operators, route match tls_context, /certs and the redaction of secrets in /config_dump.

Expected values are computed here from the certificates themselves (hashlib, urllib's
quoting), not with the proxy's own helpers. tests/differential/cases/http_over_tls.yaml
compares the same behaviours with real Envoy 1.40.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.h2_backend import H2Backend
from tests.tls_certs import CertAuthority, key_pem

from .harness import EchoUpstream, front_proxy_config, static_cluster
from .test_h2_upstream import h2_cluster

TLS = "envoy.transport_sockets.tls"
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
SERVER_URI = "spiffe://ftproxy.test/front"
CLIENT_URIS = ["spiffe://ftproxy.test/client", "spiffe://ftproxy.test/second"]


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca = CertAuthority()
        self.ca_file = self.ca.pem_file(d)
        self.server_cert, self.server_key = self.ca.issue_files(d, "server", ["localhost"], uris=[SERVER_URI])
        self.client_cert, self.client_key = self.ca.issue_files(d, "client", ["client.test"], cn="client",
                                                                uris=CLIENT_URIS, client=True)
        self.client = x509.load_pem_x509_certificate(self.client_cert.read_bytes())
        self.server = x509.load_pem_x509_certificate(self.server_cert.read_bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def downstream_tls(pki: Pki, **extra) -> dict:
    ctx = {"common_tls_context": {
        "tls_certificates": [{"certificate_chain": {"filename": str(pki.server_cert)},
                              "private_key": {"filename": str(pki.server_key)}}],
        "validation_context": {"trusted_ca": {"filename": str(pki.ca_file)}}}}
    ctx.update(extra)
    return {"name": TLS, "typed_config": {"@type": DOWNSTREAM, **ctx}}


def tls_listener_config(pki: Pki, routes=ROUTES, clusters=(), **hcm) -> dict:
    cfg = front_proxy_config(routes, list(clusters), **hcm)
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = downstream_tls(pki)
    return cfg


def client_ctx(pki: Pki, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT  # the test CA is minimal (no key identifiers)
    if cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def https_get(pki: Pki, port: int, path: str, cert: bool = False, headers: dict | None = None):
    """(status, headers, body) of one request over TLS (SNI localhost, the CA verified)."""
    c = http.client.HTTPSConnection("localhost", port, context=client_ctx(pki, cert), timeout=10)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=10)  # the listener's address
    c.sock = c._context.wrap_socket(c.sock, server_hostname="localhost")
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def plain_get(port: int, path: str, headers: dict | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def upstream_headers(body: bytes) -> dict:
    return json.loads(body)["headers"]


def _pem_urlencoded(cert: x509.Certificate) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="-._~")


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- x-forwarded-proto, :scheme, require_tls -----------------------------------------------

def test_use_remote_address_overwrites_x_forwarded_proto_with_https_over_tls(pki, upstream, proxy_factory):
    cfg = tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)], use_remote_address=True)
    p = proxy_factory(cfg)
    status, _, body = https_get(pki, p.port, "/a", headers={"x-forwarded-proto": "http"})
    assert status == 200
    assert upstream_headers(body)["x-forwarded-proto"] == "https"  # at the edge: overwritten


def test_x_forwarded_proto_is_added_as_https_without_use_remote_address(pki, upstream, proxy_factory):
    p = proxy_factory(tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)]))
    status, _, body = https_get(pki, p.port, "/a")
    assert status == 200 and upstream_headers(body)["x-forwarded-proto"] == "https"
    # A value a trusted proxy set is kept (Envoy: only use_remote_address overwrites it).
    status, _, body = https_get(pki, p.port, "/a", headers={"x-forwarded-proto": "http"})
    assert upstream_headers(body)["x-forwarded-proto"] == "http"


def test_the_scheme_sent_to_an_http2_upstream_is_https_for_a_tls_client(pki, proxy_factory):
    b = H2Backend()
    try:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "h2c"}}]
        p = proxy_factory(tls_listener_config(pki, routes, [h2_cluster(b.port)]))
        status, _, _ = https_get(pki, p.port, "/s")
        assert status == 200
        assert b.echo_requests[-1][2][":scheme"] == "https"
    finally:
        b.close()


def test_require_tls_redirects_plaintext_and_serves_tls(pki, upstream, proxy_factory):
    vhosts = [{"name": "secure", "domains": ["*"], "require_tls": "ALL",
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]}]
    cfg = tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)])
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"] = vhosts
    plain = json.loads(json.dumps(cfg["static_resources"]["listeners"][0]))
    plain["name"] = "plain"
    del plain["filter_chains"][0]["transport_socket"]
    cfg["static_resources"]["listeners"].append(plain)
    p = proxy_factory(cfg)
    status, _, body = https_get(pki, p.port, "/over-tls")
    assert status == 200 and json.loads(body)["path"] == "/over-tls"
    plain_port = p.server.listener_port("plain")
    status, headers, _ = plain_get(plain_port, "/x?y=1", {"host": "secure.example"})
    assert status == 301 and headers["location"] == "https://secure.example/x?y=1"


# -- x-forwarded-client-cert ---------------------------------------------------------------

def _xfcc_proxy(pki, upstream, proxy_factory, mode: str, details: dict | None = None):
    extra = {"forward_client_cert_details": mode}
    if details is not None:
        extra["set_current_client_cert_details"] = details
    return proxy_factory(tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)], **extra))


def test_sanitize_is_the_default_and_removes_the_header_even_with_a_client_certificate(pki, upstream, proxy_factory):
    p = proxy_factory(tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)]))
    _, _, body = https_get(pki, p.port, "/", cert=True, headers={"x-forwarded-client-cert": "By=evil"})
    assert "x-forwarded-client-cert" not in upstream_headers(body)


def test_sanitize_set_writes_every_detail_in_envoys_order(pki, upstream, proxy_factory):
    p = _xfcc_proxy(pki, upstream, proxy_factory, "SANITIZE_SET",
                    {"dns": True, "uri": True, "subject": {"value": True}, "chain": True, "cert": True})
    _, _, body = https_get(pki, p.port, "/", cert=True, headers={"x-forwarded-client-cert": "By=evil"})
    cert = _pem_urlencoded(pki.client)
    # Python's ssl client sends its certificate and the CA it found in its trust store.
    chain = cert + _pem_urlencoded(pki.ca.cert)
    want = (f"By={SERVER_URI};Hash={_sha256(pki.client)};Cert=\"{cert}\";Chain=\"{chain}\";"
            f"Subject=\"O=ftproxy tests,CN=client\";URI={CLIENT_URIS[0]};URI={CLIENT_URIS[1]};"
            f"DNS=client.test")
    assert upstream_headers(body)["x-forwarded-client-cert"] == want


def test_sanitize_set_without_details_is_by_and_hash(pki, upstream, proxy_factory):
    p = _xfcc_proxy(pki, upstream, proxy_factory, "SANITIZE_SET")
    _, _, body = https_get(pki, p.port, "/", cert=True)
    assert upstream_headers(body)["x-forwarded-client-cert"] == f"By={SERVER_URI};Hash={_sha256(pki.client)}"


def test_append_forward_appends_this_hop_after_a_comma(pki, upstream, proxy_factory):
    p = _xfcc_proxy(pki, upstream, proxy_factory, "APPEND_FORWARD", {"uri": True})
    _, _, body = https_get(pki, p.port, "/", cert=True,
                           headers={"x-forwarded-client-cert": "By=spiffe://prev;Hash=aa"})
    assert upstream_headers(body)["x-forwarded-client-cert"] == (
        f"By=spiffe://prev;Hash=aa,By={SERVER_URI};Hash={_sha256(pki.client)};"
        f"URI={CLIENT_URIS[0]};URI={CLIENT_URIS[1]}")


@pytest.mark.parametrize("mode", ["FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET"])
def test_without_a_client_certificate_the_header_is_removed(pki, upstream, proxy_factory, mode):
    p = _xfcc_proxy(pki, upstream, proxy_factory, mode)
    _, _, body = https_get(pki, p.port, "/", headers={"x-forwarded-client-cert": "By=spiffe://prev"})
    assert "x-forwarded-client-cert" not in upstream_headers(body)


def test_forward_only_passes_the_header_on_over_mutual_tls(pki, upstream, proxy_factory):
    p = _xfcc_proxy(pki, upstream, proxy_factory, "FORWARD_ONLY")
    _, _, body = https_get(pki, p.port, "/", cert=True, headers={"x-forwarded-client-cert": "By=spiffe://prev"})
    assert upstream_headers(body)["x-forwarded-client-cert"] == "By=spiffe://prev"


def test_always_forward_only_keeps_the_header_even_on_plaintext(upstream, proxy_factory):
    cfg = front_proxy_config(ROUTES, [static_cluster("c1", upstream.port)],
                             forward_client_cert_details="ALWAYS_FORWARD_ONLY")
    p = proxy_factory(cfg)
    _, _, body = plain_get(p.port, "/", {"x-forwarded-client-cert": "By=spiffe://prev"})
    assert upstream_headers(body)["x-forwarded-client-cert"] == "By=spiffe://prev"


def test_xfcc_over_curl_with_a_client_certificate(pki, upstream, proxy_factory):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    p = _xfcc_proxy(pki, upstream, proxy_factory, "SANITIZE_SET", {"subject": True})
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(pki.ca_file), "--cert", str(pki.client_cert), "--key",
         str(pki.client_key), "--resolve", f"localhost:{p.port}:127.0.0.1", f"https://localhost:{p.port}/c"],
        capture_output=True, timeout=20, check=True)
    assert upstream_headers(out.stdout)["x-forwarded-client-cert"] == (
        f"By={SERVER_URI};Hash={_sha256(pki.client)};Subject=\"O=ftproxy tests,CN=client\"")


# -- access-log operators -----------------------------------------------------------------

TLS_FORMAT = ("%REQ(:PATH)%|v=%DOWNSTREAM_TLS_VERSION%|c=%DOWNSTREAM_TLS_CIPHER%"
              "|s=%DOWNSTREAM_PEER_SUBJECT%|u=%DOWNSTREAM_PEER_URI_SAN%|l=%DOWNSTREAM_LOCAL_URI_SAN%"
              "|f=%DOWNSTREAM_PEER_FINGERPRINT_256%|n=%REQUESTED_SERVER_NAME%"
              "|uv=%UPSTREAM_TLS_VERSION%|uc=%UPSTREAM_TLS_CIPHER%|us=%UPSTREAM_PEER_SUBJECT%"
              "|uf=%UPSTREAM_TRANSPORT_FAILURE_REASON%|p=%DOWNSTREAM_PEER_CERT%\n")


def _access_log(path: Path) -> list:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path),
        "log_format": {"text_format_source": {"inline_string": TLS_FORMAT}}}}]


def _line(p, path: Path, needle: str) -> dict[str, str]:
    found: list[str] = []

    def check():
        if path.exists():
            found[:] = [x for x in path.read_text().splitlines() if x.startswith(needle + "|")]
        return bool(found)
    assert p.wait_for(check, timeout=5), f"no access log line for {needle}"
    first, *pairs = found[0].split("|")
    return {k: v for k, _, v in (kv.partition("=") for kv in pairs)}


class TlsUpstream(EchoUpstream):
    """The echo upstream behind TLS (its certificate for 127.0.0.1, signed by the test CA)."""

    def __init__(self, pki: Pki) -> None:
        super().__init__("tls-service")
        cert, key = pki.ca.issue_files(pki.dir, "upstream", ["127.0.0.1"], cn="upstream.test")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)


def _upstream_tls(pki: Pki, **validation) -> dict:
    return {"name": TLS, "typed_config": {"@type": UPSTREAM, "common_tls_context": {
        "validation_context": {"trusted_ca": {"filename": str(pki.ca_file)}, **validation}}}}


def test_access_log_tls_operators_downstream_and_upstream(pki, upstream, proxy_factory, tmp_path):
    up = TlsUpstream(pki)
    try:
        log = tmp_path / "tls.log"
        routes = [{"match": {"prefix": "/secure"}, "route": {"cluster": "secure"}},
                  {"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
        clusters = [static_cluster("c1", upstream.port),
                    static_cluster("secure", up.port, transport_socket=_upstream_tls(pki))]
        cfg = tls_listener_config(pki, routes, clusters, access_log=_access_log(log))
        plain = json.loads(json.dumps(cfg["static_resources"]["listeners"][0]))
        plain["name"] = "plain"
        del plain["filter_chains"][0]["transport_socket"]
        cfg["static_resources"]["listeners"].append(plain)
        p = proxy_factory(cfg)
        assert https_get(pki, p.port, "/mtls", cert=True)[0] == 200
        assert https_get(pki, p.port, "/secure/x")[0] == 200
        assert plain_get(p.server.listener_port("plain"), "/plain")[0] == 200

        m = _line(p, log, "/mtls")
        assert m["v"] == "TLSv1.3" and m["c"].startswith("TLS_")
        assert m["s"] == "O=ftproxy tests,CN=client"
        assert m["u"] == ",".join(CLIENT_URIS) and m["l"] == SERVER_URI
        assert m["f"] == _sha256(pki.client)
        assert m["p"] == _pem_urlencoded(pki.client)
        assert m["n"] == "-"  # SNI reaches %REQUESTED_SERVER_NAME% only through tls_inspector (Envoy)
        assert (m["uv"], m["uc"], m["us"], m["uf"]) == ("-", "-", "-", "-")  # a plaintext upstream

        s = _line(p, log, "/secure/x")
        assert s["s"] == "-" and s["f"] == "-" and s["p"] == "-"  # no client certificate
        assert s["uv"] == "TLSv1.2"  # an UpstreamTlsContext's default maximum
        assert s["uc"].startswith("ECDHE-")
        assert s["us"] == "O=ftproxy tests,CN=upstream.test"

        n = _line(p, log, "/plain")
        assert all(n[k] == "-" for k in ("v", "c", "s", "u", "l", "f", "uv", "uc", "us", "p"))
    finally:
        up.close()


def test_a_failed_upstream_handshake_fills_the_transport_failure_reason(pki, upstream, proxy_factory, tmp_path):
    up = TlsUpstream(pki)
    try:
        log = tmp_path / "fail.log"
        clusters = [static_cluster("c1", up.port, transport_socket=_upstream_tls(
            pki, match_typed_subject_alt_names=[{"san_type": "DNS", "matcher": {"exact": "other.test"}}]))]
        p = proxy_factory(tls_listener_config(pki, clusters=clusters, access_log=_access_log(log)))
        status, _, body = https_get(pki, p.port, "/f")
        assert status == 503
        assert _line(p, log, "/f")["uf"].startswith("TLS_error:")
    finally:
        up.close()


# -- route match tls_context -------------------------------------------------------------

def test_route_match_tls_context_presented_and_validated(pki, proxy_factory):
    def direct(body: str) -> dict:
        return {"status": 200, "body": {"inline_string": body}}
    routes = [{"match": {"prefix": "/p", "tls_context": {"presented": True}}, "direct_response": direct("presented")},
              {"match": {"prefix": "/p"}, "direct_response": direct("absent")},
              {"match": {"prefix": "/v", "tls_context": {"validated": True}}, "direct_response": direct("validated")},
              {"match": {"prefix": "/v", "tls_context": {"validated": False}}, "direct_response": direct("unvalidated")}]
    cfg = tls_listener_config(pki, routes)
    plain = json.loads(json.dumps(cfg["static_resources"]["listeners"][0]))
    plain["name"] = "plain"
    del plain["filter_chains"][0]["transport_socket"]
    cfg["static_resources"]["listeners"].append(plain)
    p = proxy_factory(cfg)
    assert https_get(pki, p.port, "/p", cert=True)[2] == b"presented"
    assert https_get(pki, p.port, "/p")[2] == b"absent"
    assert https_get(pki, p.port, "/v", cert=True)[2] == b"validated"
    assert https_get(pki, p.port, "/v")[2] == b"unvalidated"
    assert plain_get(p.server.listener_port("plain"), "/p")[2] == b"absent"
    assert plain_get(p.server.listener_port("plain"), "/v")[2] == b"unvalidated"


# -- admin -----------------------------------------------------------------------------

def test_admin_certs_lists_every_tls_context(pki, upstream, proxy_factory):
    clusters = [static_cluster("c1", upstream.port, transport_socket=_upstream_tls(pki))]
    p = proxy_factory(tls_listener_config(pki, clusters=clusters))
    status, body = p.admin("/certs")
    assert status == 200
    certs = json.loads(body)["certificates"]
    assert len(certs) == 2
    listener, cluster = certs
    ca = pki.ca.cert
    serial = f"{ca.serial_number:x}"
    assert listener["ca_cert"] == cluster["ca_cert"] == [{
        "path": str(pki.ca_file), "serial_number": serial if len(serial) % 2 == 0 else "0" + serial,
        "subject_alt_names": [],
        "days_until_expiration": str((ca.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days),
        "valid_from": ca.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expiration_time": ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    (leaf,) = listener["cert_chain"]
    assert leaf["path"] == str(pki.server_cert)
    assert leaf["subject_alt_names"] == [{"dns": "localhost"}, {"uri": SERVER_URI}]
    assert int(leaf["serial_number"], 16) == pki.server.serial_number
    assert cluster["cert_chain"] == []  # the cluster presents no certificate


def test_config_dump_redacts_private_keys_passwords_and_pkcs12(pki, tmp_path, proxy_factory, upstream):
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted = key_pem(key, b"secret-pass").decode()
    p12 = pkcs12.serialize_key_and_certificates(b"s", key, pki.server, None,
                                                serialization.BestAvailableEncryption(b"p12-pass"))
    cfg = tls_listener_config(pki, clusters=[static_cluster("c1", upstream.port)])
    ts = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    ts["common_tls_context"]["tls_certificates"] = [
        {"certificate_chain": {"filename": str(pki.server_cert)}, "private_key": {"inline_string": encrypted},
         "password": {"inline_string": "secret-pass"}},
    ]
    clusters = cfg["static_resources"]["clusters"]
    clusters[0]["transport_socket"] = {"name": TLS, "typed_config": {"@type": UPSTREAM, "common_tls_context": {
        "tls_certificates": [{"pkcs12": {"inline_bytes": base64.b64encode(p12).decode()},
                              "password": {"environment_variable": "FTPROXY_TEST_P12_PASS"}}]}}}
    os.environ["FTPROXY_TEST_P12_PASS"] = "p12-pass"
    try:
        p = proxy_factory(cfg)
    finally:
        del os.environ["FTPROXY_TEST_P12_PASS"]
    status, body = p.admin("/config_dump")
    assert status == 200
    assert "secret-pass" not in body and "PRIVATE KEY" not in body and "p12-pass" not in body
    assert base64.b64encode(p12).decode()[:40] not in body
    boot = json.loads(body)["configs"][0]["bootstrap"]["static_resources"]
    down = boot["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert down["tls_certificates"] == [{"certificate_chain": {"filename": str(pki.server_cert)},
                                         "private_key": {"inline_string": "[redacted]"},
                                         "password": {"inline_string": "[redacted]"}}]
    up = boot["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert up["tls_certificates"] == [{"pkcs12": {"inline_bytes": "W3JlZGFjdGVkXQ=="},  # "[redacted]"
                                       "password": {"environment_variable": "[redacted]"}}]
    assert down["validation_context"] == {"trusted_ca": {"filename": str(pki.ca_file)}}  # not secret


# -- tcp_proxy over TLS ---------------------------------------------------------------------

def test_tcp_proxy_access_log_has_the_tls_facts_and_a_failed_handshakes_reason(pki, proxy_factory, tmp_path):
    from .test_tcp_proxy import TcpEchoUpstream, tcp_proxy_config
    echo = TcpEchoUpstream()
    try:
        log = tmp_path / "tcp.log"
        cfg = tcp_proxy_config(echo.port)
        chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
        chain["transport_socket"] = downstream_tls(pki)
        chain["filters"][0]["typed_config"]["access_log"] = [{
            "name": "envoy.access_loggers.file", "typed_config": {
                "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {"inline_string":
                    "%DOWNSTREAM_REMOTE_ADDRESS%|v=%DOWNSTREAM_TLS_VERSION%|s=%DOWNSTREAM_PEER_SUBJECT%"
                    "|r=%DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n"}}}}]
        p = proxy_factory(cfg)
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
            with client_ctx(pki, cert=True).wrap_socket(raw, server_hostname="localhost") as t:
                good_port = t.getsockname()[1]
                t.sendall(b"ping")
                assert t.recv(4) == b"ping"
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as bad:
            bad_port = bad.getsockname()[1]
            bad.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # plaintext to a TLS listener
            try:
                while bad.recv(4096):
                    pass
            except OSError:
                pass
        good = _line(p, log, f"127.0.0.1:{good_port}")
        assert good["v"] == "TLSv1.3" and good["s"] == "O=ftproxy tests,CN=client" and good["r"] == "-"
        failed = _line(p, log, f"127.0.0.1:{bad_port}")
        assert failed["v"] == "-" and failed["r"].startswith("TLS_error:")
    finally:
        echo.close()
