"""Config model of the TLS transport socket (`envoy.transport_sockets.tls`).

Job: validate `DownstreamTlsContext` (a listener's filter chain) and `UpstreamTlsContext` (a
cluster) into immutable configs: certificates and keys read and checked at load time (a bad
PEM, a key that does not match its certificate, a wrong password: a config error naming the
field, as `envoy --mode validate` reports), trust anchors, SAN matchers, pins, versions,
ciphers, ALPN. Every field of each message is declared once in the tables below.

The contexts themselves (pyOpenSSL) are built from these configs by `context.py`.
Must not: open sockets. Reads the files a DataSource names (main thread, at load).
Thread affinity: main thread; the results are immutable.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from proxy.config.data_source import read_data_source as read_source
from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import MISSING, ConfigError, ErrorCollector, Fields
from proxy.router.matchers import StringMatcher, parse_string_matcher

from .secrets import SecretSource, merge_validation, resolve

__all__ = ["TLS_NAME", "DOWNSTREAM_PROTO", "UPSTREAM_PROTO", "TlsCertificate", "ValidationContext",
           "SanMatcher", "TlsParams", "CommonTls", "DownstreamTls", "UpstreamTls",
           "parse_downstream_tls", "parse_upstream_tls", "read_data_source", "TLS_VERSIONS",
           "parse_secret"]

TLS_NAME = "envoy.transport_sockets.tls"
_PKG = "envoy.extensions.transport_sockets.tls.v3"
DOWNSTREAM_PROTO = f"{_PKG}.DownstreamTlsContext"
UPSTREAM_PROTO = f"{_PKG}.UpstreamTlsContext"

TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
# Envoy's defaults (context_config_impl.cc): both sides from TLS 1.2; servers up to 1.3,
# clients up to 1.2.
SERVER_DEFAULT_VERSIONS = ("TLSV1_2", "TLSV1_3")
CLIENT_DEFAULT_VERSIONS = ("TLSV1_2", "TLSV1_2")
# Envoy's default cipher list for TLS <= 1.2 (both sides), without BoringSSL's equal-preference
# brackets, which OpenSSL does not have: the order inside a bracket is kept instead.
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
                   "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305",
                   "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384")
# Envoy's curve names -> OpenSSL's.
CURVES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
SAN_TYPES = ("SAN_TYPE_UNSPECIFIED", "EMAIL", "DNS", "URI", "IP_ADDRESS")


# -- models ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """One certificate chain with its private key (cryptography objects, checked to match)."""
    chain: tuple[x509.Certificate, ...]      # leaf first
    private_key: Any                         # cryptography private key
    names: tuple[str, ...]                   # DNS SANs, else the subject CN: what SNI selects
    key_type: str                            # "ecdsa" / "rsa" / other

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


@dataclass(frozen=True, slots=True)
class SanMatcher:
    san_type: str                            # DNS, URI, EMAIL, IP_ADDRESS; "" = any type (legacy)
    matcher: StringMatcher


@dataclass(frozen=True, slots=True)
class ValidationContext:
    trusted_ca: tuple[x509.Certificate, ...] = ()
    crl: tuple[x509.CertificateRevocationList, ...] = ()
    san_matchers: tuple[SanMatcher, ...] = ()
    spki_pins: tuple[bytes, ...] = ()        # SHA-256 of the SPKI
    hash_pins: tuple[bytes, ...] = ()        # SHA-256 of the DER certificate
    allow_expired_certificate: bool = False
    trust_chain_verification: str = "VERIFY_TRUST_CHAIN"
    only_verify_leaf_cert_crl: bool = False
    max_verify_depth: int | None = None

    @property
    def asks_for_certificate(self) -> bool:
        """Whether a peer certificate is requested at all (Envoy: any of these set)."""
        return bool(self.trusted_ca or self.san_matchers or self.spki_pins or self.hash_pins)


@dataclass(frozen=True, slots=True)
class TlsParams:
    min_version: str
    max_version: str
    cipher_suites: tuple[str, ...]
    ecdh_curves: tuple[str, ...]             # OpenSSL names; () = OpenSSL's defaults


@dataclass(frozen=True, slots=True)
class CommonTls:
    tls_params: TlsParams
    tls_certificates: tuple[TlsCertificate, ...]
    validation_context: ValidationContext | None
    alpn_protocols: tuple[str, ...]
    # Where each certificate / the validation context came from when it was a secret by name
    # (static or file SDS: secrets.py), else None; a watched file's new version replaces it.
    certificate_sources: tuple[SecretSource | None, ...] = ()
    validation_source: SecretSource | None = None

    @property
    def sources(self) -> tuple[SecretSource, ...]:
        return tuple(s for s in (*self.certificate_sources, self.validation_source) if s is not None)

    @property
    def pending(self) -> tuple[SecretSource, ...]:
        """The xDS secrets whose first value has not arrived (their placeholder is None)."""
        out = [src for cert, src in zip(self.tls_certificates, self.certificate_sources)
               if cert is None and src is not None]
        if self.validation_source is not None and self.validation_context is None:
            out.append(self.validation_source)
        return tuple(out)

    def with_secret(self, source: SecretSource, value: Any) -> CommonTls:
        """This context with the secret from `source` replaced by `value` (its new version)."""
        certs = tuple(value if src == source else cert
                      for cert, src in zip(self.tls_certificates, self.certificate_sources))
        validation = value if source == self.validation_source else self.validation_context
        return replace(self, tls_certificates=certs, validation_context=validation)


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    common_tls_context: CommonTls
    require_client_certificate: bool = False
    disable_stateless_session_resumption: bool = False
    disable_stateful_session_resumption: bool = False
    session_timeout: float | None = None
    full_scan_certs_on_sni_mismatch: bool = False
    prefer_client_ciphers: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    common_tls_context: CommonTls
    sni: str = ""
    max_session_keys: int = 1
    auto_host_sni: bool = False            # the host's name (DNS name or endpoint hostname) as SNI
    auto_sni_san_validation: bool = False  # verify a DNS SAN against the SNI sent, not the matchers


# -- declared fields -------------------------------------------------------------------------

_SDS = "a watched secret file is named by sds_config, not by a directory"

DOWNSTREAM = Message(DOWNSTREAM_PROTO, title="TLS (downstream)", model=DownstreamTls, fields=(
    used("common_tls_context"),
    used("require_client_certificate", False),
    inert("require_sni", "Envoy does not implement it either (not-implemented-hide)"),
    refused("session_ticket_keys", "pyOpenSSL cannot set ticket keys: tickets use a key "
                                   "generated at start, as Envoy without this field"),
    refused("session_ticket_keys_sds_secret_config", "session_ticket_keys are refused"),
    used("disable_stateless_session_resumption", False),
    used("disable_stateful_session_resumption", False),
    used("session_timeout"),
    refused("ocsp_staple_policy", "no OCSP stapling", default="LENIENT_STAPLING", only_default=True),
    used("full_scan_certs_on_sni_mismatch", False),
    used("prefer_client_ciphers", False),
))

UPSTREAM = Message(UPSTREAM_PROTO, title="TLS (upstream)", model=UpstreamTls, fields=(
    used("common_tls_context"),
    used("sni", ""),
    used("auto_host_sni", False),
    used("auto_sni_san_validation", False),
    refused("allow_renegotiation", "renegotiation is refused, as Envoy's default", default=False,
            only_default=True),
    used("max_session_keys", 1),
    inert("enforce_rsa_key_usage", "deprecated; Envoy ignores it and always enforces keyUsage"),
))

COMMON = Message(f"{_PKG}.CommonTlsContext", model=CommonTls,
                 bookkeeping=("certificate_sources", "validation_source"), fields=(
    used("tls_params"),
    used("tls_certificates"),
    used("tls_certificate_sds_secret_configs", attr="tls_certificates",
         why="static_resources.secrets by name, or a watched file (sds_config)"),
    refused("tls_certificate_provider_instance"),
    refused("custom_tls_certificate_selector"),
    refused("tls_certificate_certificate_provider"),
    refused("tls_certificate_certificate_provider_instance"),
    used("validation_context"),
    used("validation_context_sds_secret_config", attr="validation_context",
         why="static_resources.secrets by name, or a watched file (sds_config)"),
    used("combined_validation_context", attr="validation_context",
         why="the secret merged into default_validation_context"),
    refused("validation_context_certificate_provider"),
    refused("validation_context_certificate_provider_instance"),
    used("alpn_protocols"),
    refused("custom_handshaker"),
    refused("key_log"),
))

PARAMS = Message(f"{_PKG}.TlsParameters", model=TlsParams, fields=(
    used("tls_minimum_protocol_version", "TLS_AUTO", attr="min_version"),
    used("tls_maximum_protocol_version", "TLS_AUTO", attr="max_version"),
    used("cipher_suites"),
    used("ecdh_curves", why="one curve: pyOpenSSL sets a single group"),
    refused("signature_algorithms"),
    refused("compliance_policies"),
))

CERTIFICATE = Message(f"{_PKG}.TlsCertificate", model=TlsCertificate,
                      bookkeeping=("names", "key_type"), fields=(
    used("certificate_chain", attr="chain"),
    used("private_key"),
    used("pkcs12", attr="chain"),
    used("password", attr="private_key"),
    refused("watched_directory", _SDS),
    refused("private_key_provider"),
    refused("ocsp_staple", "no OCSP stapling"),
    refused("signed_certificate_timestamp"),
))

VALIDATION = Message(f"{_PKG}.CertificateValidationContext", model=ValidationContext, fields=(
    used("trusted_ca"),
    refused("ca_certificate_provider_instance"),
    refused("watched_directory", _SDS),
    used("verify_certificate_spki", attr="spki_pins"),
    used("verify_certificate_hash", attr="hash_pins"),
    used("match_typed_subject_alt_names", attr="san_matchers"),
    used("match_subject_alt_names", attr="san_matchers", why="deprecated spelling: any SAN type"),
    refused("require_signed_certificate_timestamp"),
    used("crl"),
    used("allow_expired_certificate", False),
    used("trust_chain_verification", "VERIFY_TRUST_CHAIN"),
    refused("custom_validator_config"),
    used("only_verify_leaf_cert_crl", False),
    used("max_verify_depth"),
))

COMBINED = Message(f"{_PKG}.CommonTlsContext.CombinedCertificateValidationContext", fields=(
    used("default_validation_context", attr="", why="what the secret is merged into"),
    used("validation_context_sds_secret_config", attr="", why="the secret by name"),
    refused("validation_context_certificate_provider"),
    refused("validation_context_certificate_provider_instance"),
))

SAN_MATCHER = Message(f"{_PKG}.SubjectAltNameMatcher", model=SanMatcher, fields=(
    used("san_type"),
    used("matcher"),
    refused("oid", "OTHER_NAME SANs"),
))

DATA_SOURCE = Message("envoy.config.core.v3.DataSource (TLS)", fields=(
    used("filename", attr="", why="read at load"),
    used("inline_bytes", attr="", why="base64 in YAML/JSON"),
    used("inline_string", attr="", why="the text itself"),
    used("environment_variable", attr="", why="read at load"),
    refused("watched_directory", _SDS),
))


# -- parsing ---------------------------------------------------------------------------------

def read_data_source(raw: Any, path: str) -> bytes:
    """A TLS DataSource's bytes (files are read now: errors name the field)."""
    return read_source(DATA_SOURCE, raw, path)


