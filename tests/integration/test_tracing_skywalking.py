"""HTTP tracing with the SkyWalking provider, end to end: real ftproxy instances, real upstreams
and a real SkyWalking collector (tests/skywalking_collector.py: grpclib, client-streaming
`TraceSegmentReportService/collect`, decoding with protobuf's own parser), all on loopback.
The expected segments and `sw8` headers are what real Envoy 1.40 sends for the same bootstraps
(Envoy's skywalking example, run with three Envoys against the same collector;
tests/differential/test_skywalking_envoy.py compares them directly)."""

from __future__ import annotations

import base64
import http.client
import json
import uuid

import pytest
from grpclib.const import Status

from proxy.config.load import parse_bootstrap
from proxy.tracing import exporter, skywalking_exporter

from tests.ports import free_port

from ..skywalking_collector import SkyWalkingCollector
from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .test_tracing_zipkin import EXAMPLES, _ports, _run_example, _Service, _wait

SKYWALKING = {"name": "envoy.tracers.skywalking", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig",
    "grpc_service": {"envoy_grpc": {"cluster_name": "skywalking"}, "timeout": "0.25s"},
    "client_config": {"service_name": "front-svc", "instance_name": "front-1"}}}
OAP = ("skywalking-oap", 11800)


@pytest.fixture(autouse=True)
def quick_handover(monkeypatch):
    """Workers hand segments over within 1 s; tests wait less. Retries start sooner."""
    monkeypatch.setattr(exporter, "WORKER_HOLD", 0.05)
    monkeypatch.setattr(skywalking_exporter, "RETRY_INITIAL", 0.1)
    monkeypatch.setattr(skywalking_exporter, "RETRY_MAX", 0.2)


@pytest.fixture
def collector():
    c = SkyWalkingCollector()
    yield c
    c.close()


def sw8_fields(value: str) -> list:
    """An sw8 value decoded: [sample, trace, segment, span id, service, instance, endpoint,
    target]."""
    f = value.split("-")
    assert len(f) == 8, value
    return [f[0], *(base64.b64decode(x).decode() for x in f[1:3]), int(f[3]),
            *(base64.b64decode(x).decode() for x in f[4:])]


