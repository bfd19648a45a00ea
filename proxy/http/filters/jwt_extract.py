"""Where jwt_authn finds tokens in a request, and how it takes one out again (Envoy's
extractor.cc): header locations (with a value prefix), query parameters and cookies, each knowing
the issuers whose providers named it; the tokens come out in Envoy's order (by header name and
prefix, then parameter, then cookie name). `remove_token` rewrites the request as Envoy does once
a token verified and its provider does not `forward` it.

Pure: no I/O. An Extractor is built once at load and only read afterwards (shared by workers).
"""

from __future__ import annotations

from urllib.parse import unquote, unquote_to_bytes

__all__ = ["Extractor", "Token", "remove_token"]


class _IssuerChecker:
    """The issuers whose providers named a location; an empty issuer allows every one."""

    __slots__ = ("allow_all", "issuers")

    def __init__(self) -> None:
        self.allow_all = False
        self.issuers: set[str] = set()

    def add(self, issuer: str) -> None:
        if issuer:
            self.issuers.add(issuer)
        else:
            self.allow_all = True

    def allows(self, issuer: str) -> bool:
        return self.allow_all or issuer in self.issuers


class Token:
    __slots__ = ("token", "checker", "kind", "name")

    def __init__(self, token: bytes, checker: _IssuerChecker, kind: str, name) -> None:
        self.token = token
        self.checker = checker
        self.kind = kind      # "header", "param" or "cookie"
        self.name = name      # the header (bytes) or parameter (str)


_JWT_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _after_prefix(value: bytes, start: int) -> bytes:
    """Envoy's extractJWT: from the first base64url-or-dot character after the prefix on."""
    for i in range(start, len(value)):
        if value[i] in _JWT_CHARS:
            return value[i:]
    return value


def _query_params(path: bytes) -> list[tuple[str, str]]:
    q = path.partition(b"?")[2].partition(b"#")[0]
    out = []
    for part in q.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        out.append((unquote(k.decode("latin-1")), unquote(v.decode("latin-1"))))
    return out


def _cookies(headers, wanted: dict) -> dict[str, bytes]:
    """Http::Utility::parseCookies: `k=v` pairs of every cookie header, the first of each
    name, surrounding double quotes dropped."""
    found: dict[str, bytes] = {}
    for name, value in headers.fields:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            k, sep, v = part.strip().partition(b"=")
            if not sep:
                continue
            key = k.decode("latin-1")
            if key in wanted and key not in found:
                if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                    v = v[1:-1]
                found[key] = v
    return found


class Extractor:
    """The token locations of some providers (built once at load, read-only afterwards)."""

    __slots__ = ("headers", "params", "cookies", "sanitize")

    def __init__(self, providers) -> None:
        headers: dict[bytes, tuple[bytes, bytes, _IssuerChecker]] = {}
        params: dict[str, _IssuerChecker] = {}
        cookies: dict[str, _IssuerChecker] = {}
        sanitize: list[bytes] = []
        for p in providers:
            locations = p.from_headers
            names = p.from_params
            if not p.from_headers and not p.from_params and not p.from_cookies:
                locations = ((b"authorization", b"Bearer "),)
                names = ("access_token",)
            for name, prefix in locations:
                key = name + prefix
                if key not in headers:
                    headers[key] = (name, prefix, _IssuerChecker())
                headers[key][2].add(p.issuer)
            for param in names:
                params.setdefault(param, _IssuerChecker()).add(p.issuer)
            for cookie in p.from_cookies:
                cookies.setdefault(cookie, _IssuerChecker()).add(p.issuer)
            if p.forward_payload_header:
                sanitize.append(p.forward_payload_header)
            sanitize.extend(h for h, _ in p.claim_to_headers)
        # Envoy keeps each kind in an ordered map: tokens come out in key order.
        self.headers = tuple(headers[k] for k in sorted(headers))
        self.params = tuple(sorted(params.items()))
        self.cookies = dict(sorted(cookies.items()))
        self.sanitize = frozenset(sanitize)

    def extract(self, head) -> list[Token]:
        tokens: list[Token] = []
        fields = head.headers.fields
        for name, prefix, checker in self.headers:
            for k, value in fields:
                if k != name:
                    continue
                if prefix:
                    pos = value.find(prefix)
                    if pos < 0:
                        continue
                    value = _after_prefix(value, pos + len(prefix))
                tokens.append(Token(value, checker, "header", name))
        if self.params and head.path.find(b"?") >= 0:   # (`in` raises and clears a TypeError)
            query = _query_params(head.path)
            for param, checker in self.params:
                for k, v in query:
                    if k == param:
                        tokens.append(Token(v.encode("latin-1"), checker, "param", param))
                        break
        if self.cookies:
            found = _cookies(head.headers, self.cookies)
            for cookie, checker in self.cookies.items():
                if cookie in found:
                    tokens.append(Token(found[cookie], checker, "cookie", cookie))
        return tokens


def _target_safe(value: bytes) -> bytes:
    """A decoded query piece as it may stand in a request target: bytes that cannot (controls,
    space, `#`, DEL, non-ASCII) are percent-encoded again. (Envoy writes them raw, making a
    request line its upstream refuses: a deliberate difference.)"""
    if all(0x20 < b < 0x7f and b != 0x23 for b in value):
        return value
    return b"".join(b"%%%02X" % b if not (0x20 < b < 0x7f and b != 0x23) else bytes((b,)) for b in value)


def _query_without(path: bytes, name: str) -> bytes:
    """Envoy's JwtParamLocation::removeJwt: the query parsed and percent-decoded, the token's
    parameter dropped, and the rest written back by name in byte order (values of one name in
    their order, `k` as `k=`), decoded; no parameter left: no `?`."""
    base, _, query = path.partition(b"?")
    params: dict[bytes, list[bytes]] = {}
    for part in query.split(b"&"):
        if part:
            k, _, v = part.partition(b"=")
            params.setdefault(unquote_to_bytes(k), []).append(unquote_to_bytes(v))
    params.pop(name.encode("latin-1"), None)
    pieces = [_target_safe(k) + b"=" + _target_safe(v) for k in sorted(params) for v in params[k]]
    return base + b"?" + b"&".join(pieces) if pieces else base


def remove_token(head, token: Token) -> None:
    if token.kind == "header":
        head.headers.remove(token.name)
    elif token.kind == "param":
        head.set_path(_query_without(head.path, token.name))
    # cookie: Envoy leaves it (a TODO in its extractor)
