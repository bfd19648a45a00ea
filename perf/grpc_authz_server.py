"""The tests' gRPC authorization server (tests/grpc_authz_server.py) on a fixed port until
killed, for perf/configs/http-ext-authz-grpc.yaml: `Bearer token1` is allowed with
x-current-user: user1 (one header mutation), anything else denied.
    .venv/bin/python perf/grpc_authz_server.py [PORT]   # default 18095, PERF_PORT_BASE + 15 (perf/ports.py)
Loopback only; nothing recorded."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ports import plan  # noqa: E402  (perf/ports.py, the script's dir)

from tests.grpc_authz_server import GrpcAuthzServer  # noqa: E402

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait
    server = GrpcAuthzServer("perf", port=int(sys.argv[1]) if len(sys.argv) > 1 else plan()["authz"], record=False)
    print(f"gRPC authorization server on 127.0.0.1:{server.port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.close()
