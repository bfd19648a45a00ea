"""HTTP tracing with the Zipkin provider, end to end: real ftproxy instances, a real upstream
and a Zipkin collector written here (an HTTP server taking POST /api/v2/spans), all on
loopback. What each test proves is in its name; the expected spans and headers are what real
Envoy 1.40 sends for the same config (tests/differential/cases/tracing_zipkin.yaml compares
the propagation headers with Envoy's directly)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.server.instance import Server, ServerOptions
from proxy.tracing import exporter

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

ZIPKIN = {"name": "envoy.tracers.zipkin", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
    "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
    "collector_endpoint_version": "HTTP_JSON"}}
EXAMPLES = Path(__file__).resolve().parents[1] / "envoy_examples"


class Collector:
    """A Zipkin collector: records each report (path, headers, spans) and answers `status`."""

    def __init__(self, status: int = 202) -> None:
        self.reports: list[tuple[str, dict, list]] = []
        self.lock = threading.Lock()  # guards reports (handler threads)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # no delayed-ACK wait between head and body
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer.lock:
                    outer.reports.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                          json.loads(body)))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def spans(self) -> list[dict]:
        with self.lock:
            return [s for _, _, spans in self.reports for s in spans]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch):
    """Envoy flushes every 5 s and workers hand spans over within 1 s; tests wait less."""
    monkeypatch.setattr(exporter, "FLUSH_INTERVAL", 0.2)
    monkeypatch.setattr(exporter, "WORKER_HOLD", 0.05)


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def _config(upstream_port: int, collector_port: int, routes=None, node=None, direction=None,
            **tracing) -> dict:
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    cfg = front_proxy_config(routes, [static_cluster("app", upstream_port),
                                      static_cluster("zipkin", collector_port)],
                             tracing={"provider": ZIPKIN, **tracing})
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


def _upstream_b3(answer: dict) -> dict:
    return {k: v for k, v in answer["headers"].items() if k.startswith("x-b3-") or k == "b3"}


def test_each_request_gets_a_server_span_with_envoys_tags_and_its_context_goes_upstream(
        upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, custom_tags=[
        {"tag": "lit", "literal": {"value": "v1"}},
        {"tag": "hdr", "request_header": {"name": "x-foo", "default_value": "dflt"}}],
        max_path_tag_length=6))
    try:
        answers = [_get(p.port, f"/p{i}?q=1", {"user-agent": "UA", "x-foo": "bar"})[1]
                   for i in range(5)]
        assert p.wait_for(lambda: len(collector.spans) == 5)
        path, headers, _ = collector.reports[0]
        assert path == "/api/v2/spans" and headers["host"] == "zipkin"
        assert headers["content-type"] == "application/json"
        by_id = {s["id"]: s for s in collector.spans}
        for i, answer in enumerate(answers):
            b3 = _upstream_b3(answer)
            # A new trace: the root span's id is the trace id, no parent, sampled.
            assert b3 == {"x-b3-traceid": b3["x-b3-spanid"], "x-b3-spanid": b3["x-b3-spanid"],
                          "x-b3-sampled": "1"}
            rid = answer["headers"]["x-request-id"]
            assert rid[14] == "9"  # Envoy's UUID trace mark: sampled
            span = by_id[b3["x-b3-spanid"]]
            assert span["traceId"] == b3["x-b3-traceid"] and "parentId" not in span
            assert span["kind"] == "SERVER" and span["shared"] is True
            assert span["name"] == "app.local"
            assert span["localEndpoint"]["serviceName"] == "front"
            assert span["localEndpoint"]["port"] == 0
            assert span["annotations"][0]["value"] == "ss"
            assert span["annotations"][0]["timestamp"] == span["timestamp"] + span["duration"]
            assert span["tags"] == {
                "component": "proxy", "node_id": "node-1", "zone": "z1",
                "guid:x-request-id": rid, "http.url": f"http://app.local/p{i}?q=",
                "http.method": "GET", "http.protocol": "HTTP/1.1", "http.status_code": "200",
                "downstream_cluster": "-", "user_agent": "UA", "peer.address": "127.0.0.1",
                "request_size": "0", "response_size": span["tags"]["response_size"],
                "response_flags": "-", "upstream_cluster": "app", "upstream_cluster.name": "app",
                "lit": "v1", "hdr": "bar"}
        # The collector has a report before the proxy has read its answer: wait for the count.
        assert p.wait_for(lambda: p.counters()["tracing.zipkin.reports_sent"] == len(collector.reports))
        c = p.counters()
        assert c["tracing.zipkin.spans_sent"] == 5
        assert c["tracing.zipkin.reports_sent"] == len(collector.reports) >= 1
        assert c["http.ingress_http.tracing.random_sampling"] == 5
    finally:
        p.stop()


def test_two_ftproxy_hops_share_one_trace_with_envoys_parent_child_structure(upstream, collector):
    """Hop 1 is egress (traffic_direction OUTBOUND) with spawn_upstream_span and a decorator;
    hop 2 is ingress. Hop 2's server span shares hop 1's client span context, and takes the
    decorator's operation hop 1 sent in x-envoy-decorator-operation."""
    inner = ProxyUnderTest(_config(upstream.port, collector.port, node={"cluster": "svc-b"}))
    outer = ProxyUnderTest(_config(inner.port, collector.port, node={"cluster": "svc-a"},
                                   direction="OUTBOUND", spawn_upstream_span=True, routes=[
                                       {"match": {"prefix": "/"}, "route": {"cluster": "app"},
                                        "decorator": {"operation": "callB"}}]))
    try:
        status, answer = _get(outer.port, "/x")
        assert status == 200
        assert "x-envoy-decorator-operation" not in answer["headers"]  # hop 2 removed it
        assert outer.wait_for(lambda: len(collector.spans) == 3, timeout=10)
        spans = collector.spans
        server_a = next(s for s in spans if s["localEndpoint"]["serviceName"] == "svc-a"
                        and s["kind"] == "SERVER")
        client_a = next(s for s in spans if s["kind"] == "CLIENT")
        server_b = next(s for s in spans if s["localEndpoint"]["serviceName"] == "svc-b")
        assert {s["traceId"] for s in spans} == {server_a["traceId"]}
        assert server_a["name"] == "callB" and "parentId" not in server_a
        assert client_a["name"] == "router app egress"
        assert client_a["parentId"] == server_a["id"] and client_a["id"] != server_a["id"]
        assert client_a["tags"]["upstream_address"] == f"127.0.0.1:{inner.port}"
        assert client_a["tags"]["http.status_code"] == "200"
        # shared_span_context: hop 2's server span is hop 1's client span.
        assert server_b["id"] == client_a["id"] and server_b["parentId"] == server_a["id"]
        assert server_b["name"] == "callB"
        b3 = _upstream_b3(answer)
        assert b3 == {"x-b3-traceid": server_a["traceId"], "x-b3-spanid": server_b["id"],
                      "x-b3-parentspanid": server_a["id"], "x-b3-sampled": "1"}
    finally:
        outer.stop()
        inner.stop()


