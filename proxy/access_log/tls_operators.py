"""Envoy's TLS command operators (`%DOWNSTREAM_TLS_VERSION%`, `%DOWNSTREAM_PEER_SUBJECT%`,
`%UPSTREAM_TLS_CIPHER%` ...), for access logs and header values alike.

Each getter reads a StreamInfo's `downstream_ssl` / `upstream_ssl` (a `proxy.tls.info.TlsInfo`,
None for plaintext) and returns text, or None, which renders "-" in access logs (Envoy: no TLS
connection, or an empty value, is "no value"). Values as Envoy writes them: the version as
"TLSv1.3", the cipher by its OpenSSL name, names in RFC 2253 order (last RDN first), several SANs
joined with ",", fingerprints in lower-case hex, the serial number in lower-case hex (whole
bytes), the certificate as URL-encoded PEM (RFC 3986 unreserved characters kept, the rest
%XX upper-case, as Envoy's PercentEncoding::urlEncode).

Must not: do I/O. Thread affinity: none (pure functions of immutable values).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where a certificate is read (whoever holds one has imported it
# already): a proxy without TLS does not pay its import (~60 ms on 3.14t) at start-up.

__all__ = ["TLS_OPERATORS", "url_encoded_pem", "serial_hex"]

_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ENCODE = tuple(chr(b) if b in _KEEP else f"%{b:02X}" for b in range(256))


def url_encoded_pem(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding
    return "".join([_ENCODE[b] for b in cert.public_bytes(Encoding.PEM)])


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as Envoy prints it (BoringSSL's BN_bn2hex: lower case, whole bytes)."""
    n = cert.serial_number
    text = f"{n:x}"
    return "0" + text if len(text) % 2 else text


def _dns_sans(cert: x509.Certificate | None) -> str:
    if cert is None:
        return ""
    from cryptography import x509
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    return ",".join(str(v) for v in ext.get_values_for_type(x509.DNSName))


def _digest(cert: x509.Certificate | None, algo) -> str:
    if cert is None:
        return ""
    from cryptography.hazmat.primitives.serialization import Encoding
    return algo(cert.public_bytes(Encoding.DER)).hexdigest()


# What each operator reads of a TlsInfo (suffix after DOWNSTREAM_ / UPSTREAM_).
_EXTRACT: dict[str, Callable[[Any], str]] = {
    "TLS_VERSION": lambda t: t.tls_version,
    "TLS_CIPHER": lambda t: t.cipher,
    "PEER_SUBJECT": lambda t: t.peer_subject,
    "LOCAL_SUBJECT": lambda t: t.local_subject,
    "PEER_ISSUER": lambda t: t.peer_certificate.issuer.rfc4514_string() if t.peer_certificate else "",
    "PEER_URI_SAN": lambda t: ",".join(t.peer_uri_sans),
    "LOCAL_URI_SAN": lambda t: ",".join(t.local_uri_sans),
    "PEER_DNS_SAN": lambda t: _dns_sans(t.peer_certificate),
    "LOCAL_DNS_SAN": lambda t: _dns_sans(t.local_certificate),
    "PEER_FINGERPRINT_256": lambda t: _digest(t.peer_certificate, hashlib.sha256),
    "PEER_FINGERPRINT_1": lambda t: _digest(t.peer_certificate, hashlib.sha1),
    "PEER_SERIAL": lambda t: serial_hex(t.peer_certificate) if t.peer_certificate else "",
    "PEER_CERT": lambda t: url_encoded_pem(t.peer_certificate) if t.peer_certificate else "",
}


def _getter(side: str, extract: Callable[[Any], str]) -> Callable[[Any], str | None]:
    def get(info: Any) -> str | None:
        tls = getattr(info, side, None)
        if tls is None:
            return None
        return extract(tls) or None
    return get


# Envoy 1.40 has no UPSTREAM_LOCAL_SUBJECT, UPSTREAM_PEER_FINGERPRINT_* or UPSTREAM_PEER_SERIAL
# (`envoy --mode validate` refuses them), so neither does ftproxy.
_UPSTREAM = ("TLS_VERSION", "TLS_CIPHER", "PEER_SUBJECT", "PEER_ISSUER", "PEER_URI_SAN",
             "LOCAL_URI_SAN", "PEER_DNS_SAN", "LOCAL_DNS_SAN", "PEER_CERT")

TLS_OPERATORS: dict[str, Callable[[Any], str | None]] = {
    **{f"DOWNSTREAM_{name}": _getter("downstream_ssl", extract) for name, extract in _EXTRACT.items()},
    **{f"UPSTREAM_{name}": _getter("upstream_ssl", _EXTRACT[name]) for name in _UPSTREAM},
}
