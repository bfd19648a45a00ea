"""The gRPC access loggers (`envoy.access_loggers.http_grpc`, `envoy.access_loggers.tcp_grpc`)
end to end: real ftproxy, a real upstream and a real AccessLogService (tests/als_server.py:
grpclib, decoding with the xds-protos generated classes), all on loopback; and the same
bootstrap under real Envoy 1.40 reporting to its own test ALS server, the decoded entries
compared field by field (times, ports and generated ids masked; the fields ftproxy does not
fill are listed in NOT_FILLED and checked absent from ours)."""

from __future__ import annotations

import copy
import http.client
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port

from ..als_server import AlsServer
from ..differential.proxies import PortReservation, envoy_binary
from .harness import EchoUpstream, ProxyUnderTest, static_cluster

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
STATS = ("logs_written", "logs_dropped", "grpc_entries_flushed", "grpc_entries_flush_failed")
# What Envoy fills in HTTP entries and ftproxy does not measure (grpc_log_entry.py says so too;
# a TCP entry's wire bytes are its connection's, filled).
NOT_FILLED = {
    "common_properties": ("downstream_wire_bytes_sent", "downstream_wire_bytes_received",
                          "upstream_wire_bytes_sent", "upstream_wire_bytes_received"),
    "request": ("upstream_header_bytes_sent", "downstream_header_bytes_received"),
    "response": ("upstream_header_bytes_received", "downstream_header_bytes_sent"),
}
TIMES = re.compile(r"^(start_time|duration|time_to_.*)$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- bootstrap ----------------------------------------------------------------------------------
def _common(log_name: str, als: str = "als", **extra) -> dict:
    return {"log_name": log_name, "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": als},
                             "initial_metadata": [{"key": "x-als-tenant", "value": "t1"}]},
            **extra}


def http_logger(log_name: str, log_filter: dict | None = None, **common) -> dict:
    cfg = {"@type": HTTP_GRPC, "common_config": _common(log_name, **common),
           "additional_request_headers_to_log": ["x-custom", "x-multi", "x-absent"],
           "additional_response_headers_to_log": ["content-type", "x-none"],
           "additional_response_trailers_to_log": ["grpc-status"]}
    out = {"name": "envoy.access_loggers.http_grpc", "typed_config": cfg}
    if log_filter:
        out["filter"] = log_filter
    return out