def _get(port: int, path: str, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def _by_service(collector, trace: str) -> dict:
    return {(s["service"], s["serviceInstance"]): s for s in collector.segments
            if s["traceId"] == trace}


ENTRY_TAGS = ["node_id", "zone", "guid:x-request-id", "url", "http.method", "downstream_cluster",
              "user_agent", "http.protocol", "request_size", "response_size", "component",
              "upstream_cluster", "upstream_cluster.name", "status_code", "response_flags"]
EXIT_TAGS = ["http.protocol", "upstream_address", "component", "upstream_cluster",
             "upstream_cluster.name", "status_code", "response_flags"]


# -- Envoy's skywalking example: front-proxy -> envoy-1 (-> envoy-2) -> service ----------------

def test_envoy_skywalking_example_segments_and_their_references(collector):
    """The example as published (tests/envoy_examples/skywalking), the test collector playing
    its OAP server (`skywalking-oap:11800`): /trace/1 crosses two proxies, /trace/2 three; each
    proxy reports one segment (Entry span 0, Exit span 1), each downstream segment's Entry
    span references the caller's Exit span, and the sw8 each service receives names the last
    proxy's segment, as real Envoy 1.40 does for the same example."""
    s1, s2 = _Service(1), _Service(2)
    servers = []
    try:
        envoy2 = _run_example(EXAMPLES / "skywalking/envoy-2.yaml",
                              {("service-2", 8080): s2.port, OAP: collector.port})
        servers.append(envoy2)
        envoy1 = _run_example(EXAMPLES / "skywalking/envoy-1.yaml",
                              {("service-1", 8080): s1.port, ("envoy-2", 10000): _ports(envoy2)[0],
                               OAP: collector.port})
        servers.append(envoy1)
        e1_in, e1_out = _ports(envoy1)
        front = _run_example(EXAMPLES / "skywalking/envoy-front-proxy.yaml",
                             {("envoy-1", 10000): e1_in, ("envoy-1", 10001): e1_out,
                              OAP: collector.port})
        servers.append(front)
        port = _ports(front)[0]
        assert _get(port, "/trace/1") == 200
        assert _get(port, "/trace/2?x=1") == 200

        # /trace/1: front (envoy-proxy-front) -> envoy-1 ingress (envoy-proxy-1-1) -> service-1.
        sample, trace, segment, span_id, service, instance, endpoint, target = sw8_fields(
            s1.headers[0]["sw8"])
        assert (sample, span_id, service, instance, endpoint) == (
            "1", 1, "envoy-proxy-1", "envoy-proxy-1-1", "/trace/1")
        assert target == f"127.0.0.1:{s1.port}"
        assert uuid.UUID(trace).version == 4
        assert _wait(lambda: len(_by_service(collector, trace)) == 2)
        segs = _by_service(collector, trace)
        f = segs[("envoy-proxy-front", "envoy-proxy-front")]
        e1 = segs[("envoy-proxy-1", "envoy-proxy-1-1")]
        assert e1["traceSegmentId"] == segment
        for seg, cluster, upstream in ((f, "envoy_cluster1", e1_in), (e1, "service_cluster1", s1.port)):
            entry, exit_ = seg["spans"]
            assert (entry["spanId"], entry["parentSpanId"], entry["spanType"]) == (0, -1, "Entry")
            assert (exit_["spanId"], exit_["parentSpanId"], exit_["spanType"]) == (1, 0, "Exit")
            for span in (entry, exit_):
                assert (span["spanLayer"], span["componentId"], span["isError"]) == ("Http", 9000, False)
                assert span["operationName"] == "/trace/1"
                assert span["startTime"] <= span["endTime"]
                assert not span["skipAnalysis"] and not span["logs"]
            assert entry["peer"] == "127.0.0.1"
            assert exit_["peer"] == f"127.0.0.1:{upstream}"
            assert [k for k, _ in entry["tags"]] == ENTRY_TAGS
            assert [k for k, _ in exit_["tags"]] == EXIT_TAGS
            tags = dict(entry["tags"])
            assert tags["url"] == f"http://127.0.0.1:{port}/trace/1"
            assert (tags["status_code"], tags["upstream_cluster"], tags["component"]) == (
                "200", cluster, "proxy")
            assert dict(exit_["tags"])["upstream_address"] == f"127.0.0.1:{upstream}"
            assert exit_["refs"] == []
        assert f["spans"][0]["refs"] == []
        assert e1["spans"][0]["refs"] == [{
            "refType": 0, "traceId": trace, "parentTraceSegmentId": f["traceSegmentId"],
            "parentSpanId": 1, "parentService": "envoy-proxy-front",
            "parentServiceInstance": "envoy-proxy-front", "parentEndpoint": "/trace/1",
            "networkAddressUsedAtPeer": f"127.0.0.1:{e1_in}"}]

        # /trace/2?x=1: front -> envoy-1's egress listener (envoy-proxy-1-2) -> envoy-2
        # (envoy-proxy-2-0) -> service-2; the query is part of the operation name, as Envoy's.
        fields = sw8_fields(s2.headers[0]["sw8"])
        trace2 = fields[1]
        assert fields[4:] == ["envoy-proxy-2", "envoy-proxy-2-0", "/trace/2?x=1",
                              f"127.0.0.1:{s2.port}"]
        assert _wait(lambda: len(_by_service(collector, trace2)) == 3)
        segs = _by_service(collector, trace2)
        f = segs[("envoy-proxy-front", "envoy-proxy-front")]
        e1 = segs[("envoy-proxy-1", "envoy-proxy-1-2")]
        e2 = segs[("envoy-proxy-2", "envoy-proxy-2-0")]
        assert e2["traceSegmentId"] == fields[2]
        chain = ((f, e1, e1_out), (e1, e2, _ports(envoy2)[0]))
        for parent, child, at in chain:
            ref = child["spans"][0]["refs"][0]
            assert (ref["parentTraceSegmentId"], ref["parentSpanId"], ref["parentService"],
                    ref["parentServiceInstance"], ref["parentEndpoint"],
                    ref["networkAddressUsedAtPeer"]) == (
                parent["traceSegmentId"], 1, parent["service"], parent["serviceInstance"],
                "/trace/2?x=1", f"127.0.0.1:{at}")
        assert [s["spans"][0]["operationName"] for s in (f, e1, e2)] == ["/trace/2?x=1"] * 3
    finally:
        for server in reversed(servers):
            server.request_shutdown()
        s1.close()
        s2.close()


# -- one ftproxy, a real upstream and the test collector ---------------------------------------

def _config(upstream_port: int, collector_port: int, provider=None, child=True, node=None,
            **tracing) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"},
               "decorator": {"operation": "decorated"}}]
    sw_cluster = static_cluster("skywalking", collector_port)
    sw_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    cfg = front_proxy_config(routes, [static_cluster("app", upstream_port), sw_cluster],
                             tracing={"provider": provider or SKYWALKING, **tracing})
    if child:
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["http_filters"][0]["typed_config"]["start_child_span"] = True
    if node is not None:
        cfg["node"] = node
    return cfg


