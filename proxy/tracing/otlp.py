"""OTLP trace encoding: finished spans into an
`opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`, as Envoy's OpenTelemetry
tracer fills it: one ResourceSpans (the resource's attributes: `service.name` and the
`telemetry.sdk.*` ones), one ScopeSpans (scope `envoy`), and per span its ids (bytes), W3C
tracestate, name, kind (SERVER 2 / CLIENT 3), times in nanoseconds, flags (0x100 "has
is-remote", 0x200 when its parent came from the request, 0x1 sampled), string attributes
(tags.py) and status ERROR (2) when the span is tagged `error`.

A server span is followed by its upstream (CLIENT) span when it has one.

The attributes are what tags.request_attributes / upstream_attributes say, in their order.
Most repeat from span to span, so encodings are cached (per exporter, main thread, bounded):
each (key, value) pair's, and for a server span without custom tags (the usual one) the
whole run from `http.method` to `error`, keyed by the request facts it is made of, so such a
span costs two fresh attributes (`guid:x-request-id`, `http.url`) and a dict lookup
(`_request_attributes_fast`; tests/unit/test_otlp_encoding.py checks it writes exactly what
the general path writes).

Must not: do I/O or read clocks.
"""

from __future__ import annotations

import struct

from ..grpc.protobuf_wire import length_delimited, string, uint, varint
from .span import SERVER
from .tags import request_attributes, upstream_attributes

__all__ = ["encode_export_request", "Resource", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"]

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_CODE_ERROR = 2
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200
MAX_CACHED = 4096             # encodings kept per cache; past it the cache starts over
_ERROR_STATUS = length_delimited(15, uint(3, STATUS_CODE_ERROR))
_ERROR = ("error", "true")
_SMALL = [bytes([i]) for i in range(128)]
_TIMES = struct.Struct("<BQBQ").pack        # start (field 7) and end (field 8), fixed64
_FLAGS = struct.Struct("<I").pack           # field 16, fixed32 (tag 0x85 0x01)


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 128 else varint(n)


def _kv(kb: bytes, vb: bytes) -> bytes:
    """Span.attributes (field 9) KeyValue{key, value: AnyValue{string_value}} from UTF-8
    bytes; an empty value is still an AnyValue with its string_value set (as Envoy's
    set_string_value(""))."""
    any_len = len(vb) + 1 + len(_len(len(vb)))
    inner = b"".join((b"\x0a", _len(len(kb)), kb, b"\x12", _len(any_len), b"\x0a", _len(len(vb)), vb))
    return b"".join((b"\x4a", _len(len(inner)), inner))


def _key_value(key: str, value: str) -> bytes:
    return _kv(key.encode("utf-8", "replace"), value.encode("utf-8", "replace"))


def _header_kv(kb: bytes, raw: bytes) -> bytes:
    """A header's value (bytes, read as latin-1, as tags.py decodes it) as an attribute."""
    return _kv(kb, raw if raw.isascii() else raw.decode("latin-1").encode("utf-8", "replace"))


class Resource:
    """What every report carries once (computed at config load): the ResourceSpans' resource
    and scope, encoded; and the attribute caches. Belongs to one exporter, on the main
    thread."""

    def __init__(self, attributes: list[tuple[str, str]], scope_name: str, scope_version: str,
                 node_id: str, zone: str) -> None:
        # Resource.attributes is field 1 (_key_value writes Span's field 9: re-tagged here).
        self.resource = length_delimited(1, b"".join(
            b"\x0a" + _key_value(k, v)[1:] for k, v in attributes))
        self.scope = length_delimited(1, string(1, scope_name) + string(2, scope_version))
        self.node_id = node_id
        self.zone = zone
        self.node_zone = _key_value("node_id", node_id) + _key_value("zone", zone)
        self.cache: dict[tuple[str, str], bytes] = {}   # (key, value) -> encoding
        self.blocks: dict[tuple, bytes] = {}            # facts -> http.method ... error


def _span(span, attributes: bytes, error: bool) -> bytes:
    start = span.start_us * 1000
    flags = FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if span.remote_parent else 0) | (1 if span.sampled else 0)
    out = [b"\x0a\x10", bytes.fromhex(span.trace_id.rjust(32, "0")), b"\x12\x08", bytes.fromhex(span.id)]
    if span.trace_state:
        out.append(string(3, span.trace_state))
    if span.parent_id is not None:
        out += (b"\x22\x08", bytes.fromhex(span.parent_id))
    out += (string(5, span.name or ""), b"\x30\x02" if span.kind == SERVER else b"\x30\x03",
            _TIMES(0x39, start, 0x41, start + span.duration_us * 1000), attributes)
    if error:
        out.append(_ERROR_STATUS)
    out += (b"\x85\x01", _FLAGS(flags))
    return length_delimited(2, b"".join(out))


