"""The Datadog tracer against real Envoy: the `datadog-tracing` example's bootstrap
(tests/envoy_examples/datadog-tracing/envoy.yaml, its egress listener as published) plus two
listeners of the same HCM made ingress (`in`: random_sampling 0 and a decorated route; `up`:
spawn_upstream_span), run once by real Envoy 1.40 and once by ftproxy (one worker each), the
same requests, each run reporting to its own agent stand-in (tests/datadog_agent.py, which
answers `rate_by_service` with rate 0 for `service:envoy-demo,env:`).

Compared, per request: the propagation headers the upstream received (`x-datadog-*`,
`traceparent`, `tracestate`) and every span the agent got for it (service, name, resource,
ids, error, type, meta, metrics). Masked: each id the request did not carry becomes a label
named by its first appearance in that request (so the same id in a header and a span, in
decimal or hex, gets the same label, and a parent/child link stays visible), times are
checked for sanity only, and what names the process (`runtime-id`, `version`, `language`,
`process_id`), the request id, ports and the echo's response size (its body holds the ids)
are replaced. Batch A goes before the agent
has answered (sampling mechanism DEFAULT), batch B after (the agent's rate 0: AUTO_DROP).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ..datadog_agent import DatadogAgent
from ..integration.harness import EchoUpstream
from .proxies import PortReservation, envoy_binary

EXAMPLE = Path(__file__).resolve().parents[1] / "envoy_examples" / "datadog-tracing" / "envoy.yaml"
ROOT = Path(__file__).resolve().parents[2]
DD = ("x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
      "x-datadog-origin", "x-datadog-tags", "traceparent", "tracestate")
W3C = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BATCH_A = [
    ("out", "new", {}),
    ("out", "datadog", {"x-datadog-trace-id": "123", "x-datadog-parent-id": "456",
                        "x-datadog-sampling-priority": "2", "x-datadog-origin": "synthetics",
                        "x-datadog-tags": "_dd.p.dm=-4,_dd.p.tid=640cfd8d00000000,foo=bar"}),
    ("out", "w3c", {"traceparent": W3C, "tracestate": "dd=s:2;o:rum;t.dm:-4;zz:1,foo=bar"}),
    ("out", "both", {"x-datadog-trace-id": str(0x8448eb211c80319c), "x-datadog-parent-id": "7",
                     "x-datadog-tags": "_dd.p.tid=0af7651916cd43dd", "traceparent": W3C,
                     "tracestate": "other=1,dd=s:1;p:00000000000000aa"}),
    ("out", "bad-id", {"x-datadog-trace-id": "abc", "x-datadog-parent-id": "1"}),
    ("out", "bad-traceparent", {"x-datadog-trace-id": "9", "x-datadog-parent-id": "8",
                                "traceparent": "garbage"}),
    ("out", "dropped", {"x-datadog-trace-id": "123", "x-datadog-parent-id": "456",
                        "x-datadog-sampling-priority": "0"}),
    ("out", "status/503", {"x-datadog-trace-id": "77", "x-datadog-parent-id": "88"}),
    ("in", "untraced", {}),
    ("in", "deco", {}),
    ("in", "kept", {"x-datadog-trace-id": "5", "x-datadog-parent-id": "6",
                    "x-datadog-sampling-priority": "1"}),
    ("up", "child", {}),
]
BATCH_B = [
    ("out", "new-after-rates", {}),
    ("out", "undecided-after-rates", {"x-datadog-trace-id": "11", "x-datadog-parent-id": "12"}),
    ("up", "child-after-rates", {}),
]
STATS = ("reports_dropped", "reports_failed", "reports_skipped_no_cluster")


def _bootstrap(ports: dict, upstream: int, agent: int, admin: int) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text())
    out = raw["static_resources"]["listeners"][0]
    out["name"] = "out"
    out["address"]["socket_address"].update(address="127.0.0.1", port_value=ports["out"])
    for name, change in (("in", "sampling"), ("up", "spawn")):
        lis = copy.deepcopy(out)
        lis.pop("traffic_direction")
        lis["name"] = name
        lis["address"]["socket_address"]["port_value"] = ports[name]
        hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        if change == "sampling":
            hcm["tracing"]["random_sampling"] = {"value": 0}
            hcm["route_config"]["virtual_hosts"][0]["routes"].insert(0, {
                "match": {"prefix": "/deco"}, "route": {"cluster": "service1"},
                "decorator": {"operation": "decorated-op"}})
        else:
            hcm["tracing"]["spawn_upstream_span"] = True
        raw["static_resources"]["listeners"].append(lis)
    for cluster in raw["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
        sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]
        sa.update(address="127.0.0.1",
                  port_value=agent if cluster["name"] == "datadog_agent" else upstream)
    raw["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    return raw


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _stats(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("tracing.datadog.") and value.strip().isdigit():
            out[name[len("tracing.datadog."):]] = int(value)
    return out


def _send(ports: dict, batch: list) -> list:
    statuses = []
    for listener, name, headers in batch:
        conn = http.client.HTTPConnection("127.0.0.1", ports[listener], timeout=10)
        path = f"/{name}" if not name.startswith("status/") else f"/{name}?r"
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        statuses.append((name, r.status))
        conn.close()
    return statuses


def _run(kind: str, tmp: Path) -> dict:
    agent = DatadogAgent(rates={"service:envoy-demo,env:": 0.0, "service:,env:": 1.0})
    upstream = EchoUpstream("http")
    reservation = PortReservation()
    ports = {name: reservation.take() for name in ("out", "in", "up")}
    admin = reservation.take()
    path = tmp / f"{kind}-datadog.json"
    path.write_text(json.dumps(_bootstrap(ports, upstream.port, agent.port, admin)))
    if kind == "envoy":
        cmd = [envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
               "-l", "critical", "--drain-time-s", "0"]
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
        statuses = _send(ports, BATCH_A)
        deadline = time.monotonic() + 15
        while len(agent.spans) < len(BATCH_A) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)          # the agent's answer is read: its rates apply from now on
        statuses += _send(ports, BATCH_B)
        deadline = time.monotonic() + 15
        while len(agent.spans) < len(BATCH_A) + len(BATCH_B) + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        return {"statuses": statuses, "upstream": list(upstream.requests),
                "spans": list(agent.spans), "reports": list(agent.reports),
                "stats": _stats(admin), "ports": {**ports, "upstream": upstream.port}}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        upstream.close()
        agent.close()


_DEC = re.compile(r"\b\d{4,20}\b")
_HEX16 = re.compile(r"[0-9a-f]{16}")


def _ints(text: str) -> set[int]:
    return {int(t) for t in _DEC.findall(text)} | {int(t, 16) for t in _HEX16.findall(text)}


def _normalize(run: dict) -> dict:
    """Per request name: the dd headers upstream and the spans, ids as labels."""
    ports = {str(p): f"<{n}>" for n, p in run["ports"].items()}
    by_path = {}
    for _, path, headers, _ in run["upstream"]:
        by_path[path.split("?")[0].lstrip("/")] = {k: v for k, v in headers.items() if k in DD}
    spans_by_name: dict[str, list] = {}
    for span in run["spans"]:
        url = span["meta"].get("http.url")
        if url is not None:
            spans_by_name.setdefault(url.rsplit("/", 1)[1].split("?")[0], []).append(span)
    # The router's span has no http.url: it follows its parent in the agent's trace chunk.
    for report in run["reports"]:
        for chunk in report["traces"]:
            for extra in chunk[1:]:
                url = chunk[0]["meta"]["http.url"]
                spans_by_name[url.rsplit("/", 1)[1].split("?")[0]].append(extra)
    out = {}
    for listener, name, sent in BATCH_A + BATCH_B:
        key = name.split("/")[-1]
        literal = {0} | set().union(*(_ints(v) for v in sent.values()))
        labels: dict[int, str] = {}

        def label(n: int) -> str | int:
            if n in literal:
                return n
            return labels.setdefault(n, f"<id{len(labels)}>")

        def mask(text: str, dec: bool) -> str:
            """Each id in `text` its label; one the request carried stays as written."""
            def sub(m, base):
                n = int(m.group(), base)
                return m.group() if n in literal else label(n)
            if dec:
                return _DEC.sub(lambda m: sub(m, 10), text)
            return _HEX16.sub(lambda m: sub(m, 16), text)

        headers = by_path.get(key, {})
        got = {k: mask(headers[k], k in ("x-datadog-trace-id", "x-datadog-parent-id"))
               for k in DD if k in headers}
        spans = []
        for s in spans_by_name.get(key, []):
            assert s["duration"] > 0 and abs(s["start"] / 1e9 - time.time()) < 120, s
            meta = {k: (mask(v, False) if k.startswith("_dd.") else v)
                    for k, v in s["meta"].items()
                    if k not in ("runtime-id", "version", "language", "guid:x-request-id")}
            # The echo's body holds the ids (their decimal length varies): its size is masked.
            if meta.get("response_size", "").isdigit():
                meta["response_size"] = "<size>"
            for k in ("peer.address", "upstream_address"):
                if ":" in meta.get(k, ""):
                    host, _, port = meta[k].rpartition(":")
                    meta[k] = f"{host}:{ports.get(port, '?')}"
            if "http.url" in meta:
                meta["http.url"] = re.sub(r":(\d+)/", lambda m: ":" + ports.get(m.group(1), "?") + "/",
                                          meta["http.url"])
            spans.append({"service": s["service"], "name": s["name"], "type": s["type"],
                          "resource": re.sub(r":(\d+)$", lambda m: ":" + ports.get(m.group(1), "?"),
                                             s["resource"]),
                          "trace_id": label(s["trace_id"]), "span_id": label(s["span_id"]),
                          "parent_id": label(s["parent_id"]), "error": s["error"], "meta": meta,
                          "metrics": {k: v for k, v in s["metrics"].items() if k != "process_id"}})
        out[name] = {"listener": listener, "upstream headers": got, "spans": spans}
    return out


@pytest.mark.timeout(120)
def test_datadog_example_propagation_and_spans_match_real_envoy(tmp_path):
    try:
        envoy_binary()
    except RuntimeError as e:
        pytest.skip(str(e))
    envoy = _run("envoy", tmp_path)
    ftproxy = _run("ftproxy", tmp_path)
    assert ftproxy["statuses"] == envoy["statuses"]
    want, got = _normalize(envoy), _normalize(ftproxy)
    assert sum(len(r["spans"]) for r in want.values()) == len(BATCH_A) + len(BATCH_B) + 2
    for name in want:
        assert got[name] == want[name], name
    # The agent is sent the same: POST /v0.4/traces, msgpack, Host the cluster's name.
    for run in (envoy, ftproxy):
        assert {(r["method"], r["path"], r["headers"]["host"], r["headers"]["content-type"])
                for r in run["reports"]} == {("POST", "/v0.4/traces", "datadog_agent",
                                              "application/msgpack")}
    assert {k: ftproxy["stats"].get(k) for k in STATS} == {k: envoy["stats"].get(k) for k in STATS}
    assert ftproxy["stats"]["reports_sent"] >= 2 and envoy["stats"]["reports_sent"] >= 2
