"""HTTP tracing with the OpenTelemetry provider, end to end: real ftproxy instances, a real
upstream and a real OTLP/gRPC collector (tests/otlp_collector.py: grpclib, decoding with the
`opentelemetry-proto` package's classes), all on loopback. The expected spans and headers are
what real Envoy 1.40 sends for the same config (tests/differential/cases/tracing_otel.yaml
compares the propagation with Envoy's directly)."""

from __future__ import annotations

import http.client
import json
import re

import pytest
from grpclib.const import Status

from proxy import __version__
from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.tracing import exporter

from tests.ports import free_port

from ..otlp_collector import OtlpCollector, OtlpHttpCollector
from .harness import ProxyUnderTest, front_proxy_config, static_cluster

OTEL = {"name": "envoy.tracers.opentelemetry", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
    "service_name": "front-svc"}}
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])$")


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch):
    """Envoy flushes every 5 s and workers hand spans over within 1 s; tests wait less."""
    monkeypatch.setattr(exporter, "FLUSH_INTERVAL", 0.2)
    monkeypatch.setattr(exporter, "WORKER_HOLD", 0.05)


@pytest.fixture
def collector():
    c = OtlpCollector()
    yield c
    c.close()


def _config(upstream_port: int, collector_port: int, routes=None, node=None, direction=None,
            provider=None, **tracing) -> dict:
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    otel_cluster = static_cluster("otel", collector_port)
    otel_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    cfg = front_proxy_config(routes, [static_cluster("app", upstream_port), otel_cluster],
                             tracing={"provider": provider or OTEL, **tracing})
    cfg["node"] = node or {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"}}
    if direction:
        cfg["static_resources"]["listeners"][0]["traffic_direction"] = direction
    return cfg


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"host": "app.local", **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, json.loads(body) if body.startswith(b"{") else {}


def _context(answer: dict) -> tuple[str, str, str]:
    """(trace id, span id, sampled) of the traceparent the upstream received."""
    m = TRACEPARENT.match(answer["headers"]["traceparent"])
    assert m, answer["headers"]["traceparent"]
    return m.group(1), m.group(2), m.group(3)


def test_each_request_gets_a_server_span_with_envoys_attributes_and_traceparent_goes_upstream(
        upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, custom_tags=[
        {"tag": "lit", "literal": {"value": "v1"}},
        {"tag": "hdr", "request_header": {"name": "x-foo", "default_value": "dflt"}}],
        max_path_tag_length=6))
    try:
        answers = [_get(p.port, f"/p{i}?q=1", {"user-agent": "UA", "x-foo": "bar"})[1]
                   for i in range(5)]
        assert p.wait_for(lambda: len(collector.spans) == 5)
        metadata, _ = collector.reports[0]
        assert metadata.get("x-envoy-internal") is None  # no Envoy-internal headers invented
        by_id = {s["span_id"]: s for s in collector.spans}
        for i, answer in enumerate(answers):
            trace, span_id, sampled = _context(answer)
            assert sampled == "1"
            # Envoy's OpenTelemetry tracer: W3C only, no B3, and tracestate sent (empty).
            assert not any(k.startswith("x-b3-") or k == "b3" for k in answer["headers"])
            assert answer["headers"]["tracestate"] == ""
            rid = answer["headers"]["x-request-id"]
            assert rid[14] == "9"  # Envoy's UUID trace mark: sampled
            span = by_id[span_id]
            assert span["trace_id"] == trace and span["parent_span_id"] == ""
            assert span["kind"] == "SERVER" and span["name"] == "ingress"
            assert span["flags"] == 0x101   # has-is-remote, not remote; sampled
            assert span["end"] > span["start"] > 0
            assert span["status"] == 0
            assert span["resource"] == {
                "service.name": "front-svc", "telemetry.sdk.name": "ftproxy",
                "telemetry.sdk.version": f"ftproxy/{__version__}",
                "telemetry.sdk.language": "python"}
            assert span["scope"] == ("envoy", f"ftproxy/{__version__}")
            assert span["attributes"] == {
                "node_id": "node-1", "zone": "z1", "guid:x-request-id": rid,
                "http.url": f"http://app.local/p{i}?q=", "http.method": "GET",
                "downstream_cluster": "-", "user_agent": "UA", "http.protocol": "HTTP/1.1",
                "peer.address": "127.0.0.1", "request_size": "0",
                "response_size": span["attributes"]["response_size"], "component": "proxy",
                "upstream_cluster": "app", "upstream_cluster.name": "app",
                "http.status_code": "200", "response_flags": "-", "lit": "v1", "hdr": "bar"}
        c = p.counters()
        assert c["tracing.opentelemetry.spans_sent"] == 5
        assert c["tracing.opentelemetry.spans_dropped"] == 0
        assert c["http.ingress_http.tracing.random_sampling"] == 5
    finally:
        p.stop()