def parse_downstream_tls(raw: Mapping[str, Any], path: str) -> DownstreamTls:
    errors = ErrorCollector()
    f = DOWNSTREAM.read(raw, path, errors_to=errors)
    common = errors.run(_parse_common, f, SERVER_DEFAULT_VERSIONS, server=True)
    DOWNSTREAM.require_default(f, "ocsp_staple_policy", f.enum(
        "ocsp_staple_policy", ("LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE"), "LENIENT_STAPLING"))
    out = dict(
        require_client_certificate=errors.run(f.bool, "require_client_certificate", False),
        disable_stateless_session_resumption=errors.run(f.bool, "disable_stateless_session_resumption", False),
        disable_stateful_session_resumption=errors.run(f.bool, "disable_stateful_session_resumption", False),
        session_timeout=errors.run(f.duration, "session_timeout"),
        full_scan_certs_on_sni_mismatch=errors.run(f.bool, "full_scan_certs_on_sni_mismatch", False),
        prefer_client_ciphers=errors.run(f.bool, "prefer_client_ciphers", False),
    )
    errors.run(f.bool, "require_sni", False)
    errors.raise_if_any()
    if not common.tls_certificates:
        # Envoy: "No TLS certificates found for server context"
        raise ConfigError(f.at("common_tls_context"), "a server (downstream) TLS context needs "
                                                      "tls_certificates")
    if out["require_client_certificate"] and common.validation_source not in common.pending and (
            common.validation_context is None or not common.validation_context.asks_for_certificate):
        # Envoy refuses this too ("require_client_certificate ... without a validation context").
        raise ConfigError(f.at("require_client_certificate"),
                          "needs a validation_context with trusted_ca (or SAN matchers or pins)")
    return DownstreamTls(common_tls_context=common, **out)


