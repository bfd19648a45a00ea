"""The internal redirect predicates (`envoy.internal_redirect_predicates.*`), as Envoy 1.40's:
each decides whether a redirect may lead to the route it matched (internal_redirect.py).

- `allow_listed_routes` (AllowListedRoutesConfig `allowed_route_names`, at least one): only to
  those routes (by name).
- `previous_routes` (PreviousRoutesConfig): not to a route this route's redirects of the same
  downstream request led to before (a loop A -> B -> A -> B stops at the second A -> B).
- `safe_cross_scheme` (SafeCrossSchemeConfig): no https target from an http request (an http
  target from an https request is fine); only meaningful with allow_cross_scheme_redirect.

`accept(state, current_route, target_route, downstream_is_https, target_is_https)`; `state`
is the request's RedirectState (the previous_routes predicate records its routes there).
Must not: do I/O. Thread affinity: the parsed predicates are immutable and shared; `state`
belongs to the worker of its request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

from .internal_redirect import PREDICATE_CATEGORY, RedirectState

__all__ = ["AllowListedRoutes", "PreviousRoutes", "SafeCrossScheme"]

_PREFIX = "envoy.extensions.internal_redirect."

ALLOW_LISTED_ROUTES = Message(_PREFIX + "allow_listed_routes.v3.AllowListedRoutesConfig",
                              title="internal redirect predicate allow_listed_routes", fields=(
    used("allowed_route_names", attr="allowed"),
))
PREVIOUS_ROUTES = Message(_PREFIX + "previous_routes.v3.PreviousRoutesConfig",
                          title="internal redirect predicate previous_routes", fields=())
SAFE_CROSS_SCHEME = Message(_PREFIX + "safe_cross_scheme.v3.SafeCrossSchemeConfig",
                            title="internal redirect predicate safe_cross_scheme", fields=())


class AllowListedRoutes:
    __slots__ = ("allowed",)

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed

    def accept(self, state: RedirectState, current_route: str, target_route: str,
               downstream_is_https: bool, target_is_https: bool) -> bool:
        return target_route in self.allowed


class PreviousRoutes:
    __slots__ = ()

    def accept(self, state: RedirectState, current_route: str, target_route: str,
               downstream_is_https: bool, target_is_https: bool) -> bool:
        seen = state.previous_routes.setdefault(current_route, set())
        if target_route in seen:
            return False
        seen.add(target_route)
        return True


class SafeCrossScheme:
    __slots__ = ()

    def accept(self, state: RedirectState, current_route: str, target_route: str,
               downstream_is_https: bool, target_is_https: bool) -> bool:
        return downstream_is_https or not target_is_https


def _parse_allow_listed(raw: Mapping[str, Any], path: str) -> AllowListedRoutes:
    f = ALLOW_LISTED_ROUTES.read(raw, path)
    names = []
    for name, npath in f.list("allowed_route_names", required=True, min_items=1):
        if not isinstance(name, str) or not name:
            raise ConfigError(npath, "expected a non-empty route name")
        names.append(name)
    return AllowListedRoutes(frozenset(names))


def _parse_previous_routes(raw: Mapping[str, Any], path: str) -> PreviousRoutes:
    PREVIOUS_ROUTES.read(raw, path)
    return PreviousRoutes()


def _parse_safe_cross_scheme(raw: Mapping[str, Any], path: str) -> SafeCrossScheme:
    SAFE_CROSS_SCHEME.read(raw, path)
    return SafeCrossScheme()


for _name, _table, _parse in (
        ("allow_listed_routes", ALLOW_LISTED_ROUTES, _parse_allow_listed),
        ("previous_routes", PREVIOUS_ROUTES, _parse_previous_routes),
        ("safe_cross_scheme", SAFE_CROSS_SCHEME, _parse_safe_cross_scheme)):
    register(Extension(category=PREDICATE_CATEGORY,
                       name="envoy.internal_redirect_predicates." + _name,
                       proto=_table.proto, parse=_parse))
