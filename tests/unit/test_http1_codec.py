"""HTTP/1.1 codecs, bytes in / events out, on both implementations (fast = httptools,
h11 = reference)."""

from __future__ import annotations

import pytest

from proxy.http.codec import (CodecError, Data, Informational, MessageComplete, RequestHeaders,
                              ResponseHeaders, make_client_codec, make_server_codec)

IMPLS = ["fast", "h11"]
GET = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    return request.param


def server(impl: str, **kw):
    return make_server_codec(impl, **kw)


def feed_all(codec, data: bytes, bytewise: bool = False) -> list:
    if not bytewise:
        return codec.feed(data)
    out: list = []
    for i in range(len(data)):
        out += codec.feed(data[i:i + 1])
    merged: list = []
    for ev in out:
        if type(ev) is Data and merged and type(merged[-1]) is Data:
            merged[-1] = Data(merged[-1].data + ev.data)
        else:
            merged.append(ev)
    return merged


def rq(method=b"GET", target=b"/a?b=c", version=b"1.1", headers=None, keep_alive=True,
       upgrade=None, expect=False, cl=None, chunked=False) -> RequestHeaders:
    return RequestHeaders(method, target, version, headers or [(b"host", b"example.com"),
                                                               (b"user-agent", b"t")],
                          keep_alive, upgrade, expect, cl, chunked)


# --- requests ---

def test_get_yields_headers_with_lowercased_names_in_order(impl):
    events = server(impl).feed(b"GET / HTTP/1.1\r\nX-B: 1\r\nHost: h\r\nX-A: 2\r\n\r\n")
    assert events == [rq(target=b"/", headers=[(b"x-b", b"1"), (b"host", b"h"), (b"x-a", b"2")]),
                      MessageComplete(None)]


@pytest.mark.parametrize("bytewise", [False, True])
def test_pipelined_requests_come_out_in_order(impl, bytewise):
    data = GET + b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" + GET
    events = feed_all(server(impl), data, bytewise)
    post = RequestHeaders(b"POST", b"/p", b"1.1", [(b"host", b"h"), (b"content-length", b"3")],
                          True, None, False, 3, False)
    assert events == [rq(), MessageComplete(None), post, Data(b"abc"), MessageComplete(None),
                      rq(), MessageComplete(None)]


