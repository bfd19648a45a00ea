"""Retries: the router for a request whose route has a retry policy (Envoy's RetryStateImpl and
the retry half of Router::Filter).

A RouterFilter becomes a `RetryingRouter` (its class is switched in place) when its route has a
`retry_policy` (its own or its virtual host's), when the route's request header mutations add
a header Envoy's retry state reads (x-envoy-retry-on, x-envoy-max-retries...: Envoy honours
those, as it honours them from an internal request), when an internal request kept one of the
x-envoy-* fields that steer the router (`stream.steering`: router/steering.py; an external
request's were removed by the HCM), or when the virtual host asks for x-envoy-attempt-count in
responses. Hedged attempts (hedge_on_per_try_timeout) are router_hedge.py's.
A request on any other route runs the plain RouterFilter: not one more test per request.

What it adds, as Envoy 1.40 does:
- the decision (`retry_on` bits from the policy and those headers): a response by its status,
  `x-envoy-ratelimited`, retriable status codes and headers, or grpc-status in its headers (a
  trailers-only gRPC answer; grpc-status in trailers comes after the response started, and is
  not retried, as in Envoy); a reset by its kind (connect failure, refused stream, overflow:
  never) and whether any attempt wrote a byte yet (reset-before-request);
- attempts: `num_retries` (or x-envoy-max-retries), each retry after a back-off (fully jittered
  exponential from base_interval, default 25 ms, up to max_interval, default 10x; or the
  jittered lower bound a rate-limit reset header gives: rate_limited_retry_back_off), a new host
  choice (retry_host_predicate previous_hosts with host_selection_retry_max_attempts), the
  request head and its body replayed from a buffer kept up to the connection's buffer limit
  (per_connection_buffer_limit_bytes; past it retries are abandoned: retry_or_shadow_abandoned,
  and a request waiting for its retry gets 507);
- per-try timeouts (`per_try_timeout` from the request's end or its connection, whichever is
  later; `per_try_idle_timeout` between response bytes), the global timeout over them all;
- circuit breakers: each attempt holds a max_requests slot, a scheduled retry a max_retries
  slot (upstream_rq_retry_overflow when none is free);
- stats upstream_rq_retry, _success, _overflow, _limit_exceeded, _backoff_exponential,
  _backoff_ratelimited, upstream_rq_per_try_timeout, upstream_rq_per_try_idle_timeout,
  retry_or_shadow_abandoned, retry.upstream_rq_<code> for a response retried; response flag URX
  when the limit ended the retries of a retriable failure, UO when max_retries did;
  x-envoy-attempt-count (request and/or response), x-envoy-is-timeout-retry, and the attempt
  count for %UPSTREAM_REQUEST_ATTEMPT_COUNT%.
A response that started downstream is never retried. An upgrade (WebSocket) request is not
retried (its body is a tunnel; declared in the README).

Thread affinity: one worker, as the router. Must not: block.
"""

from __future__ import annotations

import time

from ..router.retry_policy import (BACKOFF, CONNECT_FAILURE, IMMEDIATELY, LIMIT, NO, NO_RETRY,
                                   OTHER, OVERFLOW, OVERFLOWED, REFUSED, YES, GRPC_STATUS_BITS, RETRY_ON_5XX, RETRY_ON_CONNECT_FAILURE,
                                   RETRY_ON_ENVOY_RATE_LIMITED, RETRY_ON_GATEWAY_ERROR,
                                   RETRY_ON_GRPC, RETRY_ON_REFUSED_STREAM, RETRY_ON_RESET,
                                   RETRY_ON_RESET_BEFORE_REQUEST, RETRY_ON_RETRIABLE_4XX,
                                   RETRY_ON_RETRIABLE_HEADERS, RETRY_ON_RETRIABLE_STATUS_CODES,
                                   RETRY_REQUEST_HEADERS, RetryPolicy, exponential_backoff_ms,
                                   lower_bound_backoff_ms, parse_retry_grpc_on, parse_retry_on,
                                   reset_interval_ms)
