"""The upstream pool hands out streams, not connections: the real HttpConnPool on a real worker
dispatcher, opening the in-test multiplexing codec's connections (tests/mux/client_codec.py,
registered for a test protocol) to a real mux server (tests/mux/backend.py) on 127.0.0.1.

Each `Exchange` plays the router's part: it implements the stream callbacks and the pool's
on_pool_ready/on_pool_failure, and calls only the UpstreamStream interface.
"""

from __future__ import annotations

import threading
import time

import pytest

from proxy.http.headers import Headers, RequestHead
from proxy.stats.store import StatsRegistry
from proxy.threads.worker import Worker
from proxy.upstream.cluster_config import parse_cluster
from proxy.upstream.cluster_manager import ClusterManager
from proxy.upstream.conn_pool import HttpConnPool, register_client_connection
from tests.mux.backend import MuxBackend
from tests.mux.client_codec import MUX, MuxClientConnection, register
from tests.mux.frames import RESET
from tests.ports import free_port


class MuxTwo(MuxClientConnection):
    max_concurrent_streams = 2


register()
MUX2 = register(MuxTwo, "mux-test/2")


# -- the harness -------------------------------------------------------------------------------

class PoolEnv:
    """A started Worker with one static cluster (127.0.0.1:`port`) and one pool of `protocol`."""

    def __init__(self, port: int, protocol: str = MUX, **cluster_fields) -> None:
        raw = {"name": "mux", "connect_timeout": "2s",
               "load_assignment": {"cluster_name": "mux", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {
                       "address": "127.0.0.1", "port_value": port}}}}]}]},
               **cluster_fields}
        cm = ClusterManager([parse_cluster(raw, "clusters.mux")], lambda snaps: None)
        cm.initialize()
        self.worker = Worker(0, StatsRegistry().new_store("worker_0"))
        self.worker.start()
        self.log: list[tuple[str, str]] = []  # (exchange, event) in the order the worker saw them

        def setup():
            self.worker.set_clusters(cm.snapshots())
            wc = self.worker.clusters["mux"]
            return wc, HttpConnPool(wc, wc.snapshot.hosts[0], wc.limits, wc.transport_factory, protocol)

        self.cluster, self.pool = self.call(setup)

    def call(self, fn):
        """Run `fn` on the worker thread and return its result."""
        box: dict = {}
        done = threading.Event()

        def run():
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the test thread
                box["error"] = e
            finally:
                done.set()

        self.worker.post(run)
        assert done.wait(5), "the worker did not run the call"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stat(self, name: str) -> int:
        return self.call(lambda: getattr(self.cluster.stats, name).value)

    def start(self, ex: Exchange, fresh: bool = False) -> Exchange:
        ex.env = self
        ex.handle = self.call(lambda: self.pool.new_stream(ex, fresh))
        return ex

    def start_all(self, exs: list[Exchange]) -> list[Exchange]:
        """Ask for all the streams in one turn of the worker's loop (no connect completes
        between them)."""
        for ex in exs:
            ex.env = self

        def run():
            for ex in exs:
                ex.handle = self.pool.new_stream(ex)

        self.call(run)
        return exs

    def stop(self) -> None:
        self.call(self.pool.drain)
        self.worker.stop()
        self.worker.join(5)


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Exchange:
    """One request through the pool, as the router makes it: `path`, an optional body sent in
    `chunks` (`chunk_ms` apart), optional trailers, and an optional timeout after which it
    abandons the stream (`reset()`, as the router does on its route timeout)."""

    def __init__(self, name: str, path: str, chunks=(), chunk_ms: float = 0, trailers=None,
                 timeout_ms: float | None = None, pause_on_headers: bool = False) -> None:
        self.name = name
        self.path = path.encode()
        self.chunks = [c.encode() if isinstance(c, str) else c for c in chunks]
        self.chunk_ms = chunk_ms
        self.trailers = trailers
        self.timeout_ms = timeout_ms
        self.pause_on_headers = pause_on_headers
        self.env: PoolEnv | None = None
        self.handle = None
        self.stream = None
        self.status = None
        self.headers = None
        self.body = b""
        self.events: list[str] = []
        self.reset_info = None
        self.failure = None
        self.finished = threading.Event()
        self.timer = None

    def _event(self, what: str) -> None:
        self.events.append(what)
        self.env.log.append((self.name, what))

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.disable()
        self.finished.set()

    # -- pool callbacks (on the worker) ---------------------------------------------------------
    def on_pool_ready(self, stream) -> None:
        self.stream = stream
        self._event("ready")
        d = self.env.worker.dispatcher
        head = RequestHead(b"POST" if self.chunks else b"GET", self.path, b"mux.test", b"http",
                           Headers([(b"x-name", self.name.encode())]))
        end_now = not self.chunks and self.trailers is None
        stream.send_headers(head, end_now, False)
        if self.timeout_ms is not None:
            self.timer = d.call_later(self.timeout_ms / 1000.0, self._timeout)
        if end_now:
            return
        for i, chunk in enumerate(self.chunks):
            d.call_later(self.chunk_ms * i / 1000.0, lambda c=chunk: self._send(c))
        d.call_later(self.chunk_ms * len(self.chunks) / 1000.0, self._end)

    def _send(self, chunk: bytes) -> None:
        if not self.finished.is_set():
            self.stream.send_data(chunk)

    def _end(self) -> None:
        if not self.finished.is_set():
            self.stream.end(self.trailers)

    def _timeout(self) -> None:
        self.timer = None
        if not self.finished.is_set():
            self._event("timeout")
            self.stream.reset()
            self._finish()

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.failure = (reason, flag)
        self._event("failure")
        self._finish()

    # -- stream callbacks (on the worker) -------------------------------------------------------
    def on_upstream_headers(self, ev, body=None) -> None:
        self.status = ev.status
        self.headers = ev.headers
        self._event("headers")
        if self.pause_on_headers:
            self.stream.read_disable(True)
        if body is not None:
            self.body += body
            self._complete()

    def on_upstream_data(self, data: bytes) -> None:
        self._event("data")
        self.body += data

    def on_upstream_complete(self, trailers) -> None:
        self._complete()

    def _complete(self) -> None:
        self._event("complete")
        self.stream.release(True)
        self._finish()

    def on_upstream_reset(self, reason, flag="UC", status=503, reused=False, transport_failure="") -> None:
        self.reset_info = (reason, flag)
        self._event("reset")
        self._finish()

    def on_upstream_watermark(self, above: bool) -> None:
        self._event("above" if above else "below")

    def wait(self, timeout: float = 5.0) -> Exchange:
        assert self.finished.wait(timeout), f"{self.name} did not finish: {self.events}"
        return self