@pytest.mark.parametrize("split", ["whole", "per-request", "mid-head", 1, 12, 20])
def test_request_versions_wherever_the_head_starts_in_a_feed(impl, split):
    """The fast codec reads the version off the request line when a head starts a feed, and
    asks llhttp otherwise: pipelined HTTP/1.0 and 1.1 requests in one feed, one feed each, a
    head split inside its request line or after it, a leading empty line, a POST body before
    the next head, and a feed that starts with a header line whose value looks like a version."""
    requests = [b"GET /1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX: HTTP/1.1\r\n\r\nab",
                b"GET /3 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                b"\r\nGET /4 HTTP/1.1\r\nHost: h\r\n\r\n"]
    data = b"".join(requests)
    if split == "whole":
        feeds = [data]
    elif split == "per-request":
        feeds = requests
    elif split == "mid-head":  # the second feed starts at `X: HTTP/1.1`, then /3 begins in it
        i = data.index(b"X: ")
        feeds = [data[:i], data[i:]]
    else:
        feeds = [data[i:i + split] for i in range(0, len(data), split)]
    codec = server(impl)
    events = [ev for chunk in feeds for ev in codec.feed(chunk)]
    heads = [(ev.target, ev.http_version) for ev in events if type(ev) is RequestHeaders]
    assert heads == [(b"/1", b"1.0"), (b"/2", b"1.1"), (b"/3", b"1.0"), (b"/4", b"1.1")]


def test_head_in_progress_from_a_requests_first_byte_until_its_head_is_complete(impl):
    c = server(impl)
    assert not c.head_in_progress
    assert c.feed(b"\r\n") == [] and not c.head_in_progress  # blank lines before a request
    assert c.feed(b"G") == [] and c.head_in_progress
    assert c.feed(GET[1:-2]) == [] and c.head_in_progress
    assert [type(e) for e in c.feed(b"\r\n")] == [RequestHeaders, MessageComplete]
    assert not c.head_in_progress
    # A whole request then the start of the next one in the same feed (kept alive).
    assert len(c.feed(GET + b"POST /x HT")) == 2 and c.head_in_progress
    assert [type(e) for e in c.feed(b"TP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nh")] == \
        [RequestHeaders, Data]
    assert not c.head_in_progress  # a body in progress is not a head


def test_error_after_whole_requests_carries_them(impl):
    """The connection manager answers the whole requests before bad bytes first (as Envoy,
    which parses one request at a time), so the error carries what the feed parsed."""
    data = GET + b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab" + b"BOGUS\r\n\r\n"
    with pytest.raises(CodecError) as err:
        server(impl).feed(data)
    post = RequestHeaders(b"POST", b"/p", b"1.1", [(b"host", b"h"), (b"content-length", b"2")],
                          True, None, False, 2, False)
    assert err.value.status == 400
    assert err.value.parsed == [rq(), MessageComplete(None), post, Data(b"ab"), MessageComplete(None)]


@pytest.mark.parametrize("line", [b"GET /aHTTP/1.1", b"GET /x/HTTP/1.0", b"POST /p?q=HTTP/1.1"])
def test_request_line_without_a_version_is_400_even_when_the_target_ends_like_one(impl, line):
    """llhttp reads `GET /aHTTP/1.1` as an HTTP/0.9 line (target `/aHTTP/1.1`, no version);
    the version must not be taken from the line's last bytes (found by the fuzz campaign)."""
    with pytest.raises(CodecError) as err:
        server(impl).feed(line + b"\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert err.value.status == 400


@pytest.mark.parametrize("bytewise", [False, True])
def test_chunked_request_body_and_trailers(impl, bytewise):
    data = (b"POST / HTTP/1.1\r\nHost: h\r\n" + TE + b"\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n"
            b"0\r\nX-Check: 9\r\n\r\n")
    events = feed_all(server(impl), data, bytewise)
    assert events[0].chunked and events[0].content_length is None
    body = b"".join(e.data for e in events if type(e) is Data)
    assert body == b"hello world"
    assert events[-1] == MessageComplete([(b"x-check", b"9")])


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
])
def test_keep_alive_follows_version_and_connection_header(impl, head, keep_alive):
    assert server(impl).feed(head)[0].keep_alive is keep_alive


def test_bytes_after_connection_close_request_are_ignored(impl):
    codec = server(impl)
    events = codec.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n")
    assert [type(e) for e in events] == [RequestHeaders, MessageComplete]
    assert codec.feed(b"Host: h\r\n\r\n") == []


def test_expect_continue_is_reported_and_100_does_not_end_the_response(impl):
    codec = server(impl)
    events = codec.feed(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                        b"Content-Length: 2\r\n\r\n")
    assert events == [RequestHeaders(b"PUT", b"/", b"1.1", [(b"host", b"h"),
                      (b"expect", b"100-continue"), (b"content-length", b"2")], True, None, True,
                      2, False)]
    assert codec.encode_response_head(100, None, [], b"PUT", b"1.1", True) == \
        b"HTTP/1.1 100 Continue\r\n\r\n"
    assert codec.feed(b"ok") == [Data(b"ok"), MessageComplete(None)]
    assert codec.encode_response_head(201, None, [(b"content-length", b"0")], b"PUT", b"1.1",
                                      True) == b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"


