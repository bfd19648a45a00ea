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


_TB = {"max_tokens": 1, "fill_interval": "1s"}


@pytest.mark.parametrize("extra,where", [
    ({"descriptors": [{"entries": [{"key": "k", "value": "v"}], "token_bucket": _TB}]},
     "token_bucket: not supported yet (descriptors without the filter's token_bucket)"),
    ({"token_bucket": _TB, "descriptors": [{"entries": [{"key": "k"}], "token_bucket": _TB}]},
     "descriptors[0].entries[0].value: not supported yet"),
    ({"token_bucket": _TB, "descriptors": [{"entries": [{"key": "k", "value": "v"}], "token_bucket": _TB}] * 2},
     "descriptors[1]: duplicate descriptor in the local rate descriptor: k=v"),
    ({"token_bucket": _TB, "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]},
     "descriptors[0].token_bucket"),
    ({"token_bucket": _TB, "rate_limits": [{"actions": [{"remote_address": {}}]}]}, "rate_limits: not supported yet"),
    ({"token_bucket": _TB, "max_dynamic_descriptors": 3}, "max_dynamic_descriptors: not supported yet"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}}, "fill_interval: must be at least 50ms"),
    ({"stage": 11}, "stage"),
])
def test_what_it_refuses_is_named(extra, where):
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(_config(1, **extra))


def test_descriptor_buckets_are_shared_by_the_workers(upstream):
    """Route rate_limits make each request's descriptor (the builder the global ratelimit filter
    uses); a client's descriptor bucket of 3 lets exactly 3 of its requests through, whichever of
    the two workers takes them, while the filter's own bucket still counts everyone's."""
    cfg = _config(upstream.port, token_bucket={"max_tokens": 100, "fill_interval": "60s"},
                  descriptors=[{"entries": [{"key": "client", "value": "alice"}],
                                "token_bucket": {"max_tokens": 3, "fill_interval": "60s"}}])
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"][0]["route"]["rate_limits"] = [
        {"actions": [{"request_headers": {"header_name": "x-client", "descriptor_key": "client"}}]}]
    p = ProxyUnderTest(cfg, concurrency=2)
    try:
        def one(client: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", "/d", headers={"x-client": client})
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status
        alice = [one("alice") for _ in range(8)]
        bob = [one("bob") for _ in range(8)]
        assert sorted(alice) == [200] * 3 + [429] * 5 and alice[:3] == [200] * 3
        assert bob == [200] * 8
        c = p.counters()
        assert c["rl.http_local_rate_limit.rate_limited"] == 5 and c["rl.http_local_rate_limit.ok"] == 11
    finally:
        p.stop()
