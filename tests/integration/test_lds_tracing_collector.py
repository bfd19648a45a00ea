"""An LDS listener is held to the static bootstrap's rule on tracing collectors: a tracer whose
collector cluster has a TLS transport socket is refused (span exports speak plaintext only),
with the field path, and the push's other listeners still apply (Envoy's per-listener LDS)."""

from __future__ import annotations

import logging

from .harness import static_cluster
from tests.ports import free_port
from .test_xds_fs import (hcm_listener, lds_bootstrap, lds_doc, move_onto, refused, served_by,
                          upstreams)  # noqa: F401  (a fixture)

ZIPKIN = {"name": "envoy.tracers.zipkin", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
    "collector_cluster": "tls_collector", "collector_endpoint": "/api/v2/spans",
    "collector_endpoint_version": "HTTP_JSON"}}
TLS = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}


def test_lds_tracer_with_a_tls_collector_is_refused_by_path(tmp_path, upstreams, proxy_factory, caplog):
    s1, s2 = upstreams
    good_port, bad_port = free_port(), free_port()
    lds = tmp_path / "lds.yaml"
    move_onto(lds, lds_doc(version="0"))
    boot = lds_bootstrap(lds, s1, s2)
    boot["static_resources"]["clusters"].append(
        static_cluster("tls_collector", free_port(), transport_socket=TLS))
    p = proxy_factory(boot)
    bad = hcm_listener("traced", bad_port, "c1")
    bad["filter_chains"][0]["filters"][0]["typed_config"]["tracing"] = {"provider": ZIPKIN}
    with caplog.at_level(logging.ERROR, logger="ftproxy.xds"):
        move_onto(lds, lds_doc(bad, hcm_listener("plain", good_port, "c1"), version="1"))
        assert p.wait_for(lambda: p.counters().get("listener_manager.lds.update_rejected") == 1, 5)
    assert ('resources[0].filter_chains[0].filters[0].typed_config.tracing.provider: not supported '
            'yet (the collector cluster "tls_collector" has a TLS transport_socket') in caplog.text
    assert p.wait_for(lambda: served_by(p, port=good_port) == "service1", 5)
    assert refused(bad_port)