def test_shared_span_context_false_makes_the_server_span_a_child(upstream, collector):
    zipkin = {**ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "shared_span_context": False,
                                         "trace_id_128bit": True}}
    cfg = _config(upstream.port, collector.port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["tracing"]["provider"] = zipkin
    p = ProxyUnderTest(cfg)
    try:
        _, joined = _get(p.port, "/a", {"x-b3-traceid": "abc", "x-b3-spanid": "def",
                                        "x-b3-sampled": "1"})
        _, root = _get(p.port, "/b")
        assert p.wait_for(lambda: len(collector.spans) == 2, timeout=5)
        b3 = _upstream_b3(joined)
        assert b3["x-b3-traceid"] == "0000000000000abc"
        assert b3["x-b3-parentspanid"] == "0000000000000def" and b3["x-b3-spanid"] != "0000000000000def"
        assert len(_upstream_b3(root)["x-b3-traceid"]) == 32  # trace_id_128bit
        assert all("shared" not in s for s in collector.spans)
    finally:
        p.stop()


def test_sampling_off_sends_no_spans_but_propagates_an_unsampled_context(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port, random_sampling={"value": 0}))
    try:
        _, answer = _get(p.port, "/a", {"x-envoy-force-trace": "1"})
        b3 = _upstream_b3(answer)
        assert b3 == {"x-b3-traceid": b3["x-b3-spanid"], "x-b3-spanid": b3["x-b3-spanid"],
                      "x-b3-sampled": "0"}
        assert answer["headers"]["x-request-id"][14] == "4"
        assert "x-envoy-force-trace" not in answer["headers"]  # external: removed, not obeyed
        # An incoming sampled flag is obeyed; the request id keeps "not traced".
        _, sampled = _get(p.port, "/b", {"x-b3-traceid": "0000000000000abc",
                                         "x-b3-spanid": "0000000000000def", "x-b3-sampled": "1"})
        assert _upstream_b3(sampled)["x-b3-sampled"] == "1"
        assert p.wait_for(lambda: p.counters()["tracing.zipkin.timer_flushed"] >= 3)
        assert [s["id"] for s in collector.spans] == ["0000000000000def"]
        c = p.counters()
        assert c["http.ingress_http.tracing.not_traceable"] == 2
        assert c["http.ingress_http.tracing.random_sampling"] == 0
        # A request id already marked sampled by an earlier hop is traced (Envoy's UUID mark).
        _, marked = _get(p.port, "/c", {"x-request-id": "11111111-2222-9333-8444-555555555555"})
        assert _upstream_b3(marked)["x-b3-sampled"] == "1"
    finally:
        p.stop()


