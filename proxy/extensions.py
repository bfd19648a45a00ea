"""The list of built-in extensions, like Envoy's extensions_build_config.bzl.

Job: importing this module imports every module that registers an extension (network
filters, HTTP filters, access loggers), filling `proxy.config.registry`. Adding an
extension = one import line here.

Must not: contain logic. Thread affinity: import on the main thread before any worker starts;
the registry is read-only afterwards.
"""

from __future__ import annotations

import proxy.access_log.config  # noqa: F401  access loggers
import proxy.http.hcm_config  # noqa: F401  envoy.filters.network.http_connection_manager
import proxy.http.router_filter_config  # noqa: F401  envoy.filters.http.router
import proxy.network.tcp_proxy_config  # noqa: F401  envoy.filters.network.tcp_proxy
import proxy.network.udp.config  # noqa: F401  envoy.filters.udp_listener.udp_proxy
import proxy.http.filters.fault  # noqa: F401  envoy.filters.http.fault
import proxy.http.filters.cors  # noqa: F401  envoy.filters.http.cors
import proxy.network.filters.connection_limit  # noqa: F401  envoy.filters.network.connection_limit
import proxy.network.filters.local_ratelimit  # noqa: F401  envoy.filters.network.local_ratelimit
import proxy.tls.transport_socket  # noqa: F401  envoy.transport_sockets.tls (both sides)
import proxy.network.listener_filters.tls_inspector  # noqa: F401  envoy.filters.listener.tls_inspector
import proxy.network.listener_filters.http_inspector  # noqa: F401  envoy.filters.listener.http_inspector
import proxy.network.listener_filters.proxy_protocol  # noqa: F401  envoy.filters.listener.proxy_protocol
import proxy.network.listener_filters.original_dst  # noqa: F401  envoy.filters.listener.original_dst
import proxy.http.filters.rbac  # noqa: F401  envoy.filters.http.rbac
import proxy.network.filters.rbac  # noqa: F401  envoy.filters.network.rbac
import proxy.http.filters.compressor  # noqa: F401  envoy.filters.http.compressor (gzip)
import proxy.http.filters.local_ratelimit  # noqa: F401  envoy.filters.http.local_ratelimit
import proxy.stats.dog_statsd  # noqa: F401  envoy.stat_sinks.dog_statsd
import proxy.stats.statsd  # noqa: F401  envoy.stat_sinks.statsd
import proxy.http.filters.decompressor  # noqa: F401  envoy.filters.http.decompressor (gzip)
import proxy.http.filters.csrf  # noqa: F401  envoy.filters.http.csrf
import proxy.http.filters.health_check  # noqa: F401  envoy.filters.http.health_check
import proxy.http.filters.ext_authz  # noqa: F401  envoy.filters.http.ext_authz (HTTP service)
import proxy.http.filters.ratelimit  # noqa: F401  envoy.filters.http.ratelimit (global, gRPC service)
import proxy.http.filters.python_filter  # noqa: F401  ftproxy.filters.http.python (filters in Python)
import proxy.http.filters.grpc_http1_bridge  # noqa: F401  envoy.filters.http.grpc_http1_bridge
import proxy.http.filters.grpc_stats  # noqa: F401  envoy.filters.http.grpc_stats
import proxy.http.filters.grpc_web  # noqa: F401  envoy.filters.http.grpc_web
import proxy.http.filters.grpc_json_transcoder  # noqa: F401  envoy.filters.http.grpc_json_transcoder
import proxy.http.filters.lua  # noqa: F401  envoy.filters.http.lua (lupa, imported only when configured)
import proxy.http.filters.cache  # noqa: F401  envoy.filters.http.cache (SimpleHttpCacheConfig)
import proxy.http.filters.lua_cluster_specifier  # noqa: F401  envoy.router.cluster_specifier_plugin.lua (lupa, imported only when configured)
import proxy.http.filters.jwt_authn  # noqa: F401  envoy.filters.http.jwt_authn