@pytest.fixture
def backend():
    b = MuxBackend()
    yield b
    b.close()


@pytest.fixture
def make_env():
    envs = []

    def make(port, protocol=MUX, **fields):
        env = PoolEnv(port, protocol, **fields)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.stop()


def _first(frames, sid, kinds=None):
    return next(i for i, (k, s) in enumerate(frames) if s == sid and (kinds is None or k in kinds))


def _last(frames, sid):
    return max(i for i, (_, s) in enumerate(frames) if s == sid)


# -- tests ---------------------------------------------------------------------------------------

def test_streams_share_one_connection_with_frames_interleaved_both_ways(backend, make_env):
    env = make_env(backend.port)
    # 0.9 s a stream: the three overlap even when starting them is slow (a loaded machine).
    exs = [env.start(Exchange(f"s{i}", f"/stream?chunks=3&ms=300&n={i}", chunks=["a", "b", "c"],
                              chunk_ms=15)) for i in range(3)]
    for ex in exs:
        ex.wait()
    for i, ex in enumerate(exs):
        assert ex.status == 200 and ex.reset_info is None
        p = f"/stream?chunks=3&ms=300&n={i}".encode()
        assert ex.body == p + b"#0;" + p + b"#1;" + p + b"#2;"
    assert backend.connection_count() == 1
    conn = backend.connections[0]
    assert [s.body for s in backend.streams] == [b"abc"] * 3
    assert {s.conn for s in backend.streams} == {0} and conn.max_open == 3
    ids = [s.id for s in backend.streams]
    # Requests interleaved on the wire: each stream's first frame comes before the others' last.
    for a in ids:
        for b in ids:
            assert _first(conn.frames_in, a) < _last(conn.frames_in, b)
            assert _first(conn.frames_out, a) < _last(conn.frames_out, b)
    # ... and so did the responses the pool's streams handed over (data of each between the
    # others' heads and completions).
    order = env.log
    for a in ("s0", "s1", "s2"):
        for b in ("s0", "s1", "s2"):
            assert order.index((a, "headers")) < order.index((b, "complete"))
    assert env.stat("upstream_cx_total") == 1
    assert env.call(lambda: (env.pool.active_requests, env.pool.cx_active)) == (0, 1)
    assert env.call(lambda: env.pool.ready[0].capacity) == MuxClientConnection.max_concurrent_streams


