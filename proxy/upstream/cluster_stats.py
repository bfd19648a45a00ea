"""One worker's `cluster.<name>.*` stat handles, and Envoy's charging of a response to them.

Envoy charges a response (or a reply the router made for a chosen host) twice
(CodeStatsImpl::chargeResponseStat): the plain `upstream_rq_<code>`, `upstream_rq_<class>xx`,
`upstream_rq_completed`, and the same under `internal.` for an internal request
(x-envoy-internal: true, proxy/http/request_headers.py) or `external.` for any other. Here the
request path counts each response once, into the external.* or internal.* counter, and each
plain stat is the sum of its two (a `_Sum`, read by the merger): no extra work per request.
The internal.* and external.* stats appear on their first charge, as Envoy creates them.
`upstream_rq_time` likewise has `internal.upstream_rq_time` (recorded too for an internal
request) and `external.upstream_rq_time`, here the plain histogram under a second name (it
includes internal requests' times: README).

Thread affinity: one worker (its own stats store). Must not: do I/O.
"""

from __future__ import annotations

from ..stats.store import Counter

__all__ = ["ClusterStats"]

_COUNTERS = (
    "upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout", "upstream_cx_overflow",
    "upstream_cx_destroy", "upstream_cx_none_healthy", "upstream_cx_idle_timeout", "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total", "upstream_rq_total", "upstream_rq_pending_total",
    "upstream_rq_pending_overflow", "upstream_rq_active_overflow", "upstream_rq_timeout", "upstream_rq_rx_reset", "upstream_rq_tx_reset",
    "upstream_rq_cancelled", "upstream_rq_retry", "upstream_rq_retry_overflow",
    "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_backoff_exponential", "upstream_rq_retry_backoff_ratelimited",
    "upstream_rq_per_try_timeout", "upstream_rq_per_try_idle_timeout", "retry_or_shadow_abandoned",
    "lb_healthy_panic", "original_dst_host_invalid",
    "upstream_internal_redirect_succeeded_total", "upstream_internal_redirect_failed_total",
)
_GAUGES = ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active")


class _Sum(Counter):
    """A counter reported as the sum of others of the same store (each only grows, so the
    sum a reader sees only grows too). Nothing writes it."""

    __slots__ = ("parts",)

    def __init__(self, *parts: Counter) -> None:  # (no Counter.__init__: `value` is derived)
        self.parts = parts

    @property
    def value(self) -> int:  # type: ignore[override]
        return sum(p.value for p in self.parts)


class _Split:
    """The internal.* or external.* half of the per-response stats: by code (the codes
    charged so far), by class, completed. Each is reported from its first charge, as Envoy
    makes these stats: a code's first charge (the only one that misses `by_code`) reports
    its class and `completed` too, so the request path never checks."""

    __slots__ = ("scope", "prefix", "by_code", "rq_class", "completed", "reported")

    def __init__(self, scope, prefix: str) -> None:
        self.scope = scope
        self.prefix = prefix
        self.by_code: dict[int, Counter] = {}
        self.rq_class = (None,) + tuple(Counter() for _ in range(5))
        self.completed = Counter()
        self.reported: set[str] = set()

    def _report(self, name: str, c: Counter) -> None:
        if name not in self.reported:
            self.reported.add(name)
            self.scope.alias(self.prefix + name, c)

    def add_code(self, status: int, c: Counter) -> Counter:
        self.by_code[status] = c
        self._report("upstream_rq_%d" % status, c)
        cls = status // 100
        if 1 <= cls <= 5:
            self._report("upstream_rq_%dxx" % cls, self.rq_class[cls])
        self._report("upstream_rq_completed", self.completed)
        return c


class _ResponseCounters:
    """A cluster's per-response counters behind upstream_rq_<code>/<class>xx/completed: the
    external.* and internal.* halves, the (external, internal) pair of each code, and what a
    caller charges to the plain stat alone (the Redis proxy's completed requests: Envoy counts
    no twin for them). Made once per cluster name and worker store (Scope.kept): a cluster
    rebuilt by a CDS update goes on counting in the same ones, as its other stats do."""

    __slots__ = ("external", "internal", "pairs", "completed", "rq_class")

    def __init__(self, scope) -> None:
        ext = self.external = _Split(scope, "external.")
        internal = self.internal = _Split(scope, "internal.")
        # code -> (external, internal) counters, whose sum is reported as upstream_rq_<code>;
        # each half is reported at its own first charge (as Envoy makes its stats).
        self.pairs: dict[int, tuple[Counter, Counter]] = {}
        self.completed = Counter()
        self.rq_class = (None,) + tuple(_Sum(ext.rq_class[i], internal.rq_class[i]) for i in range(1, 6))
        for i in range(1, 6):
            scope.alias(f"upstream_rq_{i}xx", self.rq_class[i])
        scope.alias("upstream_rq_completed", _Sum(ext.completed, internal.completed, self.completed))


