"""Differential test: the httptools codec and the h11 reference codec, fed the same bytes
(whole, byte by byte and in seeded random splits), must produce the same events (adjacent
Data merged) and say the same after each feed about a request head in progress
(`head_in_progress`, which the connection manager's timers watch), or both raise CodecError
with the same status."""

from __future__ import annotations

import random
import zlib

import pytest

from proxy.http.codec import CodecError, Data, make_client_codec, make_server_codec

H = b"Host: a\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def req(method=b"GET", target=b"/", version=b"1.1", headers=H, body=b""):
    return method + b" " + target + b" HTTP/" + version + b"\r\n" + headers + b"\r\n" + body


def post_chunked(body: bytes) -> bytes:
    return req(b"POST", headers=H + TE, body=body)


SERVER_CORPUS = {
    # valid
    "get": req(),
    "pipelined": req() + req(target=b"/2") + req(b"HEAD", b"/3"),
    "post_cl": req(b"POST", headers=H + b"Content-Length: 5\r\n", body=b"hello") + req(),
    "cl_zero": req(b"POST", headers=H + b"Content-Length: 0\r\n"),
    "cl_ows": req(b"POST", headers=H + b"Content-Length:  3 \r\n", body=b"abc"),
    "chunked": post_chunked(b"5\r\nhello\r\n3;a=b;c=\"x y\"\r\nabc\r\n0\r\n\r\n") + req(),
    "chunked_trailers": post_chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n"),
    "chunked_upper_te": req(b"POST", headers=H + b"Transfer-Encoding: Chunked\r\n",
                            body=b"1\r\na\r\n0\r\n\r\n"),
    "chunked_hex": post_chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
    "http10": req(version=b"1.0", headers=b""),
    "http10_keepalive": req(version=b"1.0", headers=b"Connection: keep-alive\r\n") + req(),
    "close_then_junk": req(headers=H + b"Connection: close\r\n") + b"GARBAGE \x00\r\n\r\n",
    "expect": req(b"POST", headers=H + b"Expect: 100-continue\r\nContent-Length: 2\r\n", body=b"hi"),
    "upgrade": req(headers=H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x00",
    "connect": req(b"CONNECT", b"a:443", headers=b"Host: a:443\r\n") + b"\x16\x03",
    "upgrade_header_only": req(headers=H + b"Upgrade: websocket\r\n") + req(),
    "leading_crlf": b"\r\n\r\n" + req(),
    "obs_text": req(headers=H + b"X: caf\xc3\xa9 \xff\r\n"),
    "empty_value": req(headers=H + b"X:\r\nY: \r\n"),
    "tabs_in_value": req(headers=H + b"X:\ta\tb\t\r\n"),
    "absolute_form": req(target=b"http://a/b?c=d"),
    "options_star": req(b"OPTIONS", b"*"),
    "many_headers": req(headers=H + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(50))),
    "webdav": req(b"PROPFIND", headers=H + b"Depth: 1\r\n"),
    # malformed
    "cl_te": req(b"POST", headers=H + b"Content-Length: 3\r\n" + TE, body=b"0\r\n\r\n"),
    "te_cl": req(b"POST", headers=H + TE + b"Content-Length: 3\r\n", body=b"0\r\n\r\n"),
    "cl_dup_same": req(b"POST", headers=H + b"Content-Length: 3\r\nContent-Length: 3\r\n", body=b"abc"),
    "cl_dup_diff": req(b"POST", headers=H + b"Content-Length: 3\r\nContent-Length: 4\r\n", body=b"abcd"),
    "cl_list": req(b"POST", headers=H + b"Content-Length: 3, 3\r\n", body=b"abc"),
    "cl_plus": req(b"POST", headers=H + b"Content-Length: +3\r\n", body=b"abc"),
    "cl_neg": req(b"POST", headers=H + b"Content-Length: -1\r\n"),
    "cl_empty": req(b"POST", headers=H + b"Content-Length: \r\n"),
    "cl_hex": req(b"POST", headers=H + b"Content-Length: 0x3\r\n", body=b"abc"),
    "te_gzip": req(b"POST", headers=H + b"Transfer-Encoding: gzip\r\n"),
    "te_gzip_chunked": req(b"POST", headers=H + b"Transfer-Encoding: gzip, chunked\r\n",
                           body=b"0\r\n\r\n"),
    "te_chunked_gzip": req(b"POST", headers=H + b"Transfer-Encoding: chunked, gzip\r\n"),
    "te_twice": req(b"POST", headers=H + TE + TE, body=b"0\r\n\r\n"),
    "te_http10": req(b"POST", version=b"1.0", headers=TE, body=b"0\r\n\r\n"),
    "te_vtab": req(b"POST", headers=H + b"Transfer-Encoding: \x0bchunked\r\n", body=b"0\r\n\r\n"),
    "space_before_colon": req(headers=H + b"X-A : b\r\n"),
    "te_space_before_colon": req(b"POST", headers=H + b"Transfer-Encoding : chunked\r\n",
                                 body=b"0\r\n\r\n"),
    "tab_before_colon": req(headers=H + b"X-A\t: b\r\n"),
    "obs_fold": req(headers=H + b"X-A: b\r\n c\r\n"),
    "ws_after_start_line": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "nul_value": req(headers=H + b"X-A: b\x00c\r\n"),
    "cr_value": req(headers=H + b"X-A: b\rc\r\n"),
    "lf_value": req(headers=H + b"X-A: b\nc\r\n"),
    "vtab_value": req(headers=H + b"X-A: b\x0bc\r\n"),
    "del_value": req(headers=H + b"X-A: b\x7fc\r\n"),
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "no_host": req(headers=b""),
    "two_hosts": req(headers=H + H),
    "bad_name_char": req(headers=H + b"X\x01A: b\r\n"),
    "empty_name": req(headers=H + b": b\r\n"),
    "chunk_0x": post_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk_neg": post_chunked(b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk_space_after": post_chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk_space_before": post_chunked(b" 5\r\nhello\r\n0\r\n\r\n"),
    "chunk_empty_ext": post_chunked(b"5;\r\nhello\r\n0\r\n\r\n"),
    "chunk_ext_bare_cr": post_chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    "chunk_ext_bare_lf": post_chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    "chunk_ext_space": post_chunked(b"5; a=b\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_bare_lf": post_chunked(b"5\nhello\r\n0\r\n\r\n"),
    "chunk_no_crlf_after_data": post_chunked(b"5\r\nhelloXX0\r\n\r\n"),
    "chunk_data_bare_lf": post_chunked(b"5\r\nhello\n0\r\n\r\n"),
    "chunk_overflow": post_chunked(b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk_empty_size": post_chunked(b"\r\nhello\r\n0\r\n\r\n"),
    "trailer_obs_fold": post_chunked(b"0\r\nX: a\r\n b\r\n\r\n"),
    "trailer_space_colon": post_chunked(b"0\r\nX : a\r\n\r\n"),
    "method_unknown": req(b"FOO"),
    "method_mixed_case": req(b"POsT"),
    "method_lower": req(b"get"),
    "http20": req(version=b"2.0"),
    "http12": req(version=b"1.2"),
    "version_lower": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "ctl_in_target": b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    "upgrade_with_body": req(b"POST", headers=H + b"Connection: upgrade\r\nUpgrade: h2c\r\n"
                             b"Content-Length: 3\r\n", body=b"abc"),
    "connect_with_body": req(b"CONNECT", b"a:443", headers=b"Host: a:443\r\nContent-Length: 3\r\n",
                             body=b"abc"),
    "too_many_headers": req(headers=H + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(150))),
    "head_too_large": req(headers=H + b"X-Big: " + b"a" * 3000 + b"\r\n"),
    "head_never_ends": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 5000,
    "eof_mid_body": req(b"POST", headers=H + b"Content-Length: 10\r\n", body=b"abc"),
    "eof_mid_head": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "good_then_bad": req() + req(headers=H + b"Content-Length: 1\r\nContent-Length: 2\r\n"),
}

# (method, response) steps on one upstream connection.
CLIENT_CORPUS = {
    "cl": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
           (b"GET", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")],
    "chunked_trailers": [(b"GET", b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")],
    "close_delimited": [(b"GET", b"HTTP/1.1 200 OK\r\n\r\nabc def")],
    "http10_close_delimited": [(b"GET", b"HTTP/1.0 200 OK\r\n\r\nabc")],
    "http10_keepalive": [(b"GET", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"),
                         (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\ny")],
    "head": [(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n"),
             (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")],
    "head_chunked": [(b"HEAD", b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n"),
                     (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n")],
    "204_with_cl": [(b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
                    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")],
    "continue": [(b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
    "early_hints": [(b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
    "switch": [(b"GET", b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\n\x81\x05hello")],
    "connect": [(b"CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01")],
    "connect_refused": [(b"CONNECT", b"HTTP/1.1 403 Forbidden\r\nContent-Length: 1\r\n\r\nx")],
    "connection_close": [(b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")],
    "no_reason": [(b"GET", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")],
    # malformed
    "cl_te": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + TE + b"\r\n0\r\n\r\n")],
    "cl_dup": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")],
    "cl_bad": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc")],
    "te_gzip": [(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc")],
    "te_http10": [(b"GET", b"HTTP/1.0 200 OK\r\n" + TE + b"\r\n0\r\n\r\n")],
    "obs_fold": [(b"GET", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n")],
    "space_before_colon": [(b"GET", b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n")],
    "nul_value": [(b"GET", b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 0\r\n\r\n")],
    "bad_chunk": [(b"GET", b"HTTP/1.1 200 OK\r\n" + TE + b"\r\nzz\r\nabc\r\n0\r\n\r\n")],
    "chunk_ext_cr": [(b"GET", b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n3;a\rb\r\nabc\r\n0\r\n\r\n")],
    "truncated_cl": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")],
    "truncated_chunked": [(b"GET", b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n3\r\nabc\r\n")],
    "truncated_head": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-")],
    "status_99": [(b"GET", b"HTTP/1.1 99 X\r\nContent-Length: 0\r\n\r\n")],
    "http20": [(b"GET", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")],
    "bare_lf": [(b"GET", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")],
    "unsolicited": [(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n")],
    "too_many_headers": [(b"GET", b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 150 + b"Content-Length: 0\r\n\r\n")],
}


def merged(events: list) -> list:
    out: list = []
    for ev in events:
        if type(ev) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def run_server(impl: str, chunks: list[bytes]):
    """("ok", events, head_in_progress after each feed) or ("error", status)."""
    codec = make_server_codec(impl, max_request_headers_kb=2)
    events: list = []
    in_head = []
    try:
        for chunk in chunks:
            events += codec.feed(chunk)
            in_head.append(codec.head_in_progress)
        events += codec.feed(b"")
    except CodecError as exc:
        return ("error", exc.status)
    return ("ok", merged(events), in_head)


def run_client(impl: str, steps, split) -> tuple:
    codec = make_client_codec(impl, max_response_headers_kb=2)
    events: list = []
    try:
        for method, response in steps:
            codec.encode_request_head(method, b"/", [(b"host", b"a")], chunked=False)
            for chunk in split(response):
                events += codec.feed(chunk)
        events += codec.feed(b"")
    except CodecError as exc:
        return ("error", exc.status)
    return ("ok", merged(events))


def splits(data: bytes, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    for _ in range(6):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])])
    return out


@pytest.mark.parametrize("name", sorted(SERVER_CORPUS))
def test_server_codecs_agree(name: str) -> None:
    data = SERVER_CORPUS[name]
    for chunks in splits(data, seed=zlib.crc32(name.encode())):
        fast, ref = run_server("fast", chunks), run_server("h11", chunks)
        assert fast == ref, f"{name} split {[len(c) for c in chunks]}"


@pytest.mark.parametrize("name", sorted(CLIENT_CORPUS))
def test_client_codecs_agree(name: str) -> None:
    steps = CLIENT_CORPUS[name]
    whole = run_client("fast", steps, lambda b: [b])
    assert whole == run_client("h11", steps, lambda b: [b])
    bytewise = lambda b: [b[i:i + 1] for i in range(len(b))]  # noqa: E731
    assert run_client("fast", steps, bytewise) == run_client("h11", steps, bytewise)
    rng = random.Random(len(name))
    for _ in range(4):
        def split(b: bytes) -> list[bytes]:
            cut = rng.randrange(1, len(b))
            return [b[:cut], b[cut:]]
        state = rng.getstate()
        fast = run_client("fast", steps, split)
        rng.setstate(state)
        assert fast == run_client("h11", steps, split), name


def test_corpus_has_both_outcomes() -> None:
    outcomes = {run_server("fast", [d])[0] for d in SERVER_CORPUS.values()}
    outcomes |= {run_client("fast", s, lambda b: [b])[0] for s in CLIENT_CORPUS.values()}
    assert outcomes == {"ok", "error"}
