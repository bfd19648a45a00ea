"""Router layer: route configuration model (`config.route.v3`), request matching, route
actions (cluster choice, rewrites, redirects, direct responses) and header mutations.

Everything here is pure: parse once on the main thread, share the immutable result with
every worker. Must not: do I/O on the request path, or import from network/http/upstream
layers above it (only `proxy.config` and `proxy.http.headers`).
"""

from .config import (DirectResponseAction, Route, RouteAction, RouteConfiguration,
                     VirtualHost, parse_route_configuration)
from .header_mutation import HeaderMutation, apply_mutations
from .matchers import HeaderMatcher, QueryParameterMatcher, RouteMatch, StringMatcher
from .redirect import RedirectAction
from .table import RouteTable

__all__ = [
    "parse_route_configuration", "RouteConfiguration", "VirtualHost", "Route", "RouteAction",
    "RedirectAction", "DirectResponseAction", "RouteTable", "HeaderMutation", "apply_mutations",
    "RouteMatch", "HeaderMatcher", "QueryParameterMatcher", "StringMatcher",
]