def test_websocket_upgrade_becomes_passthrough_after_101(impl):
    codec = server(impl)
    events = codec.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\n\x81\x00")
    assert events[0].upgrade == b"websocket" and events[1] == MessageComplete(None)
    assert len(events) == 2  # early frame bytes are held until the answer
    head = codec.encode_response_head(101, None, [(b"connection", b"upgrade"),
                                                  (b"upgrade", b"websocket")], b"GET", b"1.1", True)
    assert head == (b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\n\r\n")
    assert codec.resume() == [Data(b"\x81\x00")]
    assert codec.feed(b"GET / HTTP/1.1\r\n\r\n") == [Data(b"GET / HTTP/1.1\r\n\r\n")]
    assert codec.encode_body(b"raw") == b"raw"


def test_response_fields_replace_the_heads_own(impl):
    """`response_fields` (the HCM's server under OVERWRITE) go on every response head, final
    or 101, in place of same-named fields; other fields keep their order."""
    codec = server(impl, response_fields=((b"server", b"envoy"),))
    codec.feed(GET)
    head = codec.encode_response_head(200, None, [(b"server", b"nginx"), (b"date", b"d"),
                                                  (b"server", b"again"), (b"content-length", b"0")],
                                      b"GET", b"1.1", True)
    assert head == (b"HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 0\r\nserver: envoy\r\n\r\n")
    codec.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    head = codec.encode_response_head(101, None, [(b"connection", b"upgrade"), (b"server", b"ws"),
                                                  (b"upgrade", b"websocket")], b"GET", b"1.1", True)
    assert head == (b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\nserver: envoy\r\n\r\n")


def test_refused_upgrade_resumes_http_parsing(impl):
    codec = server(impl)
    codec.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n" + GET)
    codec.encode_response_head(200, None, [(b"content-length", b"0")], b"GET", b"1.1", True)
    assert codec.resume() == [rq(), MessageComplete(None)]


def test_connect_2xx_turns_the_connection_into_a_tunnel(impl):
    codec = server(impl)
    events = codec.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03")
    assert events[0].method == b"CONNECT" and events[0].upgrade == b"CONNECT"
    assert codec.encode_response_head(200, None, [], b"CONNECT", b"1.1", True) == \
        b"HTTP/1.1 200 OK\r\n\r\n"
    assert codec.resume() == [Data(b"\x16\x03")]
    assert codec.feed(b"more") == [Data(b"more")]


def test_eof_between_requests_is_clean_and_mid_request_is_an_error(impl):
    codec = server(impl)
    codec.feed(GET)
    assert codec.feed(b"") == []
    codec = server(impl)
    codec.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(CodecError) as err:
        codec.feed(b"")
    assert err.value.status == 400


BAD_REQUESTS = {
    "cl_and_te": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n" + TE + b"\r\n", 400,
                  "http1.content_length_and_chunked_not_allowed"),
    "duplicate_cl": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                     400, None),
    "identical_cl_list": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42, 42\r\n\r\n", 400, None),
    "invalid_cl": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1a\r\n\r\n", 400, None),
    "te_not_chunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                       "http1.invalid_transfer_encoding"),
    "te_chunked_not_alone": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n"
                             b"\r\n0\r\n\r\n", 501, "http1.invalid_transfer_encoding"),
    "te_in_http10": (b"POST / HTTP/1.0\r\n" + TE + b"\r\n0\r\n\r\n", 400,
                     "http1.invalid_transfer_encoding"),
    "space_before_colon": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", 400, None),
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  2\r\n\r\n", 400, None),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x002\r\n\r\n", 400, None),
    "cr_in_value": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n", 400, None),
    "lf_in_value": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\n2\r\n\r\n", 400, None),
    "two_hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, None),
    "bad_chunk_size": (b"POST / HTTP/1.1\r\nHost: h\r\n" + TE + b"\r\nxyz\r\n", 400, None),
    "chunk_ext_bare_cr": (b"POST / HTTP/1.1\r\nHost: h\r\n" + TE + b"\r\n1;a\rb\r\nx\r\n", 400, None),
    "chunk_ext_bare_lf": (b"POST / HTTP/1.1\r\nHost: h\r\n" + TE + b"\r\n1;a\nb\r\nx\r\n", 400, None),
    "odd_case_method": (b"POsT / HTTP/1.1\r\nHost: h\r\n\r\n", 400, None),
    "upgrade_with_body": (b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                          b"Content-Length: 1\r\n\r\nx", 400, None),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_rejected(impl, name):
    data, status, details = BAD_REQUESTS[name]
    for bytewise in (False, True):
        codec = server(impl)
        with pytest.raises(CodecError) as err:
            feed_all(codec, data, bytewise)
            codec.feed(b"")
        assert err.value.status == status
        if details:
            assert err.value.details == details


