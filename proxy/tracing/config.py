"""Config model of HTTP tracing: the HCM's `tracing` (HttpConnectionManager.Tracing), a
route's `tracing` (config.route.v3.Tracing), its `decorator`, custom tags and the Zipkin
provider (`envoy.tracers.zipkin`, config.trace.v3.ZipkinConfig); the OpenTelemetry provider's
is otel_config.py.

Sampling percentages are kept as Envoy keeps them: the HCM's `type.v3.Percent` values become
numerators over 10,000 (Envoy rounds `value / 100 * 10000`), a route's FractionalPercents stay
as written; `Sampling.enabled(n)` is Envoy's `featureEnabled(percent, n)`: n % denominator <
numerator.

Must not: do I/O (an `environment` custom tag reads the process environment once, here, as
Envoy reads it at config load) or build runtime objects. Thread affinity: parsed on the main
thread; everything here is immutable and shared by every worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, refused, used
from ..config.reader import ConfigError, Fields
from ..config.registry import Extension, register, resolve

__all__ = ["Sampling", "CustomTag", "ZipkinConfig", "TracingConfig", "RouteTracing", "Decorator",
           "parse_tracing", "parse_route_tracing", "parse_decorator", "ZIPKIN_NAME"]

ZIPKIN_NAME = "envoy.tracers.zipkin"
ZIPKIN_PROTO = "envoy.config.trace.v3.ZipkinConfig"
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


@dataclass(frozen=True, slots=True)
class Sampling:
    """A sampling percentage: `numerator` over `denominator`."""
    numerator: int
    denominator: int

    def enabled(self, value: int) -> bool:
        """Envoy's featureEnabled(percent, value): value % denominator < numerator."""
        return value % self.denominator < self.numerator


ALL = Sampling(10_000, 10_000)
ALL_ROUTE = Sampling(100, 100)


@dataclass(frozen=True, slots=True)
class CustomTag:
    """`type.tracing.v3.CustomTag`: a literal value (or an environment variable's, read at
    load), or a request header's value with a default."""
    tag: str
    value: str = ""              # literal / environment (resolved) / the header's default
    header: bytes | None = None  # request_header: the header's name (lower case)


@dataclass(frozen=True, slots=True)
class ZipkinConfig:
    collector_cluster: str
    collector_endpoint: str
    collector_hostname: str = ""        # the collector request's Host (default: the cluster)
    trace_id_128bit: bool = False
    shared_span_context: bool = True


@dataclass(frozen=True, slots=True)
class TracingConfig:
    provider: Any                        # ZipkinConfig or otel_config.OpenTelemetryConfig
    random_sampling: Sampling = ALL
    client_sampling: Sampling = ALL
    overall_sampling: Sampling = ALL
    custom_tags: tuple[CustomTag, ...] = ()
    max_path_tag_length: int = 256
    spawn_upstream_span: bool = False


@dataclass(frozen=True, slots=True)
class RouteTracing:
    """A route's `tracing`: its samplings replace the HCM's (each 100 % when unset, as
    Envoy's RouteTracingImpl); its custom tags are added to the HCM's."""
    client_sampling: Sampling = ALL_ROUTE
    random_sampling: Sampling = ALL_ROUTE
    overall_sampling: Sampling = ALL_ROUTE
    custom_tags: tuple[CustomTag, ...] = ()


@dataclass(frozen=True, slots=True)
class Decorator:
    """A route's `decorator`: the span's operation name, propagated to the upstream (egress)
    or the downstream (ingress) as x-envoy-decorator-operation unless `propagate` is false."""
    operation: str
    propagate: bool = True


_PERCENT = "envoy.type.v3.Percent"

TRACING = Message("envoy.extensions.filters.network.http_connection_manager.v3"
                  ".HttpConnectionManager.Tracing", title="HTTP tracing", model=TracingConfig,
                  fields=(
    used("provider"),
    used("random_sampling", "100"),
    used("client_sampling", "100"),
    used("overall_sampling", "100"),
    used("custom_tags"),
    used("max_path_tag_length", 256),
    used("spawn_upstream_span", False),
    refused("verbose", "only false: no per-filter annotations on spans", default=False,
            only_default=True),
))

