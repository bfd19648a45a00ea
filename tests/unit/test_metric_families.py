"""The metrics_service sink's encoding (proxy/stats/metric_families.py) decoded by independent
protobuf classes (tests/metrics_service_server.py), and its config (proxy/stats/metrics_service.py)."""

from __future__ import annotations

import math

import pytest

from proxy.config.reader import ConfigError
from proxy.stats import StatsRegistry
from proxy.stats.metric_families import FlushOptions, MetricsFlusher, encode_stream_message, interval_of
from proxy.stats.metrics_service import parse_metrics_service
from tests.metrics_service_server import MetricFamily, StreamMetricsMessage, families

from envoy.config.core.v3 import base_pb2


def _decode(encoded: list[bytes]) -> StreamMetricsMessage:
    msg = StreamMetricsMessage()
    msg.ParseFromString(encode_stream_message(None, encoded))
    return msg


def _registry():
    reg = StatsRegistry()
    store = reg.new_store("worker_0")
    return reg, store


def test_counters_are_totals_or_deltas_and_unused_stats_are_left_out():
    reg, store = _registry()
    store.counter("cluster.c.upstream_rq_total").inc(3)
    store.counter("cluster.c.never").inc(0)
    totals, deltas = MetricsFlusher(FlushOptions()), MetricsFlusher(FlushOptions(report_counters_as_deltas=True))
    first = [_decode(f.flush(reg.snapshot(), 1000)) for f in (totals, deltas)]
    store.counter("cluster.c.upstream_rq_total").inc(2)
    second = [_decode(f.flush(reg.snapshot(), 2000)) for f in (totals, deltas)]
    key = ("COUNTER", "cluster.c.upstream_rq_total", ())
    assert [families(m)[key].counter.value for m in first] == [3, 3]
    assert [families(m)[key].counter.value for m in second] == [5, 2]
    assert all(("COUNTER", "cluster.c.never", ()) not in families(m) for m in first + second)
    third = _decode(deltas.flush(reg.snapshot(), 3000))
    metric = families(third)[key]
    assert metric.counter.value == 0 and metric.HasField("counter")   # proto2: written though 0
    assert metric.timestamp_ms == 3000
    assert third.envoy_metrics[0].HasField("type")                     # COUNTER is 0: written too


def test_gauges_and_the_order_counters_gauges_histograms():
    reg, store = _registry()
    store.histogram("http.h.downstream_rq_time").record(3.0)
    store.gauge("http.h.downstream_cx_active").set(2)
    store.counter("http.h.downstream_rq_total").inc()
    msg = _decode(MetricsFlusher(FlushOptions()).flush(reg.snapshot(), 1))
    kinds = [MetricFamily.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[f.type].name
             for f in msg.envoy_metrics]
    assert kinds == ["COUNTER", "GAUGE", "SUMMARY", "HISTOGRAM"]
    assert families(msg)[("GAUGE", "http.h.downstream_cx_active", ())].gauge.value == 2


def test_histograms_send_each_flushs_interval():
    reg, store = _registry()
    h = store.histogram("cluster.c.upstream_rq_time")
    for v in (0.2, 3.0, 3.0):
        h.record(v)
    flusher = MetricsFlusher(FlushOptions())
    first = families(_decode(flusher.flush(reg.snapshot(), 1)))
    h.record(20.0)
    second = families(_decode(flusher.flush(reg.snapshot(), 2)))
    third = families(_decode(flusher.flush(reg.snapshot(), 3)))
    hist = [f[("HISTOGRAM", "cluster.c.upstream_rq_time", ())].histogram for f in (first, second, third)]
    assert [x.sample_count for x in hist] == [3, 1, 0]
    assert [x.sample_sum for x in hist] == [6.2, 20.0, 0.0]
    assert [(b.upper_bound, b.cumulative_count) for b in hist[0].bucket][:4] == [(0.5, 1), (1, 1), (5, 3), (10, 3)]
    assert [b.cumulative_count for b in hist[1].bucket][:5] == [0, 0, 0, 0, 1]
    summary = second[("SUMMARY", "cluster.c.upstream_rq_time", ())].summary
    assert summary.sample_count == 1
    assert [q.quantile for q in summary.quantile] == [0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1]
    assert summary.quantile[-1].value == 20.0
    empty = third[("SUMMARY", "cluster.c.upstream_rq_time", ())].summary
    assert all(math.isnan(q.value) for q in empty.quantile)


def test_interval_of_a_histogram_the_first_time_is_all_of_it():
    reg, store = _registry()
    store.histogram("x").record(1.0)
    now = reg.snapshot().histograms["x"]
    assert interval_of(now, None) is now
    assert interval_of(now, now).count == 0


@pytest.mark.parametrize(("mode", "kinds"), [
    ("SUMMARY_AND_HISTOGRAM", {"SUMMARY", "HISTOGRAM"}), ("SUMMARY", {"SUMMARY"}), ("HISTOGRAM", {"HISTOGRAM"})])