def test_versions_other_than_1_0_and_1_1_are_426_low_version(impl):
    for line in (b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"GET / HTTP/3.0"):
        with pytest.raises(CodecError) as err:
            server(impl).feed(line + b"\r\nHost: h\r\n\r\n")
        assert (err.value.status, err.value.details) == (426, "low_version"), line


def test_control_bytes_in_a_value_are_invalid_characters(impl):
    for byte in (b"\x00", b"\x01", b"\x7f"):
        with pytest.raises(CodecError) as err:
            server(impl).feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a" + byte + b"b\r\n\r\n")
        assert (err.value.status, err.value.details) == (400, "http1.invalid_characters"), byte


def test_a_request_without_host_is_the_connection_managers_to_refuse(impl):
    """Envoy refuses it in its HCM (a local reply without flag), not in its codec."""
    (head, _) = server(impl).feed(b"GET / HTTP/1.1\r\n\r\n")
    assert head.method == b"GET" and head.headers == []


def test_head_over_max_request_headers_kb_is_431(impl):
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 1100 + b"\r\n\r\n"
    with pytest.raises(CodecError) as err:
        server(impl, max_request_headers_kb=1).feed(big)
    assert (err.value.status, err.value.details) == (431, "http1.headers_too_large")
    assert server(impl, max_request_headers_kb=2).feed(big)[0].headers[1][0] == b"x-big"


def test_unterminated_head_is_431_once_it_outgrows_the_limit(impl):
    codec = server(impl, max_request_headers_kb=1)
    codec.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(CodecError) as err:
        for _ in range(100):
            codec.feed(b"X-A: " + b"b" * 60 + b"\r\n")
    assert err.value.status == 431


def test_more_than_max_headers_count_is_431(impl):
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 10 + b"\r\n"
    with pytest.raises(CodecError) as err:
        server(impl, max_headers_count=10).feed(head)
    assert (err.value.status, err.value.details) == (431, "http1.too_many_headers")
    assert len(server(impl, max_headers_count=11).feed(head)[0].headers) == 11


# --- response encoding ---

def test_response_with_content_length_is_sent_as_is(impl):
    codec = server(impl)
    head = codec.encode_response_head(200, b"Fine", [(b"content-length", b"2")], b"GET", b"1.1", True)
    assert head == b"HTTP/1.1 200 Fine\r\ncontent-length: 2\r\n\r\n"
    assert codec.encode_body(b"ok") == b"ok" and codec.encode_end() == b""
    assert not codec.response_must_close


def test_response_without_length_to_http11_is_chunked(impl):
    codec = server(impl)
    head = codec.encode_response_head(200, None, [(b"x", b"1")], b"GET", b"1.1", True)
    assert head == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    assert codec.encode_body(b"hello") == b"5\r\nhello\r\n"
    assert codec.encode_body(b"") == b""
    assert codec.encode_end([(b"x-t", b"v")]) == b"0\r\nx-t: v\r\n\r\n"


def test_response_without_length_to_http10_is_close_delimited(impl):
    codec = server(impl)
    head = codec.encode_response_head(200, None, [], b"GET", b"1.0", True)
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert codec.response_must_close
    assert codec.encode_body(b"abc") == b"abc" and codec.encode_end() == b""


def test_http10_keep_alive_response_says_so(impl):
    head = server(impl).encode_response_head(200, None, [(b"content-length", b"0")], b"GET",
                                             b"1.0", True)
    assert head.endswith(b"connection: keep-alive\r\n\r\n")


