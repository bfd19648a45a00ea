"""envoy.filters.http.grpc_web through the proxy: gRPC-Web requests made the way a browser's
client makes them (raw HTTP/1.1 sockets, an HTTP/2 client on `h2`, curl), a real gRPC server
upstream over h2c (grpclib on both interpreters; grpcio's server on 3.13), the filter chain as
Envoy's gRPC-Web examples configure it (grpc_web, cors, router). Binary and base64 ("text")
modes, a base64 body cut inside its groups across DATA frames, server streaming, status in
the trailer frame and in a trailers-only answer, bad base64 answered 400 while the proxy keeps
serving, CORS, and the grpc-web stats. The differential case filter_grpc_web compares the same
behaviour with real Envoy byte for byte."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys

import pytest

from .grpc_peers import EchoBackend
from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import read_response

H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
FILTERS = [
    {"name": "envoy.filters.http.grpc_web", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}},
    {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
    {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
]
CORS = {"envoy.filters.http.cors": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "allow_origin_string_match": [{"prefix": "*"}],
    "allow_methods": "GET, PUT, DELETE, POST, OPTIONS",
    "allow_headers": "keep-alive,user-agent,cache-control,content-type,content-transfer-encoding,"
                     "x-accept-content-transfer-encoding,x-accept-response-streaming,x-user-agent,"
                     "x-grpc-web,grpc-timeout",
    "max_age": "1728000",
    "expose_headers": "grpc-status,grpc-message"}}


def _config(port: int) -> dict:
    cfg = front_proxy_config([{"match": {"prefix": "/test.Echo/"}, "route": {"cluster": "grpc", "timeout": "0s"}}],
                             [static_cluster("grpc", port, typed_extension_protocol_options=H2)],
                             http_filters=FILTERS, codec_type="AUTO")
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = CORS
    return cfg


@pytest.fixture(scope="module")
def backend():
    b = EchoBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def proxy(backend):
    p = ProxyUnderTest(_config(backend.port))
    yield p
    p.stop()


def frame(message: bytes, flags: int = 0) -> bytes:
    return bytes((flags,)) + len(message).to_bytes(4, "big") + message


def parse_frames(body: bytes) -> tuple[list[bytes], dict[str, str] | None]:
    """A gRPC-Web body: its messages, and the trailers of its 0x80 frame (None: no such frame)."""
    messages, trailers, i = [], None, 0
    while i < len(body):
        flags, n = body[i], int.from_bytes(body[i + 1:i + 5], "big")
        payload = body[i + 5:i + 5 + n]
        assert len(payload) == n, body
        if flags & 0x80:
            assert trailers is None and i + 5 + n == len(body), "the trailer frame comes last"
            trailers = dict(line.split(":", 1) for line in payload.decode().split("\r\n") if line)
        else:
            messages.append(payload)
        i += 5 + n
    return messages, trailers


def post(port: int, path: str, body: bytes, content_type: str, **headers: str):
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nhost: web.example\r\ncontent-type: {content_type}\r\n"
                   f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body)
        resp = read_response(s, "POST")
    return resp.status, dict(resp.headers), resp.body


# -- binary mode ---------------------------------------------------------------------------------

def test_binary_unary_call_gets_its_reply_and_trailers_in_the_body(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Unary", frame(b"hello"),
                                 "application/grpc-web+proto", x_grpc_web="1")
    assert status == 200
    assert headers["content-type"] == "application/grpc-web+proto"
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    messages, trailers = parse_frames(body)
    assert messages == [b"olleh"]
    assert trailers["grpc-status"] == "0"


def test_binary_server_streaming(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Stream", frame(b"4"), "application/grpc-web")
    messages, trailers = parse_frames(body)
    assert status == 200 and messages == [b"msg-0", b"msg-1", b"msg-2", b"msg-3"]
    assert trailers["grpc-status"] == "0"


def test_a_failed_call_carries_its_status_and_message(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Unary", frame(b"missing"),
                                 "application/grpc-web+proto")
    assert status == 200
    # grpclib answers a call failed before any message trailers-only: the status stays in
    # the headers (else it would be in the trailer frame).
    messages, trailers = parse_frames(body)
    got = trailers if trailers is not None else headers
    assert messages == [] and got["grpc-status"] == "5" and got["grpc-message"] == "no such thing"


# -- text (base64) mode -----------------------------------------------------------------------------

def test_text_unary_call_answers_in_base64(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Unary", base64.b64encode(frame(b"hello")),
                                 "application/grpc-web-text", accept="application/grpc-web-text")
    assert status == 200 and headers["content-type"] == "application/grpc-web-text+proto"
    reply = base64.b64encode(frame(b"olleh"))
    assert body.startswith(reply)   # the message on its own, then the trailer frame on its own
    messages, trailers = parse_frames(base64.b64decode(body[len(reply):], validate=True))
    assert messages == [] and trailers["grpc-status"] == "0"


def test_text_streaming_each_message_is_base64_on_its_own(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Stream", base64.b64encode(frame(b"3")),
                                 "application/grpc-web-text+proto", accept="application/grpc-web-text+proto")
    want = b"".join(base64.b64encode(frame(b"msg-%d" % i)) for i in range(3))
    assert status == 200 and body.startswith(want)
    messages, trailers = parse_frames(base64.b64decode(body[len(want):]))
    assert messages == [] and trailers["grpc-status"] == "0"


def test_text_request_with_binary_answer(proxy):
    status, headers, body = post(proxy.port, "/test.Echo/Unary", base64.b64encode(frame(b"abc")),
                                 "application/grpc-web-text")
    assert headers["content-type"] == "application/grpc-web+proto"
    assert parse_frames(body)[0] == [b"cba"]


def test_text_body_cut_inside_base64_groups_across_http2_data_frames(proxy):
    """An HTTP/2 client sending the base64 body in DATA frames of 5, 3 and 7 characters: the
    proxy decodes each whole group as it completes, and the server gets one whole message."""
    import h2.config
    import h2.connection
    import h2.events

    text = base64.b64encode(frame(b"split across frames"))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        conn.send_headers(1, [(":method", "POST"), (":path", "/test.Echo/Unary"), (":scheme", "http"),
                              (":authority", "web.example"), ("content-type", "application/grpc-web-text"),
                              ("accept", "application/grpc-web-text")])
        pieces = [text[:5], text[5:8], text[8:15], text[15:]]
        for k, piece in enumerate(pieces):
            conn.send_data(1, piece, end_stream=k == len(pieces) - 1)
            s.sendall(conn.data_to_send())
        headers, body, ended = {}, b"", False
        while not ended:
            data = s.recv(65536)
            assert data, "the proxy closed the connection"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.TrailersReceived):
                    pytest.fail("trailers go in the body, not as HTTP/2 trailers")
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            s.sendall(conn.data_to_send())
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc-web-text+proto"
    reply = base64.b64encode(frame(b"split across frames"[::-1]))
    assert body.startswith(reply)
    assert parse_frames(base64.b64decode(body[len(reply):]))[1]["grpc-status"] == "0"


def test_curl_text_call_over_h2c(proxy):
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
                          "-H", "content-type: application/grpc-web-text",
                          "-H", "accept: application/grpc-web-text",
                          "--data-binary", base64.b64encode(frame(b"curl")).decode(),
                          f"http://127.0.0.1:{proxy.port}/test.Echo/Unary"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    reply = base64.b64encode(frame(b"lruc"))
    assert out.stdout.startswith(reply)
    assert parse_frames(base64.b64decode(out.stdout[len(reply):]))[1]["grpc-status"] == "0"


# -- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, details", [
    (b"AAAAAAVoZWxsbw=", "bad size"),
    (b"AAAA*AVoZWxsbw==", "bad character"),
    (b"AAAAAANhYmM=AAAAAANhYmM=", "padding inside"),
])
def test_bad_base64_is_a_400_with_a_grpc_status_and_the_proxy_keeps_serving(proxy, text, details):
    status, headers, body = post(proxy.port, "/test.Echo/Unary", text, "application/grpc-web-text")
    assert status == 400, details
    assert headers["grpc-status"] == "13"
    assert headers["grpc-message"] == "Bad gRPC-web request, invalid base64 data."
    assert headers["content-length"] == "0" and body == b""
    assert headers.get("connection") == "close"   # Envoy: a 400 on HTTP/1.1 ends the connection
    status, _, body = post(proxy.port, "/test.Echo/Unary", frame(b"next"), "application/grpc-web")
    assert status == 200 and parse_frames(body)[0] == [b"txen"]


def test_a_path_with_no_route_is_a_plain_404_in_grpc_web_dress(proxy):
    status, headers, body = post(proxy.port, "/other.Svc/Call", frame(b"x"), "application/grpc-web")
    assert status == 404 and headers["content-type"] == "application/grpc-web+proto"
    assert "grpc-status" not in headers  # (headers only: Envoy adds none either)


# -- CORS, as the gRPC-Web examples configure it ---------------------------------------------------------

def test_cors_preflight_and_call_expose_the_grpc_status(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"OPTIONS /test.Echo/Unary HTTP/1.1\r\nhost: web.example\r\norigin: http://app.example\r\n"
                  b"access-control-request-method: POST\r\naccess-control-request-headers: x-grpc-web,content-type\r\n\r\n")
        pre = read_response(s, "OPTIONS")
    h = dict(pre.headers)
    assert pre.status == 200 and h["access-control-allow-origin"] == "http://app.example"
    assert "x-grpc-web" in h["access-control-allow-headers"]
    status, headers, body = post(proxy.port, "/test.Echo/Unary", base64.b64encode(frame(b"cors")),
                                 "application/grpc-web-text", accept="application/grpc-web-text",
                                 origin="http://app.example")
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    assert headers["access-control-expose-headers"] == "grpc-status,grpc-message"


# -- stats ------------------------------------------------------------------------------------------------

def test_grpc_web_stats_count_calls_by_service_method_and_status(backend):
    p = ProxyUnderTest(_config(backend.port))
    try:
        post(p.port, "/test.Echo/Unary", frame(b"a"), "application/grpc-web")
        post(p.port, "/test.Echo/Unary", base64.b64encode(frame(b"b")), "application/grpc-web-text")
        post(p.port, "/test.Echo/Unary", frame(b"missing"), "application/grpc-web")
        c = p.counters()
        base = "cluster.grpc.grpc-web.test.Echo.Unary."
        assert (c[base + "0"], c[base + "5"], c[base + "success"], c[base + "failure"],
                c[base + "total"]) == (2, 1, 2, 1, 3)
    finally:
        p.stop()


# -- grpcio's server upstream (3.13: grpcio has no free-threaded wheel) -----------------------------------

try:
    import grpc
except ImportError:
    grpc = None


@pytest.mark.skipif(grpc is None, reason=f"grpcio is not installable on {sys.version.split()[0]} "
                    "(no free-threaded wheel); the grpclib server covers this interpreter")
def test_grpcio_server_answers_a_grpc_web_call():
    """grpcio's server is strict about what a gRPC request must carry (application/grpc,
    te: trailers): the converted request satisfies it."""
    from concurrent import futures

    def shout(request, context):
        context.set_trailing_metadata((("x-shouted", "yes"),))
        return request.upper()
    handler = grpc.method_handlers_generic_handler("test.Loud", {
        "Shout": grpc.unary_unary_rpc_method_handler(shout)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cfg = front_proxy_config([{"match": {"prefix": "/test.Loud/"}, "route": {"cluster": "grpc"}}],
                             [static_cluster("grpc", port, typed_extension_protocol_options=H2)],
                             http_filters=FILTERS)
    p = ProxyUnderTest(cfg)
    try:
        status, headers, body = post(p.port, "/test.Loud/Shout", base64.b64encode(frame(b"quiet")),
                                     "application/grpc-web-text", accept="application/grpc-web-text")
        reply = base64.b64encode(frame(b"QUIET"))
        assert status == 200 and body.startswith(reply)
        _, trailers = parse_frames(base64.b64decode(body[len(reply):]))
        assert trailers["grpc-status"] == "0" and trailers["x-shouted"] == "yes"
    finally:
        p.stop()
        server.stop(0)