def test_an_incoming_traceparent_makes_the_span_its_child_sampled_with_the_decision_and_tracestate_kept(
        upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, random_sampling={"value": 0}))
    try:
        # As Envoy 1.40: a joined span is sampled when the caller's flag and the HCM's
        # decision (here x-request-id's mark, random sampling being off) both are.
        marked = "11111111-2222-9333-8444-555555555555"
        _, sampled = _get(p.port, "/s", {
            "traceparent": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "tracestate": "congo=t61rcWkgMzE", "x-request-id": marked})
        _, unsampled = _get(p.port, "/u", {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "x-request-id": marked})
        _, undecided = _get(p.port, "/n", {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        trace, span_id, flag = _context(sampled)
        assert (trace, flag) == ("0af7651916cd43dd8448eb211c80319c", "1")
        assert span_id != "b7ad6b7169203331"
        assert sampled["headers"]["tracestate"] == "congo=t61rcWkgMzE"
        assert _context(unsampled)[2] == "0"
        assert _context(undecided)[2] == "0"
        assert p.wait_for(lambda: len(collector.spans) == 1)
        span = collector.spans[0]
        assert span["span_id"] == span_id and span["parent_span_id"] == "b7ad6b7169203331"
        assert span["trace_id"] == trace and span["trace_state"] == "congo=t61rcWkgMzE"
        assert span["flags"] == 0x301   # its parent is remote
        c = p.counters()
        assert c["http.ingress_http.tracing.random_sampling"] == 2
        assert c["http.ingress_http.tracing.not_traceable"] == 1
        assert c["tracing.opentelemetry.spans_sent"] == 1
    finally:
        p.stop()


def test_an_unparsable_traceparent_means_no_span_and_headers_pass_unchanged(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port))
    try:
        for bad in ("garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"):
            _, answer = _get(p.port, "/bad", {"traceparent": bad})
            assert answer["headers"]["traceparent"] == bad
            assert "tracestate" not in answer["headers"]
        # B3 is not OpenTelemetry's: passed through, and a new W3C trace is started.
        _, b3 = _get(p.port, "/b3", {"x-b3-traceid": "0000000000000abc",
                                     "x-b3-spanid": "0000000000000def", "x-b3-sampled": "1"})
        assert b3["headers"]["x-b3-traceid"] == "0000000000000abc"
        assert _context(b3)[0] != "0" * 16 + "0000000000000abc"
        assert p.wait_for(lambda: len(collector.spans) == 1)
    finally:
        p.stop()


def test_two_ftproxy_hops_share_one_trace_with_envoys_parent_child_structure(upstream, collector):
    """Hop 1 is egress (traffic_direction OUTBOUND) with spawn_upstream_span and a decorator;
    hop 2 is ingress: its server span is the child of hop 1's upstream (CLIENT) span."""
    inner = ProxyUnderTest(_config(upstream.port, collector.port, provider={
        **OTEL, "typed_config": {**OTEL["typed_config"], "service_name": "svc-b"}}))
    outer = ProxyUnderTest(_config(inner.port, collector.port, direction="OUTBOUND",
                                   spawn_upstream_span=True, provider={
        **OTEL, "typed_config": {**OTEL["typed_config"], "service_name": "svc-a"}}, routes=[
            {"match": {"prefix": "/"}, "route": {"cluster": "app"},
             "decorator": {"operation": "callB"}}]))
    try:
        status, answer = _get(outer.port, "/x")
        assert status == 200
        assert outer.wait_for(lambda: len(collector.spans) == 3, timeout=10)
        spans = collector.spans
        server_a = next(s for s in spans if s["resource"]["service.name"] == "svc-a"
                        and s["kind"] == "SERVER")
        client_a = next(s for s in spans if s["kind"] == "CLIENT")
        server_b = next(s for s in spans if s["resource"]["service.name"] == "svc-b")
        assert {s["trace_id"] for s in spans} == {server_a["trace_id"]}
        assert server_a["name"] == "callB" and server_a["parent_span_id"] == ""
        assert client_a["name"] == "router app egress"
        assert client_a["parent_span_id"] == server_a["span_id"]
        assert client_a["flags"] == 0x101
        assert client_a["attributes"] == {
            "http.protocol": "HTTP/1.1", "upstream_address": f"127.0.0.1:{inner.port}",
            "peer.address": f"127.0.0.1:{inner.port}", "component": "proxy",
            "upstream_cluster": "app", "upstream_cluster.name": "app",
            "http.status_code": "200", "response_flags": "-"}
        assert server_b["parent_span_id"] == client_a["span_id"]
        assert server_b["flags"] == 0x301 and server_b["name"] == "callB"
        trace, span_id, sampled = _context(answer)
        assert (trace, span_id, sampled) == (server_a["trace_id"], server_b["span_id"], "1")
    finally:
        outer.stop()
        inner.stop()


def test_an_egress_span_without_upstream_span_is_a_client_span(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, direction="OUTBOUND"))
    try:
        _, answer = _get(p.port, "/e")
        assert p.wait_for(lambda: len(collector.spans) == 1)
        span = collector.spans[0]
        assert span["kind"] == "CLIENT" and span["name"] == "egress"
        assert _context(answer)[1] == span["span_id"]
    finally:
        p.stop()