class ClusterStats:
    __slots__ = _COUNTERS + _GAUGES + (
        "scope", "rq_class", "by_code", "upstream_rq_completed", "upstream_rq_time",
        "upstream_cx_connect_ms", "upstream_cx_length_ms", "external", "internal",
        "internal_rq_time", "pairs", "upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx",
        "upstream_rq_4xx", "upstream_rq_5xx")

    def __init__(self, store, name: str) -> None:
        self.scope = scope = store.scope(f"cluster.{name}")
        for n in _COUNTERS:
            setattr(self, n, scope.counter(n))
        for n in _GAUGES:
            setattr(self, n, scope.gauge(n))
        rc = scope.kept("response_counters", lambda: _ResponseCounters(scope))
        ext = self.external = rc.external
        self.internal = rc.internal
        # The request path's handles (external requests): by code, by class.
        self.by_code = ext.by_code
        self.rq_class = ext.rq_class
        self.pairs = rc.pairs
        self.upstream_rq_completed = rc.completed
        (self.upstream_rq_1xx, self.upstream_rq_2xx, self.upstream_rq_3xx, self.upstream_rq_4xx,
         self.upstream_rq_5xx) = rc.rq_class[1:]
        # Envoy makes upstream_rq_time at its first sample (it is absent from /stats until a
        # response was timed); so does the stand-in, which puts the real one in its place.
        self.upstream_rq_time = _FirstRecord(self)
        self.internal_rq_time = None
        self.upstream_cx_connect_ms = scope.histogram("upstream_cx_connect_ms", "ms")
        self.upstream_cx_length_ms = scope.histogram("upstream_cx_length_ms", "ms")

    def make_upstream_rq_time(self):
        h = self.upstream_rq_time = self.scope.histogram("upstream_rq_time", "ms")
        self.scope.alias("external.upstream_rq_time", h)
        return h

    def record_internal_time(self, ms: float) -> None:
        """An internal request's upstream_rq_time sample (the router records the plain one)."""
        h = self.internal_rq_time
        if h is None:
            h = self.internal_rq_time = self.scope.histogram("internal.upstream_rq_time", "ms")
        h.record(ms)

    def _pair(self, status: int) -> tuple[Counter, Counter]:
        pair = self.pairs.get(status)
        if pair is None:
            pair = self.pairs[status] = (Counter(), Counter())
            self.scope.alias("upstream_rq_%d" % status, _Sum(*pair))
        return pair

    def record_response(self, status: int, pool, internal: bool = False) -> None:
        """A response (or a reply the router made for the chosen host) to an external request,
        or an internal one (`internal`): the cluster's upstream_rq_<code>/<class>xx/completed
        stats and their external.* or internal.* twins, and the host's success/error count in
        `pool` (upstream_rq_time is the router's, at the response's end)."""
        if status >= 500:
            pool.rq_error += 1
        else:
            pool.rq_success += 1
        if internal:
            self._charge_internal(status)
            return
        c = self.by_code.get(status)
        if c is None:
            c = self.external.add_code(status, self._pair(status)[0])
        c.value += 1
        cls = status // 100
        if 1 <= cls <= 5:
            self.rq_class[cls].value += 1
        self.external.completed.value += 1

    def record_filter_response(self, status: int) -> None:
        """A reply a filter charges to the cluster as an internal request (the ratelimit
        filter's over-limit status, Envoy's CodeStats::chargeResponseStat with
        internal_request): upstream_rq_<code>/<class>xx/completed and their internal.* twins."""
        self._charge_internal(status)

    def _charge_internal(self, status: int) -> None:
        internal = self.internal
        c = internal.by_code.get(status)
        if c is None:
            c = internal.add_code(status, self._pair(status)[1])
        c.value += 1
        cls = status // 100
        if 1 <= cls <= 5:
            internal.rq_class[cls].value += 1
        internal.completed.value += 1


class _FirstRecord:
    """ClusterStats.upstream_rq_time until its first sample: records it into the histogram it
    then creates (and which replaces this object)."""

    __slots__ = ("stats",)

    def __init__(self, stats: ClusterStats) -> None:
        self.stats = stats

    def record(self, v: float) -> None:
        self.stats.make_upstream_rq_time().record(v)