def parse_upstream_tls(raw: Mapping[str, Any], path: str) -> UpstreamTls:
    errors = ErrorCollector()
    f = UPSTREAM.read(raw, path, errors_to=errors)
    common = errors.run(_parse_common, f, CLIENT_DEFAULT_VERSIONS, server=False)
    sni = errors.run(f.str, "sni", "")
    keys = errors.run(f.int, "max_session_keys", 1, min=0, max=2**32 - 1)
    auto_sni = errors.run(f.bool, "auto_host_sni", False)
    auto_san = errors.run(f.bool, "auto_sni_san_validation", False)
    errors.run(lambda: UPSTREAM.require_default(f, "allow_renegotiation",
                                                f.bool("allow_renegotiation", False)))
    errors.run(f.bool, "enforce_rsa_key_usage")
    errors.raise_if_any()
    if len(sni) > 255:
        raise ConfigError(f.at("sni"), "must be at most 255 bytes")
    if "\0" in sni:
        raise ConfigError(f.at("sni"), "SNI names containing NULL-byte are not allowed")
    if len(common.tls_certificates) > 1:
        raise ConfigError(f.at("common_tls_context"),
                          "Multiple TLS certificates are not supported for client contexts")
    return UpstreamTls(common_tls_context=common, sni=sni, max_session_keys=keys, auto_host_sni=auto_sni,
                       auto_sni_san_validation=auto_san)


