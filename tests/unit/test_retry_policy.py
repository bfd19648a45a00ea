"""retry_policy parsing (route and virtual host), Envoy's retry_on words and back-off math."""

from __future__ import annotations

import pytest

from proxy.config.reader import ConfigError
from proxy.router import parse_route_configuration
from proxy.router.retry_policy import (RETRY_ON_5XX, RETRY_ON_CONNECT_FAILURE,
                                       RETRY_ON_GRPC_UNAVAILABLE, RETRY_ON_RESET,
                                       RETRY_ON_RESET_BEFORE_REQUEST, RetryPolicy,
                                       exponential_backoff_ms, lower_bound_backoff_ms,
                                       parse_retry_grpc_on, parse_retry_on, parse_retry_policy,
                                       reset_interval_ms)
from proxy.http.headers import Headers


def rc(route_action_extra=None, vhost_extra=None, routes=None):
    action = {"cluster": "c"}
    action.update(route_action_extra or {})
    vh = {"name": "vh", "domains": ["*"],
          "routes": routes or [{"match": {"prefix": "/"}, "route": action}]}
    vh.update(vhost_extra or {})
    return parse_route_configuration({"virtual_hosts": [vh]}, "rc")


def error(raw, path="p") -> str:
    with pytest.raises(ConfigError) as e:
        parse_retry_policy(raw, path)
    return str(e.value)


def test_defaults_are_envoys():
    p = parse_retry_policy({"retry_on": "5xx"}, "p")
    assert p.num_retries == 1
    assert (p.base_interval_ms, p.max_interval_ms) == (25, 250)
    assert p.per_try_timeout == 0.0 and p.host_selection_retry_max_attempts == 1
    assert p.retry_on == RETRY_ON_5XX and not p.previous_hosts


def test_retry_on_words_and_grpc_words_share_the_field():
    p = parse_retry_policy({"retry_on": "reset, connect-failure,unavailable,,bogus"}, "p")
    assert p.retry_on == RETRY_ON_RESET | RETRY_ON_CONNECT_FAILURE | RETRY_ON_GRPC_UNAVAILABLE
    assert parse_retry_on("reset-before-request") == RETRY_ON_RESET_BEFORE_REQUEST
    assert parse_retry_on("unavailable") == 0 and parse_retry_grpc_on("5xx") == 0


def test_back_off_fields():
    p = parse_retry_policy({"retry_back_off": {"base_interval": "0.1s"}}, "p")
    assert (p.base_interval_ms, p.max_interval_ms) == (100, 1000)
    p = parse_retry_policy({"retry_back_off": {"base_interval": "0.0001s", "max_interval": "2s"}}, "p")
    assert (p.base_interval_ms, p.max_interval_ms) == (1, 2000)  # at least 1 ms, as Envoy


