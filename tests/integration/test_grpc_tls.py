"""TLS and mTLS to the main thread's gRPC services: an ADS control plane (grpclib, served with
an `ssl.SSLContext`) and a metrics service reached through a static cluster whose
`transport_socket` is an UpstreamTlsContext (trusted_ca, a SAN matcher, `sni`, and for mTLS a
client certificate from `static_resources.secrets`), over real loopback sockets.

What the proxy does is checked from outside: traffic through the listener the control plane
delivered, what the servers saw of the handshake (the SNI, ALPN h2, the client certificate),
and the xDS cluster's `ssl.*` stats; a control plane whose certificate the CA does not sign is
refused at the handshake (counted, retried with backoff), no dynamic config arrives, and the
static listener keeps serving.
"""

from __future__ import annotations

import ssl
import threading

import pytest

from tests.metrics_service_server import MetricsServiceServer
from tests.ports import free_port
from tests.tls_certs import CertAuthority, key_pem, pem

from .harness import EchoUpstream, ProxyUnderTest, static_cluster
from .test_xds_grpc import H2_OPTIONS, ROUTER, cla, eds_cluster, listener, route, served_by
from .xds_control_plane import CLA, CLUSTER, LISTENER, ROUTE, ControlPlane

T = "type.googleapis.com/"
TLS_CONTEXT = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
SERVER_NAME = "xds.example.test"


class Pki:
    """A CA, a server certificate for SERVER_NAME and a client certificate, as files."""

    def __init__(self, directory) -> None:
        self.dir = directory
        self.ca = CertAuthority()
        self.ca_file = self.ca.pem_file(directory)
        self.server_cert, self.server_key = self.ca.issue_files(directory, "server", [SERVER_NAME])
        self.client_cert, self.client_key = self.ca.issue(cn="ftproxy", uris=["spiffe://test/ftproxy"],
                                                          client=True)

    def server_context(self, require_client: bool) -> tuple[ssl.SSLContext, dict]:
        """A server context (ALPN h2) and what it saw: `sni` (each ClientHello's name)."""
        seen: dict = {"sni": []}
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.set_alpn_protocols(["h2"])
        lock = threading.Lock()

        def on_sni(_sock, name, _ctx):
            with lock:
                seen["sni"].append(name)
        ctx.sni_callback = on_sni
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx, seen


def tls_socket(ca_file, client_secret: str | None = None, san: str = SERVER_NAME) -> dict:
    common: dict = {"validation_context": {
        "trusted_ca": {"filename": str(ca_file)},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}]}}
    if client_secret:
        common["tls_certificate_sds_secret_configs"] = [{"name": client_secret}]
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": TLS_CONTEXT, "sni": SERVER_NAME, "common_tls_context": common}}


def client_secret(pki: Pki) -> dict:
    return {"name": "client_cert", "tls_certificate": {
        "certificate_chain": {"inline_string": pem(pki.client_cert).decode()},
        "private_key": {"inline_string": key_pem(pki.client_key).decode()}}}