def test_b3_single_header_in_single_header_out_and_a_bad_context_is_left_alone(upstream, collector):
    p = ProxyUnderTest(_config(upstream.port, collector.port))
    try:
        b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        _, answer = _get(p.port, "/a", {"b3": b3})
        assert _upstream_b3(answer) == {"b3": b3}
        _, answer = _get(p.port, "/a", {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d"})
        assert _upstream_b3(answer) == {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}
        _, answer = _get(p.port, "/a", {"b3": "0"})  # a new trace, unsampled, in b3 form
        trace, span, flag = answer["headers"]["b3"].split("-")
        assert trace == span and flag == "0" and len(trace) == 16
        # A context that does not parse: no span, nothing injected (Envoy's null span).
        _, answer = _get(p.port, "/a", {"x-b3-traceid": "zzz", "x-b3-spanid": "0000000000000def"})
        assert _upstream_b3(answer) == {"x-b3-traceid": "zzz", "x-b3-spanid": "0000000000000def"}
        # x-b3-flags is passed on and not read: no sampled flag means the HCM's decision.
        _, answer = _get(p.port, "/a", {"x-b3-traceid": "abc", "x-b3-spanid": "def", "x-b3-flags": "1"})
        assert _upstream_b3(answer)["x-b3-flags"] == "1"
    finally:
        p.stop()


def test_client_trace_id_and_route_tracing_overrides(upstream, collector):
    routes = [{"match": {"prefix": "/quiet"}, "route": {"cluster": "app"},
               "tracing": {"random_sampling": {"numerator": 0}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    p = ProxyUnderTest(_config(upstream.port, collector.port, routes=routes,
                               random_sampling={"value": 0}))
    try:
        _, answer = _get(p.port, "/x", {"x-client-trace-id": "abc"})
        assert answer["headers"]["x-request-id"][14] == "b"  # client forced
        assert _upstream_b3(answer)["x-b3-sampled"] == "1"
        _, answer = _get(p.port, "/quiet")
        assert _upstream_b3(answer)["x-b3-sampled"] == "0"
        c = p.counters()
        assert c["http.ingress_http.tracing.client_enabled"] == 1
        assert p.wait_for(lambda: len(collector.spans) == 1)
        assert collector.spans[0]["tags"]["guid:x-client-trace-id"] == "abc"
    finally:
        p.stop()


def test_a_dead_collector_is_counted_and_never_slows_requests(upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: connections are refused
    p = ProxyUnderTest(_config(upstream.port, dead))
    try:
        for round_ in (1, 2):   # two reports (min_flush_spans 5 each), each refused
            for i in range(5):
                assert _get(p.port, f"/{i}")[0] == 200
            assert p.wait_for(lambda: p.counters()["tracing.zipkin.spans_sent"] == 5 * round_)
            assert p.wait_for(lambda: p.counters()["tracing.zipkin.reports_failed"] == round_)
        assert p.counters()["tracing.zipkin.reports_sent"] == 0
    finally:
        p.stop()


def test_a_collector_answering_other_than_202_counts_reports_dropped(upstream):
    failing = Collector(status=500)
    p = ProxyUnderTest(_config(upstream.port, failing.port))
    try:
        for i in range(5):
            _get(p.port, f"/{i}")
        assert p.wait_for(lambda: len(failing.spans) == 5)
        # The collector holds a report before it answers; the proxy counts it once the answer
        # arrived, so the counter catches up with the reports shortly after.
        assert p.wait_for(lambda: p.counters()["tracing.zipkin.reports_dropped"]
                          == len(failing.reports))
        c = p.counters()
        assert c["tracing.zipkin.reports_dropped"] == len(failing.reports) >= 1
        assert c["tracing.zipkin.reports_sent"] == 0
    finally:
        p.stop()
        failing.close()


def test_trace_id_access_log_operator(upstream, collector, tmp_path):
    log = tmp_path / "access.log"
    cfg = _config(upstream.port, collector.port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log), "log_format": {"text_format_source": {"inline_string": "%TRACE_ID%\n"}}}}]
    p = ProxyUnderTest(cfg)
    try:
        _, answer = _get(p.port, "/", {"x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
                                       "x-b3-spanid": "e457b5a2e4d86bd1"})
        assert p.wait_for(lambda: log.exists() and log.read_text())
        assert log.read_text() == "80f198ee56343ba864fe8b2a57d3eff7\n"
    finally:
        p.stop()


def test_tracing_config_refusals_name_their_paths(upstream):
    def err(**tracing) -> str:
        raw = _config(upstream.port, upstream.port, **tracing)
        with pytest.raises(ConfigError) as e:
            parse_bootstrap(yaml.safe_load(yaml.safe_dump(raw)))
        return str(e.value)
    at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing"
    assert err(verbose=True).startswith(f"{at}.verbose: not supported yet")
    assert err(custom_tags=[{"tag": "m", "metadata": {"kind": {"request": {}}}}]).startswith(
        f"{at}.custom_tags[0].metadata: not supported yet")
    proto = {**ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "collector_endpoint_version": "HTTP_PROTO"}}
    assert err(provider=proto).startswith(
        f"{at}.provider.typed_config.collector_endpoint_version: not supported yet")
    nosuch = {**ZIPKIN, "typed_config": {**ZIPKIN["typed_config"], "collector_cluster": "nosuch"}}
    assert 'unknown cluster "nosuch"' in err(provider=nosuch)


# -- Envoy's zipkin example: front-proxy -> envoy-1 -> envoy-2 -> service-2 -------------------

class _Service:
    """The example's services: answer "Hello from behind Envoy (service N)!"."""

    def __init__(self, n: int) -> None:
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # no delayed-ACK wait between head and body
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = f"Hello from behind Envoy (service {n})!".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run_example(path: Path, endpoints: dict[tuple[str, int], int]) -> Server:
    """The example's bootstrap as published, moved onto loopback as docker-compose would wire
    it: listeners (and the admin) on 127.0.0.1:0, each (host, port) endpoint the local port
    playing it."""
    raw = yaml.safe_load(path.read_text())
    for lis in raw["static_resources"]["listeners"]:
        lis["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    for cluster in raw["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                sa = ep["endpoint"]["address"]["socket_address"]
                sa["port_value"] = endpoints[(sa["address"], sa["port_value"])]
                sa["address"] = "127.0.0.1"
    if "admin" in raw:
        raw["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    server = Server(parse_bootstrap(raw), ServerOptions("<example>", 1, 5.0, "fast",
                                                        disable_hot_restart=True))
    threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True).start()
    assert server.wait_ready(10)
    return server


def _ports(server: Server) -> list[int]:
    return [port for _, port in server.listener_addresses.values()]


def test_envoy_zipkin_example_three_proxies_one_trace(collector):
    s1, s2 = _Service(1), _Service(2)
    zipkin = ("zipkin", 9411)
    servers = []
    try:
        envoy2 = _run_example(EXAMPLES / "zipkin/envoy-2.yaml",
                              {("service-2", 8080): s2.port, zipkin: collector.port})
        servers.append(envoy2)
        envoy1 = _run_example(EXAMPLES / "zipkin/envoy-1.yaml",
                              {("service-1", 8080): s1.port, ("envoy-2", 10000): _ports(envoy2)[0],
                               zipkin: collector.port})
        servers.append(envoy1)
        e1_in, e1_out = _ports(envoy1)
        front = _run_example(EXAMPLES / "zipkin/envoy-front-proxy.yaml",
                             {("envoy-1", 10000): e1_in, ("envoy-1", 10001): e1_out,
                              zipkin: collector.port})
        servers.append(front)
        port = _ports(front)[0]
        for path, text in (("/trace/1", "service 1"), ("/trace/2", "service 2")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse()
            assert f"Hello from behind Envoy ({text})!" in r.read().decode()
            # The front proxy echoes the trace id (response_headers_to_add %REQ(x-b3-traceid)%).
            assert r.getheader("x-b3-traceid")
            conn.close()
        # /trace/2 crosses three proxies: front (egress), envoy-1's egress listener, envoy-2.
        # As real Envoy 1.40 reports it: an egress listener's span is a CLIENT span, a child of
        # its caller's; the ingress one shares its caller's context; an ingress span takes the
        # operation its caller's decorator sent (x-envoy-decorator-operation).
        trace = s2.headers[0]["x-b3-traceid"]
        assert _wait(lambda: len([s for s in collector.spans if s["traceId"] == trace]) == 3)
        spans = {s["localEndpoint"]["serviceName"]: s for s in collector.spans if s["traceId"] == trace}
        f, e1, e2 = spans["envoy-proxy-front"], spans["envoy-proxy-1"], spans["envoy-proxy-2"]
        assert (f["kind"], f["name"], f["id"]) == ("CLIENT", "routeToEnvoy2ViaEnvoy1", trace)
        assert "parentId" not in f
        assert (e1["kind"], e1["name"], e1["parentId"]) == ("CLIENT", "routeToEnvoy2", f["id"])
        assert (e2["kind"], e2["name"], e2["parentId"]) == ("SERVER", "routeToEnvoy2", f["id"])
        assert e2["id"] == e1["id"] != f["id"] and e2["shared"] is True
        assert s2.headers[0]["x-b3-spanid"] == e2["id"]
        assert s2.headers[0]["x-b3-parentspanid"] == f["id"]
        assert s2.headers[0]["x-b3-sampled"] == "1"
        assert "x-envoy-decorator-operation" not in s2.headers[0]
        # /trace/1: front (CLIENT) -> envoy-1 ingress (SERVER, same span) -> service-1.
        trace1 = s1.headers[0]["x-b3-traceid"]
        assert _wait(lambda: len([s for s in collector.spans if s["traceId"] == trace1]) == 2)
        one = sorted((s["kind"], s["name"], s["id"]) for s in collector.spans if s["traceId"] == trace1)
        assert one == [("CLIENT", "routeToEnvoy1", trace1), ("SERVER", "routeToEnvoy1", trace1)]
    finally:
        for server in reversed(servers):
            server.request_shutdown()
        s1.close()
        s2.close()


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- Envoy's jaeger-tracing example (Zipkin-compatible collector, shared_span_context false) ----

class _TracingService(_Service):
    """The example's aiohttp-tracing-service3: service 1 answers /trace/1 after calling
    /trace/2 through its sidecar's egress listener (`egress_port`, set once the sidecar runs),
    passing the trace headers on."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.egress_port: int | None = None
        outer = self
        handler = self.server.RequestHandlerClass
        plain_get = handler.do_GET

        def do_GET(req):
            if outer.egress_port is not None:
                passed = {k: v for k, v in req.headers.items()
                          if k.lower().startswith(("x-b3-", "x-request-id"))}
                conn = http.client.HTTPConnection("127.0.0.1", outer.egress_port, timeout=10)
                conn.request("GET", "/trace/2", headers=passed)
                conn.getresponse().read()
                conn.close()
            plain_get(req)
        handler.do_GET = do_GET


def test_envoy_jaeger_tracing_example_one_trace_of_four_spans(collector):
    jaeger = ("jaeger", 9411)
    s1, s2 = _TracingService(1), _TracingService(2)
    servers = []
    try:
        side2 = _run_example(EXAMPLES / "jaeger-tracing/service2-envoy-jaeger.yaml",
                             {("127.0.0.1", 8080): s2.port, jaeger: collector.port})
        servers.append(side2)
        side1 = _run_example(EXAMPLES / "jaeger-tracing/service1-envoy-jaeger.yaml",
                             {("127.0.0.1", 8080): s1.port, ("service2", 8000): _ports(side2)[0],
                              jaeger: collector.port})
        servers.append(side1)
        s1.egress_port = _ports(side1)[1]
        front = _run_example(EXAMPLES / "jaeger-tracing/envoy.yaml",
                             {("service1", 8000): _ports(side1)[0], jaeger: collector.port})
        servers.append(front)
        conn = http.client.HTTPConnection("127.0.0.1", _ports(front)[0], timeout=10)
        conn.request("GET", "/trace/1")
        assert "Hello from behind Envoy (service 1)!" in conn.getresponse().read().decode()
        conn.close()
        trace = s2.headers[0]["x-b3-traceid"]
        assert _wait(lambda: len([s for s in collector.spans if s["traceId"] == trace]) == 4)
        spans = [s for s in collector.spans if s["traceId"] == trace]
        front_span = next(s for s in spans if s["localEndpoint"]["serviceName"] == "front-proxy")
        client = next(s for s in spans if s["kind"] == "CLIENT" and s is not front_span)
        s1_in = next(s for s in spans if s.get("parentId") == front_span["id"])
        s2_in = next(s for s in spans if s.get("parentId") == client["id"])
        # shared_span_context: false: every hop is a child of the one before; the spans of
        # the egress listeners (the front proxy's, service 1's sidecar's 9000) are CLIENT spans.
        assert front_span["kind"] == "CLIENT" and "parentId" not in front_span
        assert front_span["name"] == "checkAvailability"
        assert (s1_in["kind"], s1_in["name"]) == ("SERVER", "checkAvailability")
        assert client["parentId"] == s1_in["id"] and client["name"] == "checkStock"
        assert (s2_in["kind"], s2_in["name"]) == ("SERVER", "checkStock")
        assert all("shared" not in s for s in spans)
        assert s2.headers[0]["x-b3-spanid"] == s2_in["id"]
        assert s2.headers[0]["x-b3-parentspanid"] == client["id"]
    finally:
        for server in reversed(servers):
            server.request_shutdown()
        s1.close()
        s2.close()