@pytest.mark.parametrize("raw, where, words", [
    ({"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}},
     "p.retry_back_off.max_interval", "greater than or equal to the base_interval"),
    ({"retry_back_off": {"max_interval": "1s"}}, "p.retry_back_off.base_interval", "required"),
    ({"retry_on": "http3-post-connect-failure"}, "p.retry_on", "not supported yet"),
    ({"retry_priority": {"name": "x"}}, "p.retry_priority", "not supported yet"),
    ({"retry_options_predicates": [{"name": "x"}]}, "p.retry_options_predicates", "not supported yet"),
    ({"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]},
     "p.retry_host_predicate[0]", "only envoy.retry_host_predicates.previous_hosts"),
    ({"rate_limited_retry_back_off": {"reset_headers": []}},
     "p.rate_limited_retry_back_off.reset_headers", ""),
    ({"num_retries": -1}, "p.num_retries", ""),
    ({"retriable_status_codes": ["x"]}, "p.retriable_status_codes[0]", ""),
    ({"retri_on": "5xx"}, "p", "retry_on"),
])
def test_errors_name_the_field(raw, where, words):
    msg = error(raw)
    assert msg.startswith(where), msg
    assert words in msg


def test_previous_hosts_and_rate_limited_back_off():
    p = parse_retry_policy({
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
        "host_selection_retry_max_attempts": 5,
        "rate_limited_retry_back_off": {"reset_headers": [
            {"name": "Retry-After"}, {"name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP"}]},
    }, "p")
    assert p.previous_hosts and p.host_selection_retry_max_attempts == 5
    assert p.reset_headers == ((b"retry-after", "SECONDS"), (b"x-ratelimit-reset", "UNIX_TIMESTAMP"))
    assert p.reset_max_interval_ms == 300_000


def test_route_policy_replaces_the_virtual_hosts_whole():
    routes = [{"match": {"prefix": "/a"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "reset"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]
    vh = rc(routes=routes, vhost_extra={"retry_policy": {"retry_on": "5xx", "num_retries": 4},
                                        "include_attempt_count_in_response": True}).virtual_hosts[0]
    own, inherited = vh.routes[0].action, vh.routes[1].action
    assert own.retry_policy.retry_on == RETRY_ON_RESET and own.retry_policy.num_retries == 1
    assert inherited.retry_policy.num_retries == 4
    assert own.attempt_count_in_response and inherited.attempt_count_in_response
    assert vh.routes[0].prepare and vh.routes[1].prepare


def test_a_plain_route_takes_the_fast_path():
    route = rc().virtual_hosts[0].routes[0]
    assert not route.prepare and route.action.retry_policy is None
    assert route.action.timeout_ms == b"15000"


def test_per_try_timeout_sets_the_expected_timeout_when_shorter():
    a = rc({"retry_policy": {"retry_on": "5xx", "per_try_timeout": "0.25s"}}).virtual_hosts[0].routes[0].action
    assert a.timeout_ms == b"250" and a.per_try_timeout == 0.25
    a = rc({"timeout": "1s", "retry_policy": {"per_try_timeout": "2s"}}).virtual_hosts[0].routes[0].action
    assert a.timeout_ms == b"1000" and a.per_try_timeout == 0.0  # not shorter: ignored
    a = rc({"timeout": "0s", "retry_policy": {"per_try_timeout": "2s"}}).virtual_hosts[0].routes[0].action
    assert a.timeout_ms == b"2000" and a.per_try_timeout == 2.0
    a = rc({"timeout": "0s"}).virtual_hosts[0].routes[0].action
    assert a.timeout_ms == b""


def test_route_headers_that_steer_retries_are_noticed():
    route = rc(routes=[{"match": {"prefix": "/"}, "route": {"cluster": "c"},
                        "request_headers_to_add": [{"header": {"key": "x-envoy-retry-on",
                                                               "value": "5xx"}}]}]).virtual_hosts[0].routes[0]
    assert route.retry_headers_added and route.prepare


def test_exponential_back_off_is_fully_jittered_and_capped():
    nxt, seen = 25, []
    for rand in (10**9 + 7, 3, 99999, 12345678, 5):
        delay, nxt2 = exponential_backoff_ms(nxt, 250, rand)
        assert 0 <= delay < nxt and delay <= 250
        seen.append(nxt)
        nxt = nxt2
    assert seen == [25, 50, 100, 200, 250]


def test_lower_bound_back_off():
    assert all(1000 <= lower_bound_backoff_ms(1000, r) < 1500 for r in (0, 1, 499, 12345))


def test_reset_interval_from_headers():
    p = RetryPolicy(reset_headers=((b"retry-after", "SECONDS"),), reset_max_interval_ms=5000)
    now = 1_800_000_000.5
    assert reset_interval_ms(p, Headers([(b"retry-after", b"2")]), now) == 2000
    assert reset_interval_ms(p, Headers([(b"retry-after", b"10")]), now) is None  # over max_interval
    assert reset_interval_ms(p, Headers([(b"retry-after", b"soon")]), now) is None
    assert reset_interval_ms(p, Headers(), now) is None
    ts = RetryPolicy(reset_headers=((b"x-ratelimit-reset", "UNIX_TIMESTAMP"),))
    assert reset_interval_ms(ts, Headers([(b"x-ratelimit-reset", b"1800000003")]), now) == 3000
    assert reset_interval_ms(ts, Headers([(b"x-ratelimit-reset", b"1799999999")]), now) is None
