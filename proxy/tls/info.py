"""What a finished TLS handshake established, for the HTTP layer and access logs
(Envoy's `Ssl::ConnectionInfo`): `TransportSocket.ssl()` returns one of these.

Built once per connection, on first use, from the pyOpenSSL connection; immutable after.
Names follow Envoy's access-log operators: `%DOWNSTREAM_TLS_VERSION%` is `tls_version`
("TLSv1.3"), `%DOWNSTREAM_TLS_CIPHER%` is `cipher` (OpenSSL's name), `%REQUESTED_SERVER_NAME%`
is `sni`, `%DOWNSTREAM_PEER_SUBJECT%` is `peer_subject` (RFC 2253), `%DOWNSTREAM_PEER_URI_SAN%`
is `peer_uri_sans` joined with ",".
Must not: do I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TlsInfo"]


@dataclass(frozen=True, slots=True)
class TlsInfo:
    tls_version: str = ""
    cipher: str = ""
    sni: str = ""
    alpn: str = ""
    peer_certificate: x509.Certificate | None = None
    local_certificate: x509.Certificate | None = None
    # The peer's chain as it sent it, leaf first (XFCC `Chain=`; OpenSSL leaves the leaf out
    # of a server's view of the client chain, so it is put back).
    peer_chain: tuple[x509.Certificate, ...] = ()
    # The peer's certificate was checked and passed (Envoy's peerCertificateValidated: the
    # route match's tls_context.validated): asked for, and OpenSSL's verdict is X509_V_OK
    # (ACCEPT_UNTRUSTED lets a failed chain through unvalidated).
    peer_validated: bool = False

    @classmethod
    def from_connection(cls, tls, server: bool) -> TlsInfo:
        name = tls.get_servername()
        alpn = tls.get_alpn_proto_negotiated()
        local = tls.get_certificate(as_cryptography=True) if hasattr(tls, "get_certificate") else None
        peer = tls.get_peer_certificate(as_cryptography=True)
        chain = tuple(tls.get_peer_cert_chain(as_cryptography=True) or ())
        if peer is not None and (not chain or chain[0] != peer):
            chain = (peer, *chain)
        validated = peer is not None and tls.get_verify_mode() != 0 and _verify_ok(tls)
        return cls(tls_version=tls.get_protocol_version_name() or "",
                   cipher=tls.get_cipher_name() or "",
                   sni=name.decode("ascii", "replace") if name else "",
                   alpn=alpn.decode("ascii", "replace") if alpn else "",
                   peer_certificate=peer,
                   local_certificate=local,
                   peer_chain=chain,
                   peer_validated=validated)

    @property
    def peer_certificate_presented(self) -> bool:
        return self.peer_certificate is not None

    @property
    def peer_subject(self) -> str:
        c = self.peer_certificate
        return c.subject.rfc4514_string() if c is not None else ""

    @property
    def peer_uri_sans(self) -> tuple[str, ...]:
        return _sans(self.peer_certificate, x509.UniformResourceIdentifier)

    @property
    def peer_dns_sans(self) -> tuple[str, ...]:
        return _sans(self.peer_certificate, x509.DNSName)

    @property
    def local_uri_sans(self) -> tuple[str, ...]:
        return _sans(self.local_certificate, x509.UniformResourceIdentifier)

    @property
    def local_subject(self) -> str:
        c = self.local_certificate
        return c.subject.rfc4514_string() if c is not None else ""

    @property
    def peer_sha256(self) -> str:
        """Hex SHA-256 of the peer certificate's DER (XFCC `Hash=`)."""
        c = self.peer_certificate
        return hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() if c else ""

    @property
    def peer_pem_urlencoded(self) -> str:
        """The peer certificate in PEM, URL-encoded (XFCC `Cert=`; Envoy's encoding)."""
        c = self.peer_certificate
        if c is None:
            return ""
        return quote(c.public_bytes(serialization.Encoding.PEM).decode(), safe="-_.~")


def _verify_ok(tls) -> bool:
    from OpenSSL._util import lib  # SSL_get_verify_result: pyOpenSSL has no public call
    return lib.SSL_get_verify_result(tls._ssl) == 0


def _sans(cert: x509.Certificate | None, kind) -> tuple[str, ...]:
    if cert is None:
        return ()
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(v) for v in ext.get_values_for_type(kind))
