"""gRPC through the proxy from real gRPC clients (grpcio; grpclib) to a real gRPC server
(grpclib), h2c on both sides: unary, server streaming and bidi streaming calls, a status
error passed through in trailers, metadata both ways, the route's deadline from grpc-timeout
(max_stream_duration.grpc_timeout_header_max) told to the server and enforced as
DEADLINE_EXCEEDED, and a local reply (no route) as a gRPC status. grpcio has no free-threaded
wheel: its tests run on 3.13 only (the grpclib ones run on both interpreters)."""

from __future__ import annotations

import sys

import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from .grpc_peers import EchoBackend, grpclib_call
from .harness import ProxyUnderTest, front_proxy_config, static_cluster

H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}

try:
    import grpc
except ImportError:  # the free-threaded build: grpcio has no wheel for it
    grpc = None
needs_grpcio = pytest.mark.skipif(grpc is None, reason=f"grpcio is not installable on {sys.version.split()[0]} "
                                  "(no free-threaded wheel); grpclib covers this interpreter")


@pytest.fixture(scope="module")
def backend():
    b = EchoBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def proxy(backend):
    routes = [
        {"match": {"prefix": "/test.Echo/Slow"}, "route": {
            "cluster": "grpc", "max_stream_duration": {"grpc_timeout_header_max": "0.3s"}}},
        {"match": {"prefix": "/test.Echo/"}, "route": {
            "cluster": "grpc", "max_stream_duration": {"grpc_timeout_header_max": "5s",
                                                       "grpc_timeout_header_offset": "0.5s"}}},
    ]
    p = ProxyUnderTest(front_proxy_config(routes, [static_cluster(
        "grpc", backend.port, typed_extension_protocol_options=H2)]))
    yield p
    p.stop()


# -- grpclib client (both interpreters) --------------------------------------------------------
def test_grpclib_unary_with_metadata_and_deadline(proxy):
    async def call(channel):
        async with channel.request("/test.Echo/Unary", Cardinality.UNARY_UNARY, bytes, bytes,
                                   timeout=30, metadata={"x-who": "grpclib"}) as stream:
            await stream.send_message(b"hello", end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            return reply, dict(stream.trailing_metadata)
    reply, trailing = grpclib_call(proxy.port, call)
    assert reply == b"olleh"
    # 30 s asked, capped by grpc_timeout_header_max (5 s), less the offset (0.5 s): the server
    # was told 4.5 s (less what the trip took).
    assert 4000 < int(trailing["x-deadline-ms"]) <= 4500


def test_grpclib_status_error_passes_through(proxy):
    async def call(channel):
        async with channel.request("/test.Echo/Unary", Cardinality.UNARY_UNARY, bytes, bytes) as stream:
            await stream.send_message(b"missing", end=True)
            await stream.recv_message()
    with pytest.raises(GRPCError) as e:
        grpclib_call(proxy.port, call)
    assert e.value.status == Status.NOT_FOUND and e.value.message == "no such thing"


def test_grpclib_server_and_bidi_streaming(proxy):
    async def call(channel):
        async with channel.request("/test.Echo/Stream", Cardinality.UNARY_STREAM, bytes, bytes) as stream:
            await stream.send_message(b"5", end=True)
            streamed = [m async for m in stream]
        async with channel.request("/test.Echo/Chat", Cardinality.STREAM_STREAM, bytes, bytes) as stream:
            echoes = []
            for word in (b"a", b"b", b"c"):
                await stream.send_message(word)
                echoes.append(await stream.recv_message())
            await stream.end()
            return streamed, echoes
    streamed, echoes = grpclib_call(proxy.port, call)
    assert streamed == [b"msg-%d" % i for i in range(5)]
    assert echoes == [b"echo:a", b"echo:b", b"echo:c"]


def test_grpclib_deadline_from_the_route_is_deadline_exceeded(proxy):
    async def call(channel):
        async with channel.request("/test.Echo/Slow", Cardinality.UNARY_UNARY, bytes, bytes,
                                   timeout=10) as stream:
            await stream.send_message(b"x", end=True)
            await stream.recv_message()
    with pytest.raises(GRPCError) as e:
        grpclib_call(proxy.port, call)
    assert e.value.status == Status.DEADLINE_EXCEEDED
    # (counted as the stream ends on the worker, which may come after the client saw the reply)
    assert proxy.wait_for(lambda: proxy.counters()["http.ingress_http.downstream_rq_max_duration_reached"] >= 1)


def test_grpclib_no_route_is_a_grpc_status(proxy):
    async def call(channel):
        async with channel.request("/other.Svc/Nope", Cardinality.UNARY_UNARY, bytes, bytes) as stream:
            await stream.send_message(b"x", end=True)
            await stream.recv_message()
    with pytest.raises(GRPCError) as e:
        grpclib_call(proxy.port, call)
    assert e.value.status == Status.UNIMPLEMENTED  # Envoy maps its 404 to UNIMPLEMENTED


# -- grpcio client (3.13) ----------------------------------------------------------------------
def _raw(channel, kind: str, method: str):
    return getattr(channel, kind)(method, request_serializer=None, response_deserializer=None)


@needs_grpcio
def test_grpcio_unary_streaming_and_errors(proxy):
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        reply, call = _raw(channel, "unary_unary", "/test.Echo/Unary").with_call(
            b"grpcio", metadata=(("x-who", "grpcio"),), timeout=30)
        assert reply == b"oicprg"
        assert call.code() == grpc.StatusCode.OK
        assert list(_raw(channel, "unary_stream", "/test.Echo/Stream")(b"3")) == [b"msg-0", b"msg-1", b"msg-2"]
        assert list(_raw(channel, "stream_stream", "/test.Echo/Chat")(iter([b"x", b"y"]))) == [b"echo:x", b"echo:y"]
        with pytest.raises(grpc.RpcError) as e:
            _raw(channel, "unary_unary", "/test.Echo/Unary")(b"missing")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "no such thing"


@needs_grpcio
def test_grpcio_deadline_from_the_route(proxy):
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            _raw(channel, "unary_unary", "/test.Echo/Slow")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_stats_count_a_streaming_call(backend):
    """envoy.filters.http.grpc_stats through the proxy on a real bidi call: three messages
    each way, one OK status (the differential case filter_grpc_stats compares the counters
    with Envoy's)."""
    stats = {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "stats_for_all_methods": True, "enable_upstream_stats": True}}
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "grpc"}}],
                                          [static_cluster("grpc", backend.port, typed_extension_protocol_options=H2)],
                                          http_filters=[stats, router]))
    try:
        async def call(channel):
            async with channel.request("/test.Echo/Chat", Cardinality.STREAM_STREAM, bytes, bytes) as stream:
                for word in (b"a", b"b", b"c"):
                    await stream.send_message(word)
                    await stream.recv_message()
                await stream.end()
                await stream.recv_trailing_metadata()
        grpclib_call(p.port, call)
        c = p.counters()
        base = "cluster.grpc.grpc.test.Echo.Chat."
        assert (c[base + "request_message_count"], c[base + "response_message_count"]) == (3, 3)
        assert (c[base + "0"], c[base + "success"], c[base + "total"]) == (1, 1, 1)
        assert p.server.stats.snapshot().histograms[base + "upstream_rq_time"].count == 1
    finally:
        p.stop()
