"""Tracing's pure parts: B3 extraction and injection (proxy/tracing/zipkin.py), the sampling
decision from x-request-id (proxy/tracing/tracer.py) and the config (proxy/tracing/config.py),
against the values real Envoy 1.40 gives (see tests/integration/test_tracing_zipkin.py)."""

from __future__ import annotations

import json

import pytest

from proxy.config.reader import ConfigError
from proxy.http.headers import Headers
from proxy.tracing.config import Sampling, parse_route_tracing, parse_tracing
from proxy.tracing.exporter import LocalInfo
from proxy.tracing.tracer import CLIENT_FORCED, NOT_TRACEABLE, SAMPLING, SERVICE_FORCED, WorkerTracer
from proxy.tracing.zipkin import CLIENT, SERVER, InvalidContext, Span, encode_spans, extract, inject

ZIPKIN = {"name": "envoy.tracers.zipkin", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
    "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
    "collector_endpoint_version": "HTTP_JSON"}}


def _get(headers: dict):
    return headers.get


@pytest.mark.parametrize("b3,context,sampled", [
    ("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
     ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "05e3ac9a4f6e3b90"), True),
    ("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
     ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", None), True),
    ("a57d3eff7ee56343-e457b5a2e4d86bd1-0", ("a57d3eff7ee56343", "e457b5a2e4d86bd1", None), False),
    ("a57d3eff7ee56343-e457b5a2e4d86bd1", ("a57d3eff7ee56343", "e457b5a2e4d86bd1", None), None),
    ("0", None, False),
    ("d", None, True),
])
def test_b3_single_header(b3, context, sampled):
    for traced in (False, True):
        got = extract(_get({"b3": b3}), traced)
        assert got == (context, traced if sampled is None else sampled, True)


@pytest.mark.parametrize("b3", ["", "x", "a57d3eff7ee56343", "a57d3eff7ee56343-e457b5a2e4d86bd1-x",
                                "a57d3eff7ee56343-e457b5a2e4d86bd1-1-05e3", "zz7d3eff7ee56343-e457b5a2e4d86bd1"])
def test_a_b3_header_that_does_not_parse_is_an_invalid_context(b3):
    with pytest.raises(InvalidContext):
        extract(_get({"b3": b3}), True)


def test_b3_multi_headers_and_their_sampled_flag():
    h = {"x-b3-traceid": "abc", "x-b3-spanid": "DEF", "x-b3-parentspanid": "1"}
    assert extract(_get(h), True) == (("0000000000000abc", "0000000000000def", "0000000000000001"),
                                      True, False)
    assert extract(_get({**h, "x-b3-sampled": "0"}), True)[1] is False
    assert extract(_get({**h, "x-b3-sampled": "true"}), False)[1] is True
    assert extract(_get({**h, "x-b3-flags": "1"}), False)[1] is False  # flags are not read
    assert extract(_get({"x-b3-traceid": "abc"}), True) == (None, True, False)  # no span id
    with pytest.raises(InvalidContext):
        extract(_get({"x-b3-traceid": "zzz", "x-b3-spanid": "def"}), True)


def test_injection_keeps_the_format_the_request_came_with():
    multi = Headers([])
    inject(Span("0000000000000abc", "0000000000000def", None, False, "n", SERVER, 0), multi)
    assert multi.fields == [(b"x-b3-traceid", b"0000000000000abc"), (b"x-b3-spanid", b"0000000000000def"),
                            (b"x-b3-sampled", b"0")]
    single = Headers([(b"b3", b"old")])
    inject(Span("t" * 16, "s" * 16, "p" * 16, True, "n", SERVER, 0, single_header=True), single)
    assert single.fields == [(b"b3", b"tttttttttttttttt-ssssssssssssssss-1-pppppppppppppppp")]


def test_json_v2_encoding_as_envoy_sends_it():
    span = Span("0000000000000abc", "0000000000000def", None, True, "op \"q\"", SERVER, 1000)
    span.duration_us = 20
    span.tags = {"http.method": "GET"}
    child = span.child_span("0000000000000001", "router c egress", 1000)
    child.duration_us = 10
    child.tags = {"component": "proxy"}
    span.child = child
    local = LocalInfo("node-1", "svc", "", "10.0.0.1")
    text = encode_spans([span], local.endpoint_json(), local.common_tags_json(), True)
    server, client = json.loads(text)
    endpoint = {"serviceName": "svc", "ipv4": "10.0.0.1", "port": 0}
    assert server == {"traceId": "0000000000000abc", "id": "0000000000000def", "kind": "SERVER",
                      "name": 'op "q"', "timestamp": 1000, "duration": 20, "localEndpoint": endpoint,
                      "annotations": [{"timestamp": 1020, "value": "ss"}], "shared": True,
                      "tags": {"component": "proxy", "node_id": "node-1", "http.method": "GET"}}
    assert client["kind"] == CLIENT and client["parentId"] == "0000000000000def"
    assert client["tags"] == {"component": "proxy"}
    assert client["annotations"] == [{"timestamp": 1010, "value": "cr"}] and "shared" not in client
    assert "shared" not in json.loads(encode_spans([span], "{}", "", False))[0]


class _Tracer(WorkerTracer):
    """The decision alone: a WorkerTracer without a worker."""

    def __init__(self, cfg) -> None:
        import random
        self.config = cfg
        self.rng = random.Random(1)


def _decide(cfg, headers: dict, route_tracing=None):
    h = Headers([(k.encode(), v.encode()) for k, v in headers.items()])
    route = type("R", (), {"tracing": route_tracing})()
    reason = _Tracer(cfg)._decide(h, dict(reversed(h.fields)), route)
    return reason, h.get_str("x-request-id")


