"""HTTP tracing with the Datadog provider, end to end: Envoy's `datadog-tracing` example
(tests/envoy_examples/datadog-tracing/envoy.yaml, moved onto loopback as docker-compose wires
it: User -> envoy (egress listener) -> `http`), a Datadog agent stand-in
(tests/datadog_agent.py: decodes the msgpack reports with the `msgpack` package) and an `http`
service that plays the example's dd-traced node.js service: it answers with the headers it got
(as http.js) and reports its own span to the agent as a child of the context it received
(service `envoy-demo-http`, as DD_SERVICE says). The traces the agent gets then have the
structure the example's docs show: Envoy's span (`envoy-demo`) the parent of the service's.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgpack
import pytest
import yaml

from proxy.config.load import parse_bootstrap
from proxy.tracing import datadog_exporter, exporter

from ..datadog_agent import DatadogAgent
from .test_tracing_zipkin import EXAMPLES, _ports, _run_example, _wait

EXAMPLE = EXAMPLES / "datadog-tracing" / "envoy.yaml"
DD_HEADERS = ("x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
              "x-datadog-tags", "traceparent", "tracestate")


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch):
    """Workers hand spans over within 50 ms and the exporter reports every 0.2 s (2 s in
    Envoy and by default): the tests wait less."""
    monkeypatch.setattr(exporter, "WORKER_HOLD", 0.05)
    monkeypatch.setattr(datadog_exporter, "FLUSH_INTERVAL", 0.2)


@pytest.fixture
def agent():
    a = DatadogAgent()
    yield a
    a.close()


class TracedService:
    """The example's `http` service: http.js's answer (JSON of the service and the request's
    headers), and, as dd-trace-js does, a span of its own sent to the agent, continuing the
    Datadog context it received."""

    def __init__(self, agent_port: int) -> None:
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.headers.append(headers)
                body = json.dumps({"service": "http", "headers": headers}, indent=2).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if "x-datadog-trace-id" in headers:
                    outer.report(headers, self.path)

        self.agent_port = agent_port
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def report(self, headers: dict, path: str) -> None:
        now = time.time_ns()
        span = {"service": "envoy-demo-http", "name": "web.request", "resource": f"GET {path}",
                "trace_id": int(headers["x-datadog-trace-id"]),
                "span_id": random.getrandbits(63),
                "parent_id": int(headers["x-datadog-parent-id"]),
                "start": now, "duration": 1000, "error": 0, "meta": {"env": "prod"},
                "metrics": {"_sampling_priority_v1": float(headers["x-datadog-sampling-priority"])},
                "type": "web"}
        body = msgpack.packb([[span]])
        conn = http.client.HTTPConnection("127.0.0.1", self.agent_port, timeout=5)
        conn.request("PUT", "/v0.4/traces", body=body,
                     headers={"content-type": "application/msgpack", "x-datadog-trace-count": "1"})
        conn.getresponse().read()
        conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, (json.loads(body) if body.startswith(b"{") else {})


def _counter(server, name: str, default: int = 0) -> int:
    return server.stats.snapshot().counters.get(name, default)


def _envoy_spans(agent) -> list[dict]:
    return [s for s in agent.spans if s["service"] == "envoy-demo"]


def _run(agent, service, raw_changes=None):
    endpoints = {("http", 8080): service.port, ("dd-agent", 8126): agent.port}
    if raw_changes is None:
        return _run_example(EXAMPLE, endpoints)
    path = EXAMPLE.parent / "envoy.yaml"
    raw = yaml.safe_load(path.read_text())
    raw_changes(raw)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "envoy.yaml"
        p.write_text(yaml.safe_dump(raw))
        return _run_example(p, endpoints)


# -- the example as published --------------------------------------------------------------------

def test_example_request_carries_the_context_and_both_spans_reach_the_agent(agent):
    service = TracedService(agent.port)
    server = _run(agent, service)
    try:
        port = _ports(server)[0]
        status, answer = _get(port, "/")
        assert status == 200 and answer["service"] == "http"
        got = answer["headers"]
        # What example.rst shows http.js answering: the Datadog and W3C context Envoy injected.
        assert all(name in got for name in DD_HEADERS), got
        assert got["x-datadog-trace-id"] == got["x-datadog-parent-id"]  # Envoy's span is the root
        assert got["x-datadog-sampling-priority"] == "1"
        tid = dict(kv.split("=") for kv in got["x-datadog-tags"].split(","))["_dd.p.tid"]
        assert got["x-datadog-tags"] == f"_dd.p.tid={tid},_dd.p.dm=-0"
        low = int(got["x-datadog-trace-id"])
        assert got["traceparent"] == f"00-{tid}{low:016x}-{low:016x}-01"
        assert got["tracestate"] == f"dd=s:1;p:{low:016x};t.dm:-0"
        assert got["x-foobar-banana"] == ""      # the route's request_headers_to_add, as shown

        assert _wait(lambda: len(_envoy_spans(agent)) == 1 and len(agent.spans) == 2)
        envoy_span = _envoy_spans(agent)[0]
        child = next(s for s in agent.spans if s["service"] == "envoy-demo-http")
        # The trace's structure: Envoy's span the root, the service's its child.
        assert envoy_span["trace_id"] == child["trace_id"] == low
        assert envoy_span["span_id"] == low and envoy_span["parent_id"] == 0
        assert child["parent_id"] == envoy_span["span_id"]
        assert envoy_span["name"] == "envoy.proxy" and envoy_span["type"] == "web"
        assert envoy_span["resource"] == f"egress 127.0.0.1:{port}"   # traffic_direction OUTBOUND
        assert envoy_span["error"] == 0
        assert envoy_span["duration"] > 0 and abs(envoy_span["start"] / 1e9 - time.time()) < 60
        meta = envoy_span["meta"]
        assert meta["http.url"] == f"http://127.0.0.1:{port}/"
        assert meta["http.method"] == "GET" and meta["http.status_code"] == "200"
        assert meta["upstream_cluster"] == "service1" and meta["component"] == "proxy"
        assert meta["_dd.p.tid"] == tid and meta["_dd.p.dm"] == "-0"
        assert meta["guid:x-request-id"] == got["x-request-id"]
        assert envoy_span["metrics"]["_sampling_priority_v1"] == 1.0
        assert envoy_span["metrics"]["_dd.agent_psr"] == 1.0

        report = next(r for r in agent.reports if r["traces"][0][0]["service"] == "envoy-demo")
        assert report["method"] == "POST" and report["path"] == "/v0.4/traces"
        h = report["headers"]
        assert h["host"] == "datadog_agent" and h["content-type"] == "application/msgpack"
        assert h["datadog-meta-lang"] == "python" and h["x-datadog-trace-count"] == "1"
        assert "datadog-meta-tracer-version" in h and "datadog-meta-lang-version" in h
        assert _wait(lambda: _counter(server, "tracing.datadog.reports_sent", 0) >= 1)
    finally:
        server.shutdown()
        service.close()


def test_a_callers_context_is_continued(agent):
    service = TracedService(agent.port)
    server = _run(agent, service)
    try:
        port = _ports(server)[0]
        _, answer = _get(port, "/x", {"x-datadog-trace-id": "123", "x-datadog-parent-id": "456",
                                      "x-datadog-sampling-priority": "2",
                                      "x-datadog-origin": "synthetics",
                                      "x-datadog-tags": "_dd.p.dm=-4"})
        got = answer["headers"]
        assert got["x-datadog-trace-id"] == "123" and got["x-datadog-sampling-priority"] == "2"
        assert got["x-datadog-origin"] == "synthetics" and got["x-datadog-tags"] == "_dd.p.dm=-4"
        assert _wait(lambda: len(agent.spans) == 2)
        envoy_span = _envoy_spans(agent)[0]
        child = next(s for s in agent.spans if s["service"] == "envoy-demo-http")
        # caller (456) -> Envoy's span -> the service's span, one trace
        assert envoy_span["parent_id"] == 456 and envoy_span["trace_id"] == 123
        assert child["parent_id"] == envoy_span["span_id"] == int(got["x-datadog-parent-id"])
        assert envoy_span["meta"]["_dd.origin"] == "synthetics"
        assert envoy_span["metrics"]["_sampling_priority_v1"] == 2.0
        assert "_dd.agent_psr" not in envoy_span["metrics"]   # the caller decided
    finally:
        server.shutdown()
        service.close()


def test_upstream_span_between_envoys_span_and_the_service(agent):
    """spawn_upstream_span: Envoy's request span, its router span, the service's span."""
    def change(raw):
        hcm = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["tracing"]["spawn_upstream_span"] = True

    service = TracedService(agent.port)
    server = _run(agent, service, change)
    try:
        _, answer = _get(_ports(server)[0], "/status")
        assert _wait(lambda: len(agent.spans) == 3)
        root, router = next(
            t for r in agent.reports for t in r["traces"] if t[0]["service"] == "envoy-demo")
        svc = next(s for s in agent.spans if s["service"] == "envoy-demo-http")
        assert router["parent_id"] == root["span_id"] and svc["parent_id"] == router["span_id"]
        assert root["trace_id"] == router["trace_id"] == svc["trace_id"]
        assert router["resource"] == "router service1 egress" and router["name"] == "envoy.proxy"
        assert router["meta"]["upstream_cluster"] == "service1"
        assert "_sampling_priority_v1" not in router["metrics"]   # only on the local root
        assert int(answer["headers"]["x-datadog-parent-id"]) == router["span_id"]
    finally:
        server.shutdown()
        service.close()


def test_the_agents_rates_decide_later_traces(agent):
    """The agent answers rate 0 for this service: traces started after its answer are
    AUTO_DROP (priority 0, no decision maker, ksr 0), and still reported."""
    agent.rates = {"service:envoy-demo,env:": 0.0, "service:,env:": 1.0}
    service = TracedService(agent.port)
    server = _run(agent, service)
    try:
        port = _ports(server)[0]
        _, first = _get(port, "/1")
        assert first["headers"]["x-datadog-sampling-priority"] == "1"   # no answer yet: DEFAULT
        assert _wait(lambda: _counter(server, "tracing.datadog.reports_sent", 0) >= 1)
        _, later = _get(port, "/2")
        got = later["headers"]
        assert got["x-datadog-sampling-priority"] == "0"
        tid = got["x-datadog-tags"].split("=")[1].split(",")[0]
        assert got["x-datadog-tags"] == f"_dd.p.tid={tid},_dd.p.ksr=0"
        assert got["traceparent"].endswith("-00") and got["tracestate"].startswith("dd=s:0;")
        assert _wait(lambda: len(_envoy_spans(agent)) == 2)
        dropped = next(s for s in _envoy_spans(agent) if s["meta"]["http.url"].endswith("/2"))
        assert dropped["metrics"]["_sampling_priority_v1"] == 0.0
        assert dropped["metrics"]["_dd.agent_psr"] == 0.0
    finally:
        server.shutdown()
        service.close()


def test_agent_answers_are_counted(agent):
    """Envoy's tracing.datadog.* counters: an agent answering 500 drops reports; one that is
    gone fails them."""
    agent.status = 500
    service = TracedService(agent.port)
    server = _run(agent, service)
    try:
        port = _ports(server)[0]
        _get(port, "/")
        assert _wait(lambda: _counter(server, "tracing.datadog.reports_dropped", 0) == 1)
        agent.close()
        _get(port, "/")
        assert _wait(lambda: _counter(server, "tracing.datadog.reports_failed", 0) == 1)
        assert _counter(server, "tracing.datadog.reports_sent", 0) == 0
    finally:
        server.shutdown()
        service.close()


def test_unknown_collector_cluster_is_refused_at_load():
    raw = yaml.safe_load(EXAMPLE.read_text())
    provider = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["tracing"]["provider"]["typed_config"]
    provider["collector_cluster"] = "nosuch"
    from proxy.config.reader import ConfigError
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    assert "collector_cluster" in str(e.value) and "nosuch" in str(e.value)


def test_a_tls_agent_cluster_is_refused_by_name():
    """Reports do not speak TLS: the example's agent cluster given a TLS transport_socket is
    refused at load (the collector-cluster check every tracer shares)."""
    from proxy.config.reader import ConfigError
    raw = yaml.safe_load(EXAMPLE.read_text())
    for c in raw["static_resources"]["clusters"]:
        if c["name"] == "datadog_agent":
            c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "dd-agent"}}
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    assert 'the collector cluster "datadog_agent" has a TLS transport_socket' in str(e.value)
