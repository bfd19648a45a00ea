"""The issue's reference for TCP bulk: a plain asyncio byte relay, for comparison only.

Job: measure, in the same run as ftproxy's tcp_proxy, what the kind of Python relay issue 4
cites ("a plain asyncio byte relay ... relays bulk TCP at 1.55-1.7 GB/s") reaches on this
machine today; it is built to that description (the issue's own code is not in the repository). One upstream connection per client; each direction is a Protocol that writes
what it receives to the other side and pauses reading while the other side's transport is
above its write buffer limit (asyncio's own flow control). No stats, timeouts or limits.

    .venv/bin/python perf/probe_relay.py LISTEN_PORT UPSTREAM_PORT
Listens on 127.0.0.1:LISTEN_PORT, forwards to 127.0.0.1:UPSTREAM_PORT. Loopback only.
Must not: be imported by the proxy.
"""

from __future__ import annotations

import asyncio
import sys


class Half(asyncio.Protocol):
    """One socket; `peer` is the Half of the other socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:      # our socket is backed up: stop reading the peer
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


class Downstream(Half):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(Half, "127.0.0.1", self.upstream_port)
        except OSError:
            self.transport.close()
            return
        up.peer, self.peer = self, up
        self.transport.resume_reading()


async def main(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(upstream_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
