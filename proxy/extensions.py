"""The built-in extensions, like Envoy's extensions_build_config.bzl: which module registers
each extension, by category and config proto (and per-route config proto).

Job: importing this module fills `proxy.config.registry`'s catalogue, nothing more; each
module is imported the first time a config names its proto (registry.resolve), so a proxy
imports only the extensions its bootstrap uses. Adding an extension = one row here (the
module registers itself with `registry.register`); tests/unit/test_extension_catalogue.py
checks that every row names the module that registers that proto, and that nothing registers
a proto without a row.

Must not: contain logic or import the extension modules. Thread affinity: imported on the
main thread before any worker starts.
"""

from __future__ import annotations

from proxy.config.registry import catalogue

HTTP = "envoy.extensions.filters.http."
NETWORK = "envoy.extensions.filters.network."
LISTENER = "envoy.extensions.filters.listener."

# module, category, config proto, per-route config proto (typed_per_filter_config) or None
BUILT_IN: tuple[tuple[str, str, str, str | None], ...] = (
    ("proxy.access_log.config", "access_logger", "envoy.extensions.access_loggers.file.v3.FileAccessLog", None),
    ("proxy.access_log.config", "access_logger", "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", None),
    ("proxy.access_log.config", "access_logger", "envoy.extensions.access_loggers.stream.v3.StderrAccessLog", None),
    ("proxy.access_log.grpc_config", "access_logger", "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig", None),
    ("proxy.access_log.grpc_config", "access_logger", "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig", None),
    ("proxy.access_log.otel_config", "access_logger", "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig", None),
    ("proxy.http.hcm_config", "network_filter", NETWORK + "http_connection_manager.v3.HttpConnectionManager", None),
    ("proxy.network.tcp_proxy_config", "network_filter", NETWORK + "tcp_proxy.v3.TcpProxy", None),
    ("proxy.network.redis.config", "network_filter", NETWORK + "redis_proxy.v3.RedisProxy", None),
    ("proxy.network.filters.connection_limit", "network_filter", NETWORK + "connection_limit.v3.ConnectionLimit", None),
    ("proxy.network.filters.local_ratelimit", "network_filter", NETWORK + "local_ratelimit.v3.LocalRateLimit", None),
    ("proxy.network.filters.rbac", "network_filter", NETWORK + "rbac.v3.RBAC", None),
    ("proxy.network.udp.config", "udp_listener_filter", "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig", None),
    ("proxy.network.listener_filters.tls_inspector", "listener_filter", LISTENER + "tls_inspector.v3.TlsInspector", None),
    ("proxy.network.listener_filters.http_inspector", "listener_filter", LISTENER + "http_inspector.v3.HttpInspector", None),
    ("proxy.network.listener_filters.proxy_protocol", "listener_filter", LISTENER + "proxy_protocol.v3.ProxyProtocol", None),
    ("proxy.network.listener_filters.original_dst", "listener_filter", LISTENER + "original_dst.v3.OriginalDst", None),
    ("proxy.network.transport_socket", "downstream_transport_socket",
     "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer", None),
    ("proxy.network.transport_socket", "upstream_transport_socket",
     "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer", None),
    ("proxy.tls.transport_socket", "downstream_transport_socket",
     "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", None),
    ("proxy.tls.transport_socket", "upstream_transport_socket",
     "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", None),
    ("proxy.http.original_ip", "original_ip_detection",
     "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig", None),
    ("proxy.http.original_ip", "original_ip_detection",
     "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig", None),
    ("proxy.http.router_filter_config", "http_filter", HTTP + "router.v3.Router", None),
    ("proxy.http.filters.fault", "http_filter", HTTP + "fault.v3.HTTPFault", HTTP + "fault.v3.HTTPFault"),
    ("proxy.http.filters.cors", "http_filter", HTTP + "cors.v3.Cors", HTTP + "cors.v3.CorsPolicy"),
    ("proxy.http.filters.rbac", "http_filter", HTTP + "rbac.v3.RBAC", HTTP + "rbac.v3.RBACPerRoute"),
    ("proxy.http.filters.compressor", "http_filter", HTTP + "compressor.v3.Compressor", None),
    ("proxy.http.filters.decompressor", "http_filter", HTTP + "decompressor.v3.Decompressor", None),
    ("proxy.http.filters.local_ratelimit", "http_filter", HTTP + "local_ratelimit.v3.LocalRateLimit",
     HTTP + "local_ratelimit.v3.LocalRateLimit"),
    ("proxy.http.filters.csrf", "http_filter", HTTP + "csrf.v3.CsrfPolicy", HTTP + "csrf.v3.CsrfPolicy"),
    ("proxy.http.filters.header_mutation_filter", "http_filter", HTTP + "header_mutation.v3.HeaderMutation",
     HTTP + "header_mutation.v3.HeaderMutationPerRoute"),
    ("proxy.http.filters.health_check", "http_filter", HTTP + "health_check.v3.HealthCheck", None),
    ("proxy.http.filters.ext_authz", "http_filter", HTTP + "ext_authz.v3.ExtAuthz", HTTP + "ext_authz.v3.ExtAuthzPerRoute"),
    ("proxy.http.filters.ratelimit", "http_filter", HTTP + "ratelimit.v3.RateLimit", HTTP + "ratelimit.v3.RateLimitPerRoute"),
    ("proxy.http.filters.python_filter", "http_filter", "ftproxy.extensions.filters.http.python.v1.PythonFilter", None),
    ("proxy.http.filters.grpc_http1_bridge", "http_filter", HTTP + "grpc_http1_bridge.v3.Config", None),
    ("proxy.http.filters.grpc_stats", "http_filter", HTTP + "grpc_stats.v3.FilterConfig", None),
    ("proxy.http.filters.grpc_web", "http_filter", HTTP + "grpc_web.v3.GrpcWeb", None),
    ("proxy.http.filters.grpc_json_transcoder", "http_filter", HTTP + "grpc_json_transcoder.v3.GrpcJsonTranscoder",
     HTTP + "grpc_json_transcoder.v3.GrpcJsonTranscoder"),
    ("proxy.http.filters.lua", "http_filter", HTTP + "lua.v3.Lua", HTTP + "lua.v3.LuaPerRoute"),
    ("proxy.http.filters.cache", "http_filter", HTTP + "cache.v3.CacheConfig", None),
    ("proxy.http.filters.jwt_authn", "http_filter", HTTP + "jwt_authn.v3.JwtAuthentication",
     HTTP + "jwt_authn.v3.PerRouteConfig"),
    ("proxy.http.filters.buffer", "http_filter", HTTP + "buffer.v3.Buffer", HTTP + "buffer.v3.BufferPerRoute"),
    ("proxy.http.filters.set_metadata", "http_filter", HTTP + "set_metadata.v3.Config",
     HTTP + "set_metadata.v3.Config"),
    ("proxy.http.filters.lua_cluster_specifier", "cluster_specifier_plugin",
     "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig", None),
    ("proxy.router.internal_redirect_predicates", "internal_redirect_predicate",
     "envoy.extensions.internal_redirect.allow_listed_routes.v3.AllowListedRoutesConfig", None),
    ("proxy.router.internal_redirect_predicates", "internal_redirect_predicate",
     "envoy.extensions.internal_redirect.previous_routes.v3.PreviousRoutesConfig", None),
    ("proxy.router.internal_redirect_predicates", "internal_redirect_predicate",
     "envoy.extensions.internal_redirect.safe_cross_scheme.v3.SafeCrossSchemeConfig", None),
    ("proxy.tracing.config", "tracer", "envoy.config.trace.v3.ZipkinConfig", None),
    ("proxy.tracing.otel_config", "tracer", "envoy.config.trace.v3.OpenTelemetryConfig", None),
    ("proxy.tracing.skywalking_config", "tracer", "envoy.config.trace.v3.SkyWalkingConfig", None),
    ("proxy.tracing.datadog_config", "tracer", "envoy.config.trace.v3.DatadogConfig", None),
    ("proxy.stats.statsd", "stats_sink", "envoy.config.metrics.v3.StatsdSink", None),
    ("proxy.stats.dog_statsd", "stats_sink", "envoy.config.metrics.v3.DogStatsdSink", None),
    ("proxy.stats.metrics_service", "stats_sink", "envoy.config.metrics.v3.MetricsServiceConfig", None),
)

for _row in BUILT_IN:
    catalogue(*_row)
