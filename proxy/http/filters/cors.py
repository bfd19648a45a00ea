"""`envoy.filters.http.cors`: CORS preflights answered by the proxy, CORS response headers.

Config: the filter's `envoy.extensions.filters.http.cors.v3.Cors` (no fields) and, per route,
virtual host or route configuration, `typed_per_filter_config` with a
`envoy.extensions.filters.http.cors.v3.CorsPolicy`: `allow_origin_string_match`,
`allow_methods`, `allow_headers`, `expose_headers`, `max_age`, `allow_credentials`,
`allow_private_network_access`, `forward_not_matching_preflights`, `filter_enabled` and
`shadow_enabled` (fractional percentages; their runtime keys are accepted: there is no
runtime layer). As Envoy's filter does, each field comes from the most specific policy that
sets it, and `filter_enabled` / `shadow_enabled` from the most specific policy.

Decode: a request with an Origin on a routed (not direct-response) route counts
`cors.origin_valid` or `cors.origin_invalid`; an OPTIONS with Access-Control-Request-Method
is a preflight, answered here with 200 and the policy's headers (details `cors_response`),
unless the origin is not allowed and `forward_not_matching_preflights` (default true) lets
it go upstream. Encode: the response to an allowed CORS request (local replies too) gets
access-control-allow-origin, -allow-credentials and -expose-headers.
Stats `http.<stat_prefix>.cors.{origin_valid,origin_invalid}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.runtime_values import (FractionalPercent, HUNDRED_PERCENT,
                                          parse_runtime_fractional_percent)
from ...config.fields_table import Message, used
from ...config.registry import Extension, register
from ...router.matchers import StringMatcher, parse_string_matcher
from ..filter import FilterHeadersStatus, PassThroughFilter
from ..headers import Headers, ResponseHead

__all__ = ["CorsPolicy", "parse_cors_policy", "CorsFilter"]

CORS_NAME = "envoy.filters.http.cors"
CORS_PROTO = "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_PROTO = "envoy.extensions.filters.http.cors.v3.CorsPolicy"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """One level's policy; a field left unset (empty, None) falls through to the next level."""
    allow_origins: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool | None = None
    allow_private_network_access: bool | None = None
    forward_not_matching_preflights: bool | None = None
    filter_enabled: FractionalPercent = HUNDRED_PERCENT
    shadow_enabled: FractionalPercent | None = None


CORS = Message(CORS_PROTO, title="HTTP filter cors", fields=())
CORS_POLICY = Message(CORS_POLICY_PROTO, model=CorsPolicy, fields=(
    used("allow_origin_string_match", attr="allow_origins"),
    used("allow_methods", ""),
    used("allow_headers", ""),
    used("expose_headers", ""),
    used("max_age", ""),
    used("allow_credentials"),
    used("allow_private_network_access"),
    used("forward_not_matching_preflights", True),
    used("filter_enabled", "100%", why="its default_value: there is no runtime layer"),
    used("shadow_enabled", why="its default_value: there is no runtime layer"),
))


def parse_cors_policy(raw: Mapping[str, Any], path: str) -> CorsPolicy:
    f = CORS_POLICY.read(raw, path)
    shadow = f.raw_obj("shadow_enabled")
    return CorsPolicy(
        allow_origins=tuple(parse_string_matcher(m, p)
                            for m, p in f.list("allow_origin_string_match")),
        allow_methods=f.str("allow_methods", ""),
        allow_headers=f.str("allow_headers", ""),
        expose_headers=f.str("expose_headers", ""),
        max_age=f.str("max_age", ""),
        allow_credentials=f.bool("allow_credentials", None),
        allow_private_network_access=f.bool("allow_private_network_access", None),
        forward_not_matching_preflights=f.bool("forward_not_matching_preflights", None),
        filter_enabled=parse_runtime_fractional_percent(f.raw_obj("filter_enabled"),
                                                        f.at("filter_enabled")),
        shadow_enabled=(parse_runtime_fractional_percent(shadow, f.at("shadow_enabled"))
                        if shadow is not None else None),
    )


def parse_cors(raw: Mapping[str, Any], path: str) -> None:
    CORS.read(raw, path)  # envoy.extensions.filters.http.cors.v3.Cors has no fields
    return None


class CorsFactory:
    def __init__(self, config: None, name: str) -> None:
        self.name = name

    def for_worker(self, ctx) -> WorkerCorsFactory:
        return WorkerCorsFactory(self.name, ctx)


