"""The gzip compressor filter through the running proxy: a long streamed response arrives
gzipped and intact (curl --compressed and Python's gzip), over HTTP/1.1 and HTTP/2, the
upstream can be spared the Accept-Encoding, and what is refused at load. (brotli and zstd, and
several compressor filters in one chain: test_brotli_zstd.py.) Its agreement with
real Envoy (headers, stats, the gzip bytes themselves) is
tests/differential/cases/filter_compressor.yaml."""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import RawHttpUpstream, pattern_sha256, read_response

COMPRESSOR_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
GZIP_URL = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _config(port: int, **compressor) -> dict:
    flt = {"@type": COMPRESSOR_URL, "compressor_library": {"name": "lib", "typed_config": {"@type": GZIP_URL}},
           **compressor}
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", port)],
                              http_filters=[{"name": "envoy.filters.http.compressor", "typed_config": flt}, ROUTER],
                              codec_type="AUTO")


@pytest.fixture
def raw_upstream():
    u = RawHttpUpstream()
    yield u
    u.close()


def test_a_streamed_response_arrives_gzipped_and_intact(raw_upstream):
    p = ProxyUnderTest(_config(raw_upstream.port))
    try:
        size = 1024 * 1024
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /chunked/%d/65536 HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\n\r\n" % size)
            resp = read_response(s)
        assert resp.status == 200
        assert resp.header("content-encoding") == "gzip" and resp.header("content-length") is None
        assert resp.header("vary") == "Accept-Encoding"
        body = resp.body
        plain = gzip.decompress(body)
        assert len(plain) == size and hashlib.sha256(plain).hexdigest() == pattern_sha256(size)
        assert len(body) < size
        # Each chunk was sync-flushed: the gzip stream is whole, and so are curl's checks.
        r = subprocess.run(["curl", "-sS", "--compressed", "-o", "-", p.url(f"/chunked/{size}/65536")],
                           capture_output=True, timeout=15)
        assert r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == pattern_sha256(size)
        c = p.counters()
        assert c["http.ingress_http.compressor.lib.gzip.compressed"] == 2
        assert c["http.ingress_http.compressor.lib.gzip.total_uncompressed_bytes"] == 2 * size
    finally:
        p.stop()


def test_gzip_over_http2_and_the_accept_encoding_kept_from_the_upstream(raw_upstream):
    p = ProxyUnderTest(_config(raw_upstream.port, response_direction_config={
        "remove_accept_encoding_header": True}))
    try:
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--compressed", "-D", "-",
                            "-o", "/dev/null", p.url("/chunked/200000/10000")],
                           capture_output=True, text=True, timeout=15)
        assert r.returncode == 0, r.stderr
        assert "content-encoding: gzip" in r.stdout.lower()
        assert b"accept-encoding" not in bytes(raw_upstream.received).lower()
        assert p.counters()["http.ingress_http.compressor.lib.gzip.response.compressed"] == 1
    finally:
        p.stop()


@pytest.mark.parametrize("extra,where", [
    ({"request_direction_config": {"common_config": {"enabled": {"default_value": True, "runtime_key": "k"}}}},
     "request_direction_config.common_config: not supported yet (request compression"),
    ({"choose_first": True}, "choose_first: not supported yet"),
])
def test_what_the_compressor_refuses_is_named(extra, where):
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(_config(1, **extra))


def test_an_unknown_library_is_refused_naming_the_supported_ones():
    cfg = _config(1)
    flt = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    flt["typed_config"]["compressor_library"]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.compression.qatzip.compressor.v3.Qatzip"}
    with pytest.raises(ConfigError, match="unsupported compressor library .*supported: .*gzip.*brotli.*zstd"):
        parse_bootstrap(cfg)
