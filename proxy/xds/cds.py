"""CDS: a whole set of Cluster resources validated as static clusters are, then applied.

As Envoy's CdsApiHelper: clusters missing from the update are removed, and each cluster of
the update is added or replaced on its own, so the good clusters of an update apply even when
another one is refused (it keeps its old config, if it had one); the update is then rejected
(update_rejected, the version stays) with every refused cluster's field-path error. A name
given twice, or the name of a static cluster, is refused. Envoy rejects a whole response
whose resource fails its proto validation (PGV: a negative duration, a missing required
field) before applying any: ftproxy's validators do not tell those apart (see README).

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
        refused: set[str] = set()
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
            elif isinstance(name, str):
                refused.add(name)
        self.cluster_manager.apply_cds(configs, version_info, keep=frozenset(refused))
        errors.raise_if_any()
        self.version_info = version_info
