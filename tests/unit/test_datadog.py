"""The Datadog tracer's pieces without sockets (proxy/tracing/datadog.py, datadog_config.py,
datadog_exporter.parse_rates): extraction and injection of the Datadog and W3C headers, the
sampling decision, the msgpack payload (decoded with the `msgpack` package's unpacker) and the
config. The expected header values are what real Envoy 1.40 sent upstream for the same
requests (the datadog-tracing example's bootstrap; tests/differential/test_datadog_envoy.py
compares the two directly)."""

from __future__ import annotations

import msgpack
import pytest

from proxy.config.reader import ConfigError
from proxy.http.headers import Headers
from proxy.tracing import datadog as dd
from proxy.tracing.datadog_config import parse_datadog
from proxy.tracing.datadog_exporter import parse_rates
from proxy.tracing.span import SERVER

TYPE = "type.googleapis.com/envoy.config.trace.v3.DatadogConfig"


def _h(**fields) -> dict:
    return {k.replace("_", "-").encode(): v.encode() for k, v in fields.items()}


def _injected(trace: dd.Trace, span_id: int) -> dict:
    span = dd.make_span(trace, span_id, 0, "egress", SERVER)
    headers = Headers([])
    dd.inject(span, headers)
    return {k.decode(): v.decode() for k, v in headers.fields}


# -- extraction and injection, as Envoy 1.40 propagated them -------------------------------------

def test_datadog_headers_with_tags_and_origin():
    trace, parent = dd.extract(_h(x_datadog_trace_id="123", x_datadog_parent_id="456",
                                  x_datadog_sampling_priority="2", x_datadog_origin="synthetics",
                                  x_datadog_tags="_dd.p.dm=-4,_dd.p.tid=640cfd8d00000000,x=y"))
    assert (trace.high, trace.low, parent) == (0x640cfd8d00000000, 123, 456)
    assert trace.priority == 2 and trace.origin == "synthetics"
    assert trace.tags == [("_dd.p.dm", "-4"), ("_dd.p.tid", "640cfd8d00000000")]  # x=y not _dd.p.
    dd.decide(trace, True, dd.DEFAULT_RATES, "svc")   # a caller's priority is kept
    assert _injected(trace, 0x0ff6e2c6fbf6f30f) == {
        "x-datadog-trace-id": "123", "x-datadog-parent-id": str(0x0ff6e2c6fbf6f30f),
        "x-datadog-sampling-priority": "2", "x-datadog-origin": "synthetics",
        "x-datadog-tags": "_dd.p.dm=-4,_dd.p.tid=640cfd8d00000000",
        "traceparent": "00-640cfd8d00000000000000000000007b-0ff6e2c6fbf6f30f-01",
        "tracestate": "dd=s:2;p:0ff6e2c6fbf6f30f;o:synthetics;t.dm:-4"}


def test_w3c_traceparent_and_tracestate():
    trace, parent = dd.extract(_h(
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="dd=s:2;o:rum;t.dm:-4,foo=bar"))
    assert (trace.high, trace.low, parent) == (0x0af7651916cd43dd, 9532127138774266268,
                                               13235353014750950193)
    assert trace.priority == 2 and trace.origin == "rum"
    assert trace.tags == [("_dd.p.dm", "-4"), ("_dd.p.tid", "0af7651916cd43dd")]
    assert trace.root_tags == {"_dd.parent_id": "0000000000000000"}
    assert _injected(trace, 0x3bfe184c723ded4e) == {
        "x-datadog-trace-id": "9532127138774266268",
        "x-datadog-parent-id": str(0x3bfe184c723ded4e),
        "x-datadog-sampling-priority": "2", "x-datadog-origin": "rum",
        "x-datadog-tags": "_dd.p.dm=-4,_dd.p.tid=0af7651916cd43dd",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-3bfe184c723ded4e-01",
        "tracestate": "dd=s:2;p:3bfe184c723ded4e;o:rum;t.dm:-4,foo=bar"}


def test_w3c_priority_disagreeing_with_the_flag_follows_the_flag():
    trace, _ = dd.extract(_h(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                             tracestate="dd=s:2"))
    assert trace.priority == 0


