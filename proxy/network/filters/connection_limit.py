"""`envoy.filters.network.connection_limit`: at most `max_connections` open connections
through this filter (all workers together); the next ones are closed, at once or after
`delay`, unread.

Config `envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit`: `stat_prefix`,
`max_connections` (>= 1), `delay`, `runtime_enabled` (its default_value: no runtime layer).
Stats `connection_limit.<stat_prefix>.limited_connections` and gauge `active_connections`.
Thread affinity: the count is shared by every worker under its lock; a filter lives on the
worker of its connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ...threads.shared_count import SharedCount
from ..filter_chain import NetworkFilterStatus

__all__ = ["ConnectionLimitConfig", "parse_connection_limit"]


@dataclass(frozen=True, slots=True)
class ConnectionLimitConfig:
    stat_prefix: str
    max_connections: int
    delay: float = 0.0
    enabled: bool = True


CONNECTION_LIMIT = Message("envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
                           title="Network filter connection_limit", model=ConnectionLimitConfig,
                           fields=(
    used("stat_prefix"),
    used("max_connections"),
    used("delay", "0s"),
    used("runtime_enabled", attr="enabled", why="its default_value: there is no runtime layer"),
))


def parse_connection_limit(raw: Mapping[str, Any], path: str) -> ConnectionLimitConfig:
    f = CONNECTION_LIMIT.read(raw, path)
    prefix = f.str("stat_prefix", required=True)
    if not prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    return ConnectionLimitConfig(
        stat_prefix=prefix,
        max_connections=f.int("max_connections", required=True, min=1, max=2**32 - 1),
        delay=f.duration("delay", 0.0),
        enabled=parse_runtime_feature_flag(f.raw_obj("runtime_enabled"), f.at("runtime_enabled")),
    )


class ConnectionLimitFactory:
    def __init__(self, config: ConnectionLimitConfig, name: str) -> None:
        self.config = config
        self.count = SharedCount()  # connections through this filter config, all workers

    def for_worker(self, worker) -> WorkerConnectionLimit:
        return WorkerConnectionLimit(self, worker)


class WorkerConnectionLimit:
    def __init__(self, factory: ConnectionLimitFactory, worker) -> None:
        self.config = factory.config
        self.count = factory.count
        scope = worker.stats.scope(f"connection_limit.{factory.config.stat_prefix}")
        self.limited_connections = scope.counter("limited_connections")
        self.active_connections = scope.gauge("active_connections")

    def create(self, callbacks) -> ConnectionLimitFilter:
        return ConnectionLimitFilter(self, callbacks)


class ConnectionLimitFilter:
    __slots__ = ("wf", "cb", "counted", "timer")

    def __init__(self, wf: WorkerConnectionLimit, callbacks) -> None:
        self.wf = wf
        self.cb = callbacks
        self.counted = False
        self.timer = None

    def on_new_connection(self) -> int:
        wf = self.wf
        cfg = wf.config
        if not cfg.enabled:
            return NetworkFilterStatus.CONTINUE
        if wf.count.try_acquire(cfg.max_connections):
            self.counted = True
            wf.active_connections.value += 1
            return NetworkFilterStatus.CONTINUE
        wf.limited_connections.value += 1
        if cfg.delay:
            self.timer = self.cb.dispatcher.call_later(cfg.delay, self._reject)
        else:
            self.cb.close()
        return NetworkFilterStatus.STOP_ITERATION

    def _reject(self) -> None:
        self.timer = None
        self.cb.close()

    def on_close(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        if self.counted:
            self.counted = False
            self.wf.count.release()
            self.wf.active_connections.value -= 1


register(Extension(
    category="network_filter",
    name="envoy.filters.network.connection_limit",
    proto="envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
    parse=parse_connection_limit,
    factory=ConnectionLimitFactory,
))
