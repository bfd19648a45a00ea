"""jwt_cache.py's time window: a cached token's `lo <= time.time() < hi` holds exactly when the
whole check would pass it at that time (jwt_verify.check_time with the provider's skew, the
cache's own 60 s expiry, max_lifetime), at and around every integer boundary."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

from proxy.http.filters import jwt_verify as jv
from proxy.http.filters.jwt_authn_config import JwtProvider
from proxy.http.filters.jwt_cache import CACHE_SKEW, CachedJwt, insert, lookup


def _jwt(nbf: int, exp: int) -> jv.Jwt:
    return jv.Jwt("RS256", "", {}, {}, b"h", b"p", b"s", "iss", "sub", (), 0, nbf, exp)


def _whole_check_passes(jwt: jv.Jwt, provider: JwtProvider, t: float) -> bool:
    now = int(t)
    if jwt.exp and now > jwt.exp + CACHE_SKEW:   # JwtCache::lookup drops it
        return False
    try:
        jv.check_time(jwt, now, provider.clock_skew_seconds)
    except jv.JwtError:
        return False
    lifetime = provider.max_lifetime
    return lifetime is None or bool(jwt.exp and jwt.exp - now < lifetime)


def test_the_window_is_the_whole_checks_verdict_at_every_boundary():
    base = 1_800_000_000
    for skew, lifetime, nbf_off, exp_off in itertools.product(
            (1, 60, 300), (None, math.inf, 30.0, 90.5), (None, -100, 0, 5), (None, -61, -1, 0, 2, 45)):
        provider = JwtProvider("p", clock_skew_seconds=skew, max_lifetime=lifetime, jwt_cache_size=1)
        nbf = 0 if nbf_off is None else base + nbf_off
        exp = 0 if exp_off is None else base + exp_off
        entry = CachedJwt(_jwt(nbf, exp), provider, frozenset(), ())
        edges = {nbf - skew, exp + skew, exp + CACHE_SKEW, base - 1000, base + 1000}
        if lifetime not in (None, math.inf):
            edges.add(math.floor(exp - lifetime))
        # (each edge and the seconds around it, on a clock after 1970)
        for second in {e + d - base for e in edges for d in (-2, -1, 0, 1, 2) if e + d >= 0}:
            for frac in (0.0, 0.5, 0.999999):
                t = base + second + frac
                assert (entry.lo <= t < entry.hi) == _whole_check_passes(entry.jwt, provider, t), \
                    (skew, lifetime, nbf_off, exp_off, second, frac)


def test_lookup_drops_a_token_expired_past_the_cache_skew_and_insert_keeps_the_bounds():
    provider = JwtProvider("p", jwt_cache_size=2, jwt_max_token_size=10)
    cache: OrderedDict = OrderedDict()
    insert(cache, provider, b"a", _jwt(0, 100), frozenset(), ())
    insert(cache, provider, b"b", _jwt(0, 0), frozenset(), ())
    insert(cache, provider, b"x" * 11, _jwt(0, 0), frozenset(), ())   # too long: not kept
    assert list(cache) == [b"a", b"b"]
    assert lookup(cache, b"a", 100 + CACHE_SKEW) is not None        # a hit moves it to the end
    assert list(cache) == [b"b", b"a"]
    insert(cache, provider, b"c", _jwt(0, 0), frozenset(), ())       # the oldest (b) goes
    assert list(cache) == [b"a", b"c"]
    assert lookup(cache, b"a", 101 + CACHE_SKEW) is None and list(cache) == [b"c"]
