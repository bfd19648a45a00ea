"""EDS: one EDS cluster's ClusterLoadAssignment from its source, validated and handed to the
cluster manager as endpoints.

As Envoy's EdsClusterImpl: the update must hold exactly one ClusterLoadAssignment, named as the
cluster's `service_name` (or its name); none at all is a warning and leaves the hosts as they
are (the cluster still warms up); anything else is rejected and the hosts in force stay.

Stats: `cluster.<name>.update_attempt/update_success/update_rejected/update_failure/version`.
Thread affinity: main thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config.reader import ConfigError
from proxy.upstream.cluster_config import parse_load_assignment

__all__ = ["EdsApplier"]

log = logging.getLogger("ftproxy.xds")


class EdsApplier:
    """`SubscriptionCallbacks` for one EDS cluster."""

    def __init__(self, cluster_name: str, service_name: str,
                 on_endpoints: Callable[..., None]) -> None:
        self.cluster_name = cluster_name
        self.service_name = service_name
        self.on_endpoints = on_endpoints

    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        if not resources:
            log.warning("Missing ClusterLoadAssignment for %s in onConfigUpdate()", self.service_name)
            self.on_endpoints(None)
            return
        if len(resources) != 1:
            raise ConfigError(resources[1][1], f"Unexpected EDS resource length: {len(resources)}")
        raw, path = resources[0]
        name, endpoints, policy = parse_load_assignment(raw, path)
        if name != self.service_name:
            raise ConfigError(path + ".cluster_name",
                              f"Unexpected EDS cluster (expecting {self.service_name}): {name}")
        self.on_endpoints(endpoints, policy)

    def on_failed_first_fetch(self) -> None:
        self.on_endpoints(None)
