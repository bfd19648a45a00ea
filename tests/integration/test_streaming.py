"""Streaming and flow control through the real proxy: 100 MiB bodies both ways with bounded
memory, and a slow reader that must not stall other clients.

The proxy runs in this process. The client and the upstream (`RawHttpUpstream`,
record=False) stream through SHA-256 without buffering, so a large peak of live Python
allocations (tracemalloc, every thread) while a body streams is the proxy buffering it. Live
allocations, not RSS: on the free-threaded build mimalloc keeps pages that one thread freed
for another, so this process' RSS grew by 50-97 MiB in some runs with nothing buffered, where
the GIL build's allocator returned them (the 100 MiB tests failed about one run in two on
3.14t). The slow-reader test and perf/ (the `slow` scenario: a separate proxy process) still
bound RSS.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import tracemalloc

import pytest

from .harness import EchoUpstream, front_proxy_config, static_cluster
from .servers import RawHttpUpstream, new_reader, pattern_bytes, pattern_sha256, read_response

MiB = 1024 * 1024
BIG = 100 * MiB
RSS_GROWTH_LIMIT = 40 * MiB


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakAllocated:
    """The peak of live Python allocations (tracemalloc) while the block runs, above what was
    live when it began."""

    def __enter__(self) -> PeakAllocated:
        tracemalloc.start()
        self.before = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc) -> None:
        self.growth = tracemalloc.get_traced_memory()[1] - self.before
        tracemalloc.stop()


@pytest.fixture
def sink_upstream():
    u = RawHttpUpstream(record=False)
    yield u
    u.close()


@pytest.fixture
def proxy(proxy_factory, sink_upstream):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "60s"}}],
                             [static_cluster("backend", sink_upstream.port)])
    p = proxy_factory(cfg)
    _warm_up(p.port)
    return p


def _warm_up(port: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/warm")
    assert c.getresponse().read()
    c.close()


def test_100mib_request_body_streamed_intact_with_bounded_memory(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    try:
        with PeakAllocated() as peak:
            s.sendall(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BIG)
            for piece in pattern_bytes(BIG):
                s.sendall(piece)
            resp = read_response(s)
    finally:
        s.close()
    assert resp.status == 200
    got = json.loads(resp.body)
    assert got["body_len"] == BIG
    assert got["sha256"] == pattern_sha256(BIG)
    assert peak.growth < RSS_GROWTH_LIMIT, f"live allocations grew by {peak.growth / MiB:.1f} MiB"


def test_100mib_response_body_streamed_intact_with_bounded_memory(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    h = hashlib.sha256()
    received = 0
    try:
        with PeakAllocated() as peak:
            s.sendall(b"GET /stream/%d HTTP/1.1\r\nHost: a\r\n\r\n" % BIG)
            reader = new_reader(s)
            head = reader.until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-length: %d" % BIG in head.lower()

            def sink(b: bytes) -> None:
                nonlocal received
                h.update(b)
                received += len(b)

            assert reader.exactly_into(BIG, sink)
    finally:
        s.close()
    assert received == BIG
    assert h.hexdigest() == pattern_sha256(BIG)
    assert peak.growth < RSS_GROWTH_LIMIT, f"live allocations grew by {peak.growth / MiB:.1f} MiB"


def test_slow_reader_does_not_stall_other_clients(proxy_factory, sink_upstream):
    echo = EchoUpstream("fast")
    try:
        cfg = front_proxy_config(
            [{"match": {"prefix": "/stream"}, "route": {"cluster": "big", "timeout": "60s"}},
             {"match": {"prefix": "/"}, "route": {"cluster": "fast"}}],
            [static_cluster("big", sink_upstream.port), static_cluster("fast", echo.port)])
        p = proxy_factory(cfg, concurrency=1)
        _warm_up(p.port)
        size = 64 * MiB
        slow = socket.create_connection(("127.0.0.1", p.port), timeout=30)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            before = _status_kb("VmRSS")
            slow.sendall(b"GET /stream/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
            reader = new_reader(slow)
            head = reader.until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            h = hashlib.sha256()
            got = [0]

            def sink(b: bytes) -> None:
                h.update(b)
                got[0] += len(b)

            assert reader.exactly_into(MiB, sink)  # then the slow client stops reading
            for i in range(10):  # same worker (concurrency 1), new connections
                c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
                c.request("GET", f"/other/{i}")
                r = c.getresponse()
                assert r.status == 200
                assert json.loads(r.read())["path"] == f"/other/{i}"
                c.close()
            # While stalled, the proxy holds at most its buffers, not the rest of the response.
            assert _status_kb("VmRSS") - before < RSS_GROWTH_LIMIT
            assert reader.exactly_into(size - MiB, sink)  # resumes and completes intact
            assert got[0] == size
            assert h.hexdigest() == pattern_sha256(size)
        finally:
            slow.close()
    finally:
        echo.close()