def test_an_export_larger_than_the_http2_windows_goes_out_whole(upstream, collector, monkeypatch):
    """400 spans with long URLs make a message of several 64 KiB flow-control windows."""
    monkeypatch.setattr(exporter, "WORKER_HOLD", 5.0)
    monkeypatch.setattr(exporter, "WORKER_BATCH", 400)
    monkeypatch.setattr(exporter, "FLUSH_INTERVAL", 60.0)
    p = ProxyUnderTest(_config(upstream.port, collector.port, max_path_tag_length=2000))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        for i in range(400):
            conn.request("GET", f"/{i}/" + "x" * 1000, headers={"host": "app.local"})
            conn.getresponse().read()
        conn.close()
        assert p.wait_for(lambda: len(collector.spans) == 400, timeout=15)
        assert max(r.ByteSize() for _, r in collector.reports) > 2 * 65535
        assert all(len(s["attributes"]["http.url"]) > 1000 for s in collector.spans)
    finally:
        p.stop()


def test_a_5xx_span_has_error_status(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port))
    try:
        status, _ = _get(p.port, "/status/503")
        assert status == 503
        assert p.wait_for(lambda: len(collector.spans) == 1)
        span = collector.spans[0]
        assert span["status"] == 2 and span["attributes"]["error"] == "true"
        assert span["attributes"]["http.status_code"] == "503"
    finally:
        p.stop()


