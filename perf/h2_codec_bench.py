"""Micro-benchmark of the downstream HTTP/2 codec (Http2ServerCodec) per request, on each
engine: ours (http2_frames) and h2's (the reference). What h2load -m 10 sends (HEADERS of a
GET with END_STREAM, ten streams a batch, a WINDOW_UPDATE now and then) goes in; the codec's
callbacks answer each request with a whole nginx-like response (encode_response + 612 bytes)
and end the stream, as the HCM does. Prints µs per request (best of 5). `--profile` runs
cProfile instead.

Usage: .venv/bin/python perf/h2_codec_bench.py [--profile] [-n 20000] [--engine fast|h2]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

_ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else None
sys.path.insert(0, _ROOT or str(Path(__file__).resolve().parent.parent))

from hpack import Encoder  # noqa: E402

from proxy.http.codec.http2_server import Http2Options, Http2ServerCodec  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RESP_HEADERS = [(b"server", b"nginx/1.22.1"), (b"date", b"Mon, 07 Dec 2026 08:00:00 GMT"),
                (b"content-type", b"text/html"), (b"content-length", b"612"),
                (b"last-modified", b"Tue, 01 Dec 2026 10:00:00 GMT"), (b"etag", b'"abc-264"'),
                (b"accept-ranges", b"bytes"), (b"x-envoy-upstream-service-time", b"0")]
BODY = b"x" * 612


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def client_batches(n: int, m: int = 10) -> list[bytes]:
    """h2load's bytes: the preface and SETTINGS, then batches of `m` GETs."""
    enc = Encoder()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
              (b":authority", b"127.0.0.1:18090"), (b"user-agent", b"h2load nghttp2/1.52.0")]
    out = [PREFACE + frame(4, 0, 0, (3).to_bytes(2, "big") + (100).to_bytes(4, "big") +
                           (4).to_bytes(2, "big") + (65535).to_bytes(4, "big")) + frame(4, 1, 0)]
    sid = 1
    received = 0
    for _ in range(n // m):
        batch = []
        for _ in range(m):
            batch.append(frame(1, 5, sid, enc.encode(fields)))
            sid += 2
        received += m * len(BODY)
        if received > 32768:  # the client gives the connection's window back
            batch.append(frame(8, 0, 0, received.to_bytes(4, "big")))
            received = 0
        out.append(b"".join(batch))
    return out


class Transport:
    buffered_bytes = 0
    closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self, flush: bool = True) -> None:
        self.closed = True


class Hcm:
    """Answers each request at once, as the HCM does for a response already complete."""

    def __init__(self) -> None:
        self.codec = None
        self.done: list[int] = []

    def on_stream_headers(self, sid, head, end):
        codec = self.codec
        codec.encode_response(sid, 200, RESP_HEADERS, BODY)
        codec.stream_ended(sid)

    def on_stream_data(self, sid, data, end):
        pass

    def on_stream_trailers(self, sid, trailers):
        pass

    def on_stream_reset(self, sid, reason):
        pass

    def on_codec_error(self, sid, error):
        raise AssertionError(error)


def run(engine: str, batches: list[bytes]) -> None:
    hcm = Hcm()
    codec = Http2ServerCodec(Transport(), hcm, Http2Options(), ((b"server", b"ftproxy"),), None, engine)
    hcm.codec = codec
    for b in batches:
        codec.dispatch(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--engine", choices=("fast", "h2"), action="append")
    ap.add_argument("--root", help="repository root to import `proxy` from")
    args = ap.parse_args()
    batches = client_batches(args.n)
    for engine in args.engine or ("fast", "h2"):
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run, engine, batches)
            print(f"== {engine}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
            continue
        best = min(_timed(engine, batches) for _ in range(5))
        print(f"{engine:5s} {best / args.n * 1e6:7.2f} µs per request (CPU, best of 5)")


def _timed(engine: str, batches: list[bytes]) -> float:
    t = time.process_time()
    run(engine, batches)
    return time.process_time() - t


if __name__ == "__main__":
    main()