ROUTE_TRACING = Message("envoy.config.route.v3.Tracing", title="Route tracing", model=RouteTracing,
                        fields=(
    used("client_sampling", "100%"),
    used("random_sampling", "100%"),
    used("overall_sampling", "100%"),
    used("custom_tags"),
))

DECORATOR = Message("envoy.config.route.v3.Decorator", model=Decorator, fields=(
    used("operation"),
    used("propagate", True),
))

CUSTOM_TAG = Message("envoy.type.tracing.v3.CustomTag", model=CustomTag, fields=(
    used("tag"),
    used("literal", attr="value"),
    used("environment", attr="value"),
    used("request_header", attr="header"),
    refused("metadata", "span tags from metadata"),
    refused("value", "span tags from a substitution format string"),
))

ZIPKIN = Message(ZIPKIN_PROTO, title="Zipkin tracer", model=ZipkinConfig, fields=(
    used("collector_cluster"),
    used("collector_endpoint"),
    used("collector_hostname", ""),
    used("trace_id_128bit", False),
    used("shared_span_context", True),
    used("collector_endpoint_version", attr="",
         why="required, as Envoy 1.40 requires it: HTTP_JSON (Zipkin's JSON v2) only, "
             "HTTP_PROTO and GRPC are refused by path"),
    refused("collector_service", "use collector_cluster and collector_endpoint"),
    refused("split_spans_for_request", "only false", default=False, only_default=True),
    refused("trace_context_option", "only USE_B3: B3 headers, no W3C traceparent",
            default="USE_B3", only_default=True),
    refused("timestamp_trace_ids", "only false", default=False, only_default=True),
))


def parse_tracing(raw: Mapping[str, Any], path: str) -> TracingConfig:
    f = TRACING.read(raw, path)
    TRACING.require_default(f, "verbose", f.bool("verbose", False))
    if not f.has("provider"):
        raise ConfigError(f.at("provider"), "is required (ftproxy has no bootstrap-level tracing)")
    _, provider = resolve("tracer", f.raw_obj("provider"), f.at("provider"))
    return TracingConfig(
        provider=provider,
        random_sampling=_percent(f, "random_sampling"),
        client_sampling=_percent(f, "client_sampling"),
        overall_sampling=_percent(f, "overall_sampling"),
        custom_tags=_custom_tags(f),
        max_path_tag_length=f.int("max_path_tag_length", 256, min=0, max=2**32 - 1),
        spawn_upstream_span=f.bool("spawn_upstream_span", False),
    )


def parse_route_tracing(raw: Mapping[str, Any] | None, path: str) -> RouteTracing | None:
    if raw is None:
        return None
    f = ROUTE_TRACING.read(raw, path)
    return RouteTracing(
        client_sampling=_fractional(f, "client_sampling"),
        random_sampling=_fractional(f, "random_sampling"),
        overall_sampling=_fractional(f, "overall_sampling"),
        custom_tags=_custom_tags(f),
    )


def parse_decorator(raw: Mapping[str, Any] | None, path: str) -> Decorator | None:
    if raw is None:
        return None
    f = DECORATOR.read(raw, path)
    operation = f.str("operation", required=True)
    if not operation:
        raise ConfigError(f.at("operation"), "must not be empty (as Envoy's min_len 1)")
    return Decorator(operation, f.bool("propagate", True))


def _percent(f: Fields, name: str) -> Sampling:
    """A `type.v3.Percent` ({value: 0..100}) as Envoy keeps it: rounded over 10,000."""
    raw = f.raw_obj(name)
    if raw is None:
        return ALL
    p = Fields(raw, f.at(name), ("value",))
    value = p.float("value", 0.0)
    if not 0.0 <= value <= 100.0:
        raise ConfigError(p.at("value"), "must be within [0, 100]")
    return Sampling(round(value / 100.0 * 10_000), 10_000)


