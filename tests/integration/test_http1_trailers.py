"""HTTP/1.1 trailers through ftproxy, as Envoy's HTTP/1.1 codec treats them: dropped both ways
unless `http_protocol_options.enable_trailers` is set on the side's codec (the HCM's for the
client connection, the cluster's for the upstream one); with both set they are passed on.
(Differential case http1_trailers compares the same with real Envoy.)"""

from __future__ import annotations

import socket

import pytest

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster
from .servers import read_response

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TRAILERS_ON = {"typed_extension_protocol_options": {HPO: {
    "@type": "type.googleapis.com/" + HPO,
    "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}}
REQUEST = (b"POST /echo HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\nx-req-trailer: 1\r\n\r\n")


@pytest.fixture(scope="module")
def upstream():
    u = EchoUpstream("trailers")
    yield u
    u.close()


def _exchange(port: int, raw: bytes):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        return read_response(s)


@pytest.mark.parametrize("downstream,upstream_side,passed", [
    (False, False, False), (True, False, False), (False, True, False), (True, True, True)])
def test_trailers_pass_only_when_both_codecs_enable_them(upstream, downstream, upstream_side, passed):
    extra = {"http_protocol_options": {"enable_trailers": True}} if downstream else {}
    cluster = static_cluster("app", upstream.port, **(TRAILERS_ON if upstream_side else {}))
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                                          [cluster], **extra))
    try:
        before = len(upstream.requests)
        r = _exchange(p.port, REQUEST)
        assert r.status == 200
        method, _, headers, body = upstream.requests[before]
        assert (method, body) == ("POST", b"abc")
        assert headers.get("trailer:x-req-trailer") == ("1" if passed else None)

        r = _exchange(p.port, b"GET /trailers HTTP/1.1\r\nhost: example.com\r\n\r\n")
        assert (r.status, r.body) == (200, b"hello")
        got = {k: v for k, v in r.headers if k.startswith("trailer:")}
        assert got == ({"trailer:x-resp-trailer": "yes", "trailer:grpc-status": "0"} if passed else {})
        assert r.header("trailer") == "x-resp-trailer"   # the announcing header is kept, as Envoy
    finally:
        p.stop()
