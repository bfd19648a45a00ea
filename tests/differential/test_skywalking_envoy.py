"""The SkyWalking tracer against real Envoy: Envoy's `skywalking` example (front proxy ->
envoy-1 (-> envoy-2) -> service), run once as three real Envoy 1.40 processes and once as
three ftproxy processes, the same bootstraps moved onto loopback, the same requests, each run
reporting to its own test collector (tests/skywalking_collector.py). Compared: the `sw8`
header each service receives and every segment reported (spans, names, types, layers,
component ids, peers, tags and their order, references), with what differs by nature masked:
ids become labels naming the segment they belong to, ports the name of what listens on them,
times are checked for order only, x-request-id values are masked; and the
`tracing.skywalking.*` counters of each proxy.

The requests: /trace/1 (two proxies), /trace/2?x=1 (three), /trace/1 with a caller's valid
sw8 (joins its trace), /trace/1 with an sw8 that does not parse (a new trace), /trace/1 with a
non-integer span id (the same)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ..skywalking_collector import SkyWalkingCollector
from .proxies import PortReservation, envoy_binary

EXAMPLE = Path(__file__).resolve().parents[1] / "envoy_examples" / "skywalking"
ROOT = Path(__file__).resolve().parents[2]
FOREIGN = "1-dA==-cw==-3-c3Zj-aW5zdA==-L2Vw-YWRkcg=="   # trace t, segment s, span 3, svc ...
REQUESTS = [("/trace/1", {}), ("/trace/2?x=1", {}), ("/trace/1", {"sw8": FOREIGN}),
            ("/trace/1", {"sw8": "garbage"}),
            ("/trace/1", {"sw8": "0-dA==-cw==-x-c3Zj-aW5zdA==-L2Vw-YWRkcg=="})]
STATS = ("segments_sent", "segments_dropped", "segments_flushed", "cache_flushed")


class _Service:
    def __init__(self, n: int) -> None:
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
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


def _admin_stats(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("tracing.skywalking.") and value.strip().isdigit():
            out[name] = int(value)
    return out


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _run(kind: str, tmp: Path) -> tuple[dict, list, dict]:
    """One run: (the port names, what the services and collector saw, the proxies' stats)."""
    collector = SkyWalkingCollector()
    s1, s2 = _Service(1), _Service(2)
    reservation = PortReservation()
    ports = {name: reservation.take() for name in ("e2", "e1-in", "e1-out", "front")}
    admins = {name: reservation.take() for name in ("envoy-2", "envoy-1", "envoy-front-proxy")}
    endpoints = {("service-1", 8080): s1.port, ("service-2", 8080): s2.port,
                 ("envoy-2", 10000): ports["e2"], ("envoy-1", 10000): ports["e1-in"],
                 ("envoy-1", 10001): ports["e1-out"], ("skywalking-oap", 11800): collector.port}
    names = {str(v): k for k, v in ports.items()}
    names.update({str(s1.port): "service-1", str(s2.port): "service-2"})
    procs = []
    try:
        reservation.release()
        for name, listeners in (("envoy-2", ["e2"]), ("envoy-1", ["e1-in", "e1-out"]),
                                ("envoy-front-proxy", ["front"])):
            raw = yaml.safe_load((EXAMPLE / f"{name}.yaml").read_text())
            for lis, key in zip(raw["static_resources"]["listeners"], listeners):
                lis["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[key])
            for cluster in raw["static_resources"]["clusters"]:
                cluster["type"] = "STATIC"
                for group in cluster["load_assignment"]["endpoints"]:
                    for ep in group["lb_endpoints"]:
                        sa = ep["endpoint"]["address"]["socket_address"]
                        sa["port_value"] = endpoints[(sa["address"], sa["port_value"])]
                        sa["address"] = "127.0.0.1"
            raw["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": admins[name]}}}
            path = tmp / f"{kind}-{name}.json"
            path.write_text(json.dumps(raw))
            if kind == "envoy":
                cmd = [envoy_binary(), "-c", str(path), "--concurrency", "1",
                       "--disable-hot-restart", "-l", "error", "--drain-time-s", "0"]
            else:
                cmd = [sys.executable, "-m", "proxy.server.main", "-c", str(path),
                       "--concurrency", "1", "--disable-hot-restart", "-l", "error",
                       "--drain-time-s", "0"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while not all(_ready(p) for p in admins.values()):
            assert time.monotonic() < deadline, f"{kind} not ready"
            time.sleep(0.05)
        # Each proxy's segment stream is up before the requests (Envoy's opens at start).
        deadline = time.monotonic() + 10
        while len(collector.streams) < (3 if kind == "ftproxy" else 8):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        answers = []
        for path, headers in REQUESTS:
            conn = http.client.HTTPConnection("127.0.0.1", ports["front"], timeout=10)
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            answers.append((r.status, r.read().decode()))
            conn.close()
        expected = 2 * 4 + 3
        deadline = time.monotonic() + 15
        while len(collector.segments) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # nothing more should come
        stats = {name: _admin_stats(port) for name, port in admins.items()}
        seen = {"answers": answers, "service-1": s1.headers, "service-2": s2.headers,
                "segments": collector.segments}
        return names, seen, stats
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        s1.close()
        s2.close()
        collector.close()


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text).decode()
    except (ValueError, UnicodeDecodeError):
        return "<undecodable>"