def test_one_more_stream_than_capacity_opens_a_second_connection(backend, make_env):
    env = make_env(backend.port, MUX2)
    exs = env.start_all([Exchange(f"s{i}", f"/slow?ms=200&n={i}") for i in range(3)])
    for ex in exs:
        assert ex.wait().status == 200
    assert backend.connection_count() == 2
    assert sorted(c.max_open for c in backend.connections) == [1, 2]
    assert env.stat("upstream_cx_total") == 2
    assert env.stat("upstream_rq_pending_total") == 3  # all three waited for a connect


def test_at_max_connections_a_stream_waits_for_capacity_returned_by_an_ending_stream(backend, make_env):
    env = make_env(backend.port, MUX2, circuit_breakers={"thresholds": [{"max_connections": 1}]})
    fast, slow, third = env.start_all([Exchange("fast", "/slow?ms=50"), Exchange("slow", "/slow?ms=400"),
                                       Exchange("third", "/n3")])
    for ex in (fast, slow, third):
        assert ex.wait().status == 200
    assert backend.connection_count() == 1
    assert backend.connections[0].max_open == 2
    assert env.stat("upstream_cx_overflow") == 1
    log = env.log
    # The third stream got the capacity the first returned, while the second still ran.
    assert log.index(("fast", "complete")) < log.index(("third", "ready")) < log.index(("slow", "complete"))
    assert [s.path for s in backend.streams][-1] == "/n3"


def test_a_stream_the_backend_resets_ends_alone_and_the_others_complete(backend, make_env):
    env = make_env(backend.port)
    a = env.start(Exchange("a", "/stream?chunks=3&ms=300&n=a"))
    r = env.start(Exchange("r", "/reset"))
    b = env.start(Exchange("b", "/stream?chunks=3&ms=300&n=b"))
    for ex in (a, r, b):
        ex.wait()
    assert r.reset_info == ("remote reset", "UR") and r.status is None
    assert a.body.count(b"#") == 3 and b.body.count(b"#") == 3
    assert a.reset_info is None and b.reset_info is None
    assert env.log.index(("r", "reset")) < env.log.index(("a", "complete"))
    assert backend.connection_count() == 1 and not backend.connections[0].closed
    conn = backend.connections[0]
    assert (RESET, backend.stream("/reset").id) in conn.frames_out
    # Its capacity came back: the next stream uses the same connection.
    assert env.start(Exchange("next", "/after")).wait().body == b"ok:/after"
    assert backend.connection_count() == 1
    assert env.call(lambda: (env.pool.active_requests, env.pool.ready[0].active_streams)) == (0, 0)


def test_a_stream_abandoned_by_its_caller_on_timeout_is_reset_and_the_others_complete(backend, make_env):
    env = make_env(backend.port)
    held = env.start(Exchange("held", "/hold", timeout_ms=100))
    slow = env.start(Exchange("slow", "/slow?ms=300"))
    stream = env.start(Exchange("stream", "/stream?chunks=4&ms=60"))
    held.wait()
    assert held.events == ["ready", "timeout"]  # nothing after the caller gave up
    assert wait_for(lambda: backend.stream("/hold") is not None and backend.stream("/hold").reset_by_client)
    assert slow.wait().body == b"slow"
    assert stream.wait().body.count(b"#") == 4
    assert env.log.index(("held", "timeout")) < env.log.index(("slow", "complete"))
    assert backend.connection_count() == 1 and not backend.connections[0].closed
    assert env.call(lambda: (env.pool.active_requests, env.pool.ready[0].capacity)) == (0, 4)


