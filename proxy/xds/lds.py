"""LDS: Listener resources validated as static listeners are, applied one by one.

As Envoy's LDS: listeners missing from the update are removed; each listener of the update is
added or updated on its own, so the good listeners of an update apply even when another one
is refused; then the update as a whole is rejected (update_rejected, the version stays) with
every refused listener's field-path error. A listener cannot take a static listener's name,
and an inline route_config must name clusters that exist (validate_clusters, as at load).

Thread affinity: main thread only. Applies through `ListenerTarget` (proxy/server/
dynamic_listeners.py), which binds sockets and posts to workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from proxy.config.bootstrap import check_route_clusters, check_tracing_collectors
from proxy.config.listener import parse_listener
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, join

__all__ = ["LdsApplier", "ListenerTarget"]


class ListenerTarget(Protocol):
    def is_static(self, name: str) -> bool: ...
    def dynamic_names(self) -> set[str]: ...
    def cluster_names(self) -> set[str]: ...
    def cluster_configs(self) -> list[Any]:
        """The current clusters' configs (static and CDS)."""
    def add_or_update(self, config: Any, version_info: str, path: str) -> None:
        """Raises ConfigError (naming `path`) when the listener cannot be placed (its address
        is taken, the bind fails)."""
    def remove(self, name: str) -> None: ...


class LdsApplier:
    """`SubscriptionCallbacks` for LDS."""

    def __init__(self, target: ListenerTarget) -> None:
        self.target = target

    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        errors = ErrorCollector()
        wanted: set[str] = set()
        good = []
        seen: dict[str, str] = {}
        for i, (raw, path) in enumerate(resources):
            name = raw.get("name")
            if isinstance(name, str) and name:
                wanted.add(name)
                if name in seen:
                    errors.add(ConfigError(join(path, "name"), f'duplicate listener name "{name}" '
                                                               f"(also at {seen[name]})"))
                    continue
                seen[name] = path
                if self.target.is_static(name):
                    errors.add(ConfigError(join(path, "name"), f'listener "{name}" is a static '
                                                               "listener: LDS cannot replace it"))
                    continue
            lc = errors.run(parse_listener, raw, path, i)
            if lc is MISSING:
                continue
            if lc.protocol == "UDP":
                errors.add(ConfigError(join(path, "address"), "not supported yet (a UDP listener "
                                                              "over LDS: only in static_resources)"))
                continue
            if errors.run(check_route_clusters, (lc,), (path,), self.target.cluster_names(),
                          "the static or CDS clusters") is MISSING:
                continue
            if errors.run(check_tracing_collectors, (lc,), (path,),
                          self.target.cluster_configs()) is MISSING:
                continue
            good.append((lc, path))
        for name in sorted(self.target.dynamic_names() - wanted):
            self.target.remove(name)
        for lc, path in good:
            errors.run(self.target.add_or_update, lc, version_info, path)
        errors.raise_if_any()
