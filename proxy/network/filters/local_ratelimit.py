"""`envoy.filters.network.local_ratelimit`: new connections take a token from a bucket shared
by every worker; with none left the connection is closed unread.

Config `envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit`: `stat_prefix`,
`token_bucket` (`max_tokens`, `tokens_per_fill` (default 1), `fill_interval` (>= 50 ms, as
Envoy requires)), `runtime_enabled` (its default_value: no runtime layer). `share_key` is
refused. The bucket starts full and gains `tokens_per_fill` per whole `fill_interval` elapsed
(counted when a connection asks, which gives what Envoy's fill timer gives).
Stat `local_rate_limit.<stat_prefix>.rate_limited`.
Thread affinity: the bucket is shared by every worker under its lock; clocks are read by the
caller (the filter, from the dispatcher's clock) and passed in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ..filter_chain import NetworkFilterStatus

__all__ = ["LocalRateLimitConfig", "parse_local_ratelimit", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    stat_prefix: str
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    enabled: bool = True


_PROTO = "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
LOCAL_RATELIMIT = Message(_PROTO, title="Network filter local_ratelimit",
                          model=LocalRateLimitConfig, fields=(
    used("stat_prefix"),
    used("token_bucket", attr="", why="its own table"),
    used("runtime_enabled", attr="enabled", why="its default_value: there is no runtime layer"),
    refused("share_key", "one bucket per filter config"),
))
TOKEN_BUCKET = Message("envoy.type.v3.TokenBucket", fields=(
    used("max_tokens"),
    used("tokens_per_fill", 1),
    used("fill_interval"),
))


def parse_local_ratelimit(raw: Mapping[str, Any], path: str) -> LocalRateLimitConfig:
    f = LOCAL_RATELIMIT.read(raw, path)
    prefix = f.str("stat_prefix", required=True)
    if not prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    if f.value("token_bucket") is None:
        raise ConfigError(f.at("token_bucket"), "required field is missing")
    tb = TOKEN_BUCKET.read(f.value("token_bucket"), f.at("token_bucket"))
    interval = tb.duration("fill_interval", required=True)
    if interval < 0.05:
        raise ConfigError(tb.at("fill_interval"), "must be at least 50ms")
    return LocalRateLimitConfig(
        stat_prefix=prefix,
        max_tokens=tb.int("max_tokens", required=True, min=1, max=2**32 - 1),
        tokens_per_fill=tb.int("tokens_per_fill", 1, min=1, max=2**32 - 1),
        fill_interval=interval,
        enabled=parse_runtime_feature_flag(f.raw_obj("runtime_enabled"), f.at("runtime_enabled")),
    )


class TokenBucket:
    """`lock` guards `tokens` and `last_fill`; held for one refill-and-take."""

    __slots__ = ("lock", "config", "tokens", "last_fill")

    def __init__(self, config: LocalRateLimitConfig, now: float) -> None:
        self.lock = threading.Lock()
        self.config = config
        self.tokens = config.max_tokens
        self.last_fill = now

    def try_take(self, now: float) -> bool:
        cfg = self.config
        with self.lock:
            fills = int((now - self.last_fill) // cfg.fill_interval)
            if fills > 0:
                self.tokens = min(cfg.max_tokens, self.tokens + fills * cfg.tokens_per_fill)
                self.last_fill += fills * cfg.fill_interval
            if self.tokens <= 0:
                return False
            self.tokens -= 1
            return True


class LocalRateLimitFactory:
    def __init__(self, config: LocalRateLimitConfig, name: str) -> None:
        self.config = config
        self.bucket = TokenBucket(config, time.monotonic())

    def for_worker(self, worker) -> WorkerLocalRateLimit:
        return WorkerLocalRateLimit(self, worker)


class WorkerLocalRateLimit:
    def __init__(self, factory: LocalRateLimitFactory, worker) -> None:
        self.config = factory.config
        self.bucket = factory.bucket
        self.rate_limited = worker.stats.scope(
            f"local_rate_limit.{factory.config.stat_prefix}").counter("rate_limited")

    def create(self, callbacks) -> LocalRateLimitFilter:
        return LocalRateLimitFilter(self, callbacks)


class LocalRateLimitFilter:
    __slots__ = ("wf", "cb")

    def __init__(self, wf: WorkerLocalRateLimit, callbacks) -> None:
        self.wf = wf
        self.cb = callbacks

    def on_new_connection(self) -> int:
        wf = self.wf
        if not wf.config.enabled or wf.bucket.try_take(time.monotonic()):
            return NetworkFilterStatus.CONTINUE
        wf.rate_limited.value += 1
        self.cb.close()
        return NetworkFilterStatus.STOP_ITERATION

    def on_close(self) -> None:
        pass


register(Extension(
    category="network_filter",
    name="envoy.filters.network.local_ratelimit",
    proto="envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
    parse=parse_local_ratelimit,
    factory=LocalRateLimitFactory,
))
