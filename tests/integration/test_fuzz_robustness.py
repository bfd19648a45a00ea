"""Seeded mutation fuzz of HTTP/1.1 requests through the real proxy, on both codecs.

Real sockets on 127.0.0.1: raw clients send mutated requests (byte flips, inserted and deleted
bytes, truncation, contradicting Content-Length / Transfer-Encoding lines, obs-fold, oversized
headers, chunked deliveries with small delays, early SHUT_WR) to the proxy, in front of a
recording upstream that parses what the proxy forwards with h11 (an independent parser for the
fast codec). The bar, per input:
- the reply is empty (closed) or HTTP/1.1 responses with allowed statuses, well framed, and
  nothing follows a connection-ending error response;
- a 200 carries the marker of this input only (no response meant for another client);
- no request to a `/smuggled-<token>` path, hidden in every request body, reaches the upstream
  as a request head unless the client bytes really hold it as a request (checked with h11);
- what the proxy forwards always parses upstream;
- the connection ends within the proxy's (short, configured) timeouts.
While the campaign runs, a bystander keep-alive client keeps getting its own 200s. Afterwards
the proxy still serves, every worker thread is alive with no unhandled exception counted, no
downstream connection is left open and the process's fd count is back near its baseline.

Reproduce one input: `make_case(seed)` is pure; a failure message names the seed and the bytes.
Run: nice -n 19 .venv/bin/python -m pytest tests/integration/test_fuzz_robustness.py -q -p no:randomly
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h11
import pytest

from .harness import front_proxy_config, raw_request, static_cluster
from .fuzz import (parse_responses, recv_some, insert_line, m_delete, m_flip, m_insert, m_line_endings, m_obs_fold,
                            m_truncate, oversize)
from .servers import AcceptLoop

CODECS = ["fast", "h11"]
BASE_SEED = 0xF0220000
N_CASES = 600            # per codec; 3000 per codec (seeds 0xA0000000..) also ran clean
PARALLEL = 16            # concurrent fuzz connections
IDLE_TIMEOUT = 0.5       # the proxy's idle_timeout; request_timeout and stream_idle_timeout too
READ_DEADLINE = 4.0      # the proxy's own timeouts (below) end every connection well before this
# 403: Envoy's answer to an Upgrade no upgrade_configs entry enables (a mutation adds h2c);
# 414: a target too long (RFC 9112 section 3).
ALLOWED = {200, 400, 403, 404, 408, 413, 414, 417, 426, 431, 501, 502, 503}
CLOSING_ERRORS = {400, 408, 413, 414, 417, 426, 431, 501}  # nothing may follow these on a connection


@pytest.fixture
def fuzz_upstream():
    u = RecordingUpstream()
    yield u
    u.close()


# -- the recording upstream -------------------------------------------------------------------

class RecordingUpstream(AcceptLoop):
    """Parses what the proxy sends with h11 (server role); records every request head and any
    parse error on bytes the proxy really sent. Answers 200 echoing the target (`x-fz-path`)
    and `x-fz-id`; closes a connection idle between requests for 0.3 s (so pooled fds go away
    after a run)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards heads, errors
        self.heads: list[tuple[bytes, bytes]] = []   # (target, x-fz-id)
        self.errors: list[str] = []
        super().__init__("fuzz-upstream")

    def handle(self, s: socket.socket, n: int) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = bytearray()
        try:
            while True:
                # Only an idle connection times out: a request the proxy is still sending waits.
                s.settimeout(0.3 if conn.their_state is h11.IDLE else 5.0)
                try:
                    data = s.recv(65536)
                except (socket.timeout, OSError):
                    return
                seen += data
                conn.receive_data(data)
                while True:
                    try:
                        ev = conn.next_event()
                    except h11.RemoteProtocolError as e:
                        if data:  # an incomplete request at EOF is the proxy aborting: fine
                            with self.lock:
                                self.errors.append(f"{e}: {bytes(seen[-600:])!r}")
                        return
                    if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                        break
                    if isinstance(ev, h11.Request):
                        fid = dict(ev.headers).get(b"x-fz-id", b"")
                        with self.lock:
                            self.heads.append((ev.target, fid))
                        target = ev.target
                    elif isinstance(ev, h11.EndOfMessage):
                        s.sendall(conn.send(h11.Response(status_code=200, headers=[
                            ("content-length", "2"), ("x-fz-path", target), ("x-fz-id", fid)]))
                                  + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))
                        conn.start_next_cycle()
                if not data or conn.our_state is h11.MUST_CLOSE:
                    return
        except (OSError, h11.LocalProtocolError):
            return
        finally:
            s.close()


