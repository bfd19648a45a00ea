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

`Hedging` is the router's side (a base of RetryingRouter: it uses the retry state's
`_should_retry`, `_would_retry_headers`, `_maybe_retry_reset`...).

Thread affinity: the router's worker. Must not: block, or outlive its router (the router
abandons every attempt it still has when it ends).
"""

from __future__ import annotations

import time

from ..router.retry_policy import (BACKOFF, CONNECT_FAILURE, LIMIT, NO_RETRY, OTHER, OVERFLOW,
                                   OVERFLOWED, REFUSED, YES)
from .headers import Headers

__all__ = ["HedgeAttempt", "Hedging"]


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


class Hedging:
    """RetryingRouter's hedging: its `hedges` (the HedgeAttempts out beside its own attempt)
    and what it does on their events (see the module docstring)."""

    timeout_recorded = False   # the first attempt's soft per-try timeout told the outlier detector

    def _hedge(self) -> None:
        """Envoy's onSoftPerTryTimeout: the attempt that timed out keeps running; another
        starts after the back-off if the policy allows one more retry (any retry_on: a hedge
        does not look at the answer). Not counted as a per-try timeout."""
        if self.response_started or not self.retry_on:
            return
        status = self._should_retry(BACKOFF)
        if status is YES:
            self.timeout_retry = True
        elif status is LIMIT:
            self.stream.set_response_flag("URX")
        elif status is OVERFLOW:
            self.stream.set_response_flag("UO")

    def _others_out(self) -> bool:
        """Another attempt may still answer: a hedge awaiting its response, or a retry armed."""
        return bool(self.hedges) or self.retry_timer is not None

    def _reset_hedges(self) -> None:
        hedges = self.hedges
        if hedges:
            self.hedges = []
            for attempt in hedges:
                attempt.abandon()

    def _hedge_per_try_timeout(self, attempt: HedgeAttempt) -> None:
        attempt.timeout_recorded = True
        od = attempt.host.outlier
        if od is not None:
            od.put_timeout(self.ctx.worker.index)
        self._hedge()

    def _hedge_headers(self, attempt: HedgeAttempt, ev, body: bytes | None) -> None:
        """A hedged attempt's response: retried, dropped while others are out, or the one."""
        if self.done or self.response_started:
            attempt.abandon()
            self._drop(attempt)
            return
        if self.retry_on:
            headers = Headers.adopt(ev.headers)
            status = self._should_retry(self._would_retry_headers(ev.status, headers))
            if status is YES:
                attempt.pool.rq_error += 1
                self._charge_retried(ev.status)
                attempt.finish(body is not None)
                self._drop(attempt)
                return
            if status is LIMIT:
                self.stream.set_response_flag("URX")
            elif status is OVERFLOW:
                self.stream.set_response_flag("UO")
            if status is not NO_RETRY and (self.upstream is not None or self.pool_handle is not None
                                           or len(self.hedges) > 1 or self.retry_timer is not None):
                attempt.pool.rq_error += 1
                attempt.abandon()
                self._drop(attempt)
                return
            self._stop_retrying()
        self._adopt(attempt)
        self.on_upstream_headers(ev, body)

    def _hedge_failed(self, attempt: HedgeAttempt, reason: str, flag: str, transport_failure: str,
                      status: int = 503, pool_failure: bool = False) -> None:
        """A hedged attempt's connect failure or reset: retried if the policy says so; else the
        request fails only when nothing else is out."""
        self._drop(attempt)
        if self.done or self.response_started:
            return
        if not pool_failure:
            self.cluster.stats.upstream_rq_rx_reset.value += 1
        od = attempt.host.outlier
        if od is not None and flag != "UO":
            od.put_connect_failed(self.ctx.worker.index)
        kind = (OVERFLOWED if flag == "UO" else CONNECT_FAILURE if pool_failure or flag == "UF"
                else REFUSED if reason == "remote refused stream reset" else OTHER)
        if self._maybe_retry_reset(kind):
            return
        if self.upstream is not None or self.pool_handle is not None or self._others_out():
            return
        self.host, self.pool, self.cluster = attempt.host, attempt.pool, attempt.cluster
        self._charge_local(status)
        self._reset_reply(status, reason, flag, transport_failure)

    def _drop(self, attempt: HedgeAttempt) -> None:
        if attempt in self.hedges:
            self.hedges.remove(attempt)

    def _adopt(self, attempt: HedgeAttempt) -> None:
        """`attempt`'s response is the one: the other attempts are reset and it becomes the
        router's own (its stream, host and request slot)."""
        self._abandon_attempt()   # the first attempt, if still out
        self._drop(attempt)
        self._reset_hedges()
        if self.retry_timer is not None:
            self.retry_timer.disable()
            self.retry_timer = None
        attempt.cancel_timer()
        attempt.adopted = True
        self.cluster, self.host, self.pool = attempt.cluster, attempt.host, attempt.pool
        self.upstream = attempt.upstream
        self.holds_request_slot = attempt.holds_slot
        attempt.holds_slot = False
        self.upstream_start = attempt.start
        self.stream.upstream_host = attempt.pool.host_str