def test_datadog_wins_and_w3c_of_the_same_trace_lends_parent_and_tracestate():
    trace, parent = dd.extract(_h(
        x_datadog_trace_id=str(0x8448eb211c80319c), x_datadog_parent_id="5",
        x_datadog_tags="_dd.p.tid=0af7651916cd43dd",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="other=1,dd=s:1;p:00000000000000aa;zz:q"))
    assert parent == 0xb7ad6b7169203331
    assert trace.root_tags["_dd.parent_id"] == "00000000000000aa"
    assert trace.extra_w3c == "other=1" and trace.extra_dd == "zz:q"
    assert trace.priority is None    # the Datadog style carried none


@pytest.mark.parametrize("fields", [
    {"x_datadog_trace_id": "abc", "x_datadog_parent_id": "1"},      # Envoy: error 16, new trace
    {"x_datadog_trace_id": "1", "x_datadog_parent_id": "-1"},
    {"x_datadog_trace_id": "18446744073709551616", "x_datadog_parent_id": "1"},  # > 2^64-1
    {"x_datadog_trace_id": "1", "x_datadog_parent_id": "1", "x_datadog_sampling_priority": "x"},
    {"x_datadog_trace_id": "5"},                  # a trace without a parent nor an origin
    {"x_datadog_parent_id": "5"},                 # a parent without a trace
    {"x_datadog_trace_id": "0", "x_datadog_parent_id": "5"},
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"},
    {"traceparent": "garbage"},
])
def test_contexts_that_do_not_extract_start_a_new_trace(fields):
    assert dd.extract(_h(**fields)) is None


def test_origin_alone_makes_parent_zero_and_a_bad_tid_is_tagged():
    trace, parent = dd.extract(_h(x_datadog_trace_id="7", x_datadog_origin="lambda",
                                  x_datadog_tags="_dd.p.tid=xyz"))
    assert parent == 0 and trace.high == 0
    assert trace.root_tags == {"_dd.propagation_error": "malformed_tid xyz"}


def test_a_bad_traceparent_is_tagged_when_datadog_extracts():
    trace, _ = dd.extract(_h(x_datadog_trace_id="7", x_datadog_parent_id="8", traceparent="x"))
    assert trace.root_tags == {"_dd.w3c_extraction_error": "malformed_traceparent"}


def test_new_trace_128_bit_with_the_second_as_high_half():
    trace = dd.new_trace(0xe5f0991acde002df, now=0x6b166c63 + 0.5)
    dd.decide(trace, True, dd.DEFAULT_RATES, "envoy-demo")
    assert _injected(trace, 0xe5f0991acde002df) == {
        "x-datadog-trace-id": "16568911369498264287",
        "x-datadog-parent-id": "16568911369498264287",
        "x-datadog-sampling-priority": "1",
        "x-datadog-tags": "_dd.p.tid=6b166c6300000000,_dd.p.dm=-0",
        "traceparent": "00-6b166c6300000000e5f0991acde002df-e5f0991acde002df-01",
        "tracestate": "dd=s:1;p:e5f0991acde002df;t.dm:-0"}


def test_injection_replaces_what_the_request_carried_and_sanitizes_tracestate():
    trace = dd.Trace(0, 5)
    trace.priority, trace.origin = 1, "a=b;c"
    trace.tags = [("_dd.p.x y", "v,1=2")]
    span = dd.make_span(trace, 1, 0, "ingress", SERVER)
    headers = Headers([(b"x-datadog-trace-id", b"9"), (b"tracestate", b"old")])
    dd.inject(span, headers)
    assert headers.get(b"x-datadog-trace-id") == b"5"
    assert headers.get(b"tracestate") == b"dd=s:1;p:0000000000000001;o:a~b_c;t.x_y:v_1~2"


# -- sampling ------------------------------------------------------------------------------------

def test_untraced_requests_are_user_drop_without_decision_maker():
    trace = dd.new_trace(7, now=1)
    dd.decide(trace, False, dd.DEFAULT_RATES, "s")
    assert (trace.priority, trace.tags) == (-1, [("_dd.p.tid", "0000000100000000")])
    assert _injected(trace, 7)["tracestate"] == "dd=s:-1;p:0000000000000007"


