"""Real Redis peers for the redis_proxy tests: `RedisServer` runs redis-server (the Debian
package .ci/run installs) on a free loopback port, without persistence; `SilentServer` accepts
connections and reads, never answering (an upstream that times out); `RespClient` is a small
blocking RESP client that reads exactly the answers it expects (the codec under test decodes
them: its own unit tests check it against fixed bytes)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

from proxy.network.redis.resp import Decoder, encode_request

__all__ = ["REDIS_SERVER", "RedisServer", "SilentServer", "RespClient", "command"]

REDIS_SERVER = shutil.which("redis-server")


def command(*args: str | bytes) -> bytes:
    return encode_request([a.encode() if isinstance(a, str) else a for a in args])


class RedisServer:
    """`password`: the server's requirepass (this class's own calls AUTH first)."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--logfile", "", *(("--requirepass", password) if password else ())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.call(command("PING")) == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def call(self, data: bytes, answers: int = 1) -> bytes:
        with RespClient(self.port) as c:
            if self.password:
                c.send(command("AUTH", self.password))
            return c.send(data, answers)

    def keys(self) -> list[bytes]:
        with RespClient(self.port) as c:
            if self.password:
                c.send(command("AUTH", self.password))
            c.sock.sendall(command("KEYS", "*"))
            return sorted(c.values(1)[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SilentServer:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.stopped = True
        self.listener.close()
        for c in self.accepted:
            c.close()


class RespClient:
    """One connection; `send(data, n)`: the raw bytes of the next `n` answers, plus b"<EOF>"
    when the peer closed (with n=None: everything until the peer closes)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.got: list = []
        self.raw = bytearray()
        self.decoder = Decoder(self.got.append)

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def values(self, n: int) -> list:
        while len(self.got) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {len(self.got)} of {n} answers")
            self.raw += data
            self.decoder.feed(data)
        out, self.got[:] = self.got[:n], self.got[n:]
        return out

    def send(self, data: bytes, n: int | None = 1) -> bytes:
        start = len(self.raw)
        self.sock.sendall(data)
        if n is None:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return bytes(self.raw[start:]) + b"<EOF>"
                self.raw += chunk
        self.values(n)
        return bytes(self.raw[start:])
