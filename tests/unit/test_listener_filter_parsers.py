"""The listener filters' pure parsers: TLS ClientHello (real ones from Python's ssl, split at
every byte, truncated, garbage, oversized), PROXY protocol v1/v2 headers, HTTP first lines."""

from __future__ import annotations

import ipaddress
import ssl
import struct

import pytest

from proxy.network.listener_filters.client_hello import NEED_MORE, NOT_TLS, TLS, parse_client_hello
from proxy.network.listener_filters.http_inspector import (HTTP2, HTTP10, HTTP11, NEED_MORE as HTTP_MORE,
                                                           NOT_HTTP, inspect_http)
from proxy.network.listener_filters import proxy_protocol_header as pp


def client_hello(server_name: str | None = "a.example.com", alpn=None) -> bytes:
    """A real ClientHello: what a client SSLObject over memory BIOs writes first."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def records(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into records of `size` bytes."""
    msg = b""
    pos = 0
    while pos < len(hello):
        length = struct.unpack(">H", hello[pos + 3:pos + 5])[0]
        msg += hello[pos + 5:pos + 5 + length]
        pos += 5 + length
    out = b""
    for i in range(0, len(msg), size):
        chunk = msg[i:i + size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(chunk)) + chunk
    return out


def test_sni_and_alpn_of_a_real_client_hello():
    h = parse_client_hello(client_hello("Www.Example.COM", ["h2", "http/1.1"]))
    assert h == (TLS, "www.example.com", ("h2", "http/1.1"))
    assert parse_client_hello(client_hello(None)) == (TLS, "", ())


def test_every_split_point_waits_and_the_whole_is_found():
    hello = client_hello("split.example.com", ["h2"])
    for i in range(len(hello)):
        assert parse_client_hello(hello[:i]).state == NEED_MORE, i
    assert parse_client_hello(hello + b"trailing").server_name == "split.example.com"


def test_a_client_hello_spread_over_many_records():
    hello = client_hello("many.example.com", ["http/1.1"])
    for size in (1, 7, 100):
        data = records(hello, size)
        assert parse_client_hello(data) == (TLS, "many.example.com", ("http/1.1",))
        assert parse_client_hello(data[:-1]).state == NEED_MORE


def test_a_large_client_hello_with_a_big_key_share_like_extension():
    hello = client_hello("big.example.com")
    # Rebuild with a 1.2 KB extension of an unknown type, as a post-quantum key share makes it grow.
    msg = records(hello, 1 << 20)[5:]
    body = msg[4:]
    ext_len_at = 2 + 32 + 1 + body[34]
    ext_len_at += 2 + struct.unpack(">H", body[ext_len_at:ext_len_at + 2])[0]
    ext_len_at += 1 + body[ext_len_at]
    ext_len = struct.unpack(">H", body[ext_len_at:ext_len_at + 2])[0]
    pad = struct.pack(">HH", 0x4469, 1200) + bytes(1200)
    body = body[:ext_len_at] + struct.pack(">H", ext_len + len(pad)) + body[ext_len_at + 2:] + pad
    big = b"\x01" + len(body).to_bytes(3, "big") + body
    data = b"\x16\x03\x01" + struct.pack(">H", len(big)) + big
    assert len(data) > 1500
    assert parse_client_hello(data) == (TLS, "big.example.com", ())
    assert parse_client_hello(records(data, 512)).server_name == "big.example.com"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"\x17\x03\x03\x00\x05hello",                    # application data, not a handshake
    b"\x16\x02\x00\x00\x05hello",                    # record version 2.x
    b"\x16\x03\x01\x40\x01" + bytes(16385),          # a record over 16384 bytes
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",          # a ServerHello first
    b"\x16\x03\x01\x00\x04\x01\x00\x40\x01",          # a ClientHello over 16384 bytes
    b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",  # a truncated ClientHello body
    bytes(range(256)),
])
def test_what_is_not_tls(data):
    assert parse_client_hello(data).state == NOT_TLS


def test_malformed_sni_is_not_tls_and_malformed_alpn_is_ignored():
    hello = records(client_hello("x.example.com", ["h2"]), 1 << 20)
    bad_sni = hello.replace(b"\x00\x00\x0dx.example.com", b"\x01\x00\x0dx.example.com")  # name type 1
    assert parse_client_hello(bad_sni).state == NOT_TLS
    bad_alpn = hello.replace(b"\x02h2", b"\x00h2")                               # empty name
    assert parse_client_hello(bad_alpn) == (TLS, "x.example.com", ())


def test_fewer_than_a_record_header_waits():
    assert parse_client_hello(b"GET").state == NEED_MORE
    assert parse_client_hello(b"").state == NEED_MORE


# -- PROXY protocol ------------------------------------------------------------------------------

def v2(command=1, family=0x11, src="1.2.3.4", dst="5.6.7.8", sport=1000, dport=80, tlvs=b"",
       version=2) -> bytes:
    addrs = b""
    if command == 1:
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        addrs = a.packed + b.packed + struct.pack(">HH", sport, dport)
    body = addrs + tlvs
    return pp.V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack(">H", len(body)) + body


