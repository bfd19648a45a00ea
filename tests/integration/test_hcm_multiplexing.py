"""The connection manager is not HTTP/1-shaped: driven by the in-test multiplexing codec
(tests/mux), through the running proxy, several streams live on one downstream connection at
once, each with its own body, timeout and reset, while the others go on. The codec is
patched in where the first bytes choose it (hcm_factory.server_codec_factory); upstreams are
ordinary HTTP/1.1 servers, one upstream request per stream."""

from __future__ import annotations

import json
import socket
import time

import pytest

from proxy.http import hcm_factory
from tests.mux.frames import RESET
from tests.mux.peer import MuxPeer
from tests.mux.server_codec import mux_codec_factory

from .harness import front_proxy_config, static_cluster
from .clients import read_request_head
from .servers import AcceptLoop

ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]


@pytest.fixture
def codecs(monkeypatch) -> list:
    made: list = []
    monkeypatch.setattr(hcm_factory, "server_codec_factory",
                        lambda config, impl, fields, **_kw: mux_codec_factory(made))
    return made


def _proxy(proxy_factory, port: int, **hcm):
    return proxy_factory(front_proxy_config(ROUTES, [static_cluster("c1", port)], **hcm))


def test_interleaved_streams_on_one_connection_each_get_their_own_answer(
        codecs, proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    peer = MuxPeer(p.port)
    try:
        # Three requests open at once, their bodies interleaved, ended out of order.
        for sid in (1, 3, 5):
            peer.request(sid, b"POST", b"/s%d" % sid, end=False)
        for i in range(3):
            for sid in (5, 1, 3):
                peer.data(sid, b"x" * (sid * 10))
        peer.data(3, b"", end=True)
        peer.data(5, b"", end=True)
        peer.data(1, b"", end=True)
        peer.wait_ended(1, 3, 5)
        for sid in (1, 3, 5):
            r = peer.result(sid)
            assert r.status == 200
            seen = json.loads(r.body)
            assert seen["path"] == "/s%d" % sid and seen["body_len"] == 3 * sid * 10
        assert len(codecs) == 1  # one downstream connection carried all three
        c = p.counters()
        assert c["http.ingress_http.downstream_rq_total"] == 3
        assert c["http.ingress_http.downstream_cx_total"] == 1
    finally:
        peer.close()


def test_a_client_reset_ends_its_stream_alone(codecs, proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"POST", b"/abandoned", end=False)
        peer.request(3, b"POST", b"/kept", end=False)
        peer.data(1, b"half")
        peer.send(RESET, 1, b"client gave up")
        peer.data(3, b"whole", end=True)
        peer.wait_ended(3)
        r = peer.result(3)
        assert r.status == 200 and json.loads(r.body)["body_len"] == 5
        assert peer.result(1).status is None  # nothing answered the reset stream
        assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_rx_reset") == 1)
        # The connection goes on: a new stream after the reset is served.
        peer.request(5, b"GET", b"/after")
        peer.wait_ended(5)
        assert peer.result(5).status == 200
        assert p.counters()["http.ingress_http.downstream_cx_destroy"] == 0
    finally:
        peer.close()


def test_one_streams_idle_timeout_does_not_touch_the_others(codecs, proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port, stream_idle_timeout="0.4s")
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"POST", b"/stalled", end=False)   # sends nothing more
        peer.request(3, b"POST", b"/trickled", end=False)  # a byte every 0.1 s for 0.8 s
        start = time.monotonic()
        for _ in range(8):
            time.sleep(0.1)
            peer.data(3, b"y")
        peer.data(3, b"", end=True)
        peer.wait_ended(1, 3)
        stalled, trickled = peer.result(1), peer.result(3)
        assert stalled.status == 408 and stalled.body == b"stream timeout"
        assert trickled.status == 200 and json.loads(trickled.body)["body_len"] == 8
        assert time.monotonic() - start >= 0.8
        assert p.counters()["http.ingress_http.downstream_rq_idle_timeout"] == 1
    finally:
        peer.close()


class _HalfResponseUpstream(AcceptLoop):
    """HTTP/1.1: `/half` gets a head promising 100 bytes, 5 of them, then the connection
    closes; any other path a small 200."""

    def __init__(self) -> None:
        super().__init__("half-response")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            buf = read_request_head(s)
            if b"\r\n\r\n" not in buf:
                return
            if buf.startswith(b"GET /half "):
                s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                time.sleep(0.1)
                return
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        except OSError:
            pass
        finally:
            s.close()


def test_a_stream_the_proxy_resets_ends_alone_and_the_connection_goes_on(codecs, proxy_factory):
    up = _HalfResponseUpstream()
    try:
        p = _proxy(proxy_factory, up.port)
        peer = MuxPeer(p.port)
        try:
            peer.request(1, b"GET", b"/half")
            peer.wait_ended(1)
            r = peer.result(1)
            assert r.status == 200 and r.body == b"hello" and r.reset  # started, then reset
            assert codecs[0].resets_sent == [1]
            peer.request(3, b"GET", b"/whole")
            peer.wait_ended(3)
            assert peer.result(3).status == 200 and peer.result(3).body == b"ok"
            c = p.counters()
            assert c["http.ingress_http.downstream_rq_tx_reset"] == 1
            assert c["http.ingress_http.downstream_cx_destroy"] == 0
        finally:
            peer.close()
    finally:
        up.close()


