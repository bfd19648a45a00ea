"""Signing real JSON Web Tokens for the tests (cryptography): keys of every kind Envoy's
jwt_authn verifies (RSA PKCS#1 and PSS, ECDSA P-256/384/521, Ed25519, HMAC), their public JWKs,
and `sign(claims)` producing `header.payload.signature` as an issuer would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["b64url", "SigningKey", "jwks", "make_key"]

_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVE = {"256": (ec.SECP256R1, "P-256", 32), "384": (ec.SECP384R1, "P-384", 48),
          "512": (ec.SECP521R1, "P-521", 66)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int, length: int | None = None) -> str:
    return b64url(n.to_bytes(length or (n.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    alg: str
    kid: str
    private: Any
    secret: bytes = b""
    extra_jwk: dict = field(default_factory=dict)

    def jwk(self, with_alg: bool = True) -> dict:
        fam = self.alg[:2]
        if fam in ("RS", "PS"):
            pub = self.private.public_key().public_numbers()
            out = {"kty": "RSA", "n": _int_b64(pub.n), "e": _int_b64(pub.e)}
        elif fam == "ES":
            pub = self.private.public_key().public_numbers()
            _, crv, size = _CURVE[self.alg[2:]]
            out = {"kty": "EC", "crv": crv, "x": _int_b64(pub.x, size), "y": _int_b64(pub.y, size)}
        elif fam == "HS":
            out = {"kty": "oct", "k": b64url(self.secret)}
        else:
            from cryptography.hazmat.primitives import serialization
            raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        out["kid"] = self.kid
        if with_alg:
            out["alg"] = self.alg
        out.update(self.extra_jwk)
        return out

    def sign(self, claims: dict, header: dict | None = None) -> str:
        h = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        h.update(header or {})
        h = {k: v for k, v in h.items() if v is not None}
        signing_input = (b64url(json.dumps(h, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self.raw_signature(signing_input.encode()))

    def raw_signature(self, data: bytes) -> bytes:
        fam, bits = self.alg[:2], self.alg[2:]
        if fam == "RS":
            return self.private.sign(data, padding.PKCS1v15(), _HASH[bits]())
        if fam == "PS":
            h = _HASH[bits]()
            return self.private.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)
        if fam == "ES":
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(_HASH[bits]())))
            size = _CURVE[bits][2]
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if fam == "HS":
            return hmac.new(self.secret, data, getattr(hashlib, f"sha{bits}")).digest()
        return self.private.sign(data)


def make_key(alg: str, kid: str | None = None) -> SigningKey:
    fam, bits = alg[:2], alg[2:]
    kid = kid or alg.lower()
    if fam in ("RS", "PS"):
        return SigningKey(alg, kid, rsa.generate_private_key(65537, 2048))
    if fam == "ES":
        return SigningKey(alg, kid, ec.generate_private_key(_CURVE[bits][0]()))
    if fam == "HS":
        return SigningKey(alg, kid, None, os.urandom(32))
    return SigningKey(alg, kid, ed25519.Ed25519PrivateKey.generate())


def jwks(*keys: SigningKey, with_alg: bool = True) -> str:
    return json.dumps({"keys": [k.jwk(with_alg) for k in keys]})
