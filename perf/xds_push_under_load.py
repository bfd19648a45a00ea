"""Requests under a steady load while the main thread decodes and applies a 1,000-cluster push
(issue 19: no request lost, p99 within 2x).

ftproxy runs as its own process (`--concurrency 1`), fed over ADS by the test control plane
(tests/integration/xds_control_plane.py) in this process; one client thread sends keep-alive
GETs through it to a local upstream as fast as answers come and records each latency (in its
own process: this one packs and serializes the push, which on 3.13 would hold the client's
GIL and count as proxy latency). Phases:
`steady` (3 s, nothing pushed), `push` (from the moment 1,000 EDS clusters and their 1,000
assignments are set until the proxy ACKed both, plus 0.5 s), `after` (2 s). The route answers
with a direct_response (the proxy's own latency; UPSTREAM=1 routes to the upstream instead).

    python perf/xds_push_under_load.py          # N=1000
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.integration.harness import EchoUpstream  # noqa: E402
from tests.integration.xds_control_plane import CLA, CLUSTER, LISTENER, ROUTE, ControlPlane  # noqa: E402

N = int(os.environ.get("N", "1000"))
# UPSTREAM=1: routed to the local upstream (http.server: ~44 ms of Nagle/delayed-ACK per answer
# here); default: a direct_response, so the numbers are the proxy's own.
if os.environ.get("UPSTREAM") == "1":
    ROUTE_ACTION, ROUTE_TARGET = "route", {"cluster": "svc"}
else:
    ROUTE_ACTION, ROUTE_TARGET = "direct_response", {"status": 200, "body": {"inline_string": "ok"}}
T = "type.googleapis.com/"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eds_cluster(name: str) -> dict:
    return {"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}}}}


def cla(name: str, port: int) -> dict:
    return {"@type": CLA, "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}


def client(lport: int, stop, out) -> None:
    """Keep-alive GETs as fast as answers come: sends [(start, latency, status)] when stopped."""
    samples: list[tuple[float, float, int]] = []
    conn = http.client.HTTPConnection("127.0.0.1", lport, timeout=10)
    out.send("started")
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            status = r.status
        except OSError:
            status = 0
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", lport, timeout=10)
        samples.append((t0, time.monotonic() - t0, status))
    out.send(samples)


def main() -> None:
    up = EchoUpstream("u")
    cp = ControlPlane()
    lport, admin = free_port(), free_port()
    cp.set(CLUSTER, "1", [eds_cluster("svc")])
    cp.set(CLA, "1", [cla("svc", up.port)])
    cp.set(LISTENER, "1", [{"@type": LISTENER, "name": "l", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": lport}}, "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress", "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}],
                "rds": {"route_config_name": "r", "config_source": {"ads": {}}}}}]}]}])
    cp.set(ROUTE, "1", [{"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"],
                                                                           "routes": [{"match": {"prefix": "/"},
                                                                                       ROUTE_ACTION: ROUTE_TARGET}]}]}])
    boot = {"node": {"id": "n", "cluster": "c"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "dynamic_resources": {"ads_config": {"api_type": "GRPC", "grpc_services": [
                {"envoy_grpc": {"cluster_name": "xds"}}]}, "cds_config": {"ads": {}}, "lds_config": {"ads": {}}},
            "static_resources": {"clusters": [{"name": "xds", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": cp.port}}}}]}]}}]}}
    path = "/tmp/xds_push_under_load.json"
    with open(path, "w") as fh:
        json.dump(boot, fh)
    proc = subprocess.Popen([sys.executable, "-m", "proxy.server.main", "-c", path, "--concurrency", "1",
                             "--disable-hot-restart", "-l", "error"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", lport, timeout=2)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "proxy not serving"
            time.sleep(0.1)
        # The client runs in its own process: in this one the control plane packs and
        # serializes the push, which would hold this process's GIL and stretch the client's
        # own timings (on 3.13) — not the proxy's latency.
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        parent_end, child_end = ctx.Pipe(duplex=False)
        th = ctx.Process(target=client, args=(lport, stop, child_end), daemon=True)
        th.start()
        while not parent_end.poll(0.05):   # the client says when it started
            pass
        parent_end.recv()
        time.sleep(3.0)
        t_push = time.monotonic()
        cp.set(CLUSTER, "big", [eds_cluster("svc")] + [eds_cluster(f"c{i}") for i in range(N)])
        cp.set(CLA, "big", [cla("svc", up.port)] + [cla(f"c{i}", up.port) for i in range(N)])
        assert cp.wait(lambda: cp.acked(CLUSTER, "big") and cp.acked(CLA, "big"), 60)
        t_acked = time.monotonic()
        time.sleep(0.5)
        t_after = time.monotonic()
        time.sleep(2.0)
        stop.set()
        samples = parent_end.recv()
        th.join(15)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        cp.close()
        up.close()

    def stats(lo: float, hi: float) -> str:
        lat = sorted(s[1] for s in samples if lo <= s[0] < hi)
        bad = sum(1 for s in samples if lo <= s[0] < hi and s[2] != 200)
        if not lat:
            return "no samples"
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
        return (f"{len(lat):6d} rq, {bad} failed, p50 {q(0.50):6.2f} ms, p99 {q(0.99):6.2f} ms, "
                f"max {lat[-1] * 1000:7.1f} ms")

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"python {sys.version.split()[0]} ({'GIL' if gil else 'free-threaded'}), N={N}; "
          f"push applied and ACKed {t_acked - t_push:.2f} s after it was set")
    print(f"  steady  {stats(t_push - 3.0, t_push)}")
    print(f"  push    {stats(t_push, t_after)}")
    print(f"  after   {stats(t_after, t_after + 2.0)}")


if __name__ == "__main__":
    main()