def test_sampling_decision_from_the_request_id_as_envoy():
    rid = "00000010-1111-4222-8333-444444444444"  # first 32 bits: 16, so 16 % 10000 = 16
    cfg = parse_tracing({"provider": ZIPKIN, "random_sampling": {"value": 0.17}}, "t")
    assert cfg.random_sampling == Sampling(17, 10_000)
    reason, out = _decide(cfg, {"x-request-id": rid})
    assert reason == SAMPLING and out[14] == "9"
    cfg = parse_tracing({"provider": ZIPKIN, "random_sampling": {"value": 0.16}}, "t")
    assert _decide(cfg, {"x-request-id": rid}) == (NOT_TRACEABLE, rid)
    # An earlier hop's mark is honoured; overall_sampling can veto (and rewrites the mark).
    for nibble, reason in (("9", SAMPLING), ("a", SERVICE_FORCED), ("b", CLIENT_FORCED)):
        marked = rid[:14] + nibble + rid[15:]
        assert _decide(cfg, {"x-request-id": marked}) == (reason, marked)
    veto = parse_tracing({"provider": ZIPKIN, "overall_sampling": {"value": 0}}, "t")
    reason, out = _decide(veto, {"x-request-id": rid[:14] + "a" + rid[15:]})
    assert reason == NOT_TRACEABLE and out[14] == "4"
    # x-client-trace-id under client_sampling; no (or a short) request id: not traceable.
    assert _decide(cfg, {"x-request-id": rid, "x-client-trace-id": "c"})[0] == CLIENT_FORCED
    assert _decide(cfg, {})[0] == NOT_TRACEABLE
    # A route's tracing replaces the HCM's samplings (each 100 % when unset).
    route = parse_route_tracing({"client_sampling": {"numerator": 0}}, "r")
    assert _decide(cfg, {"x-request-id": rid, "x-client-trace-id": "c"}, route)[0] == SAMPLING


def test_tracing_config_defaults_and_refusals():
    cfg = parse_tracing({"provider": ZIPKIN}, "t")
    assert (cfg.random_sampling, cfg.max_path_tag_length, cfg.provider.shared_span_context) == (
        Sampling(10_000, 10_000), 256, True)
    with pytest.raises(ConfigError, match=r"t.provider: is required"):
        parse_tracing({}, "t")
    with pytest.raises(ConfigError, match=r"t.random_sampling.value: must be within"):
        parse_tracing({"provider": ZIPKIN, "random_sampling": {"value": 101}}, "t")
    bad = {**ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "trace_context_option":
                                      "USE_B3_WITH_W3C_PROPAGATION"}}
    with pytest.raises(ConfigError, match=r"trace_context_option: not supported yet"):
        parse_tracing({"provider": bad}, "t")
    unset = {**ZIPKIN, "typed_config": {k: v for k, v in ZIPKIN["typed_config"].items()
                                         if k != "collector_endpoint_version"}}
    with pytest.raises(ConfigError, match=r"collector_endpoint_version: must be set \(HTTP_JSON\)"):
        parse_tracing({"provider": unset}, "t")
    wrapped = {**ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "shared_span_context": {"value": False}}}
    assert parse_tracing({"provider": wrapped}, "t").provider.shared_span_context is False


def test_environment_custom_tag_is_read_at_load(monkeypatch):
    monkeypatch.setenv("FTPROXY_TEST_TAG", "from-env")
    cfg = parse_tracing({"provider": ZIPKIN, "custom_tags": [
        {"tag": "e", "environment": {"name": "FTPROXY_TEST_TAG"}},
        {"tag": "d", "environment": {"name": "FTPROXY_NO_SUCH_VAR", "default_value": "dv"}}]}, "t")
    assert [(t.tag, t.value) for t in cfg.custom_tags] == [("e", "from-env"), ("d", "dv")]


class _FakeMain:
    """The main Dispatcher's surface the exporter uses, without a loop: nothing connects."""

    def __init__(self) -> None:
        self.deferred = []

    def create_timer(self, cb):
        raise AssertionError("not started in these tests")

    def defer(self, fn) -> None:
        self.deferred.append(fn)


class _OutstandingPost:
    """Stands for a report still out (the exporter sends one at a time)."""


def test_exporter_sends_one_report_at_a_time_and_bounds_what_waits():
    from proxy.stats.store import StatsRegistry
    from proxy.tracing import exporter
    from proxy.tracing.config import parse_zipkin
    registry = StatsRegistry()
    zipkin = parse_zipkin(ZIPKIN["typed_config"], "z")
    e = exporter.ZipkinExporter(zipkin, LocalInfo(cluster="svc"), _FakeMain(),
                                registry.new_store("main"), lambda: {})
    span = Span("0000000000000abc", "0000000000000def", None, True, "n", SERVER, 0)
    e.in_flight = _OutstandingPost()
    e.receive([span] * 10)
    assert len(e.pending) == 10  # waits for the report that is out
    e.receive([span] * exporter.MAX_PENDING_SPANS)
    counters = dict(registry.snapshot().counters)
    assert e.pending == [] and counters["tracing.zipkin.reports_failed"] == 1
    assert counters["tracing.zipkin.spans_sent"] == 10 + exporter.MAX_PENDING_SPANS
    e.in_flight = None
    e.receive([span] * 5)  # no such cluster (a removed one): skipped, counted
    counters = dict(registry.snapshot().counters)
    assert counters["tracing.zipkin.reports_skipped_no_cluster"] == 1
