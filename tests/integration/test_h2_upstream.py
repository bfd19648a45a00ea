"""HTTP/2 (h2c, prior knowledge) to upstream clusters: HTTP/1.1 clients -> ftproxy -> a real h2
server (tests/h2_backend.py), many requests multiplexed on one upstream connection, each
stream reset, flow-controlled and ended on its own."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.h2_backend import H2Backend

from .harness import front_proxy_config, raw_request, static_cluster

ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "h2c", "timeout": "10s"}}]
TYPED = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_cluster(port: int, legacy: bool = False, **h2opts) -> dict:
    if legacy:
        return static_cluster("h2c", port, http2_protocol_options=h2opts)
    return static_cluster("h2c", port, typed_extension_protocol_options={TYPED: {
        "@type": "type.googleapis.com/" + TYPED,
        "explicit_http_config": {"http2_protocol_options": h2opts}}})


@pytest.fixture
def backend():
    b = H2Backend()
    yield b
    b.close()


def _get(port: int, path: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None, timeout: float = 10.0):
    """One HTTP/1.1 request on its own connection: (status, headers dict, body)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _parallel(port: int, paths: list[str]) -> list:
    out: list = [None] * len(paths)

    def run(i: int) -> None:
        out[i] = _get(port, paths[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return out


def test_concurrent_http1_requests_share_one_h2_connection(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    results = _parallel(p.port, [f"/slow?ms=300&i={i}" for i in range(6)])
    assert [r[0] for r in results] == [200] * 6
    assert backend.connections == 1
    assert backend.max_active >= 2  # the streams were open at once
    seen = [json.loads(r[2]) for r in results]
    assert len({s["stream_id"] for s in seen}) == 6
    c = p.counters()
    assert c["cluster.h2c.upstream_cx_http2_total"] == 1
    assert c["cluster.h2c.upstream_cx_http1_total"] == 0
    assert c["cluster.h2c.upstream_rq_total"] == 6
    assert c["cluster.h2c.upstream_rq_2xx"] == 6


def test_request_is_translated_to_http2_fields(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port, legacy=True)]))
    raw = raw_request(p.port, b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                      b"Connection: keep-alive, x-hop\r\nKeep-Alive: 5\r\nX-Hop: 1\r\n"
                      b"TE: trailers\r\nX-Custom: yes\r\n\r\n", read_until_close=False)
    assert raw.startswith(b"HTTP/1.1 200")
    assert backend.wait_for(lambda: backend.requests)
    fields = backend.requests[0]["headers"]
    names = [n for n, _ in fields]
    assert names[:4] == [":method", ":scheme", ":authority", ":path"]
    h = dict(fields)
    assert (h[":method"], h[":scheme"], h[":authority"], h[":path"]) == (
        "GET", "http", "example.com", "/path?q=1")
    for gone in ("connection", "keep-alive", "x-hop", "host", "transfer-encoding"):
        assert gone not in h
    assert h.get("te") in (None, "trailers") and h["x-custom"] == "yes"


def test_request_and_response_bodies_and_trailers(proxy_factory, backend):
    # The HTTP/1.1 client side passes trailers only with enable_trailers (as Envoy's codec).
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)],
                                         http_protocol_options={"enable_trailers": True}))
    status, headers, body = _get(p.port, "/echo", "POST", b"hello h2" * 1000)
    assert status == 200 and body == b"hello h2" * 1000
    # A chunked request with trailers: trailers go up as a HEADERS frame.
    raw = raw_request(p.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"TE: trailers\r\n\r\n5\r\nhello\r\n0\r\nx-req-trailer: tv\r\n\r\n",
                      read_until_close=False)
    assert raw.startswith(b"HTTP/1.1 200")
    assert backend.wait_for(lambda: len(backend.requests) == 2)
    r = backend.requests[1]
    assert r["body"] == b"hello" and r["trailers"] == [("x-req-trailer", "tv")]
    assert "transfer-encoding" not in dict(r["headers"])
    # Response trailers reach a chunked HTTP/1.1 client that said TE: trailers.
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
    buf = b""
    while not buf.endswith(b"\r\n\r\n") or b"0\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    assert b"body-before-trailers" in buf
    assert b"x-trailer: yes" in buf.lower()


