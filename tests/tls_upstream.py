"""A real TLS upstream for tests: Python's `ssl` server with a certificate made for the test
(`cryptography`, a self-signed one from tests/tls_certs.py), speaking HTTP/1.1 (keep-alive) and
answering every request with JSON naming itself and the path (`snis`: the SNI of each
handshake; `requests`: what each request asked, as EchoUpstream records it). Used by
the SNI-passthrough tests (tcp_proxy relays the client's TLS to it untouched) and by the
differential runner's `tls_upstreams`."""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
from pathlib import Path


from tests.integration.servers import AcceptLoop
from tests.tls_certs import CertAuthority, key_pem, pem

__all__ = ["server_context", "TlsHttpUpstream", "client_context"]


def server_context(cn: str, alpn: tuple[str, ...] | None = ("http/1.1",)) -> ssl.SSLContext:
    """A server context with a self-signed certificate for `cn`, choosing among `alpn` (None:
    no ALPN at all: a client's offer is ignored)."""
    cert, key = CertAuthority().issue([cn], self_signed=True)
    with tempfile.TemporaryDirectory() as d:
        c, k = Path(d) / "c.pem", Path(d) / "k.pem"
        c.write_bytes(pem(cert))
        k.write_bytes(key_pem(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(c, k)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TlsHttpUpstream(AcceptLoop):
    def __init__(self, name: str, cn: str | None = None,
                 alpn: tuple[str, ...] | None = ("http/1.1",)) -> None:
        """`alpn`: the protocols it chooses among (None: it negotiates none)."""
        self.name = name
        self.ctx = server_context(cn or name, alpn)
        self.snis: list[str | None] = []
        self.alpns: list[str | None] = []  # what each handshake negotiated
        # (method, path, headers, body) of each request, as EchoUpstream records them
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.ctx.sni_callback = self._sni
        super().__init__(f"tls-{name}")

    def _sni(self, obj, server_name, _ctx) -> None:
        self.snis.append(server_name)

    def handle(self, s: socket.socket, n: int) -> None:
        s.settimeout(10)
        try:
            with self.ctx.wrap_socket(s, server_side=True) as t:
                self.alpns.append(t.selected_alpn_protocol())
                buf = b""
                while data := t.recv(65536):
                    buf += data
                    while b"\r\n\r\n" in buf:
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        lines = head.decode("latin-1").split("\r\n")
                        method, path = lines[0].split(" ")[:2]
                        fields = dict((k.strip().lower(), v.strip()) for k, _, v in
                                      (line.partition(":") for line in lines[1:]))
                        self.requests.append((method, path, fields, b""))
                        body = json.dumps({"server": self.name, "path": path}).encode()
                        t.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                  b"x-upstream: %s\r\ncontent-length: %d\r\n\r\n%s"
                                  % (self.name.encode(), len(body), body))
                        if b"connection: close" in head.lower():
                            return
        except (OSError, ValueError):
            pass
