"""The brotli and zstd libraries of the compressor and decompressor filters through the running
proxy: responses arrive `br` / `zstd` encoded and decode with independent decoders (curl, built
with brotli and zstd, and brotlicffi / the zstd module), each streamed chunk decodes as it
arrives (flushed, as Envoy), several compressor filters in one chain negotiate as Envoy's do,
uploads and responses are decoded by the decompressor (a brotli bomb gets 400), and what is
refused at load says why. On an interpreter without a zstd binding (this free-threaded 3.14t)
the zstd tests skip, and a config naming the zstd library is refused there (tested).
Agreement with real Envoy: tests/differential/cases/filter_compressor_brotli.yaml."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import threading

import brotlicffi
import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.http.filters.compression_libraries import ZSTD_MISSING, zstd_api

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import AcceptLoop, RawHttpUpstream, _Reader, new_reader, pattern_sha256, read_response

ZSTD = zstd_api()
needs_zstd = pytest.mark.skipif(ZSTD is None, reason=ZSTD_MISSING)

COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
DECOMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
LIB = "type.googleapis.com/envoy.extensions.compression.{}.{}.v3.{}"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
_PROTO = {"gzip": "Gzip", "brotli": "Brotli", "zstd": "Zstd"}


def compressor(lib: str, name: str | None = None, **fields) -> dict:
    return {"name": "envoy.filters.http.compressor", "typed_config": {
        "@type": COMPRESSOR, "compressor_library": {"name": name or lib, "typed_config": {
            "@type": LIB.format(lib, "compressor", _PROTO[lib]), **fields}}}}


def decompressor(lib: str, name: str | None = None, **fields) -> dict:
    return {"name": "envoy.filters.http.decompressor", "typed_config": {
        "@type": DECOMPRESSOR, "decompressor_library": {"name": name or lib, "typed_config": {
            "@type": LIB.format(lib, "decompressor", _PROTO[lib]), **fields}}}}


def _config(port: int, *filters: dict) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", port)], http_filters=[*filters, ROUTER],
                              codec_type="AUTO")


def _decode(encoding: str, body: bytes) -> bytes:
    if encoding == "br":
        return brotlicffi.decompress(body)
    if encoding == "zstd":
        return ZSTD.decompress(body)
    import gzip
    return gzip.decompress(body)


@pytest.fixture
def raw_upstream():
    u = RawHttpUpstream()
    yield u
    u.close()


@pytest.mark.parametrize("lib,encoding", [("brotli", "br"), pytest.param("zstd", "zstd", marks=needs_zstd)])
def test_a_streamed_response_arrives_encoded_and_intact(raw_upstream, lib, encoding):
    p = ProxyUnderTest(_config(raw_upstream.port, compressor(lib, "lib")))
    try:
        size = 1024 * 1024
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /chunked/%d/65536 HTTP/1.1\r\nhost: x\r\naccept-encoding: %s\r\n\r\n"
                      % (size, encoding.encode()))
            resp = read_response(s)
        assert resp.status == 200
        assert resp.header("content-encoding") == encoding and resp.header("content-length") is None
        assert resp.header("vary") == "Accept-Encoding"
        plain = _decode(encoding, resp.body)
        assert len(plain) == size and hashlib.sha256(plain).hexdigest() == pattern_sha256(size)
        assert len(resp.body) < size
        # curl (built with brotli and zstd) asks for them and decodes on its own.
        r = subprocess.run(["curl", "-sS", "--compressed", "-H", f"accept-encoding: {encoding}", "-D", "-",
                            "-o", "/tmp/ftproxy-bz-%d" % os.getpid(), p.url(f"/chunked/{size}/65536")],
                           capture_output=True, text=True, timeout=15)
        assert r.returncode == 0, r.stderr
        assert f"content-encoding: {encoding}" in r.stdout.lower()
        with open("/tmp/ftproxy-bz-%d" % os.getpid(), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == pattern_sha256(size)
        os.unlink("/tmp/ftproxy-bz-%d" % os.getpid())
        c = p.counters()
        assert c[f"http.ingress_http.compressor.lib.{lib}.compressed"] == 2
        assert c[f"http.ingress_http.compressor.lib.{lib}.header_compressor_used"] == 2
        assert c[f"http.ingress_http.compressor.lib.{lib}.total_uncompressed_bytes"] == 2 * size
    finally:
        p.stop()


class _PacedUpstream(AcceptLoop):
    """Answers with a chunked text/plain body in pieces, sending each piece only once the test
    says the previous one was decoded (so only a flushed compressor lets the test go on)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.go = threading.Semaphore(0)
        super().__init__("paced-upstream")

    def handle(self, s: socket.socket, n: int) -> None:
        r = _Reader(s)
        try:
            if r.until(b"\r\n\r\n") is None:
                return
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
            for i, piece in enumerate(self.pieces):
                if i and not self.go.acquire(timeout=10):
                    return
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            s.close()


