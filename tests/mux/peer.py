"""A blocking mux peer for tests: sends frames, reads frames per stream."""

from __future__ import annotations

import socket
import time

from .frames import (DATA, DATA_END, HEADERS, HEADERS_END, RESET, TRAILERS, FrameReader, frame,
                     header_block, parse_block)


class MuxStreamResult:
    def __init__(self) -> None:
        self.status: int | None = None
        self.interim: list[int] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.ended = False
        self.reset = False


class MuxPeer:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = FrameReader()
        self.streams: dict[int, MuxStreamResult] = {}
        self.goaway = False

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: bytes, sid: int, payload: bytes = b"") -> None:
        self.sock.sendall(frame(kind, sid, payload))

    def request(self, sid: int, method: bytes, path: bytes, headers=(), end: bool = True) -> None:
        block = header_block([(b":method", method), (b":path", path), (b":authority", b"mux.test")]
                             + list(headers))
        self.send(HEADERS_END if end else HEADERS, sid, block)

    def data(self, sid: int, data: bytes, end: bool = False) -> None:
        self.send(DATA_END if end else DATA, sid, data)

    def result(self, sid: int) -> MuxStreamResult:
        return self.streams.setdefault(sid, MuxStreamResult())

    def wait(self, predicate, timeout: float = 5.0) -> None:
        """Read frames until predicate(self) holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; streams: { {k: vars(v) for k, v in self.streams.items()} }"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            assert data, "the proxy closed the connection"
            for kind, sid, payload in self.reader.feed(data):
                self._on_frame(kind, sid, payload)

    def wait_ended(self, *sids: int, timeout: float = 5.0) -> None:
        self.wait(lambda p: all(p.result(s).ended or p.result(s).reset for s in sids), timeout)

    def _on_frame(self, kind: bytes, sid: int, payload: bytes) -> None:
        if kind == b"G":
            self.goaway = True
            return
        r = self.result(sid)
        if kind in (HEADERS, HEADERS_END):
            fields = parse_block(payload)
            status = int(dict(fields)[b":status"])
            if status < 200:
                r.interim.append(status)
                return
            r.status = status
            r.headers = [(n, v) for n, v in fields if not n.startswith(b":")]
            r.ended = kind == HEADERS_END
        elif kind in (DATA, DATA_END):
            r.body += payload
            r.ended = kind == DATA_END
        elif kind == TRAILERS:
            r.ended = True
        elif kind == RESET:
            r.reset = True