def _provider(**client_config) -> dict:
    typed = dict(SKYWALKING["typed_config"])
    typed["client_config"] = client_config
    return {**SKYWALKING, "typed_config": typed}


def _ask(port: int, path: str, headers: dict | None = None) -> tuple[int, dict]:
    """(status, the echo upstream's answer: what it received)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, json.loads(body) if body.startswith(b"{") else {}


def test_a_request_segment_its_sw8_and_the_stream_metadata(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, provider=_provider(
        service_name="svc", instance_name="inst", backend_token="tok-1")))
    try:
        status, answer = _ask(p.port, "/a/b?c=d", {"user-agent": "UA"})
        assert status == 200
        fields = sw8_fields(answer["headers"]["sw8"])
        assert fields[0] == "1" and fields[3:] == [1, "svc", "inst", "/a/b?c=d",
                                                   f"127.0.0.1:{upstream.port}"]
        assert p.wait_for(lambda: len(collector.segments) == 1)
        seg = collector.segments[0]
        assert (seg["traceId"], seg["traceSegmentId"]) == (fields[1], fields[2])
        assert (seg["service"], seg["serviceInstance"]) == ("svc", "inst")
        entry, exit_ = seg["spans"]
        # The route decorator does not rename SkyWalking spans (Envoy's setOperation is a no-op).
        assert entry["operationName"] == exit_["operationName"] == "/a/b?c=d"
        assert dict(entry["tags"])["user_agent"] == "UA"
        metadata = collector.streams[0]
        assert metadata["authentication"] == "tok-1"
        assert "deadline" not in metadata   # a long-lived stream: no grpc-timeout
        assert len(collector.streams) == 1  # one stream, every segment on it
        # (the collector may read the segment before the main thread counts it as sent)
        assert p.wait_for(lambda: p.counters()["tracing.skywalking.segments_sent"] == 1)
        assert p.wait_for(lambda: p.counters().get("cluster.skywalking.upstream_rq_total") == 1)
    finally:
        p.stop()


def test_a_prefix_rewrite_names_the_exit_span_by_the_upstream_path(upstream, collector):
    cfg = _config(upstream.port, collector.port)
    route = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["prefix_rewrite"] = "/inner/"
    p = ProxyUnderTest(cfg)
    try:
        status, answer = _ask(p.port, "/x")
        assert status == 200 and answer["path"] == "/inner/x"
        assert sw8_fields(answer["headers"]["sw8"])[6] == "/x"   # the endpoint: the entry's
        assert p.wait_for(lambda: len(collector.segments) == 1)
        entry, exit_ = collector.segments[0]["spans"]
        assert (entry["operationName"], exit_["operationName"]) == ("/x", "/inner/x")
    finally:
        p.stop()


def test_a_callers_sw8_joins_its_trace_and_a_bad_one_starts_a_new_trace(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port))
    caller = "1-" + "-".join(base64.b64encode(x.encode()).decode() for x in (
        "trace-a", "seg-a")) + "-7-" + "-".join(base64.b64encode(x.encode()).decode() for x in (
            "up-svc", "up-inst", "/up", "10.0.0.1:80"))
    try:
        _, answer = _ask(p.port, "/joined", {"sw8": caller})
        fields = sw8_fields(answer["headers"]["sw8"])
        assert fields[1] == "trace-a" and fields[2] != "seg-a"
        for bad in ("garbage", "2-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw-YWRkcg==",
                    "1-dA==-cw==-x-c3Zj-aW5zdA==-L2Vw-YWRkcg==", "1-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw"):
            _, answer = _ask(p.port, "/bad", {"sw8": bad})
            fields = sw8_fields(answer["headers"]["sw8"])
            assert uuid.UUID(fields[1]).version == 4
        assert p.wait_for(lambda: len(collector.segments) == 5)
        segments = collector.segments
        joined = next(s for s in segments if s["traceId"] == "trace-a")
        assert joined["spans"][0]["refs"] == [{
            "refType": 0, "traceId": "trace-a", "parentTraceSegmentId": "seg-a", "parentSpanId": 7,
            "parentService": "up-svc", "parentServiceInstance": "up-inst", "parentEndpoint": "/up",
            "networkAddressUsedAtPeer": "10.0.0.1:80"}]
        assert all(not s["spans"][0]["refs"] for s in segments if s is not joined)
    finally:
        p.stop()


def test_without_the_routers_upstream_span_no_sw8_is_sent_and_a_callers_passes_on(
        upstream, collector):
    """cpp2sky makes sw8 from an Exit span only: without start_child_span the segment is one
    Entry span and the request's own sw8 (if any) reaches the upstream unchanged."""
    p = ProxyUnderTest(_config(upstream.port, collector.port, child=False))
    try:
        _, answer = _ask(p.port, "/plain")
        assert "sw8" not in answer["headers"]
        _, answer = _ask(p.port, "/passed", {"sw8": FOREIGN_SW8})
        assert answer["headers"]["sw8"] == FOREIGN_SW8
        assert p.wait_for(lambda: len(collector.segments) == 2)
        assert [len(s["spans"]) for s in collector.segments] == [1, 1]
        assert collector.segments[1]["traceId"] == "t"
    finally:
        p.stop()