def test_100_continue_is_the_codecs_operation_on_its_stream(codecs, proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"GET", b"/plain", end=False)
        peer.request(3, b"POST", b"/expecting", [(b"expect", b"100-continue")], end=False)
        peer.wait(lambda q: q.result(3).interim == [100])
        assert codecs[0].continues == [3] and peer.result(1).interim == []
        peer.data(3, b"body", end=True)
        peer.data(1, b"", end=True)
        peer.wait_ended(1, 3)
        seen = json.loads(peer.result(3).body)
        assert seen["body_len"] == 4 and "expect" not in seen["headers"]
    finally:
        peer.close()


def test_a_local_reply_on_one_stream_leaves_the_others_streaming(codecs, proxy_factory, upstream):
    routes = [{"match": {"prefix": "/missing"}, "direct_response": {"status": 404}},
              {"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    p = proxy_factory(front_proxy_config(routes, [static_cluster("c1", upstream.port)]))
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"POST", b"/slow-body", end=False)
        peer.request(3, b"GET", b"/missing/thing")
        peer.wait_ended(3)
        assert peer.result(3).status == 404
        assert not peer.result(1).ended  # still waiting for its body
        peer.data(1, b"late body", end=True)
        peer.wait_ended(1)
        assert json.loads(peer.result(1).body)["body_len"] == 9
    finally:
        peer.close()


# -- multiplexed on both sides: the HCM, the router and the pool, none HTTP/1-shaped ----------

@pytest.fixture
def mux_upstream(monkeypatch):
    from proxy.upstream import worker_cluster
    from tests.mux.backend import MuxBackend
    from tests.mux.client_codec import register
    protocol = register()
    monkeypatch.setattr(worker_cluster, "upstream_protocol", lambda config: protocol)
    backend = MuxBackend()
    yield backend
    backend.close()


def test_streams_multiplexed_downstream_and_upstream_through_the_proxy(
        codecs, proxy_factory, mux_upstream):
    p = _proxy(proxy_factory, mux_upstream.port)
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"GET", b"/stream?chunks=3&ms=40")
        peer.request(3, b"GET", b"/stream?chunks=3&ms=40")
        peer.request(5, b"POST", b"/echo", end=False)
        peer.data(5, b"echoed ")
        peer.data(5, b"body", end=True)
        peer.wait_ended(1, 3, 5)
        assert peer.result(1).body == b"/stream?chunks=3&ms=40#0;/stream?chunks=3&ms=40#1;" \
                                      b"/stream?chunks=3&ms=40#2;"
        assert peer.result(3).body == peer.result(1).body
        assert peer.result(5).status == 200 and peer.result(5).body == b"echoed body"
        # One downstream connection, one upstream connection, streams open side by side.
        assert len(codecs) == 1
        assert mux_upstream.connection_count() == 1
        with mux_upstream.lock:
            assert mux_upstream.connections[0].max_open >= 2
            assert len(mux_upstream.streams) == 3
    finally:
        peer.close()


def test_an_upstream_stream_reset_fails_one_downstream_stream_only(
        codecs, proxy_factory, mux_upstream):
    p = _proxy(proxy_factory, mux_upstream.port)
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"GET", b"/slow?ms=300")
        peer.request(3, b"GET", b"/reset")
        peer.wait_ended(3)
        reset = peer.result(3)
        assert reset.status == 503 and b"reset before headers" in reset.body
        assert not peer.result(1).ended  # the slow one is still in flight
        peer.wait_ended(1)
        assert peer.result(1).status == 200 and peer.result(1).body == b"slow"
        assert mux_upstream.connection_count() == 1  # the reset did not cost the connection
        c = p.counters()
        assert c["cluster.c1.upstream_rq_rx_reset"] == 1
        assert c["cluster.c1.upstream_cx_total"] == 1
    finally:
        peer.close()


def test_the_codec_and_its_protocol_stats_come_with_the_first_bytes(proxy_factory, upstream):
    """As Envoy: a connection that sends nothing has no codec and is no HTTP/1 connection
    (downstream_cx_total counts it, downstream_cx_http1_total does not)."""
    p = _proxy(proxy_factory, upstream.port)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5):
        assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_active") == 1)
        assert p.gauges()["http.ingress_http.downstream_cx_http1_active"] == 0
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_active") == 0)
    c = p.counters()
    assert c["http.ingress_http.downstream_cx_total"] == 1
    assert c["http.ingress_http.downstream_cx_http1_total"] == 0
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert p.gauges()["http.ingress_http.downstream_cx_http1_active"] == 1
    c = p.counters()
    assert c["http.ingress_http.downstream_cx_http1_total"] == 1
    assert c["http.ingress_http.downstream_rq_http1_total"] == 1
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_http1_active") == 0)


def test_a_codec_of_another_protocol_is_not_counted_as_http1(codecs, proxy_factory, upstream):
    p = _proxy(proxy_factory, upstream.port)
    peer = MuxPeer(p.port)
    try:
        peer.request(1, b"GET", b"/one")
        peer.wait_ended(1)
        c = p.counters()
        assert c["http.ingress_http.downstream_rq_total"] == 1
        assert c["http.ingress_http.downstream_cx_http1_total"] == 0
        assert c["http.ingress_http.downstream_rq_http1_total"] == 0
    finally:
        peer.close()