def _attributes(attributes: list[tuple[str, str]], cache: dict) -> bytes:
    """The general path: each (key, value) pair's encoding, cached."""
    get = cache.get
    encoded = [get(kv) for kv in attributes]
    if None in encoded:
        if len(cache) >= MAX_CACHED:
            cache.clear()
        for i, enc in enumerate(encoded):
            if enc is None:
                kv = attributes[i]
                encoded[i] = cache[kv] = _key_value(*kv)
    return b"".join(encoded)


def _request_attributes_fast(f, resource: Resource) -> bytes:
    """tags.request_attributes, encoded, for a request without custom tags."""
    get = dict(reversed(f.fields)).get
    out = [resource.node_zone]
    rid = get(b"x-request-id")
    if rid is not None:
        out.append(_header_kv(b"guid:x-request-id", rid))
    client = get(b"x-client-trace-id")
    if client is not None:
        out.append(_header_kv(b"guid:x-client-trace-id", client))
    path = get(b"x-envoy-original-path") or f.path
    out.append(_header_kv(b"http.url", get(b"x-forwarded-proto", b"") + b"://" + f.authority
                          + path[:f.config.max_path_tag_length]))
    key = (f.method, get(b"x-envoy-downstream-service-cluster"), get(b"user-agent"), f.protocol,
           f.peer, f.bytes_received, f.bytes_sent, f.cluster if f.host is not None else None,
           f.code, f.flags)
    blocks = resource.blocks
    block = blocks.get(key)
    if block is None:
        # The same pairs, in the same order, as tags.request_attributes writes them.
        method, downstream, agent, protocol, peer, received, sent, cluster, code, flags = key
        pairs = [("http.method", method.decode("latin-1")),
                 ("downstream_cluster", (downstream or b"-").decode("latin-1")),
                 ("user_agent", (agent or b"-").decode("latin-1")), ("http.protocol", protocol),
                 ("peer.address", peer), ("request_size", str(received)),
                 ("response_size", str(sent)), ("component", "proxy")]
        if cluster is not None:
            pairs += (("upstream_cluster", cluster), ("upstream_cluster.name", cluster))
        pairs += (("http.status_code", str(code or 0)), ("response_flags", ",".join(flags) or "-"))
        if not code or code >= 500:
            pairs.append(_ERROR)
        if len(blocks) >= MAX_CACHED:
            blocks.clear()
        block = blocks[key] = b"".join(_key_value(k, v) for k, v in pairs)
    out.append(block)
    return b"".join(out)


def encode_export_request(spans, resource: Resource) -> bytes:
    """The ExportTraceServiceRequest for `spans` (finished, sampled server spans, each with
    its upstream span when it has one)."""
    parts = [resource.scope]
    cache = resource.cache
    for span in spans:
        f = span.facts
        if f is None:
            attrs = list(span.tags.items())
            parts.append(_span(span, _attributes(attrs, cache), _ERROR in attrs))
        elif f.config.custom_tags or (f.route_tracing is not None and f.route_tracing.custom_tags):
            attrs = request_attributes(f, resource.node_id, resource.zone)
            parts.append(_span(span, _attributes(attrs, cache), _ERROR in attrs))
        else:
            parts.append(_span(span, _request_attributes_fast(f, resource),
                               not f.code or f.code >= 500))
        child = span.child
        if child is not None and child.duration_us:
            attrs = upstream_attributes(child.facts) if child.facts is not None else list(child.tags.items())
            parts.append(_span(child, _attributes(attrs, cache), _ERROR in attrs))
    scope_spans = length_delimited(2, b"".join(parts))
    return length_delimited(1, resource.resource + scope_spans)
