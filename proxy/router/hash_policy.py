"""A route's `hash_policy`: the hash a consistent-hashing cluster (RING_HASH, MAGLEV) picks a
host by, as Envoy's Http::HashPolicyImpl computes it.

Each policy that finds its input contributes xxHash64 of it; the running hash is rotated left
by one bit before each new one is XORed in (so two equal rules do not cancel), and a `terminal`
policy that produced a hash ends the list. Inputs: `header` (every value of it, sorted, hashed
in a chain: each one's hash seeds the next; `:authority`, `:path`, `:method` name the
pseudo-headers), `cookie` (its value; when the request has none and the policy has a `ttl`,
the router generates one, as Envoy: `add_cookie` below), `connection_properties.source_ip` (the downstream remote address), `query_parameter` (its
first value). `filter_state` and a header's `regex_rewrite` are refused. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, refused, used
from ..config.reader import ConfigError, header_bytes
from .matchers import parse_query, split_path

__all__ = ["HashPolicy", "HASH_POLICY", "parse_hash_policy", "request_hash", "set_cookie_value"]

_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class HashPolicy:
    kind: str                 # header | cookie | source_ip | query_parameter
    name: str = ""            # the header (lower-case), cookie or parameter name
    terminal: bool = False
    # A cookie policy with a `ttl` (seconds; 0: a session cookie) sets the cookie it missed.
    ttl: int | None = None
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


HASH_POLICY = Message("envoy.config.route.v3.RouteAction.HashPolicy", model=HashPolicy,
                      bookkeeping=("kind", "name"), fields=(
    used("header", attr="kind"),
    used("cookie", attr="kind"),
    used("connection_properties", attr="kind"),
    used("query_parameter", attr="kind"),
    refused("filter_state"),
    used("terminal", False),
))
HEADER = Message("envoy.config.route.v3.RouteAction.HashPolicy.Header", fields=(
    used("header_name", attr="name"),
    refused("regex_rewrite"),
))
COOKIE = Message("envoy.config.route.v3.RouteAction.HashPolicy.Cookie", fields=(
    used("name"),
    used("ttl"),
    used("path"),
    used("attributes"),
))
COOKIE_ATTRIBUTE = Message("envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute", fields=(
    used("name"),
    used("value"),
))
CONNECTION_PROPERTIES = Message("envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
                                fields=(used("source_ip", attr="kind"),))
QUERY_PARAMETER = Message("envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
                          fields=(used("name"),))


def parse_hash_policy(raw: Any, path: str) -> HashPolicy:
    f = HASH_POLICY.read(raw, path)
    kind = f.oneof("header", "cookie", "connection_properties", "query_parameter", "filter_state",
                   required=True)
    terminal = f.bool("terminal", False)
    if kind == "header":
        h = HEADER.read(f.value("header"), f.at("header"))
        name = h.str("header_name", required=True)
        if not name:
            raise ConfigError(h.at("header_name"), "must not be empty")
        return HashPolicy("header", header_bytes(name.lower(), h.at("header_name")).decode("latin-1"), terminal)
    if kind == "cookie":
        c = COOKIE.read(f.value("cookie"), f.at("cookie"))
        name = c.str("name", required=True)
        if not name:
            raise ConfigError(c.at("name"), "must not be empty")
        ttl = c.duration("ttl", None)
        attributes = []
        for item, p in c.list("attributes"):
            a = COOKIE_ATTRIBUTE.read(item, p)
            a_name = a.str("name", required=True)
            if not a_name:
                raise ConfigError(a.at("name"), "must not be empty")
            attributes.append((a_name, a.str("value", "")))
        return HashPolicy("cookie", name, terminal, None if ttl is None else int(ttl),
                          c.str("path", ""), tuple(attributes))
    if kind == "connection_properties":
        cp = CONNECTION_PROPERTIES.read(f.value("connection_properties"), f.at("connection_properties"))
        if not cp.bool("source_ip", False):
            raise ConfigError(cp.at("source_ip"), "must be true (nothing else to hash on)")
        return HashPolicy("source_ip", "", terminal)
    q = QUERY_PARAMETER.read(f.value("query_parameter"), f.at("query_parameter"))
    name = q.str("name", required=True)
    if not name:
        raise ConfigError(q.at("name"), "must not be empty")
    return HashPolicy("query_parameter", name, terminal)


def _pseudo(head, name: str) -> bytes | None:
    if name == ":authority" or name == "host":
        return head.authority
    if name == ":path":
        return head.path
    if name == ":method":
        return head.method
    if name == ":scheme":
        return head.scheme
    return None


def _cookie(head, name: str) -> bytes | None:
    wanted = name.encode("latin-1")
    for value in head.headers.get_all(b"cookie"):
        for part in value.split(b";"):
            k, sep, v = part.strip().partition(b"=")
            if sep and k == wanted:
                if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                    v = v[1:-1]
                return v
    return None


def request_hash(policies: tuple[HashPolicy, ...], head, remote_ip: str, xxhash64,
                 add_cookie=None) -> int | None:
    """The request's hash (None: no policy found its input). `remote_ip`: the downstream
    address's IP; `xxhash64(data, seed)` the hash function (hashing_lb.xxhash64);
    `add_cookie(policy)`: the value of a cookie the response will set, for a cookie policy
    with a ttl whose cookie the request lacks (Envoy hashes that value)."""
    acc: int | None = None
    for p in policies:
        h = None
        kind = p.kind
        if kind == "header":
            if p.name.startswith(":") or p.name == "host":
                values = [v for v in (_pseudo(head, p.name),) if v]
            else:
                values = head.headers.get_all(p.name.encode("latin-1"))
            if values:
                h = 0
                for v in sorted(values):
                    h = xxhash64(v, h)
        elif kind == "cookie":
            v = _cookie(head, p.name)
            if v:
                h = xxhash64(v)
            elif p.ttl is not None and add_cookie is not None:
                h = xxhash64(add_cookie(p).encode())
        elif kind == "source_ip":
            if remote_ip:
                h = xxhash64(remote_ip.encode())
        else:
            v = parse_query(split_path(head.path_str)[1]).get(p.name)
            if v is not None:
                h = xxhash64(v.encode())
        if h is not None:
            old = ((acc << 1) | (acc >> 63)) & _MASK if acc is not None else 0
            acc = old ^ h
        if p.terminal and acc is not None:
            break
    return acc


def set_cookie_value(policy: HashPolicy, value: str) -> bytes:
    """The Set-Cookie header for a generated cookie, as Envoy writes it: the quoted value, a
    Max-Age unless the ttl is 0, the path, the attributes, HttpOnly."""
    parts = [f'{policy.name}="{value}"']
    if policy.ttl:
        parts.append(f"Max-Age={policy.ttl}")
    if policy.path:
        parts.append(f"Path={policy.path}")
    parts.extend(f"{n}={v}" if v else n for n, v in policy.attributes)
    parts.append("HttpOnly")
    return "; ".join(parts).encode("latin-1")
