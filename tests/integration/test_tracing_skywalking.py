"""HTTP tracing with the SkyWalking provider, end to end: real ftproxy instances, real upstreams
and a real SkyWalking collector (tests/skywalking_collector.py: grpclib, client-streaming
`TraceSegmentReportService/collect`, decoding with protobuf's own parser), all on loopback.
The expected segments and `sw8` headers are what real Envoy 1.40 sends for the same bootstraps
(Envoy's skywalking example, run with three Envoys against the same collector;
tests/differential/test_skywalking_envoy.py compares them directly)."""

from __future__ import annotations

import base64
import http.client
import uuid

import pytest
from grpclib.const import Status

from proxy.config.load import parse_bootstrap
from proxy.tracing import exporter, skywalking_exporter

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