def test_streamed_response_in_chunks(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    status, headers, body = _get(p.port, "/chunks?n=5&size=3000&ms=30")
    assert status == 200 and len(body) == 15000
    assert body[:3000] == b"a" * 3000 and body[-3000:] == b"e" * 3000


def test_upstream_rst_stream_fails_only_its_request(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    results = _parallel(p.port, ["/slow?ms=300", "/rst", "/slow?ms=300"])
    assert results[0][0] == 200 and results[2][0] == 200
    status, _, body = results[1]
    assert status == 503
    assert body == b"upstream connect error or disconnect/reset before headers. reset reason: remote reset"
    assert backend.connections == 1
    assert p.counters()["cluster.h2c.upstream_rq_rx_reset"] == 1


def test_goaway_sends_new_requests_on_a_new_connection(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    assert _get(p.port, "/goaway")[0] == 200
    status, _, body = _get(p.port, "/after")
    assert status == 200 and json.loads(body)["conn"] == 2
    assert backend.connections == 2
    assert p.wait_for(lambda: p.counters()["cluster.h2c.upstream_cx_destroy"] == 1)


def test_stream_above_goaway_last_stream_id_is_refused_and_retried_only_by_policy(proxy_factory, backend):
    # As Envoy: a stream above the GOAWAY's last_stream_id ends as a refused stream (503 UR)
    # unless the retry policy retries it (refused-stream, reset, 5xx).
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    assert _get(p.port, "/warm")[0] == 200
    status, _, body = _get(p.port, "/goaway-refuse")
    assert status == 503 and body.endswith(b"reset reason: remote refused stream reset")
    assert p.counters()["cluster.h2c.upstream_rq_retry"] == 0
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "h2c",
                                                   "retry_policy": {"retry_on": "refused-stream"}}}]
    backend2 = type(backend)()
    try:
        p2 = proxy_factory(front_proxy_config(routes, [h2_cluster(backend2.port)]))
        assert _get(p2.port, "/warm")[0] == 200
        status, _, body = _get(p2.port, "/goaway-refuse")
        assert status == 200 and json.loads(body)["conn"] == 2
        assert p2.counters()["cluster.h2c.upstream_rq_retry"] == 1
    finally:
        backend2.close()


def test_refused_stream_fails_with_envoys_reason(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    assert _get(p.port, "/first")[0] == 200
    status, _, body = _get(p.port, "/rst?code=refused")
    # As Envoy without a retry_policy: 503, UR, not retried.
    assert status == 503
    assert body.endswith(b"reset reason: remote refused stream reset")
    assert p.counters()["cluster.h2c.upstream_rq_retry"] == 0
    assert _get(p.port, "/after")[0] == 200 and backend.connections == 1


def test_configured_max_concurrent_streams_is_respected(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port, max_concurrent_streams=2)]))
    results = _parallel(p.port, [f"/slow?ms=300&i={i}" for i in range(5)])
    assert [r[0] for r in results] == [200] * 5
    assert backend.max_active <= 2
    assert backend.connections >= 2  # the pool opened more connections for the rest


def test_peer_settings_max_concurrent_streams_is_respected(proxy_factory):
    b = H2Backend(max_concurrent_streams=1)
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(b.port)]))
        assert _get(p.port, "/warm")[0] == 200  # the peer's SETTINGS are known from now on
        results = _parallel(p.port, [f"/slow?ms=200&i={i}" for i in range(4)])
        assert [r[0] for r in results] == [200] * 4
        # The warm connection knew the peer's limit: one stream at a time. (A connection
        # opened for the rest takes streams up to the configured limit until the peer's
        # SETTINGS arrive, as Envoy's.)
        assert b.max_active_by_conn[1] == 1
        assert b.connections >= 2
    finally:
        b.close()


def test_large_response_to_a_slow_reader_is_flow_controlled(proxy_factory, backend):
    size = 16 * 1024 * 1024
    # 16 MiB at a slow reader's pace: longer than ROUTES' 10 s on a loaded machine.
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "h2c", "timeout": "60s"}}]
    p = proxy_factory(front_proxy_config(routes, [h2_cluster(
        backend.port, initial_stream_window_size=65535, initial_connection_window_size=65535)]))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(20)
    s.connect(("127.0.0.1", p.port))
    s.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    got = s.recv(65536)
    time.sleep(0.5)  # the reader stalls: the window must stop the host well short of the end
    assert backend.big_sent < size
    assert backend.window_waits > 0
    # Meanwhile another request on the same upstream connection is not stalled.
    assert _get(p.port, "/other", timeout=5)[0] == 200
    assert backend.connections == 1
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
        if len(got) - got.index(b"\r\n\r\n") - 4 >= size:
            break
    s.close()
    assert len(got) - got.index(b"\r\n\r\n") - 4 == size
    assert backend.big_sent == size


def test_protocol_error_from_the_host_fails_its_streams_with_upe(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    status, _, body = _get(p.port, "/garbage")
    assert status == 502
    assert body.endswith(b"reset reason: protocol error")
    assert p.wait_for(lambda: p.counters()["cluster.h2c.upstream_cx_destroy"] == 1)
    assert _get(p.port, "/after")[0] == 200  # a new connection serves the next request


def test_request_body_larger_than_the_hosts_window_waits_for_window_updates(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    body = bytes(range(256)) * 4096  # 1 MiB against the host's 64 KiB initial windows
    status, _, got = _get(p.port, "/echo", "POST", body)
    assert status == 200 and got == body
    assert backend.requests[0]["body"] == body


def test_downstream_gone_resets_only_its_upstream_stream_with_cancel(proxy_factory, backend):
    p = proxy_factory(front_proxy_config(ROUTES, [h2_cluster(backend.port)]))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert backend.wait_for(lambda: len(backend.requests) == 1)
    s.close()  # the client gives up: the router resets its upstream stream
    assert backend.wait_for(lambda: backend.requests[0].get("reset_by_peer") is not None)
    assert backend.requests[0]["reset_by_peer"] == 8  # CANCEL
    assert _get(p.port, "/next")[0] == 200
    assert backend.connections == 1  # the connection outlived the one stream's reset
