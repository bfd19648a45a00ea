"""Stats: per-thread stores, merge on read, carryover, quantiles and the three renderings."""

from __future__ import annotations

import json
import math
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.stats import (
    DEFAULT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    HistogramSummary,
    StatsRegistry,
    StatsSnapshot,
    extract_tags,
    render_json,
    render_prometheus,
    render_text,
)
from proxy.stats.histogram import merge_summaries

# ---------------------------------------------------------------- stores


def test_same_name_returns_same_object():
    store = StatsRegistry().new_store("main")
    assert store.counter("a.b") is store.counter("a.b")
    assert store.gauge("g") is store.gauge("g")
    assert store.histogram("h") is store.histogram("h")


def test_counter_and_gauge_keep_single_value_slot():
    assert Counter.__slots__ == ("value",)
    assert Gauge.__slots__ == ("value",)
    g = Gauge()
    g.inc(5)
    g.dec(2)
    assert g.value == 3
    g.set(10)
    assert g.value == 10


def test_scope_prefixes_names_with_dot():
    reg = StatsRegistry()
    store = reg.new_store("main")
    cluster = store.scope("cluster.backend")
    cluster.counter("upstream_rq_total").inc()
    cluster.scope("health_check").counter("attempt").inc(2)
    assert cluster.counter("upstream_rq_total") is store.counter("cluster.backend.upstream_rq_total")
    snap = reg.snapshot()
    assert snap.counters["cluster.backend.upstream_rq_total"] == 1
    assert snap.counters["cluster.backend.health_check.attempt"] == 2


def test_same_name_with_another_type_is_refused():
    store = StatsRegistry().new_store("main")
    store.counter("x")
    with pytest.raises(ValueError, match="another type"):
        store.gauge("x")


def test_duplicate_store_name_is_refused():
    reg = StatsRegistry()
    reg.new_store("worker_0")
    with pytest.raises(ValueError):
        reg.new_store("worker_0")


def test_unknown_histogram_unit_is_refused():
    with pytest.raises(ValueError, match="unit"):
        Histogram("furlongs")


def test_snapshot_merges_stores_written_from_two_threads():
    reg = StatsRegistry()
    n = 20_000

    def work(i: int) -> None:
        store = reg.new_store(f"worker_{i}")
        c = store.counter("http.ingress.downstream_rq_total")
        g = store.gauge("http.ingress.downstream_cx_active")
        h = store.histogram("http.ingress.downstream_rq_time")
        for _ in range(n):
            c.value += 1
        g.set(3 + i)
        for v in (1, 2, 3):
            h.record(v)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = reg.snapshot()
    assert snap.counters["http.ingress.downstream_rq_total"] == 2 * n
    assert snap.gauges["http.ingress.downstream_cx_active"] == 3 + 4
    h = snap.histograms["http.ingress.downstream_rq_time"]
    assert h.count == 6 and h.sum == 12


def test_snapshots_taken_while_a_worker_writes_never_go_backwards():
    reg = StatsRegistry()
    store = reg.new_store("worker_0")
    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set():
            store.counter(f"cluster.c{i % 50}.upstream_rq_total")  # creates stats while main reads
            store.counter("server.total").value += 1
            i += 1

    t = threading.Thread(target=work)
    t.start()
    try:
        last = 0
        for _ in range(200):
            v = reg.snapshot().counters.get("server.total", 0)
            assert v >= last
            last = v
    finally:
        stop.set()
        t.join()
    assert reg.snapshot().counters["server.total"] >= last


def test_carryover_counters_continue_from_parent_values():
    reg = StatsRegistry()
    store = reg.new_store("main")
    reg.set_carryover({"cluster.backend.upstream_rq_total": 100, "server.parent_only": 7},
                      {"server.total_connections": 4})
    store.counter("cluster.backend.upstream_rq_total").inc(5)
    store.gauge("server.total_connections").set(2)
    snap = reg.snapshot()
    assert snap.counters["cluster.backend.upstream_rq_total"] == 105
    assert snap.counters["server.parent_only"] == 7
    assert snap.gauges["server.total_connections"] == 6


