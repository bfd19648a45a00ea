"""Load-time rules for a TLS cluster that a main-thread gRPC client speaks to (xDS, LRS, the
metrics service sink; proxy/config/grpc_client_tls.py): accepted with certificates inline, from
static secrets or files; refused by path for what the client would not honour (auto_host_sni)
and for an xDS-delivered secret on the xDS cluster itself (it would come over the stream that
needs it); TLS to a REST control plane stays refused."""

from __future__ import annotations

import copy

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError, ConfigErrors
from tests.tls_certs import CertAuthority, key_pem, pem

T = "type.googleapis.com/"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
CA = CertAuthority()
CERT, KEY = CA.issue(cn="ftproxy", client=True)
SECRET = {"name": "client", "tls_certificate": {
    "certificate_chain": {"inline_string": pem(CERT).decode()},
    "private_key": {"inline_string": key_pem(KEY).decode()}}}


def _tls(**extra) -> dict:
    common = {"validation_context": {"trusted_ca": {"inline_string": CA.pem.decode()}}}
    common.update(extra.pop("common", {}))
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "cp",
        "common_tls_context": common, **extra}}


def _cluster(name: str, transport: dict) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": H2,
            "transport_socket": transport,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}


def _ads(transport: dict, api_type: str = "GRPC") -> dict:
    service = ({"grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]} if api_type != "REST"
               else {"cluster_names": ["xds"]})
    return {"node": {"id": "n", "cluster": "c"},
            "dynamic_resources": {"ads_config": {"api_type": api_type, "transport_api_version": "V3", **service}}
            if api_type != "REST" else {
                "cds_config": {"api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                                                     "refresh_delay": "1s", **service},
                               "resource_api_version": "V3"}},
            "static_resources": {"clusters": [_cluster("xds", transport)], "secrets": [SECRET]}}


def _error(raw: dict) -> str:
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_bootstrap(copy.deepcopy(raw))
    return str(e.value)


def test_an_ads_cluster_with_tls_and_a_static_client_certificate_is_accepted():
    b = parse_bootstrap(_ads(_tls(common={"tls_certificate_sds_secret_configs": [{"name": "client"}]})))
    factory = b.clusters[0].transport_socket
    assert factory.implements_secure_transport and factory.ready
    assert factory.config.common_tls_context.tls_certificates[0].leaf is not None


def test_a_file_sds_client_certificate_is_accepted_for_the_xds_cluster(tmp_path):
    sds = tmp_path / "client.yaml"
    import yaml
    sds.write_text(yaml.safe_dump({"resources": [
        {"@type": T + "envoy.extensions.transport_sockets.tls.v3.Secret", **SECRET}]}))
    parse_bootstrap(_ads(_tls(common={"tls_certificate_sds_secret_configs": [
        {"name": "client", "sds_config": {"path_config_source": {"path": str(sds)}}}]})))


@pytest.mark.parametrize("common,where", [
    ({"tls_certificate_sds_secret_configs": [{"name": "client", "sds_config": {"ads": {}}}]},
     "common_tls_context.tls_certificate_sds_secret_configs[0].sds_config"),
    ({"validation_context": None,
      "validation_context_sds_secret_config": {"name": "ca", "sds_config": {"ads": {}}}},
     "common_tls_context.validation_context_sds_secret_config.sds_config"),
])
def test_an_xds_delivered_secret_for_the_xds_cluster_is_refused_by_path(common, where):
    tls = _tls(common=common)
    cc = tls["typed_config"]["common_tls_context"]
    if cc.get("validation_context", 0) is None:
        del cc["validation_context"]
    msg = _error(_ads(tls))
    assert f"static_resources.clusters[0].transport_socket.typed_config.{where}" in msg
    assert 'cluster "xds" carries the xDS stream itself' in msg


def test_auto_host_sni_is_refused_for_a_grpc_client_cluster():
    msg = _error(_ads(_tls(auto_host_sni=True)))
    assert "static_resources.clusters[0].transport_socket.typed_config.auto_host_sni: not supported yet" in msg


def test_tls_to_a_rest_control_plane_stays_refused():
    raw = _ads(_tls(), api_type="REST")
    raw["static_resources"]["clusters"][0].pop("typed_extension_protocol_options")
    assert "TLS to a REST control plane is not supported yet" in _error(raw)


def test_lrs_and_metrics_service_clusters_with_tls_are_accepted():
    raw = {"node": {"id": "n", "cluster": "c"},
           "cluster_manager": {"load_stats_config": {
               "api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]}},
           "stats_sinks": [{"name": "envoy.stat_sinks.metrics_service", "typed_config": {
               "@type": T + "envoy.config.metrics.v3.MetricsServiceConfig", "transport_api_version": "V3",
               "grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}}}],
           "static_resources": {"clusters": [_cluster("lrs", _tls()), _cluster("ms", _tls())]}}
    b = parse_bootstrap(copy.deepcopy(raw))
    assert all(c.transport_socket.implements_secure_transport for c in b.clusters)
    raw["static_resources"]["clusters"][1] = _cluster("ms", _tls(auto_host_sni=True))
    assert "static_resources.clusters[1].transport_socket.typed_config.auto_host_sni" in _error(raw)


def test_an_opentelemetry_grpc_collector_may_be_tls_but_not_auto_host_sni():
    from tests.integration.harness import front_proxy_config
    otel = {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": T + "envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}}}}
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                             [_cluster("otel", _tls())], tracing={"provider": otel})
    parse_bootstrap(copy.deepcopy(cfg))
    cfg["static_resources"]["clusters"][0] = _cluster("otel", _tls(auto_host_sni=True))
    msg = _error(cfg)
    assert "typed_config.tracing.provider: cluster \"otel\": transport_socket auto_host_sni is not supported yet" in msg
