"""The example's control-plane snapshot (resource.go of envoyproxy/examples dynamic-config-cp,
bc4dd4a), as the resources go-control-plane serves: one LOGICAL_DNS cluster
`example_proxy_cluster` (service1:8080), route `local_route` to it, listener `listener_0` on
0.0.0.0:10000 whose HCM takes its routes over RDS from a per-type GRPC api_config_source
(set_node_on_first_message_only) on xds_cluster. Version "1"; verify.sh edits service1 ->
service2 and "1" -> "2" and restarts the control plane.
"""

from __future__ import annotations

T = "type.googleapis.com/"
CLUSTER_NAME = "example_proxy_cluster"
ROUTE_NAME = "local_route"
LISTENER_NAME = "listener_0"
LISTENER_PORT = 10000
UPSTREAM_PORT = 8080


def make_cluster(upstream_host: str) -> dict:
    return {"@type": T + "envoy.config.cluster.v3.Cluster", "name": CLUSTER_NAME,
            "connect_timeout": "5s", "type": "LOGICAL_DNS", "lb_policy": "ROUND_ROBIN",
            "dns_lookup_family": "V4_ONLY",
            "load_assignment": {"cluster_name": CLUSTER_NAME, "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {
                    "protocol": "TCP", "address": upstream_host, "port_value": UPSTREAM_PORT}}}}]}]}}


def make_route() -> dict:
    return {"@type": T + "envoy.config.route.v3.RouteConfiguration", "name": ROUTE_NAME,
            "virtual_hosts": [{"name": "local_service", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"}, "route": {"cluster": CLUSTER_NAME}}]}]}


def make_config_source() -> dict:
    return {"resource_api_version": "V3", "api_config_source": {
        "transport_api_version": "V3", "api_type": "GRPC", "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}


def make_http_listener() -> dict:
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "codec_type": "AUTO", "stat_prefix": "http",
           "rds": {"config_source": make_config_source(), "route_config_name": ROUTE_NAME},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"@type": T + "envoy.config.listener.v3.Listener", "name": LISTENER_NAME,
            "address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0",
                                           "port_value": LISTENER_PORT}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def generate_snapshot(upstream_host: str = "service1", version: str = "1") -> dict[str, tuple[str, list]]:
    """type URL -> (version, resources), as cache.NewSnapshot(version, endpoints, clusters,
    routes, listeners, ...)."""
    return {
        T + "envoy.config.endpoint.v3.ClusterLoadAssignment": (version, []),
        T + "envoy.config.cluster.v3.Cluster": (version, [make_cluster(upstream_host)]),
        T + "envoy.config.route.v3.RouteConfiguration": (version, [make_route()]),
        T + "envoy.config.listener.v3.Listener": (version, [make_http_listener()]),
    }
