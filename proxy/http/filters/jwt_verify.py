"""JWT parsing, JWKS parsing and signature checks as Envoy's jwt_authn does them (its
jwt_verify_lib): the same accepted inputs, the same failure statuses, the same messages.

- `parse_jwt(token)` -> Jwt, or raises JwtError(status). Exactly two dots' worth of non-empty
  sections (empty ones are skipped, as absl::StrSplit(SkipEmpty)), base64url header and payload
  holding JSON objects, `alg` one of the implemented ones, `kid` a string when present, the
  registered claims typed (iss/sub/jti strings, iat/nbf/exp non-negative numbers, aud a string or
  a list of strings).
- `parse_jwks(text)` -> Jwks (a tuple of keys), or raises JwtError: a JWKS object (`keys`, each
  RSA n/e, EC crv/x/y, oct k, OKP Ed25519 x; a bad key is skipped when another is good) or the
  X.509 form (an object of kid -> PEM certificate with an RSA key).
- `verify_signature(jwt, jwks)` -> None or raises: the keys whose kid (when both have one) and
  alg (when the key has one) match are tried in order, the way jwt_verify_lib does (an `oct` key
  without alg HMACs whatever the token's alg says; EC signatures are r||s split in halves).
- `check_time(jwt, now, skew)`, `audiences_allowed(...)` (scheme and trailing slash ignored).

Pure: no I/O, no clock (the caller passes `now`); every object here is immutable once built,
so a Jwks may be shared by all workers. Uses `cryptography` (OpenSSL; keeps the GIL off on 3.14t).
"""

from __future__ import annotations

import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["JwtError", "Jwt", "Jwk", "Jwks", "parse_jwt", "parse_jwks", "verify_signature",
           "check_time", "audiences_allowed", "b64url_decode"]


# jwt_verify_lib's status strings (what Envoy's 401 body says).
OK = "OK"
JWT_MISSED = "Jwt is missing"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_EXPIRED = "Jwt is expired"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
JWT_HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
JWT_HEADER_BAD_JSON = "Jwt header is an invalid JSON"
JWT_HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
JWT_HEADER_NOT_IMPLEMENTED_ALG = "Jwt header [alg] is not supported"
JWT_HEADER_BAD_KID = "Jwt header [kid] field is not a string"
JWT_PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
JWT_ED25519_SIG_LENGTH = "Jwt ED25519 signature is wrong length"
JWT_PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
JWT_SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWT_VERIFICATION_FAIL = "Jwt verification fails"
JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"
JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"


# jwt_verify_lib's Status enum values (failed_status_in_metadata's `code`) of the statuses a
# request can end with.
STATUS_CODES = {
    OK: 0, JWT_MISSED: 1, JWT_NOT_YET_VALID: 2, JWT_EXPIRED: 3, JWT_BAD_FORMAT: 4,
    JWT_HEADER_BAD_BASE64: 5, JWT_HEADER_BAD_JSON: 6, JWT_HEADER_BAD_ALG: 7,
    JWT_HEADER_NOT_IMPLEMENTED_ALG: 8, JWT_HEADER_BAD_KID: 9, JWT_PAYLOAD_BAD_BASE64: 10,
    JWT_PAYLOAD_BAD_JSON: 11,
    "Jwt payload [iss] field is not a string": 12, "Jwt payload [sub] field is not a string": 13,
    "Jwt payload [iat] field is not an integer": 14,
    "Jwt payload [iat] field is not a positive 64 bit integer": 15,
    "Jwt payload [nbf] field is not an integer": 16,
    "Jwt payload [nbf] field is not a positive 64 bit integer": 17,
    "Jwt payload [exp] field is not an integer": 18,
    "Jwt payload [exp] field is not a positive 64 bit integer": 19,
    "Jwt payload [jti] field is not a string": 20,
    "Jwt payload [aud] field is not a string or string list": 21,
    JWT_SIGNATURE_BAD_BASE64: 22, JWT_ED25519_SIG_LENGTH: 23, JWT_UNKNOWN_ISSUER: 24,
    JWT_AUDIENCE_NOT_ALLOWED: 25, JWT_VERIFICATION_FAIL: 26,
    JWKS_NO_VALID_KEYS: 31, JWKS_KID_ALG_MISMATCH: 32, JWKS_FETCH_FAIL: 40,
}


