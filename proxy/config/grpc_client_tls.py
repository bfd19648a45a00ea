"""Load-time checks of the cluster a main-thread gRPC client (xDS, LRS, the metrics service
sink: proxy/xds/grpc_stream.py; the OpenTelemetry trace exporter:
proxy/tracing/otlp_exporter.py) speaks to: HTTP/2 (`check_grpc_client_http2`), and, for a
TLS cluster, what the client can honour (`check_grpc_client_tls`).

Those clients connect to a host's address through the cluster's UpstreamTlsContext factory,
as the workers do, with two exceptions refused here by path rather than half honoured:
- `auto_host_sni`: the client knows the host's address, not its hostname (the SNI would be
  `sni`, not the host's name);
- for the xDS cluster itself, a secret delivered by xDS (`sds_config` with `ads` or an
  `api_config_source`): it would come over the very stream that needs it to connect
  (Envoy waits forever). Static secrets (`static_resources.secrets`) and file SDS are fine.
Must not: do I/O. Thread affinity: main thread (config load).
"""

from __future__ import annotations

from typing import Any

from proxy.config.reader import ConfigError, ErrorCollector, join

__all__ = ["check_grpc_client_http2", "check_grpc_client_tls"]


def check_grpc_client_http2(cluster: Any, at: str) -> None:
    """ConfigError at `at` unless `cluster` can carry ftproxy's gRPC client: HTTP/2, explicitly
    configured (not auto_config, not the downstream's protocol)."""
    if cluster.http2 is None or cluster.auto_config or cluster.use_downstream_protocol:
        raise ConfigError(at, f'cluster "{cluster.name}" must speak HTTP/2 for gRPC (set '
                              "typed_extension_protocol_options ... explicit_http_config."
                              "http2_protocol_options)")


def check_grpc_client_tls(cluster: Any, at: str, cluster_path: str | None, service: str,
                          xds: bool = False) -> None:
    """`cluster`: the client's cluster config; `at`: the path naming it (the grpc service's
    cluster_name); `cluster_path`: where the cluster is written (`static_resources.clusters[i]`),
    or None when it has no path here (a CDS cluster: errors are then reported at `at`);
    `service`: what the client talks to, for messages; `xds`: the cluster carries the xDS
    stream (xDS-delivered secrets refused)."""
    factory = getattr(cluster, "transport_socket", None)
    if factory is None or not getattr(factory, "implements_secure_transport", False):
        return
    config = factory.config
    errors = ErrorCollector()
    if config.auto_host_sni:
        if cluster_path is None:
            errors.add(ConfigError(at, f'cluster "{cluster.name}": transport_socket auto_host_sni is '
                                       f"not supported yet for the {service} (its gRPC client "
                                       "connects to an address: set sni)"))
        else:
            errors.add(ConfigError(join(cluster_path, "transport_socket.typed_config.auto_host_sni"),
                                   f"not supported yet for the {service} (its gRPC client connects "
                                   f'to an address: set sni) (cluster "{cluster.name}", at {at})'))
    tls_at = join(cluster_path or "", "transport_socket.typed_config")
    if xds:
        common = config.common_tls_context
        base = join(tls_at, "common_tls_context")
        for k, source in enumerate(common.certificate_sources):
            if source is not None and source.config_source is not None:
                errors.add(ConfigError(
                    join(base, f"tls_certificate_sds_secret_configs[{k}].sds_config"),
                    _chicken_and_egg(source.name, cluster.name)))
        v = common.validation_source
        if v is not None and v.config_source is not None:
            where = ("combined_validation_context.validation_context_sds_secret_config"
                     if v.default is not None else "validation_context_sds_secret_config")
            errors.add(ConfigError(join(base, f"{where}.sds_config"), _chicken_and_egg(v.name, cluster.name)))
    errors.raise_if_any()


def _chicken_and_egg(secret: str, cluster: str) -> str:
    return (f'secret "{secret}" would come over xDS, but cluster "{cluster}" carries the xDS '
            "stream itself and needs it to connect: use static_resources.secrets or a file "
            "(sds_config.path_config_source)")
