"""OTLP trace encoding: finished spans into an
`opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`, as Envoy's OpenTelemetry
tracer fills it: one ResourceSpans (the resource's attributes: `service.name` and the
`telemetry.sdk.*` ones), one ScopeSpans (scope `envoy`), and per span its ids (bytes), W3C
tracestate, name, kind (SERVER 2 / CLIENT 3), times in nanoseconds, flags (0x100 "has
is-remote", 0x200 when its parent came from the request, 0x1 sampled), string attributes
(tags.py) and status ERROR (2) when the span is tagged `error`.

A server span is followed by its upstream (CLIENT) span when it has one.

Must not: do I/O or read clocks.
"""

from __future__ import annotations

from .protobuf_wire import fixed32, fixed64, length_delimited, string, uint, varint
from .span import SERVER
from .tags import request_attributes, upstream_attributes

__all__ = ["encode_export_request", "Resource", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"]

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_CODE_ERROR = 2
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200
_ERROR_STATUS = length_delimited(15, uint(3, STATUS_CODE_ERROR))


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 128 else varint(n)


def _key_value(key: str, value: str) -> bytes:
    """Span.attributes (field 9) KeyValue{key, value: AnyValue{string_value}}; an empty value
    is still an AnyValue with its string_value set (as Envoy's set_string_value(""))."""
    kb = key.encode("utf-8", "replace")
    vb = value.encode("utf-8", "replace")
    inner = b"".join((b"\x0a", _len(len(kb)), kb, b"\x12", _len(len(vb) + 1 + len(_len(len(vb)))),
                      b"\x0a", _len(len(vb)), vb))
    return b"".join((b"\x4a", _len(len(inner)), inner))


MAX_CACHED_ATTRIBUTES = 4096


_SMALL = [bytes([i]) for i in range(128)]


class Resource:
    """What every report carries once (computed at config load): the ResourceSpans' resource
    and scope, encoded; and a cache of encoded attributes (most repeat from span to span:
    `component`, the method, the cluster, ...), bounded to MAX_CACHED_ATTRIBUTES. Belongs to
    one exporter, on the main thread."""

    def __init__(self, attributes: list[tuple[str, str]], scope_name: str, scope_version: str,
                 node_id: str, zone: str) -> None:
        # Resource.attributes is field 1 (the KeyValue helper writes field 9: re-tag it).
        self.resource = length_delimited(1, b"".join(
            length_delimited(1, string(1, k) + length_delimited(2, length_delimited(
                1, v.encode("utf-8", "replace")))) for k, v in attributes))
        self.scope = length_delimited(1, string(1, scope_name) + string(2, scope_version))
        self.node_id = node_id
        self.zone = zone
        self.cache: dict[tuple[str, str], bytes] = {}


def _span(span, attributes: list[tuple[str, str]], cache: dict) -> bytes:
    start = span.start_us * 1000
    flags = FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if span.remote_parent else 0) | (1 if span.sampled else 0)
    out = [b"\x0a\x10", bytes.fromhex(span.trace_id.rjust(32, "0")),
           b"\x12\x08", bytes.fromhex(span.id), string(3, span.trace_state)]
    if span.parent_id is not None:
        out += (b"\x22\x08", bytes.fromhex(span.parent_id))
    out.append(string(5, span.name or ""))
    out.append(b"\x30\x02" if span.kind == SERVER else b"\x30\x03")
    out.append(fixed64(7, start))
    out.append(fixed64(8, start + span.duration_us * 1000))
    error = False
    for kv in attributes:
        enc = cache.get(kv)
        if enc is None:
            if len(cache) >= MAX_CACHED_ATTRIBUTES:
                cache.clear()
            enc = cache[kv] = _key_value(*kv)
        out.append(enc)
        if kv == ("error", "true"):
            error = True
    if error:
        out.append(_ERROR_STATUS)
    out.append(fixed32(16, flags))
    return length_delimited(2, b"".join(out))


def encode_export_request(spans, resource: Resource) -> bytes:
    """The ExportTraceServiceRequest for `spans` (finished, sampled server spans, each with
    its upstream span when it has one)."""
    parts = [resource.scope]
    for span in spans:
        if span.facts is not None:
            attrs = request_attributes(span.facts, resource.node_id, resource.zone)
        else:
            attrs = list(span.tags.items())
        parts.append(_span(span, attrs, resource.cache))
        child = span.child
        if child is not None and child.duration_us:
            parts.append(_span(child, upstream_attributes(child.facts) if child.facts is not None
                               else list(child.tags.items()), resource.cache))
    scope_spans = length_delimited(2, b"".join(parts))
    return length_delimited(1, resource.resource + scope_spans)