def _claim_not_string(name: str) -> str:
    return f"Jwt payload [{name}] field is not a string"


class JwtError(Exception):
    """A failed check; `status` is jwt_verify_lib's message for it."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


IMPLEMENTED_ALGS = frozenset({"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256",
                              "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"})
_UINT64_LIMIT = float(2 ** 64)
_UINT64_INT = 2 ** 64
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PADDING = (b"", b"", b"==", b"=")   # by len % 4 (1 is invalid)


def b64url_decode(s: bytes) -> bytes | None:
    """absl::WebSafeBase64Unescape: the URL-safe alphabet, padding optional; None if invalid.
    (Deleting the alphabet's bytes leaves nothing for valid input: one C pass, cheaper than
    binascii's strict mode or a regex.)"""
    body = s.rstrip(b"=")
    n = len(body) % 4
    pad = len(s) - len(body)
    if n == 1 or (pad and (n + pad) % 4) or body.translate(None, _ALPHABET):
        return None
    try:
        return binascii.a2b_base64(body.translate(_TO_STANDARD) + _PADDING[n])
    except binascii.Error:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity: not JSON to protobuf's parser


_SCAN = json.JSONDecoder().scan_once   # stateless between calls, as json.loads' shared one


def _json_object(raw: bytes) -> dict | None:
    """A JSON object as protobuf's JSON parser reads it into a Struct (NaN and Infinity are
    no JSON there). The common case, an object with no surrounding whitespace, goes straight to
    the C scanner; anything else (or text that could hold those literals) through json.loads."""
    try:
        text = raw.decode("utf-8")
        if "NaN" in text or "Infinity" in text:
            value = json.loads(text, parse_constant=_reject_constant)
        elif text[:1] == "{":
            value, end = _SCAN(text, 0)
            if end != len(text):
                value = json.loads(text)
        else:
            value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError, StopIteration):
        return None
    return value if isinstance(value, dict) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _uint64(payload: dict, name: str) -> int:
    """StructUtils::GetUInt64: absent -> 0; not a number or out of range -> the claim's error."""
    v = payload.get(name)
    if v is None and name not in payload:
        return 0
    if not _is_number(v):
        raise JwtError(f"Jwt payload [{name}] field is not an integer")
    if v < 0 or float(v) >= _UINT64_LIMIT:
        raise JwtError(f"Jwt payload [{name}] field is not a positive 64 bit integer")
    return int(v)


def _opt_str(obj: dict, name: str, error: str) -> str:
    if name not in obj:
        return ""
    v = obj[name]
    if not isinstance(v, str):
        raise JwtError(error)
    return v


class Jwt(NamedTuple):
    """A parsed token (a tuple: immutable, and cheap to make once per request)."""

    alg: str
    kid: str
    header: dict            # never mutated after parse
    payload: dict
    header_b64: bytes       # the sections as sent (the signed input, the forwarded payload)
    payload_b64: bytes
    signature: bytes
    iss: str
    sub: str
    audiences: tuple[str, ...]
    iat: int
    nbf: int
    exp: int

    @property
    def signed_data(self) -> bytes:
        return self.header_b64 + b"." + self.payload_b64


