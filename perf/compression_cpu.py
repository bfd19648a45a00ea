"""perf/compression_cpu.py - the proxy's CPU per response with the compressor filter: none,
gzip, brotli and zstd (when this interpreter has a zstd binding), on a small and a 100 KB
response.

One ftproxy process per variant (`python -m proxy.server.main`, one worker), a Python upstream
in this process (its CPU is not counted), one keep-alive client sending N requests with the
variant's Accept-Encoding; the proxy's own CPU (utime + stime from /proc/<pid>/stat) over the
N requests, divided by N. The library's share alone (compressing the same bodies in a loop,
no proxy) is printed beside it. Loopback only; kills only the processes it started.

    .venv/bin/python perf/compression_cpu.py            # N=2000 small, N=400 big
    N_SMALL=500 N_BIG=100 .venv-314t/bin/python perf/compression_cpu.py
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from proxy.http.filters.compression_libraries import (BrotliCompressorConfig,  # noqa: E402
                                                      GzipCompressorConfig, ZstdCompressorConfig,
                                                      zstd_api)

SMALL = b"The quick brown fox jumps over the lazy dog. " * 4            # 180 B
_rng = random.Random(7)
BIG = json.dumps([{"id": i, "name": f"user{_rng.randrange(10**6)}", "active": _rng.random() < 0.5,
                   "tags": [_rng.choice(["a", "bb", "ccc", "dddd"]) for _ in range(3)],
                   "score": round(_rng.random() * 100, 3)} for i in range(1400)]).encode()[:100 * 1024]
LIBS = {"gzip": ("Gzip", "gzip"), "brotli": ("Brotli", "br"), "zstd": ("Zstd", "zstd")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upstream() -> int:
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            # Head and body in one write: two would meet Nagle and delayed ACKs (40 ms each).
            body = BIG if self.path == "/big" else SMALL
            ctype = b"application/json" if self.path == "/big" else b"text/plain"
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                             % (ctype, len(body), body))

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def _config(port: int, admin: int, up: int, lib: str | None) -> str:
    filters = []
    if lib:
        filters.append({"name": "envoy.filters.http.compressor", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
            "compressor_library": {"name": lib, "typed_config": {
                "@type": f"type.googleapis.com/envoy.extensions.compression.{lib}.compressor.v3.{LIBS[lib][0]}"}}}})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}, "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "p", "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
                    "http_filters": filters}}]}]}],
            "clusters": [{"name": "up", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": up}}}}]}]}}]}})


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(conn: http.client.HTTPConnection, path: str, accept: str, n: int) -> int:
    size = 0
    for _ in range(n):
        conn.request("GET", path, headers={"accept-encoding": accept})
        r = conn.getresponse()
        size = len(r.read())
    return size


def measure(lib: str | None, up: int, n_small: int, n_big: int) -> dict:
    port, admin = _free_port(), _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(_config(port, admin, up, lib))
    proc = subprocess.Popen([sys.executable, "-m", "proxy.server.main", "-c", f.name, "--concurrency", "1",
                             "-l", "warning", "--disable-hot-restart"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        accept = LIBS[lib][1] if lib else "identity"
        out = {}
        for path, n in (("/small", n_small), ("/big", n_big)):
            _run(conn, path, accept, max(n // 10, 20))  # warm-up
            t0 = _cpu(proc.pid)
            size = _run(conn, path, accept, n)
            out[path] = ((_cpu(proc.pid) - t0) / n * 1e6, size)
        conn.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(f.name)


def library_only(lib: str, body: bytes, n: int) -> float:
    config = {"gzip": GzipCompressorConfig, "brotli": BrotliCompressorConfig, "zstd": ZstdCompressorConfig}[lib]()
    t0 = time.process_time()
    for _ in range(n):
        config.new().compress(body, True)
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    n_small = int(os.environ.get("N_SMALL", 2000))
    n_big = int(os.environ.get("N_BIG", 400))
    up = _upstream()
    libs = [None, "gzip", "brotli"] + (["zstd"] if zstd_api() is not None else [])
    print(f"{sys.version.split()[0]} {'free-threaded' if not getattr(sys, '_is_gil_enabled', lambda: True)() else ''}"
          f"  small={len(SMALL)} B  big={len(BIG)} B  N={n_small}/{n_big}")
    print(f"{'library':8} {'small: proxy CPU us/req':>24} {'bytes':>6} {'lib only us':>11}"
          f" {'100 KB: proxy CPU us/req':>25} {'bytes':>7} {'lib only us':>11}")
    for lib in libs:
        r = measure(lib, up, n_small, n_big)
        ls = library_only(lib, SMALL, 2000) if lib else 0.0
        lb = library_only(lib, BIG, 100) if lib else 0.0
        print(f"{lib or 'none':8} {r['/small'][0]:24.0f} {r['/small'][1]:6} {ls:11.0f}"
              f" {r['/big'][0]:25.0f} {r['/big'][1]:7} {lb:11.0f}")


if __name__ == "__main__":
    main()