def _decoder(encoding: str):
    if encoding == "br":
        d = brotlicffi.Decompressor()

        def drain(data: bytes) -> bytes:
            out = d.process(data)
            while more := d.process(b""):  # brotlicffi 1.2 may leave output inside
                out += more
            return out
        return drain
    if encoding == "zstd":
        return ZSTD.ZstdDecompressor().decompress
    import zlib
    return zlib.decompressobj(31).decompress


@pytest.mark.parametrize("lib,encoding", [("brotli", "br"), pytest.param("zstd", "zstd", marks=needs_zstd),
                                          ("gzip", "gzip")])
def test_each_streamed_chunk_decodes_as_it_arrives(lib, encoding):
    pieces = [(b"piece %d of a streamed text; " % i) * 40 for i in range(4)]
    up = _PacedUpstream(pieces)
    p = ProxyUnderTest(_config(up.port, compressor(lib)))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /paced HTTP/1.1\r\nhost: x\r\naccept-encoding: %s\r\n\r\n" % encoding.encode())
            r = new_reader(s)
            head = r.until(b"\r\n\r\n").decode("latin-1").lower()
            assert f"content-encoding: {encoding}" in head and "transfer-encoding: chunked" in head
            decode = _decoder(encoding)
            got = b""
            for i, piece in enumerate(pieces):
                # Read HTTP chunks until this piece's plaintext is decodable: nothing more
                # comes from the upstream before it is.
                while len(got) < sum(map(len, pieces[:i + 1])):
                    size = int(bytes(r.until(b"\r\n")), 16)
                    assert size, f"the response ended before piece {i} could be decoded"
                    chunk = bytearray()
                    assert r.exactly_into(size, chunk.extend)
                    assert r.until(b"\r\n") == b"\r\n"
                    got += decode(bytes(chunk))
                assert got == b"".join(pieces[:i + 1])
                up.go.release()
    finally:
        p.stop()
        up.close()


def _chain(port: int) -> dict:
    libs = ["gzip", "brotli"] + (["zstd"] if ZSTD is not None else [])
    return _config(port, *(compressor(lib) for lib in libs))


@pytest.mark.parametrize("accept,want", [
    ("br", "br"),
    ("gzip", "gzip"),
    ("gzip, br", "gzip"),                     # a tie: the first listed wins
    ("br;q=0.9, gzip;q=0.5", "br"),
    ("*", "gzip"),                            # the first filter of the chain
    ("gzip;q=0, *", "br"),                    # gzip ruled out: the next filter
    ("deflate", None),
    ("identity", None),
    pytest.param("zstd", "zstd", marks=needs_zstd),
    pytest.param("br;q=0.5, zstd;q=0.9", "zstd", marks=needs_zstd),
])
def test_several_compressor_filters_negotiate_as_envoy(raw_upstream, accept, want):
    p = ProxyUnderTest(_chain(raw_upstream.port))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/echo", headers={"accept-encoding": accept})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200 and r.getheader("content-encoding") == want
        assert json.loads(_decode(want, body) if want else body)["path"] == "/echo"
        assert r.getheader("vary") == "Accept-Encoding"
        c = p.counters()
        libs = {"gzip": "gzip", "br": "brotli", "zstd": "zstd"}
        for enc, lib in libs.items():
            if lib == "zstd" and ZSTD is None:
                continue
            prefix = f"http.ingress_http.compressor.{lib}.{lib}."
            assert c[prefix + "compressed"] == (enc == want)
            if want and accept not in ("*", "gzip;q=0, *"):
                assert c[prefix + ("header_compressor_used" if enc == want else "header_compressor_overshadowed")] == 1
    finally:
        p.stop()