def parse_jwt(token: bytes) -> Jwt:
    parts = [p for p in token.split(b".") if p]
    if len(parts) != 3:
        raise JwtError(JWT_BAD_FORMAT)
    header_b64, payload_b64, sig_b64 = parts
    raw = b64url_decode(header_b64)
    if raw is None:
        raise JwtError(JWT_HEADER_BAD_BASE64)
    header = _json_object(raw)
    if header is None:
        raise JwtError(JWT_HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError(JWT_HEADER_BAD_ALG)
    if alg not in IMPLEMENTED_ALGS:
        raise JwtError(JWT_HEADER_NOT_IMPLEMENTED_ALG)
    kid = _opt_str(header, "kid", JWT_HEADER_BAD_KID)
    raw = b64url_decode(payload_b64)
    if raw is None:
        raise JwtError(JWT_PAYLOAD_BAD_BASE64)
    payload = _json_object(raw)
    if payload is None:
        raise JwtError(JWT_PAYLOAD_BAD_JSON)
    get = payload.get
    # The common case (strings and whole numbers in range, or absent) without a call per claim.
    iss, sub, jti = get("iss", ""), get("sub", ""), get("jti", "")
    if type(iss) is not str or type(sub) is not str or type(jti) is not str:
        for name, v in (("iss", iss), ("sub", sub), ("jti", jti)):
            if not isinstance(v, str):
                raise JwtError(_claim_not_string(name))
    iat, nbf, exp = get("iat", 0), get("nbf", 0), get("exp", 0)
    if not (type(iat) is int and type(nbf) is int and type(exp) is int
            and 0 <= iat < _UINT64_INT and 0 <= nbf < _UINT64_INT and 0 <= exp < _UINT64_INT):
        iat, nbf, exp = _uint64(payload, "iat"), _uint64(payload, "nbf"), _uint64(payload, "exp")
    aud = get("aud")
    if aud is None and "aud" not in payload:
        audiences: tuple[str, ...] = ()
    elif type(aud) is str:
        audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        raise JwtError("Jwt payload [aud] field is not a string or string list")
    signature = b64url_decode(sig_b64)
    if signature is None:
        raise JwtError(JWT_SIGNATURE_BAD_BASE64)
    return Jwt(alg, kid, header, payload, header_b64, payload_b64, signature, iss, sub,
               audiences, iat, nbf, exp)


def check_time(jwt: Jwt, now: int, clock_skew: int) -> None:
    """Jwt::verifyTimeConstraint."""
    if now + clock_skew < jwt.nbf:
        raise JwtError(JWT_NOT_YET_VALID)
    if jwt.exp and now > jwt.exp + clock_skew:
        raise JwtError(JWT_EXPIRED)


def sanitize_audience(aud: str) -> str:
    """CheckAudience: `http://` / `https://` and one trailing slash do not count."""
    if aud.startswith("http://"):
        aud = aud[7:]
    elif aud.startswith("https://"):
        aud = aud[8:]
    return aud[:-1] if aud.endswith("/") else aud


def audiences_allowed(allowed: frozenset[str], jwt_audiences: tuple[str, ...]) -> bool:
    """`allowed` holds sanitized audiences; empty allows any token."""
    if not allowed:
        return True
    return any(sanitize_audience(a) in allowed for a in jwt_audiences)


# -- JWKS -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Jwk:
    kty: str               # RSA, EC, oct, OKP
    kid: str
    alg: str
    key: Any               # cryptography public key, or bytes (oct)
    crv: str = ""


Jwks = tuple[Jwk, ...]

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_EC_ALG_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_X509_PREFIX = "-----BEGIN CERTIFICATE-----\n"
_X509_SUFFIX = "\n-----END CERTIFICATE-----\n"


def _key_str(jwk: dict, name: str, missing: str, bad: str) -> str:
    if name not in jwk:
        raise JwtError(missing)
    v = jwk[name]
    if not isinstance(v, str):
        raise JwtError(bad)
    return v


def _big_int(s: str) -> int | None:
    raw = b64url_decode(s.encode("latin-1", "replace"))
    return None if raw is None else int.from_bytes(raw, "big")


def _rsa_key(jwk: dict, alg: str) -> Any:
    if alg and alg[:2] not in ("RS", "PS"):
        raise JwtError("[alg] is not started with [RS] or [PS] for an RSA key")
    n_s = _key_str(jwk, "n", "[n] field is missing for a RSA key", "[n] field is not string for a RSA key")
    e_s = _key_str(jwk, "e", "[e] field is missing for a RSA key", "[e] field is not string for a RSA key")
    n, e = _big_int(n_s), _big_int(e_s)
    bad = "Jwks RSA [n] or [e] field is missing or has a parse error"
    if n is None or e is None or e not in (3, 65537):
        raise JwtError(bad)
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise JwtError(bad) from None


def _ec_key(jwk: dict, alg: str) -> tuple[Any, str]:
    if alg and alg[:2] != "ES":
        raise JwtError("[alg] is not started with [ES] for an EC key")
    crv = jwk.get("crv", "")
    if "crv" in jwk and not isinstance(crv, str):
        raise JwtError("[crv] field is not string for an EC key")
    if alg and crv and _EC_ALG_CRV.get(alg) != crv:
        raise JwtError("[crv] field specified is not compatible with [alg] for an EC key")
    if not alg and not crv:
        crv = "P-256"
    crv = _EC_ALG_CRV.get(alg) or crv
    if crv not in _CURVES:
        raise JwtError("[crv] or [alg] field is not supported for an EC key")
    x_s = _key_str(jwk, "x", "[x] field is missing for an EC key", "[x] field is not string for an EC key")
    y_s = _key_str(jwk, "y", "[y] field is missing for an EC key", "[y] field is not string for an EC key")
    x, y = _big_int(x_s), _big_int(y_s)
    if x is None or y is None:
        raise JwtError("Jwks EC [x] or [y] field is an invalid Base64.")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, _CURVES[crv]()).public_key(), crv
    except (ValueError, UnsupportedAlgorithm):
        raise JwtError("Jwks EC [x] and [y] fields have a parse error.") from None


