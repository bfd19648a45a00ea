"""Time and memory to decode and apply one big xDS push on the main thread (issue 19).

A DiscoveryResponse of N EDS clusters (CDS) and one of their N ClusterLoadAssignments (EDS,
one endpoint each) is serialized once, then decoded exactly as the gRPC client does
(proxy/xds/proto.py: ParseFromString, then MessageToDict per resource) and applied through the
same appliers as a push (CdsApplier into a ClusterManager whose EDS subscriptions are the
applier's; EdsApplier per cluster). Reported: milliseconds per phase (best of RUNS) and the
peak of Python allocations (tracemalloc) during one decode+apply.

    python perf/xds_push.py            # N=1000, RUNS=3
    N=1000 RUNS=5 python perf/xds_push.py
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from proxy.xds import proto  # noqa: E402  (first: picks protobuf's backend)
from google.protobuf import any_pb2, json_format  # noqa: E402
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from proxy.stats.store import StatsRegistry  # noqa: E402
from proxy.upstream.cluster_manager import ClusterManager  # noqa: E402
from proxy.xds.cds import CdsApplier  # noqa: E402
from proxy.xds.eds import EdsApplier  # noqa: E402
from proxy.xds.subscription import CLUSTER_TYPE, ENDPOINT_TYPE  # noqa: E402

N = int(os.environ.get("N", "1000"))
RUNS = int(os.environ.get("RUNS", "3"))


def response(type_url: str, cls, items: list[dict]) -> bytes:
    resp = discovery_pb2.DiscoveryResponse(version_info="1", type_url=type_url, nonce="1")
    for d in items:
        a = any_pb2.Any()
        a.Pack(json_format.ParseDict(d, cls()))
        resp.resources.append(a)
    return resp.SerializeToString()


def clusters() -> list[dict]:
    return [{"name": f"c{i}", "type": "EDS", "connect_timeout": "1.500s",
             "eds_cluster_config": {"eds_config": {"ads": {}}}} for i in range(N)]


def assignments() -> list[dict]:
    return [{"cluster_name": f"c{i}", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "10.0.%d.%d" % (i // 250, i % 250 + 1), "port_value": 8080}}}}]}]}
        for i in range(N)]


def decode(data: bytes) -> list[tuple[dict, str]]:
    resp = proto.decode_response(data)
    out = []
    for i, res in enumerate(resp.resources):
        d = proto.resource_to_dict(res)
        d.pop("@type", None)
        out.append((d, f"resources[{i}]"))
    return out


def run_once(cds_bytes: bytes, eds_bytes: bytes) -> dict[str, float]:
    appliers: dict[str, EdsApplier] = {}

    class _Handle:
        def stop(self) -> None:
            pass

    def eds_subscribe(cluster, on_endpoints):
        appliers[cluster.name] = EdsApplier(cluster.name, cluster.eds.service_name, on_endpoints)
        return _Handle()

    store = StatsRegistry().new_store("main")
    cm = ClusterManager([], lambda snaps: None, stats=store, eds_subscribe=eds_subscribe)
    cm.initialize()
    t = {}
    t0 = time.perf_counter()
    cds = decode(cds_bytes)
    t1 = time.perf_counter()
    CdsApplier(cm).on_update(cds, "1")
    t2 = time.perf_counter()
    eds = decode(eds_bytes)
    t3 = time.perf_counter()
    with cm.batch():   # as the gRPC client delivers one response (grpc_mux.py)
        for res in eds:
            appliers[res[0]["cluster_name"]].on_update([res], "1")
    t4 = time.perf_counter()
    assert len(cm.snapshots()) == N, len(cm.snapshots())
    t["cds decode"], t["cds apply"] = (t1 - t0) * 1000, (t2 - t1) * 1000
    t["eds decode"], t["eds apply"] = (t3 - t2) * 1000, (t4 - t3) * 1000
    return t


def main() -> None:
    cds_bytes = response(CLUSTER_TYPE, cluster_pb2.Cluster, clusters())
    eds_bytes = response(ENDPOINT_TYPE, endpoint_pb2.ClusterLoadAssignment, assignments())
    run_once(cds_bytes, eds_bytes)   # warm-up (imports, caches)
    best: dict[str, float] = {}
    for _ in range(RUNS):
        gc.collect()
        for k, v in run_once(cds_bytes, eds_bytes).items():
            best[k] = min(best.get(k, 1e18), v)
    gc.collect()
    tracemalloc.start()
    run_once(cds_bytes, eds_bytes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"python {sys.version.split()[0]} {'GIL' if gil else 'free-threaded'}, protobuf backend "
          f"{proto.implementation()}; N={N}; CDS push {len(cds_bytes)} B, EDS push {len(eds_bytes)} B")
    for k, v in best.items():
        print(f"  {k:11s} {v:8.1f} ms")
    print(f"  total       {sum(best.values()):8.1f} ms; peak Python allocations {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
