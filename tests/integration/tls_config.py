"""Bootstrap pieces for TLS tests: Envoy's transport_socket messages around certificate files."""

from __future__ import annotations

from pathlib import Path

TLS = "envoy.transport_sockets.tls"
DOWNSTREAM_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def certificate(cert: Path, key: Path) -> dict:
    return {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}


def downstream_tls(*certs: tuple[Path, Path], **context) -> dict:
    """A filter chain's transport_socket: TLS with these (certificate, key) files. `context`:
    extra DownstreamTlsContext fields; `common` (a dict) goes into common_tls_context."""
    common = dict(context.pop("common", {}))
    common["tls_certificates"] = [certificate(c, k) for c, k in certs]
    return {"name": TLS, "typed_config": {"@type": DOWNSTREAM_URL, "common_tls_context": common, **context}}


def upstream_tls(**context) -> dict:
    """A cluster's transport_socket: TLS. `common` goes into common_tls_context."""
    common = context.pop("common", {})
    return {"name": TLS, "typed_config": {"@type": UPSTREAM_URL, "common_tls_context": common, **context}}


def with_listener_tls(config: dict, transport_socket: dict, **chain) -> dict:
    """`config` (a bootstrap from harness.front_proxy_config or tcp_proxy_config) with TLS on
    its first listener's filter chain."""
    fc = config["static_resources"]["listeners"][0]["filter_chains"][0]
    fc["transport_socket"] = transport_socket
    fc.update(chain)
    return config