def test_keep_alive_false_adds_connection_close_and_drops_callers_framing(impl):
    codec = server(impl)
    head = codec.encode_response_head(200, None, [(b"connection", b"keep-alive"),
                                                  (b"transfer-encoding", b"gzip"),
                                                  (b"content-length", b"1")],
                                      b"GET", b"1.1", False)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n"
    assert codec.response_must_close


@pytest.mark.parametrize("status, method, expected", [
    (200, b"HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"),
    (204, b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (304, b"GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"),
])
def test_bodyless_responses_get_no_body_framing(impl, status, method, expected):
    codec = server(impl)
    assert codec.encode_response_head(status, None, [(b"content-length", b"9")], method, b"1.1",
                                      True) == expected
    head = codec.encode_response_head(status, None, [], method, b"1.1", True)
    # Without a length, HEAD gets the framing the GET would have had (as Envoy's codec); 204
    # and 304 none.
    assert (b"transfer-encoding: chunked" in head) == (method == b"HEAD")
    # Body bytes a caller still writes after a bodyless head are dropped: a client would read
    # them as the start of its next response.
    assert codec.encode_body(b"x") == b"" and codec.encode_end() == b""


# --- client side ---

def client(impl: str, **kw):
    return make_client_codec(impl, **kw)


def test_request_encoding_adds_chunked_and_drops_content_length(impl):
    codec = client(impl)
    head = codec.encode_request_head(b"POST", b"/u", [(b"host", b"h"), (b"content-length", b"5")],
                                     chunked=True)
    assert head == b"POST /u HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    assert codec.encode_body(b"ab") == b"2\r\nab\r\n" and codec.encode_end() == b"0\r\n\r\n"
    plain = client(impl)
    assert plain.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False) == \
        b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
    assert plain.encode_body(b"ab") == b"ab"


@pytest.mark.parametrize("bytewise", [False, True])
def test_keep_alive_responses_on_one_connection(impl, bytewise):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    first = feed_all(codec, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", bytewise)
    assert first == [ResponseHeaders(200, b"OK", b"1.1", [(b"content-length", b"2")], True, 2,
                                     False), Data(b"hi"), MessageComplete(None)]
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    second = feed_all(codec, b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n2\r\nyo\r\n0\r\nX: 1\r\n\r\n",
                      bytewise)
    assert second[0].chunked and second[1:] == [Data(b"yo"), MessageComplete([(b"x", b"1")])]


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_fields_and_trailers_on_one_connection(impl, bytewise):
    """Length-framed and chunked responses (with trailers) alternate on one connection; field
    values lose surrounding whitespace and keep inner colons."""
    codec = client(impl)
    plain = b"HTTP/1.1 200 OK\r\nX-A:  a:b \t\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nhi"
    chunked = b"HTTP/1.1 201 Made\r\nX-C: c\r\n" + TE + b"\r\n2\r\nyo\r\n0\r\nT: 1\r\n\r\n"
    fields = [(b"x-a", b"a:b"), (b"x-empty", b""), (b"content-length", b"2")]
    for _ in range(2):
        codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
        assert feed_all(codec, plain, bytewise) == [
            ResponseHeaders(200, b"OK", b"1.1", fields, True, 2, False), Data(b"hi"),
            MessageComplete(None)]
        codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
        assert feed_all(codec, chunked, bytewise) == [
            ResponseHeaders(201, b"Made", b"1.1", [(b"x-c", b"c"), (b"transfer-encoding", b"chunked")],
                            True, None, True), Data(b"yo"), MessageComplete([(b"t", b"1")])]


@pytest.mark.parametrize("head", [b"Bad Name: v", b"X : v", b"X: a\x01b", b": v", b"NoColon"])
def test_malformed_response_field_is_502(impl, head):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    with pytest.raises(CodecError) as err:
        codec.feed(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nContent-Length: 0\r\n\r\n")
    assert err.value.status == 502


def test_close_delimited_response_completes_at_eof(impl):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    events = codec.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert events[0].keep_alive is False and events[1] == Data(b"abc")
    assert codec.feed(b"") == [MessageComplete(None)]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n3\r\nabc\r\n",
    b"",
])
def test_eof_before_end_of_response_is_502(impl, response):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    with pytest.raises(CodecError) as err:
        codec.feed(response)
        codec.feed(b"")
    assert err.value.status == 502