def test_alias_reports_one_stat_under_two_names_each_merged_and_carried_over():
    reg = StatsRegistry()
    a, b = reg.new_store("worker_0"), reg.new_store("worker_1")
    reg.set_carryover({"cluster.c.external.upstream_rq_200": 10})  # a parent's value, by name
    for store, n in ((a, 2), (b, 3)):
        scope = store.scope("cluster.c")
        c = scope.counter("upstream_rq_200")
        scope.alias("external.upstream_rq_200", c)
        c.inc(n)
        h = scope.histogram("upstream_rq_time")
        scope.alias("external.upstream_rq_time", h)
        h.record(4.0)
    assert a.counter("cluster.c.external.upstream_rq_200") is a.counter("cluster.c.upstream_rq_200")
    snap = reg.snapshot()
    assert snap.counters["cluster.c.upstream_rq_200"] == 5
    assert snap.counters["cluster.c.external.upstream_rq_200"] == 15
    assert snap.histograms["cluster.c.external.upstream_rq_time"].count == 2
    assert snap.histograms["cluster.c.upstream_rq_time"].count == 2


def test_alias_to_a_name_taken_by_another_stat_is_refused():
    store = StatsRegistry().new_store("main")
    store.counter("a")
    with pytest.raises(ValueError):
        store.alias("a", store.counter("b"))
    with pytest.raises(ValueError):
        store.alias("a", store.gauge("g"))  # the name is a counter already


def test_set_carryover_replaces_previous_carryover():
    reg = StatsRegistry()
    reg.set_carryover({"a": 10})
    reg.set_carryover({"a": 12})
    assert reg.snapshot().counters["a"] == 12


def test_used_names_exclude_never_written_stats():
    reg = StatsRegistry()
    store = reg.new_store("main")
    store.counter("c.unused")
    store.counter("c.used").inc()
    store.gauge("g.unused")
    g = store.gauge("g.up_down")
    store.histogram("h.empty")
    store.histogram("h.full").record(1)
    g.inc()
    reg.snapshot()  # observes the gauge non-zero
    g.dec()
    snap = reg.snapshot()
    assert snap.used == {"c.used", "g.up_down", "h.full"}


# ---------------------------------------------------------------- histograms


def test_histogram_value_on_a_bound_falls_in_that_bucket():
    h = Histogram()
    h.record(0.5)
    h.record(0.6)
    h.record(10_000_000)  # above the last bound
    s = h.summary()
    assert s.buckets[0] == 1 and s.buckets[1] == 1 and s.buckets[-1] == 1
    assert s.cumulative_buckets()[-1] == (math.inf, 3)
    assert len(s.buckets) == len(DEFAULT_BUCKETS) + 1


def test_quantiles_interpolate_within_bucket_and_clamp_to_min_max():
    h = Histogram()
    for v in (12, 14, 16, 18):  # all in the (10, 25] bucket
        h.record(v)
    s = h.summary()
    assert s.quantile(0) == 12
    assert s.quantile(1) == 18
    assert s.quantile(0.5) == pytest.approx(15.0)  # halfway between min 12 and max 18


def test_quantile_of_empty_histogram_is_nan():
    assert math.isnan(HistogramSummary.empty().quantile(0.5))


def test_merge_refuses_different_bounds():
    a = Histogram(bounds=(1, 2)).summary()
    b = Histogram(bounds=(1, 3)).summary()
    with pytest.raises(ValueError):
        merge_summaries([a, b])


# ---------------------------------------------------------------- rendering


def _snapshot() -> StatsSnapshot:
    reg = StatsRegistry()
    s = reg.new_store("worker_0")
    s.counter("cluster.backend.upstream_rq_200").inc(7)
    s.counter("http.ingress_http.downstream_rq_2xx").inc(7)
    s.counter("listener.0.0.0.0_10000.worker_1.downstream_cx_total").inc(3)
    s.counter("cluster.backend.upstream_rq_retry")  # never written
    s.gauge("cluster.backend.upstream_cx_active").set(2)
    h = s.histogram("cluster.backend.upstream_rq_time")
    for v in (1, 2, 3, 4):
        h.record(v)
    s.histogram("cluster.idle.upstream_rq_time")
    return reg.snapshot()


def test_render_text_sorts_values_then_histograms():
    text = render_text(_snapshot())
    lines = text.splitlines()
    assert lines[:5] == [
        "cluster.backend.upstream_cx_active: 2",
        "cluster.backend.upstream_rq_200: 7",
        "cluster.backend.upstream_rq_retry: 0",
        "http.ingress_http.downstream_rq_2xx: 7",
        "listener.0.0.0.0_10000.worker_1.downstream_cx_total: 3",
    ]
    # 1 sits in (0.5, 1]; 2, 3, 4 in (1, 5], interpolated between min-clamped 1 and max 4
    assert lines[5] == (
        "cluster.backend.upstream_rq_time: P0(nan,1) P25(nan,1) P50(nan,2) P75(nan,3) P90(nan,3.6)"
        " P95(nan,3.8) P99(nan,3.96) P99.5(nan,3.98) P99.9(nan,3.996) P100(nan,4)"
    )
    assert lines[6] == "cluster.idle.upstream_rq_time: No recorded values"