def test_max_cache_size_bounds_the_spans_waiting_and_counts_the_rest_dropped(
        upstream, collector, monkeypatch):
    monkeypatch.setattr(exporter, "WORKER_HOLD", 1.0)   # the worker hands the 4 spans over at once
    provider = {**OTEL, "typed_config": {**OTEL["typed_config"], "max_cache_size": 2}}
    p = ProxyUnderTest(_config(upstream.port, collector.port, provider=provider))
    try:
        for i in range(4):
            _get(p.port, f"/{i}")
        assert p.wait_for(lambda: p.counters().get("tracing.opentelemetry.spans_sent", 0)
                          + p.counters().get("tracing.opentelemetry.spans_dropped", 0) == 4,
                          timeout=5)
        c = p.counters()
        assert c["tracing.opentelemetry.spans_dropped"] == 2
        assert p.wait_for(lambda: len(collector.spans) == 2)
    finally:
        p.stop()


def test_collector_down_is_counted_and_the_proxy_keeps_serving(upstream):
    closed_port = free_port()  # nothing listens there
    p = ProxyUnderTest(_config(upstream.port, closed_port))
    try:
        for i in range(6):
            assert _get(p.port, f"/{i}")[0] == 200
        assert p.wait_for(lambda: p.counters().get("cluster.otel.upstream_cx_connect_fail", 0) >= 1)
        assert p.counters()["tracing.opentelemetry.spans_sent"] >= 1
        assert _get(p.port, "/after")[0] == 200
    finally:
        p.stop()


def test_a_collector_answering_an_error_status_is_not_retried(upstream):
    refusing = OtlpCollector(status=Status.UNAVAILABLE)
    p = ProxyUnderTest(_config(upstream.port, refusing.port))
    try:
        for i in range(5):
            _get(p.port, f"/{i}")
        assert p.wait_for(lambda: len(refusing.reports) == 1)
        assert _get(p.port, "/after")[0] == 200
        assert p.wait_for(lambda: len(refusing.reports) == 2)   # the next span's export
        assert p.counters()["cluster.otel.upstream_rq_total"] == 2
    finally:
        p.stop()
        refusing.close()


