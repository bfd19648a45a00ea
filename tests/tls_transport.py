"""A real TLS transport socket for tests only: pyOpenSSL in memory-BIO mode behind the
`TransportSocket` seam, to show that TLS fits `Connection` as it is (the TLS issue will
write the production one in proxy/tls/ with contexts from config, SNI, verification, stats).

Memory-BIO: OpenSSL reads ciphertext from an incoming BIO we fill from the socket and writes
ciphertext into an outgoing BIO we drain to the socket. Ciphertext the socket does not take
is held here, with WRITE interest until it is gone; the handshake waits on READ interest;
plaintext decrypted beyond `max_bytes` is announced with `set_transport_readable()`.
Test-only simplifications: no certificate verification, no renegotiation, the outgoing
ciphertext is not bounded (a write takes all the plaintext offered).
"""

from __future__ import annotations

import datetime
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from proxy.network.transport_socket import READ, WRITE


def self_signed(cn: str = "localhost"):
    """(certificate, key) as cryptography objects, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


class TlsTestSocket:
    connect_timeout = 0.0
    def __init__(self, sock: socket.socket, ctx: SSL.Context, server: bool, server_name: str | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.raw_socket = None          # ciphertext on the wire: nothing may splice it
        self.failure_reason = ""
        self.callbacks = None
        self.server = server
        self.tls = SSL.Connection(ctx, None)
        if server:
            self.tls.set_accept_state()
        else:
            self.tls.set_connect_state()
            if server_name:
                self.tls.set_tlsext_host_name(server_name.encode())
        self.established = False
        self._out = b""                 # ciphertext the socket has not taken yet
        self._eof = False
        self._shut_pending = False      # FIN once the held ciphertext (close_notify) is out

    def set_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks

    def connect(self, address) -> int:
        return self.sock.connect_ex(address)

    def connect_error(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def on_connected(self) -> None:
        self._handshake()  # the client's ClientHello goes out now; the server waits for it

    def do_read(self, max_bytes: int) -> bytes:
        moved = self._fill()
        if not self.established:
            self._handshake()
            if not self.established:
                if self._eof:
                    self._fail("end of stream during the TLS handshake")
                raise BlockingIOError
        if max_bytes == 0:  # reading disabled: keep what arrived, read it when enabled again
            if moved or self.tls.pending() or self._eof:
                self.callbacks.set_transport_readable()
            raise BlockingIOError
        out = b""
        try:
            while len(out) < max_bytes:
                out += self.tls.recv(max_bytes - len(out))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:   # close_notify: the peer's end of stream
            self._eof = True
        except SSL.Error as e:
            self._fail(f"TLS error: {e}")
        self._flush()  # e.g. TLS 1.3 tickets or alerts produced while reading
        if len(out) >= max_bytes or (out and self._eof):
            self.callbacks.set_transport_readable()  # more (or the EOF) without a new event
        if out:
            return out
        if self._eof:
            return b""
        raise BlockingIOError

    def do_write(self, buffers, size: int) -> int:
        if not self._flush() or not self.established:
            return 0
        if not size:
            return 0
        data = b"".join(buffers)
        try:
            n = self.tls.send(data)   # memory BIO: takes it all, as ciphertext into _out
        except SSL.Error as e:
            self._fail(f"TLS error: {e}")
        self._flush()
        return n

    def shutdown_write(self) -> None:
        try:
            self.tls.shutdown()  # close_notify
        except SSL.Error:
            pass
        self._shut_pending = True
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def local_address(self):
        return self.sock.getsockname()[:2]

    def protocol(self) -> str | None:
        p = self.tls.get_alpn_proto_negotiated() if self.established else b""
        return p.decode() if p else None

    def ssl(self):
        return self.tls if self.established else None

    # -- internals -------------------------------------------------------------------------
    def _fill(self) -> bool:
        """Move what the socket has into the incoming BIO; True if anything came."""
        moved = False
        try:
            while data := self.sock.recv(65536):
                self.tls.bio_write(data)
                moved = True
            self._eof = True
        except (BlockingIOError, InterruptedError):
            pass
        return moved

    def _flush(self) -> bool:
        """Send held ciphertext; True when none is left. Asks for WRITE while some is."""
        try:
            while True:
                self._out += self.tls.bio_read(65536)
        except SSL.WantReadError:
            pass
        if self._out:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                n = 0
            self._out = self._out[n:]
        if self._shut_pending and not self._out:
            self._shut_pending = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.callbacks.set_transport_interest((WRITE if self._out else 0) | (0 if self.established else READ))
        return not self._out

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            self._flush()  # the alert, if any
            self._fail(f"TLS handshake failed: {e}")
        self.established = True
        self._flush()
        self.callbacks.raise_connected()
        # Application records may have come with the handshake's last flight.
        self.callbacks.set_transport_readable()

    def _fail(self, reason: str):
        self.failure_reason = reason
        raise ConnectionResetError(reason)


class TlsTestFactory:
    name = "test.transport_sockets.tls"
    implements_secure_transport = True

    def __init__(self, server: bool, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> None:
        self.server = server
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if server:
            cert, key = self_signed()
            ctx.use_certificate(cert)
            ctx.use_privatekey(key)
            ctx.set_alpn_select_callback(lambda conn, offered: next((p for p in alpn if p in offered), b""))
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
            ctx.set_alpn_protos(list(alpn))
        self.ctx = ctx
        self.key = ("test.transport_sockets.tls", server, alpn)
        self.created: list[TlsTestSocket] = []

    def for_worker(self, scope):
        return self

    def create(self, sock, server_name=None) -> TlsTestSocket:
        ts = TlsTestSocket(sock, self.ctx, self.server, server_name)
        self.created.append(ts)
        return ts