def _parse_common(parent: Fields, defaults: tuple[str, str], server: bool) -> CommonTls:
    raw = parent.value("common_tls_context", {})
    errors = ErrorCollector()
    c = COMMON.read(raw, parent.at("common_tls_context"), errors_to=errors)
    params = errors.run(_parse_params, c, defaults)
    if c.has("tls_certificates") and c.has("tls_certificate_sds_secret_configs"):
        # Envoy ignores the second when the first is set; a config that names both is refused
        # here rather than half ignored.
        errors.add(ConfigError(c.at("tls_certificate_sds_secret_configs"),
                               "set tls_certificates or tls_certificate_sds_secret_configs, not both"))
    certs = [errors.run(_parse_certificate, item, cpath) for item, cpath in c.list("tls_certificates")]
    sources: list[SecretSource | None] = [None] * len(certs)
    for item, spath in c.list("tls_certificate_sds_secret_configs"):
        found = errors.run(resolve, item, spath, "tls_certificate")
        if found is not MISSING:
            message, mpath, source = found
            # An xDS secret: a placeholder until its value comes (CommonTls.pending).
            certs.append(errors.run(_parse_certificate, message, mpath) if message is not None else None)
            sources.append(source)
    validation, vsource = None, None
    which = errors.run(c.oneof, "validation_context", "validation_context_sds_secret_config",
                       "combined_validation_context")
    if which == "validation_context":
        validation = errors.run(_parse_validation, c.value(which), c.at(which))
    elif which in ("validation_context_sds_secret_config", "combined_validation_context"):
        found = errors.run(_validation_secret, c, which)
        if found is not MISSING:
            validation, vsource = found
    alpn = errors.run(c.strs, "alpn_protocols")
    errors.raise_if_any()
    for a in alpn:
        if not a or len(a) > 255:
            raise ConfigError(c.at("alpn_protocols"), f"invalid ALPN protocol {a!r}")
    return CommonTls(tls_params=params, tls_certificates=tuple(certs), validation_context=validation,
                     alpn_protocols=alpn, certificate_sources=tuple(sources), validation_source=vsource)


