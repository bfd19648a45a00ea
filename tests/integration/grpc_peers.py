"""A gRPC backend and gRPC clients for the tests, on real gRPC stacks: grpclib (asyncio, pure
Python: both interpreters) serves and calls; grpcio (C core, 3.13 only: it has no free-threaded
wheel) calls. Messages are raw bytes (a pass-through codec), so no generated protobuf code.

Service `test.Echo`: Unary (the request reversed; b"missing" -> NOT_FOUND "no such thing";
the peer's grpc-timeout deadline, when it has one, in trailing metadata `x-deadline-ms`),
Stream (server streaming: the request's digit count of numbered messages), Chat (bidi echo),
Slow (answers after 1 s)."""

from __future__ import annotations

import asyncio
import threading

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server

__all__ = ["RawCodec", "EchoBackend", "grpclib_call"]


class RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type):
        return bytes(data)


class _Echo:
    def __mapping__(self):
        return {
            "/test.Echo/Unary": Handler(self.unary, Cardinality.UNARY_UNARY, bytes, bytes),
            "/test.Echo/Stream": Handler(self.stream, Cardinality.UNARY_STREAM, bytes, bytes),
            "/test.Echo/Chat": Handler(self.chat, Cardinality.STREAM_STREAM, bytes, bytes),
            "/test.Echo/Slow": Handler(self.slow, Cardinality.UNARY_UNARY, bytes, bytes),
        }

    async def unary(self, stream) -> None:
        request = await stream.recv_message()
        if request == b"missing":
            raise GRPCError(Status.NOT_FOUND, "no such thing")
        trailing = {}
        if stream.deadline is not None:
            trailing["x-deadline-ms"] = str(round(stream.deadline.time_remaining() * 1000))
        await stream.send_message(request[::-1])
        await stream.send_trailing_metadata(metadata=trailing)

    async def stream(self, stream) -> None:
        request = await stream.recv_message()
        for i in range(int(request)):
            await stream.send_message(b"msg-%d" % i)

    async def chat(self, stream) -> None:
        async for message in stream:
            await stream.send_message(b"echo:" + message)

    async def slow(self, stream) -> None:
        await stream.recv_message()
        await asyncio.sleep(1.0)
        await stream.send_message(b"late")


class EchoBackend:
    """A grpclib server (h2c) on 127.0.0.1 in its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None  # made on its loop's thread (grpclib binds the loop)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="grpc-backend")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("gRPC backend did not start")
        self.port = self.server._server.sockets[0].getsockname()[1]

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([_Echo()], codec=RawCodec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def grpclib_call(port: int, coro_factory):
    """Run `coro_factory(channel)` with a grpclib Channel to 127.0.0.1:port; returns its result."""
    from grpclib.client import Channel

    async def main():
        channel = Channel("127.0.0.1", port, codec=RawCodec())
        try:
            return await coro_factory(channel)
        finally:
            channel.close()
    return asyncio.run(main())