def test_the_agent_rate_decides_by_knuth_hash_and_sets_ksr():
    rates = dd.AgentRates({"service:s,env:": 0.5}, 1.0)
    threshold = int(0.5 * float(2**64 - 1))
    kept = next(i for i in range(1, 100) if (i * dd.KNUTH) % 2**64 <= threshold)
    dropped = next(i for i in range(1, 100) if (i * dd.KNUTH) % 2**64 > threshold)
    a, b = dd.Trace(0, kept), dd.Trace(0, dropped)
    dd.decide(a, True, rates, "s")
    dd.decide(b, True, rates, "s")
    assert (a.priority, a.tags) == (1, [("_dd.p.dm", "-1"), ("_dd.p.ksr", "0.5")])
    assert (b.priority, b.tags) == (0, [("_dd.p.ksr", "0.5")])
    c = dd.Trace(0, dropped)
    dd.decide(c, True, rates, "other")        # no key for it: the default rate, 1.0
    assert (c.priority, c.tags) == (1, [("_dd.p.dm", "-1"), ("_dd.p.ksr", "1")])


@pytest.mark.parametrize("rate,text", [(1.0, "1"), (0.1, "0.1"), (0.25, "0.25"),
                                       (0.123456789, "0.123457"), (0.0, "0")])
def test_format_rate(rate, text):
    assert dd.format_rate(rate) == text


def test_parse_rates():
    r = parse_rates(b'{"rate_by_service": {"service:,env:": 0.5, "service:a,env:": 1}}')
    assert r.default == 0.5 and r.rate_for("a") == (1.0, dd.AGENT_RATE)
    assert parse_rates(b'{"rate_by_service": {"service:,env:": 2}}') is None
    assert parse_rates(b"not json") is None and parse_rates(b"[]") is None
    assert parse_rates(b"{}") == dd.AgentRates()


# -- the payload ---------------------------------------------------------------------------------

def test_encoded_traces_decode_with_msgpack():
    trace = dd.new_trace(2**64 - 3, now=1)
    trace.origin = "o"
    dd.decide(trace, True, dd.DEFAULT_RATES, "svc")
    span = dd.make_span(trace, 2**64 - 3, 0, "egress h", SERVER)
    span.start_us, span.duration_us = 1_700_000_000_000_001, 250
    span.tags = {"http.status_code": "503", "error": "true"}
    span.child = span.child_span("%016x" % 9, "router c egress", 0)
    span.child.start_us, span.child.duration_us = span.start_us, 250
    span.child.tags = {"upstream_cluster": "c"}
    proc = dd.Process("svc", "ftproxy 0", "rid", 42)
    body, count = dd.encode_traces([span], proc)
    assert count == 1
    [[root, child]] = msgpack.unpackb(body)
    assert root == {
        "service": "svc", "name": "envoy.proxy", "resource": "egress h",
        "trace_id": 2**64 - 3, "span_id": 2**64 - 3, "parent_id": 0,
        "start": 1_700_000_000_000_001_000, "duration": 250_000, "error": 1,
        "meta": {"http.status_code": "503", "_dd.origin": "o", "language": "python",
                 "runtime-id": "rid", "version": "ftproxy 0", "_dd.p.tid": "0000000100000000",
                 "_dd.p.dm": "-0"},
        "metrics": {"_sampling_priority_v1": 1.0, "_dd.agent_psr": 1.0, "process_id": 42.0},
        "type": "web"}
    assert (child["span_id"], child["parent_id"], child["trace_id"]) == (9, 2**64 - 3, 2**64 - 3)
    assert child["resource"] == "router c egress" and child["error"] == 0
    assert child["meta"] == {"upstream_cluster": "c", "_dd.origin": "o", "language": "python",
                             "runtime-id": "rid", "version": "ftproxy 0"}
    assert child["metrics"] == {"process_id": 42.0}


# -- config --------------------------------------------------------------------------------------

def test_config_fields():
    c = parse_datadog({"@type": TYPE, "collector_cluster": "dd", "service_name": "s",
                       "collector_hostname": "agent.local"}, "p")
    assert (c.collector_cluster, c.service_name, c.collector_hostname) == ("dd", "s", "agent.local")


@pytest.mark.parametrize("raw,path", [
    ({"collector_cluster": "dd", "service_name": "s", "remote_config": {}}, "p.remote_config"),
    ({"collector_cluster": "dd"}, "p.service_name"),
    ({"collector_cluster": "", "service_name": "s"}, "p.collector_cluster"),
    ({"collector_cluster": "dd", "service_name": "s", "bogus": 1}, 'unknown field "bogus"'),
])
def test_config_refusals_name_the_field(raw, path):
    with pytest.raises(ConfigError) as e:
        parse_datadog({"@type": TYPE, **raw}, "p")
    assert path in str(e.value)
