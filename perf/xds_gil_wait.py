"""How long a worker thread waits to run again while the main thread decodes and applies a
1,000-cluster CDS+EDS push (issue 19), in one process, without sockets: what the GIL (3.13)
or the shared CPUs (3.14t) cost a worker per wake-up, apart from the machine's other load.

The "worker" sleeps 0.5 ms (as if waiting in epoll: the GIL is released), then does ~50 µs of
Python work (a request's worth); each wake-up's delay past its 0.5 ms is one sample. The main
thread meanwhile idles (`steady`) or decodes and applies the push exactly as perf/xds_push.py
does (`push`), wrapped as the gRPC client wraps one message: `gc_paused()` (proxy/xds/
grpc_stream.py: no cyclic GC; with a GIL, the switch interval lowered to XDS_SWITCH_INTERVAL)
or, for comparison, with only the collector paused (`push, 5 ms switch`).

    python perf/xds_gil_wait.py      # RUNS=3
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import xds_push  # noqa: E402  (perf/xds_push.py: the push and its decode+apply)

from proxy.xds.grpc_stream import XDS_SWITCH_INTERVAL, gc_paused  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
SLEEP = 0.0005


@contextmanager
def gc_only():
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def measure(busy) -> list[float]:
    samples: list[float] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(SLEEP)
            samples.append(time.perf_counter() - t0 - SLEEP)
            x = 0
            for i in range(2000):   # ~50 µs of Python
                x += i
    th = threading.Thread(target=worker)
    th.start()
    time.sleep(0.1)
    samples.clear()
    busy()
    stop.set()
    th.join()
    return samples


def q(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p * len(s)))] * 1000


def main() -> None:
    data = (xds_push.response(xds_push.CLUSTER_TYPE, xds_push.cluster_pb2.Cluster, xds_push.clusters()),
            xds_push.response(xds_push.ENDPOINT_TYPE, xds_push.endpoint_pb2.ClusterLoadAssignment,
                              xds_push.assignments()))
    xds_push.run_once(*data)   # warm-up (imports, caches)
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"python {sys.version.split()[0]} ({'GIL' if gil else 'free-threaded'}), switch interval "
          f"{sys.getswitchinterval() * 1000:.1f} ms (push: {XDS_SWITCH_INTERVAL * 1000:.1f} ms)")
    rows = {"steady": [], "push, 5 ms switch": [], "push (gc_paused)": []}
    for _ in range(RUNS):
        rows["steady"] += measure(lambda: time.sleep(0.6))
        for name, wrap in (("push, 5 ms switch", gc_only), ("push (gc_paused)", gc_paused)):
            def busy(wrap=wrap) -> None:
                with wrap():
                    xds_push.run_once(*data)
            rows[name] += measure(busy)
    for name, samples in rows.items():
        print(f"  {name:18s} {len(samples):6d} wake-ups, p50 {q(samples, 0.5):6.3f} ms, "
              f"p99 {q(samples, 0.99):6.3f} ms, max {max(samples) * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
