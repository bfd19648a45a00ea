"""Loopback ports for tests that must name a port before something binds it (a bootstrap
written for a proxy started later, a port that must refuse connections).

A port drawn from the kernel (bind to 0, close) lies in its ephemeral range (32768-60999),
where any socket of any process may take it before the proxy binds it: the source port of a
connection, another process's port 0. Under load that happened (a supervisor test's listener
bind failed with EADDRINUSE). So ports are drawn from fixed ranges below that range, each
test process its own part of each (`port_slice`), never the same port twice in a process:

- 10000-19999: `free_port()` (this module);
- 20000-25999: the differential clients' source ports (tests/differential/clients.py);
- 26000-31999: the differential proxies' ports (tests/differential/proxies.py PortReservation).
"""

from __future__ import annotations

import os
import random
import socket
import threading

__all__ = ["free_port", "port_slice"]


def port_slice(base: int, span: int, per_worker: bool = True) -> tuple[int, int]:
    """[lo, hi) of `base`..`base + span` for this test process. Two suites run side by side
    when FTPROXY_TEST_PORT_SLICE is 0 or 1 (one each), each in pytest-xdist workers
    (PYTEST_XDIST_WORKER gw0, gw1...): with `per_worker`, each process gets its own part, so a
    port one process releases for its proxy is never drawn by another (whose proxy's
    SO_REUSEPORT bind would then share the port and its connections). Without, the part is
    the run's (client ports: processes sharing them only skip each other's busy ones)."""
    runs = 2 if os.environ.get("FTPROXY_TEST_PORT_SLICE") in ("0", "1") else 1
    run = int(os.environ.get("FTPROXY_TEST_PORT_SLICE", "0")) if runs == 2 else 0
    workers, worker = 1, 0
    if per_worker:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        worker = int(name[2:]) if name[2:].isdigit() else 0
        worker = min(worker, workers - 1)
    size = span // (runs * workers)
    lo = base + (run * workers + worker) * size
    return lo, lo + size


_given: set[int] = set()         # ports this process handed out (never again)
_given_lock = threading.Lock()   # tests start proxies from several threads


def free_port() -> int:
    """A loopback port nothing listens on now, of this process's part of 10000-19999, not
    handed out before by this process."""
    lo, hi = port_slice(10000, 10000)
    with _given_lock:
        for _ in range(500):
            port = random.randrange(lo, hi)
            if port in _given:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                s.close()
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {lo}-{hi - 1}")
