"""envoy.filters.http.grpc_json_transcoder through the proxy: REST/JSON clients (raw HTTP/1.1
sockets and curl) to a real gRPC server (grpclib, h2c: both interpreters) that serves the
bookstore service of tests/bookstore_proto.py with real protobuf messages; the descriptor
given as a file (`proto_descriptor`, protoc's --include_imports shape). GET with path
variables and query parameters, POST with a JSON body, a body field, a server stream as a
JSON array, a gRPC error as an HTTP status with grpc-status/grpc-message, a bad value as 400
while the proxy keeps serving, and gRPC clients passing through untouched. The differential
case filter_grpc_json_transcoder compares the same mapping with real Envoy."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading

import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from tests.bookstore_proto import descriptor_set

from .grpc_peers import RawCodec, grpclib_call
from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import read_response

H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def _book_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    pool = descriptor_pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set(True))
    for f in fds.file:
        pool.AddSerializedFile(f.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bookstore.Book"))


class Bookstore:
    """The service, on real protobuf messages: GetBook answers "book <id>" (id 404: NOT_FOUND),
    CreateBook gives the book id 1000, Search streams three books, the rest echo."""

    def __init__(self) -> None:
        self.Book = _book_class()
        self.seen: list = []   # each request message, as the server parsed it

    def __mapping__(self):
        m = {}
        for name in ("GetBook", "CreateBook", "UpdateMeta", "Archive", "ByTitle", "DeleteBook", "Fail", "NoRule"):
            m[f"/bookstore.Bookstore/{name}"] = Handler(getattr(self, name.lower(), self.echo),
                                                        Cardinality.UNARY_UNARY, bytes, bytes)
        m["/bookstore.Bookstore/Search"] = Handler(self.search, Cardinality.UNARY_STREAM, bytes, bytes)
        return m

    async def _request(self, stream):
        raw = await stream.recv_message()
        self.seen.append(self.Book.FromString(raw))
        return self.Book.FromString(raw)

    async def getbook(self, stream):
        book = await self._request(stream)
        if book.id == 404:
            raise GRPCError(Status.NOT_FOUND, "no book 404")
        book.title = f"book {book.id}"
        await stream.send_message(book.SerializeToString())

    async def createbook(self, stream):
        book = await self._request(stream)
        book.id = 1000
        await stream.send_message(book.SerializeToString())

    async def echo(self, stream):
        await stream.send_message((await self._request(stream)).SerializeToString())

    async def search(self, stream):
        book = await self._request(stream)
        for i in range(3):
            await stream.send_message(self.Book(title=f"{book.title}-{i}", id=i).SerializeToString())


class BookstoreServer:
    def __init__(self) -> None:
        self.service = Bookstore()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="bookstore")
        self.thread.start()
        assert ready.wait(10)
        self.port = self.server._server.sockets[0].getsockname()[1]

    def _run(self, ready) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([self.service], codec=RawCodec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def bookstore():
    s = BookstoreServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def proxy(bookstore, tmp_path_factory):
    pb = tmp_path_factory.mktemp("protos") / "bookstore.pb"
    pb.write_bytes(descriptor_set(include_imports=True))
    filters = [
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(pb), "services": ["bookstore.Bookstore"]}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "grpc"}}],
                                          [static_cluster("grpc", bookstore.port, typed_extension_protocol_options=H2)],
                                          http_filters=filters))
    yield p
    p.stop()


def call(port: int, method: str, path: str, body: bytes = b"", **headers: str):
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    if body:
        extra += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nhost: api.example\r\n{extra}\r\n".encode() + body)
        r = read_response(s, method)
    return r.status, dict(r.headers), r.body


def test_get_with_path_variables_and_query_parameters(proxy, bookstore):
    status, headers, body = call(proxy.port, "GET", "/shelves/3/books/42?tags=a&tags=b&meta.note=hi%20there&kind=ESSAY")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["grpc-status"] == "0" and int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"id": "42", "title": "book 42", "tags": ["a", "b"], "kind": "ESSAY",
                                "meta": {"note": "hi there"}, "shelf": "3"}
    seen = bookstore.service.seen[-1]
    assert (seen.shelf, seen.id, list(seen.tags), seen.meta.note) == (3, 42, ["a", "b"], "hi there")


def test_post_with_a_json_body(proxy, bookstore):
    status, _, body = call(proxy.port, "POST", "/shelves/7/books",
                           json.dumps({"title": "Dune", "price": 9.5, "seriesName": "s"}).encode())
    assert status == 200
    assert json.loads(body) == {"id": "1000", "title": "Dune", "shelf": "7", "price": 9.5, "seriesName": "s"}


def test_body_field_fills_one_field(proxy, bookstore):
    status, _, body = call(proxy.port, "PATCH", "/books/5/meta", b'{"note": "n", "flag": true}')
    assert status == 200 and json.loads(body) == {"id": "5", "meta": {"note": "n", "flag": True}}


def test_server_stream_is_a_json_array(proxy):
    status, headers, body = call(proxy.port, "GET", "/search?title=dune")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == [{"title": "dune-0"}, {"id": "1", "title": "dune-1"}, {"id": "2", "title": "dune-2"}]


def test_grpc_error_becomes_its_http_status(proxy):
    status, headers, body = call(proxy.port, "GET", "/shelves/1/books/404")
    assert status == 404
    assert headers["grpc-status"] == "5" and headers["grpc-message"] == "no book 404"


def test_a_value_that_does_not_fit_is_400_and_the_proxy_keeps_serving(proxy):
    status, headers, body = call(proxy.port, "GET", "/shelves/abc/books/1")
    assert status == 400 and body == b'shelf: invalid value "abc" for type TYPE_INT64'
    status, _, body = call(proxy.port, "POST", "/shelves/1/books", b'{"title": ')
    assert status == 400
    assert call(proxy.port, "GET", "/shelves/1/books/2")[0] == 200


def test_curl_client_on_an_additional_binding(proxy, bookstore):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-X", "PUT", "-H", "content-type: application/json",
                          "--data", '{"title": "via curl"}', f"http://127.0.0.1:{proxy.port}/books/77"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert bookstore.service.seen[-1].id == 77           # PUT /books/{id} is CreateBook too
    assert json.loads(out.stdout) == {"id": "1000", "title": "via curl"}


def test_grpc_clients_pass_through_untouched(proxy, bookstore):
    Book = bookstore.service.Book

    async def go(channel):
        async with channel.request("/bookstore.Bookstore/GetBook", Cardinality.UNARY_UNARY, bytes, bytes) as stream:
            await stream.send_message(Book(id=9).SerializeToString(), end=True)
            return Book.FromString(await stream.recv_message())
    assert grpclib_call(proxy.port, go).title == "book 9"