# -- the corpus and the mutators (pure: same seed, same case) -----------------------------------

def _smuggle(tok: bytes) -> bytes:
    return b"GET /smuggled-" + tok + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def _head(method: bytes, target: bytes, tok: bytes, extra: list[bytes] = (), version=b"1.1") -> bytes:
    lines = [b"%s %s HTTP/%s" % (method, target, version), b"Host: a", b"X-Fz-Id: " + tok,
             b"User-Agent: fuzz/1", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _cl(method: bytes, target: bytes, tok: bytes, body: bytes, extra=(), version=b"1.1") -> bytes:
    # The classic CL.TE payload: a back end reading this body as chunked would end it at "0"
    # and take the rest for a second request; a front end that lost the Content-Length sees
    # "0" as a request line (400), never the smuggled line.
    return _head(method, target, tok, [b"Content-Length: %d" % len(body), *extra], version) + body


def _chunked(method: bytes, target: bytes, tok: bytes, chunks: list[bytes], trailers=b"", ext=b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"
    return _head(method, target, tok, [b"Transfer-Encoding: chunked"]) + body


def seed_corpus(tok: bytes) -> list[bytes]:
    """~15 valid and edge-case requests; every path holds /fz/<tok>, every body the smuggle line."""
    p = b"/fz/" + tok
    sm = _smuggle(tok)
    payload = b"0\r\n\r\n" + sm
    return [
        _head(b"GET", p + b"/get", tok, [b"Accept: */*"]),
        _head(b"GET", p + b"/close?q=1&r=%20", tok, [b"Connection: close"]),
        _cl(b"POST", p + b"/post", tok, payload, [b"Content-Type: text/plain"]),
        _chunked(b"POST", p + b"/chunked", tok, [sm, b"tail"]),
        _chunked(b"PUT", p + b"/trailers", tok, [b"ab", sm], trailers=b"X-Trailer: t\r\nX-Sum: 1\r\n"),
        _head(b"GET", p + b"/pipe-a", tok) + _head(b"GET", p + b"/pipe-b", tok),
        _cl(b"POST", p + b"/pipe-post", tok, payload) + _head(b"GET", p + b"/pipe-get", tok),
        _head(b"GET", p + b"/h10", tok, version=b"1.0"),
        _cl(b"POST", p + b"/h10-post", tok, payload, version=b"1.0"),
        _cl(b"POST", p + b"/expect", tok, payload, [b"Expect: 100-continue"]),
        _head(b"GET", b"http://a" + p + b"/absolute", tok),
        _head(b"GET", p + b"/long", tok, [b"X-Long-%02d: %s" % (i, b"v" * 60) for i in range(40)]
              + [b"Cookie: " + b"c=" * 700]),
        _cl(b"PATCH", p + b"/empty", tok, b""),
        _chunked(b"POST", p + b"/ext", tok, [sm], ext=b";name=val"),
        _cl(b"DELETE", p + b"/delete", tok, payload, [b"Connection: keep-alive"]),
    ]


_FRAMING_LINES = [
    b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: 1, 1", b"Content-Length: +5",
    b"Content-Length: -1", b"Content-Length: 99999999999999999999", b"Content-Length : 3",
    b"Content-Length: 0x10", b"Content-length: 3\r\nContent-Length: 3",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\tchunked", b"Transfer-Encoding: xchunked", b"Transfer-Encoding: identity",
    b"Transfer-Encoding:\r\n chunked", b"Host: b", b"Expect: 100-continue", b"Expect: 200-ok",
    b"Connection: close, upgrade\r\nUpgrade: h2c", b"Connection: Content-Length",
]


def m_version(rng, d):
    return re.sub(rb"HTTP/1\.[01]", rng.choice((b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10",
                                                 b"http/1.1", b"HTTP/1.1 ", b"HTTP /1.1", b"HTTP/11")), d, count=1)


m_framing = insert_line(_FRAMING_LINES)
m_oversize = oversize(big_values=(7000, 9000, 70000), long_names=(5000, 9000))
MUTATORS = [m_flip, m_flip, m_insert, m_insert, m_delete, m_truncate, m_framing, m_framing,
            m_obs_fold, m_oversize, m_line_endings, m_version]


@dataclass(frozen=True, slots=True)
class Case:
    seed: int
    token: bytes
    data: bytes
    pieces: tuple[bytes, ...]   # sent in this order, `delay` seconds apart
    delay: float
    shut_wr: bool               # shutdown(SHUT_WR) after the last piece
    abort: bool                 # RST right after sending, reply not read

    def describe(self, limit: int = 300) -> str:
        how = f"{len(self.pieces)} piece(s), delay {self.delay}, shut_wr={self.shut_wr}, abort={self.abort}"
        return f"seed={self.seed} ({how}) data={self.data[:limit]!r}{'...' if len(self.data) > limit else ''}"


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    # Tokens far apart (hashed): one flipped byte never turns one input's marker into another's.
    token = b"t" + hashlib.sha256(b"%d" % seed).hexdigest()[:8].encode()
    data = rng.choice(seed_corpus(token))
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        data = rng.choice(MUTATORS)(rng, data) or data
    pieces: tuple[bytes, ...] = (data,)
    delay = 0.0
    if rng.random() < 0.3 and len(data) > 2:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
        pieces = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]))
        delay = rng.choice((0.0, 0.005, 0.02))
    return Case(seed, token, data, pieces, delay, rng.random() < 0.15, rng.random() < 0.04)