def _fractional(f: Fields, name: str) -> Sampling:
    raw = f.raw_obj(name)
    if raw is None:
        return ALL_ROUTE
    p = Fields(raw, f.at(name), ("numerator", "denominator"))
    numerator = p.int("numerator", 0, min=0, max=2**32 - 1)
    denominator = _DENOMINATORS[p.enum("denominator", tuple(_DENOMINATORS), "HUNDRED")]
    return Sampling(numerator, denominator)


def _custom_tags(f: Fields) -> tuple[CustomTag, ...]:
    out = []
    for item, path in f.list("custom_tags"):
        t = CUSTOM_TAG.read(item, path)
        tag = t.str("tag", required=True)
        if not tag:
            raise ConfigError(t.at("tag"), "must not be empty")
        kinds = [k for k in ("literal", "environment", "request_header") if t.has(k)]
        if len(kinds) != 1:
            raise ConfigError(path, "exactly one of literal, environment, request_header is required")
        kind = kinds[0]
        body = Fields(t.raw_obj(kind) or {}, t.at(kind),
                      ("value",) if kind == "literal" else ("name", "default_value"))
        if kind == "literal":
            out.append(CustomTag(tag, body.str("value", required=True)))
            continue
        name = body.str("name", required=True)
        if not name:
            raise ConfigError(body.at("name"), "must not be empty")
        default = body.str("default_value", "")
        if kind == "environment":
            out.append(CustomTag(tag, os.environ.get(name, default)))
        else:
            out.append(CustomTag(tag, default, name.lower().encode()))
    return tuple(out)


def parse_zipkin(raw: Mapping[str, Any], path: str) -> ZipkinConfig:
    f = ZIPKIN.read(raw, path, extra=("@type",))
    for name in ("split_spans_for_request", "timestamp_trace_ids"):
        ZIPKIN.require_default(f, name, f.bool(name, False))
    ZIPKIN.require_default(f, "trace_context_option",
                           f.enum("trace_context_option", ("USE_B3", "USE_B3_WITH_W3C_PROPAGATION"),
                                  "USE_B3"))
    cluster = f.str("collector_cluster", required=True)
    endpoint = f.str("collector_endpoint", required=True)
    if not cluster:
        raise ConfigError(f.at("collector_cluster"), "must not be empty")
    if not endpoint.startswith("/"):
        raise ConfigError(f.at("collector_endpoint"), "must be a path beginning with /")
    version = f.enum("collector_endpoint_version",
                     ("DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", "HTTP_JSON", "HTTP_PROTO", "GRPC"),
                     "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE")
    if version == "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE":
        # proto3's unset value: Envoy 1.40 refuses it ("a non-default value must now be
        # explicitly set").
        raise ConfigError(f.at("collector_endpoint_version"),
                          "must be set (HTTP_JSON): Envoy refuses the deprecated default "
                          "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE")
    if version != "HTTP_JSON":
        raise ConfigError(f.at("collector_endpoint_version"),
                          f"not supported yet ({version}: only HTTP_JSON, Zipkin's JSON v2)")
    return ZipkinConfig(
        collector_cluster=cluster,
        collector_endpoint=endpoint,
        collector_hostname=f.str("collector_hostname", "") or "",
        trace_id_128bit=f.bool("trace_id_128bit", False),
        shared_span_context=_bool_value(f, "shared_span_context", True),
    )


def _bool_value(f: Fields, name: str, default: bool) -> bool:
    """A google.protobuf.BoolValue: a bare bool, or {value: bool}."""
    v = f.value(name, None)
    if isinstance(v, Mapping):
        return Fields(v, f.at(name), ("value",)).bool("value", False)
    return f.bool(name, default)


register(Extension(category="tracer", name=ZIPKIN_NAME, proto=ZIPKIN_PROTO, parse=parse_zipkin))

# The other providers: registering them is importing them.
from . import otel_config  # noqa: E402,F401  (envoy.tracers.opentelemetry)
from . import skywalking_config  # noqa: E402,F401  (envoy.tracers.skywalking)
