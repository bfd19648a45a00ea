"""`envoy.filters.http.health_check`: answer load balancers' health checks, as Envoy's
HealthCheckFilter does.

Config `envoy.extensions.filters.http.health_check.v3.HealthCheck`: `headers` (every matcher
must match for a request to be a health check, e.g. `:path` exact `/healthz`),
`pass_through_mode` (required), `cache_time` (pass-through only), `cluster_min_healthy_percentages`.
A health-check request is answered here (200, or 503 with response flag LH while the server
fails its health checks after admin `/healthcheck/fail`), unless in pass-through mode, where it
goes on to the upstream, answered here only when the server fails health checks or while a
cached answer (`cache_time`) is fresh. Without pass-through, `cluster_min_healthy_percentages`
answers 503 if a named cluster is missing, empty (unless its minimum is 0) or has fewer
healthy + degraded hosts than its percentage. A health-check response gets
`x-envoy-upstream-healthchecked-cluster: <node.cluster>`; any other response, while the server
fails health checks, `x-envoy-immediate-health-check-fail: true`. Response code details as
Envoy's (`health_check_ok`, `health_check_failed`, `health_check_cached`,
`health_check_ok_cluster_healthy`, `health_check_failed_no_cluster_found`,
`health_check_failed_cluster_empty`, `health_check_failed_cluster_unhealthy`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...router.matchers import HeaderMatcher, parse_header_matcher
from ..filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, PassThroughFilter

__all__ = ["HealthCheckFilterConfig", "parse_health_check_filter"]

NAME = "envoy.filters.http.health_check"
PROTO = "envoy.extensions.filters.http.health_check.v3.HealthCheck"


@dataclass(frozen=True, slots=True)
class HealthCheckFilterConfig:
    pass_through_mode: bool
    headers: tuple[HeaderMatcher, ...] = ()
    cache_time: float = 0.0
    cluster_min_healthy_percentages: tuple[tuple[str, float], ...] = ()


HEALTH_CHECK_FILTER = Message(PROTO, title="HTTP filter health_check", model=HealthCheckFilterConfig,
                              fields=(
    used("pass_through_mode"),
    used("cache_time"),
    used("cluster_min_healthy_percentages"),
    used("headers"),
))
MIN_HEALTHY_PERCENT = Message("envoy.type.v3.Percent (cluster_min_healthy_percentages)", fields=(
    used("value", 0.0, attr="cluster_min_healthy_percentages"),
))


def parse_health_check_filter(raw: Mapping[str, Any], path: str) -> HealthCheckFilterConfig:
    f = HEALTH_CHECK_FILTER.read(raw, path)
    pass_through = f.bool("pass_through_mode", required=True)
    cache_time = f.duration("cache_time", 0.0)
    if cache_time and not pass_through:
        # Envoy's HealthCheckFilterConfig::createFilter message.
        raise ConfigError(f.at("cache_time"), "cache_time_ms must not be set when path_through_mode is disabled")
    percents = []
    for name, value in sorted((f.raw_obj("cluster_min_healthy_percentages") or {}).items()):
        p = MIN_HEALTHY_PERCENT.read(value, f"{f.at('cluster_min_healthy_percentages')}.{name}")
        v = p.float("value", 0.0)
        if not 0.0 <= v <= 100.0:
            raise ConfigError(p.at("value"), f"must be between 0 and 100, got {v}")
        percents.append((name, v))
    return HealthCheckFilterConfig(
        pass_through_mode=pass_through,
        headers=tuple(parse_header_matcher(m, p) for m, p in f.list("headers")),
        cache_time=cache_time,
        cluster_min_healthy_percentages=tuple(percents),
    )


class _Cache:
    """Envoy's HealthCheckCacheManager: the last pass-through health-check answer (status,
    degraded), used until the next `cache_time` tick (Envoy clears its flag on a timer every
    cache_time from the filter's creation; the same periods, counted from the clock). Shared
    by every worker: `_lock` guards the three fields (held for the assignment only)."""

    def __init__(self, cache_time: float) -> None:
        self.cache_time = cache_time
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._period = -1
        self._status = 200
        self._degraded = False

    def _now_period(self) -> int:
        return int((time.monotonic() - self.start) / self.cache_time)

    def set(self, status: int, degraded: bool) -> None:
        with self._lock:
            self._status, self._degraded, self._period = status, degraded, self._now_period()

    def fresh(self) -> bool:
        return self._period == self._now_period()   # (one int read: no lock needed)

    def get(self) -> tuple[int, bool]:
        with self._lock:
            return self._status, self._degraded


class HealthCheckFilterFactory:
    def __init__(self, config: HealthCheckFilterConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.cache = _Cache(config.cache_time) if config.cache_time else None

    def for_worker(self, ctx) -> WorkerHealthCheckFactory:
        return WorkerHealthCheckFactory(self, ctx)


class WorkerHealthCheckFactory:
    decoder = True
    encoder = True

    def __init__(self, factory: HealthCheckFilterFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.cache = factory.cache
        self.worker = ctx.worker

    def create(self, callbacks) -> HealthCheckFilter:
        return HealthCheckFilter(callbacks, self)

    def failed(self) -> bool:
        h = self.worker.server_health
        return h is not None and h.failed


class HealthCheckFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf", "hc_request", "handling")

    def __init__(self, callbacks, wf: WorkerHealthCheckFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.hc_request = False
        self.handling = False

    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        if all(m.matches(head) for m in wf.config.headers):
            self.hc_request = True
            if (not wf.config.pass_through_mode or wf.failed()
                    or (wf.cache is not None and wf.cache.fresh())):
                self.handling = True
        if self.handling:
            if end_stream:
                self._complete()
            return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.handling:
            return FilterDataStatus.CONTINUE
        if end_stream:
            self._complete()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers) -> int:
        if not self.handling:
            return FilterTrailersStatus.CONTINUE
        self._complete()
        return FilterTrailersStatus.STOP_ITERATION

    def encode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        if self.hc_request:
            if wf.cache is not None:  # (its own answers too, as Envoy)
                wf.cache.set(head.status, head.headers.has(b"x-envoy-degraded"))
            health = wf.worker.server_health
            head.headers.set(b"x-envoy-upstream-healthchecked-cluster",
                             (health.node_cluster if health is not None else "").encode("latin-1"))
        elif wf.failed():
            head.headers.set(b"x-envoy-immediate-health-check-fail", b"true")
        return FilterHeadersStatus.CONTINUE

    def _complete(self) -> None:
        """HealthCheckFilter::onComplete: the answer."""
        wf = self.wf
        status, details, degraded = 200, "health_check_ok", False
        if wf.failed():
            self.cb.send_local_reply(503, b"", "LH", "health_check_failed")
            return
        if wf.cache is not None:
            status, degraded = wf.cache.get()
            details = "health_check_cached"
        elif wf.config.cluster_min_healthy_percentages:
            clusters = wf.worker.clusters
            for name, minimum in wf.config.cluster_min_healthy_percentages:
                details = "health_check_ok_cluster_healthy"
                wc = clusters.get(name)
                if wc is None:
                    status, details = 503, "health_check_failed_no_cluster_found"
                    break
                snap = wc.snapshot
                total = len(snap.hosts)
                if total == 0:
                    if minimum == 0:
                        continue
                    status, details = 503, "health_check_failed_cluster_empty"
                    break
                if 100 * (snap.membership_healthy + snap.membership_degraded) < total * int(minimum):
                    status, details = 503, "health_check_failed_cluster_unhealthy"
                    break
        flag = None if 200 <= status < 300 else "LH"
        extra = [(b"x-envoy-degraded", b"")] if degraded else None
        self.cb.send_local_reply(status, b"", flag, details, extra)


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_health_check_filter,
    factory=HealthCheckFilterFactory,
))