# -- client side ------------------------------------------------------------------------------

def run_case(port: int, case: Case) -> tuple[bytes, bool]:
    """Send the case; return (reply bytes, closed by the proxy before READ_DEADLINE)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=READ_DEADLINE)
    out = bytearray()
    try:
        try:
            for i, piece in enumerate(case.pieces):
                if i and case.delay:
                    time.sleep(case.delay)
                s.sendall(piece)
            if case.shut_wr:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may close (after a reply) before everything is sent
        if case.abort:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return b"", True
        deadline = time.monotonic() + READ_DEADLINE
        while True:
            chunk, closed = recv_some(s, deadline)
            if chunk is None:
                return bytes(out), closed
            out += chunk
    finally:
        s.close()


def parse_replies(reply: bytes) -> tuple[list[tuple[int, dict[bytes, bytes]]], str | None]:
    """Split a reply into responses [(status, headers)]; the second item names a framing
    fault, a body cut short included."""
    rs, fault = parse_responses(reply, ())
    if fault is None and rs and rs[-1].complete is False:
        fault = "truncated response body"
    return [(r.status, dict(r.headers)) for r in rs], fault


def h11_sees(data: bytes) -> set[bytes]:
    """Request targets a strict reference parser (h11) finds in the client bytes, up to its
    first protocol error: a /smuggled- target here is genuinely a pipelined request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    seen = set()
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return seen
            if isinstance(ev, h11.Request):
                seen.add(ev.target)
            elif isinstance(ev, h11.EndOfMessage):
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return seen
                conn.start_next_cycle()
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        return seen


def smuggled(heads: list[tuple[bytes, bytes]], cases: list[Case]) -> list[str]:
    """Upstream request heads to a /smuggled-<token> target the client bytes did not really
    hold as a request of their own."""
    by_token = {c.token: c for c in cases}
    out = []
    for target, _fid in heads:
        m = re.search(rb"/smuggled-(t[0-9a-f]{8})", target)
        if m is None:
            continue
        case = by_token.get(m.group(1))
        if case is None or target not in h11_sees(case.data):
            out.append(f"smuggled request reached the upstream: {target!r}\n    input: "
                       f"{case.describe() if case else '(unknown token)'}")
    return out