def test_head_204_304_responses_have_no_body(impl):
    codec = client(impl)
    for method, status in ((b"HEAD", b"200"), (b"GET", b"204"), (b"GET", b"304")):
        codec.encode_request_head(method, b"/", [(b"host", b"h")], chunked=False)
        events = codec.feed(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 5\r\n\r\n")
        assert [type(e) for e in events] == [ResponseHeaders, MessageComplete]


def test_100_continue_is_informational(impl):
    codec = client(impl)
    codec.encode_request_head(b"POST", b"/", [(b"host", b"h"), (b"expect", b"100-continue")],
                              chunked=True)
    assert codec.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == [Informational(100, [])]
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHeaders, MessageComplete]


def test_101_response_turns_into_a_tunnel(impl):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h"), (b"connection", b"upgrade"),
                                             (b"upgrade", b"websocket")], chunked=False)
    events = codec.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81")
    assert events[0].status == 101 and events[1:] == [Data(b"\x81")]
    assert codec.feed(b"HTTP/1.1 200") == [Data(b"HTTP/1.1 200")]


def test_connection_close_response_ends_reuse(impl):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    events = codec.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert events[0].keep_alive is False


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n" + TE + b"\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + TE + b"\r\nzz\r\n",
])
def test_bad_response_framing_is_502(impl, response):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    with pytest.raises(CodecError) as err:
        codec.feed(response)
    assert err.value.status == 502


def test_bytes_after_a_complete_response_poison_the_connection(impl):
    codec = client(impl)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n")
    assert events[-1] == MessageComplete(None)
    with pytest.raises(CodecError):
        codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)


def test_response_head_over_limit_is_502(impl):
    codec = client(impl, max_response_headers_kb=1)
    codec.encode_request_head(b"GET", b"/", [(b"host", b"h")], chunked=False)
    with pytest.raises(CodecError) as err:
        codec.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n")
    assert err.value.status == 502


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError):
        make_server_codec("nope")


@pytest.mark.parametrize("status, method, version, fields, body", [
    (200, b"GET", b"1.1", [(b"content-length", b"5")], b"hello"),
    (200, b"GET", b"1.1", [], b"chunk me"),          # no length: chunked
    (200, b"GET", b"1.1", [], b""),                  # chunked, empty
    (200, b"HEAD", b"1.1", [(b"content-length", b"5")], b""),
    (204, b"GET", b"1.1", [], b""),
    (200, b"GET", b"1.0", [], b"close-delimited"),
])
def test_a_whole_response_is_its_head_body_and_end(impl, status, method, version, fields, body):
    one, parts = server(impl), server(impl)
    whole = one.encode_whole_response(status, list(fields), method, version, True, body)
    piecewise = parts.encode_response_head(status, None, list(fields), method, version, True)
    piecewise += parts.encode_body(body) + parts.encode_end()
    assert whole == piecewise
    assert one.response_must_close == parts.response_must_close


@pytest.mark.parametrize("method, length", [
    (b"GET", None), (b"HEAD", None), (b"DELETE", None), (b"TRACE", None),
    (b"OPTIONS", b"0"), (b"POST", b"0"), (b"PUT", b"0"), (b"PATCH", b"0")])
def test_a_bodyless_request_says_content_length_0_for_methods_that_may_carry_a_body(
        impl, method, length):
    """As Envoy's HTTP/1 codec does upstream (seen on Envoy 1.40)."""
    head = client(impl).encode_request_head(method, b"/", [(b"host", b"h")], False, None, True)
    assert (b"content-length: " + length in head) if length else (b"content-length" not in head)
    given = client(impl).encode_request_head(method, b"/", [(b"content-length", b"0")], False,
                                             b"h", True)
    assert given.count(b"content-length") == 1
