"""ADS over TLS and mTLS against real Envoy: one control plane (grpclib with an `ssl.SSLContext`
requiring a client certificate) feeds real Envoy 1.40 and ftproxy, each its own node, from the
same bootstrap (an xDS cluster with an UpstreamTlsContext: trusted_ca, a DNS SAN matcher,
`sni`, a client certificate from `static_resources.secrets`). Both must get the listener and
cluster (ACKed, serving), and count the handshakes alike; with a CA that does not sign the
control plane, or without a client certificate, both must fail the same way: the same
`cluster.xds_cluster.ssl.*` counters move (none for the missing client certificate, as
Envoy), each attempt is a failed connect, no config arrives, and the proxy stays up.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLUSTER, LISTENER, ControlPlane
from tests.tls_certs import CertAuthority, key_pem, pem

from .proxies import BootstrapProcess, PortReservation

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
NAME = "xds.example.test"
SSL_STATS = ("handshake", "connection_error", "fail_verify_error", "fail_verify_san", "fail_verify_no_cert")
KINDS = ("envoy", "ftproxy")


def _ep(port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}


def bootstrap(node: str, admin_port: int, cp_port: int, ca: CertAuthority, client: tuple | None) -> dict:
    common = {"validation_context": {
        "trusted_ca": {"inline_string": ca.pem.decode()},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": NAME}}]}}
    secrets = []
    if client is not None:
        common["tls_certificate_sds_secret_configs"] = [{"name": "client"}]
        secrets = [{"name": "client", "tls_certificate": {
            "certificate_chain": {"inline_string": pem(client[0]).decode()},
            "private_key": {"inline_string": key_pem(client[1]).decode()}}}]
    return {
        "node": {"id": node, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            # Envoy waits out initial_fetch_timeout (15 s per type by default) when the stream
            # cannot be made: 1 s keeps the failing variants short.
            "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "1s"},
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "1s"}},
        "static_resources": {"secrets": secrets, "clusters": [{
            "name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": H2,
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": NAME, "common_tls_context": common}},
            "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [_ep(cp_port)]}]}}]}}


def resources(port: int, upstream: int) -> tuple[list, list]:
    lis = {"@type": LISTENER, "name": "l1",
           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                           "typed_config": {"@type": HCM, "stat_prefix": "ingress_http",
                                                            "http_filters": [ROUTER], "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]}}}]}]}
    cluster = {"@type": CLUSTER, "name": "svc", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [_ep(upstream)]}]}}
    return [lis], [cluster]


def served_by(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return json.loads(r.read()).get("server", "?")
    except urllib.error.HTTPError as e:
        return f"status {e.code}"
    except OSError as e:
        return f"refused ({type(e).__name__})"


def ssl_stats(p: BootstrapProcess) -> dict:
    v = p.stat_values()
    out = {s: int(v.get(f"cluster.xds_cluster.ssl.{s}", "0")) for s in SSL_STATS}
    out["connected_state"] = int(v.get("control_plane.connected_state", "0"))
    out["connect_fail"] = int(v.get("cluster.xds_cluster.upstream_cx_connect_fail", "0"))
    return out


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", [NAME])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    ctx.verify_mode = ssl.CERT_REQUIRED                   # mTLS
    ctx.load_verify_locations(cafile=str(ca.pem_file(tmp_path)))
    return ca, ctx


@pytest.mark.parametrize("variant", ["mtls", "wrong_ca", "no_client_cert"])
def test_ads_over_mtls_agrees_with_real_envoy(variant, pki, tmp_path):
    ca, ctx = pki
    cp = ControlPlane(ssl=ctx)
    up = EchoUpstream("svc")
    ports = PortReservation()
    plan = {k: (ports.take(), ports.take()) for k in KINDS}   # (admin, listener)
    trusted = CertAuthority("another CA") if variant == "wrong_ca" else ca
    client = None if variant == "no_client_cert" else ca.issue(cn="proxy", uris=["spiffe://test/p"], client=True)
    for kind in KINDS:
        lis, clusters = resources(plan[kind][1], up.port)
        cp.set(LISTENER, "l1", lis, node=kind)
        cp.set(CLUSTER, "c1", clusters, node=kind)
    ports.release()
    procs = []
    try:
        for kind in KINDS:
            procs.append(BootstrapProcess(kind, bootstrap(kind, plan[kind][0], cp.port, trusted, client),
                                          plan[kind][0], tmp_path / f"{kind}.json", ready_timeout=30))
        if variant == "mtls":
            for kind in KINDS:
                assert cp.wait(lambda: cp.acked(LISTENER, "l1", node=kind) and cp.acked(CLUSTER, "c1", node=kind),
                               20), kind
                assert wait_until(lambda: served_by(plan[kind][1]) == "svc"), kind
            got = {p.kind: ssl_stats(p) for p in procs}
            assert got["envoy"]["handshake"] >= 1 and got["envoy"]["connected_state"] == 1, got
            assert got["ftproxy"] == got["envoy"], got
            return
        # Every attempt fails and is retried: wait for two failed connects each, then compare
        # which counters moved (the counts themselves depend on the backoff's jitter). Envoy
        # (probed): a wrong CA counts ssl.fail_verify_error only; a server refusing the missing
        # client certificate (its alert ends the TLS 1.3 handshake) counts no ssl.* at all.
        for p in procs:
            assert wait_until(lambda: ssl_stats(p)["connect_fail"] >= 2, 30), (p.kind, ssl_stats(p))
        got = {p.kind: {k: v > 0 for k, v in ssl_stats(p).items()} for p in procs}
        assert got["ftproxy"] == got["envoy"], {p.kind: ssl_stats(p) for p in procs}
        assert got["envoy"]["fail_verify_error"] == (variant == "wrong_ca")
        for kind in KINDS:
            assert not cp.requests_for(LISTENER, node=kind) or not cp.acked(LISTENER, "l1", node=kind)
            assert served_by(plan[kind][1]).startswith("refused"), kind
        assert all(p.admin("/ready")[0] == 200 for p in procs)
    finally:
        for p in procs:
            p.stop()
        cp.close()
        up.close()
