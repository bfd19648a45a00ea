"""The buffer filter through the running proxy, for what a differential case cannot express:
a body arriving in pieces reaches the upstream only once it has ended (whole, with a
content-length), a chunked body that passes the limit while it still arrives is answered 413
before its end, and an HTTP/2 request ending with trailers gets its content-length too.
(Case filter_buffer compares the rest with Envoy: statuses, bodies, headers upstream, stats.)"""

from __future__ import annotations

import json
import socket

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import read_response
from .test_h2_downstream import H2Client

BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _config(port: int, limit: int = 100) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    return front_proxy_config(routes, [static_cluster("c1", port)], http_filters=[
        {"name": "envoy.filters.http.buffer", "typed_config": {"@type": BUFFER, "max_request_bytes": limit}},
        ROUTER])


def _rx_bytes(p: ProxyUnderTest) -> int:
    return p.counters().get("http.ingress_http.downstream_cx_rx_bytes_total", 0)


def test_a_body_arriving_in_pieces_goes_upstream_whole_once_it_ends(upstream):
    p = ProxyUnderTest(_config(upstream.port))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            first = (b"POST /slow HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
            s.sendall(first)
            assert p.wait_for(lambda: _rx_bytes(p) >= len(first))
            second = b"6\r\n world\r\n"
            s.sendall(second)
            assert p.wait_for(lambda: _rx_bytes(p) >= len(first) + len(second))
            assert upstream.requests == []      # read by the proxy, held by the filter
            s.sendall(b"0\r\n\r\n")
            reply = read_response(s, "POST")
        assert reply.status == 200
        method, path, headers, body = upstream.requests[-1]
        assert (method, path, body) == ("POST", "/slow", b"hello world")
        assert headers["content-length"] == "11"
        assert "transfer-encoding" not in headers
    finally:
        p.stop()


def test_a_chunked_body_past_the_limit_is_answered_413_before_it_ends(upstream):
    p = ProxyUnderTest(_config(upstream.port, limit=10))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"POST /big HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
                      b"8\r\n01234567\r\n")
            s.sendall(b"8\r\n89abcdef\r\n")      # 16 bytes: past 10, the request not ended
            reply = read_response(s, "POST")
        assert reply.status == 413
        assert reply.body == b"Payload Too Large"
        assert upstream.requests == []
        assert p.counters()["http.ingress_http.downstream_rq_too_large"] == 1
    finally:
        p.stop()


def test_an_http2_request_ending_with_trailers_gets_a_content_length(upstream):
    p = ProxyUnderTest(_config(upstream.port))
    client = H2Client(p.port)
    try:
        sid = client.request(b"POST", b"/h2", b"abc", end=False)
        client.data(sid, b"defg")
        client.conn.send_headers(sid, [(b"x-trailer", b"t")], end_stream=True)
        client.flush()
        client.wait(lambda: sid in client.ended)
        assert client.status[sid] == 200
        seen = json.loads(client.body[sid])
        assert seen["body_len"] == 7
        assert seen["headers"]["content-length"] == "7"
        # Headers only: nothing to buffer, no content-length made up.
        sid = client.request(b"GET", b"/h2-get")
        client.wait(lambda: sid in client.ended)
        assert "content-length" not in json.loads(client.body[sid])["headers"]
    finally:
        client.close()
        p.stop()


@pytest.mark.parametrize("typed_config,field", [
    ({"@type": BUFFER}, "max_request_bytes"),
    ({"@type": BUFFER, "max_request_bytes": 0}, "max_request_bytes"),
    ({"@type": BUFFER, "max_request_bytes": 10, "bogus": 1}, "bogus"),
])
def test_bad_config_is_refused_naming_the_field(typed_config, field):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", 1)], http_filters=[
        {"name": "envoy.filters.http.buffer", "typed_config": typed_config}, ROUTER])
    with pytest.raises(ConfigError, match=field):
        parse_bootstrap(cfg)