def _oct_key(jwk: dict, alg: str) -> bytes:
    if alg and alg not in ("HS256", "HS384", "HS512"):
        raise JwtError("[alg] does not start with [HS] for an HMAC key")
    k = _key_str(jwk, "k", "[k] field is missing for an HMAC key", "[k] field is not string for an HMAC key")
    key = b64url_decode(k.encode("latin-1", "replace"))
    if not key:
        raise JwtError("Jwks Oct key is an invalid Base64")
    return key


def _okp_key(jwk: dict, alg: str) -> Any:
    if alg and alg != "EdDSA":
        raise JwtError("[alg] is not [EdDSA] for an OKP key")
    crv = _key_str(jwk, "crv", "[crv] field is missing for an OKP key", "[crv] field is not string for an OKP key")
    if crv != "Ed25519":
        raise JwtError("[crv] field is not supported for an OKP key")
    x = _key_str(jwk, "x", "[x] field is missing for an OKP key", "[x] field is not string for an OKP key")
    raw = b64url_decode(x.encode("latin-1", "replace"))
    if raw is None:
        raise JwtError("Jwks OKP [x] field is an invalid Base64.")
    if len(raw) != 32:
        raise JwtError("Jwks OKP [x] field is wrong length.")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _jwk(jwk: dict) -> Jwk:
    kty = _key_str(jwk, "kty", "[kty] is missing in [keys]", "[kty] is bad in [keys]")
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else ""
    alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else ""
    if kty == "EC":
        key, crv = _ec_key(jwk, alg)
        return Jwk(kty, kid, alg, key, crv)
    if kty == "RSA":
        return Jwk(kty, kid, alg, _rsa_key(jwk, alg))
    if kty == "oct":
        return Jwk(kty, kid, alg, _oct_key(jwk, alg))
    if kty == "OKP":
        return Jwk(kty, kid, alg, _okp_key(jwk, alg), "Ed25519")
    raise JwtError("[kty] is not supported in [keys]")


def _x509_keys(obj: dict) -> Jwks | None:
    """The X.509 form ({kid: PEM certificate}), when every value is one; None otherwise."""
    if not obj or not all(k and isinstance(v, str) and v.startswith(_X509_PREFIX)
                          and v.endswith(_X509_SUFFIX) for k, v in obj.items()):
        return None
    keys = []
    for kid, pem in obj.items():
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("latin-1", "replace"))
        except ValueError:
            raise JwtError("X509 parse pubkey fails") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise JwtError("X509 parse pubkey internal fails: get pubkey")
        keys.append(Jwk("RSA", kid, "", key))
    return tuple(keys)