FOREIGN_SW8 = "1-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw-YWRkcg=="


def test_an_untraced_request_gets_no_segment_unless_it_carries_sw8(upstream, collector):
    """Envoy 1.40: without sw8 an untraced request is a null span (nothing reported, nothing
    injected); a caller's sw8 is joined whatever the decision."""
    p = ProxyUnderTest(_config(upstream.port, collector.port, random_sampling={"value": 0}))
    try:
        _, answer = _ask(p.port, "/untraced")
        assert "sw8" not in answer["headers"]
        _, answer = _ask(p.port, "/joined", {"sw8": FOREIGN_SW8})
        assert sw8_fields(answer["headers"]["sw8"])[1] == "t"
        assert p.wait_for(lambda: len(collector.segments) == 1)
        assert collector.segments[0]["spans"][0]["operationName"] == "/joined"
        assert p.counters()["http.ingress_http.tracing.not_traceable"] == 2
    finally:
        p.stop()


def test_an_error_response_marks_both_spans_is_error(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port))
    try:
        assert _ask(p.port, "/status/503")[0] == 503
        assert p.wait_for(lambda: len(collector.segments) == 1)
        for span in collector.segments[0]["spans"]:
            tags = dict(span["tags"])
            assert span["isError"] and tags["error"] == "true" and tags["status_code"] == "503"
    finally:
        p.stop()