def test_v1_tcp4_tcp6_unknown():
    r = pp.parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 80\r\nGET /")
    assert (r.state, r.version, r.length, r.remote, r.local) == (pp.DONE, 1, 36, ("1.2.3.4", 1000), ("5.6.7.8", 80))
    r = pp.parse_proxy_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
    assert (r.remote, r.local) == (("2001:db8::1", 1), ("2001:db8::2", 2))
    r = pp.parse_proxy_header(b"PROXY UNKNOWN whatever\r\nrest")
    assert (r.state, r.length, r.remote) == (pp.DONE, 24, None)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", b"PROXY TCP4 ::1 ::1 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
    b"PROXY TCP4 224.0.0.1 5.6.7.8 1 2\r\n", b"PROXY TCP4 0.0.0.0 5.6.7.8 1 2\r\n", b"PROXY bad\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY TCP4 " + b"1" * 120 + b"\r\n", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
])
def test_v1_errors(line):
    assert pp.parse_proxy_header(line)[:2] == (pp.ERROR, 1)


def test_v2_inet_inet6_local_and_tlvs():
    r = pp.parse_proxy_header(v2(tlvs=b"\x01\x00\x02h2\x04\x00\x00") + b"payload")
    assert (r.state, r.version, r.remote, r.local, r.tlvs) == (
        pp.DONE, 2, ("1.2.3.4", 1000), ("5.6.7.8", 80), ((1, b"h2"), (4, b"")))
    assert r.length == len(v2(tlvs=b"\x01\x00\x02h2\x04\x00\x00"))
    r = pp.parse_proxy_header(v2(family=0x21, src="2001:db8::1", dst="::2"))
    assert (r.remote, r.local) == (("2001:db8::1", 1000), ("::2", 80))
    r = pp.parse_proxy_header(v2(command=0, family=0) + b"x")
    assert (r.state, r.remote, r.length) == (pp.DONE, None, 16)


@pytest.mark.parametrize("header", [
    v2(version=3), v2(family=0x31), v2(family=0x13), v2(command=2), v2(tlvs=b"\x01\x00\x05ab"),
    v2(src="224.1.1.1"),
])
def test_v2_errors(header):
    assert pp.parse_proxy_header(header)[:2] == (pp.ERROR, 2)


def test_every_prefix_of_a_header_waits():
    for header in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 80\r\n", v2(tlvs=b"\x05\x00\x03abc")):
        for i in range(1, len(header)):
            assert pp.parse_proxy_header(header[:i]).state == pp.NEED_MORE, (header, i)
    assert pp.parse_proxy_header(v2()[:20]).need == len(v2())


def test_not_found_skip_and_disallowed():
    assert pp.parse_proxy_header(b"GET / HTTP/1.1\r\nhost: x\r\n").state == pp.NOT_FOUND
    assert pp.parse_proxy_header(b"GET").state == pp.NEED_MORE
    assert pp.parse_proxy_header(b"GET", allow_without=True).state == pp.SKIP
    assert pp.parse_proxy_header(b"PRO", allow_without=True).state == pp.NEED_MORE
    assert pp.parse_proxy_header(v2(), v2_allowed=False)[:2] == (pp.DISALLOWED, 2)
    assert pp.parse_proxy_header(b"PROXY UNKNOWN\r\n", v1_allowed=False)[:2] == (pp.DISALLOWED, 1)
    # allow_without: a disallowed version's signature is not looked for at all.
    assert pp.parse_proxy_header(v2(), v2_allowed=False, allow_without=True).state == pp.SKIP


# -- HTTP inspector --------------------------------------------------------------------------------

@pytest.mark.parametrize("data,verdict", [
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP2),
    (b"PRI * HTTP/2.0\r\n", HTTP_MORE),
    (b"GET / HTTP/1.1\r\n", HTTP11),
    (b"GET / HTTP/1.1\n", HTTP11),
    (b"POST /x?y=1 HTTP/1.0\r\nhost: a\r\n", HTTP10),
    (b"CUSTOM /x HTTP/1.1\r\n", HTTP11),
    (b"GET / HTTP/1.", HTTP_MORE),
    (b"GET /", HTTP_MORE),
    (b"\r\nGET / HTTP/1.1\r\n", NOT_HTTP),
    (b"GET  / HTTP/1.1\r\n", NOT_HTTP),
    (b"\x16\x03\x01\x02\x00", NOT_HTTP),
    (b"GET / FTP/1.1\r\n", NOT_HTTP),
])
def test_http_inspection(data, verdict):
    assert inspect_http(data) == verdict


def test_proxy_header_writer_writes_what_envoy_writes_and_the_parser_reads_back():
    # Envoy 1.40's bytes for a terminated CONNECT from 127.0.0.1:46278 to 127.0.0.1:19000.
    assert pp.proxy_header(1, ("127.0.0.1", 46278), ("127.0.0.1", 19000)) == \
        b"PROXY TCP4 127.0.0.1 127.0.0.1 46278 19000\r\n"
    assert pp.proxy_header(2, ("127.0.0.1", 0xB4C6), ("127.0.0.1", 0x4A38)) == (
        pp.V2_SIGNATURE + b"\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\xb4\xc6\x4a\x38")
    for version in (1, 2):
        for src, dst in ((("10.1.2.3", 1), ("10.4.5.6", 65535)),
                         (("2001:db8::1", 443), ("2001:db8::2", 8443)),
                         (("::1", 7), ("127.0.0.1", 8))):   # the source's family for both
            r = pp.parse_proxy_header(pp.proxy_header(version, src, dst) + b"GET /")
            assert (r.state, r.version, r.remote) == (pp.DONE, version, src)
            assert r.local[1] == dst[1] and r.tlvs == ()
    with pytest.raises(ValueError):
        pp.proxy_header(1, ("not-an-ip", 1), ("127.0.0.1", 2))