def _normalize(names: dict, seen: dict) -> dict:
    """What one run saw, with run-specific values replaced by what they name."""
    segments = seen["segments"]
    seg_label = {s["traceSegmentId"]: f"segment of {s['serviceInstance']}" for s in segments}
    trace_label: dict[str, str] = {"t": "the caller's trace"}
    for i, s in enumerate(seen["service-1"] + seen["service-2"]):
        if "sw8" in s:
            trace_label.setdefault(_b64(s["sw8"].split("-")[1]), f"trace {len(trace_label)}")

    def addr(value: str) -> str:
        host, _, port = value.rpartition(":")
        return f"{host}:{names.get(port, '<port>')}" if host else value

    def sw8(value: str) -> list:
        f = value.split("-")
        return [f[0], trace_label.get(_b64(f[1]), "?"), seg_label.get(_b64(f[2]), "?"), f[3],
                _b64(f[4]), _b64(f[5]), _b64(f[6]), addr(_b64(f[7]))]

    def tag(key: str, value: str):
        if key == "guid:x-request-id":
            return key, "<rid>"
        if key == "upstream_address":
            return key, addr(value)
        if key == "url":
            scheme, _, rest = value.partition("://")
            hostport, _, path = rest.partition("/")
            return key, f"{scheme}://{addr(hostport)}/{path}"
        return key, value

    norm_segments = []
    for s in segments:
        spans = []
        for sp in s["spans"]:
            assert sp["startTime"] <= sp["endTime"], sp
            spans.append({**{k: v for k, v in sp.items() if k not in ("startTime", "endTime")},
                          "peer": addr(sp["peer"]),
                          "tags": [tag(k, v) for k, v in sp["tags"]],
                          "refs": [{**r, "traceId": trace_label.get(r["traceId"], "?"),
                                    "parentTraceSegmentId": seg_label.get(r["parentTraceSegmentId"],
                                                                          r["parentTraceSegmentId"]),
                                    "networkAddressUsedAtPeer": addr(r["networkAddressUsedAtPeer"])}
                                   for r in sp["refs"]]})
        norm_segments.append({**s, "traceId": trace_label.get(s["traceId"], "a trace no service saw"),
                              "traceSegmentId": seg_label[s["traceSegmentId"]], "spans": spans})
    norm_segments.sort(key=lambda s: (s["traceId"], s["serviceInstance"]))
    return {"answers": seen["answers"],
            "sw8 at service-1": [sw8(h["sw8"]) for h in seen["service-1"]],
            "sw8 at service-2": [sw8(h["sw8"]) for h in seen["service-2"]],
            "segments": norm_segments}


@pytest.mark.timeout(120)
def test_skywalking_example_segments_and_sw8_match_real_envoys(tmp_path):
    try:
        envoy_binary()
    except RuntimeError as e:
        pytest.skip(str(e))
    envoy = _run("envoy", tmp_path)
    ftproxy = _run("ftproxy", tmp_path)
    want, got = _normalize(*envoy[:2]), _normalize(*ftproxy[:2])
    assert len(want["segments"]) == 11
    for key in ("answers", "sw8 at service-1", "sw8 at service-2"):
        assert got[key] == want[key], key
    for w, g in zip(want["segments"], got["segments"]):
        assert g == w
    assert len(got["segments"]) == len(want["segments"])
    # Envoy counts each segment written to a stream; nothing cached, dropped or flushed.
    assert ftproxy[2] == envoy[2]


