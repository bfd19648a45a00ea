"""The gzip decompressor filter through the running proxy: a gzip upload reaches the upstream
inflated, a gzip response reaches the client inflated, Accept-Encoding is advertised upstream,
and a gzip bomb past max_inflate_ratio ends the request with 400. (The gzip example, compressor
and decompressor together, is tests/integration/test_envoy_examples.py::test_gzip_example.)"""

from __future__ import annotations

import gzip
import os
import http.client
import json

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import RawHttpUpstream

URL = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _config(port: int, **extra) -> dict:
    flt = {"@type": URL, "decompressor_library": {"name": "up", "typed_config": {"@type": GZIP, **extra}}}
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", port)],
                              http_filters=[{"name": "envoy.filters.http.decompressor", "typed_config": flt},
                                            ROUTER])


def _post(port: int, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/echo", body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_an_upload_is_inflated_and_accept_encoding_advertised(upstream):
    p = ProxyUnderTest(_config(upstream.port))
    try:
        plain = os.urandom(9000).hex().encode()  # inflates ~2x: well under max_inflate_ratio
        status, body = _post(p.port, gzip.compress(plain), {"content-encoding": "gzip"})
        assert status == 200
        seen = json.loads(body)
        assert seen["body_len"] == len(plain)
        assert "content-encoding" not in seen["headers"]
        assert seen["headers"]["accept-encoding"] == "identity,gzip"  # advertised (appended as Envoy does)
        c = p.counters()
        assert c["http.ingress_http.decompressor.up.gzip.request.decompressed"] == 1
        assert c["http.ingress_http.decompressor.up.gzip.request.total_uncompressed_bytes"] == len(plain)
    finally:
        p.stop()


def test_a_gzip_response_is_inflated_for_the_client():
    plain = b'{"msg": "' + b"x" * 5000 + b'"}'
    packed = gzip.compress(plain)
    up = RawHttpUpstream(canned={"gz": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                       b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
                                       % (len(packed), packed)})
    p = ProxyUnderTest(_config(up.port))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/raw/gz")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("content-encoding") is None
        assert r.read() == plain
        conn.close()
    finally:
        p.stop()
        up.close()


def test_a_gzip_bomb_past_max_inflate_ratio_gets_400(upstream):
    p = ProxyUnderTest(_config(upstream.port, max_inflate_ratio=100))
    try:
        bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))  # ~20 KiB inflating 1000x
        status, _ = _post(p.port, bomb, {"content-encoding": "gzip"})
        assert status == 400
        assert not any(r[0] == "POST" for r in upstream.requests)  # nothing inflated went up whole
    finally:
        p.stop()
