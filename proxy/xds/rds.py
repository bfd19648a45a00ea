"""RDS: a named RouteConfiguration from its source, compiled into a route table and handed to
every HTTP connection manager that uses it.

As Envoy's RdsRouteConfigSubscription: an update holds exactly one RouteConfiguration named
`route_config_name` (another name or more than one is rejected); an empty update counts
`update_empty` and keeps the table. The route table is validated by the same code as an inline
route_config (`internal_only_headers` is refused here: the HCM strips them by a list it builds
once). A new table is posted to the workers (`Worker.set_route_table`): streams that start
afterwards use it; a stream already routed keeps its route.

Stats (main store, Envoy's): `http.<stat_prefix>.rds.<route_config_name>.update_attempt`,
`update_success`, `update_rejected`, `update_failure`, `update_empty`, `version`,
`update_time`, `config_reload`.
Thread affinity: main thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config.fields_table import not_supported
from proxy.config.reader import ConfigError, join
from proxy.router.config import parse_route_configuration
from proxy.router.table import RouteTable

__all__ = ["RouteConfigProvider"]

log = logging.getLogger("ftproxy.xds")


class RouteConfigProvider:
    """`SubscriptionCallbacks` for one (source, route_config_name, stat_prefix). `publish(key,
    table)` posts a new table to every worker."""

    def __init__(self, key: tuple, route_config_name: str, empty_table: RouteTable, store,
                 stats_prefix: str, publish: Callable[[tuple, RouteTable], None]) -> None:
        self.key = key
        self.route_config_name = route_config_name
        self.table = empty_table          # until the first update (Envoy: 404 NR)
        self.raw: Mapping[str, Any] | None = None
        self.version_info = ""
        self.last_updated = 0.0
        self._publish = publish
        self.subscription = None          # its source's handle (set by whoever subscribes)
        self._empty = store.counter(f"{stats_prefix}.update_empty")
        self._reload = store.counter(f"{stats_prefix}.config_reload")

    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        if not resources:
            self._empty.inc()
            log.warning("Missing RouteConfiguration for %s in onConfigUpdate()", self.route_config_name)
            return
        if len(resources) != 1:
            raise ConfigError(resources[1][1], f"Unexpected RDS resource length: {len(resources)}")
        raw, path = resources[0]
        name = raw.get("name")
        if name != self.route_config_name:
            raise ConfigError(join(path, "name"), f"Unexpected RDS configuration (expecting "
                                                  f"{self.route_config_name}): {name}")
        rc = parse_route_configuration(raw, path)
        if rc.internal_only_headers:
            raise not_supported(join(path, "internal_only_headers"), "in a route table from RDS")
        if self.raw is not None and raw == self.raw:
            self.version_info = version_info
            return
        self.table = RouteTable(rc)
        self.raw = raw
        self.version_info = version_info
        self.last_updated = time.time()
        self._reload.inc()
        self._publish(self.key, self.table)
