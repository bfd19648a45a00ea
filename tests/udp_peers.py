"""Real UDP peers on 127.0.0.1 for the udp_proxy tests (integration, differential, examples):
an echo server that records what it got from whom, and a client helper."""

from __future__ import annotations

import socket
import threading


class UdpEchoServer:
    """Echoes every datagram to its sender (optionally with a prefix); records
    (source address, payload) of each datagram it got. A thread of its own."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[tuple[str, int], bytes]] = []
        self._lock = threading.Lock()   # guards `received` (the server thread appends, tests read)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="udp-echo")
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append((peer, data))
            try:
                self.sock.sendto(self.prefix + data, peer)
            except OSError:
                pass

    def got(self) -> list[tuple[tuple[str, int], bytes]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def udp_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)   # a loaded machine: an answer a proxy gives late is still an answer
    return s


def free_udp_port() -> int:
    """A UDP port nothing is bound to right now (bound then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
