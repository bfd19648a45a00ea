"""Upstream: clusters, hosts, load balancers, circuit breakers, the cluster manager.

Thread affinity: `ClusterManager` and `system_resolver` run on the main thread only; the
snapshots they publish are immutable and shared by all workers; `ResourceLimits` is shared
and thread-safe; a `LoadBalancer` belongs to one worker. Connection pools live elsewhere.
"""

from .circuit_breaker import LimitsState, ResourceLimits
from .cluster_config import ClusterConfig, EndpointConfig, Thresholds, parse_cluster, parse_clusters
from .cluster_manager import ClusterManager
from .dns import system_resolver
from .host import ClusterSnapshot, Host, HostSet
from .load_balancer import LoadBalancer, create_load_balancer

__all__ = [
    "ClusterConfig", "ClusterManager", "ClusterSnapshot", "EndpointConfig", "Host", "HostSet",
    "LimitsState", "LoadBalancer", "ResourceLimits", "Thresholds", "create_load_balancer",
    "parse_cluster", "parse_clusters", "system_resolver",
]
