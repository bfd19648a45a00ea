"""Access-log filters (`envoy.config.accesslog.v3.AccessLogFilter`): which requests an access
log writes a line for, evaluated at the stream's end as Envoy does.

Filters: `status_code_filter` and `duration_filter` (a comparison: EQ, GE, LE, NE against a
`RuntimeUInt32`'s default value; duration in milliseconds from the request's start to its end),
`not_health_check_filter` (nothing here marks a request as a health check: it passes), 
`traceable_filter` (as Envoy: the request is traced and its trace reason is "service forced":
an incoming x-request-id that carries it, or an internal request's x-envoy-force-trace; an
external request's is removed), `runtime_filter` (`percent_sampled`, drawn from the request's
x-request-id as Envoy does unless `use_independent_randomness`), `and_filter`, `or_filter`,
`header_filter`, `response_flag_filter` (any of the listed flags, or any flag when none is
listed), `grpc_status_filter` (`statuses`, `exclude`; the status from grpc-status in the
trailers or headers, else mapped from the HTTP status), `log_type_filter` (the log ftproxy
writes is the one at the stream's or connection's end), `metadata_filter` (Envoy 1.40's
MetadataFilter: the `matcher`'s namespace and path looked up in the stream's dynamic metadata;
a value there is tested with the matcher's value matcher, its `invert` NOT applied, as Envoy
builds only the value matcher; no value there, or no `matcher`, gives `match_if_key_not_found`,
default true). `extension_filter` is refused.
Must not: do I/O. Thread affinity: immutable; evaluated on any worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, Fields
from proxy.config.runtime_values import ZERO_PERCENT, parse_fractional_percent
from proxy.router.matchers import parse_header_matcher
from proxy.router.metadata_matcher import ABSENT, lookup, parse_metadata_matcher

__all__ = ["LogFilter", "parse_log_filter", "RESPONSE_FLAGS"]

_P = "envoy.config.accesslog.v3"

# Envoy's response flags, short names (and their long names, accepted in response_flag_filter).
RESPONSE_FLAGS = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX",
                  "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE",
                  "NC", "OM", "DF", "DO", "DR")
_GRPC = ("OK", "CANCELED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
         "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
         "UNAUTHENTICATED")
# Envoy's Grpc::Utility::httpToGrpcStatus.
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_LOG_TYPES = ("NOT_SET", "TCP_UPSTREAM_CONNECTED", "TCP_PERIODIC", "TCP_CONNECTION_END",
              "DOWNSTREAM_START", "DOWNSTREAM_PERIODIC", "DOWNSTREAM_END", "UPSTREAM_POOL_READY",
              "UPSTREAM_PERIODIC", "UPSTREAM_END", "DOWNSTREAM_TUNNEL_SUCCESSFULLY_ESTABLISHED",
              "UDP_TUNNEL_UPSTREAM_CONNECTED", "UDP_PERIODIC", "UDP_SESSION_END")

_KINDS = ("status_code_filter", "duration_filter", "not_health_check_filter", "traceable_filter",
          "runtime_filter", "and_filter", "or_filter", "header_filter", "response_flag_filter",
          "grpc_status_filter", "log_type_filter", "metadata_filter")


@dataclass(frozen=True, slots=True)
class LogFilter:
    kind: str
    value: Any = None

    def passes(self, info: Any) -> bool:
        kind, value = self.kind, self.value
        if kind == "status_code_filter":
            return _compare(info.response_code or 0, value)
        if kind == "duration_filter":
            start, end = info.start_monotonic, info.end_monotonic
            ms = int((end - start) * 1000) if start is not None and end is not None else 0
            return _compare(ms, value)
        if kind == "not_health_check_filter":
            return True
        if kind == "traceable_filter":
            span = info.active_span  # proxy/tracing: reason 2 is SERVICE_FORCED
            return span is not None and span.reason == 2
        if kind == "runtime_filter":
            percent, independent = value
            return percent.enabled(lambda: _draw(info, independent))
        if kind == "and_filter":
            return all(f.passes(info) for f in value)
        if kind == "or_filter":
            return any(f.passes(info) for f in value)
        if kind == "header_filter":
            req = getattr(info, "request_headers", None)
            return req is not None and value.matches(req)
        if kind == "response_flag_filter":
            flags = info.response_flags
            return bool(flags) if not value else any(f in value for f in flags)
        if kind == "grpc_status_filter":
            statuses, exclude = value
            return (_grpc_status(info) in statuses) != exclude
        if kind == "metadata_filter":
            matcher, if_not_found = value
            if matcher is None:
                return if_not_found
            found = lookup(getattr(info, "dynamic_metadata", None), matcher.filter, matcher.path)
            return if_not_found if found is ABSENT else matcher.value.match(found)
        if kind == "log_type_filter":
            types, exclude = value
            end = "DOWNSTREAM_END" if getattr(info, "request_headers", None) is not None else "TCP_CONNECTION_END"
            return (end in types) != exclude
        raise AssertionError(kind)  # parsing admits only the kinds above


def _compare(actual: int, comparison: tuple[str, int]) -> bool:
    op, wanted = comparison
    if op == "EQ":
        return actual == wanted
    if op == "GE":
        return actual >= wanted
    if op == "LE":
        return actual <= wanted
    return actual != wanted  # NE


def _draw(info: Any, independent: bool) -> int:
    if not independent:
        req = getattr(info, "request_headers", None)
        rid = req.get_str("x-request-id") if req is not None else None
        if rid and len(rid) >= 8:
            try:
                return int(rid[:8], 16)  # Envoy's UUID extension: the first 32 bits
            except ValueError:
                pass
    return random.getrandbits(32)


def _grpc_status(info: Any) -> int:
    for fields in (getattr(info, "response_trailers", None), getattr(info, "response_headers", None)):
        value = _field(fields, b"grpc-status")
        if value is not None and value.isdigit():
            return int(value)
    return _HTTP_TO_GRPC.get(info.response_code or 0, 2)  # else UNKNOWN


def _field(fields: Any, name: bytes) -> bytes | None:
    if fields is None:
        return None
    headers = getattr(fields, "headers", fields)
    if hasattr(headers, "get"):
        return headers.get(name)
    for k, v in headers:
        if k == name:
            return v
    return None


FILTER = Message(f"{_P}.AccessLogFilter", model=LogFilter, bookkeeping=("kind",), fields=(
    *(used(k, attr="value") for k in _KINDS),
    refused("extension_filter", "access log filter extensions"),
))
COMPARISON = Message(f"{_P}.ComparisonFilter", fields=(used("op", "EQ", attr="value"), used("value", attr="value")))
RUNTIME_UINT32 = Message("envoy.config.core.v3.RuntimeUInt32 (access log)", fields=(
    used("default_value", attr="value"), used("runtime_key", attr="value", why="required; no runtime layer")))
STATUS_OR_DURATION = Message(f"{_P}.StatusCodeFilter / DurationFilter", fields=(used("comparison", attr="value"),))
RUNTIME = Message(f"{_P}.RuntimeFilter", fields=(
    used("runtime_key", attr="value", why="required; no runtime layer: percent_sampled applies"),
    used("percent_sampled", attr="value"),
    used("use_independent_randomness", False, attr="value"),
))
GROUP = Message(f"{_P}.AndFilter / OrFilter", fields=(used("filters", attr="value"),))
HEADER = Message(f"{_P}.HeaderFilter", fields=(used("header", attr="value"),))
FLAGS = Message(f"{_P}.ResponseFlagFilter", fields=(used("flags", attr="value"),))
GRPC = Message(f"{_P}.GrpcStatusFilter", fields=(used("statuses", attr="value"), used("exclude", False, attr="value")))
LOG_TYPE = Message(f"{_P}.LogTypeFilter", fields=(used("types", attr="value"), used("exclude", False, attr="value")))
METADATA = Message(f"{_P}.MetadataFilter", fields=(
    used("matcher", attr="value", why="its invert is not applied (Envoy 1.40)"),
    used("match_if_key_not_found", True, attr="value"),
))
EMPTY = Message(f"{_P}.NotHealthCheckFilter / TraceableFilter", fields=())


def parse_log_filter(raw: Any, path: str) -> LogFilter:
    f = FILTER.read(raw, path)
    kind = f.oneof(*_KINDS, required=True)
    at = f.at(kind)
    body = f.value(kind)
    if kind in ("status_code_filter", "duration_filter"):
        s = STATUS_OR_DURATION.read(body, at)
        c = COMPARISON.read(s.value("comparison", required=True), s.at("comparison"))
        r = RUNTIME_UINT32.read(c.value("value", required=True), c.at("value"))
        r.str("runtime_key", required=True)
        return LogFilter(kind, (c.enum("op", ("EQ", "GE", "LE", "NE"), "EQ"),
                                r.int("default_value", 0, min=0, max=2**32 - 1)))
    if kind in ("not_health_check_filter", "traceable_filter"):
        EMPTY.read(body, at)
        return LogFilter(kind)
    if kind == "runtime_filter":
        r = RUNTIME.read(body, at)
        if not r.str("runtime_key", required=True):
            raise ConfigError(r.at("runtime_key"), "must not be empty")
        percent = parse_fractional_percent(r.value("percent_sampled"), r.at("percent_sampled"),
                                           default=ZERO_PERCENT)
        return LogFilter(kind, (percent, r.bool("use_independent_randomness", False)))
    if kind in ("and_filter", "or_filter"):
        g = GROUP.read(body, at)
        return LogFilter(kind, tuple(parse_log_filter(item, p)
                                     for item, p in g.list("filters", required=True, min_items=2)))
    if kind == "header_filter":
        h = HEADER.read(body, at)
        return LogFilter(kind, parse_header_matcher(h.value("header", required=True), h.at("header")))
    if kind == "response_flag_filter":
        r = FLAGS.read(body, at)
        flags = r.strs("flags")
        for flag in flags:
            if flag not in RESPONSE_FLAGS:
                raise ConfigError(r.at("flags"), f"unknown response flag {flag!r}")
        return LogFilter(kind, frozenset(flags))
    if kind == "grpc_status_filter":
        g = GRPC.read(body, at)
        statuses = []
        for item, p in g.list("statuses"):
            name = Fields({"s": item}, p, ("s",)).enum("s", _GRPC)
            statuses.append(_GRPC.index(name))
        return LogFilter(kind, (frozenset(statuses), g.bool("exclude", False)))
    if kind == "metadata_filter":
        m = METADATA.read(body, at)
        matcher = (parse_metadata_matcher(m.value("matcher"), m.at("matcher"))
                   if m.has("matcher") else None)
        return LogFilter(kind, (matcher, m.bool("match_if_key_not_found", True)))
    t = LOG_TYPE.read(body, at)
    types = tuple(Fields({"t": item}, p, ("t",)).enum("t", _LOG_TYPES) for item, p in t.list("types"))
    return LogFilter(kind, (frozenset(types), t.bool("exclude", False)))
