"""jwt_authn's cache of verified tokens (Envoy's JwtCache, `jwt_cache_config`) and the shortcut
it allows for the usual requirement.

A cache is an OrderedDict (LRU: a hit moves its token to the end, an insert past
`jwt_cache_size` drops the oldest) of token -> `CachedJwt`, one per provider and worker; it only
takes tokens up to `jwt_max_token_size` bytes. `lookup` is JwtCache::lookup: a token expired by
more than 60 s (jwt_verify_lib's default skew) is dropped and missed. A `CachedJwt` keeps with the
token what a later request needs worked out once (the time window its checks pass in, the
audiences it passed, the headers a good token adds), so that `Shortcut` (the usual requirement:
one provider at the root of its rule) can pass a cached token by one lookup and one time
comparison, with the whole check's outcome and effects (jwt_authn.py's decode_headers).

Pure: no I/O, no clock (the caller passes the time). A Shortcut is immutable and shared by the
workers; a cache and its entries belong to one worker (no lock: only its thread uses them).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from .jwt_authn_config import JwtProvider
from .jwt_verify import Jwt

__all__ = ["CACHE_SKEW", "CachedJwt", "Shortcut", "lookup", "insert"]

CACHE_SKEW = 60   # JwtCache::lookup drops a token expired by more than this


class CachedJwt:
    """A verified token in a provider's cache, with what a later request needs worked out
    once: `lo <= time.time() < hi` is the wall-clock window in which the provider's nbf / exp
    checks (its clock skew), the cache's own expiry (60 s) and max_lifetime all pass (the
    bounds are integers: `int(t) >= n` is `t >= n`); `audiences` the allowed set it passed
    (only the same set may skip the check); `adds` the payload and claim headers a good token
    adds, in order. The issuer and subject checks depend on the token and the provider alone (a
    provider's cache takes tokens of its own requirement nodes only, whose locations know only
    its issuer), so an entry passed them. Immutable once made."""

    __slots__ = ("jwt", "lo", "hi", "audiences", "adds")

    def __init__(self, jwt: Jwt, provider: JwtProvider, audiences: frozenset[str], adds: tuple) -> None:
        self.jwt = jwt
        self.audiences = audiences
        self.adds = adds
        skew = provider.clock_skew_seconds
        lo = jwt.nbf - skew                       # not "Jwt not yet valid": int(t) + skew >= nbf
        hi = math.inf
        if jwt.exp:                               # not expired: int(t) <= exp + skew (and + 60)
            hi = jwt.exp + min(skew, CACHE_SKEW) + 1
        lifetime = provider.max_lifetime
        if lifetime is not None:                  # exp - int(t) < max_lifetime
            if not jwt.exp:
                hi = -math.inf
            elif lifetime != math.inf:
                lo = max(lo, math.floor(jwt.exp - lifetime) + 1)
        # Floats, compared with time.time()'s (an int would be converted per request); a bound
        # near the clock is an integer far below 2**53, exact as a float.
        self.lo = float(lo)
        self.hi = float(hi)


def lookup(cache: OrderedDict[bytes, CachedJwt], token: bytes, now: int) -> Jwt | None:
    """JwtCache::lookup: the verified token, unless expired by more than 60 s (then dropped)."""
    entry = cache.get(token)
    if entry is None:
        return None
    jwt = entry.jwt
    if jwt.exp and now > jwt.exp + CACHE_SKEW:
        del cache[token]
        return None
    cache.move_to_end(token)
    return jwt


def insert(cache: OrderedDict[bytes, CachedJwt], provider: JwtProvider, token: bytes, jwt: Jwt,
           audiences: frozenset[str], adds: tuple) -> None:
    """JwtCache::insert of a token that just verified, within the provider's bounds."""
    if len(token) > provider.jwt_max_token_size:
        return
    cache[token] = CachedJwt(jwt, provider, audiences, adds)
    cache.move_to_end(token)
    while len(cache) > provider.jwt_cache_size:
        cache.popitem(last=False)


class Shortcut:
    """The usual requirement (one provider at the root of its rule, its verified tokens cached)
    as a cache lookup: the token from its one header location, looked up in this worker's cache
    of the provider; when the entry's time window holds the clock and it passed these same
    audiences, the request passes as the whole check would pass it. Anything else (no entry, a
    time check that would fail, a query or cookie that may carry another token, a header name
    twice) takes the whole check. Immutable, shared by the workers."""

    __slots__ = ("cache", "header", "prefix", "skip", "audiences", "forward", "params", "cookies")

    def __init__(self, provider: JwtProvider, audiences: frozenset[str], header: bytes, prefix: bytes,
                 params: bool, cookies: bool) -> None:
        self.cache = provider.name   # its cache's key in the worker's caches
        self.header = header
        self.prefix = prefix
        self.skip = len(prefix)
        self.audiences = audiences
        self.forward = provider.forward
        self.params = params
        self.cookies = cookies

    @classmethod
    def of(cls, provider: JwtProvider, audiences: frozenset[str] | None, extractor) -> Shortcut | None:
        """The shortcut for a root requirement of `provider` (`audiences`: its
        provider_and_audiences, else None) whose tokens `extractor` finds, or None when it asks
        for more than the shortcut does (then every request takes the whole check)."""
        locations = extractor.headers
        if not provider.jwt_cache_size or len(locations) != 1:
            return None
        if provider.header_in_metadata or provider.payload_in_metadata:
            return None
        if provider.clear_route_cache and provider.claim_to_headers:
            return None
        header, prefix, _ = locations[0]
        if header == provider.forward_payload_header or any(h == header for h, _ in
                                                            provider.claim_to_headers):
            return None   # a header the token came in and one it writes: the whole path's order
        return cls(provider, audiences if audiences is not None else provider.audiences, header, prefix,
                   bool(extractor.params), bool(extractor.cookies))