def test_a_paused_stream_holds_its_response_while_the_others_go_on(backend, make_env):
    env = make_env(backend.port)
    paused = env.start(Exchange("paused", "/stream?chunks=2&ms=20&n=p", pause_on_headers=True))
    other = env.start(Exchange("other", "/stream?chunks=2&ms=40&n=o"))
    assert other.wait().body.count(b"#") == 2
    assert wait_for(lambda: backend.stream("/stream?chunks=2&ms=20&n=p").answered)
    assert paused.events == ["ready", "headers"]  # its data waits while the other completed
    env.call(lambda: paused.stream.read_disable(False))
    assert paused.wait().body.count(b"#") == 2
    assert paused.events[-1] == "complete"


def test_request_trailers_and_body_go_up_on_the_stream(backend, make_env):
    env = make_env(backend.port)
    ex = env.start(Exchange("t", "/echo", chunks=["he", "llo"], trailers=[(b"x-t", b"1")])).wait()
    assert ex.body == b"hello" and (b"x-trailers", b"1") in ex.headers
    assert backend.stream("/echo").trailers == [(b"x-t", b"1")]


def test_idle_timeout_closes_a_connection_only_once_no_stream_is_active(backend, make_env):
    opts = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "0.2s"},
        "explicit_http_config": {"http_protocol_options": {}}}}
    env = make_env(backend.port, typed_extension_protocol_options=opts)
    ex = env.start(Exchange("long", "/slow?ms=500")).wait()  # longer than the idle timeout
    assert ex.status == 200 and ex.reset_info is None
    assert env.stat("upstream_cx_idle_timeout") == 0
    assert wait_for(lambda: env.stat("upstream_cx_idle_timeout") == 1)
    assert wait_for(lambda: backend.connections[0].closed)
    assert env.call(lambda: env.pool.cx_active) == 0


def test_a_late_idle_timer_does_not_let_an_expired_connection_be_reused(backend, make_env):
    opts = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "0.2s"},
        "explicit_http_config": {"http_protocol_options": {}}}}
    env = make_env(backend.port, typed_extension_protocol_options=opts)
    assert env.start(Exchange("first", "/a")).wait().status == 200
    second = Exchange("second", "/b")
    second.env = env

    def busy_then_ask():
        # The worker is busy past the idle timeout: its timer has not fired when the next
        # request asks the pool for a stream.
        time.sleep(0.3)
        assert env.pool.idle_timer.deadline is not None
        second.handle = env.pool.new_stream(second)

    env.call(busy_then_ask)
    assert second.wait().status == 200
    assert env.stat("upstream_cx_idle_timeout") == 1
    assert env.stat("upstream_cx_total") == 2  # a new connection, not the expired one
    assert backend.connections[0].closed


def test_pending_overflow_fails_the_request_and_a_queued_one_gets_capacity_back(backend, make_env):
    env = make_env(backend.port, MUX2, circuit_breakers={"thresholds": [
        {"max_connections": 1, "max_pending_requests": 1}]})
    h1 = env.start(Exchange("h1", "/hold", timeout_ms=300))
    assert wait_for(lambda: "ready" in h1.events)
    h2 = env.start(Exchange("h2", "/hold"))
    assert "ready" in h2.events  # the connection was up: its second stream at once
    queued = env.start(Exchange("queued", "/q"))
    assert queued.handle is not None
    over = env.start(Exchange("over", "/over"))
    assert over.wait().failure == ("overflow", "UO")
    assert env.stat("upstream_rq_pending_overflow") == 1
    h1.wait()  # its timeout resets it: the queued request takes its place
    assert queued.wait().body == b"ok:/q"
    assert backend.connection_count() == 1 and backend.stream("/over") is None
    env.call(h2.stream.reset)
    assert wait_for(lambda: env.call(lambda: env.pool.active_requests) == 0)


