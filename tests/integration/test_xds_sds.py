"""SDS over xDS through the running proxy: listener certificates and upstream validation
contexts named by `sds_config: {ads: {}}` or an `api_config_source` (GRPC, DELTA_GRPC), fed by
the real gRPC control plane (tests/integration/xds_control_plane.py) over loopback.

What is checked: a listener warms (not accepting) until its secret arrives, then serves it; a
rotated secret is used by new handshakes while a connection made before keeps working; a bad
secret is NACKed naming the field and the previous one stays; start-up waits for a static
listener's secret (Envoy's init manager); an upstream validation context from SDS verifies the
upstream's certificate and a rotation to another CA fails new upstream handshakes.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.tls_certs import CertAuthority, key_pem, pem

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster
from .test_xds_grpc import H2_OPTIONS, HCM, LISTENER, ROUTER, free_port
from .tls_config import DOWNSTREAM_URL, TLS, UPSTREAM_URL
from .xds_control_plane import SECRET, ControlPlane

ADS = {"ads": {}, "resource_api_version": "V3"}


def grpc_source(api_type: str) -> dict:
    return {"api_config_source": {"api_type": api_type, "transport_api_version": "V3",
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            "resource_api_version": "V3"}


def cert_secret(name: str, cert, key) -> dict:
    return {"@type": SECRET, "name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": pem(cert).decode()},
        "private_key": {"inline_string": key_pem(key).decode()}}}


def ca_secret(name: str, ca: CertAuthority) -> dict:
    return {"@type": SECRET, "name": name,
            "validation_context": {"trusted_ca": {"inline_string": ca.pem.decode()}}}


def tls_transport(secret: str, source: dict) -> dict:
    return {"name": TLS, "typed_config": {"@type": DOWNSTREAM_URL, "common_tls_context": {
        "tls_certificate_sds_secret_configs": [{"name": secret, "sds_config": source}]}}}


def tls_listener(port: int, source: dict, secret: str = "server_cert") -> dict:
    return {"@type": LISTENER, "name": "tls_listener",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"transport_socket": tls_transport(secret, source), "filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": HCM, "stat_prefix": "ingress_https", "http_filters": [ROUTER],
                    "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}}}]}]}


def ads_bootstrap(cp_port: int, backend_port: int, api_type: str = "GRPC", lds: bool = True) -> dict:
    cfg = {"node": {"id": "id_1", "cluster": "test"},
           "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
           "dynamic_resources": {"ads_config": {
               "api_type": api_type, "transport_api_version": "V3",
               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}},
           "static_resources": {"clusters": [
               static_cluster("xds_cluster", cp_port, typed_extension_protocol_options=H2_OPTIONS),
               static_cluster("backend", backend_port)]}}
    if lds:
        cfg["dynamic_resources"]["lds_config"] = ADS
    return cfg


def served_serial(port: int, ca: CertAuthority) -> int:
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := t.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
            return x509.load_der_x509_certificate(t.getpeercert(binary_form=True)).serial_number


def keepalive_get(t: ssl.SSLSocket, path: str) -> bytes:
    t.sendall(f"GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += t.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += t.recv(65536)
    return head


@pytest.fixture
def world():
    cp = ControlPlane()
    up = EchoUpstream("backend")
    proxies: list[ProxyUnderTest] = []
    yield cp, up, proxies
    for p in proxies:
        p.stop()
    cp.close()
    up.close()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_an_lds_listener_warms_until_its_sds_secret_arrives_and_rotates_without_dropping(world, api_type):
    cp, up, proxies = world
    ca = CertAuthority()
    first, second = ca.issue(["localhost"]), ca.issue(["localhost"])
    lport = free_port()
    cp.set(LISTENER, "l0", [])
    p = ProxyUnderTest(ads_bootstrap(cp.port, up.port, api_type))
    proxies.append(p)
    cp.set(LISTENER, "l1", [tls_listener(lport, ADS)])
    # The listener waits for its certificate: warming, not accepting.
    assert cp.wait(lambda: any(r["resource_names"] == ["server_cert"] for r in cp.requests_for(SECRET)))
    assert p.gauges()["listener_manager.total_listeners_warming"] == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lport), timeout=1).close()
    cp.set(SECRET, "s1", [cert_secret("server_cert", *first)])
    assert p.wait_for(lambda: p.gauges()["listener_manager.total_listeners_warming"] == 0, 5)
    assert served_serial(lport, ca) == first[0].serial_number
    assert cp.wait(lambda: cp.acked(SECRET, "s1"))
    # A connection made with the first certificate stays up across the rotation.
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    live = ctx.wrap_socket(socket.create_connection(("127.0.0.1", lport), timeout=5), server_hostname="localhost")
    try:
        assert keepalive_get(live, "/before").startswith(b"HTTP/1.1 200")
        cp.set(SECRET, "s2", [cert_secret("server_cert", *second)])
        assert cp.wait(lambda: cp.acked(SECRET, "s2"))
        assert served_serial(lport, ca) == second[0].serial_number
        assert keepalive_get(live, "/after").startswith(b"HTTP/1.1 200")
        old = x509.load_der_x509_certificate(live.getpeercert(binary_form=True))
        assert old.serial_number == first[0].serial_number
    finally:
        live.close()
    # A key that does not match its certificate: NACKed naming the field, the second stays.
    bad = cert_secret("server_cert", first[0], second[1])
    cp.set(SECRET, "s3", [bad])
    assert cp.wait(lambda: cp.nacks(SECRET))
    assert "tls_certificate" in cp.nacks(SECRET)[-1]["error_detail"]["message"]
    assert served_serial(lport, ca) == second[0].serial_number
    c = p.counters()
    assert c["sds.server_cert.update_success"] == 2 and c["sds.server_cert.update_rejected"] == 1


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_start_up_waits_for_a_static_listeners_secret_from_its_own_sds_stream(world, api_type):
    cp, up, proxies = world
    ca = CertAuthority()
    cert = ca.issue(["localhost"])
    cp.set(SECRET, "v1", [cert_secret("server_cert", *cert), cert_secret("other", *ca.issue(["x"]))])
    cfg = ads_bootstrap(cp.port, up.port, lds=False)
    del cfg["dynamic_resources"]
    static = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}], [])
    lst = static["static_resources"]["listeners"][0]
    lst["filter_chains"][0]["transport_socket"] = tls_transport("server_cert", grpc_source(api_type))
    cfg["static_resources"]["listeners"] = [lst]
    p = ProxyUnderTest(cfg)
    proxies.append(p)
    # Ready means the secret came first: the very first handshake presents it.
    assert served_serial(p.port, ca) == cert[0].serial_number
    paths = {r["type_url"] for r in cp.requests}
    assert paths == {SECRET}
    asked = cp.requests_for(SECRET)[0]["resource_names"]
    assert asked == ["server_cert"]


def test_an_upstream_validation_context_from_sds_verifies_and_rotates(world, tmp_path):
    cp, up, proxies = world
    ca, other = CertAuthority(), CertAuthority("other CA")
    cert, key = ca.issue_files(tmp_path, "upstream", ["127.0.0.1"])
    tls_up = EchoUpstream("tls-backend")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    tls_up.httpd.socket = sctx.wrap_socket(tls_up.httpd.socket, server_side=True)
    try:
        cp.set(SECRET, "v1", [ca_secret("upstream_ca", ca)])
        cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "secure"}}], [
            static_cluster("xds_cluster", cp.port, typed_extension_protocol_options=H2_OPTIONS),
            static_cluster("secure", tls_up.port, transport_socket={"name": TLS, "typed_config": {
                "@type": UPSTREAM_URL, "common_tls_context": {"validation_context_sds_secret_config": {
                    "name": "upstream_ca", "sds_config": ADS}}}})])
        cfg["node"] = {"id": "id_1", "cluster": "test"}
        cfg["dynamic_resources"] = {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}
        p = ProxyUnderTest(cfg)
        proxies.append(p)
        with urllib.request.urlopen(p.url("/one"), timeout=5) as r:
            assert r.status == 200
        cp.set(SECRET, "v2", [ca_secret("upstream_ca", other)])
        assert cp.wait(lambda: cp.acked(SECRET, "v2"))
        # New upstream handshakes now verify against the other CA: they fail (503).
        def refused() -> bool:
            try:
                urllib.request.urlopen(p.url("/two"), timeout=5).close()
                return False
            except urllib.error.HTTPError as e:
                return e.code == 503
        assert p.wait_for(refused, 5)
        assert p.counters().get("cluster.secure.ssl.fail_verify_error", 0) >= 1
    finally:
        tls_up.close()


def test_sds_config_sources_the_proxy_does_not_speak_are_refused_by_path():
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}], [static_cluster("c", 1)])
    cfg["node"] = {"id": "n", "cluster": "c"}
    lst = cfg["static_resources"]["listeners"][0]
    rest = {"api_config_source": {"api_type": "REST", "cluster_names": ["c"]}}
    lst["filter_chains"][0]["transport_socket"] = tls_transport("s", rest)
    with pytest.raises(ConfigError, match=r"sds_config\.api_config_source\.api_type: REST is not supported"):
        parse_bootstrap(cfg)
    lst["filter_chains"][0]["transport_socket"] = tls_transport("s", {"self": {}})
    with pytest.raises(ConfigError, match=r"sds_config\.self"):
        parse_bootstrap(cfg)


def test_a_cds_cluster_warms_until_its_sds_validation_context_arrives(world, tmp_path):
    cp, up, proxies = world
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "upstream", ["127.0.0.1"])
    tls_up = EchoUpstream("tls-backend")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    tls_up.httpd.socket = sctx.wrap_socket(tls_up.httpd.socket, server_side=True)
    from .test_xds_grpc import CLUSTER
    try:
        secure = {"@type": CLUSTER, **static_cluster("secure", tls_up.port, transport_socket={
            "name": TLS, "typed_config": {"@type": UPSTREAM_URL, "common_tls_context": {
                "validation_context_sds_secret_config": {"name": "upstream_ca", "sds_config": ADS}}}})}
        cp.set(CLUSTER, "c0", [])
        cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "secure"}}], [
            static_cluster("xds_cluster", cp.port, typed_extension_protocol_options=H2_OPTIONS)])
        cfg["node"] = {"id": "id_1", "cluster": "test"}
        cfg["dynamic_resources"] = {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}, "cds_config": ADS}
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"]["validate_clusters"] = False   # "secure" comes by CDS
        p = ProxyUnderTest(cfg)
        proxies.append(p)
        cp.set(CLUSTER, "c1", [secure])
        assert cp.wait(lambda: cp.acked(CLUSTER, "c1"))
        assert cp.wait(lambda: any(r["resource_names"] == ["upstream_ca"] for r in cp.requests_for(SECRET)))
        # Warming: not handed to the workers (no such cluster there: 503), counted as warming.
        assert p.gauges()["cluster_manager.warming_clusters"] == 1
        try:
            urllib.request.urlopen(p.url("/early"), timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 503
        cp.set(SECRET, "v1", [ca_secret("upstream_ca", ca)])
        assert p.wait_for(lambda: p.gauges()["cluster_manager.warming_clusters"] == 0, 5)
        with urllib.request.urlopen(p.url("/warm"), timeout=5) as r:
            assert r.status == 200
    finally:
        tls_up.close()