def _validation_secret(c: Fields, which: str) -> tuple[ValidationContext | None, SecretSource]:
    if which == "validation_context_sds_secret_config":
        message, mpath, source = resolve(c.value(which), c.at(which), "validation_context")
        return (_parse_validation(message, mpath) if message is not None else None), source
    m = COMBINED.read(c.value(which), c.at(which))
    default = m.raw_obj("default_validation_context", required=True)
    _parse_validation(default, m.at("default_validation_context"))  # valid on its own too
    message, mpath, source = resolve(m.value("validation_context_sds_secret_config", required=True),
                                     m.at("validation_context_sds_secret_config"), "validation_context")
    source = replace(source, default=default)
    if message is None:   # xDS: merged when it arrives
        return None, source
    return _parse_validation(merge_validation(default, message), mpath), source


def parse_secret(source: SecretSource, message: Mapping[str, Any], path: str) -> Any:
    """A new version of a secret (a watched file changed): validated exactly as at load."""
    if source.kind == "tls_certificate":
        return _parse_certificate(message, path)
    if source.default is not None:
        message = merge_validation(source.default, message)
    return _parse_validation(message, path)


def _parse_params(c: Fields, defaults: tuple[str, str]) -> TlsParams:
    p = PARAMS.read(c.value("tls_params", {}), c.at("tls_params"))
    lo = p.enum("tls_minimum_protocol_version", TLS_VERSIONS, "TLS_AUTO")
    hi = p.enum("tls_maximum_protocol_version", TLS_VERSIONS, "TLS_AUTO")
    lo = defaults[0] if lo == "TLS_AUTO" else lo
    hi = defaults[1] if hi == "TLS_AUTO" else hi
    if TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
        raise ConfigError(p.path, f"tls_minimum_protocol_version {lo} is above "
                                  f"tls_maximum_protocol_version {hi}")
    ciphers = []
    for name in p.strs("cipher_suites"):
        # BoringSSL's equal-preference groups "[A|B]": kept in the written order.
        ciphers.extend(x for x in name.strip("[]").split("|") if x)
    curves = []
    for name in p.strs("ecdh_curves"):
        if name not in CURVES:
            raise ConfigError(p.at("ecdh_curves"), f"unknown curve {name!r}; expected one of "
                                                   f"{', '.join(CURVES)}")
        curves.append(CURVES[name])
    if len(curves) > 1:
        raise ConfigError(p.at("ecdh_curves"), "not supported yet (one curve: pyOpenSSL sets a "
                                               "single group; leave it out for OpenSSL's defaults)")
    return TlsParams(lo, hi, tuple(ciphers) or DEFAULT_CIPHERS, tuple(curves))


def _load_pem_certs(data: bytes, path: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as e:
        raise ConfigError(path, f"not a PEM certificate: {e}") from None
    return certs


def _parse_certificate(raw: Any, path: str) -> TlsCertificate:
    t = CERTIFICATE.read(raw, path)
    password = read_data_source(t.value("password"), t.at("password")) if t.has("password") else None
    if t.has("pkcs12"):
        if t.has("certificate_chain") or t.has("private_key"):
            raise ConfigError(path, "pkcs12 excludes certificate_chain and private_key")
        data = read_data_source(t.value("pkcs12"), t.at("pkcs12"))
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
        except ValueError as e:
            raise ConfigError(t.at("pkcs12"), f"cannot load PKCS12: {e}") from None
        if key is None or cert is None:
            raise ConfigError(t.at("pkcs12"), "PKCS12 needs a certificate and its private key")
        chain = (cert, *extra)
    else:
        if not t.has("certificate_chain"):
            raise ConfigError(t.at("certificate_chain"), "required field is missing")
        if not t.has("private_key"):
            raise ConfigError(t.at("private_key"), "required field is missing")
        chain = _load_pem_certs(read_data_source(t.value("certificate_chain"), t.at("certificate_chain")),
                                t.at("certificate_chain"))
        key_pem = read_data_source(t.value("private_key"), t.at("private_key"))
        try:
            key = serialization.load_pem_private_key(key_pem, password)
        except (ValueError, TypeError) as e:
            raise ConfigError(t.at("private_key"), f"cannot load the private key: {e}") from None
    if chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(path, "the private key does not match the certificate")
    key_type = "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else (
        "rsa" if isinstance(key, rsa.RSAPrivateKey) else type(key).__name__)
    return TlsCertificate(chain=chain, private_key=key, names=_server_names(chain[0]), key_type=key_type)