def test_trace_id_access_log_operator_gives_the_w3c_trace_id(upstream, collector, tmp_path):
    log = tmp_path / "access.log"
    cfg = _config(upstream.port, collector.port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log), "log_format": {"text_format_source": {"inline_string": "%TRACE_ID%\n"}}}}]
    p = ProxyUnderTest(cfg)
    try:
        _get(p.port, "/", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        _, fresh = _get(p.port, "/new")
        assert p.wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
        assert log.read_text().splitlines() == ["0af7651916cd43dd8448eb211c80319c", _context(fresh)[0]]
    finally:
        p.stop()


def test_otlp_over_http_posts_protobuf_to_the_uri_with_its_headers(upstream):
    collector = OtlpHttpCollector()
    provider = {**OTEL, "typed_config": {
        "@type": OTEL["typed_config"]["@type"], "service_name": "http-svc",
        "http_service": {"http_uri": {"uri": "http://otel.example:4318/v1/traces",
                                      "cluster": "otel", "timeout": "1s"},
                         "request_headers_to_add": [{"header": {"key": "X-Api-Key", "value": "k1"}}]}}}
    p = ProxyUnderTest(_config(upstream.port, collector.port, provider=provider))
    try:
        answers = [_get(p.port, f"/{i}")[1] for i in range(5)]
        assert p.wait_for(lambda: len(collector.spans) == 5)
        headers, _ = collector.reports[0]
        assert headers[":path"] == "/v1/traces" and headers["host"] == "otel.example:4318"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["x-api-key"] == "k1"
        assert headers["user-agent"] == f"OTel-OTLP-Exporter-ftproxy/{__version__}"
        spans = {s["span_id"]: s for s in collector.spans}
        for answer in answers:
            trace, span_id, _ = _context(answer)
            assert spans[span_id]["trace_id"] == trace
            assert spans[span_id]["resource"]["service.name"] == "http-svc"
        assert p.counters()["tracing.opentelemetry.spans_sent"] == 5
    finally:
        p.stop()
        collector.close()


def test_grpc_service_wins_when_both_are_set():
    from proxy.tracing.otel_config import parse_opentelemetry
    cfg = parse_opentelemetry({**OTEL["typed_config"], "http_service": {
        "http_uri": {"uri": "http://x/v1/traces", "cluster": "other", "timeout": "1s"}}}, "t")
    assert cfg.http is None and cfg.cluster_name == "otel"


def test_an_export_past_the_grpc_timeout_is_reset_and_counted_and_the_connection_kept(upstream):
    slow = OtlpCollector(delay=1.0)
    provider = {**OTEL, "typed_config": {**OTEL["typed_config"], "grpc_service": {
        "envoy_grpc": {"cluster_name": "otel"}, "timeout": "0.25s"}}}
    p = ProxyUnderTest(_config(upstream.port, slow.port, provider=provider))
    try:
        for i in range(5):
            _get(p.port, f"/{i}")
        # One export a flush (every 0.2 s here): on a loaded machine the five spans may take
        # more than one, each reset at its deadline.
        assert p.wait_for(lambda: p.counters().get("cluster.otel.upstream_rq_timeout", 0) >= 1, timeout=15)
        metadata, _ = slow.reports[0]
        assert 0 < metadata["deadline"] <= 0.25     # grpc-timeout: 250m
        # Every export the collector received was reset at its deadline and counted (under load
        # the proxy may reset one before the collector's handler saw it: never fewer counted).
        assert p.wait_for(lambda: p.counters()["cluster.otel.upstream_rq_timeout"] >= len(slow.reports))
        before = len(slow.reports)
        _get(p.port, "/after")
        assert p.wait_for(lambda: len(slow.reports) == before + 1)
        assert slow.reports[-1][0]["peer"] == metadata["peer"]   # the same connection
        assert p.counters()["cluster.otel.upstream_cx_total"] == 1
    finally:
        p.stop()
        slow.close()


@pytest.mark.parametrize("field,fragment", [
    ("sampler", "sampler: not supported yet"),
    ("resource_detectors", "resource_detectors: not supported yet"),
])
def test_unbuilt_fields_are_refused_by_name(field, fragment):
    value = [{"name": "x"}] if field == "resource_detectors" else {"name": "x"}
    provider = {**OTEL, "typed_config": {**OTEL["typed_config"], field: value}}
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_config(1, 2, provider=provider))
    assert fragment in str(e.value)


def test_google_grpc_is_refused_by_name():
    provider = {**OTEL, "typed_config": {**OTEL["typed_config"], "grpc_service": {
        "google_grpc": {"target_uri": "x", "stat_prefix": "y"}}}}
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_config(1, 2, provider=provider))
    assert "google_grpc: not supported yet" in str(e.value)


@pytest.mark.parametrize("provider", ["otel_http", "zipkin"])
def test_a_tls_collector_cluster_is_refused_by_name(provider):
    """Span exports other than OTLP over gRPC do not speak TLS: a collector cluster with a TLS
    transport_socket is refused at load rather than sent spans in the clear (OTLP over gRPC:
    tests/integration/test_grpc_tls.py)."""
    from .test_tracing_zipkin import ZIPKIN
    otel_http = {"name": OTEL["name"], "typed_config": {
        "@type": OTEL["typed_config"]["@type"], "http_service": {"http_uri": {
            "uri": "http://collector/v1/traces", "cluster": "otel", "timeout": "1s"}}}}
    cfg = _config(1, 2, provider=otel_http if provider == "otel_http" else {
        **ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "collector_cluster": "otel"}})
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "collector"}}
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == "otel":
            c["transport_socket"] = tls
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(cfg)
    assert 'tracing.provider: not supported yet (the collector cluster "otel" has a TLS' in str(e.value)
    raw = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == "otel":
            c["transport_socket"] = raw
    parse_bootstrap(cfg)


def test_an_unknown_grpc_cluster_loads_as_envoy_does(upstream):
    """Envoy 1.40 does not check the OpenTelemetry tracer's cluster at load."""
    provider = {**OTEL, "typed_config": {**OTEL["typed_config"], "grpc_service": {
        "envoy_grpc": {"cluster_name": "nosuch"}}}}
    parse_bootstrap(_config(upstream.port, 2, provider=provider))


