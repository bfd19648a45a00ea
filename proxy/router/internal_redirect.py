"""Internal redirects (`envoy.config.route.v3.InternalRedirectPolicy`): the policy and the decision.

A route with a policy has the proxy follow an upstream's 3xx itself instead of passing it to
the client, as Envoy 1.40's router (`setupRedirect`, `convertRequestHeadersForInternalRedirect`):
- only for the policy's `redirect_response_codes` (default 302; codes other than 301, 302,
  303, 307 and 308 are ignored, as Envoy ignores them), and only for a request that ended with
  its body kept within the stream's buffer limit (the router's job);
- the `Location` must be an absolute URL (`scheme://host[:port][path]`): a relative one, an
  empty one or one that does not parse is passed through (`passthrough_internal_redirect_
  bad_location`); a missing one is passed through and counted only as the cluster's
  `upstream_internal_redirect_failed_total`;
- its scheme must be the request's unless `allow_cross_scheme_redirect` (`..._unsafe_scheme`);
- at most `max_internal_redirects` (default 1) per downstream request (`..._too_many_redirects`);
- the request then becomes `Location`'s scheme, host and path (its fragment dropped), with the
  `response_headers_to_copy` copied from the 3xx (a header absent from it is removed from the
  request), and is routed again: no route (`..._no_route`) or a predicate refusing the target
  route (`..._predicate`) passes the 3xx through, the request left as it was;
- a 303 turns a request other than GET or HEAD into a GET without body or content-length;
- the redirected request carries `x-envoy-original-url`: the request's scheme, host and path
  (as the upstream saw them, a path rewrite included) before this redirect.

The deprecated RouteAction fields `internal_redirect_action: HANDLE_INTERNAL_REDIRECT` and
`max_internal_redirects` make the same policy with its defaults (Envoy warns and honours them).
Predicates are extensions (category `internal_redirect_predicate`,
internal_redirect_predicates.py): `accept(state, current_route, target_route,
downstream_is_https, target_is_https) -> bool`.

Must not: do I/O or touch streams (the router applies the decision, the connection manager
recreates the stream). Thread affinity: the policy is parsed on the main thread and immutable;
a `RedirectState` belongs to one downstream request (its worker) across its recreated streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError, Fields, header_bytes
from proxy.config.registry import resolve

__all__ = ["InternalRedirectPolicy", "RedirectTarget", "RedirectState", "parse_internal_redirect_policy",
           "legacy_internal_redirect_policy", "parse_location", "plan_redirect", "accept_route",
           "copy_response_headers", "becomes_get", "original_url", "PREDICATE_CATEGORY"]

PREDICATE_CATEGORY = "internal_redirect_predicate"
_REDIRECT_CODES = frozenset((301, 302, 303, 307, 308))   # Envoy ignores any other listed code
_MAX_LISTED_CODES = 5                                     # the proto's max_items


@dataclass(frozen=True, slots=True)
class InternalRedirectPolicy:
    max_internal_redirects: int = 1
    redirect_response_codes: frozenset[int] = frozenset((302,))
    predicates: tuple[Any, ...] = ()          # parsed predicate extensions (accept(...))
    allow_cross_scheme_redirect: bool = False
    response_headers_to_copy: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RedirectTarget:
    """Where a Location sends the request: its scheme, host[:port] and path with query."""
    scheme: bytes
    authority: bytes
    path: bytes
    is_http: bool


@dataclass(slots=True)
class RedirectState:
    """One downstream request's redirects so far (Envoy's filter state `num_internal_redirects`
    and the previous_routes predicate's route sets): carried from a stream to the stream that
    replaces it. Owned by the worker of that request."""
    count: int = 0
    # previous_routes: per route whose policy asked, the target routes it redirected to.
    previous_routes: dict[str, set[str]] = field(default_factory=dict)


INTERNAL_REDIRECT_POLICY = Message("envoy.config.route.v3.InternalRedirectPolicy",
                                   model=InternalRedirectPolicy, fields=(
    used("max_internal_redirects", 1),
    used("redirect_response_codes", why="default 302; codes other than 301, 302, 303, 307 and "
         "308 are ignored, as Envoy ignores them"),
    used("predicates", why="extensions: allow_listed_routes, previous_routes, safe_cross_scheme"),
    used("allow_cross_scheme_redirect", False),
    used("response_headers_to_copy"),
))


def parse_internal_redirect_policy(raw: Any, path: str) -> InternalRedirectPolicy:
    """Validate an InternalRedirectPolicy found at JSON path `path`."""
    f = INTERNAL_REDIRECT_POLICY.read(raw, path)
    limit = _uint32(f, "max_internal_redirects", 1)
    listed = f.list("redirect_response_codes")
    if len(listed) > _MAX_LISTED_CODES:
        raise ConfigError(f.at("redirect_response_codes"),
                          f"at most {_MAX_LISTED_CODES} codes (Envoy's limit)")
    codes = set()
    for code, cpath in listed:
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < 2**32:
            raise ConfigError(cpath, "expected a status code")
        if code in _REDIRECT_CODES:
            codes.add(code)
    predicates = tuple(resolve(PREDICATE_CATEGORY, item, p)[1] for item, p in f.list("predicates"))
    copied = []
    for name, hpath in f.list("response_headers_to_copy"):
        if not isinstance(name, str) or not name:
            raise ConfigError(hpath, "expected a header name")
        name = name.lower()
        if name.startswith(":") or name == "host":
            raise ConfigError(hpath, ":-prefixed headers or Hosts may not be specified here")
        copied.append(header_bytes(name, hpath))
    return InternalRedirectPolicy(
        max_internal_redirects=limit,
        redirect_response_codes=frozenset(codes) if listed else frozenset((302,)),
        predicates=predicates,
        allow_cross_scheme_redirect=f.bool("allow_cross_scheme_redirect", False),
        response_headers_to_copy=tuple(copied),
    )


def legacy_internal_redirect_policy(f: Fields) -> InternalRedirectPolicy | None:
    """The deprecated RouteAction fields: `internal_redirect_action` HANDLE_INTERNAL_REDIRECT
    (else nothing is followed) with `max_internal_redirects` (default 1)."""
    action = f.enum("internal_redirect_action",
                    ("PASS_THROUGH_INTERNAL_REDIRECT", "HANDLE_INTERNAL_REDIRECT"),
                    "PASS_THROUGH_INTERNAL_REDIRECT")
    limit = _uint32(f, "max_internal_redirects", 1)
    if action != "HANDLE_INTERNAL_REDIRECT":
        return None
    return InternalRedirectPolicy(max_internal_redirects=limit)


def _uint32(f: Fields, name: str, default: int) -> int:
    """A UInt32Value: a number, or {"value": n} as some writers spell the wrapper."""
    value = f.value(name, None)
    if isinstance(value, dict):
        value = value.get("value", 0)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f.at(name), "expected an integer from 0 to 4294967295")
    return value


# -- the decision -------------------------------------------------------------------------------

def parse_location(value: bytes) -> RedirectTarget | None:
    """An absolute URL as Envoy's Http::Utility::Url accepts it: a scheme, `://`, a non-empty
    host (an `@` userinfo dropped), an optional numeric port, then the path (`/` when empty)
    with its query; its fragment dropped. None for anything else (a relative URL too)."""
    if any(b <= 0x20 or b >= 0x7f for b in value):
        return None
    scheme, sep, rest = value.partition(b"://")
    if not sep or not scheme or not scheme[:1].isalpha() or not all(
            c.isalnum() or c in b"+-." for c in (bytes([b]) for b in scheme)):
        return None
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    authority = authority.rpartition(b"@")[2]
    if authority.startswith(b"["):   # an IPv6 literal
        close = authority.find(b"]")
        host, port = authority[:close + 1], authority[close + 1:]
        if close < 0 or (port and not port.startswith(b":")):
            return None
        port = port[1:] if port else None
    else:
        host, colon, port = authority.partition(b":")
        port = port if colon else None
    if host in (b"", b"[]") or (port is not None and (not port.isdigit() or int(port) > 65535)):
        return None
    path = path.partition(b"#")[0]
    if not path.startswith(b"/"):
        path = b"/" + path
    scheme = scheme.lower()
    return RedirectTarget(scheme, authority, path, scheme == b"http")


def plan_redirect(policy: InternalRedirectPolicy, state: RedirectState | None, location: bytes | None,
                  downstream_is_http: bool) -> tuple[RedirectTarget | None, str | None]:
    """The target of a redirect the policy allows so far (before routing), or (None, the
    router stat `passthrough_internal_redirect_<reason>` to count, or None for none)."""
    if location is None:
        return None, None
    if not location:
        return None, "bad_location"
    target = parse_location(location)
    if target is None:
        return None, "bad_location"
    if not policy.allow_cross_scheme_redirect and target.is_http != downstream_is_http:
        return None, "unsafe_scheme"
    if (state.count if state is not None else 0) >= policy.max_internal_redirects:
        return None, "too_many_redirects"
    return target, None


def accept_route(policy: InternalRedirectPolicy, state: RedirectState, current_route: str,
                 target_route: str, downstream_is_http: bool, target_is_http: bool) -> bool:
    """Whether every predicate of the policy accepts the route the redirect leads to."""
    for predicate in policy.predicates:
        if not predicate.accept(state, current_route, target_route, not downstream_is_http,
                                not target_is_http):
            return False
    return True


def copy_response_headers(names: tuple[bytes, ...], response, request) -> None:
    """response_headers_to_copy: each named header of the 3xx replaces the request's; one the
    3xx lacks is removed from the request. `response` / `request`: Headers."""
    for name in names:
        values = response.get_all(name)
        request.remove(name)
        for value in values:
            request.add(name, value)


def becomes_get(status: int, method: bytes) -> bool:
    """RFC 7231 6.4.4, as Envoy: a 303 turns any request but GET and HEAD into a GET."""
    return status == 303 and method not in (b"GET", b"HEAD")


def original_url(downstream_is_http: bool, authority: bytes, path: bytes) -> bytes:
    """x-envoy-original-url: the request's URL before the redirect."""
    return (b"http://" if downstream_is_http else b"https://") + authority + path
