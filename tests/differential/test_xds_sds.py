"""SDS over ADS against real Envoy: one control plane (tests/integration/xds_control_plane.py)
feeds real Envoy 1.40 and ftproxy an LDS listener whose TLS certificate comes by SDS; step by
step both must warm the same way (not accepting until the secret comes), present the same
certificate once it came and after a rotation, ACK or NACK the same pushes (a key that does
not match its certificate) and count the same listener and `sds.<name>.*` stats.
"""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLUSTER, LISTENER, SECRET, ControlPlane
from tests.tls_certs import CertAuthority, key_pem, pem

from .proxies import PortReservation
from .test_xds_grpc import HCM, ROUTER, Proxy, static

ADS = {"ads": {}, "resource_api_version": "V3"}
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
STATS = ["listener_manager.total_listeners_warming", "listener_manager.total_listeners_active",
         "listener_manager.listener_added", "sds.server_cert.update_success",
         "sds.server_cert.update_rejected", "listener_manager.lds.update_success"]


def tls_listener(port: int) -> dict:
    return {"@type": LISTENER, "name": "l1",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": DOWNSTREAM, "common_tls_context": {"tls_certificate_sds_secret_configs": [
                        {"name": "server_cert", "sds_config": ADS}]}}},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": HCM, "stat_prefix": "ingress_http", "http_filters": [ROUTER],
                    "route_config": {"name": "inline", "virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "dyn"}}]}]}}}]}]}


def secret(cert, key) -> dict:
    return {"@type": SECRET, "name": "server_cert", "tls_certificate": {
        "certificate_chain": {"inline_string": pem(cert).decode()},
        "private_key": {"inline_string": key_pem(key).decode()}}}


def observe(port: int, ca: CertAuthority):
    """(status, upstream, serial of the certificate presented) or why the connection failed."""
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
                serial = x509.load_der_x509_certificate(t.getpeercert(binary_form=True)).serial_number
                return data.split(b" ", 2)[1].decode(), b'"service1"' in data, serial
    except ConnectionRefusedError:
        return "refused"
    except (ssl.SSLError, OSError) as e:
        return f"failed ({type(e).__name__})"


def test_sds_over_ads_steps_agree_with_real_envoy(tmp_path):
    s1 = EchoUpstream("service1")
    cp = ControlPlane()
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports, cp.port, "GRPC"),
               Proxy("ftproxy", tmp_path, ports, cp.port, "GRPC")]
    ports.release()
    ca = CertAuthority()
    first, second = ca.issue(["localhost"]), ca.issue(["localhost"])
    problems = []
    answers = []   # ftproxy's, step by step (equal to Envoy's unless a problem says otherwise)
    try:
        cp.set(CLUSTER, "c1", [static("dyn", s1.port)])
        cp.set(LISTENER, "l0", [])
        for p in proxies:
            p.start()
        steps = [
            ("lds adds a TLS listener whose secret has not come: it warms",
             [(LISTENER, "l1", "per-node")], "ack"),
            ("sds: the certificate comes, the listener serves it", [(SECRET, "s1", [secret(*first)])], "ack"),
            ("sds: a rotation", [(SECRET, "s2", [secret(*second)])], "ack"),
            ("sds: a key that is not the certificate's is NACKed",
             [(SECRET, "s3", [secret(first[0], second[1])])], "nack"),
        ]
        for name, pushes, outcome in steps:
            for type_url, version, items in pushes:
                if items == "per-node":
                    for p in proxies:
                        cp.set(type_url, version, [tls_listener(p.listener_ports["l1"])], node=p.kind)
                else:
                    cp.set(type_url, version, items)
            for type_url, version, _ in pushes:
                for p in proxies:
                    if outcome == "ack":
                        ok = cp.wait(lambda: cp.acked(type_url, version, p.kind), 20)
                    else:
                        ok = cp.wait(lambda: any(r["response_nonce"] for r in cp.nacks(type_url, p.kind)), 10)
                    if not ok:
                        problems.append(f"{name}: {p.kind} did not {outcome} {type_url} {version}")
            time.sleep(0.5)
            seen = {p.kind: (observe(p.listener_ports["l1"], ca), p.stats_of(STATS)) for p in proxies}
            (eo, es), (fo, fs) = seen["envoy"], seen["ftproxy"]
            answers.append(fo)
            if eo != fo:
                problems.append(f"{name}: answers differ: envoy {eo} ftproxy {fo}")
            diff = {k: (es[k], fs[k]) for k in STATS if es[k] != fs[k]}
            if diff:
                problems.append(f"{name}: stats differ (envoy, ftproxy): {diff}")
    finally:
        for p in proxies:
            p.stop()
        cp.close()
        s1.close()
    assert not problems, "\n".join(problems)
    assert answers == ["refused", ("200", True, first[0].serial_number),
                       ("200", True, second[0].serial_number), ("200", True, second[0].serial_number)]
