"""Upstream connection pool behaviour through the proxy: reuse and the cluster idle_timeout."""

from .clients import echo
from .harness import front_proxy_config, static_cluster

_OPTS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "common_http_protocol_options": {"idle_timeout": "0.3s"},
    "explicit_http_config": {"http_protocol_options": {}}}}


def test_idle_upstream_connection_is_closed_after_cluster_idle_timeout(upstream, proxy_factory):
    cluster = static_cluster("backend", upstream.port, typed_extension_protocol_options=_OPTS)
    p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                                         [cluster]))
    echo(p.port, "/one")
    assert p.gauges()["cluster.backend.upstream_cx_active"] == 1
    assert p.wait_for(lambda: p.gauges()["cluster.backend.upstream_cx_active"] == 0, timeout=5)
    assert p.counters()["cluster.backend.upstream_cx_idle_timeout"] == 1
    # The next request opens a fresh connection and succeeds.
    assert echo(p.port, "/two")["path"] == "/two"
    assert p.counters()["cluster.backend.upstream_cx_total"] == 2