def parse_jwks(text: bytes) -> Jwks:
    """Jwks::createFrom(text, JWKS): the keys, or JwtError with the first failure."""
    obj = _json_object(text)
    if obj is None:
        raise JwtError(JWKS_PARSE_ERROR)
    if "keys" not in obj:
        keys = _x509_keys(obj)
        if keys is None:
            raise JwtError(JWKS_NO_KEYS)
        return keys
    if not isinstance(obj["keys"], list):
        raise JwtError(JWKS_BAD_KEYS)
    good: list[Jwk] = []
    first_error = ""
    for item in obj["keys"]:
        if not isinstance(item, dict):
            continue
        try:
            good.append(_jwk(item))
        except JwtError as e:
            first_error = first_error or e.status
    if not good:
        raise JwtError(first_error or JWKS_NO_VALID_KEYS)
    return tuple(good)


# -- signatures -----------------------------------------------------------------------------

_SHA = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def _bits(alg: str, family: tuple[str, ...]) -> str:
    """The hash size a key of this family uses for `alg`: SHA-256 unless the token names
    384 or 512 in this family's prefixes (jwt_verify_lib's defaulting)."""
    if alg[:2] in family and alg[2:] in ("384", "512"):
        return alg[2:]
    return "256"


def _rsa_scheme(alg: str) -> tuple[Any, Any] | None:
    h = _SHA[_bits(alg, ("RS", "PS"))]()
    if alg.startswith("RS"):
        return padding.PKCS1v15(), h
    if alg.startswith("PS"):
        return padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h
    return None


# What each kind of key does with a token of each algorithm, made once (the cryptography
# objects are immutable, so every worker shares them).
_EC_SCHEME = {alg: ec.ECDSA(_SHA[_bits(alg, ("ES",))]()) for alg in IMPLEMENTED_ALGS}
_RSA_SCHEME = {alg: _rsa_scheme(alg) for alg in IMPLEMENTED_ALGS}
_HMAC_DIGEST = {alg: "sha" + _bits(alg, ("HS",)) for alg in IMPLEMENTED_ALGS}


def _verify_one(jwk: Jwk, jwt: Jwt, signed: bytes) -> bool:
    alg = jwt.alg
    sig = jwt.signature
    try:
        kty = jwk.kty
        if kty == "RSA":
            scheme = _RSA_SCHEME[alg]
            if scheme is None:
                return False
            jwk.key.verify(sig, signed, scheme[0], scheme[1])
            return True
        if kty == "EC":
            half = len(sig) // 2
            r = int.from_bytes(sig[:half], "big")
            s = int.from_bytes(sig[half:half * 2], "big")
            if r == 0 or s == 0:
                return False
            jwk.key.verify(encode_dss_signature(r, s), signed, _EC_SCHEME[alg])
            return True
        if kty == "oct":
            return hmac.compare_digest(hmac.digest(jwk.key, signed, _HMAC_DIGEST[alg]), sig)
    except (InvalidSignature, ValueError):
        return False
    return False


def verify_signature(jwt: Jwt, jwks: Jwks) -> None:
    """verifyJwtWithoutTimeChecking: raises JwtError unless a matching key verifies."""
    signed = jwt.signed_data
    matched = False
    for jwk in jwks:
        if jwt.kid and jwk.kid and jwk.kid != jwt.kid:
            continue
        if jwk.alg and jwk.alg != jwt.alg:
            continue
        matched = True
        if jwk.kty == "OKP":
            if len(jwt.signature) != 64:
                raise JwtError(JWT_ED25519_SIG_LENGTH)
            try:
                jwk.key.verify(jwt.signature, signed)
                return
            except InvalidSignature:
                continue
        if _verify_one(jwk, jwt, signed):
            return
    raise JwtError(JWT_VERIFICATION_FAIL if matched else JWKS_KID_ALG_MISMATCH)