def check_reply(case: Case, reply: bytes, closed: bool, all_tokens: set[bytes]) -> str | None:
    if not closed:
        return f"connection still open {READ_DEADLINE}s later (proxy timeouts are 0.5 s), got {reply[:120]!r}"
    responses, fault = parse_replies(reply)
    if fault:
        return f"{fault}; reply {reply[:200]!r}"
    finals = [(st, h) for st, h in responses if st >= 200]
    for i, (st, h) in enumerate(finals):
        if st not in ALLOWED:
            return f"status {st} not allowed; reply {reply[:200]!r}"
        if st in CLOSING_ERRORS and i != len(finals) - 1:
            return f"a response followed the {st}; reply {reply[:300]!r}"
        if st == 200:
            marker = h.get(b"x-fz-path", b"") + b" " + h.get(b"x-fz-id", b"")
            foreign = [t for t in all_tokens if t != case.token and t in marker]
            if foreign or b"x-fz-path" not in h:
                return f"a 200 not from this request's upstream exchange ({marker!r}); reply {reply[:300]!r}"
    return None


# -- the campaign -----------------------------------------------------------------------------

def _config(port: int) -> dict:
    return front_proxy_config(
        [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
        [static_cluster("backend", port)],
        max_request_headers_kb=8, request_timeout="0.5s", stream_idle_timeout="0.5s",
        delayed_close_timeout="0.2s",
        common_http_protocol_options={"idle_timeout": f"{IDLE_TIMEOUT}s"},
        http_protocol_options={"accept_http_10": True})


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def warm_baseline(p, upstream_gauge: str) -> int:
    """A first request through the proxy, then the process's fd count once that request's
    pooled upstream connection has closed (`upstream_gauge` at 0): the clean baseline that
    `assert_healthy` compares against."""
    warm = raw_request(p.port, b"GET /warm HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert warm.startswith(b"HTTP/1.1 200 "), warm[:200]
    assert p.wait_for(lambda: p.gauges().get(upstream_gauge) == 0, 5)
    return _fd_count()


def assert_healthy(p, run: str, fd_before: int, gauges: tuple[str, ...]) -> None:
    """After a campaign: the proxy still serves, no worker died or counted an unhandled
    exception, every connection named by `gauges` closed and its fd was released."""
    after = raw_request(p.port, b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert after.startswith(b"HTTP/1.1 200 "), (run, after[:200])
    for w in p.server.workers:
        assert w.is_alive(), f"{run}: {w.name} thread died"
        assert w.dispatcher.unhandled_exceptions == 0, f"{run}: {w.name} had unhandled exceptions"
    unhandled = {k: v for k, v in p.counters().items() if k.endswith("unhandled_exceptions") and v}
    assert not unhandled, (run, unhandled)
    for gauge in gauges:
        assert p.wait_for(lambda: p.gauges().get(gauge, 0) == 0, 5), (run, gauge, p.gauges().get(gauge))
    assert p.wait_for(lambda: _fd_count() <= fd_before + 2, 5), \
        (run, "fd leak", fd_before, _fd_count(), sorted(os.listdir("/proc/self/fd")))


def run_campaign(port: int, cases: list, run_case, parallel: int) -> tuple[list, float, "Bystander"]:
    """Run every case, `parallel` at a time, while a bystander keep-alive client runs:
    (replies in case order, seconds taken, the bystander)."""
    bystander = Bystander(port)
    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        replies = list(pool.map(lambda c: run_case(port, c), cases))
    elapsed = time.monotonic() - t0
    bystander.stop.set()
    bystander.thread.join(5)
    return replies, elapsed, bystander


class Bystander:
    """One well-behaved keep-alive client requesting every 20 ms while the campaign runs.
    A close that races its request after the connection sat idle for about the proxy's
    idle_timeout is the proxy's right (it reconnects); any other close or a wrong reply fails."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.reconnects = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="fuzz-bystander")
        self.thread.start()

    def _run(self) -> None:
        s = None
        n = 0
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    buf = b""
                n += 1
                path = b"/bystander/%d" % n
                idle = time.monotonic() - idle_since
                chunk = b"-"
                try:
                    s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nX-Fz-Id: bystander\r\n\r\n" % path)
                    while not re.search(rb"\r\n\r\nok", buf):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                except ConnectionResetError:
                    # The request met the proxy's idle close (it came to a socket the proxy
                    # had closed: a reset, not a FIN): judged below as a close.
                    chunk = b""
                if not chunk:
                    s.close()
                    s = None
                    # The proxy's right: closing after idle_timeout; and, as Envoy, a 503 when
                    # the request met an upstream connection the upstream was just closing
                    # (an HTTP/1.1 pool's race, no retry policy here), a few times at most.
                    raced = buf.startswith(b"HTTP/1.1 503 ") and b"disconnect/reset before headers" in buf
                    if (buf and not raced) or (not buf and idle < IDLE_TIMEOUT * 0.8) or self.reconnects >= 3:
                        self.failures.append(f"bystander connection closed at request {n} "
                                             f"({idle:.2f}s idle): {buf[:200]!r}")
                        return
                    self.reconnects += 1
                    continue
                head, _, buf = buf.partition(b"\r\n\r\nok")
                if not head.startswith(b"HTTP/1.1 200 ") or b"x-fz-path: " + path + b"\r\n" not in head + b"\r\n":
                    self.failures.append(f"bystander request {n} got {head[:300]!r}")
                    return
                self.ok += 1
                idle_since = time.monotonic()
                self.stop.wait(0.02)
        except OSError as e:
            self.failures.append(f"bystander: {e!r}")
        finally:
            if s is not None:
                s.close()


def test_mutation_campaign_every_input_gets_a_clear_answer_and_the_proxy_survives(
        proxy_factory, fuzz_upstream, codec):
    up = fuzz_upstream
    run = f"seeds {BASE_SEED:#x}..{BASE_SEED + N_CASES - 1:#x} ({codec} codec)"
    p = proxy_factory(_config(up.port), concurrency=2, codec=codec)
    fd_before = warm_baseline(p, "cluster.backend.upstream_cx_active")

    cases = [make_case(BASE_SEED + i) for i in range(N_CASES)]
    tokens = {c.token for c in cases}
    replies, elapsed, bystander = run_campaign(p.port, cases, run_case, PARALLEL)

    failures = []
    for case, (reply, closed) in zip(cases, replies):
        why = None if case.abort else check_reply(case, reply, closed, tokens)
        if why:
            failures.append(f"{why}\n    input: {case.describe()}")
    with up.lock:
        heads = list(up.heads)
        upstream_errors = list(up.errors)
    failures += smuggled(heads, cases)
    assert not failures, f"{len(failures)} failures, {run}:\n" + "\n".join(failures[:8])
    assert not upstream_errors, f"{run}: the proxy forwarded bytes h11 cannot parse: {upstream_errors[:3]}"
    assert not bystander.failures and bystander.ok > 0, (run, bystander.failures, bystander.ok)

    assert_healthy(p, run, fd_before, ("http.ingress_http.downstream_cx_active",
                                       "server.total_connections", "cluster.backend.upstream_cx_active"))
    assert p.counters()["http.ingress_http.downstream_cx_protocol_error"] > N_CASES // 2  # the fuzz bites

    statuses = Counter(st for reply, _ in replies for st, _h in parse_replies(reply)[0])
    print(f"\n{run}: {elapsed:.1f}s, statuses {dict(sorted(statuses.items()))}, "
          f"{len(heads)} upstream requests, bystander {bystander.ok} ok / {bystander.reconnects} reconnects")


# -- the oracles can fail ------------------------------------------------------------------------

def test_the_reply_oracle_flags_bad_replies():
    case = make_case(BASE_SEED)
    ok = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-fz-path: /fz/" + case.token
          + b"/get\r\nx-fz-id: " + case.token + b"\r\n\r\nok")
    err = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad"
    tokens = {case.token, b"tdeadbeef"}
    assert check_reply(case, b"", True, tokens) is None
    assert check_reply(case, b"HTTP/1.1 100 Continue\r\n\r\n" + ok + err, True, tokens) is None
    bad = {
        "still open": (ok, False),
        "status": (b"HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n", True),
        "after the 400": (err + ok, True),
        "truncated": (ok[:-1], True),
        "malformed": (b"HTTP/1.0 200 OK\r\n\r\n", True),
        "other client": (ok.replace(case.token, b"tdeadbeef"), True),
    }
    for name, (reply, closed) in bad.items():
        assert check_reply(case, reply, closed, tokens) is not None, name


def test_the_smuggling_oracle_sees_a_request_hidden_in_a_body(fuzz_upstream):
    """Sent straight to the recording upstream (as a desynchronised proxy would), the CL.TE
    payload of the corpus yields a /smuggled- head, which `smuggled` reports; the same bytes
    framed by Content-Length (what the client meant) hold no such request."""
    case = make_case(BASE_SEED)
    tok = case.token
    body = b"0\r\n\r\n" + _smuggle(tok)
    meant = b"POST /fz/%s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (tok, len(body), body)
    desync = b"POST /fz/%s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%s" % (tok, body)
    raw_request(fuzz_upstream.port, desync, timeout=1)
    assert (b"/smuggled-" + tok, b"") in fuzz_upstream.heads
    case = Case(case.seed, tok, meant, (meant,), 0.0, False, False)
    assert smuggled(fuzz_upstream.heads, [case]) != []
    # A real pipelined request to that path is exempt; a lost Content-Length is not enough
    # (the "0" line in front of it is no request line).
    assert b"/smuggled-" + tok in h11_sees(b"GET /fz/%s HTTP/1.1\r\nHost: a\r\n\r\n" % tok + _smuggle(tok))
    assert b"/smuggled-" + tok not in h11_sees(meant.replace(b"Content-Length: 50", b"X: y"))


# -- bugs the campaign found, fixed since (regression tests) ----------------------------------------

def _one(p, up, data: bytes) -> tuple[list, bytes, list]:
    reply, closed = run_case(p.port, Case(0, b"", data, (data,), 0.0, False, False))
    assert closed, reply[:200]
    responses, fault = parse_replies(reply)
    assert fault is None, (fault, reply[:300])
    with up.lock:
        return responses, reply, list(up.heads)


@pytest.mark.parametrize("codec_name", CODECS)
def test_request_line_without_version_is_rejected(proxy_factory, fuzz_upstream, codec_name):
    """Found by seed 0xb0000082 (`POST /fz/t238705e5/pHTTP/1.1` after a deleted space):
    `GET /aHTTP/1.1` has no HTTP version (llhttp: 0.9); only 1.0 and 1.1 are accepted."""
    p = proxy_factory(_config(fuzz_upstream.port), codec=codec_name)
    responses, reply, heads = _one(p, fuzz_upstream, b"GET /fz/aHTTP/1.1\r\nHost: a\r\n\r\n")
    assert [st for st, _ in responses] == [400], reply[:300]
    assert heads == []


@pytest.mark.parametrize("codec_name", CODECS)
def test_valid_request_before_garbage_in_one_segment_still_gets_its_response(
        proxy_factory, fuzz_upstream, codec_name):
    """Found by seeds 0xb000046e / 0xc00006bb. Envoy parses one request at a time (the codec
    pauses at message end), so the first request is proxied and answered; the garbage after
    it then gets the 400 and the close."""
    p = proxy_factory(_config(fuzz_upstream.port), codec=codec_name)
    responses, reply, heads = _one(p, fuzz_upstream,
                                   b"GET /fz/first HTTP/1.1\r\nHost: a\r\n\r\nBOGUS\r\n\r\n")
    assert [st for st, _ in responses] == [200, 400], reply[:300]
    assert responses[0][1].get(b"x-fz-path") == b"/fz/first", reply[:300]
    assert [t for t, _ in heads] == [b"/fz/first"]
