"""Micro-benchmark of the fast HTTP/1.1 codec's per-request work (both sides).

server: parse a small GET + encode the response head; client: encode the request head +
parse a ~250-byte nginx response (head + body in one buffer). Prints µs per iteration
(timeit, best of 5). `--profile` runs cProfile on each side instead.

Usage: .venv/bin/python perf/codec_bench.py [--profile] [-n 20000]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import timeit
from pathlib import Path

# `--root DIR` benchmarks another checkout (e.g. a copy of the code before a change).
_ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else None
sys.path.insert(0, _ROOT or str(Path(__file__).resolve().parent.parent))

from proxy.http.codec.http1_fast import FastServerCodec  # noqa: E402
from proxy.http.codec.http1_fast_client import FastClientCodec  # noqa: E402

REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 22:47:19 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
        + b"x" * 100)
RESP_HEADERS = [(b"server", b"envoy"), (b"content-length", b"100")]
REQ_HEADERS = [(b"host", b"127.0.0.1"), (b"x-request-id", b"abc")]


def make_server():
    sc = FastServerCodec()

    def server() -> None:
        sc.feed(REQ)
        sc.encode_response_head(200, None, RESP_HEADERS, b"GET", b"1.1", True)
    return server


def make_client():
    cc = FastClientCodec()

    def client() -> None:
        cc.encode_request_head(b"GET", b"/", REQ_HEADERS, chunked=False)
        cc.feed(RESP)
    return client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--root", help="repository root to import `proxy` from")
    args = ap.parse_args()
    for name, make in (("server", make_server), ("client", make_client)):
        fn = make()
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.n):
                fn()
            prof.disable()
            print(f"--- {name} ---")
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
            continue
        best = min(timeit.repeat(fn, number=args.n, repeat=5))
        print(f"{name}: {best / args.n * 1e6:.2f} µs/iter")


if __name__ == "__main__":
    main()
