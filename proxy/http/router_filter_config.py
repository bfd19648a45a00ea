"""Config model of the router HTTP filter (`envoy.filters.http.router`).

Job: validate `envoy.extensions.filters.http.router.v3.Router` into an immutable
`RouterFilterConfig` and register the filter (name-only use allowed: the config may be empty).
Every field is declared once in `ROUTER`: used, inert with the reason, or refused.

Must not: do I/O or route requests (that is proxy/router and the router filter runtime).
Thread affinity: parsed on the main thread; the result is immutable and shared by workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

__all__ = ["RouterFilterConfig", "parse_router_filter", "ROUTER_PROTO"]

ROUTER_PROTO = "envoy.extensions.filters.http.router.v3.Router"

# Headers `strict_check_headers` may name (Envoy's list; anything else is a config error).
_STRICT_CHECKABLE = (
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries", "x-envoy-retry-grpc-on", "x-envoy-retry-on",
)
@dataclass(frozen=True, slots=True)
class RouterFilterConfig:
    # False: no upstream_rq_<code>/<class>xx/completed and no upstream_rq_time, as in Envoy.
    dynamic_stats: bool = True
    suppress_envoy_headers: bool = False
    strict_check_headers: tuple[bytes, ...] = ()
    start_child_span: bool = False     # with HCM tracing: the upstream span (tracing/tracer.py)
    # An internal request's x-envoy-expected-rq-timeout-ms (an egress Envoy's) is its route
    # timeout (router/steering.py).
    respect_expected_rq_timeout: bool = False


ROUTER = Message(ROUTER_PROTO, title="Router filter", model=RouterFilterConfig, fields=(
    used("dynamic_stats", True),
    used("suppress_envoy_headers", False),
    used("strict_check_headers", why="an internal request's fields (an external request's are "
         "removed before the router sees them)"),
    used("respect_expected_rq_timeout", False, why="an internal request's (an external "
         "request's x-envoy-expected-rq-timeout-ms is removed before the router sees it)"),
    used("start_child_span", False, why="when the HCM traces: the router's upstream span, as "
         "the HCM tracing's spawn_upstream_span"),
    refused("suppress_grpc_request_failure_code_stats", "gRPC status stats", default=False,
            only_default=True),
    refused("reject_connect_request_early_data", "CONNECT tunnels", default=False,
            only_default=True),
    refused("upstream_log"),
    refused("upstream_log_options"),
    refused("upstream_http_filters"),
))


def parse_router_filter(raw: Mapping[str, Any], path: str) -> RouterFilterConfig:
    f = ROUTER.read(raw, path)
    strict = []
    for (name, ipath) in f.list("strict_check_headers"):
        if not isinstance(name, str) or name.lower() not in _STRICT_CHECKABLE:
            raise ConfigError(ipath, f"unknown header {name!r}; expected one of {', '.join(_STRICT_CHECKABLE)}")
        strict.append(name.lower().encode())
    for key in ("suppress_grpc_request_failure_code_stats", "reject_connect_request_early_data"):
        ROUTER.require_default(f, key, f.bool(key, False))
    return RouterFilterConfig(
        dynamic_stats=f.bool("dynamic_stats", True),
        suppress_envoy_headers=f.bool("suppress_envoy_headers", False),
        strict_check_headers=tuple(strict),
        start_child_span=f.bool("start_child_span", False),
        respect_expected_rq_timeout=f.bool("respect_expected_rq_timeout", False),
    )


register(Extension(
    category="http_filter",
    name="envoy.filters.http.router",
    proto=ROUTER_PROTO,
    parse=parse_router_filter,
    empty_config_ok=True,
    factory=lambda config, name: _router_factory(config, name),
))


def _router_factory(config: RouterFilterConfig, name: str):
    from .router_filter import RouterFactory  # the runtime; imported when a chain is built
    return RouterFactory(config, name)
