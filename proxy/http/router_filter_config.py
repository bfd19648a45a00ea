"""Config model of the router HTTP filter (`envoy.filters.http.router`).

Job: validate `envoy.extensions.filters.http.router.v3.Router` into an immutable
`RouterFilterConfig` and register the filter (name-only use allowed: the config may be empty).

Must not: do I/O or route requests (that is proxy/router and the router filter runtime).
Thread affinity: parsed on the main thread; the result is immutable and shared by workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register

__all__ = ["RouterFilterConfig", "parse_router_filter", "ROUTER_PROTO"]

ROUTER_PROTO = "envoy.extensions.filters.http.router.v3.Router"

# Headers `strict_check_headers` may name (Envoy's list; anything else is a config error).
_STRICT_CHECKABLE = (
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries", "x-envoy-retry-grpc-on", "x-envoy-retry-on",
)
_UNSUPPORTED = ("upstream_log", "upstream_log_options", "upstream_http_filters")


@dataclass(frozen=True, slots=True)
class RouterFilterConfig:
    # False: no upstream_rq_<code>/<class>xx/completed and no upstream_rq_time, as in Envoy.
    dynamic_stats: bool = True
    start_child_span: bool = False
    suppress_envoy_headers: bool = False
    strict_check_headers: tuple[str, ...] = ()
    respect_expected_rq_timeout: bool = False
    suppress_grpc_request_failure_code_stats: bool = False
    reject_connect_request_early_data: bool = False


def parse_router_filter(raw: Mapping[str, Any], path: str) -> RouterFilterConfig:
    f = Fields(raw, path, (
        "dynamic_stats", "start_child_span", "suppress_envoy_headers", "strict_check_headers",
        "respect_expected_rq_timeout", "suppress_grpc_request_failure_code_stats",
        "reject_connect_request_early_data", *_UNSUPPORTED))
    for key in _UNSUPPORTED:
        if f.has(key) and f.raw[key] not in ([], {}):
            raise ConfigError(f.at(key), "not supported yet")
    strict = []
    for (name, ipath) in f.list("strict_check_headers"):
        if not isinstance(name, str) or name.lower() not in _STRICT_CHECKABLE:
            raise ConfigError(ipath, f"unknown header {name!r}; expected one of {', '.join(_STRICT_CHECKABLE)}")
        strict.append(name.lower())
    return RouterFilterConfig(
        dynamic_stats=f.bool("dynamic_stats", True),
        start_child_span=f.bool("start_child_span", False),
        suppress_envoy_headers=f.bool("suppress_envoy_headers", False),
        strict_check_headers=tuple(strict),
        respect_expected_rq_timeout=f.bool("respect_expected_rq_timeout", False),
        suppress_grpc_request_failure_code_stats=f.bool("suppress_grpc_request_failure_code_stats", False),
        reject_connect_request_early_data=f.bool("reject_connect_request_early_data", False),
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