def test_histogram_emit_mode(mode, kinds):
    config = parse_metrics_service({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}},
                                    "histogram_emit_mode": mode}, "sink")
    reg, store = _registry()
    store.histogram("h").record(1.0)
    msg = _decode(MetricsFlusher(config.flush_options()).flush(reg.snapshot(), 1))
    assert {k[0] for k in families(msg)} == kinds


def test_tags_as_labels():
    reg, store = _registry()
    store.counter("cluster.backend.upstream_rq_503").inc()
    store.counter("server.live_thing").inc()
    msg = _decode(MetricsFlusher(FlushOptions(emit_tags_as_labels=True)).flush(reg.snapshot(), 1))
    assert set(families(msg)) == {
        ("COUNTER", "cluster.upstream_rq", (("envoy.response_code", "503"), ("envoy.cluster_name", "backend"))),
        ("COUNTER", "server.live_thing", ())}


def test_the_identifier_carries_the_node():
    node = base_pb2.Node(id="n1", cluster="c1")
    msg = StreamMetricsMessage()
    msg.ParseFromString(encode_stream_message(node.SerializeToString(), [b"\x0a\x01x"]))
    assert msg.identifier.node.id == "n1" and msg.identifier.node.cluster == "c1"
    assert [f.name for f in msg.envoy_metrics] == ["x"]


@pytest.mark.parametrize(("raw", "path", "words"), [
    ({}, "sink.grpc_service", "required"),
    ({"grpc_service": {"google_grpc": {}}}, "sink.grpc_service.google_grpc", "not supported"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}, "batch_size": 10}, "sink.batch_size", "only"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}, "transport_api_version": "V2"},
     "sink.transport_api_version", "V2"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}, "histogram_emit_mode": "BOTH"},
     "sink.histogram_emit_mode", "unknown value"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}, "initial_metadata": [{"key": "X-A"}]}},
     "sink.grpc_service.initial_metadata[0].key", "lower-case"),
])
def test_config_errors_name_the_field(raw, path, words):
    with pytest.raises(ConfigError) as e:
        parse_metrics_service(raw, "sink")
    assert path in str(e.value) and words in str(e.value)


def test_config_defaults_and_values():
    c = parse_metrics_service({"grpc_service": {"envoy_grpc": {"cluster_name": "ms", "authority": "a.b"},
                                                "timeout": "1s",
                                                "initial_metadata": [{"key": "x-a", "value": "1"}]},
                               "transport_api_version": "V3",
                               "report_counters_as_deltas": {"value": True}}, "sink")
    assert (c.cluster_name, c.authority, c.initial_metadata) == ("ms", "a.b", ((b"x-a", b"1"),))
    assert c.report_counters_as_deltas and not c.emit_tags_as_labels
    assert c.histogram_emit_mode == "SUMMARY_AND_HISTOGRAM"


def _bootstrap(cluster: dict, name: str = "ms") -> dict:
    return {"stats_sinks": [{"name": "envoy.stat_sinks.metrics_service", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": name}}}}],
            "static_resources": {"clusters": [cluster]}}


H2_CLUSTER = {"name": "ms", "type": "STATIC", "connect_timeout": "1s",
              "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                  "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                  "explicit_http_config": {"http2_protocol_options": {}}}},
              "load_assignment": {"cluster_name": "ms", "endpoints": []}}


@pytest.mark.parametrize(("cluster", "name", "words"), [
    (H2_CLUSTER, "nope", "Unknown gRPC client cluster 'nope'"),   # Envoy 1.40's words
    ({k: v for k, v in H2_CLUSTER.items() if k != "typed_extension_protocol_options"}, "ms", "HTTP/2"),
])
def test_the_cluster_is_checked_at_load(cluster, name, words):
    from proxy.config.load import parse_bootstrap
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_bootstrap(cluster, name))
    assert "stats_sinks[0].typed_config.grpc_service.envoy_grpc.cluster_name" in str(e.value)
    assert words in str(e.value)


def test_a_static_http2_cluster_loads():
    from proxy.config.load import parse_bootstrap
    boot = parse_bootstrap(_bootstrap(H2_CLUSTER))
    assert boot.stats_sinks[0][1].cluster_name == "ms"


class FakeStream:
    def __init__(self, pending: int) -> None:
        self.pending = bytearray(pending)
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)


def test_a_stream_that_does_not_drain_drops_flushes_past_the_bound():
    from proxy.stats.metrics_service import MAX_QUEUED, MetricsServiceSink
    from proxy.stats.sink import SinkContext

    reg, store = _registry()
    store.counter("c").inc()
    sink = MetricsServiceSink(parse_metrics_service({"grpc_service": {"envoy_grpc": {"cluster_name": "ms"}}}, "s"))
    node = type("Node", (), {"id": "n", "cluster": "c", "zone": "", "metadata": None})()
    sink.start(SinkContext(None, store, node, lambda name: [], lambda name: None, lambda: 1.0))
    sink.stream = FakeStream(MAX_QUEUED)
    sink.flush(reg.snapshot())
    assert len(sink.stream.sent) == 1 and store.counter("metrics_service.messages_dropped").value == 0
    sink.stream = FakeStream(MAX_QUEUED + 1)
    sink.flush(reg.snapshot())
    assert sink.stream.sent == [] and store.counter("metrics_service.messages_dropped").value == 1
