"""The x-envoy-* request fields an internal request may steer Envoy's router with.

Job: Envoy 1.40's FilterUtility::finalTimeout and finalHedgingParams, and the timeout
alternate response (Router::Filter::decodeHeaders), as one pure function over the request's
headers: the route timeout from `x-envoy-upstream-rq-timeout-ms` (or, with the router's
`respect_expected_rq_timeout`, from `x-envoy-expected-rq-timeout-ms` an egress Envoy set), the
per-try timeout from `x-envoy-upstream-rq-per-try-timeout-ms`, hedging from
`x-envoy-hedge-on-per-try-timeout` ("true" / "false"; anything else leaves the route's), and a
204 instead of 504 on a timeout when `x-envoy-upstream-rq-timeout-alt-response` is present. The
fields read are removed, as Envoy removes them (the expected-timeout field and, when it decided,
the upstream timeout field stay: Envoy leaves them for the router to overwrite or forward). An
invalid number is ignored, as Envoy ignores it (absl::SimpleAtoi). The retry fields
(x-envoy-retry-on, -max-retries...) are the retry state's (proxy/http/router_retry.py).

Only an internal request carries these: the HCM removes them from every external one
(proxy/http/request_headers.py), and marks a request that kept one (`stream.steering`), so
the router reads them for those requests only.

Must not: do I/O or keep state. Thread affinity: any (pure functions over one request).
"""

from __future__ import annotations

from dataclasses import replace

__all__ = ["ROUTER_STEERING", "simple_atoi", "steer_action", "strict_value_ok"]

# The fields Envoy's router reads from an (internal) request.
ROUTER_STEERING = frozenset({
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-upstream-rq-timeout-alt-response", b"x-envoy-retriable-status-codes",
    b"x-envoy-retriable-header-names", b"x-envoy-hedge-on-per-try-timeout",
    b"x-envoy-expected-rq-timeout-ms",
})

_U64 = (1 << 64) - 1


def simple_atoi(value: bytes | None, limit: int = _U64) -> int | None:
    """absl::SimpleAtoi into an unsigned integer of at most `limit`: surrounding ASCII
    whitespace and one leading '+' allowed; None when `value` is not such a number."""
    if value is None:
        return None
    v = value.strip(b" \t\r\n\v\f")
    if v[:1] == b"+":
        v = v[1:]
    if not v or not v.isdigit():
        return None
    n = int(v)
    return n if n <= limit else None


def steer_action(action, headers, respect_expected: bool):
    """The route action in force for a request that kept steering fields: `action` with the
    timeouts, hedging and timeout status those fields ask for (the same object when they ask
    nothing); the fields read are removed from `headers` (a headers.Headers)."""
    timeout = action.timeout
    per_try = action.per_try_override
    hedge = action.hedge_on_per_try_timeout
    alt = False
    v = headers.get(b"x-envoy-hedge-on-per-try-timeout")
    if v is not None:
        if v == b"true":
            hedge = True
        elif v == b"false":
            hedge = False
        headers.remove(b"x-envoy-hedge-on-per-try-timeout")
    expected = headers.get(b"x-envoy-expected-rq-timeout-ms") if respect_expected else None
    if expected is not None:
        # An egress Envoy set it: the route timeout, and the field is kept (and rewritten).
        ms = simple_atoi(expected)
        if ms is not None:
            timeout = ms / 1000.0
    else:
        v = headers.get(b"x-envoy-upstream-rq-timeout-ms")
        if v is not None:
            ms = simple_atoi(v)
            if ms is not None:
                timeout = ms / 1000.0
            headers.remove(b"x-envoy-upstream-rq-timeout-ms")
    v = headers.get(b"x-envoy-upstream-rq-per-try-timeout-ms")
    if v is not None:
        ms = simple_atoi(v)
        if ms is not None:
            per_try = ms / 1000.0
        # (the retry state's create() removes it: router_retry.py)
    if headers.has(b"x-envoy-upstream-rq-timeout-alt-response"):
        alt = True
        headers.remove(b"x-envoy-upstream-rq-timeout-alt-response")
    if (timeout == action.timeout and per_try == action.per_try_override
            and hedge == action.hedge_on_per_try_timeout and not alt):
        return action
    return replace(action, timeout=timeout, per_try_override=per_try,
                   hedge_on_per_try_timeout=hedge, timeout_alt_response=alt)


def strict_value_ok(name: bytes, value: bytes) -> bool:
    """Envoy's StrictHeaderChecker::checkHeader for a field strict_check_headers names: the
    timeouts and x-envoy-max-retries must be unsigned integers; x-envoy-retry-on and
    x-envoy-retry-grpc-on must name known conditions only."""
    from .retry_policy import retry_grpc_on_valid, retry_on_valid
    if name == b"x-envoy-retry-on":
        return retry_on_valid(value.decode("latin-1"))
    if name == b"x-envoy-retry-grpc-on":
        return retry_grpc_on_valid(value.decode("latin-1"))
    return simple_atoi(value) is not None
