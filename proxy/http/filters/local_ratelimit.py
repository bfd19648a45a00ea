"""`envoy.filters.http.local_ratelimit`: requests take a token from a bucket; with none left a
request is answered 429 (when enforced).

Config `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` (the filter's, and
per route in `typed_per_filter_config`, which replaces it there with a bucket of its own):
`stat_prefix`, `token_bucket` (without one the filter limits nothing), `filter_enabled` and
`filter_enforced` (their default_value; unset means 0 %, as in Envoy: a filter configured
without them only counts), `status` (default 429), `response_headers_to_add` (on a limited
request's reply), `request_headers_to_add_when_not_enforced`, `enable_x_ratelimit_headers`
(DRAFT_VERSION_03: `x-ratelimit-limit/-remaining/-reset` on every response),
`local_rate_limit_per_downstream_connection` (a bucket per connection instead of one for
every worker), `rate_limited_as_resource_exhausted`, `descriptors` with `stage`,
`vh_rate_limits` and `always_consume_default_token_bucket`.

Descriptors (Envoy's LocalRateLimiterImpl::requestAllowed): the route's and virtual host's
`rate_limits` of the config's `stage` make the request's descriptors (proxy/router/rate_limits.py,
the builder the global ratelimit filter uses; the virtual host's when the route has none, always
with the route's `include_vh_rate_limits` or `vh_rate_limits: INCLUDE`, never with IGNORE). Each
configured descriptor a request's descriptor equals (entries in order) is matched; the matched
buckets are taken slowest-filling first, and the first empty one limits the request (those
before it keep their token taken, as Envoy); then, when nothing matched or with
`always_consume_default_token_bucket` (default true), the filter's own bucket. The x-ratelimit
headers describe the bucket that limited the request, else the first matched, else the filter's.
A descriptor's bucket is shared by every worker (or per connection, as the filter's).

A limited request gets `status` with body `local_rate_limited`, flag RL, details
`local_rate_limited`. Stats `<stat_prefix>.http_local_rate_limit.{enabled,enforced,
rate_limited,ok}`. The shared bucket is proxy/network/filters/local_ratelimit.py's
TokenBucket: one lock held for one refill-and-take per request (the only lock on this path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...config.fields_table import Message, not_supported, refused, used
from ...config.reader import ConfigError, Fields
from ...config.registry import Extension, register
from ...config.runtime_values import FractionalPercent, ZERO_PERCENT, parse_runtime_fractional_percent
from ...network.filters.local_ratelimit import TOKEN_BUCKET, TokenBucket
from ...router.header_mutation import HeaderMutation, apply_mutations, parse_header_mutations
from ...router.rate_limits import descriptors
from ..filter import FilterHeadersStatus, PassThroughFilter
from ..headers import Headers

__all__ = ["HttpLocalRateLimit", "parse_http_local_ratelimit"]

NAME = "envoy.filters.http.local_ratelimit"
PROTO = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


@dataclass(frozen=True, slots=True)
class HttpLocalRateLimit:
    stat_prefix: str
    max_tokens: int = 0                 # 0: no token_bucket, nothing is limited
    tokens_per_fill: int = 1
    fill_interval: float = 1.0
    filter_enabled: FractionalPercent = ZERO_PERCENT
    filter_enforced: FractionalPercent = ZERO_PERCENT
    status: int = 429
    response_headers_to_add: tuple[HeaderMutation, ...] = ()
    request_headers_to_add_when_not_enforced: tuple[HeaderMutation, ...] = ()
    x_ratelimit_headers: bool = False
    per_connection: bool = False
    grpc_resource_exhausted: bool = False
    descriptors: tuple[LocalDescriptor, ...] = ()
    stage: int = 0
    vh_rate_limits: int = 0                 # OVERRIDE, INCLUDE, IGNORE
    always_consume_default_token_bucket: bool = True
    # Derived: the descriptors by their entries.
    by_entries: Mapping[tuple, LocalDescriptor] = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_entries", MappingProxyType({d.entries: d for d in self.descriptors}))


@dataclass(frozen=True, slots=True)
class LocalDescriptor:
    """A configured descriptor: its entries ((key, value) bytes, in order) and its bucket's
    settings (what TokenBucket reads)."""
    entries: tuple[tuple[bytes, bytes], ...]
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float


OVERRIDE, INCLUDE, IGNORE = 0, 1, 2


LOCAL_RATELIMIT = Message(PROTO, title="HTTP filter local_ratelimit", model=HttpLocalRateLimit,
                          bookkeeping=("by_entries",), fields=(
    used("stat_prefix"),
    used("status", attr="status", why="HttpStatus code"),
    used("token_bucket", attr="max_tokens", why="envoy.type.v3.TokenBucket"),
    used("filter_enabled", why="its default_value: there is no runtime layer"),
    used("filter_enforced", why="its default_value: there is no runtime layer"),
    used("request_headers_to_add_when_not_enforced"),
    used("response_headers_to_add"),
    used("enable_x_ratelimit_headers", "OFF", attr="x_ratelimit_headers"),
    used("local_rate_limit_per_downstream_connection", False, attr="per_connection"),
    used("rate_limited_as_resource_exhausted", False, attr="grpc_resource_exhausted"),
    used("stage", 0, why="which route rate_limits make the descriptors"),
    used("descriptors", why="LocalRateLimitDescriptor: entries and token_bucket"),
    used("vh_rate_limits", "OVERRIDE"),
    refused("rate_limits", "the filter's own rate_limits (the route's and virtual host's are read)"),
    used("always_consume_default_token_bucket", True),
    refused("local_cluster_rate_limit"),
    refused("max_dynamic_descriptors", "dynamic descriptors (a descriptor entry without a value)"),
    refused("enable_x_ratelimit_headers_with_descriptors"),
))
LOCAL_DESCRIPTOR = Message("envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor",
                           model=LocalDescriptor, fields=(
    used("entries"),
    used("token_bucket", attr="max_tokens", why="envoy.type.v3.TokenBucket"),
))
DESCRIPTOR_ENTRY = Message("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry", fields=(
    used("key", attr="entries"),
    used("value", attr="entries", why="required: an empty one (a dynamic descriptor) is refused"),
))
HTTP_STATUS = Message("envoy.type.v3.HttpStatus (local_ratelimit)", fields=(used("code", attr="status"),))


def parse_http_local_ratelimit(raw: Mapping[str, Any], path: str) -> HttpLocalRateLimit:
    f = LOCAL_RATELIMIT.read(raw, path)
    prefix = f.str("stat_prefix", required=True)
    if not prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    out: dict[str, Any] = {"stat_prefix": prefix, "stage": f.int("stage", 0, min=0, max=10),
                           "always_consume_default_token_bucket": f.bool("always_consume_default_token_bucket", True),
                           "vh_rate_limits": ("OVERRIDE", "INCLUDE", "IGNORE").index(
                               f.enum("vh_rate_limits", ("OVERRIDE", "INCLUDE", "IGNORE"), "OVERRIDE"))}
    if f.has("token_bucket"):
        tb = TOKEN_BUCKET.read(f.value("token_bucket"), f.at("token_bucket"))
        interval = tb.duration("fill_interval", required=True)
        if interval < 0.05:
            raise ConfigError(tb.at("fill_interval"), "must be at least 50ms")
        out.update(max_tokens=tb.int("max_tokens", required=True, min=1, max=2**32 - 1),
                   tokens_per_fill=tb.int("tokens_per_fill", 1, min=1, max=2**32 - 1),
                   fill_interval=interval)
    if f.has("status"):
        s = HTTP_STATUS.read(f.value("status"), f.at("status"))
        code = s.int("code", required=True)
        if not 400 <= code < 600:  # Envoy: a status below 400 falls back to 429
            code = 429
        out["status"] = code
    for key in ("filter_enabled", "filter_enforced"):
        if f.has(key):
            out[key] = parse_runtime_fractional_percent(f.raw_obj(key), f.at(key), default=ZERO_PERCENT)
    out["response_headers_to_add"] = parse_header_mutations(f, "response_headers_to_add", None)
    out["request_headers_to_add_when_not_enforced"] = parse_header_mutations(
        f, "request_headers_to_add_when_not_enforced", None)
    out["x_ratelimit_headers"] = f.enum("enable_x_ratelimit_headers", ("OFF", "DRAFT_VERSION_03"),
                                        "OFF") == "DRAFT_VERSION_03"
    out["per_connection"] = f.bool("local_rate_limit_per_downstream_connection", False)
    out["grpc_resource_exhausted"] = f.bool("rate_limited_as_resource_exhausted", False)
    out["descriptors"] = _descriptors(f)
    if out["descriptors"] and not out.get("max_tokens"):
        raise not_supported(f.at("token_bucket"), "descriptors without the filter's token_bucket")
    return HttpLocalRateLimit(**out)


def _bucket(f: Fields, key: str) -> dict[str, Any]:
    tb = TOKEN_BUCKET.read(f.value(key, required=True), f.at(key))
    interval = tb.duration("fill_interval", required=True)
    if interval < 0.05:
        raise ConfigError(tb.at("fill_interval"), "must be at least 50ms")
    return dict(max_tokens=tb.int("max_tokens", required=True, min=1, max=2**32 - 1),
                tokens_per_fill=tb.int("tokens_per_fill", 1, min=1, max=2**32 - 1),
                fill_interval=interval)


def _descriptors(f: Fields) -> tuple[LocalDescriptor, ...]:
    out: dict[tuple, LocalDescriptor] = {}
    for item, p in f.list("descriptors"):
        d = LOCAL_DESCRIPTOR.read(item, p)
        entries = []
        for e, ep in d.list("entries", required=True, min_items=1):
            entry = DESCRIPTOR_ENTRY.read(e, ep)
            key = entry.str("key", required=True)
            value = entry.str("value", "")
            if not key:
                raise ConfigError(entry.at("key"), "must not be empty")
            if not value:
                raise not_supported(entry.at("value"), "an empty value: dynamic descriptors")
            entries.append((key.encode("utf-8"), value.encode("utf-8")))
        key = tuple(entries)
        if key in out:   # Envoy's words
            raise ConfigError(p, "duplicate descriptor in the local rate descriptor: "
                              + ", ".join(f"{k.decode()}={v.decode()}" for k, v in key))
        out[key] = LocalDescriptor(key, **_bucket(d, "token_bucket"))
    return tuple(out.values())


def _fill_rate(d: LocalDescriptor) -> float:
    return d.tokens_per_fill / d.fill_interval


class _Buckets:
    """The buckets of one filter: the filter config's and each route config's, shared by every
    worker and made on first use (under `lock`, once per config; then read without it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_config: dict[int, tuple[HttpLocalRateLimit, TokenBucket]] = {}

    def get(self, config: HttpLocalRateLimit) -> TokenBucket:
        found = self.by_config.get(id(config))
        if found is None:
            with self.lock:
                found = self.by_config.get(id(config))
                if found is None:
                    found = self.by_config[id(config)] = (config, TokenBucket(config, time.monotonic()))
        return found[1]


class HttpLocalRateLimitFactory:
    def __init__(self, config: HttpLocalRateLimit, name: str) -> None:
        self.config = config
        self.name = name
        self.buckets = _Buckets()

    def for_worker(self, ctx) -> WorkerHttpLocalRateLimit:
        return WorkerHttpLocalRateLimit(self, ctx)


class WorkerHttpLocalRateLimit:
    decoder = True
    encoder = True

    def __init__(self, factory: HttpLocalRateLimitFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.buckets = factory.buckets
        self.worker = ctx.worker
        health = ctx.worker.server_health
        # source_cluster descriptor entries: the node's cluster (Envoy's local_info clusterName).
        self.local_cluster = (health.node_cluster if health is not None else "").encode("utf-8")
        self._stats: dict[str, Any] = {}
        self._by_config: dict[int, tuple] = {}
        # (enabled, enforced, rate_limited, ok) of the filter's own config: shown from the
        # start, as Envoy's; a route's config's are made on first use (stats_of).
        self.own_stats = self.stats_of(self.config)
        # The filter's own config's shared bucket (as Envoy's, made with the config), unless
        # it is per connection.
        self.own_bucket = (None if self.config.per_connection or not self.config.max_tokens
                           else self.buckets.get(self.config))
        # local_rate_limit_per_downstream_connection: this worker's connections' buckets.
        self._conn_buckets: dict[tuple[int, int], TokenBucket] = {}
        self._sweep_at = 256

    def stats_of(self, config: HttpLocalRateLimit) -> tuple:
        """The counters (enabled, enforced, rate_limited, ok) under `config`'s stat_prefix,
        kept per config seen (by identity: a route table's new configs replace the old ones
        here, which are forgotten past 256)."""
        entry = self._by_config.get(id(config))
        if entry is not None and entry[0] is config:
            return entry[1]
        if len(self._by_config) >= 256:
            self._by_config.clear()
        stats = tuple(self.stat(config, name) for name in ("enabled", "enforced", "rate_limited", "ok"))
        self._by_config[id(config)] = (config, stats)
        return stats

    def stat(self, config: HttpLocalRateLimit, name: str):
        key = f"{config.stat_prefix}.http_local_rate_limit.{name}"
        c = self._stats.get(key)
        if c is None:
            c = self._stats[key] = self.worker.stats.counter(key)
        return c

    def bucket(self, config, connection_id: int, per_connection: bool) -> TokenBucket:
        """The bucket of `config` (the filter's or route's config, or one of its descriptors)."""
        if not per_connection:
            return self.buckets.get(config)
        key = (id(config), connection_id)
        b = self._conn_buckets.get(key)
        if b is None:
            now = time.monotonic()
            if len(self._conn_buckets) >= self._sweep_at:
                self._sweep(now)
            b = self._conn_buckets[key] = TokenBucket(config, now)
        return b

    def _sweep(self, now: float) -> None:
        """Drop the buckets that are full again: a full bucket is the same as a new one, so
        forgetting it changes nothing (and the table holds only recently busy connections)."""
        def full(b: TokenBucket) -> bool:
            cfg = b.config
            missing = cfg.max_tokens - b.tokens
            return now - b.last_fill >= -(-missing // cfg.tokens_per_fill) * cfg.fill_interval
        self._conn_buckets = {k: b for k, b in self._conn_buckets.items() if not full(b)}
        self._sweep_at = max(256, 2 * len(self._conn_buckets))

    def create(self, callbacks) -> HttpLocalRateLimitFilter:
        return HttpLocalRateLimitFilter(callbacks, self)


class HttpLocalRateLimitFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: it notes the request first, when it adds)
    __slots__ = ("cb", "wf", "config", "bucket")

    def __init__(self, callbacks, wf: WorkerHttpLocalRateLimit) -> None:
        self.cb = callbacks
        self.wf = wf
        self.config = None   # the config that applied to this request (for the response headers)
        self.bucket = None

    def decode_headers(self, head, end_stream: bool) -> int:
        cb = self.cb
        wf = self.wf
        config = cb.per_filter_config(wf.name) or wf.config
        if not config.max_tokens:
            return FilterHeadersStatus.CONTINUE
        rand = wf.worker.rand_bits
        if not config.filter_enabled.enabled(rand):
            return FilterHeadersStatus.CONTINUE
        stats = wf.own_stats if config is wf.config else wf.stats_of(config)
        stats[0].value += 1   # enabled
        self.config = config
        if config.descriptors:
            bucket, allowed = self._take(config, head)
        else:
            bucket = wf.own_bucket if config is wf.config else None
            if bucket is None:
                bucket = wf.bucket(config, cb.stream_info.connection_id, config.per_connection)
            allowed = bucket.try_take(time.monotonic())
        self.bucket = bucket
        if allowed:
            stats[3].value += 1   # ok
            return FilterHeadersStatus.CONTINUE
        stats[2].value += 1   # rate_limited
        if not config.filter_enforced.enabled(rand):
            if config.request_headers_to_add_when_not_enforced:
                cb.note_request_grpc()  # (keeps_request_content_type: before changing them)
            apply_mutations(config.request_headers_to_add_when_not_enforced, head.headers, cb.stream_info)
            return FilterHeadersStatus.CONTINUE
        stats[1].value += 1   # enforced
        extra = []
        if config.response_headers_to_add:
            h = Headers()
            apply_mutations(config.response_headers_to_add, h, cb.stream_info)
            extra = list(h)
        cb.send_local_reply(config.status, b"local_rate_limited", "RL", "local_rate_limited", extra,
                            grpc_status=8 if config.grpc_resource_exhausted else None)
        return FilterHeadersStatus.STOP_ITERATION

    def _take(self, config: HttpLocalRateLimit, head) -> tuple[TokenBucket, bool]:
        """The request's descriptors' buckets, then the config's (see the module docstring):
        (the bucket that decided, allowed)."""
        cb = self.cb
        wf = self.wf
        found: list = []
        route = cb.route()
        action = route.action if route is not None else None
        if action is not None:
            info = cb.stream_info
            target = (action.cluster or cb.route_cluster(action) or "").encode("utf-8")
            if action.rate_limits:
                descriptors(action.rate_limits, config.stage, head, info, wf.local_cluster, target, found)
            if action.vh_rate_limits:
                vh = INCLUDE if action.include_vh_rate_limits else config.vh_rate_limits
                if vh == INCLUDE or (vh == OVERRIDE and not action.rate_limits):
                    descriptors(action.vh_rate_limits, config.stage, head, info, wf.local_cluster, target, found)
        table = config.by_entries
        matched = [table[d] for d in found if d in table]
        if len(matched) > 1:
            matched.sort(key=_fill_rate)   # the slowest-filling bucket first
        conn = cb.stream_info.connection_id
        per_connection = config.per_connection
        now = time.monotonic()
        first = None
        for d in matched:
            bucket = wf.bucket(d, conn, per_connection)
            if not bucket.try_take(now):
                return bucket, False
            if first is None:
                first = bucket
        if first is None or config.always_consume_default_token_bucket:
            bucket = wf.bucket(config, conn, per_connection)
            if not bucket.try_take(now):
                return bucket, False
            return first or bucket, True
        return first, True

    def encode_headers(self, head, end_stream: bool) -> int:
        config = self.config
        if config is None or not config.x_ratelimit_headers:
            return FilterHeadersStatus.CONTINUE
        bucket = self.bucket
        config = bucket.config     # the filter's, or the descriptor's that decided
        with bucket.lock:
            remaining = bucket.tokens
            reset = max(0.0, bucket.last_fill + config.fill_interval - time.monotonic())
        headers = head.headers
        headers.set(b"x-ratelimit-limit", b"%d" % config.max_tokens)
        headers.set(b"x-ratelimit-remaining", b"%d" % max(0, remaining))
        headers.set(b"x-ratelimit-reset", b"%d" % int(reset + 0.999))
        return FilterHeadersStatus.CONTINUE


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_http_local_ratelimit,
    factory=HttpLocalRateLimitFactory,
    per_route_proto=PROTO,
    parse_per_route=parse_http_local_ratelimit,
))
