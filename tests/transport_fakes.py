"""A test-only transport socket that is not raw_buffer, to prove the transport seam: what TLS
will need from `Connection`, in thirty lines of protocol instead of a TLS stack.

FakeHandshakeXorSocket speaks a tiny protocol on the wire:
- handshake: the client sends b"HELLO\\n"; the server answers b"OK\\n". The client may not
  send application bytes before it has read the OK (so a write queued early needs READ
  interest to make progress), and the server produces its OK while *reading* the HELLO but
  sends it only from `do_write` on a WRITE event it asked for (write interest while reading).
- after it: every application byte is XORed with KEY on the wire (stateless per byte, so a
  partial send of the transformed bytes maps 1:1 onto the plaintext consumed).
Bytes read beyond the handshake are held and announced with `set_transport_readable()`.
`raw_socket` is None: nothing may splice these bytes.
"""

from __future__ import annotations

import socket

from proxy.network.transport_socket import READ, WRITE

KEY = 0x5A
_XOR = bytes(b ^ KEY for b in range(256))
HELLO = b"HELLO\n"
OK = b"OK\n"


def xor(data: bytes) -> bytes:
    return bytes(data).translate(_XOR)


class FakeHandshakeXorSocket:
    connect_timeout = 0.0
    def __init__(self, sock: socket.socket, server: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.raw_socket = None
        self.server = server
        self.failure_reason = ""
        self.callbacks = None
        self.established = False
        self._inbuf = b""      # handshake bytes read so far
        self._pending = b""    # handshake bytes still to send
        self._held = b""       # application bytes read along with the handshake
        self.blocked_writes = 0  # do_write calls that could not take bytes (handshake)
        self.closed = False

    # -- the seam --------------------------------------------------------------------------
    def set_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks

    def connect(self, address) -> int:
        return self.sock.connect_ex(address)

    def connect_error(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def on_connected(self) -> None:
        if self.server:
            self.callbacks.set_transport_interest(READ)       # wait for HELLO
        else:
            self._pending = HELLO
            self._send_pending()
            self.callbacks.set_transport_interest(READ | (WRITE if self._pending else 0))

    def do_read(self, max_bytes: int) -> bytes:
        if self.established:
            if max_bytes == 0:
                raise BlockingIOError  # nothing to advance
            if self._held:
                out, self._held = self._held[:max_bytes], self._held[max_bytes:]
                if self._held:
                    self.callbacks.set_transport_readable()
                return out
            return xor(self.sock.recv(max_bytes))
        if self._pending and self.server:
            raise BlockingIOError  # answering: the client sends nothing before our OK
        data = self.sock.recv(65536)   # BlockingIOError: nothing yet
        if not data:
            self.failure_reason = "end of stream during the handshake"
            raise ConnectionResetError(self.failure_reason)
        self._inbuf += data
        want = HELLO if self.server else OK
        if len(self._inbuf) < len(want):
            raise BlockingIOError
        if not self._inbuf.startswith(want):
            self.failure_reason = f"bad handshake {self._inbuf[:16]!r}"
            raise ConnectionResetError(self.failure_reason)
        rest, self._inbuf = self._inbuf[len(want):], b""
        self._held = xor(rest)
        if self.server:
            # Produce the answer while reading, send it from do_write: WRITE while reading.
            self._pending = OK
            self.callbacks.set_transport_interest(WRITE)
        else:
            self._establish()
        if self._held:
            self.callbacks.set_transport_readable()
        raise BlockingIOError  # nothing for the owner from this call

    def do_write(self, buffers, size: int) -> int:
        if self._pending:
            if not self._send_pending():
                return 0
            if self.server:
                self._establish()
                return 0  # the owner's bytes go on the next flush
            self.callbacks.set_transport_interest(READ)  # HELLO is out: wait for OK
        if not self.established:
            self.blocked_writes += 1
            return 0  # the client waits for OK: READ interest only, no spin on WRITE
        if not size:
            return 0
        try:
            return self.sock.send(xor(b"".join(buffers)))
        except (BlockingIOError, InterruptedError):
            return 0

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def local_address(self):
        return self.sock.getsockname()[:2]

    def protocol(self):
        return "fake-xor" if self.established else None

    def ssl(self):
        return None

    # -- internals -------------------------------------------------------------------------
    def _send_pending(self) -> bool:
        try:
            n = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            n = 0
        self._pending = self._pending[n:]
        return not self._pending

    def _establish(self) -> None:
        self.established = True
        self.callbacks.set_transport_interest(0)
        self.callbacks.raise_connected()


class FakeHandshakeXorFactory:
    name = "test.transport_sockets.fake_xor"
    implements_secure_transport = False
    key = ("test.transport_sockets.fake_xor", KEY)

    def __init__(self, server: bool) -> None:
        self.server = server
        self.created: list[FakeHandshakeXorSocket] = []

    def for_worker(self, scope):
        return self

    def create(self, sock, server_name=None, alpn_fallback=()) -> FakeHandshakeXorSocket:
        ts = FakeHandshakeXorSocket(sock, self.server)
        self.created.append(ts)
        return ts


def client_handshake(s: socket.socket) -> None:
    """A hand-written client of the fake protocol, on a blocking socket."""
    s.sendall(HELLO)
    got = b""
    while len(got) < len(OK):
        chunk = s.recv(len(OK) - len(got))
        assert chunk, "server closed during the handshake"
        got += chunk
    assert got == OK
