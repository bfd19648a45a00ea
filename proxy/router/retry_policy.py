"""`envoy.config.route.v3.RetryPolicy` parsed into an immutable model, and Envoy's retry rules.

Job: validate a route's (or virtual host's) `retry_policy` through its declared tables and build
a frozen `RetryPolicy`; parse `retry_on` and `x-envoy-retry-on` / `x-envoy-retry-grpc-on`
values into Envoy's bit set (RetryStateImpl::parseRetryOn / parseRetryGrpcOn: unknown tokens
are ignored, as Envoy ignores them); the two back-off strategies Envoy uses (fully jittered
exponential, and the jittered lower bound taken from a rate-limit reset header).
The per-request state (attempts left, the armed retry, the hosts tried) is the router's
(proxy/http/router_retry.py): this module does no I/O and keeps no state.

Thread affinity: parse on the main thread; the result is immutable and shared by all workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, header_bytes

from .matchers import HeaderMatcher, parse_header_matcher

__all__ = ["RetryPolicy", "parse_retry_policy", "parse_hedge_policy", "parse_retry_on", "parse_retry_grpc_on",
           "RETRY_ON_5XX", "RETRY_ON_GATEWAY_ERROR", "RETRY_ON_CONNECT_FAILURE",
           "RETRY_ON_RETRIABLE_4XX", "RETRY_ON_REFUSED_STREAM", "RETRY_ON_RETRIABLE_STATUS_CODES",
           "RETRY_ON_RETRIABLE_HEADERS", "RETRY_ON_RESET", "RETRY_ON_RESET_BEFORE_REQUEST",
           "RETRY_ON_ENVOY_RATE_LIMITED", "RETRY_ON_GRPC", "GRPC_STATUS_BITS",
           "RETRY_REQUEST_HEADERS", "PREVIOUS_HOSTS", "exponential_backoff_ms",
           "lower_bound_backoff_ms", "reset_interval_ms"]

# Envoy's RetryPolicy::RETRY_ON_* bits (the values are ours; only the names are Envoy's).
RETRY_ON_5XX = 1 << 0
RETRY_ON_GATEWAY_ERROR = 1 << 1
RETRY_ON_CONNECT_FAILURE = 1 << 2
RETRY_ON_RETRIABLE_4XX = 1 << 3
RETRY_ON_REFUSED_STREAM = 1 << 4
RETRY_ON_RETRIABLE_STATUS_CODES = 1 << 5
RETRY_ON_RETRIABLE_HEADERS = 1 << 6
RETRY_ON_RESET = 1 << 7
RETRY_ON_RESET_BEFORE_REQUEST = 1 << 8
RETRY_ON_ENVOY_RATE_LIMITED = 1 << 9
RETRY_ON_HTTP3_POST_CONNECT_FAILURE = 1 << 10
RETRY_ON_GRPC_CANCELLED = 1 << 11
RETRY_ON_GRPC_DEADLINE_EXCEEDED = 1 << 12
RETRY_ON_GRPC_RESOURCE_EXHAUSTED = 1 << 13
RETRY_ON_GRPC_UNAVAILABLE = 1 << 14
RETRY_ON_GRPC_INTERNAL = 1 << 15
RETRY_ON_GRPC = (RETRY_ON_GRPC_CANCELLED | RETRY_ON_GRPC_DEADLINE_EXCEEDED
                 | RETRY_ON_GRPC_RESOURCE_EXHAUSTED | RETRY_ON_GRPC_UNAVAILABLE
                 | RETRY_ON_GRPC_INTERNAL)

_RETRY_ON = {
    "5xx": RETRY_ON_5XX, "gateway-error": RETRY_ON_GATEWAY_ERROR,
    "connect-failure": RETRY_ON_CONNECT_FAILURE, "envoy-ratelimited": RETRY_ON_ENVOY_RATE_LIMITED,
    "retriable-4xx": RETRY_ON_RETRIABLE_4XX, "refused-stream": RETRY_ON_REFUSED_STREAM,
    "retriable-status-codes": RETRY_ON_RETRIABLE_STATUS_CODES,
    "retriable-headers": RETRY_ON_RETRIABLE_HEADERS, "reset": RETRY_ON_RESET,
    "reset-before-request": RETRY_ON_RESET_BEFORE_REQUEST,
    "http3-post-connect-failure": RETRY_ON_HTTP3_POST_CONNECT_FAILURE,
}
_RETRY_GRPC_ON = {
    "cancelled": RETRY_ON_GRPC_CANCELLED, "deadline-exceeded": RETRY_ON_GRPC_DEADLINE_EXCEEDED,
    "resource-exhausted": RETRY_ON_GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RETRY_ON_GRPC_UNAVAILABLE, "internal": RETRY_ON_GRPC_INTERNAL,
}
# grpc-status value -> the bit that retries it (Canceled 1, DeadlineExceeded 4,
# ResourceExhausted 8, Internal 13, Unavailable 14).
GRPC_STATUS_BITS = {b"1": RETRY_ON_GRPC_CANCELLED, b"4": RETRY_ON_GRPC_DEADLINE_EXCEEDED,
                    b"8": RETRY_ON_GRPC_RESOURCE_EXHAUSTED, b"13": RETRY_ON_GRPC_INTERNAL,
                    b"14": RETRY_ON_GRPC_UNAVAILABLE}

# The request headers Envoy's RetryStateImpl::create consumes (removes before the request goes
# upstream) on every routed request; an external request's were removed by the HCM already.
RETRY_REQUEST_HEADERS = frozenset({
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-retriable-header-names",
    b"x-envoy-retriable-status-codes", b"x-envoy-upstream-rq-per-try-timeout-ms",
})

# Retry decisions (Envoy's RetryState::RetryDecision) and statuses (RetryStatus), and the reset
# kinds a decision looks at (Envoy's StreamResetReason, as far as it matters here): the
# router's retry state (proxy/http/router_retry.py, router_hedge.py) speaks in these.
NO, BACKOFF, IMMEDIATELY = 0, 1, 2
YES, NO_RETRY, LIMIT, OVERFLOW = "yes", "no", "limit", "overflow"
CONNECT_FAILURE, REFUSED, OVERFLOWED, OTHER = "connect", "refused", "overflow", "other"

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_HOSTS_TYPE = ("type.googleapis.com/"
                        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")


def _tokens(value: str) -> list[str]:
    # StringUtil::splitToken(value, ",", false, true): empty pieces dropped, each trimmed.
    return [t.strip() for t in value.split(",") if t.strip()]


def parse_retry_on(value: str) -> int:
    """retry_on / x-envoy-retry-on tokens as bits; unknown tokens count nothing (Envoy's)."""
    bits = 0
    for t in _tokens(value):
        bits |= _RETRY_ON.get(t, 0)
    return bits


def parse_retry_grpc_on(value: str) -> int:
    bits = 0
    for t in _tokens(value):
        bits |= _RETRY_GRPC_ON.get(t, 0)
    return bits


def retry_on_valid(value: str) -> bool:
    """Whether every x-envoy-retry-on token is a known condition (parseRetryOn's validity)."""
    return all(t in _RETRY_ON for t in _tokens(value))


def retry_grpc_on_valid(value: str) -> bool:
    return all(t in _RETRY_GRPC_ON for t in _tokens(value))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: int = 0
    num_retries: int = 1
    per_try_timeout: float = 0.0           # seconds; 0: none
    per_try_idle_timeout: float = 0.0
    base_interval_ms: int = 25             # retry_back_off (Envoy: runtime upstream.base_retry_backoff_ms)
    max_interval_ms: int = 250             # default 10 x base
    retriable_status_codes: tuple[int, ...] = ()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    retriable_request_headers: tuple[HeaderMatcher, ...] = ()
    previous_hosts: bool = False           # retry_host_predicate previous_hosts
    host_selection_retry_max_attempts: int = 1
    # rate_limited_retry_back_off: ((header name, "SECONDS" | "UNIX_TIMESTAMP"), ...) and its
    # max_interval (ms).
    reset_headers: tuple[tuple[bytes, str], ...] = ()
    reset_max_interval_ms: int = 300_000


# -- tables -------------------------------------------------------------------------------------

RETRY_POLICY = Message("envoy.config.route.v3.RetryPolicy", model=RetryPolicy, fields=(
    used("retry_on"),
    used("num_retries", 1),
    used("per_try_timeout"),
    used("per_try_idle_timeout"),
    refused("retry_priority", "priority levels are not built"),
    used("retry_host_predicate", attr="previous_hosts",
         why="only envoy.retry_host_predicates.previous_hosts"),
    refused("retry_options_predicates"),
    used("host_selection_retry_max_attempts", 1),
    used("retriable_status_codes"),
    used("retry_back_off", attr="", why="its own table"),
    used("rate_limited_retry_back_off", attr="", why="its own table"),
    used("retriable_headers"),
    used("retriable_request_headers"),
))
RETRY_BACK_OFF = Message("envoy.config.route.v3.RetryPolicy.RetryBackOff", fields=(
    used("base_interval", attr="base_interval_ms"),
    used("max_interval", attr="max_interval_ms"),
))
RATE_LIMITED_RETRY_BACK_OFF = Message("envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff",
                                      fields=(
    used("reset_headers"),
    used("max_interval", "300s", attr="reset_max_interval_ms"),
))
RESET_HEADER = Message("envoy.config.route.v3.RetryPolicy.ResetHeader", fields=(
    used("name", attr="reset_headers"),
    used("format", "SECONDS", attr="reset_headers"),
))
RETRY_HOST_PREDICATE = Message("envoy.config.core.v3.TypedExtensionConfig (retry_host_predicate)",
                               fields=(
    used("name", attr="previous_hosts"),
    used("typed_config", attr="previous_hosts"),
))


HEDGE_POLICY = Message("envoy.config.route.v3.HedgePolicy", fields=(
    refused("initial_requests", "Envoy 1.40 does not implement it either (only its default)",
            default=1, only_default=True),
    refused("additional_request_chance", "Envoy 1.40 does not implement it either (only its "
            "default)", only_default=True),
    used("hedge_on_per_try_timeout", False),
))


def parse_hedge_policy(raw: Any, path: str) -> bool:
    """`raw` (a HedgePolicy): whether a per-try timeout hedges (Envoy's router reads only
    hedge_on_per_try_timeout; initial_requests and additional_request_chance are
    not-implemented in Envoy, so only their defaults are accepted)."""
    f = HEDGE_POLICY.read(raw, path)
    n = f.int("initial_requests", 1, min=1, max=2**32 - 1)
    HEDGE_POLICY.require_default(f, "initial_requests", n)
    if f.has("additional_request_chance"):
        chance = f.value("additional_request_chance")
        if chance not in ({}, None) and (not isinstance(chance, dict)
                                         or chance.get("numerator", 0) != 0):
            raise ConfigError(f.at("additional_request_chance"), "not supported yet (Envoy 1.40 "
                              "does not implement it either; only a zero chance is accepted)")
    return f.bool("hedge_on_per_try_timeout", False)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def parse_retry_policy(raw: Any, path: str) -> RetryPolicy:
    """`raw` (a RetryPolicy) at JSON path `path`."""
    f = RETRY_POLICY.read(raw, path)
    retry_on_str = f.str("retry_on", "")
    retry_on = parse_retry_on(retry_on_str) | parse_retry_grpc_on(retry_on_str)
    if retry_on & RETRY_ON_HTTP3_POST_CONNECT_FAILURE:
        raise ConfigError(f.at("retry_on"), "not supported yet (http3-post-connect-failure: "
                          "there is no HTTP/3 upstream)")
    num_retries = f.int("num_retries", 1, min=0, max=2**32 - 1)
    per_try = f.duration("per_try_timeout", 0.0)
    per_try_idle = f.duration("per_try_idle_timeout", 0.0)
    base_ms, max_ms = 25, None
    if f.has("retry_back_off"):
        b = RETRY_BACK_OFF.read(f.value("retry_back_off"), f.at("retry_back_off"))
        base = b.duration("base_interval", required=True)
        if base <= 0:
            raise ConfigError(b.at("base_interval"), "must be greater than 0s")
        base_ms = max(1, int(base * 1000))  # Envoy: whole milliseconds, at least 1
        if b.has("max_interval"):
            mx = b.duration("max_interval")
            if mx <= 0:
                raise ConfigError(b.at("max_interval"), "must be greater than 0s")
            max_ms = max(1, int(mx * 1000))
            if max_ms < base_ms:
                raise ConfigError(b.at("max_interval"),
                                  "must be greater than or equal to the base_interval")
    if max_ms is None:
        max_ms = base_ms * 10
    reset_headers: list[tuple[bytes, str]] = []
    reset_max_ms = 300_000
    if f.has("rate_limited_retry_back_off"):
        r = RATE_LIMITED_RETRY_BACK_OFF.read(f.value("rate_limited_retry_back_off"),
                                             f.at("rate_limited_retry_back_off"))
        for item, hpath in r.list("reset_headers", required=True, min_items=1):
            h = RESET_HEADER.read(item, hpath)
            name = h.str("name", required=True)
            if not name:
                raise ConfigError(h.at("name"), "must not be empty")
            fmt = h.enum("format", ("SECONDS", "UNIX_TIMESTAMP"), "SECONDS")
            reset_headers.append((header_bytes(name.lower(), h.at("name")), fmt))
        if r.has("max_interval"):
            mx = r.duration("max_interval")
            if mx <= 0:
                raise ConfigError(r.at("max_interval"), "must be greater than 0s")
            reset_max_ms = _ms(mx)
    codes = []
    for c, cpath in f.list("retriable_status_codes"):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 2**32:
            raise ConfigError(cpath, f"expected an unsigned integer, got {c!r}")
        codes.append(c)
    previous_hosts = False
    for item, ppath in f.list("retry_host_predicate"):
        p = RETRY_HOST_PREDICATE.read(item, ppath)
        name = p.str("name", "")
        tc = p.raw_obj("typed_config")
        type_url = tc.get("@type") if tc is not None else None
        if name != PREVIOUS_HOSTS and type_url != _PREVIOUS_HOSTS_TYPE:
            raise ConfigError(ppath, f"not supported yet (retry host predicate {name or type_url!r}: "
                              f"only {PREVIOUS_HOSTS})")
        if type_url is not None and type_url != _PREVIOUS_HOSTS_TYPE:
            raise ConfigError(p.at("typed_config"), f"expected {_PREVIOUS_HOSTS_TYPE}, "
                              f"got {type_url!r}")
        if tc is not None and set(tc) - {"@type"}:
            raise ConfigError(p.at("typed_config"), "PreviousHostsPredicate has no fields")
        previous_hosts = True
    attempts = f.int("host_selection_retry_max_attempts", 1, min=0)
    return RetryPolicy(
        retry_on=retry_on, num_retries=num_retries, per_try_timeout=per_try or 0.0,
        per_try_idle_timeout=per_try_idle or 0.0, base_interval_ms=base_ms,
        max_interval_ms=max_ms, retriable_status_codes=tuple(codes),
        retriable_headers=tuple(parse_header_matcher(h, p) for h, p in f.list("retriable_headers")),
        retriable_request_headers=tuple(parse_header_matcher(h, p)
                                        for h, p in f.list("retriable_request_headers")),
        previous_hosts=previous_hosts,
        # Envoy: 0 (unset) keeps the default of 1.
        host_selection_retry_max_attempts=attempts or 1,
        reset_headers=tuple(reset_headers), reset_max_interval_ms=reset_max_ms,
    )


# -- back-off -----------------------------------------------------------------------------------

def exponential_backoff_ms(next_interval: int, max_interval: int, rand: int) -> tuple[int, int]:
    """Envoy's JitteredExponentialBackOffStrategy::nextBackOffMs: a delay drawn uniformly from
    [0, next_interval) (full jitter), capped at max_interval; returns (delay, the next interval:
    doubled, up to max_interval)."""
    following = max_interval if next_interval > (max_interval >> 1) else next_interval << 1
    return min(rand % next_interval, max_interval), following


def lower_bound_backoff_ms(min_interval: int, rand: int) -> int:
    """Envoy's JitteredLowerBoundBackOffStrategy: [min, 1.5 x min)."""
    half = min_interval >> 1
    return min_interval + (rand % half if half else 0)


def reset_interval_ms(policy: RetryPolicy, headers, now: float) -> int | None:
    """The first rate-limit reset header of the response that gives an interval within the
    policy's max_interval (Envoy's parseResetInterval), in ms; `now`: time.time() (a
    UNIX_TIMESTAMP header is a time, the interval what is left until it)."""
    for name, fmt in policy.reset_headers:
        value = headers.get(name)
        if value is None:
            continue
        try:
            n = int(value.strip())
        except ValueError:
            continue
        if n < 0:
            continue
        if fmt == "SECONDS":
            ms = n * 1000
        else:
            if n <= int(now):
                continue
            ms = (n - int(now)) * 1000
        if ms <= policy.reset_max_interval_ms:
            return ms
    return None
