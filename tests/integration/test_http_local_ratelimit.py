"""The HTTP local rate limit filter through the running proxy: one bucket across workers, a
bucket per connection, the refill, and what it refuses. Its agreement with real Envoy
(statuses, headers, stats) is tests/differential/cases/filter_http_local_ratelimit.yaml."""

from __future__ import annotations

import http.client
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "k"}


def _config(port: int, **rl) -> dict:
    flt = {"@type": URL, "stat_prefix": "rl", "filter_enabled": ALWAYS, "filter_enforced": ALWAYS, **rl}
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", port)],
                              http_filters=[{"name": "envoy.filters.http.local_ratelimit", "typed_config": flt},
                                            ROUTER])


def _statuses(port: int, n: int, keep_alive: bool = True) -> list[int]:
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(n):
        if not keep_alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/x")
        r = conn.getresponse()
        r.read()
        out.append(r.status)
        if not keep_alive:
            conn.close()
    conn.close()
    return out


def test_one_bucket_for_every_worker_and_its_refill(upstream):
    p = ProxyUnderTest(_config(upstream.port, token_bucket={
        "max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "1s"}), concurrency=2)
    try:
        got = _statuses(p.port, 6, keep_alive=False)  # new connections: both workers take part
        assert sorted(got) == [200, 200, 200, 429, 429, 429]
        time.sleep(1.1)
        assert _statuses(p.port, 1) == [200]
        c = p.counters()
        assert (c["rl.http_local_rate_limit.ok"], c["rl.http_local_rate_limit.rate_limited"]) == (4, 3)
    finally:
        p.stop()


def test_a_bucket_per_downstream_connection(upstream):
    p = ProxyUnderTest(_config(upstream.port, local_rate_limit_per_downstream_connection=True,
                               token_bucket={"max_tokens": 2, "fill_interval": "60s"}))
    try:
        assert _statuses(p.port, 3) == [200, 200, 429]
        assert _statuses(p.port, 3) == [200, 200, 429]  # another connection, another bucket
    finally:
        p.stop()


def test_a_grpc_request_limited_gets_resource_exhausted(upstream):
    p = ProxyUnderTest(_config(upstream.port, rate_limited_as_resource_exhausted=True,
                               token_bucket={"max_tokens": 1, "fill_interval": "60s"}))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        for expected in (None, "8"):
            conn.request("POST", "/svc/Method", body=b"\0\0\0\0\0",
                         headers={"content-type": "application/grpc", "te": "trailers"})
            r = conn.getresponse()
            r.read()
            assert r.getheader("grpc-status") == expected
        conn.close()
    finally:
        p.stop()


@pytest.mark.parametrize("extra,where", [
    ({"descriptors": [{"entries": [{"key": "k", "value": "v"}],
                       "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]}, "descriptors: not supported yet"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}}, "fill_interval: must be at least 50ms"),
    ({"stage": 1}, "stage: not supported yet"),
])
def test_what_it_refuses_is_named(extra, where):
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(_config(1, **extra))
