"""Hot-restart socket shell: Unix stream sockets carrying framed JSON and SCM_RIGHTS fds.

Thin on purpose: the conversation's logic is in messages.py. The child side is blocking
(it runs before the child's workers start, with timeouts); the parent side is non-blocking
and driven by the parent's main-thread Dispatcher (see parent.py).

OS facts: with SOCK_STREAM the fds of one sendmsg arrive with the recvmsg that reads that
message's first byte, so a child that reads one reply at a time gets the reply's fds with it.
An abstract-namespace address (leading NUL) has no file to remove and vanishes with the process.
"""

from __future__ import annotations

import socket

from .messages import FrameDecoder, ProtocolError, encode_frame

__all__ = ["ChildChannel", "listen", "send", "MAX_FDS"]

MAX_FDS = 256  # listen sockets per request: one per parent worker


def listen(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if isinstance(address, str):
        import os
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
    s.bind(address)
    s.listen(4)
    s.setblocking(False)
    return s


def send(sock: socket.socket, msg: dict, fds: list[int] | None = None) -> None:
    data = encode_frame(msg)
    if fds:
        n = socket.send_fds(sock, [data], fds)
        data = data[n:]
    if data:
        sock.sendall(data)


class ChildChannel:
    """The child's blocking connection to its parent."""

    def __init__(self, address: str | bytes, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self._decoder = FrameDecoder()
        self._ready: list[dict] = []

    def request(self, msg: dict) -> tuple[dict, list[int]]:
        send(self.sock, msg)
        return self.read()

    def read(self) -> tuple[dict, list[int]]:
        fds: list[int] = []
        while not self._ready:
            data, got, _flags, _addr = socket.recv_fds(self.sock, 65536, MAX_FDS)
            fds.extend(got)
            if not data:
                for fd in fds:
                    socket.close(fd)
                raise ProtocolError("parent closed the hot-restart channel")
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0), fds

    def close(self) -> None:
        self.sock.close()