@pytest.mark.skipif(ZSTD is not None, reason="this interpreter has a zstd binding")
@pytest.mark.parametrize("make", [compressor, decompressor])
def test_the_zstd_library_is_refused_where_no_binding_loads(make):
    with pytest.raises(ConfigError, match=r"typed_config: not supported on this interpreter \(no zstd binding"):
        parse_bootstrap(_config(1, make("zstd")))


@pytest.mark.parametrize("flt,where", [
    (compressor("brotli", disable_literal_context_modeling=True),
     "typed_config.disable_literal_context_modeling: not supported yet (brotlicffi"),
    (compressor("zstd", dictionary={"inline_bytes": "AAAA"}), "typed_config.dictionary: not supported yet"),
    (decompressor("zstd", dictionaries=[{"inline_bytes": "AAAA"}]), "typed_config.dictionaries: not supported yet"),
    (compressor("brotli", quality=12), "typed_config.quality"),
    (compressor("brotli", window_bits=9), "typed_config.window_bits"),
])
def test_what_the_brotli_and_zstd_libraries_refuse_is_named(flt, where):
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(_config(1, flt))


def _post(port: int, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/echo", body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def _encode(encoding: str, data: bytes) -> bytes:
    return brotlicffi.compress(data) if encoding == "br" else ZSTD.compress(data)


@pytest.mark.parametrize("lib,encoding", [("brotli", "br"), pytest.param("zstd", "zstd", marks=needs_zstd)])
def test_an_upload_is_decoded_and_the_encoding_advertised(upstream, lib, encoding):
    p = ProxyUnderTest(_config(upstream.port, decompressor(lib, "up")))
    try:
        plain = os.urandom(9000).hex().encode()
        status, body = _post(p.port, _encode(encoding, plain), {"content-encoding": encoding})
        assert status == 200
        seen = json.loads(body)
        assert seen["body_len"] == len(plain) and "content-encoding" not in seen["headers"]
        assert seen["headers"]["accept-encoding"] == f"identity,{encoding}"  # appended as Envoy
        c = p.counters()
        assert c[f"http.ingress_http.decompressor.up.{lib}.request.decompressed"] == 1
        assert c[f"http.ingress_http.decompressor.up.{lib}.request.total_uncompressed_bytes"] == len(plain)
    finally:
        p.stop()


@pytest.mark.parametrize("lib,encoding", [("brotli", "br"), pytest.param("zstd", "zstd", marks=needs_zstd)])
def test_an_encoded_response_is_decoded_for_the_client(lib, encoding):
    plain = b'{"msg": "' + os.urandom(3000).hex().encode() + b'"}'  # inflates ~2x: under the ratio
    packed = _encode(encoding, plain)
    up = RawHttpUpstream(canned={"enc": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                        b"content-encoding: %s\r\ncontent-length: %d\r\n\r\n%s"
                                        % (encoding.encode(), len(packed), packed)})
    p = ProxyUnderTest(_config(up.port, decompressor(lib)))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/raw/enc")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("content-encoding") is None
        assert r.read() == plain
        conn.close()
        assert p.counters()[f"http.ingress_http.decompressor.{lib}.{lib}.response.decompressed"] == 1
    finally:
        p.stop()
        up.close()


@pytest.mark.parametrize("lib,encoding", [("brotli", "br"), pytest.param("zstd", "zstd", marks=needs_zstd)])
def test_a_bomb_past_the_inflate_ratio_gets_400(upstream, lib, encoding):
    p = ProxyUnderTest(_config(upstream.port, decompressor(lib)))
    try:
        bomb = _encode(encoding, b"\0" * (4 * 1024 * 1024))  # a few bytes inflating >> 100x
        status, _ = _post(p.port, bomb, {"content-encoding": encoding})
        assert status == 400
        assert not any(r[0] == "POST" for r in upstream.requests)
        # Not the library's coding: passed through untouched.
        status, body = _post(p.port, b"plain", {"content-encoding": "gzip"})
        assert status == 200 and json.loads(body)["headers"]["content-encoding"] == "gzip"
    finally:
        p.stop()
