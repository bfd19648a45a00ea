"""Hedged attempts: the extra upstream requests of Envoy's hedge_on_per_try_timeout.

With hedging (the route's `hedge_policy.hedge_on_per_try_timeout`, or an internal request's
`x-envoy-hedge-on-per-try-timeout: true`), an attempt whose per-try timeout fires keeps
running, and the retry the policy allows starts beside it (Router::Filter::onSoftPerTryTimeout).
The router (router_retry.RetryingRouter) holds its first attempt itself; every attempt started
while another is still out is a `HedgeAttempt`: the pool's and the upstream stream's callbacks
for that one exchange. Until a response is chosen it reports to the router's `_hedge_*`
methods; the attempt whose response wins is adopted by the router (its stream, host and
request slot become the router's), and from then on it passes every callback straight on.

Each attempt holds its own max_requests slot and `upstream_rq_active`, and has its own per-try
timeout (started once its request is written), which hedges again.

Thread affinity: the router's worker. Must not: block, or outlive its router (the router
abandons every attempt it still has when it ends).
"""

from __future__ import annotations

import time

__all__ = ["HedgeAttempt"]


class HedgeAttempt:
    """One hedged upstream request of `router` to `host` through `pool` (its request slot
    already taken)."""

    __slots__ = ("router", "stream", "cluster", "host", "pool", "pool_handle", "upstream",
                 "holds_slot", "per_try_timer", "adopted", "start", "timeout_recorded")

    def __init__(self, router, cluster, host, pool) -> None:
        self.router = router
        self.stream = router.stream   # (a mixed pool picks the protocol by the request's)
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.pool_handle = None
        self.upstream = None
        self.holds_slot = True
        self.per_try_timer = None
        self.adopted = False
        self.start = 0.0
        self.timeout_recorded = False   # its soft per-try timeout told the outlier detector

    # -- pool callbacks -------------------------------------------------------------------------
    def on_pool_ready(self, upstream) -> None:
        self.pool_handle = None
        router = self.router
        if router.done or self.adopted:
            upstream.release(True)
            return
        self.upstream = upstream
        self.cluster.stats.upstream_rq_total.value += 1
        self.start = time.monotonic()
        stream = router.stream
        body = router.body or ()
        # The request ended before any per-try timer ran, so it is all here to replay.
        end_now = not body and router.trailers is None
        upstream.send_headers(stream.head, end_now, False)
        for chunk in body:
            upstream.send_data(chunk)
        if not end_now:
            upstream.end(router.trailers)
        per_try = router.per_try_timeout
        if per_try:
            self.per_try_timer = router.ctx.worker.dispatcher.call_later(per_try, self._on_per_try_timeout)

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.pool_handle = None
        self._end()
        self.router._hedge_failed(self, reason, flag, transport_failure, pool_failure=True)

    # -- upstream stream callbacks ----------------------------------------------------------------
    def on_upstream_headers(self, ev, body: bytes | None = None) -> None:
        if self.adopted:
            self.router.on_upstream_headers(ev, body)
        else:
            self.router._hedge_headers(self, ev, body)

    def on_upstream_data(self, data: bytes) -> None:
        if self.adopted:
            self.router.on_upstream_data(data)

    def on_upstream_complete(self, trailers) -> None:
        if self.adopted:
            self.router.on_upstream_complete(trailers)

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        if self.adopted:
            self.router.on_upstream_reset(reason, flag, status, reused, transport_failure)
            return
        self.upstream = None
        self._end()
        self.router._hedge_failed(self, reason, flag, transport_failure, status=status)

    def on_upstream_watermark(self, above: bool) -> None:
        if self.adopted:
            self.router.on_upstream_watermark(above)

    # -- the router's ---------------------------------------------------------------------------
    def _on_per_try_timeout(self) -> None:
        self.per_try_timer = None
        if not self.adopted and not self.router.done:
            self.router._hedge_per_try_timeout(self)

    def cancel_timer(self) -> None:
        if self.per_try_timer is not None:
            self.per_try_timer.disable()
            self.per_try_timer = None

    def _end(self) -> None:
        """The exchange is over (its stream gone or given back): its timer and slot go."""
        self.cancel_timer()
        if self.holds_slot:
            self.holds_slot = False
            self.pool.limits.release_request()
            self.cluster.stats.upstream_rq_active.value -= 1

    def finish(self, reusable: bool) -> None:
        """A response the router will not use, complete or not: the stream is given back."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.release(reusable)
        self._end()

    def abandon(self) -> None:
        """Reset it (another attempt won, or the request ended): no callback follows."""
        if self.pool_handle is not None:
            self.pool_handle.cancel()
            self.pool_handle = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.reset()
        self._end()

    def awaiting_headers(self) -> bool:
        return self.upstream is not None or self.pool_handle is not None
