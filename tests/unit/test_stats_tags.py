"""Tag extraction (proxy/stats/tag_extraction.py), the bootstrap's stats_config and what the stats
registry does with it: Envoy's rules, checked name by name (the Prometheus page as a whole is
compared with real Envoy in tests/differential/test_stats_prometheus.py)."""

from __future__ import annotations

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError, all_errors
from proxy.config.stats_config import parse_stats_config
from proxy.stats import StatsRegistry
from proxy.stats.render import render_json, render_prometheus, render_text
from proxy.stats.tag_extraction import TagProducer, TagSpecifier


@pytest.mark.parametrize(("name", "extracted", "tags"), [
    # Regex extractors: group 1 cut, group 2 the value.
    ("cluster.backend.upstream_rq_503", "cluster.upstream_rq",
     (("envoy.response_code", "503"), ("envoy.cluster_name", "backend"))),
    ("listener.[__1]_8080.downstream_cx_total", "listener.downstream_cx_total",
     (("envoy.listener_address", "[__1]_8080"),)),
    # A listener named by stat_prefix is tagged too, but not the admin's.
    ("listener.my_listener.downstream_cx_total", "listener.downstream_cx_total",
     (("envoy.listener_address", "my_listener"),)),
    ("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", ()),
    ("server.worker_3.watchdog_miss", "server.worker_watchdog_miss", (("envoy.worker_id", "3"),)),
    ("http.hcm.rds.my.route.config.update_success", "http.rds.update_success",
     (("envoy.rds_route_config", "my.route.config"), ("envoy.http_conn_manager_prefix", "hcm"))),
    ("listener.127.0.0.1_80.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256", "listener.ssl.ciphers",
     (("envoy.ssl_cipher", "ECDHE-RSA-AES128-GCM-SHA256"), ("envoy.listener_address", "127.0.0.1_80"))),
    # Tokenized extractors: the value's token and the dot after it (before it, at the end).
    ("vhost.vh.vcluster.vc.upstream_rq_200", "vhost.vcluster.upstream_rq",
     (("envoy.response_code", "200"), ("envoy.virtual_cluster", "vc"), ("envoy.virtual_host", "vh"))),
    ("ingress.http_local_rate_limit.rate_limited", "http_local_rate_limit.rate_limited",
     (("envoy.local_http_ratelimit_prefix", "ingress"),)),
    ("tcp.db.downstream_cx_total", "tcp.downstream_cx_total", (("envoy.tcp_prefix", "db"),)),
    ("cluster.c.grpc.Svc.Method.success", "cluster.grpc.success",
     (("envoy.grpc_bridge_method", "Method"), ("envoy.grpc_bridge_service", "Svc"),
      ("envoy.cluster_name", "c"))),
    # `cluster.$.**` wants a token after the value: a two-token name is not tagged.
    ("cluster.backend", "cluster.backend", ()),
    # One tag name, several extractors: the first that matches wins (here the listener form).
    ("listener.127.0.0.1_80.http.hcm.downstream_rq_completed", "listener.http.downstream_rq_completed",
     (("envoy.http_conn_manager_prefix", "hcm"), ("envoy.listener_address", "127.0.0.1_80"))),
])
def test_default_extractors_as_envoy(name, extracted, tags):
    assert TagProducer().produce(name) == (extracted, tags)


def test_configured_tags_come_after_the_defaults_in_envoys_order():
    p = TagProducer([TagSpecifier("service", fixed_value="front"),
                     TagSpecifier("edge", regex=r"^http\.((ingress)_http\.)"),
                     TagSpecifier("whole", regex=r"^cluster\.\w+\.(upstream_cx_total)$")])
    # The fixed tag has no prefix token: after the prefix-less defaults, before the prefixed.
    assert p.produce("http.ingress_http.downstream_rq_2xx") == (
        "http.downstream_rq_xx", (("envoy.response_code_class", "2"), ("service", "front"),
                                  ("envoy.http_conn_manager_prefix", "ingress_http"), ("edge", "ingress")))
    # No group 2: the value is group 1, cut too.
    assert p.produce("cluster.c.upstream_cx_total") == (
        "cluster.", (("service", "front"), ("envoy.cluster_name", "c"), ("whole", "upstream_cx_total")))
    assert p.fixed_tags == (("service", "front"),)


