"""A grpclib server on its own thread and event loop, for the tests' gRPC peers (ALS, metrics
service, LRS): pure Python, on both interpreters.

Subclasses are grpclib services (`__mapping__`) and call `ThreadedGrpcServer.__init__` last,
once their own fields are set (serving starts there). A handler registers its stream's
transport with `self._transports` (add on entry, discard on exit) so that `stop()` can drop the
open streams' connections (a connection carrying several streams stays listed until its last
ends). `start()` serves (again, on the same port after a `stop()`); `close()` ends the thread.
Loopback only. `ssl`: an `ssl.SSLContext` to serve over TLS (mTLS when it requires
client certificates). `port`: 0 (the default) takes tests/ports.py `free_port()`, below the
kernel's ephemeral range: a port the kernel handed out could be taken by another socket
(a connection's source port) between a `stop()` and the `start()` that serves on it again.
"""

from __future__ import annotations

import asyncio
import threading

from grpclib.server import Server

from tests.ports import free_port

__all__ = ["ThreadedGrpcServer"]


class _OpenTransports:
    """The transports of the open streams, counted per stream: `add` once per stream and
    `discard` when it ends, so a connection carrying two streams stays listed until both have
    ended. Iterates over the distinct transports. Loop thread only."""

    def __init__(self) -> None:
        self._streams: dict = {}   # transport -> open streams on it

    def add(self, transport) -> None:
        self._streams[transport] = self._streams.get(transport, 0) + 1

    def discard(self, transport) -> None:
        left = self._streams.get(transport, 0) - 1
        if left > 0:
            self._streams[transport] = left
        else:
            self._streams.pop(transport, None)

    def __iter__(self):
        return iter(list(self._streams))


class ThreadedGrpcServer:
    def __init__(self, name: str, port: int = 0, codec=None, ssl=None) -> None:
        self._ssl = ssl
        self._transports = _OpenTransports()   # the open streams' transports (loop thread only)
        self._codec = codec
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self.port = port or free_port()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self.thread.start()
        self.start()

    def start(self) -> None:
        async def go() -> None:
            self.server = Server([self]) if self._codec is None else Server([self], codec=self._codec)
            await self.server.start("127.0.0.1", self.port, ssl=self._ssl)
            self.port = self.server._server.sockets[0].getsockname()[1]
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        async def go() -> None:
            server, self.server = self.server, None
            if server is not None:
                for t in list(self._transports):
                    t.abort()
                server.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), 5)
                except asyncio.TimeoutError:
                    pass
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
