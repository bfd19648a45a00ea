"""SkyWalking's pieces without sockets: the sw8 header as cpp2sky reads and writes it
(proxy/tracing/sw8.py), the SegmentObject ftproxy writes by hand decoded by protobuf's own
parser (proxy/tracing/skywalking.py; the message classes of tests/skywalking_collector.py),
and the tracer's config."""

from __future__ import annotations

import base64

import pytest

from proxy.config.reader import ConfigError
from proxy.tracing.config import CustomTag, TracingConfig
from proxy.tracing.skywalking import SegmentSpan, encode_segment
from proxy.tracing.skywalking_config import parse_skywalking
from proxy.tracing.span import InvalidContext
from proxy.tracing.sw8 import Reference, b64, encode, extract
from proxy.tracing.tags import Facts

from tests.skywalking_collector import SegmentObject, segment_dict


def _b(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- sw8 ------------------------------------------------------------------------------------

def test_sw8_round_trip_and_field_order():
    value = encode(b"trace-1", b"seg-1", b64(b"svc"), b64(b"inst"), b"/path?q", b"10.0.0.1:80")
    assert value.decode() == "-".join(["1", _b("trace-1"), _b("seg-1"), "1", _b("svc"),
                                       _b("inst"), _b("/path?q"), _b("10.0.0.1:80")])
    assert extract(value) == Reference(b"trace-1", b"seg-1", 1, b"svc", b"inst", b"/path?q",
                                       b"10.0.0.1:80")


@pytest.mark.parametrize("value", [
    b"", b"garbage", b"1-a-b-1-c-d-e",               # not eight fields
    b"1-a-b-1-c-d-e-f-g",                             # nine
    b"2-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw-YWRkcg==",     # sample neither 0 nor 1
    b"1-dA==-cw==-x-c3Zj-aW5zdA==-L2Vw-YWRkcg==",     # span id not a number
    b"1-dA==-cw==-4294967296-c3Zj-aW5zdA==-L2Vw-YWRkcg==",  # past int32
])
def test_sw8_that_does_not_parse_is_an_invalid_context(value):
    with pytest.raises(InvalidContext):
        extract(value)


def test_sw8_sample_zero_and_a_signed_span_id_parse():
    """(A negative id cannot be written: `-` separates the fields, "--1" is one too many.)"""
    ref = extract(b"0-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw-YWRkcg==")
    assert ref.span_id == 3 and ref.trace_id == b"t"
    assert extract(b"1-dA==-cw==-+5-c3Zj-aW5zdA==-L2Vw-YWRkcg==").span_id == 5
    with pytest.raises(InvalidContext):
        extract(b"1-dA==-cw==--1-c3Zj-aW5zdA==-L2Vw-YWRkcg==")


@pytest.mark.parametrize("field,decoded", [
    (b"dA==", b"t"), (b"dA", b"t"), (b"dA=", b"t"),   # padding optional
    (b"c3Zj", b"svc"),
    (b"d!==", b""),                                   # outside the alphabet: empty
    (b"dB==", b""),                                   # stray low bits: empty (cpp2sky)
    (b"d", b""),                                      # one character: empty
    (b"", b""),
])
def test_sw8_base64_fields_decode_as_cpp2sky_decodes_them(field, decoded):
    value = b"-".join((b"1", field, b"cw==", b"3", b"c3Zj", b"aW5zdA==", b"L2Vw", b"YWRkcg=="))
    assert extract(value).trace_id == decoded


# -- the SegmentObject ----------------------------------------------------------------------

def _facts(code=200, host="10.1.1.1:8080", custom=()) -> Facts:
    config = TracingConfig(provider=None, custom_tags=custom)
    return Facts(((b"x-request-id", b"rid-1"), (b"x-forwarded-proto", b"http"),
                  (b"user-agent", b"UA")), b"example.com", b"/p?q=1", b"GET", "HTTP/1.1",
                 "192.0.2.9", code, 36, 0, (), "app", host, None, config)


def _span(ref=None, child=True, code=200) -> SegmentSpan:
    span = SegmentSpan("trace-x", "seg-x", None, True, None, "SERVER", 1_700_000_000_123_456)
    span.duration_us = 2_500
    span.operation = b"/p?q=1"
    span.ref = ref
    span.facts = _facts(code)
    if child:
        span.child = span.exit_span()
        span.child.operation = b"/up/p?q=1"
        span.child.start_us = span.start_us
        span.child.duration_us = 2_500
        span.child.facts = span.facts
    return span


def _decode(data: bytes) -> dict:
    seg = SegmentObject()
    seg.ParseFromString(data)
    assert seg.SerializeToString() == data   # byte for byte what protobuf writes, field order too
    return segment_dict(seg)


def test_segment_object_as_envoy_fills_it():
    ref = Reference(b"trace-x", b"parent-seg", 1, b"up", b"up-1", b"/ep", b"10.0.0.2:10000")
    d = _decode(encode_segment(_span(ref), b"svc", b"inst", "node-1", "z"))
    assert (d["traceId"], d["traceSegmentId"], d["service"], d["serviceInstance"]) == (
        "trace-x", "seg-x", "svc", "inst")
    entry, exit_ = d["spans"]
    assert (entry["spanId"], entry["parentSpanId"], entry["spanType"], entry["spanLayer"],
            entry["componentId"]) == (0, -1, "Entry", "Http", 9000)
    assert (exit_["spanId"], exit_["parentSpanId"], exit_["spanType"]) == (1, 0, "Exit")
    assert (entry["startTime"], entry["endTime"]) == (1_700_000_000_123, 1_700_000_000_125)
    assert (entry["operationName"], exit_["operationName"]) == ("/p?q=1", "/up/p?q=1")
    assert (entry["peer"], exit_["peer"]) == ("192.0.2.9", "10.1.1.1:8080")
    assert entry["tags"] == [
        ("node_id", "node-1"), ("zone", "z"), ("guid:x-request-id", "rid-1"),
        ("url", "http://example.com/p?q=1"), ("http.method", "GET"), ("downstream_cluster", "-"),
        ("user_agent", "UA"), ("http.protocol", "HTTP/1.1"), ("request_size", "0"),
        ("response_size", "36"), ("component", "proxy"), ("upstream_cluster", "app"),
        ("upstream_cluster.name", "app"), ("status_code", "200"), ("response_flags", "-")]
    assert exit_["tags"] == [
        ("http.protocol", "HTTP/1.1"), ("upstream_address", "10.1.1.1:8080"),
        ("component", "proxy"), ("upstream_cluster", "app"), ("upstream_cluster.name", "app"),
        ("status_code", "200"), ("response_flags", "-")]
    assert entry["refs"] == [{
        "refType": 0, "traceId": "trace-x", "parentTraceSegmentId": "parent-seg",
        "parentSpanId": 1, "parentService": "up", "parentServiceInstance": "up-1",
        "parentEndpoint": "/ep", "networkAddressUsedAtPeer": "10.0.0.2:10000"}]
    assert exit_["refs"] == [] and not entry["isError"] and not entry["skipAnalysis"]


def test_segment_of_an_error_and_without_an_exit_span():
    d = _decode(encode_segment(_span(child=False, code=503), b"svc", b"inst", "", ""))
    (entry,) = d["spans"]
    assert entry["isError"] and ("error", "true") in entry["tags"]
    assert ("status_code", "503") in entry["tags"]


def test_a_negative_parent_span_id_in_a_reference_round_trips():
    ref = Reference(b"t", b"s", -5, b"", b"", b"", b"")
    d = _decode(encode_segment(_span(ref, child=False), b"svc", b"inst", "", ""))
    assert d["spans"][0]["refs"][0]["parentSpanId"] == -5


def test_custom_tags_go_into_the_entry_span():
    span = _span(child=False)
    span.facts = _facts(custom=(CustomTag("team", "edge"),))
    d = _decode(encode_segment(span, b"svc", b"inst", "", ""))
    assert d["spans"][0]["tags"][-1] == ("team", "edge")


# -- config ---------------------------------------------------------------------------------

def test_config_defaults_and_values():
    cfg = parse_skywalking({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"},
                                             "timeout": "0.25s"}}, "p")
    assert (cfg.cluster_name, cfg.service_name, cfg.instance_name, cfg.backend_token,
            cfg.max_cache_size) == ("sw", "", "", "", 1024)
    cfg = parse_skywalking({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}},
                            "client_config": {"service_name": "s", "instance_name": "i",
                                              "backend_token": "t",
                                              "max_cache_size": {"value": 7}}}, "p")
    assert (cfg.service_name, cfg.instance_name, cfg.backend_token, cfg.max_cache_size) == (
        "s", "i", "t", 7)


@pytest.mark.parametrize("raw,message", [
    ({}, "p.grpc_service: is required"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": ""}}},
     "p.grpc_service.envoy_grpc.cluster_name: must not be empty"),
    ({"grpc_service": {"google_grpc": {}}}, "p.grpc_service.google_grpc: not supported yet"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}}, "client_config": {"x": 1}},
     'p.client_config: unknown field "x"'),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}},
      "client_config": {"max_cache_size": -1}}, "p.client_config.max_cache_size"),
])
def test_config_errors_name_their_paths(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_skywalking(raw, "p")
    assert message in str(e.value)