def test_without_default_tags_only_the_configured_ones():
    p = TagProducer([TagSpecifier("envoy.cluster_name")], use_all_default_tags=False)
    assert p.produce("cluster.b.upstream_rq_200") == ("cluster.upstream_rq_200", (("envoy.cluster_name", "b"),))
    assert TagProducer([], use_all_default_tags=False).produce("cluster.b.x") == ("cluster.b.x", ())


def test_stats_config_is_parsed_and_refused_as_envoy():
    c = parse_stats_config({"stats_tags": [{"tag_name": "a", "regex": "^x\\.((.*?)\\.)"},
                                           {"tag_name": "b", "fixed_value": ""},
                                           {"tag_name": "envoy.worker_id"}],
                            "use_all_default_tags": False,
                            "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": "cluster."}]}},
                            "histogram_bucket_settings": [{"match": {"exact": "h"}, "buckets": [5, 0.5]}]},
                           "stats_config")
    assert c.stats_matcher.rejects("server.live") and not c.stats_matcher.rejects("cluster.x.y")
    assert c.buckets_for("h") == (0.5, 5.0) and c.buckets_for("g")[0] == 0.5 and len(c.buckets_for("g")) == 19

    def error(raw):
        with pytest.raises(ConfigError) as e:
            parse_stats_config(raw, "stats_config")
        return [str(x) for x in all_errors(e.value)]

    assert error({"stats_tags": [{"tag_name": "nope"}]}) == [
        "stats_config.stats_tags[0].tag_name: No regex specified for tag specifier and no default "
        "regex for name: 'nope'"]
    assert error({"stats_tags": [{"tag_name": "", "regex": "a(b)"}]}) == [
        "stats_config.stats_tags[0].tag_name: tag_name cannot be empty"]
    assert error({"stats_tags": [{"tag_name": "x", "regex": "(("}]})[0].startswith(
        "stats_config.stats_tags[0].regex: Invalid regex '((':")
    assert error({"stats_matcher": {}})[0].startswith("stats_config.stats_matcher")
    assert error({"stats_matcher": {"exclusion_list": {"patterns": []}}})[0].startswith(
        "stats_config.stats_matcher.exclusion_list.patterns")
    assert error({"histogram_bucket_settings": [{"match": {"prefix": "a"}, "buckets": [0]}]}) == [
        "stats_config.histogram_bucket_settings[0].buckets[0]: must be a number greater than 0, got 0"]
    assert error({"histogram_bucket_settings": [{"match": {"prefix": "a"}, "buckets": [1, 1]}]})[0].startswith(
        "stats_config.histogram_bucket_settings[0].buckets[1]: repeated bucket")
    assert error({"histogram_bucket_settings": [{"match": {"prefix": "a"}, "bins": 10}]}) == [
        "stats_config.histogram_bucket_settings[0].bins: not supported yet (a bin count for "
        "circllhist-based exports: ftproxy's histograms are buckets)"]
    assert error({"stats_tag": []}) == ['stats_config: unknown field "stats_tag" (did you mean "stats_tags"?)']


def test_bootstrap_carries_stats_config():
    b = parse_bootstrap({"stats_config": {"use_all_default_tags": False}})
    assert b.stats_config.use_all_default_tags is False
    assert parse_bootstrap({}).stats_config.use_all_default_tags is True


def _registry(raw):
    c = parse_stats_config(raw, "stats_config")
    return StatsRegistry(tag_producer=c.tag_producer(),
                         rejects=c.stats_matcher.rejects if c.stats_matcher else None,
                         buckets_for=c.buckets_for if c.histogram_bucket_settings else None)