# -- sampling off, no upstream span, errors: one proxy, an echo upstream ------------------------

def _run_single(kind: str, tmp: Path) -> dict:
    """Two listeners: `sampled-off` (random_sampling 0, the router's upstream span) and
    `no-child` (no upstream span); each request's sw8 at the upstream, the segments' shapes,
    the stream's metadata and the tracing counters."""
    import copy

    from ..integration.harness import EchoUpstream
    from ..integration.test_tracing_skywalking import _config, _provider
    collector = SkyWalkingCollector()
    upstream = EchoUpstream("service1")
    reservation = PortReservation()
    ports = [reservation.take(), reservation.take()]
    admin = reservation.take()
    cfg = _config(upstream.port, collector.port, random_sampling={"value": 0},
                  provider=_provider(service_name="s", instance_name="i", backend_token="tok"))
    listeners = cfg["static_resources"]["listeners"]
    plain = copy.deepcopy(listeners[0])
    hcm = plain["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["http_filters"][0]["typed_config"]["start_child_span"]
    hcm["tracing"].pop("random_sampling")
    hcm["stat_prefix"] = "plain"
    plain["name"] = "no-child"
    listeners.append(plain)
    for lis, port in zip(listeners, ports):
        lis["address"]["socket_address"]["port_value"] = port
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    path = tmp / f"{kind}-single.json"
    path.write_text(json.dumps(cfg))
    if kind == "envoy":
        cmd = [envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
               "-l", "error", "--drain-time-s", "0"]
    else:
        cmd = [sys.executable, "-m", "proxy.server.main", "-c", str(path), "--concurrency", "1",
               "--disable-hot-restart", "-l", "error", "--drain-time-s", "0"]
    reservation.release()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _ready(admin):
            assert time.monotonic() < deadline, f"{kind} not ready"
            time.sleep(0.05)
        while not collector.streams and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = []
        for port, target, headers in (
                (ports[0], "/untraced", {}), (ports[0], "/joined", {"sw8": FOREIGN}),
                (ports[0], "/status/503", {"sw8": FOREIGN}), (ports[1], "/no-child", {}),
                (ports[1], "/no-child-passed", {"sw8": FOREIGN}), (ports[1], "/status/503", {})):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", target, headers=headers)
            r = conn.getresponse()
            body = r.read()
            conn.close()
            got = json.loads(body)["headers"].get("sw8") if body.startswith(b"{") else None
            seen.append((target, r.status, got if got == FOREIGN or got is None else
                         [got.split("-")[i] for i in (0, 1, 3, 4, 5, 6)]))
        deadline = time.monotonic() + 15
        while len(collector.segments) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        shapes = sorted(
            [(p["spanType"], p["operationName"], p["peer"].rpartition(":")[0] or p["peer"],
              p["isError"], p["skipAnalysis"], [k for k, _ in p["tags"]],
              [(r["traceId"], r["parentTraceSegmentId"], r["parentEndpoint"]) for r in p["refs"]])
             for p in s["spans"]] for s in collector.segments)
        metadata = {k: v for k, v in collector.streams[0].items() if k == "authentication"}
        stats = {k: v for k, v in _admin_stats(admin).items()}
        return {"requests": seen, "segments": shapes, "metadata": metadata, "stats": stats}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(10)
        upstream.close()
        collector.close()


@pytest.mark.timeout(120)
def test_skywalking_sampling_off_no_upstream_span_and_errors_match_real_envoy(tmp_path):
    """Envoy 1.40: an untraced request without sw8 gets no span (nothing injected or
    reported), one with sw8 joins it; without the router's upstream span nothing is injected
    and a caller's sw8 passes on unchanged; an error marks both spans; the stream carries
    `authentication: <backend_token>`."""
    try:
        envoy_binary()
    except RuntimeError as e:
        pytest.skip(str(e))
    want = _run_single("envoy", tmp_path)
    got = _run_single("ftproxy", tmp_path)
    assert len(want["segments"]) == 5
    assert got == want