def test_render_text_filter_and_usedonly():
    snap = _snapshot()
    assert render_text(snap, filter_re="upstream_rq_2") == "cluster.backend.upstream_rq_200: 7\n"
    used = render_text(snap, usedonly=True)
    assert "upstream_rq_retry" not in used and "cluster.idle" not in used
    assert "cluster.backend.upstream_rq_200: 7" in used


def test_render_json_matches_envoy_shape():
    doc = json.loads(render_json(_snapshot()))
    stats = doc["stats"]
    assert {"name": "cluster.backend.upstream_rq_200", "value": 7} in stats
    hist = stats[-1]["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    by_name = {q["name"]: q["values"] for q in hist["computed_quantiles"]}
    assert by_name["cluster.backend.upstream_rq_time"][0] == {"interval": None, "cumulative": 1}
    assert by_name["cluster.idle.upstream_rq_time"][0] == {"interval": None, "cumulative": None}


@pytest.mark.parametrize(
    ("name", "extracted", "tags"),
    [
        ("cluster.backend.upstream_rq_200", "cluster.upstream_rq",
         [("envoy.response_code", "200"), ("envoy.cluster_name", "backend")]),
        ("http.ingress_http.downstream_rq_2xx", "http.downstream_rq_xx",
         [("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress_http")]),
        ("listener.0.0.0.0_10000.worker_1.downstream_cx_total", "listener.worker_downstream_cx_total",
         [("envoy.worker_id", "1"), ("envoy.listener_address", "0.0.0.0_10000")]),  # Envoy 1.40: worker id first
        ("listener.0.0.0.0_10000.http.ingress_http.downstream_rq_5xx", "listener.http.downstream_rq_xx",
         [("envoy.response_code_class", "5"), ("envoy.http_conn_manager_prefix", "ingress_http"),
          ("envoy.listener_address", "0.0.0.0_10000")]),
        ("tcp.ingress_tcp.downstream_cx_total", "tcp.downstream_cx_total", [("envoy.tcp_prefix", "ingress_tcp")]),
        ("server.uptime", "server.uptime", []),
    ],
)
def test_extract_tags_follows_envoy_default_regexes(name, extracted, tags):
    assert extract_tags(name) == (extracted, tags)


def test_prometheus_output_parses_with_labels_and_histogram_buckets():
    text = render_prometheus(_snapshot())
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    rq = fams["envoy_cluster_upstream_rq"]
    assert rq.type == "counter"
    assert rq.samples[0].labels == {"envoy_response_code": "200", "envoy_cluster_name": "backend"}
    assert rq.samples[0].value == 7
    xx = fams["envoy_http_downstream_rq_xx"].samples[0]
    assert xx.labels == {"envoy_response_code_class": "2", "envoy_http_conn_manager_prefix": "ingress_http"}
    worker = fams["envoy_listener_worker_downstream_cx"].samples[0]  # parser strips "_total"
    assert worker.labels == {"envoy_listener_address": "0.0.0.0_10000", "envoy_worker_id": "1"}
    assert fams["envoy_cluster_upstream_cx_active"].type == "gauge"
    hist = fams["envoy_cluster_upstream_rq_time"]
    assert hist.type == "histogram"
    backend = [s for s in hist.samples if s.labels.get("envoy_cluster_name") == "backend"]
    buckets = {s.labels["le"]: s.value for s in backend if s.name.endswith("_bucket")}
    assert buckets["1"] == 1 and buckets["5"] == 4 and buckets["+Inf"] == 4
    assert [s.value for s in backend if s.name.endswith("_count")] == [4]
    assert [s.value for s in backend if s.name.endswith("_sum")] == [10]


def test_prometheus_emits_one_type_line_per_family():
    text = render_prometheus(_snapshot())
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))
    # two clusters share the histogram family
    assert type_lines.count("# TYPE envoy_cluster_upstream_rq_time histogram") == 1


def test_prometheus_escapes_label_values():
    snap = StatsSnapshot(counters={'cluster.we"ird\\.upstream_rq_total': 1}, gauges={}, histograms={},
                         used=frozenset())
    fams = list(text_string_to_metric_families(render_prometheus(snap)))
    assert fams[0].samples[0].labels == {"envoy_cluster_name": 'we"ird\\'}