def bootstrap(cp_port: int, transport: dict, static_port: int, upstream_port: int,
              secrets: list | None = None) -> dict:
    hcm = {"@type": HCM, "stat_prefix": "static", "http_filters": [ROUTER],
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "static_svc"}}]}]}}
    boot = {
        "node": {"id": "id_1", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {
            "listeners": [{"name": "static", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": static_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}],
            "clusters": [
                static_cluster("xds_cluster", cp_port, typed_extension_protocol_options=H2_OPTIONS,
                               transport_socket=transport),
                static_cluster("static_svc", upstream_port)]},
    }
    if secrets:
        boot["static_resources"]["secrets"] = secrets
    return boot


@pytest.fixture
def world(tmp_path):
    pki = Pki(tmp_path)
    ups = {name: EchoUpstream(name) for name in ("one", "static")}
    closers = []
    yield pki, ups, closers
    for close in reversed(closers):
        close()
    for u in ups.values():
        u.close()


def _serve_config(cp: ControlPlane, ups, lport: int) -> None:
    cp.set(CLUSTER, "c1", [eds_cluster("svc")])
    cp.set(CLA, "e1", [cla("svc", ups["one"].port)])
    cp.set(LISTENER, "l1", [listener(lport)])
    cp.set(ROUTE, "r1", [route("svc")])


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_ads_over_tls_delivers_a_listener_and_cluster_that_serve(world, mtls):
    pki, ups, closers = world
    ctx, seen = pki.server_context(require_client=mtls)
    cp = ControlPlane(ssl=ctx)
    closers.append(cp.close)
    lport, sport = free_port(), free_port()
    _serve_config(cp, ups, lport)
    p = ProxyUnderTest(bootstrap(cp.port, tls_socket(pki.ca_file, "client_cert" if mtls else None),
                                 sport, ups["static"].port,
                                 secrets=[client_secret(pki)] if mtls else None))
    closers.append(p.stop)
    assert served_by(lport) == "one"
    for t, v in ((CLUSTER, "c1"), (CLA, "e1"), (LISTENER, "l1"), (ROUTE, "r1")):
        assert cp.wait(lambda: cp.acked(t, v)), (t, cp.requests_for(t))
    assert p.gauges()["control_plane.connected_state"] == 1
    assert seen["sni"] and set(seen["sni"]) == {SERVER_NAME}
    c = p.counters()
    assert c["cluster.xds_cluster.ssl.handshake"] >= 1
    assert c["cluster.xds_cluster.ssl.connection_error"] == 0
    assert c["cluster.xds_cluster.ssl.fail_verify_error"] == 0
    assert c["cluster.xds_cluster.upstream_rq_200"] >= 1
    # The stream is HTTP/2 over TLS: the server's view of the connection.
    transports = [st.transport for st in list(cp._streams)]
    assert transports
    tls_obj = transports[0].get_extra_info("ssl_object")
    assert tls_obj.selected_alpn_protocol() == "h2"
    if mtls:
        peer = tls_obj.getpeercert()
        assert ("URI", "spiffe://test/ftproxy") in peer["subjectAltName"]
    # A new push over the TLS stream is applied too.
    cp.set(CLA, "e2", [cla("svc", ups["static"].port)])
    assert p.wait_for(lambda: served_by(lport) == "static", 10)


def test_a_control_plane_the_ca_does_not_sign_is_refused_and_static_listeners_serve(world, tmp_path):
    pki, ups, closers = world
    (tmp_path / "other").mkdir()
    impostor = Pki(tmp_path / "other")   # its own CA: the proxy's trusted_ca does not sign it
    ctx, _ = impostor.server_context(require_client=False)
    cp = ControlPlane(ssl=ctx)
    closers.append(cp.close)
    lport, sport = free_port(), free_port()
    _serve_config(cp, ups, lport)
    p = ProxyUnderTest(bootstrap(cp.port, tls_socket(pki.ca_file), sport, ups["static"].port))
    closers.append(p.stop)
    # Each attempt fails its certificate check (counted as Envoy counts it: fail_verify_error,
    # not connection_error) and the stream retries with its backoff.
    assert p.wait_for(lambda: p.counters().get("cluster.xds_cluster.ssl.fail_verify_error", 0) >= 2, 15)
    c = p.counters()
    assert c["cluster.xds_cluster.ssl.handshake"] == 0
    assert c["cluster.xds_cluster.ssl.connection_error"] == 0
    # (The handshake counts fail_verify_error; the call's end counts the connect failure after.)
    assert p.wait_for(lambda: p.counters().get("cluster.xds_cluster.upstream_cx_connect_fail", 0) >= 2)
    assert p.gauges()["control_plane.connected_state"] == 0
    assert cp.requests_for(LISTENER) == [] and cp.requests_for(CLUSTER) == []
    assert served_by(sport) == "static"
    assert served_by(lport).startswith("status 0")   # no listener came


def test_metrics_service_over_mtls(world):
    pki, ups, closers = world
    ctx, seen = pki.server_context(require_client=True)
    ms = MetricsServiceServer(ssl=ctx)
    closers.append(ms.close)
    sport = free_port()
    hcm = {"@type": HCM, "stat_prefix": "ing", "http_filters": [ROUTER],
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]}}
    boot = {
        "node": {"id": "ms-node", "cluster": "test"},
        "stats_flush_interval": "0.2s",
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_sinks": [{"name": "envoy.stat_sinks.metrics_service", "typed_config": {
            "@type": T + "envoy.config.metrics.v3.MetricsServiceConfig", "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}}}],
        "static_resources": {
            "secrets": [client_secret(pki)],
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                       "port_value": sport}},
                           "filter_chains": [{"filters": [{
                               "name": "envoy.filters.network.http_connection_manager",
                               "typed_config": hcm}]}]}],
            "clusters": [static_cluster("svc", ups["one"].port),
                         static_cluster("ms", ms.port, typed_extension_protocol_options=H2_OPTIONS,
                                        transport_socket=tls_socket(pki.ca_file, "client_cert"))]}}
    p = ProxyUnderTest(boot)
    closers.append(p.stop)
    assert served_by(sport) == "one"
    assert ms.wait(lambda: any(m.HasField("identifier") and m.identifier.node.id == "ms-node"
                               for _, m in ms.received()), 10)
    assert ms.wait(lambda: any(f.name == "cluster.svc.upstream_rq_200" for m in ms.of_node("ms-node")
                               for f in m.envoy_metrics), 10)
    assert set(seen["sni"]) == {SERVER_NAME}
    assert p.counters()["cluster.ms.ssl.handshake"] >= 1


