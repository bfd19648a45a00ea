"""CDS: a whole set of Cluster resources validated as static clusters are, then applied.

As Envoy: a CDS update is accepted or rejected as a whole (one bad cluster rejects the
response and the clusters in force stay); a name given twice, or the name of a static cluster,
is refused. The accepted set goes to `ClusterManager.apply_cds` (add, modify, remove).

Stats (main store): `cluster_manager.cds.*` (proxy/xds/subscription.py SubscriptionStats).
Thread affinity: main thread only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.config.reader import MISSING, ConfigError, ErrorCollector, join
from proxy.upstream.cluster_config import parse_cluster

__all__ = ["CdsApplier"]


class CdsApplier:
    """`SubscriptionCallbacks` for CDS."""

    def __init__(self, cluster_manager) -> None:
        self.cluster_manager = cluster_manager
        self.version_info = ""

    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        errors = ErrorCollector()
        configs = []
        seen: dict[str, str] = {}
        for raw, path in resources:
            name = raw.get("name")
            if isinstance(name, str) and name:
                if name in seen:
                    errors.add(ConfigError(join(path, "name"), f'duplicate cluster name "{name}" '
                                                               f"(also at {seen[name]})"))
                    continue
                if self.cluster_manager.is_static(name):
                    errors.add(ConfigError(join(path, "name"), f'cluster "{name}" is a static cluster: '
                                                               "CDS cannot replace it"))
                    continue
                seen[name] = path
            cfg = errors.run(parse_cluster, raw, path)
            if cfg is not MISSING:
                configs.append(cfg)
        errors.raise_if_any()
        self.cluster_manager.apply_cds(configs, version_info)
        self.version_info = version_info