def _server_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The names SNI selects a certificate by: its DNS SANs, else its subject CN (as Envoy)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(n.lower() for n in sans.get_values_for_type(x509.DNSName))
        if dns:
            return dns
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return tuple(str(a.value).lower() for a in cns)


def _parse_validation(raw: Any, path: str) -> ValidationContext:
    errors = ErrorCollector()
    v = VALIDATION.read(raw, path, errors_to=errors)
    trusted = ()
    if v.has("trusted_ca"):
        trusted = errors.run(lambda: _load_pem_certs(
            read_data_source(v.value("trusted_ca"), v.at("trusted_ca")), v.at("trusted_ca")))
    crls = ()
    if v.has("crl"):
        crls = errors.run(_load_crls, v)
    sans = []
    typed = v.list("match_typed_subject_alt_names")
    for item, spath in typed:
        s = SAN_MATCHER.read(item, spath)
        kind = s.enum("san_type", SAN_TYPES, required=True)
        if kind == "SAN_TYPE_UNSPECIFIED":
            errors.add(ConfigError(s.at("san_type"), "must be one of EMAIL, DNS, URI, IP_ADDRESS"))
            continue
        sans.append(SanMatcher(kind, errors.run(parse_string_matcher, s.value("matcher", required=True),
                                                s.at("matcher"))))
    if not typed:  # the deprecated field is ignored when the typed one is set (Envoy)
        for item, mpath in v.list("match_subject_alt_names"):
            sans.append(SanMatcher("", errors.run(parse_string_matcher, item, mpath)))
    spki = []
    for item, ppath in v.list("verify_certificate_spki"):
        try:
            digest = base64.b64decode(item, validate=True) if isinstance(item, str) else b""
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            errors.add(ConfigError(ppath, "Invalid base64-encoded SHA-256"))
        spki.append(digest)
    hashes = []
    for item, hpath in v.list("verify_certificate_hash"):
        text = item.replace(":", "") if isinstance(item, str) else ""
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            errors.add(ConfigError(hpath, "Invalid hex-encoded SHA-256"))
        hashes.append(digest)
    out = dict(
        allow_expired_certificate=errors.run(v.bool, "allow_expired_certificate", False),
        trust_chain_verification=errors.run(v.enum, "trust_chain_verification",
                                            ("VERIFY_TRUST_CHAIN", "ACCEPT_UNTRUSTED"), "VERIFY_TRUST_CHAIN"),
        only_verify_leaf_cert_crl=errors.run(v.bool, "only_verify_leaf_cert_crl", False),
        max_verify_depth=errors.run(v.int, "max_verify_depth", None, min=0, max=100),
    )
    errors.raise_if_any()
    if crls and not trusted:
        # Envoy: "Failed to load CRL from <inline>: no trusted CA"
        raise ConfigError(v.at("crl"), "a CRL needs trusted_ca")
    return ValidationContext(trusted_ca=trusted, crl=crls, san_matchers=tuple(sans),
                             spki_pins=tuple(spki), hash_pins=tuple(hashes), **out)


def _load_crls(v: Fields) -> tuple[x509.CertificateRevocationList, ...]:
    data = read_data_source(v.value("crl"), v.at("crl"))
    out = []
    marker = b"-----BEGIN X509 CRL-----"
    for part in data.split(marker)[1:]:
        try:
            out.append(x509.load_pem_x509_crl(marker + part))
        except ValueError as e:
            raise ConfigError(v.at("crl"), f"not a PEM CRL: {e}") from None
    if not out:
        raise ConfigError(v.at("crl"), "no PEM CRL found")
    return tuple(out)