def test_a_handshake_that_never_completes_is_bounded_by_the_connect_timeout(world):
    """A control plane that accepts the TCP connection and never answers the ClientHello: the
    xDS cluster's connect_timeout covers the handshake too (as Envoy's), and the stream retries."""
    import socket
    pki, ups, closers = world
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)          # connections complete in the kernel; nothing is ever read
    closers.append(silent.close)
    sport = free_port()
    boot = bootstrap(silent.getsockname()[1], tls_socket(pki.ca_file), sport, ups["static"].port)
    boot["static_resources"]["clusters"][0]["connect_timeout"] = "0.25s"
    p = ProxyUnderTest(boot)
    closers.append(p.stop)
    assert p.wait_for(lambda: p.counters().get("cluster.xds_cluster.upstream_cx_connect_fail", 0) >= 2, 15)
    c = p.counters()
    assert c.get("cluster.xds_cluster.ssl.handshake", 0) == 0
    assert c.get("cluster.xds_cluster.upstream_rq_total", 0) == 0   # no stream ever opened
    assert served_by(sport) == "static"


def test_grpc_access_logs_over_mtls(world):
    from tests.als_server import AlsServer

    from .test_grpc_access_log import bootstrap as als_bootstrap, http_logger

    pki, ups, closers = world
    ctx, seen = pki.server_context(require_client=True)
    als = AlsServer(ssl=ctx)
    closers.append(als.close)
    boot = als_bootstrap(ups["one"].port, free_port(), als.port, loggers=[http_logger("tls_log")], tcp=False)
    clusters = boot["static_resources"]["clusters"]
    next(c for c in clusters if c["name"] == "als")["transport_socket"] = tls_socket(pki.ca_file, "client_cert")
    boot["static_resources"]["secrets"] = [client_secret(pki)]
    p = ProxyUnderTest(boot)
    closers.append(p.stop)
    assert served_by(p.port, "/app") == "one"
    assert als.wait(lambda: any(e.get("request", {}).get("path") == "/app" for e in als.http_entries()), 10)
    assert set(seen["sni"]) == {SERVER_NAME}
    assert p.counters()["cluster.als.ssl.handshake"] >= 1


def test_opentelemetry_spans_over_mtls(world, monkeypatch):
    """OTLP over gRPC (the OpenTelemetry tracer's own unary client, GrpcChannel) to a TLS
    collector cluster: the spans arrive over mTLS."""
    from proxy.tracing import exporter
    from tests.otlp_collector import OtlpCollector

    from .test_tracing_otel import _config, _get

    monkeypatch.setattr(exporter, "FLUSH_INTERVAL", 0.2)
    monkeypatch.setattr(exporter, "WORKER_HOLD", 0.05)
    pki, ups, closers = world
    ctx, seen = pki.server_context(require_client=True)
    collector = OtlpCollector(ssl=ctx)
    closers.append(collector.close)
    cfg = _config(ups["one"].port, collector.port)
    otel = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "otel")
    otel["transport_socket"] = tls_socket(pki.ca_file, "client_cert")
    cfg["static_resources"]["secrets"] = [client_secret(pki)]
    p = ProxyUnderTest(cfg)
    closers.append(p.stop)
    assert [_get(p.port, f"/t{i}")[0] for i in range(5)] == [200] * 5
    assert p.wait_for(lambda: len(collector.spans) == 5, 10)
    assert set(seen["sni"]) == {SERVER_NAME}
    assert p.counters()["cluster.otel.ssl.handshake"] >= 1
