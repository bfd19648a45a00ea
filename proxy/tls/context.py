"""TLS contexts (pyOpenSSL `SSL.Context`) built from validated config, and peer verification.

Job: turn a `DownstreamTls` / `UpstreamTls` (config.py) into the contexts every connection of a
filter chain or cluster starts from, and check a peer's certificate as Envoy's default
validator does (trust chain, then SAN matchers, then SPKI / certificate-hash pins).

- Server: one context per certificate (a certificate of each key type for the same names
  shares one, and OpenSSL picks by the client's signature algorithms); the first is the
  default, and the SNI callback switches to the context whose certificate names the
  requested server (exact name first, then `*.` wildcard), as Envoy's certificate selector.
- Client: one context; SNI and sessions are per connection (transport_socket.py).
- Verification runs in OpenSSL's verify callback, so a failure aborts the handshake with an
  alert (and no byte of a request is ever sent upstream); the connection's socket records
  which check failed (Envoy's `ssl.fail_verify_*` stats) and why.

Contexts are built once, on the main thread, and never changed afterwards: workers share
them read-only (OpenSSL allows that; pyOpenSSL 26 refuses changes after first use). A new
certificate means new contexts (and a new factory).
Must not: touch sockets.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from proxy.router.matchers import StringMatcher

from .config import CommonTls, DownstreamTls, SanMatcher, TlsCertificate, UpstreamTls, ValidationContext

__all__ = ["server_contexts", "client_context", "check_leaf", "VERIFY_ERRORS"]

_VERSIONS = {"TLSV1_0": SSL.TLS1_VERSION, "TLSV1_1": SSL.TLS1_1_VERSION,
             "TLSV1_2": SSL.TLS1_2_VERSION, "TLSV1_3": SSL.TLS1_3_VERSION}
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_SSL_MODE_NO_AUTO_CHAIN = 0x8

# What a failed verification records on the socket (`failed_check`), named as Envoy's stats.
VERIFY_ERRORS = ("fail_verify_error", "fail_verify_san", "fail_verify_cert_hash", "fail_verify_no_cert")


class ServerContexts:
    """The contexts of one DownstreamTlsContext: `default` plus SNI-selected ones."""

    __slots__ = ("default", "exact", "wildcard", "mismatch", "config")

    def __init__(self, default: SSL.Context, exact: dict[str, SSL.Context],
                 wildcard: dict[str, SSL.Context], mismatch: SSL.Context | None,
                 config: DownstreamTls) -> None:
        self.default = default
        self.exact = exact          # "www.example.com" -> context
        self.wildcard = wildcard    # ".example.com" (from "*.example.com") -> context
        # No SNI, or none matched: with full_scan_certs_on_sni_mismatch a context holding the
        # first certificate of each key type (OpenSSL picks one by the client's signature
        # algorithms); without it, the first certificate (`default`), as Envoy.
        self.mismatch = mismatch
        self.config = config

    def for_server_name(self, name: str) -> SSL.Context | None:
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot:])
        return ctx


def _base_context(common: CommonTls, server: bool) -> SSL.Context:
    params = common.tls_params
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(_VERSIONS[params.min_version])
    ctx.set_max_proto_version(_VERSIONS[params.max_version])
    _check_ciphers(params.cipher_suites)
    ctx.set_cipher_list(":".join(params.cipher_suites).encode())
    # TLS 1.3 suites are not configurable (as in Envoy); BoringSSL's preference order.
    ctx.set_tls13_ciphersuites(b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
    if params.ecdh_curves:
        ctx.set_tmp_ecdh(crypto.get_elliptic_curve(params.ecdh_curves[0]))
    # No renegotiation, either side (Envoy's default; allow_renegotiation is refused).
    ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    # Send exactly the configured chain, as Envoy (BoringSSL) does: no chain built from the
    # trust store at each handshake (SSL_MODE_NO_AUTO_CHAIN, which pyOpenSSL does not name).
    ctx.set_mode(_SSL_MODE_NO_AUTO_CHAIN)
    validation = common.validation_context
    if validation is not None:
        store = ctx.get_cert_store()
        for ca in validation.trusted_ca:
            store.add_cert(crypto.X509.from_cryptography(ca))
        flags = crypto.X509StoreFlags.PARTIAL_CHAIN  # as Envoy: a trusted intermediate anchors
        for crl in validation.crl:
            store.add_crl(crl)
        if validation.crl:
            flags |= crypto.X509StoreFlags.CRL_CHECK
            if not validation.only_verify_leaf_cert_crl:
                flags |= crypto.X509StoreFlags.CRL_CHECK_ALL
        store.set_flags(flags)
        if validation.max_verify_depth is not None:
            ctx.set_verify_depth(validation.max_verify_depth)
    return ctx


def _check_ciphers(names: tuple[str, ...]) -> None:
    """Each cipher must be known on its own (OpenSSL drops unknown names from a list
    silently; Envoy refuses them, naming them)."""
    rejected = []
    for name in names:
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(name.encode())
        except SSL.Error:
            rejected.append(name)
    if rejected:
        raise ValueError(f"Failed to initialize cipher suites {':'.join(names)}. The following "
                         f"ciphers were rejected when tried individually: {', '.join(rejected)}")


def _use_certificate(ctx: SSL.Context, cert: TlsCertificate) -> None:
    ctx.use_certificate(cert.leaf)
    ctx.use_privatekey(cert.private_key)
    for extra in cert.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.check_privatekey()


def _verify_callback(validation: ValidationContext):
    """OpenSSL's per-certificate verify callback implementing Envoy's default validator."""
    untrusted_ok = validation.trust_chain_verification == "ACCEPT_UNTRUSTED" or not validation.trusted_ca

    def verify(conn: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int) -> bool:
        owner = conn.get_app_data()
        if not ok:
            if validation.allow_expired_certificate and errnum == _X509_V_ERR_CERT_HAS_EXPIRED:
                return True
            if untrusted_ok:
                return True  # pins and SAN matchers below still apply to the leaf
            if owner is not None:
                owner.verify_failed("fail_verify_error", "verify cert failed: X509_verify_cert: "
                                    f"certificate verification error at depth {depth}: "
                                    f"{_x509_error_string(errnum)}")
            return False
        if depth == 0:
            leaf = cert.to_cryptography() if hasattr(cert, "to_cryptography") else cert
            failed = check_leaf(validation, leaf, getattr(owner, "san_from_sni", None))
            if failed is not None:
                if owner is not None:
                    owner.verify_failed(*failed)
                return False
        return True

    return verify


def _x509_error_string(errnum: int) -> str:
    try:
        from OpenSSL._util import ffi, lib  # the verify error's text, as OpenSSL prints it
        return ffi.string(lib.X509_verify_cert_error_string(errnum)).decode()
    except Exception:  # pragma: no cover - a pyOpenSSL without the binding
        return f"X509 error {errnum}"


def check_leaf(validation: ValidationContext, leaf: x509.Certificate,
               sni: str | None = None) -> tuple[str, str] | None:
    """Envoy's checks of the peer's leaf certificate after the chain: SAN matchers (any),
    then pins (any of SPKI or hash). None when it passes, else (stat name, reason).
    `sni`: auto_sni_san_validation's name, which replaces the SAN matchers with one DNS SAN
    matching it (wildcard SANs included)."""
    matchers = validation.san_matchers
    if sni:
        matchers = (SanMatcher("DNS", StringMatcher("exact", sni.lower(), None, True)),)
    if matchers and not _san_matches(leaf, matchers):
        return "fail_verify_san", "verify cert failed: SAN matcher"
    if validation.spki_pins or validation.hash_pins:
        der = leaf.public_bytes(serialization.Encoding.DER)
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        if hashlib.sha256(der).digest() not in validation.hash_pins and \
                hashlib.sha256(spki).digest() not in validation.spki_pins:
            return "fail_verify_cert_hash", "verify cert failed: cert hash and spki"
    return None


def _san_matches(leaf: x509.Certificate, matchers: tuple[SanMatcher, ...]) -> bool:
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    values = {
        "DNS": [str(v) for v in sans.get_values_for_type(x509.DNSName)],
        "URI": [str(v) for v in sans.get_values_for_type(x509.UniformResourceIdentifier)],
        "EMAIL": [str(v) for v in sans.get_values_for_type(x509.RFC822Name)],
        "IP_ADDRESS": [str(ipaddress.ip_address(v)) for v in sans.get_values_for_type(x509.IPAddress)],
    }
    for m in matchers:
        kinds = (m.san_type,) if m.san_type else tuple(values)
        for kind in kinds:
            for value in values[kind]:
                if kind == "DNS" and _dns_matches(value, m):
                    return True
                if kind != "DNS" and m.matcher.match(value):
                    return True
    return False


def _dns_matches(san: str, m: SanMatcher) -> bool:
    """A DNS SAN against a matcher: a wildcard SAN (`*.example.com`) matches an exact matcher
    naming one host under it (Envoy's DnsNameMatcher)."""
    matcher = m.matcher
    if matcher.match(san):
        return True
    if matcher.kind == "exact" and san.startswith("*."):
        want = matcher.value.lower()
        dot = want.find(".")
        return dot > 0 and want[dot:] == san[1:].lower()
    return False


def _verify_mode(validation: ValidationContext | None, require: bool) -> int:
    if validation is None or not validation.asks_for_certificate:
        return SSL.VERIFY_NONE
    mode = SSL.VERIFY_PEER
    if require:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    return mode


def server_contexts(config: DownstreamTls, alpn_select) -> ServerContexts:
    """The contexts of a DownstreamTlsContext. `alpn_select(conn, offered) -> bytes` picks the
    protocol (transport_socket.py owns it: it also records the choice)."""
    common = config.common_tls_context
    groups: list[tuple[tuple[str, ...], list[TlsCertificate]]] = []
    for cert in common.tls_certificates:
        for names, certs in groups:
            if names == cert.names and all(c.key_type != cert.key_type for c in certs):
                certs.append(cert)
                break
        else:
            groups.append((cert.names, [cert]))
    contexts = []
    by_type: dict[str, TlsCertificate] = {}
    for cert in common.tls_certificates:
        by_type.setdefault(cert.key_type, cert)
    scan = [list(by_type.values())] if config.full_scan_certs_on_sni_mismatch and len(by_type) > 1 else []
    for certs in [g[1] for g in groups] + scan:
        ctx = _base_context(common, server=True)
        for cert in certs:
            _use_certificate(ctx, cert)
        validation = common.validation_context
        mode = _verify_mode(validation, config.require_client_certificate)
        if mode != SSL.VERIFY_NONE:
            ctx.set_verify(mode, _verify_callback(validation))
            # Client certificates make sessions depend on who the client was: a context id is
            # required for resumption to work at all (OpenSSL refuses to resume otherwise).
        ctx.set_session_id(b"ftproxy")
        options = 0 if config.prefer_client_ciphers else SSL.OP_CIPHER_SERVER_PREFERENCE
        if config.disable_stateless_session_resumption:
            options |= SSL.OP_NO_TICKET
        if options:
            ctx.set_options(options)
        if config.disable_stateful_session_resumption:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if config.session_timeout is not None:
            ctx.set_timeout(int(config.session_timeout))
        if common.alpn_protocols:
            ctx.set_alpn_select_callback(alpn_select)
        contexts.append((certs, ctx))
    mismatch = contexts.pop()[1] if scan else None
    exact: dict[str, SSL.Context] = {}
    wildcard: dict[str, SSL.Context] = {}
    for certs, ctx in contexts:
        for name in certs[0].names:
            if name.startswith("*."):
                wildcard.setdefault(name[1:], ctx)
            else:
                exact.setdefault(name, ctx)
    return ServerContexts(contexts[0][1], exact, wildcard, mismatch, config)


def client_context(config: UpstreamTls) -> SSL.Context:
    common = config.common_tls_context
    ctx = _base_context(common, server=False)
    for cert in common.tls_certificates:
        _use_certificate(ctx, cert)
    validation = common.validation_context
    mode = _verify_mode(validation, False)
    if mode != SSL.VERIFY_NONE:
        ctx.set_verify(mode, _verify_callback(validation))
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if common.alpn_protocols:
        ctx.set_alpn_protos([p.encode() for p in common.alpn_protocols])
    if config.max_session_keys > 0:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return ctx
