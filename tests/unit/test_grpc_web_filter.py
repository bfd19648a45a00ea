"""The grpc_web filter in a filter chain without sockets (tests/unit/test_filter_manager.py's
FakeStream): what the differential case cannot easily provoke from a real upstream — a
non-gRPC answer longer than Envoy's 16 KiB grpc-message cap in several chunks, and a text
answer whose stream ends inside a message (the one deliberate difference from Envoy)."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.http.filters.grpc_web import MAX_BUFFERED_PLAINTEXT, GrpcWebFactory, GrpcWeb
from proxy.http.headers import Headers, ResponseHead
from tests.unit.test_filter_manager import FakeStream, Factory


class _Stats:
    def counter(self, name):
        return SimpleNamespace(value=0)


def _stream(accept: bytes | None = None) -> FakeStream:
    s = FakeStream()
    s.head.method = b"POST"
    s.head.path = b"/pkg.Svc/Call"
    s.head.headers.set(b"content-type", b"application/grpc-web+proto")
    if accept:
        s.head.headers.set(b"accept", accept)
    web = GrpcWebFactory(GrpcWeb(), "envoy.filters.http.grpc_web").for_worker(
        SimpleNamespace(worker=SimpleNamespace(stats=_Stats())))
    s.create_filter_chain([(web, False, False), (Factory("router", encoder=False), False, False)])
    s.decode_headers(False)
    return s


def test_request_becomes_grpc():
    s = _stream()
    h = s.head.headers
    assert (h.get(b"content-type"), h.get(b"te"), h.get(b"grpc-accept-encoding")) == (
        b"application/grpc", b"trailers", b"identity")


def test_a_long_non_grpc_answer_in_chunks_is_cut_to_16_kib_of_grpc_message():
    s = _stream()
    s.encode_headers(ResponseHead(502, Headers([(b"content-type", b"text/html")])), False)
    for _ in range(3):
        s.encode_data(b"x" * 10000, False)   # past the cap, further chunks are dropped
    s.encode_data(b"tail", True)
    head = s.wire[0]
    assert head[:3] == ("headers", 502, False)
    sent = s.response_head_pending.headers
    assert sent.get(b"grpc-status") == b"14" and sent.get(b"content-length") == b"0"
    assert sent.get(b"grpc-message") == b"x" * MAX_BUFFERED_PLAINTEXT
    assert s.wire[1:] == [("data", b"", True)]


def test_a_text_answer_ending_inside_a_message_ends_there():
    s = _stream(accept=b"application/grpc-web-text")
    s.encode_headers(ResponseHead(200, Headers([(b"content-type", b"application/grpc")])), False)
    s.encode_data(b"\x00\x00\x00\x00\x02a", False)   # one byte short of its message
    s.encode_data(b"", True)
    assert s.wire[-1] == ("data", b"", True)
