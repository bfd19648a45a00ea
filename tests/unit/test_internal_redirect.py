"""The internal redirect decision without I/O (proxy/router/internal_redirect.py) and its
predicates (internal_redirect_predicates.py)."""

from __future__ import annotations

import pytest

import proxy.extensions  # noqa: F401  (the predicates' catalogue rows)
from proxy.http.headers import Headers
from proxy.router.internal_redirect import (InternalRedirectPolicy, RedirectState, accept_route,
                                            becomes_get, copy_response_headers, original_url,
                                            parse_internal_redirect_policy, parse_location,
                                            plan_redirect)
from proxy.router.internal_redirect_predicates import AllowListedRoutes, PreviousRoutes, SafeCrossScheme


@pytest.mark.parametrize("location, want", [
    (b"http://a.example/p?q=1#frag", (b"http", b"a.example", b"/p?q=1", True)),
    (b"HTTPS://a.example:8443", (b"https", b"a.example:8443", b"/", False)),
    (b"http://user@a.example/x", (b"http", b"a.example", b"/x", True)),
    (b"http://[::1]:80/x", (b"http", b"[::1]:80", b"/x", True)),
    (b"http://a.example?x", (b"http", b"a.example", b"/?x", True)),
    (b"/relative", None), (b"a.example/x", None), (b"http://", None), (b"http://a:/x", None),
    (b"http://a:99999/", None), (b"http://a b/", None), (b"1http://a/", None),
])
def test_location_must_be_an_absolute_url(location, want):
    t = parse_location(location)
    assert (None if t is None else (t.scheme, t.authority, t.path, t.is_http)) == want


def test_plan_refuses_by_reason_in_envoys_order():
    policy = InternalRedirectPolicy(max_internal_redirects=1)
    state = RedirectState()
    assert plan_redirect(policy, state, None, True) == (None, None)
    assert plan_redirect(policy, state, b"", True) == (None, "bad_location")
    assert plan_redirect(policy, state, b"/x", True) == (None, "bad_location")
    assert plan_redirect(policy, state, b"https://a/x", True) == (None, "unsafe_scheme")
    assert plan_redirect(policy, state, b"http://a/x", False) == (None, "unsafe_scheme")
    target, reason = plan_redirect(policy, state, b"http://a/x", True)
    assert reason is None and target.path == b"/x"
    state.count = 1
    assert plan_redirect(policy, state, b"http://a/x", True) == (None, "too_many_redirects")
    cross = InternalRedirectPolicy(allow_cross_scheme_redirect=True)
    assert plan_redirect(cross, RedirectState(), b"https://a/x", True)[0].is_http is False


def test_predicates():
    state = RedirectState()
    prev = PreviousRoutes()
    assert prev.accept(state, "a", "b", False, False)
    assert prev.accept(state, "b", "a", False, False)
    assert not prev.accept(state, "a", "b", False, False)   # a -> b again
    assert AllowListedRoutes(frozenset({"b"})).accept(state, "a", "b", False, False)
    assert not AllowListedRoutes(frozenset({"b"})).accept(state, "a", "c", False, False)
    safe = SafeCrossScheme()
    assert safe.accept(state, "a", "b", True, False) and safe.accept(state, "a", "b", True, True)
    assert safe.accept(state, "a", "b", False, False) and not safe.accept(state, "a", "b", False, True)
    policy = InternalRedirectPolicy(predicates=(safe, AllowListedRoutes(frozenset({"b"}))))
    assert accept_route(policy, state, "a", "b", True, True)
    assert not accept_route(policy, state, "a", "b", True, False)


def test_headers_copied_replace_or_remove_and_303_makes_a_get():
    request = Headers([(b"x-a", b"old"), (b"x-b", b"gone"), (b"x-c", b"kept")])
    copy_response_headers((b"x-a", b"x-b"), Headers([(b"x-a", b"1"), (b"x-a", b"2")]), request)
    assert request.items() == [(b"x-c", b"kept"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert becomes_get(303, b"POST") and not becomes_get(303, b"HEAD") and not becomes_get(307, b"POST")
    assert original_url(False, b"h:1", b"/p?q") == b"https://h:1/p?q"


def test_policy_defaults_and_ignored_codes():
    p = parse_internal_redirect_policy({}, "p")
    assert (p.max_internal_redirects, p.redirect_response_codes) == (1, frozenset({302}))
    p = parse_internal_redirect_policy({"redirect_response_codes": [200, 307, 399],
                                        "max_internal_redirects": 0}, "p")
    assert (p.max_internal_redirects, p.redirect_response_codes) == (0, frozenset({307}))
