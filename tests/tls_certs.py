"""Certificates made in the tests (with `cryptography`): a CA, and leaf certificates it signs
for servers (DNS/IP SANs, wildcards), clients (URI SANs), expired or wrong-host ones.

`CertAuthority().issue_files(tmp_path, "server", ["localhost"])` writes `server.pem` (the
certificate) and `server.key` and returns their paths; `ca.pem_file(tmp_path)` the CA's PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertAuthority", "pem", "key_pem"]

_NOW = datetime.datetime.now(datetime.timezone.utc)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key, password: bytes | None = None) -> bytes:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _key(kind: str):
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


class CertAuthority:
    def __init__(self, name: str = "ftproxy test CA", kind: str = "ecdsa") -> None:
        self.key = _key(kind)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_NOW - datetime.timedelta(days=1))
                     .not_valid_after(_NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                    critical=False)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return pem(self.cert)

    def pem_file(self, directory: Path, name: str = "ca.pem") -> Path:
        path = Path(directory) / name
        path.write_bytes(self.pem)
        return path

    def issue(self, names: list[str] = (), *, cn: str | None = None, uris: list[str] = (),
              kind: str = "ecdsa", expired: bool = False, client: bool = False,
              days: int = 30, self_signed: bool = False):
        """(certificate, key). `names`: DNS names or IP addresses (SANs)."""
        key = _key(kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or (names[0] if names else "client")),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ftproxy tests")])
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        sans.extend(x509.UniformResourceIdentifier(u) for u in uris)
        start, end = ((_NOW - datetime.timedelta(days=10), _NOW - datetime.timedelta(days=1)) if expired
                      else (_NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=days)))
        issuer, signer = (subject, key) if self_signed else (self.name, self.key)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                   else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if not self_signed:  # Python 3.13's default context requires the key identifiers
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                critical=False)
        return b.sign(signer, hashes.SHA256()), key

    def issue_files(self, directory: Path, stem: str, names: list[str] = (), **kw) -> tuple[Path, Path]:
        cert, key = self.issue(names, **kw)
        cpath, kpath = Path(directory) / f"{stem}.pem", Path(directory) / f"{stem}.key"
        cpath.write_bytes(pem(cert))
        kpath.write_bytes(key_pem(key))
        return cpath, kpath


def tls_factories(names: list[str] = ("localhost",), server_alpn: tuple[str, ...] = (),
                  client_alpn: tuple[str, ...] = (), sni: str = ""):
    """(server, client) production TLS transport socket factories (proxy/tls) from config
    with inline PEM: the server holds a certificate for `names` from a fresh CA; the client
    does not verify it (no validation_context, Envoy's upstream default) and sends the host
    name it is given as SNI (auto_host_sni)."""
    from proxy.tls.config import parse_downstream_tls, parse_upstream_tls
    from proxy.tls.transport_socket import DownstreamTlsFactory, UpstreamTlsFactory

    cert, key = CertAuthority().issue(list(names))
    server = parse_downstream_tls({"common_tls_context": {
        "alpn_protocols": list(server_alpn),
        "tls_certificates": [{"certificate_chain": {"inline_string": pem(cert).decode()},
                              "private_key": {"inline_string": key_pem(key).decode()}}]}}, "server")
    client = parse_upstream_tls({"sni": sni, "auto_host_sni": True,
                                 "common_tls_context": {"alpn_protocols": list(client_alpn)}}, "client")
    return DownstreamTlsFactory(server), UpstreamTlsFactory(client)
