"""The bootstrap's stats_config in the running proxy: a stats_matcher leaves stats out of every
admin page while the proxy serves as before (Envoy with `reject_all` shows an empty /stats and
stays LIVE), and the Prometheus page carries the configured tags."""

from __future__ import annotations

import urllib.request

from .harness import ProxyUnderTest, front_proxy_config, static_cluster


def _config(upstream_port: int, stats_config: dict) -> dict:
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", upstream_port)])
    cfg["stats_config"] = stats_config
    return cfg


def test_reject_all_empties_the_stats_pages_and_the_proxy_serves(upstream):
    p = ProxyUnderTest(_config(upstream.port, {"stats_matcher": {"reject_all": True}}))
    try:
        for _ in range(3):
            assert urllib.request.urlopen(p.url("/x"), timeout=5).status == 200
        assert p.admin("/ready") == (200, "LIVE\n")
        for page in ("/stats", "/stats/prometheus"):
            assert p.admin(page) == (200, ""), page
        assert p.admin("/stats?format=json") == (200, '{"stats":[]}')
    finally:
        p.stop()


def test_inclusion_list_and_tags_on_the_prometheus_page(upstream):
    p = ProxyUnderTest(_config(upstream.port, {
        "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": "cluster.c1.upstream_rq"}]}},
        "stats_tags": [{"tag_name": "zone", "fixed_value": "z1"}]}))
    try:
        urllib.request.urlopen(p.url("/x"), timeout=5).read()
        names = [line.split(":")[0] for line in p.admin("/stats")[1].splitlines()]
        assert names and all(n.startswith("cluster.c1.upstream_rq") for n in names), names
        assert "cluster.c1.upstream_rq_200" in names  # flat names on /stats
        prom = p.admin("/stats/prometheus")[1]
        assert 'envoy_cluster_upstream_rq{envoy_response_code="200",zone="z1",envoy_cluster_name="c1"} 1\n' in prom
        assert "envoy_http_" not in prom and "envoy_server_" not in prom
    finally:
        p.stop()