def test_max_requests_per_connection_counts_streams(backend, make_env):
    env = make_env(backend.port, max_requests_per_connection=2)
    exs = env.start_all([Exchange(f"s{i}", f"/slow?ms=100&n={i}") for i in range(3)])
    for ex in exs:
        assert ex.wait().status == 200
    assert backend.connection_count() == 2
    assert sorted(c.max_open for c in backend.connections) == [1, 2]
    assert wait_for(lambda: backend.connections[0].closed)  # retired once its two ended


def test_drain_lets_active_streams_finish_then_closes_the_connection(backend, make_env):
    env = make_env(backend.port)
    a, b = env.start_all([Exchange("a", "/slow?ms=150&n=a"), Exchange("b", "/slow?ms=250&n=b")])
    assert wait_for(lambda: "ready" in b.events)
    env.call(env.pool.drain)
    assert a.wait().body == b"slow"
    assert env.call(lambda: env.pool.cx_active) == 1  # b still runs on it
    assert b.wait().body == b"slow"
    assert wait_for(lambda: backend.connections[0].closed)
    assert env.call(lambda: (env.pool.cx_active, env.pool.active_requests)) == (0, 0)


def test_goaway_sends_new_streams_to_a_new_connection(backend, make_env):
    env = make_env(backend.port)
    assert env.start(Exchange("g", "/goaway")).wait().status == 200
    assert wait_for(lambda: backend.connections[0].closed)
    assert env.start(Exchange("after", "/after")).wait().body == b"ok:/after"
    assert backend.connection_count() == 2


def test_failed_connect_fails_every_pending_stream(make_env):
    port = free_port()  # nothing listens there
    env = make_env(port)
    exs = env.start_all([Exchange(f"s{i}", "/x") for i in range(3)])
    for ex in exs:
        assert ex.wait().failure == ("remote connection failure", "UF")
    assert env.stat("upstream_cx_total") == 1 and env.stat("upstream_cx_connect_fail") == 1
    assert env.call(lambda: (env.pool.active_requests, len(env.pool.pending))) == (0, 0)


def test_a_fresh_stream_does_not_reuse_a_ready_connection(backend, make_env):
    env = make_env(backend.port)
    env.start(Exchange("first", "/one")).wait()
    env.start(Exchange("retry", "/two"), fresh=True).wait()
    assert backend.connection_count() == 2


def test_the_protocol_registry_is_the_seam():
    class Other(MuxClientConnection):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_client_connection(MUX, Other)
    register_client_connection(MUX, MuxClientConnection)  # the same again: fine

    class FakeCluster:
        pass

    class FakeHost:
        key = ("127.0.0.1", 1)
        address, port = "127.0.0.1", 1

    class FakeTransport:
        key = "raw"

    with pytest.raises(ValueError, match="no upstream client connection for protocol 'h9'"):
        HttpConnPool(FakeCluster(), FakeHost(), None, FakeTransport(), "h9")



def test_both_client_connections_implement_the_whole_seam():
    """HTTP/1.1's connection (its own stream) and the mux connection (and its streams) have
    every member client_protocol's Protocols name: the pool and the router need no other."""
    import inspect
    import typing

    from proxy.http.codec.client_protocol import PoolConnection, UpstreamStream
    from proxy.http.codec_client import UpstreamHttpConnection
    from tests.mux.client_codec import MuxStream

    pool_side = typing.get_protocol_members(PoolConnection)
    stream_side = typing.get_protocol_members(UpstreamStream)
    for cls, wanted in ((UpstreamHttpConnection, pool_side | stream_side),
                        (MuxClientConnection, pool_side), (MuxStream, stream_side)):
        have = set(dir(cls)) | set(getattr(cls, "__slots__", ()))
        init = inspect.getsource(cls.__init__)  # attributes its __init__ sets
        missing = {m for m in wanted if m not in have and f"self.{m} =" not in init}
        assert missing == set(), (cls.__name__, missing)
