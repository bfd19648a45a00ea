"""The tests' rate limit service (tests/ratelimit_server.py) on a fixed port until killed, for
perf/configs/http-ratelimit.yaml: every descriptor in the perf configs is answered OK (no
statuses, no headers).
    .venv/bin/python perf/ratelimit_server.py [PORT]   # default 18096, PERF_PORT_BASE + 16 (perf/ports.py)
Loopback only; nothing recorded."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ports import plan  # noqa: E402  (perf/ports.py, the script's dir)

from tests.ratelimit_server import RateLimitServer  # noqa: E402

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait
    server = RateLimitServer("perf", port=int(sys.argv[1]) if len(sys.argv) > 1 else plan()["ratelimit"], record=False)
    print(f"rate limit service on 127.0.0.1:{server.port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.close()