def test_service_and_instance_default_to_the_node_then_envoyproxy(upstream, collector):
    provider = _provider()
    p = ProxyUnderTest(_config(upstream.port, collector.port, provider=provider,
                               node={"id": "node-7", "cluster": "cluster-7"}))
    try:
        _, answer = _ask(p.port, "/n")
        assert sw8_fields(answer["headers"]["sw8"])[4:6] == ["cluster-7", "node-7"]
        assert p.wait_for(lambda: len(collector.segments) == 1)
    finally:
        p.stop()
    p = ProxyUnderTest(_config(upstream.port, collector.port, provider=provider))
    try:
        _, answer = _ask(p.port, "/n")
        assert sw8_fields(answer["headers"]["sw8"])[4:6] == ["EnvoyProxy", "EnvoyProxy"]
        assert p.wait_for(lambda: len(collector.segments) == 2)
        assert [(s["service"], s["serviceInstance"]) for s in collector.segments] == [
            ("cluster-7", "node-7"), ("EnvoyProxy", "EnvoyProxy")]
    finally:
        p.stop()


def test_segments_wait_while_no_collector_listens_and_are_flushed_when_one_does(upstream):
    port = free_port()
    p = ProxyUnderTest(_config(upstream.port, port, provider=_provider(max_cache_size=3)))
    late = None
    try:
        for i in range(5):
            assert _ask(p.port, f"/{i}")[0] == 200   # requests never wait on the collector
        c = p.counters
        assert p.wait_for(lambda: c().get("tracing.skywalking.segments_dropped", 0) == 2)
        assert c()["tracing.skywalking.segments_sent"] == 0
        assert p.wait_for(lambda: c().get("cluster.skywalking.upstream_cx_connect_fail", 0) >= 1)
        late = SkyWalkingCollector(port=port)
        assert p.wait_for(lambda: len(late.segments) == 3, timeout=10)
        # The oldest went: the cache keeps the last max_cache_size.
        assert [s["spans"][0]["operationName"] for s in late.segments] == ["/2", "/3", "/4"]
        assert p.wait_for(lambda: c()["tracing.skywalking.segments_sent"] == 3)
        # (stream_ready counts each segment sent, then segments_flushed, and cache_flushed
        # once the cache is through: wait for that last one.)
        assert p.wait_for(lambda: c().get("tracing.skywalking.cache_flushed") == 1)
        counters = c()
        assert counters["tracing.skywalking.segments_flushed"] == 3
        assert counters["tracing.skywalking.segments_sent"] == 3
        assert counters["tracing.skywalking.cache_flushed"] == 1
        assert _ask(p.port, "/after")[0] == 200
        assert p.wait_for(lambda: len(late.segments) == 4)
        assert p.wait_for(lambda: c()["tracing.skywalking.segments_sent"] == 4)
    finally:
        p.stop()
        if late is not None:
            late.close()


def test_a_collector_ending_the_stream_gets_a_new_one(upstream):
    refusing = SkyWalkingCollector(status=Status.UNAVAILABLE)
    p = ProxyUnderTest(_config(upstream.port, refusing.port))
    try:
        assert p.wait_for(lambda: len(refusing.streams) >= 3)   # reopened after each end
        assert _ask(p.port, "/still-served")[0] == 200
        assert p.counters()["cluster.skywalking.upstream_rq_total"] >= 3
    finally:
        p.stop()
        refusing.close()


def test_skywalking_config_errors_name_their_paths(upstream):
    def err(typed: dict) -> str:
        provider = {**SKYWALKING, "typed_config": {
            "@type": SKYWALKING["typed_config"]["@type"], **typed}}
        with pytest.raises(Exception) as e:
            parse_bootstrap(_config(upstream.port, 1, provider=provider))
        return str(e.value)

    prefix = "tracing.provider.typed_config"
    assert f"{prefix}.grpc_service: is required" in err({})
    assert f"{prefix}.grpc_service.google_grpc: not supported yet" in err(
        {"grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "y"}}})
    assert f'{prefix}.client_config: unknown field "nosuch"' in err(
        {"grpc_service": {"envoy_grpc": {"cluster_name": "skywalking"}},
         "client_config": {"nosuch": 1}})
    # Envoy 1.40 does not check the tracer's cluster at load (its gRPC client fails instead).
    parse_bootstrap(_config(upstream.port, 1, provider={**SKYWALKING, "typed_config": {
        **SKYWALKING["typed_config"], "grpc_service": {"envoy_grpc": {"cluster_name": "nosuch"}}}}))
