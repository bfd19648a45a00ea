"""jwt_verify.py, without sockets: tokens and key sets are read and checked the way Envoy's
jwt_verify_lib reads them (its statuses, its quirks), for tokens signed here."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.http.filters import jwt_verify as jv

from tests.jwt_tokens import b64url, jwks, make_key


def _status(fn, *args) -> str:
    try:
        fn(*args)
    except jv.JwtError as e:
        return e.status
    return jv.OK


def test_base64url_accepts_padding_or_none_and_rejects_other_alphabets():
    assert jv.b64url_decode(b"YQ") == b"a" and jv.b64url_decode(b"YQ==") == b"a"
    assert jv.b64url_decode(b"_-8") == b"\xff\xef" and jv.b64url_decode(b"") == b""
    for bad in (b"YQ=", b"Y", b"a+b/", b"YQ===", b"Y Q"):
        assert jv.b64url_decode(bad) is None, bad


def test_sections_are_split_skipping_empty_ones():
    key = make_key("HS256")
    h, p, s = key.sign({"iss": "i"}).split(".")
    assert _status(jv.parse_jwt, f"{h}.{p}".encode()) == jv.JWT_BAD_FORMAT
    assert _status(jv.parse_jwt, f"{h}..{p}.{s}".encode()) == jv.OK   # the empty one is skipped
    assert _status(jv.parse_jwt, f"{h}.{p}.{s}.x".encode()) == jv.JWT_BAD_FORMAT


@pytest.mark.parametrize("header,payload,status", [
    ({"alg": "none"}, {}, jv.JWT_HEADER_NOT_IMPLEMENTED_ALG),
    ({"typ": "JWT"}, {}, jv.JWT_HEADER_BAD_ALG),
    ({"alg": "RS256", "kid": 7}, {}, jv.JWT_HEADER_BAD_KID),
    ({"alg": "RS256"}, {"iss": 1}, "Jwt payload [iss] field is not a string"),
    ({"alg": "RS256"}, {"exp": "x"}, "Jwt payload [exp] field is not an integer"),
    ({"alg": "RS256"}, {"nbf": -5}, "Jwt payload [nbf] field is not a positive 64 bit integer"),
    ({"alg": "RS256"}, {"iat": 2e19}, "Jwt payload [iat] field is not a positive 64 bit integer"),
    ({"alg": "RS256"}, {"aud": ["a", 1]}, "Jwt payload [aud] field is not a string or string list"),
    ({"alg": "RS256"}, {"jti": {}}, "Jwt payload [jti] field is not a string"),
])
def test_header_and_claims_are_typed(header, payload, status):
    token = ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), "c2ln"))
    assert _status(jv.parse_jwt, token.encode()) == status


def test_time_checks_with_skew_and_audiences_without_scheme_or_slash():
    key = make_key("ES256")
    jwt = jv.parse_jwt(key.sign({"exp": 1000, "nbf": 500, "aud": ["https://api.example/"]}).encode())
    assert _status(jv.check_time, jwt, 1060, 60) == jv.OK
    assert _status(jv.check_time, jwt, 1061, 60) == jv.JWT_EXPIRED
    assert _status(jv.check_time, jwt, 440, 60) == jv.OK
    assert _status(jv.check_time, jwt, 439, 60) == jv.JWT_NOT_YET_VALID
    allowed = frozenset(jv.sanitize_audience(a) for a in ("http://api.example",))
    assert jv.audiences_allowed(allowed, jwt.audiences)
    assert not jv.audiences_allowed(frozenset({"other"}), jwt.audiences)
    assert jv.audiences_allowed(frozenset(), ())


def test_a_key_set_keeps_its_good_keys_and_reports_the_first_failure_when_none_is_good():
    good = make_key("RS256")
    keys = jv.parse_jwks(json.dumps({"keys": [{"kty": "RSA", "n": "AQ"}, "junk", good.jwk()]}).encode())
    assert [k.kid for k in keys] == [good.kid]
    assert _status(jv.parse_jwks, json.dumps({"keys": [{"kty": "RSA", "e": "AQAB"}]}).encode()) == \
        "[n] field is missing for a RSA key"
    assert _status(jv.parse_jwks, b'{"keys": []}') == jv.JWKS_NO_VALID_KEYS
    assert _status(jv.parse_jwks, b'{"keys": {}}') == jv.JWKS_BAD_KEYS
    assert _status(jv.parse_jwks, b"{}") == jv.JWKS_NO_KEYS
    assert _status(jv.parse_jwks, b"[1]") == jv.JWKS_PARSE_ERROR
    bad_e = dict(good.jwk(), e=b64url((17).to_bytes(1, "big")))
    assert _status(jv.parse_jwks, json.dumps({"keys": [bad_e]}).encode()) == \
        "Jwks RSA [n] or [e] field is missing or has a parse error"
    off_curve = dict(make_key("ES256").jwk(), y=b64url(b"\x01" * 32))
    assert _status(jv.parse_jwks, json.dumps({"keys": [off_curve]}).encode()) == \
        "Jwks EC [x] and [y] fields have a parse error."
    mismatch = dict(make_key("ES256").jwk(), crv="P-384")
    assert _status(jv.parse_jwks, json.dumps({"keys": [mismatch]}).encode()) == \
        "[crv] field specified is not compatible with [alg] for an EC key"


def test_kid_and_alg_choose_the_keys_tried():
    a, b = make_key("ES256", "a"), make_key("ES256", "b")
    keys = jv.parse_jwks(jwks(a, b).encode())
    assert _status(jv.verify_signature, jv.parse_jwt(b.sign({}).encode()), keys) == jv.OK
    # No kid in the token: every key is tried.
    assert _status(jv.verify_signature, jv.parse_jwt(b.sign({}, {"kid": None}).encode()), keys) == jv.OK
    assert _status(jv.verify_signature, jv.parse_jwt(b.sign({}, {"kid": "c"}).encode()), keys) == \
        jv.JWKS_KID_ALG_MISMATCH
    # A key without alg in the set: its kind decides (an EC key checks an ES384 token with SHA-384).
    e384 = make_key("ES384", "x")
    keys = jv.parse_jwks(json.dumps({"keys": [e384.jwk(with_alg=False)]}).encode())
    assert _status(jv.verify_signature, jv.parse_jwt(e384.sign({}).encode()), keys) == jv.OK


def test_an_hmac_key_without_alg_checks_any_token_with_sha256_as_jwt_verify_lib_does():
    hs = make_key("HS256", "h")
    keys = jv.parse_jwks(jwks(hs, with_alg=False).encode())
    header = b64url(json.dumps({"alg": "RS256", "kid": "h"}).encode())
    payload = b64url(b"{}")
    sig = b64url(hs.raw_signature(f"{header}.{payload}".encode()))
    assert _status(jv.verify_signature, jv.parse_jwt(f"{header}.{payload}.{sig}".encode()), keys) == jv.OK


def test_an_ed25519_signature_of_the_wrong_length_is_its_own_failure():
    ed = make_key("EdDSA")
    keys = jv.parse_jwks(jwks(ed).encode())
    h, p, _ = ed.sign({}).split(".")
    assert _status(jv.verify_signature, jv.parse_jwt(f"{h}.{p}.{b64url(b'x' * 63)}".encode()), keys) == \
        jv.JWT_ED25519_SIG_LENGTH
    assert _status(jv.verify_signature, jv.parse_jwt(f"{h}.{p}.{b64url(b'x' * 64)}".encode()), keys) == \
        jv.JWT_VERIFICATION_FAIL


def test_the_x509_form_maps_kids_to_certificates_with_rsa_keys():
    rs = make_key("RS256", "cert1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(private, public):
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())

    keys = jv.parse_jwks(json.dumps({"cert1": cert(rs.private, rs.private.public_key())}).encode())
    assert _status(jv.verify_signature, jv.parse_jwt(rs.sign({}).encode()), keys) == jv.OK
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert _status(jv.parse_jwks, json.dumps({"k": cert(ec_key, ec_key.public_key())}).encode()) == \
        "X509 parse pubkey internal fails: get pubkey"
