"""Admin `/certs` (Envoy's `envoy.admin.v3.Certificates`) and the redaction of secrets in
`/config_dump`.

`/certs`: one entry per TLS context (each listener filter chain's DownstreamTlsContext, each
cluster's UpstreamTlsContext): `ca_cert` (the first certificate of `trusted_ca`, or none) and
`cert_chain` (the leaf of each `tls_certificates` entry), each with `path` (the DataSource's
file name, else "<inline>"), `serial_number` (lower-case hex), `subject_alt_names` (`dns`, `uri`,
`ip_address`, `email`), `days_until_expiration` (whole days, 0 once expired; a string, as
protobuf JSON writes uint64), `valid_from` and `expiration_time` (RFC 3339, UTC). Envoy prints
primitive fields even when empty (`"ca_cert": []`); the order of contexts is Envoy's set order,
unspecified (here: listeners in order, then clusters).

Redaction: Envoy's MessageUtil::redact, applied to every config dump: a field marked
`sensitive` in Envoy's protos has each string or bytes inside it replaced by "[redacted]" (bytes
are base64 in JSON: "W3JlZGFjdGVkXQ=="), anything else cleared. The sensitive fields a
bootstrap can hold here are TlsCertificate's `private_key`, `password` and `pkcs12`,
TlsSessionTicketKeys' `keys` (DownstreamTlsContext `session_ticket_keys`), and
GenericSecret's `secret`.

Must not: do I/O. Thread affinity: admin threads; reads immutable configs only.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from proxy.access_log.tls_operators import serial_hex

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["certificate_details", "context_certificates", "redact_config"]

REDACTED = "[redacted]"
_REDACTED_BYTES = "W3JlZGFjdGVkXQ=="   # base64("[redacted]")
INLINE = "<inline>"


def _rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sans(cert: x509.Certificate) -> list[dict[str, str]]:
    from cryptography import x509   # imported already by whoever loaded `cert`
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = []
    for name in ext:
        if isinstance(name, x509.DNSName):
            out.append({"dns": name.value})
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append({"uri": name.value})
        elif isinstance(name, x509.IPAddress):
            out.append({"ip_address": str(ipaddress.ip_address(name.value))
                        if not isinstance(name.value, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                        else str(name.value)})
        elif isinstance(name, x509.RFC822Name):
            out.append({"email": name.value})
    return out


def certificate_details(cert: x509.Certificate, path: str,
                        now: datetime.datetime | None = None) -> dict[str, Any]:
    """Envoy's CertificateDetails of one certificate."""
    now = now or datetime.datetime.now(datetime.UTC)
    not_after = cert.not_valid_after_utc
    days = max(0, (not_after - now).days)
    return {
        "path": path,
        "serial_number": serial_hex(cert),
        "subject_alt_names": _sans(cert),
        "days_until_expiration": str(days),
        "valid_from": _rfc3339(cert.not_valid_before_utc),
        "expiration_time": _rfc3339(not_after),
    }


def _path(source: Any) -> str:
    if isinstance(source, Mapping) and isinstance(source.get("filename"), str):
        return source["filename"]
    return INLINE


def context_certificates(common, raw_common: Mapping[str, Any] | None,
                         now: datetime.datetime | None = None) -> dict[str, Any]:
    """One `/certs` entry for a parsed CommonTls (proxy.tls.config) and the
    `common_tls_context` it was parsed from (for the file names)."""
    raw_common = raw_common if isinstance(raw_common, Mapping) else {}
    raw_certs = raw_common.get("tls_certificates") or []
    chain = []
    for i, cert in enumerate(common.tls_certificates):
        raw = raw_certs[i] if i < len(raw_certs) and isinstance(raw_certs[i], Mapping) else {}
        source = raw.get("pkcs12") if "pkcs12" in raw else raw.get("certificate_chain")
        chain.append(certificate_details(cert.leaf, _path(source), now))
    ca = []
    validation = common.validation_context
    if validation is not None and validation.trusted_ca:
        raw_validation = raw_common.get("validation_context") or {}
        ca.append(certificate_details(validation.trusted_ca[0], _path(raw_validation.get("trusted_ca")), now))
    return {"ca_cert": ca, "cert_chain": chain}


# -- redaction -----------------------------------------------------------------------------

# Sensitive fields by the message that holds them (the JSON names a bootstrap uses), and how to
# find those messages: the keys under which a TlsCertificate, TlsSessionTicketKeys or
# GenericSecret appear in a bootstrap.
_SENSITIVE = {
    "tls_certificate": ("private_key", "password", "pkcs12"),
    "session_ticket_keys": ("keys",),
    "generic_secret": ("secret",),
}
_CONTAINERS = {"tls_certificates": "tls_certificate", "tls_certificate": "tls_certificate",
               "session_ticket_keys": "session_ticket_keys", "generic_secret": "generic_secret"}
_BYTES_FIELDS = frozenset({"inline_bytes"})


def _redact_value(value: Any, key: str = "") -> Any:
    """Every string or bytes inside a sensitive field becomes "[redacted]"; other scalars are
    cleared (dropped)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            r = _redact_value(v, k)
            if r is not None:
                out[k] = r
        return out
    if isinstance(value, list):
        out_list = [_redact_value(v, key) for v in value]
        return [v for v in out_list if v is not None]
    if isinstance(value, str):
        return _REDACTED_BYTES if key in _BYTES_FIELDS else REDACTED
    return None


def redact_config(value: Any, kind: str | None = None) -> Any:
    """A copy of a config tree (JSON-shaped) with Envoy's sensitive fields redacted."""
    if isinstance(value, Mapping):
        sensitive = _SENSITIVE.get(kind, ()) if kind else ()
        out = {}
        for k, v in value.items():
            if k in sensitive:
                out[k] = _redact_value(v, k)
            else:
                out[k] = redact_config(v, _CONTAINERS.get(k))
        return out
    if isinstance(value, list):
        return [redact_config(v, kind) for v in value]
    return value

