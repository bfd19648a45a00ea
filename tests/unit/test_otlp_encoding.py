"""The OpenTelemetry tracer's pieces without I/O: W3C traceparent parsing (Envoy 1.40's
SpanContextExtractor rules) and the hand-written OTLP protobuf encoding, decoded here by the
`opentelemetry-proto` package's classes (an independent implementation)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.grpc import protobuf_wire
from proxy.tracing import traceparent
from proxy.tracing.otlp import Resource, encode_export_request
from proxy.tracing.span import CLIENT, SERVER, InvalidContext, Span

GOOD = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_valid_traceparent_gives_lower_case_ids_the_sampled_bit_and_joined_tracestates():
    fields = [(b"tracestate", b"a=1"), (b"x", b"y"), (b"tracestate", b"b=2")]
    assert traceparent.extract(GOOD.upper().replace(b"X", b"x"), fields) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True, "a=1,b=2")
    assert traceparent.extract(GOOD[:-2] + b"02", [])[2] is False
    assert traceparent.extract(b"ff" + GOOD[2:-2] + b"03", [])[2] is True


@pytest.mark.parametrize("value", [
    b"", b"garbage", GOOD + b"-00", GOOD[:-1], b"00_" + GOOD[3:],
    b"00-" + b"0" * 32 + GOOD[35:], GOOD[:36] + b"0" * 16 + GOOD[52:],
    GOOD[:10] + b"g" + GOOD[11:], GOOD[:-2] + b"0x",
])
def test_an_invalid_traceparent_is_refused(value):
    with pytest.raises(InvalidContext):
        traceparent.extract(value, [])


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1])
def test_varints_decode_as_protobuf_does(n):
    from google.protobuf.internal.decoder import _DecodeVarint
    assert _DecodeVarint(protobuf_wire.varint(n), 0) == (n, len(protobuf_wire.varint(n)))


def test_an_export_request_decodes_with_the_reference_classes():
    s = Span("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00f067aa0ba902b7", True,
             "ingress ünïcode", SERVER, 1_796_619_701_024_854)
    s.duration_us = 2_500_000
    s.tags = {"http.status_code": "503", "error": "true", "empty": "", "k" * 200: "v" * 5000}
    s.trace_state = "congo=t61rcWkgMzE"
    s.remote_parent = True
    c = s.child_span("1111111111111111", "router app egress", s.start_us)
    c.duration_us = 1
    c.tags = {"upstream_cluster": "app"}
    s.child = c
    r = Resource([("service.name", "svc"), ("telemetry.sdk.name", "ftproxy")], "envoy", "v1",
                 "node", "")
    m = ExportTraceServiceRequest()
    m.ParseFromString(encode_export_request([s, s], r))
    (rs,) = m.resource_spans
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {
        "service.name": "svc", "telemetry.sdk.name": "ftproxy"}
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("envoy", "v1")
    assert len(ss.spans) == 4
    server, client = ss.spans[0], ss.spans[1]
    assert server.trace_id.hex() == s.trace_id and server.span_id.hex() == s.id
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    assert server.name == "ingress ünïcode" and server.kind == 2
    assert server.trace_state == "congo=t61rcWkgMzE"
    assert server.start_time_unix_nano == 1_796_619_701_024_854_000
    assert server.end_time_unix_nano - server.start_time_unix_nano == 2_500_000_000
    assert [(a.key, a.value.WhichOneof("value"), a.value.string_value) for a in server.attributes] == [
        ("http.status_code", "string_value", "503"), ("error", "string_value", "true"),
        ("empty", "string_value", ""), ("k" * 200, "string_value", "v" * 5000)]
    assert server.status.code == 2 and server.flags == 0x301
    assert client.kind == 3 and client.parent_span_id == server.span_id
    assert client.flags == 0x101 and client.status.code == 0
    assert client.trace_state == "congo=t61rcWkgMzE"


def test_an_unsampled_or_parentless_span_encodes_its_flags_and_no_parent():
    s = Span("0" * 16 + "00000000000000ab", "00000000000000ab", None, False, "egress", CLIENT, 1)
    m = ExportTraceServiceRequest()
    m.ParseFromString(encode_export_request([s], Resource([], "envoy", "", "", "")))
    span = m.resource_spans[0].scope_spans[0].spans[0]
    assert span.parent_span_id == b"" and span.flags == 0x100 and span.kind == 3
    assert span.trace_id.hex() == "0" * 16 + "00000000000000ab"


@pytest.mark.parametrize("code,flags,host,headers", [
    (200, (), "10.0.0.1:80", ((b"x-request-id", b"abc"), (b"user-agent", b"curl"))),
    (503, ("UF", "URX"), "10.0.0.1:80", ((b"x-client-trace-id", b"c1"), (b"x-forwarded-proto", b"https"),
                                         (b"x-envoy-original-path", b"/orig\xe9"))),
    (None, (), None, ((b"x-envoy-downstream-service-cluster", b"front"), (b"user-agent", b"\xff\xfe"))),
])
def test_the_fast_request_attribute_path_writes_what_the_general_path_writes(code, flags, host, headers):
    from proxy.tracing import otlp
    from proxy.tracing.config import TracingConfig
    from proxy.tracing.otel_config import OpenTelemetryConfig
    from proxy.tracing.tags import Facts, request_attributes
    cfg = TracingConfig(OpenTelemetryConfig("x"), max_path_tag_length=5)
    f = Facts(headers, b"app:1", b"/path/long", b"POST", "HTTP/1.1", "127.0.0.1", code, 12, 34,
              flags, "svc" if host else None, host, None, cfg)
    r = Resource([], "envoy", "", "node-1", "z")
    general = otlp._attributes(request_attributes(f, "node-1", "z"), {})
    assert otlp._request_attributes_fast(f, r) == general
    assert otlp._request_attributes_fast(f, r) == general   # from the cache too