def test_rejected_stats_work_but_are_never_reported():
    reg = _registry({"stats_matcher": {"exclusion_list": {"patterns": [{"suffix": "_bytes_total"},
                                                                       {"safe_regex": {"regex": "^server\\..*"}}]}}})
    s = reg.new_store("w0")
    rx = s.counter("cluster.c.upstream_cx_rx_bytes_total")
    assert rx is s.counter("cluster.c.upstream_cx_rx_bytes_total")  # one object per name
    rx.inc(10)
    s.gauge("server.live").set(1)
    s.counter("cluster.c.upstream_rq_total").inc()
    s.alias("server.alias_of_total", s.counter("cluster.c.upstream_rq_total"))  # not reported
    reg.set_carryover({"server.parent_counter": 3, "cluster.c.upstream_rq_total": 1})
    snap = reg.snapshot()
    assert dict(snap.counters) == {"cluster.c.upstream_rq_total": 2}
    assert dict(snap.gauges) == {}
    for text in (render_text(snap), render_json(snap), render_prometheus(snap)):
        assert "bytes_total" not in text and "server" not in text


def test_reject_all_and_inclusion_list():
    s = _registry({"stats_matcher": {"reject_all": True}}).new_store("w")
    s.counter("a.b").inc()
    assert s.tables() == ([], [], [])
    reg = _registry({"stats_matcher": {"inclusion_list": {"patterns": [{"prefix": "cluster."}]}}})
    s = reg.new_store("w")
    s.counter("cluster.a.x").inc()
    s.counter("http.h.x").inc()
    assert list(reg.snapshot().counters) == ["cluster.a.x"]


def test_histogram_buckets_per_name_and_prometheus_bounds():
    reg = _registry({"histogram_bucket_settings": [
        {"match": {"prefix": "cluster."}, "buckets": [0.1, 10, 2.5]}]})
    a, b = reg.new_store("a"), reg.new_store("b")
    a.histogram("cluster.c.upstream_rq_time").record(2)
    b.histogram("cluster.c.upstream_rq_time").record(20)
    b.histogram("http.h.downstream_rq_time").record(20)
    snap = reg.snapshot()
    assert snap.histograms["cluster.c.upstream_rq_time"].bounds == (0.1, 2.5, 10.0)
    assert len(snap.histograms["http.h.downstream_rq_time"].bounds) == 19
    text = render_prometheus(snap)
    # fmt's {:.32g}, as Envoy prints bounds and sums.
    assert ('envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",'
            'le="0.10000000000000000555111512312578"} 0\n') in text
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="2.5"} 1\n' in text
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="+Inf"} 2\n' in text
    assert 'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="c"} 22\n' in text


def test_prometheus_layout_as_envoy():
    reg = StatsRegistry()
    s = reg.new_store("w")
    s.counter("cluster_manager.cluster_added").inc()
    s.counter("cluster.z.upstream_rq_200").inc(2)
    s.counter("cluster.a.upstream_rq_200").inc()
    s.gauge("server.live").set(1)
    text = render_prometheus(reg.snapshot())
    assert text == (
        # Families in token order (`cluster.` before `cluster_manager.`), samples by stat name,
        # `{}` for a stat without tags.
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="a"} 1\n'
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="z"} 2\n'
        "# TYPE envoy_cluster_manager_cluster_added counter\n"
        "envoy_cluster_manager_cluster_added{} 1\n"
        "# TYPE envoy_server_live gauge\n"
        "envoy_server_live{} 1\n")


def test_configured_regex_takes_group_two_even_empty_as_envoys_std_regex_extractor():
    p = TagProducer([TagSpecifier("t", regex=r"^a\.((x)?y\.)")], use_all_default_tags=False)
    assert p.produce("a.xy.z") == ("a.z", (("t", "x"),))
    assert p.produce("a.y.z") == ("a.z", (("t", ""),))   # group 2 did not take part: empty
    one = TagProducer([TagSpecifier("t", regex=r"^a\.(\w+)\.")], use_all_default_tags=False)
    assert one.produce("a.bc.d") == ("a..d", (("t", "bc"),))   # one group: cut and value