def _h2_cluster(name: str, port: int) -> dict:
    c = static_cluster(name, port)
    c["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def bootstrap(upstream: int, dead: int, als: int, ports=(0, 0, 0), loggers=None,
              tcp: bool = True) -> dict:
    """An HCM listener (routes: /app to the upstream, /direct a direct response, /dead a
    cluster nobody listens on, anything else no route) and a tcp_proxy listener, each with
    gRPC access loggers to the `als` cluster."""
    http_port, tcp_port, admin_port = ports
    hcm = {"@type": HCM_TYPE, "stat_prefix": "ingress_http",
           "access_log": loggers or [http_logger("http_log")],
           "route_config": {"name": "local_route", "virtual_hosts": [{
               "name": "backend", "domains": ["*"], "routes": [
                   {"name": "direct", "match": {"prefix": "/direct"},
                    "direct_response": {"status": 418, "body": {"inline_string": "teapot"}}},
                   {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
                   {"name": "app", "match": {"prefix": "/app"}, "route": {"cluster": "app"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    listeners = [{"name": "http", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": http_port}}, "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]
    if tcp:
        proxy = {"@type": TCP_TYPE, "stat_prefix": "tcp", "cluster": "app", "access_log": [
            {"name": "envoy.access_loggers.tcp_grpc", "typed_config": {
                "@type": TCP_GRPC, "common_config": _common("tcp_log")}}]}
        listeners.append({"name": "tcp", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": tcp_port}}, "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}]})
    return {"node": {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"},
                     "metadata": {"team": "edge"}},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": [
                static_cluster("app", upstream), static_cluster("dead", dead),
                _h2_cluster("als", als)]}}


# -- traffic ------------------------------------------------------------------------------------
REQUESTS = [
    ("GET", "/app?q=1", {"x-custom": "a", "user-agent": "ua/1", "referer": "http://r/",
                         "x-request-id": "rid-1"}, None),
    ("GET", "/direct", {}, None),                    # a local reply: direct_response 418
    ("GET", "/dead", {}, None),                      # 503 UF
    ("GET", "/nowhere", {"x-request-id": "rid-nr"}, None),   # 404 NR
    ("POST", "/app", {"x-multi": "1"}, b"hello"),
]


def send_traffic(http_port: int, tcp_port: int | None) -> list[int]:
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    for method, path, headers, body in REQUESTS:
        conn.request(method, path, body=body, headers={"host": "app.local", **headers})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    if tcp_port is not None:
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as s:
            s.sendall(b"GET /tcp HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            while s.recv(65536):
                pass
    return statuses


# -- comparison ---------------------------------------------------------------------------------
def masked(value, key: str = ""):
    """Times become "<time>", ports "<port>", generated ids "<uuid>" (recursively)."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if TIMES.match(key):
        return "<time>"
    if key == "port_value":
        return "<port>"
    if isinstance(value, str) and UUID.match(value):
        return "<uuid>"
    return value


def without_not_filled(kind: str, entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    if kind != "http_logs":
        return entry
    for part, names in NOT_FILLED.items():
        where = entry.get(part, {}) if part != "common_properties" else entry["common_properties"]
        for n in names:
            where.pop(n, None)
    return entry


def identifiers(als: AlsServer) -> dict[str, dict]:
    """log_name -> the identifier of its stream; each stream's later messages carry none."""
    out = {}
    for stream in als.streams:
        assert "identifier" in stream[0], stream[0]
        assert all("identifier" not in m for m in stream[1:])
        ident = stream[0]["identifier"]
        node = ident["node"]
        out[ident["log_name"]] = {k: node.get(k) for k in ("id", "cluster", "metadata", "locality")}
    return out


def entries(als: AlsServer) -> dict[str, list]:
    out: dict[str, list] = {}
    for stream in als.streams:
        name = stream[0]["identifier"]["log_name"]
        for m in stream:
            for kind in ("http_logs", "tcp_logs"):
                out.setdefault(name, []).extend(
                    (kind, e) for e in m.get(kind, {}).get("log_entry", []))
    return out


def _admin_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("access_logs.grpc_access_log.") and value.isdigit():
            out[name.rsplit(".", 1)[1]] = int(value)
    return out


def _run_envoy(cfg: dict, tmp_path: Path, ports: PortReservation, als: AlsServer):
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ports.release()
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1",
                             "--disable-hot-restart", "-l", "error", "--drain-time-s", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc


def _wait_ready(admin_port: int, proc) -> None:
    """Envoy's admin /ready says LIVE (no probe of the listeners: a connection to the
    tcp_proxy listener would be logged)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        time.sleep(0.05)
    raise RuntimeError("envoy did not become ready")


@pytest.fixture
def dead_port():
    port = free_port()  # nothing listens there
    return port


def test_entries_match_envoys_field_by_field(tmp_path, dead_port):
    """HTTP requests (a proxied GET with the additional headers, a direct response, a 503 UF,
    a 404 NR local reply, a POST with a body) and a tcp_proxy connection give the same entries,
    identifiers, metadata and counters under real Envoy 1.40 and ftproxy; a logger with a
    status_code filter logs only the 5xx."""
    upstream = EchoUpstream()
    loggers = [http_logger("http_log", buffer_flush_interval="0.1s"),
               http_logger("errors_log", buffer_flush_interval="0.1s", log_filter={
                   "status_code_filter": {"comparison": {"op": "GE", "value": {
                       "default_value": 500, "runtime_key": "k"}}}})]
    results = {}
    try:
        for kind in ("envoy", "ftproxy"):
            als = AlsServer()
            try:
                if kind == "envoy":
                    reservation = PortReservation()
                    ports = (reservation.take(), reservation.take(), reservation.take())
                    cfg = bootstrap(upstream.port, dead_port, als.port, ports, loggers)
                    proc = _run_envoy(cfg, tmp_path, reservation, als)
                    try:
                        _wait_ready(ports[2], proc)
                        statuses = send_traffic(ports[0], ports[1])
                        assert als.wait(lambda: len(als.http_entries()) >= 6
                                        and len(als.tcp_entries()) >= 1)
                        stats = _admin_stats(ports[2])
                    finally:
                        proc.terminate()
                        proc.wait(10)
                else:
                    p = ProxyUnderTest(bootstrap(upstream.port, dead_port, als.port, loggers=loggers))
                    try:
                        statuses = send_traffic(p.port, p.server.listener_port("tcp"))
                        assert als.wait(lambda: len(als.http_entries()) >= 6
                                        and len(als.tcp_entries()) >= 1)
                        assert p.wait_for(lambda: p.counters().get(
                            "access_logs.grpc_access_log.grpc_entries_flushed", 0) >= 7)
                        stats = {n: p.counters().get(f"access_logs.grpc_access_log.{n}", 0)
                                 for n in STATS}
                    finally:
                        p.stop()
                assert statuses == [200, 418, 503, 404, 200]
                results[kind] = (identifiers(als), entries(als), stats,
                                 [m.get("x-als-tenant") for m in als.metadata])
            finally:
                als.close()
    finally:
        upstream.close()

    envoy_ids, envoy_entries, envoy_stats, envoy_md = results["envoy"]
    ours_ids, ours_entries, ours_stats, ours_md = results["ftproxy"]
    assert ours_ids == envoy_ids
    assert set(envoy_ids) == {"http_log", "errors_log", "tcp_log"}
    assert ours_md == envoy_md == ["t1"] * 3
    assert ours_stats == {k: envoy_stats[k] for k in STATS}
    assert ours_stats["logs_written"] == 6 and ours_stats["grpc_entries_flushed"] == 7
    for name in envoy_ids:
        theirs, ours = envoy_entries[name], ours_entries[name]
        assert len(ours) == len(theirs), name
        for (tk, t), (ok, o) in zip(theirs, ours):
            assert ok == tk
            for part, names in NOT_FILLED.items():
                here = o["common_properties"] if part == "common_properties" else o.get(part, {})
                assert ok != "http_logs" or not set(names) & set(here), (part, here)
            t = without_not_filled(tk, t)
            if o.get("response", {}).get("response_code_details") == "via_upstream":
                # x-envoy-upstream-service-time's digits are the upstream's milliseconds
                ob, tb = (int(x["response"].pop("response_headers_bytes")) for x in (o, t))
                assert abs(ob - tb) <= 2, (ob, tb)
            assert masked(o) == masked(t), (name, o, t)
    # What the comparison covers, spelled out: the 503's flag and reason, the NR flag.
    http = [e for _, e in ours_entries["http_log"]]
    assert http[2]["common_properties"]["response_flags"] == {"upstream_connection_failure": True}
    assert http[2]["common_properties"]["upstream_transport_failure_reason"] == \
        "delayed connect error: Connection refused"
    assert http[3]["common_properties"]["response_flags"] == {"no_route_found": True}
    assert http[0]["request"]["request_headers"] == {"x-custom": "a"}
    assert [e["response"]["response_code"] for _, e in ours_entries["errors_log"]] == [503]


# -- ftproxy alone: buffering, and a service that is down -------------------------------------
def _counters(p: ProxyUnderTest) -> dict[str, int]:
    c = p.counters()
    return {n: c.get(f"access_logs.grpc_access_log.{n}", 0) for n in STATS}


def _get(port: int, n: int = 1) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out = []
    for _ in range(n):
        conn.request("GET", "/app", headers={"host": "app.local"})
        r = conn.getresponse()
        r.read()
        out.append(r.status)
    conn.close()
    return out


def _stream_of(als: AlsServer, log_name: str) -> int:
    with als._lock:
        names = [s[0]["identifier"]["log_name"] if s else None for s in als.streams]
    return names.index(log_name) if log_name in names else -1


def test_buffer_size_and_flush_interval_decide_when_entries_go(upstream, dead_port):
    """buffer_size_bytes 1: each entry goes at once, one message each; the default size with a
    0.4 s buffer_flush_interval: the three entries go together, not before 0.4 s."""
    als = AlsServer()
    loggers = [http_logger("prompt", buffer_flush_interval="60s", buffer_size_bytes=1),
               http_logger("timed", buffer_flush_interval="0.4s")]
    p = ProxyUnderTest(bootstrap(upstream.port, dead_port, als.port, loggers=loggers, tcp=False))
    try:
        started = time.monotonic()
        assert _get(p.port, 3) == [200, 200, 200]
        took = time.monotonic() - started
        assert als.wait(lambda: _stream_of(als, "timed") >= 0 and _stream_of(als, "prompt") >= 0)
        prompt, timed = _stream_of(als, "prompt"), _stream_of(als, "timed")
        assert als.wait(lambda: len(als.streams[prompt]) == 3)
        assert als.wait(lambda: sum(len(m["http_logs"]["log_entry"]) for m in als.streams[timed]) == 3)
        with als._lock:
            prompt_msgs, timed_msgs = list(als.streams[prompt]), list(als.streams[timed])
            prompt_at, timed_at = list(als.times[prompt]), list(als.times[timed])
        assert [len(m["http_logs"]["log_entry"]) for m in prompt_msgs] == [1, 1, 1]
        assert timed_at[0] - started >= 0.39   # the first entry waited its flush interval
        if took < 0.3:
            # The three requests were served within one flush interval (not so on a starved
            # run, where the timer may fire between them): their entries went together, after
            # every prompt one.
            assert [len(m["http_logs"]["log_entry"]) for m in timed_msgs] == [3]
            assert max(prompt_at) < timed_at[0]
        assert _counters(p)["logs_written"] == 6
    finally:
        p.stop()
        als.close()


def test_the_proxy_keeps_serving_while_the_service_is_down_and_streams_again_later(
        upstream, dead_port):
    """Entries due while the AccessLogService is down are dropped and counted; requests are
    answered as ever; once it is back, the next entries start a new stream, identifier first."""
    als = AlsServer()
    loggers = [http_logger("http_log", buffer_flush_interval="0.05s")]
    p = ProxyUnderTest(bootstrap(upstream.port, dead_port, als.port, loggers=loggers, tcp=False))
    try:
        assert _get(p.port) == [200]
        assert als.wait(lambda: len(als.http_entries()) == 1)
        als.stop()
        streams = p.server.grpc_access_logs.streams.values()
        assert p.wait_for(lambda: all(s.stream is None for s in streams))  # it saw the close
        for i in range(3):      # each batch finds the service down (its own flush)
            assert _get(p.port) == [200]
            assert p.wait_for(lambda: _counters(p)["logs_dropped"] == i + 1)
        # (_drop counts logs_dropped, then grpc_entries_flush_failed: wait for the latter too.)
        assert p.wait_for(lambda: _counters(p)["grpc_entries_flush_failed"] == 3)
        assert _counters(p)["grpc_entries_flushed"] == 1
        als.start()
        assert _get(p.port, 2) == [200, 200]
        assert als.wait(lambda: len(als.http_entries()) == 3)
        with als._lock:
            streams = [list(s) for s in als.streams]
        assert len(streams) == 2
        for s in streams:
            assert s[0]["identifier"]["log_name"] == "http_log"
            assert s[0]["identifier"]["node"]["id"] == "node-1"
        assert p.wait_for(lambda: _counters(p) == {
            "logs_written": 6, "logs_dropped": 3, "grpc_entries_flushed": 3,
            "grpc_entries_flush_failed": 3})
    finally:
        p.stop()
        als.close()


# -- the OpenTelemetry access logger, against Envoy ----------------------------------------------
OTEL_TYPE = ("type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3."
             "OpenTelemetryAccessLogConfig")
OTEL_LOGGERS = [
    {"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": OTEL_TYPE, "common_config": _common("otel_log", buffer_flush_interval="0.1s"),
        "body": {"kvlist_value": {"values": [
            {"key": "line", "value": {"string_value": "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%"}},
            {"key": "codes", "value": {"array_value": {"values": [
                {"string_value": "%RESPONSE_CODE%"}, {"string_value": "%RESPONSE_FLAGS%"}]}}}]}},
        "attributes": {"values": [
            {"key": "ua", "value": {"string_value": "%REQ(USER-AGENT)%"}},
            {"key": "details", "value": {"string_value": "%RESPONSE_CODE_DETAILS%"}},
            {"key": "lit", "value": {"string_value": "x"}}]},
        "resource_attributes": {"values": [{"key": "deployment", "value": {"string_value": "test"}}]}}},
    {"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": OTEL_TYPE, "grpc_service": {"envoy_grpc": {"cluster_name": "als"}},
        "log_name": "errors", "buffer_flush_interval": "0.1s", "stat_prefix": "errors",
        "disable_builtin_labels": True, "body": {"string_value": "%RESPONSE_CODE% %UPSTREAM_CLUSTER%"},
        "resource_attributes": {"values": [{"key": "which", "value": {"string_value": "errors"}}]}},
     "filter": {"status_code_filter": {"comparison": {"op": "GE", "value": {
         "default_value": 500, "runtime_key": "k"}}}}},
]


def _otel_records(c) -> dict[str, list]:
    """Records by their export's resource (as JSON), times masked."""
    out: dict[str, list] = {}
    with c._lock:
        reqs = list(c.requests)
    for req in reqs:
        for rl in req["resource_logs"]:
            key = repr(rl["resource"])
            for sl in rl["scope_logs"]:
                assert set(sl) == {"log_records"}      # no scope, as Envoy
                out.setdefault(key, []).extend(
                    {**r, "time_unix_nano": "<time>" if r.pop("time_unix_nano", None) else None}
                    for r in sl["log_records"])
    return out


def _otel_stats(counters: dict) -> dict:
    return {k: v for k, v in counters.items() if k.startswith("access_logs.open_telemetry_access_log.")
            and k.rsplit(".", 1)[1] in ("logs_written", "logs_dropped")}


def test_opentelemetry_log_records_match_envoys(tmp_path, dead_port):
    """The same requests through real Envoy 1.40 and ftproxy give the same OTLP exports:
    resources (built-in labels, resource_attributes, or only those with
    disable_builtin_labels), records (body as a key-value list with an array, attributes,
    from format strings), the filter's choice, and the counters under stat_prefix."""
    from ..als_server import OtlpLogsCollector
    upstream = EchoUpstream()
    results = {}
    try:
        for kind in ("envoy", "ftproxy"):
            c = OtlpLogsCollector()
            try:
                if kind == "envoy":
                    reservation = PortReservation()
                    ports = (reservation.take(), reservation.take(), reservation.take())
                    cfg = bootstrap(upstream.port, dead_port, c.port, ports, OTEL_LOGGERS, tcp=False)
                    proc = _run_envoy(cfg, tmp_path, reservation, None)
                    try:
                        _wait_ready(ports[2], proc)
                        statuses = send_traffic(ports[0], None)
                        assert c.wait(lambda: len(c.records()) >= 6)
                        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/stats", timeout=5) as r:
                            counters = {n: int(v) for n, _, v in (
                                line.partition(": ") for line in r.read().decode().splitlines())
                                if v.isdigit()}
                    finally:
                        proc.terminate()
                        proc.wait(10)
                else:
                    p = ProxyUnderTest(bootstrap(upstream.port, dead_port, c.port,
                                                 loggers=OTEL_LOGGERS, tcp=False))
                    try:
                        statuses = send_traffic(p.port, None)
                        assert c.wait(lambda: len(c.records()) >= 6)
                        counters = p.counters()
                    finally:
                        p.stop()
                assert statuses == [200, 418, 503, 404, 200]
                results[kind] = (_otel_records(c), _otel_stats(counters))
            finally:
                c.close()
    finally:
        upstream.close()
    (theirs, their_stats), (ours, our_stats) = results["envoy"], results["ftproxy"]
    assert ours == theirs
    assert len(ours) == 2 and sorted(len(v) for v in ours.values()) == [1, 5]
    # (Envoy's `errors.` prefixed counters sometimes read 0 in its /stats though the record
    # was exported: only the unprefixed logger's are compared with Envoy's.)
    main = [k for k in their_stats if ".errors." not in k]
    assert {k: our_stats[k] for k in main} == {k: their_stats[k] for k in main}
    assert our_stats["access_logs.open_telemetry_access_log.errors.logs_dropped"] == 0
    assert our_stats["access_logs.open_telemetry_access_log.logs_written"] == 5
    assert our_stats["access_logs.open_telemetry_access_log.errors.logs_written"] == 1


# -- the ALS cluster's own stats, as Envoy's gRPC client charges them ---------------------------
ALS_CHARGED = ("upstream_cx_total", "upstream_cx_http2_total", "upstream_rq_total",
               "upstream_rq_pending_total", "upstream_cx_active", "upstream_rq_active")


def _als_cluster_stats(read) -> dict[str, int]:
    return {k[len("cluster.als."):]: v for k, v in read().items()
            if k.startswith("cluster.als.") and v}


def _envoy_values(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    return {n: int(v) for n, _, v in (line.partition(": ") for line in text.splitlines())
            if v.isdigit()}


def test_the_als_stream_charges_its_cluster_as_envoys_grpc_client(tmp_path, dead_port):
    """One gRPC access-log stream to a live service, then to a port nobody listens on: the
    `als` cluster's upstream_cx_* / upstream_rq_* stats under ftproxy are Envoy 1.40's (the
    same counts; bytes both counted), and ftproxy charges nothing Envoy does not."""
    upstream = EchoUpstream()
    loggers = [http_logger("http_log", buffer_flush_interval="0.05s")]
    seen: dict[tuple[str, str], dict[str, int]] = {}
    try:
        for service in ("live", "dead"):
            for kind in ("envoy", "ftproxy"):
                als = AlsServer()
                als_port = als.port if service == "live" else dead_port
                try:
                    if kind == "envoy":
                        reservation = PortReservation()
                        ports = (reservation.take(), reservation.take(), reservation.take())
                        proc = _run_envoy(bootstrap(upstream.port, dead_port, als_port, ports,
                                                    loggers, tcp=False), tmp_path, reservation, als)
                        read = lambda ports=ports: _envoy_values(ports[2])  # noqa: E731
                        try:
                            _wait_ready(ports[2], proc)
                            _send_and_wait(ports[0], als, service, read)
                            seen[(service, kind)] = _als_cluster_stats(read)
                        finally:
                            proc.terminate()
                            proc.wait(10)
                    else:
                        p = ProxyUnderTest(bootstrap(upstream.port, dead_port, als_port,
                                                     loggers=loggers, tcp=False))
                        read = lambda p=p: {**p.counters(), **p.gauges()}  # noqa: E731
                        try:
                            _send_and_wait(p.port, als, service, read)
                            seen[(service, kind)] = _als_cluster_stats(read)
                        finally:
                            p.stop()
                finally:
                    als.close()
    finally:
        upstream.close()
    live_e, live_o = seen[("live", "envoy")], seen[("live", "ftproxy")]
    assert {n: live_o.get(n) for n in ALS_CHARGED} == {n: live_e.get(n) for n in ALS_CHARGED} == {
        n: 1 for n in ALS_CHARGED}
    for n in ("upstream_cx_tx_bytes_total", "upstream_cx_rx_bytes_total"):
        assert live_o[n] > 0 and live_e[n] > 0, n
    dead_e, dead_o = seen[("dead", "envoy")], seen[("dead", "ftproxy")]
    for stats in (dead_e, dead_o):
        failed = stats["upstream_cx_connect_fail"]
        assert failed >= 1 and "upstream_rq_total" not in stats
        for n in ("upstream_cx_total", "upstream_rq_pending_total",
                  "upstream_rq_pending_failure_eject", "upstream_rq_503", "upstream_rq_5xx"):
            assert failed <= stats[n] <= failed + 1, (n, stats)   # one may be connecting
    for theirs, ours in ((live_e, live_o), (dead_e, dead_o)):
        assert set(ours) <= set(theirs), set(ours) - set(theirs)


def _send_and_wait(http_port: int, als: AlsServer, service: str, read) -> None:
    statuses = send_traffic(http_port, None)
    assert statuses == [200, 418, 503, 404, 200]
    if service == "live":
        assert als.wait(lambda: len(als.http_entries()) >= 5)
        # The service's SETTINGS (and their ACK) come on their own time: wait for them.
        assert als.wait(lambda: read().get("cluster.als.upstream_cx_rx_bytes_total", 0) > 0)
    else:
        deadline = time.monotonic() + 10
        while read().get("cluster.als.upstream_cx_connect_fail", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