# -- Envoy's opentelemetry example: front-proxy -> envoy-1 -> envoy-2 -> service-2 ------------

def test_envoy_opentelemetry_example_three_proxies_one_trace(collector):
    """The example as published (tests/envoy_examples/opentelemetry), the test collector
    playing its otel collector (`opentelemetry:4317`)."""
    from .test_tracing_zipkin import EXAMPLES, _ports, _run_example, _Service, _wait
    s1, s2 = _Service(1), _Service(2)
    otel = ("opentelemetry", 4317)
    servers = []
    try:
        envoy2 = _run_example(EXAMPLES / "opentelemetry/envoy-2.yaml",
                              {("service-2", 8080): s2.port, otel: collector.port})
        servers.append(envoy2)
        envoy1 = _run_example(EXAMPLES / "opentelemetry/envoy-1.yaml",
                              {("service-1", 8080): s1.port, ("envoy-2", 10000): _ports(envoy2)[0],
                               otel: collector.port})
        servers.append(envoy1)
        e1_in, e1_out = _ports(envoy1)
        front = _run_example(EXAMPLES / "opentelemetry/envoy-front-proxy.yaml",
                             {("envoy-1", 10000): e1_in, ("envoy-1", 10001): e1_out,
                              otel: collector.port})
        servers.append(front)
        port = _ports(front)[0]
        for path, text in (("/trace/1", "service 1"), ("/trace/2", "service 2")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse()
            assert f"Hello from behind Envoy ({text})!" in r.read().decode()
            conn.close()
        # /trace/2 crosses three proxies: front (egress: a CLIENT span), envoy-1's egress
        # listener (CLIENT, the child of front's), envoy-2 (SERVER, the child of envoy-1's,
        # named by the operation envoy-1's decorator sent): what real Envoy 1.40 reports for
        # the example, kinds, names, parents and flags (checked with three Envoys).
        trace, span_id, sampled = TRACEPARENT.match(s2.headers[0]["traceparent"]).groups()
        assert sampled == "1"
        assert _wait(lambda: len([s for s in collector.spans if s["trace_id"] == trace]) == 3)
        spans = {s["resource"]["service.name"]: s for s in collector.spans if s["trace_id"] == trace}
        f, e1, e2 = spans["front-envoy"], spans["envoy-1"], spans["envoy-2"]
        assert (f["kind"], f["name"], f["parent_span_id"]) == ("CLIENT", "routeToEnvoy2ViaEnvoy1", "")
        assert (e1["kind"], e1["name"], e1["parent_span_id"]) == ("CLIENT", "routeToEnvoy2", f["span_id"])
        assert (e2["kind"], e2["name"], e2["parent_span_id"]) == ("SERVER", "routeToEnvoy2", e1["span_id"])
        assert span_id == e2["span_id"]
        assert (f["flags"], e1["flags"], e2["flags"]) == (0x101, 0x301, 0x301)
        assert "x-envoy-decorator-operation" not in s2.headers[0]
        # /trace/1: front (CLIENT) -> envoy-1 ingress (SERVER, its child) -> service-1.
        trace1 = TRACEPARENT.match(s1.headers[0]["traceparent"]).group(1)
        assert _wait(lambda: len([s for s in collector.spans if s["trace_id"] == trace1]) == 2)
        one = {s["resource"]["service.name"]: s for s in collector.spans if s["trace_id"] == trace1}
        assert (one["front-envoy"]["kind"], one["front-envoy"]["name"]) == ("CLIENT", "routeToEnvoy1")
        assert (one["envoy-1"]["kind"], one["envoy-1"]["name"]) == ("SERVER", "routeToEnvoy1")
        assert one["envoy-1"]["parent_span_id"] == one["front-envoy"]["span_id"]
    finally:
        for server in reversed(servers):
            server.request_shutdown()
        s1.close()
        s2.close()