from ..router.steering import simple_atoi
from .headers import Headers, ResponseHead
from .local_reply import reset_body
from .router_filter import _TAKEN, RouterFilter
from .router_hedge import HedgeAttempt, Hedging

__all__ = ["RetryingRouter", "become_retrying"]

_EMPTY_POLICY = RetryPolicy()


_RETRIED_PREFIX = b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "


def become_retrying(router: RouterFilter, route, action, head) -> None:
    """Make `router` (a RouterFilter deciding its request's headers) a RetryingRouter, with the
    request's retry state (Envoy's RetryStateImpl::create): the policy's retry_on, merged with
    the retry headers the route's mutations added, which are then consumed."""
    router.__class__ = RetryingRouter
    router._init_retry(route, action, head)


class RetryingRouter(Hedging, RouterFilter):
    """A RouterFilter that may try its request more than once (see the module docstring)."""

    # -- set-up -------------------------------------------------------------------------------
    def _init_retry(self, route, action, head) -> None:
        policy = action.retry_policy or _EMPTY_POLICY
        self.policy = policy
        stream = self.stream
        headers = head.headers
        retry_on = policy.retry_on
        retries = policy.num_retries
        self.status_codes = policy.retriable_status_codes
        self.retriable_headers = policy.retriable_headers
        from_headers = False
        # The retry fields the route's mutations added, or an internal request kept.
        read_headers = route.retry_headers_added or stream.steering
        if read_headers:
            v = headers.get(b"x-envoy-retry-on")
            if v is not None:
                retry_on |= parse_retry_on(v.decode("latin-1"))
                from_headers = True
            v = headers.get(b"x-envoy-retry-grpc-on")
            if v is not None:
                retry_on |= parse_retry_grpc_on(v.decode("latin-1"))
                from_headers = True
        if policy.retriable_request_headers and not any(
                m.matches(head) for m in policy.retriable_request_headers):
            retry_on = 0  # the route limits retries to requests with these headers
        if read_headers:
            v = headers.get(b"x-envoy-max-retries")
            n = simple_atoi(v) if retry_on and v is not None else None
            if n is not None:
                retries = n  # the header takes precedence
            v = headers.get(b"x-envoy-retriable-status-codes")
            if v is not None:
                codes = [simple_atoi(c, 0xFFFFFFFF) for c in v.split(b",")]
                self.status_codes = self.status_codes + tuple(c for c in codes if c is not None)
            v = headers.get(b"x-envoy-retriable-header-names")
            if v is not None:
                from ..router.matchers import HeaderMatcher
                names = [n.strip().decode("latin-1").lower() for n in v.split(b",") if n.strip()]
                self.retriable_headers = self.retriable_headers + tuple(
                    HeaderMatcher(name=n, present=True) for n in names)
            headers.remove_many(RETRY_REQUEST_HEADERS)  # consumed, as Envoy's create() does
        if stream.upgrade is not None:
            retry_on = 0  # a tunnel's bytes are not buffered for a replay (README)
        # Envoy makes a retry state when the policy or a header names conditions.
        self.retry_on = retry_on if (policy.retry_on or from_headers) else 0
        self.retries_remaining = retries
        self.backoff_next = policy.base_interval_ms
        self.attempt_count = 1
        stream.upstream_request_attempt_count = 1
        self.is_retry = False
        self.upstream_started = False   # some attempt wrote a byte (reset-before-request)
        self.retry_timer = None
        self.per_try_timer = None
        self.per_try_idle_timer = None
        self.per_try_started = False
        self.ratelimited_ms = 0
        self.attempted = set() if policy.previous_hosts else None
        if self.attempted is not None and self.host is not None:
            self.attempted.add(self.host.key)
        self.per_try_timeout = action.per_try_timeout
        # (Without retry_on a hedged per-try timeout starts nothing: the attempt goes on.)
        self.hedging = action.hedge_on_per_try_timeout
        self.hedges: list[HedgeAttempt] = []   # attempts started beside this one (hedging)
        self.per_try_idle_timeout = policy.per_try_idle_timeout
        # The request body kept for a replay (while retries are possible).
        self.body: list[bytes] | None = [] if self.retry_on else None
        self.body_bytes = 0
        limit = stream.buffer_limit()
        self.body_limit = limit if limit else 1 << 62
        self.response_attempt_header = action.attempt_count_in_response
        self.request_attempt_header = action.attempt_count_in_request
        self.timeout_retry_header = action.is_timeout_retry_header

    # -- decode path --------------------------------------------------------------------------------
    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.done:
            return _TAKEN
        body = self.body
        if body is not None and data:
            if self.body_bytes + len(data) > self.body_limit:
                # Envoy: the body no longer fits the buffer, so no retry will replay it.
                self.cluster.stats.retry_or_shadow_abandoned.value += 1
                self._stop_retrying()
                if self.upstream is None and self.pool_handle is None:
                    # The last attempt failed and its retry waits for its back-off: nothing
                    # will carry the request now.
                    self._cancel_timers()
                    self._release_request_slot()
                    self.stream.send_local_reply(
                        507, b"exceeded request buffer limit while retrying upstream", None,
                        "request_payload_exceeded_retry_buffer_limit",
                        self._attempt_header())
                    return _TAKEN
            else:
                body.append(data)
                self.body_bytes += len(data)
        return RouterFilter.decode_data(self, data, end_stream)

    def decode_end(self, trailers) -> None:
        if self.done or self.request_ended:
            return
        RouterFilter.decode_end(self, trailers)
        if self.upstream is not None and not self.per_try_started:
            self._start_per_try()

    # -- pool callbacks -------------------------------------------------------------------------------
    def on_pool_ready(self, upstream) -> None:
        if self.done:
            RouterFilter.on_pool_ready(self, upstream)
            return
        self.upstream_started = True  # the head goes out now
        RouterFilter.on_pool_ready(self, upstream)
        if self.upstream is upstream and self.request_ended and not self.per_try_started:
            self._start_per_try()

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.pool_handle = None
        if self.done:
            return
        if flag != "UO":  # Envoy logs the host a connect failed to (%UPSTREAM_HOST%)
            self.stream.upstream_host = self.pool.host_str
        self._outlier_connect_failed(flag)
        self._end_attempt()
        kind = OVERFLOWED if flag == "UO" else CONNECT_FAILURE
        if self._maybe_retry_reset(kind) or self._others_out():
            return
        self._charge_local(503)
        self._reset_reply(503, reason, flag, transport_failure)

    def _reset_reply(self, status: int, reason: str, flag: str, transport_failure: str = "") -> None:
        """RouterFilter's, with Envoy's "retried and the latest" wording after a retry and
        x-envoy-attempt-count when asked."""
        stream = self.stream
        self._cancel_timers()
        self._reset_hedges()
        detail = reason
        if transport_failure:
            stream.upstream_transport_failure_reason = transport_failure
            detail = f"{reason}|{transport_failure}"
        extra = self._attempt_header() or []
        if flag == "UO" and not self.config.suppress_envoy_headers:
            extra.append((b"x-envoy-overloaded", b"true"))
        body = (_RETRIED_PREFIX + reason.encode()) if self.is_retry else reset_body(reason)
        stream.send_local_reply(status, body, flag,
                                "upstream_reset_before_response_started{%s}" % detail.replace(" ", "_"),
                                extra or None)

    # -- upstream response ----------------------------------------------------------------------------
    def on_upstream_headers(self, ev, body: bytes | None = None) -> None:
        if self.done:
            return
        if self.per_try_idle_timer is not None:
            self.per_try_idle_timer.enable(self.per_try_idle_timeout)
        if self.retry_on:
            headers = Headers.adopt(ev.headers)
            decision = self._would_retry_headers(ev.status, headers)
            if decision and self.policy.reset_headers:
                ms = reset_interval_ms(self.policy, headers, time.time())
                if ms is not None and ms > 1:
                    self.ratelimited_ms = ms
            status = self._should_retry(decision)
            if status is YES:
                od = self.host.outlier
                if od is not None:   # (RouterFilter's reports the responses passed on)
                    self._outlier_response(od, ev.status, headers)
                if self.cluster.hc_report is not None and headers.has(b"x-envoy-immediate-health-check-fail"):
                    self.cluster.hc_report(self.host)   # (as the response it replaces would)
                self.pool.rq_error += 1
                self._charge_retried(ev.status)
                # The attempt is over: its connection is reused only if both the request and
                # the response are complete (Envoy resets the stream otherwise).
                self._finish_attempt(body is not None and self.request_ended)
                return
            if status is LIMIT:
                self.stream.set_response_flag("URX")
            elif status is OVERFLOW:
                self.stream.set_response_flag("UO")
            if status is not NO_RETRY and self._others_out():
                # Envoy: a bad answer while other attempts may still answer is dropped.
                self.pool.rq_error += 1
                self._abandon_attempt()
                return
            self._stop_retrying()
        if self.hedges or self.retry_timer is not None:
            self._reset_hedges()   # this answer wins (Envoy's resetOtherUpstreams)
            if self.retry_timer is not None:
                self.retry_timer.disable()
                self.retry_timer = None
        if self.per_try_timer is not None:
            self.per_try_timer.disable()  # Envoy ignores it once the response started
            self.per_try_timer = None
        if self.response_attempt_header:
            ev.headers.append((b"x-envoy-attempt-count", b"%d" % self.attempt_count))
        RouterFilter.on_upstream_headers(self, ev, body)

    def on_upstream_data(self, data: bytes) -> None:
        if self.per_try_idle_timer is not None and not self.done:
            self.per_try_idle_timer.enable(self.per_try_idle_timeout)
        RouterFilter.on_upstream_data(self, data)

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        if self.done:
            return
        if not self.response_started and not self.stream.upgraded:
            self.upstream = None
            self.cluster.stats.upstream_rq_rx_reset.value += 1
            self._outlier_connect_failed(flag)
            self._end_attempt()
            kind = (REFUSED if reason == "remote refused stream reset"
                    else CONNECT_FAILURE if flag == "UF" else OTHER)
            if self._maybe_retry_reset(kind) or self._others_out():
                return
            self._charge_local(status)
            self._reset_reply(status, reason, flag, transport_failure)
            return
        self._cancel_timers()
        RouterFilter.on_upstream_reset(self, reason, flag, status, reused, transport_failure)

    # -- decisions (RetryStateImpl) -----------------------------------------------------------------
    def _would_retry_headers(self, status: int, headers: Headers) -> int:
        retry_on = self.retry_on
        if headers.has(b"x-envoy-ratelimited"):
            return BACKOFF if retry_on & RETRY_ON_ENVOY_RATE_LIMITED else NO
        if retry_on & RETRY_ON_5XX and 500 <= status < 600:
            return BACKOFF
        if retry_on & RETRY_ON_GATEWAY_ERROR and 502 <= status <= 504:
            return BACKOFF
        if retry_on & RETRY_ON_RETRIABLE_4XX and status == 409:
            return BACKOFF
        if retry_on & RETRY_ON_RETRIABLE_STATUS_CODES and status in self.status_codes:
            if status != 425:
                return BACKOFF
            if not self.stream.head.headers.has(b"early-data"):
                return IMMEDIATELY  # Envoy: a request not received as early data, at once
        if retry_on & RETRY_ON_RETRIABLE_HEADERS and self.retriable_headers:
            view = ResponseHead(status, headers)
            if any(m.matches(view) for m in self.retriable_headers):
                return BACKOFF
        if retry_on & RETRY_ON_GRPC:
            grpc = headers.get(b"grpc-status")
            if grpc is not None and retry_on & GRPC_STATUS_BITS.get(grpc.strip(), 0):
                return BACKOFF
        return NO

    def _would_retry_reset(self, kind: str) -> int:
        retry_on = self.retry_on
        if kind is OVERFLOWED:
            return NO
        if kind is CONNECT_FAILURE and retry_on & RETRY_ON_CONNECT_FAILURE:
            return BACKOFF
        if retry_on & RETRY_ON_RESET_BEFORE_REQUEST and not self.upstream_started:
            return BACKOFF
        if retry_on & (RETRY_ON_RESET | RETRY_ON_5XX | RETRY_ON_GATEWAY_ERROR):
            return BACKOFF
        if retry_on & RETRY_ON_REFUSED_STREAM and kind is REFUSED:
            return BACKOFF
        return NO

    def _maybe_retry_reset(self, kind: str) -> bool:
        """Envoy's maybeRetryReset: retry a failed attempt if the policy says so."""
        if self.response_started or not self.retry_on:
            return False
        status = self._should_retry(self._would_retry_reset(kind))
        if status is YES:
            if self.pool is not None:
                self.pool.rq_error += 1
            return True
        if status is LIMIT:
            self.stream.set_response_flag("URX")
        elif status is OVERFLOW:
            self.stream.set_response_flag("UO")
        return False

    def _should_retry(self, decision: int) -> str:
        """Envoy's RetryStateImpl::shouldRetry: count, take a max_retries slot, arm the timer."""
        stats = self.cluster.stats
        if self.holds_retry_slot and not decision:
            stats.upstream_rq_retry_success.value += 1  # the retry before this one worked
        self._reset_retry()
        if not decision:
            self.ratelimited_ms = 0
            return NO_RETRY
        if self.retries_remaining <= 0:
            stats.upstream_rq_retry_limit_exceeded.value += 1
            self.ratelimited_ms = 0
            return LIMIT
        self.retries_remaining -= 1
        if not self.pool.limits.try_acquire_retry():
            stats.upstream_rq_retry_overflow.value += 1
            self.ratelimited_ms = 0
            return OVERFLOW
        self.holds_retry_slot = True
        stats.upstream_rq_retry.value += 1
        dispatcher = self.ctx.worker.dispatcher
        if decision == IMMEDIATELY:
            delay = 0.0
        elif self.ratelimited_ms:
            delay = lower_bound_backoff_ms(self.ratelimited_ms, self.ctx.worker.rand_bits()) / 1000.0
            self.ratelimited_ms = 0  # valid for the response that sent it only
            stats.upstream_rq_retry_backoff_ratelimited.value += 1
        else:
            ms, self.backoff_next = exponential_backoff_ms(
                self.backoff_next, self.policy.max_interval_ms, self.ctx.worker.rand_bits())
            delay = ms / 1000.0
            stats.upstream_rq_retry_backoff_exponential.value += 1
        self.retry_timer = dispatcher.call_later(delay, self._do_retry)
        return YES

    def _reset_retry(self) -> None:
        """Envoy's resetRetry: give back the max_retries slot of the retry that was armed."""
        if self.holds_retry_slot:
            self.holds_retry_slot = False
            self.pool.limits.release_retry()

    def _stop_retrying(self) -> None:
        """No more retries for this request (a final response, or the body outgrew the
        buffer): Envoy's retry_state_.reset()."""
        self._reset_retry()
        self.retry_on = 0
        self.body = None
        self.body_bytes = 0

    def _charge_retried(self, status: int) -> None:
        """Envoy's chargeBasicResponseStat under cluster.<name>.retry.: a retried response."""
        scope = self.cluster.stats.scope
        scope.counter("retry.upstream_rq_%d" % status).value += 1
        if 1 <= status // 100 <= 5:
            scope.counter("retry.upstream_rq_%dxx" % (status // 100)).value += 1
        scope.counter("retry.upstream_rq_completed").value += 1

    # -- attempts -------------------------------------------------------------------------------------
    def _start_per_try(self) -> None:
        self.per_try_started = True
        dispatcher = self.ctx.worker.dispatcher
        if self.per_try_timeout:
            self.per_try_timer = dispatcher.call_later(self.per_try_timeout, self._on_per_try_timeout)
        if self.per_try_idle_timeout:
            self.per_try_idle_timer = dispatcher.call_later(self.per_try_idle_timeout,
                                                            self._on_per_try_idle_timeout)

    def _cancel_per_try(self) -> None:
        self.per_try_started = False
        if self.per_try_timer is not None:
            self.per_try_timer.disable()
            self.per_try_timer = None
        if self.per_try_idle_timer is not None:
            self.per_try_idle_timer.disable()
            self.per_try_idle_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_per_try()
        if self.retry_timer is not None:
            self.retry_timer.disable()
            self.retry_timer = None

    def _release_request_slot(self) -> None:
        """Only the attempt's max_requests slot: a retry's max_retries slot has its own life
        (_reset_retry)."""
        if self.holds_request_slot:
            self.holds_request_slot = False
            self.pool.limits.release_request()
            self.cluster.stats.upstream_rq_active.value -= 1

    def _end_attempt(self) -> None:
        """The current attempt is over (its stream already gone or given back)."""
        self._cancel_per_try()
        self._release_request_slot()

    def _finish_attempt(self, reusable: bool) -> None:
        """Give the current attempt's stream back (a retried response) and end the attempt."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            if self.upstream_paused:
                self.upstream_paused = False
                up.read_disable(False)
            up.release(reusable)
        self._end_attempt()

    def _abandon_attempt(self) -> None:
        if self.pool_handle is not None:
            self.pool_handle.cancel()
            self.pool_handle = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.reset()
        self._end_attempt()

    def _finish_upstream(self, reusable: bool) -> None:
        self._cancel_per_try()
        RouterFilter._finish_upstream(self, reusable)

    def _abandon_upstream(self) -> None:
        self._cancel_timers()
        RouterFilter._abandon_upstream(self)

    def _do_retry(self) -> None:
        """The back-off is over: the next attempt (Envoy's doRetry)."""
        self.retry_timer = None
        if self.done:
            return
        stream = self.stream
        self.is_retry = True
        self.attempt_count += 1
        stream.upstream_request_attempt_count = self.attempt_count
        cluster = self.ctx.worker.clusters.get(self.cluster.name)
        host = None
        if cluster is not None:
            self.cluster = cluster
            host = self._choose_host(cluster)
        if host is None:
            self._reset_retry()
            self._stop_retrying()
            self._cancel_timers()
            if cluster is not None:
                cluster.stats.upstream_cx_none_healthy.value += 1
            stream.send_local_reply(503, b"no healthy upstream", "UH", "no_healthy_upstream",
                                    self._attempt_header())
            return
        action = self.route.action
        pool = cluster.pool_for(host, action.high_priority)
        hedge = self.upstream is not None or self.pool_handle is not None
        if not pool.limits.try_acquire_request():
            cluster.stats.upstream_rq_active_overflow.value += 1
            if hedge or self.hedges:
                return  # the attempts already out go on
            self.host, self.pool = host, pool
            self._reset_reply(503, "overflow", "UO")
            return
        if not hedge:
            self.host, self.pool = host, pool
            self.holds_request_slot = True
        head = stream.head
        headers = head.headers
        if self.request_attempt_header:
            headers.set(b"x-envoy-attempt-count", b"%d" % self.attempt_count)
        if self.timeout_retry_header:
            headers.set(b"x-envoy-is-timeout-retry", b"true" if self.timeout_retry else b"false")
        self.timeout_retry = False
        if action.auto_host_rewrite and host.hostname:
            head.set_authority(host.hostname.encode("idna"))
        if action.timeout_ms and not self.config.suppress_envoy_headers:
            headers.set(b"x-envoy-expected-rq-timeout-ms", self._expected_timeout_ms(action))
        cluster.stats.upstream_rq_active.value += 1
        if hedge:   # the attempt out keeps running: this one beside it (router_hedge.py)
            attempt = HedgeAttempt(self, cluster, host, pool)
            self.hedges.append(attempt)
            attempt.pool_handle = pool.new_stream(attempt)
            return
        if self.body:
            self.buffered = list(self.body)
            self.buffered_bytes = self.body_bytes
        self.pool_handle = pool.new_stream(self)

    def _choose_host(self, cluster):
        """The load balancer's pick; with previous_hosts, picked again (up to
        host_selection_retry_max_attempts more times) while it is a host already tried."""
        host = cluster.choose_host()
        attempted = self.attempted
        if attempted is not None:
            for _ in range(self.policy.host_selection_retry_max_attempts):
                if host is None or host.key not in attempted:
                    break
                host = cluster.choose_host()
            if host is not None:
                attempted.add(host.key)
        return host

    def _expected_timeout_ms(self, action) -> bytes:
        """Envoy's setTimeoutHeaders for a retry: the per-try or the route timeout, at most
        what is left of the route timeout since the request's end."""
        expected = int((action.timeout if self.hedging else (self.per_try_timeout or action.timeout))
                       * 1000)
        total = int(action.timeout * 1000)
        done = self.stream.request_complete_monotonic
        if total and done is not None:
            elapsed = int((time.monotonic() - done) * 1000)
            expected = 1 if elapsed >= total else min(expected, total - elapsed)
        return b"%d" % expected

    # -- timeouts -----------------------------------------------------------------------------------
    timeout_retry = False

    def _on_per_try_timeout(self) -> None:
        self.per_try_timer = None
        if self.done or self.response_started:
            return  # once the response started only the route timeout applies (Envoy)
        if self.hedging:
            self.timeout_recorded = True
            self._outlier_timeout()
            self._hedge()
            return
        self._per_try_expired(self.cluster.stats.upstream_rq_per_try_timeout,
                              "upstream_per_try_timeout")

    def _on_per_try_idle_timeout(self) -> None:
        self.per_try_idle_timer = None
        if self.done:
            return
        self._per_try_expired(self.cluster.stats.upstream_rq_per_try_idle_timeout,
                              "upstream_per_try_idle_timeout")

    def _per_try_expired(self, counter, details: str) -> None:
        counter.value += 1
        self._outlier_timeout()
        started = self.response_started
        self._abandon_attempt()
        if not started:
            self.timeout_retry = True
            if self._maybe_retry_reset(OTHER):
                return
            self.timeout_retry = False
            self._charge_local(self._timeout_reply()[0])
        self._timeout_abort(details)

    def _on_timeout(self) -> None:
        """The route's timeout: as RouterFilter's when an attempt is in flight; during a
        back-off nothing is in flight, so nothing is counted against an upstream (Envoy)."""
        self.timeout_timer = None
        if self.done:
            return
        if self.upstream is not None or self.pool_handle is not None or self.hedges:
            self.cluster.stats.upstream_rq_timeout.value += 1
            self.pool.rq_timeout += 1   # the host's (admin /clusters)
            if not self.timeout_recorded:
                self._outlier_timeout()
            for attempt in self.hedges:
                if not attempt.timeout_recorded and attempt.host.outlier is not None:
                    attempt.host.outlier.put_timeout(self.ctx.worker.index)
            if not self.response_started:
                self._charge_local(self._timeout_reply()[0])
            self._abandon_attempt()
        self._timeout_abort("response_timeout")

    def _timeout_abort(self, details: str) -> None:
        self._cancel_timers()
        self._reset_hedges()
        self._stop_retrying()
        self._release_request_slot()
        status, body = self._timeout_reply()
        self.stream.send_local_reply(status, body, "UT", details, self._attempt_header())

    def _attempt_header(self) -> list[tuple[bytes, bytes]] | None:
        if self.response_attempt_header:
            return [(b"x-envoy-attempt-count", b"%d" % self.attempt_count)]
        return None

    # -- teardown -----------------------------------------------------------------------------------
    def on_destroy(self) -> None:
        if not self.done:
            self._cancel_timers()
            self._reset_hedges()
        self._reset_retry()
        self.body = None
        RouterFilter.on_destroy(self)
