"""The memory scenarios' clients for perf/bench.py: 10,000 idle keep-alive connections and a
1 GiB response through a slow reader (HTTP/1.1, or HTTP/2 with prior knowledge), each
sampling the server's RSS.

Job: drive a server already started by bench.py on 127.0.0.1 and return the figures as a dict;
`server` is bench.py's Server (its `mem_kib(key)` reads VmRSS / VmHWM of its process group).
Loopback only. Benchmark tool, not imported by the proxy; no timed assertions anywhere.
"""

from __future__ import annotations

import resource
import selectors
import socket
import statistics
import subprocess
import time

__all__ = ["idle_connections", "slow_reader", "slow_reader_h2", "raise_nofile"]


def raise_nofile(n: int = 65536) -> None:
    """Raise RLIMIT_NOFILE to at least n when allowed (never lowers it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and n > hard:
        try:   # root with CAP_SYS_RESOURCE may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            return
        except (ValueError, OSError):
            n = hard
    if n > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def idle_connections(server, port: int, conns: int, client_cpu: str) -> dict:
    """Open `conns` keep-alive connections, one 100 B request each, then leave them idle:
    the server's VmRSS before and after (median of 3 samples), per connection."""
    raise_nofile(conns + 1000)
    # warm: a few keep-alive requests so pools/allocators exist before the baseline
    subprocess.run(["taskset", "-c", client_cpu, "wrk", "-t1", "-c4", "-d1s",
                    f"http://127.0.0.1:{port}/"], capture_output=True)
    time.sleep(0.5)
    base = server.mem_kib()
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    opened = 0
    pending: dict[socket.socket, bytes] = {}
    try:
        for i in range(conns):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
            pending[s] = b""
            if len(pending) >= 200 or i == conns - 1:   # keep the accept backlog small
                opened += _drive(sel, pending, req)
        time.sleep(1.0)
        rss = [server.mem_kib() for _ in range(3) if not time.sleep(0.3)]
        loaded = statistics.median(rss)
        alive = sum(1 for s in socks if _alive(s))
    finally:
        for s in socks:
            s.close()
        sel.close()
    return {"open": opened, "still_open": alive, "seconds_to_open": time.monotonic() - t0,
            "rss_before_kib": base, "rss_loaded_kib": loaded,
            "kib_per_conn": (loaded - base) / max(opened, 1), "peak_rss_mib": server.mem_kib("VmHWM") / 1024}

def _drive(sel: selectors.BaseSelector, pending: dict, req: bytes) -> int:
    """Connect, send one request, read one full 100 B response on each pending socket."""
    done, deadline = 0, time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key, ev in sel.select(1.0):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE:
                try:
                    s.send(req)
                except OSError:
                    sel.unregister(s); pending.pop(s); continue
                sel.modify(s, selectors.EVENT_READ)
            else:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s); pending.pop(s); continue
                pending[s] += data
                buf = pending[s]
                if b"\r\n\r\n" in buf and len(buf.split(b"\r\n\r\n", 1)[1]) >= 100:
                    sel.unregister(s); pending.pop(s); done += 1
    for s in list(pending):
        sel.unregister(s); pending.pop(s)
    return done


class _PacedRead:
    """A slow reader's clock: `after(got)` sleeps to keep the reading at `rate_mbps` and
    samples the server's VmRSS every 0.1 s; `result` is the scenario's figures."""

    def __init__(self, server, rate_mbps: float, base_kib: int) -> None:
        self.server, self.rate, self.base = server, rate_mbps, base_kib
        self.samples: list[int] = []
        self.t0 = self.next_sample = time.monotonic()

    def after(self, got: int) -> None:
        lag = got / (self.rate * 1e6) - (time.monotonic() - self.t0)
        if lag > 0:
            time.sleep(lag)
        if time.monotonic() >= self.next_sample:
            self.samples.append(self.server.mem_kib())
            self.next_sample += 0.1

    def result(self, got: int, buffer_limit: int, **extra) -> dict:
        secs = time.monotonic() - self.t0
        base = self.base
        peak = max(self.samples) if self.samples else base
        return {"bytes": got, "seconds": secs, "MBps": got / secs / 1e6, "rss_before_kib": base,
                "rss_peak_kib": peak, "rss_growth_kib": peak - base, "samples": len(self.samples),
                "buffer_limit_kib": buffer_limit // 1024,
                "growth_vs_limit": (peak - base) / (buffer_limit / 1024), **extra}


def slow_reader(server, port: int, mb: int, rate_mbps: float, buffer_limit: int) -> dict:
    """Read `mb` MiB of /huge.bin at `rate_mbps`, sampling the server's VmRSS every 0.1 s."""
    subprocess.run(["curl", "-fs", "-o", "/dev/null", f"http://127.0.0.1:{port}/"])
    time.sleep(0.3)
    base = server.mem_kib()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)   # keep the kernel queue small
    s.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
    got, chunk, pace = 0, 64 * 1024, _PacedRead(server, rate_mbps, base)
    want = mb * 1024 * 1024
    head_len = None
    buf = bytearray(chunk)
    while True:
        n = s.recv_into(buf, chunk)
        if not n:
            break
        got += n
        if head_len is None:
            i = bytes(buf[:n]).find(b"\r\n\r\n")
            head_len = i + 4 if i >= 0 else 0
        if got - (head_len or 0) >= want:
            break
        pace.after(got)
    s.close()
    return pace.result(got, buffer_limit)


def slow_reader_h2(server, port: int, mb: int, rate_mbps: float, buffer_limit: int) -> dict:
    """As `slow_reader`, over HTTP/2 with prior knowledge (h2c): one stream GETs /huge.bin and
    the client's flow-control windows (64 KiB, the protocol's default) open only as it consumes
    the DATA, at `rate_mbps`. The server must hold the upstream back by its own windows and
    buffer limits, not by buffering the response."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import ConnectionTerminated, DataReceived, StreamEnded, StreamReset
    subprocess.run(["curl", "-fs", "--http2-prior-knowledge", "-o", "/dev/null", f"http://127.0.0.1:{port}/"])
    time.sleep(0.3)
    base = server.mem_kib()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)   # keep the kernel queue small
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    h2.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench"),
                        (b":path", b"/huge.bin")], end_stream=True)
    s.sendall(h2.data_to_send())
    got, want, ended, pace = 0, mb * 1024 * 1024, None, _PacedRead(server, rate_mbps, base)
    while ended is None:
        data = s.recv(64 * 1024)
        if not data:
            ended = "closed"
            break
        for ev in h2.receive_data(data):
            if isinstance(ev, DataReceived):
                got += len(ev.data)
                # the window opens as the bytes are consumed (h2 sends WINDOW_UPDATE past half)
                h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                ended = "end"
            elif isinstance(ev, (StreamReset, ConnectionTerminated)):
                ended = type(ev).__name__
        out = h2.data_to_send()
        if out:
            s.sendall(out)
        if got >= want:
            break
        pace.after(got)
    s.close()
    return pace.result(got, buffer_limit, ended=ended or "read")


def _alive(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