class WorkerCorsFactory:
    decoder = True
    encoder = True

    def __init__(self, name: str, ctx) -> None:
        self.name = name
        self.worker = ctx.worker
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.cors")
        self.origin_valid = scope.counter("origin_valid")
        self.origin_invalid = scope.counter("origin_invalid")

    def create(self, callbacks) -> CorsFilter:
        return CorsFilter(callbacks, self)


def _first(values, unset) -> Any:
    """The first of `values` (one per policy, most specific first) that is set."""
    for value in values:
        if value != unset:
            return value
    return unset


class CorsFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf", "policies", "origin", "is_cors")

    def __init__(self, callbacks, wf: WorkerCorsFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.policies = ()
        self.origin = None      # the allowed Origin, latched for the response
        self.is_cors = False

    def _draw(self, percentage: FractionalPercent | None) -> bool:
        return percentage is not None and percentage.enabled(self.wf.worker.rand_bits)

    def decode_headers(self, head, end_stream: bool) -> int:
        cb = self.cb
        route = cb.route()
        if route is None or route.action is None:
            return FilterHeadersStatus.CONTINUE
        policies = self.policies = cb.all_per_filter_configs(self.wf.name)
        if not policies:
            return FilterHeadersStatus.CONTINUE
        enabled = self._draw(policies[0].filter_enabled)
        if not enabled and not self._draw(policies[0].shadow_enabled):
            return FilterHeadersStatus.CONTINUE
        headers = head.headers
        origin = headers.get(b"origin")
        if not origin:
            return FilterHeadersStatus.CONTINUE
        allowed = self._origin_allowed(origin.decode("latin-1"))
        if allowed:
            self.wf.origin_valid.value += 1
            self.origin = origin
        else:
            self.wf.origin_invalid.value += 1
        if not enabled:  # shadow mode: count only
            return FilterHeadersStatus.CONTINUE
        self.is_cors = True
        request_method = headers.get(b"access-control-request-method")
        if head.method != b"OPTIONS" or not request_method:
            return FilterHeadersStatus.CONTINUE
        if not allowed and _first((p.forward_not_matching_preflights for p in policies),
                                  None) is not False:
            return FilterHeadersStatus.CONTINUE
        self._answer_preflight(headers, origin if allowed else None, request_method)
        return FilterHeadersStatus.STOP_ITERATION

    def _origin_allowed(self, origin: str) -> bool:
        for matcher in _first((p.allow_origins for p in self.policies), ()):
            if matcher.match("*") or matcher.match(origin):
                return True
        return False

    def _answer_preflight(self, headers: Headers, origin: bytes | None,
                          request_method: bytes) -> None:
        policies = self.policies
        out = Headers()
        if origin is not None:
            out.add(b"access-control-allow-origin", origin)
        if _first((p.allow_credentials for p in policies), None):
            out.add(b"access-control-allow-credentials", b"true")
        methods = _first((p.allow_methods for p in policies), "")
        if methods:
            out.add(b"access-control-allow-methods",
                    request_method if methods == "*" else methods.encode("latin-1"))
        allow_headers = _first((p.allow_headers for p in policies), "")
        if allow_headers:
            out.add(b"access-control-allow-headers",
                    (headers.get(b"access-control-request-headers") or b"")
                    if allow_headers == "*" else allow_headers.encode("latin-1"))
        max_age = _first((p.max_age for p in policies), "")
        if max_age:
            out.add(b"access-control-max-age", max_age.encode("latin-1"))
        if (_first((p.allow_private_network_access for p in policies), None)
                and headers.get(b"access-control-request-private-network") == b"true"):
            out.add(b"access-control-allow-private-network", b"true")
        cb = self.cb
        cb.stream_info.response_code_details = "cors_response"
        cb.encode_headers(ResponseHead(200, out), True)

    def encode_headers(self, head, end_stream: bool) -> int:
        if not self.is_cors or self.origin is None:
            return FilterHeadersStatus.CONTINUE
        headers = head.headers
        headers.set(b"access-control-allow-origin", self.origin)
        if _first((p.allow_credentials for p in self.policies), None):
            headers.set(b"access-control-allow-credentials", b"true")
        expose = _first((p.expose_headers for p in self.policies), "")
        if expose:
            headers.set(b"access-control-expose-headers", expose.encode("latin-1"))
        return FilterHeadersStatus.CONTINUE


register(Extension(
    category="http_filter",
    name=CORS_NAME,
    proto=CORS_PROTO,
    parse=parse_cors,
    empty_config_ok=True,
    factory=CorsFactory,
    per_route_proto=CORS_POLICY_PROTO,
    parse_per_route=parse_cors_policy,
))
