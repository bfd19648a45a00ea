"""SkyWalking trace segments: the span a request gets under `envoy.tracers.skywalking` and the
`skywalking.v3.SegmentObject` it becomes, as Envoy's SkyWalking tracer (and its cpp2sky
library) builds them.

A request's segment (`SegmentSpan`, made on the worker by tracer.py):
- its trace id (the caller's, from `sw8`, else a new UUID) and its own segment id (a UUID);
- span 0, the Entry span: operation name the downstream request's `:path` (query included, as
  Envoy: the route decorator does not rename SkyWalking spans), peer the downstream address,
  a CrossProcess reference to the caller's segment when the request carried a valid `sw8`;
- span 1, the Exit span (only with the router's upstream span: `start_child_span` or
  `spawn_upstream_span`), child of span 0: operation name the upstream request's path, peer the
  upstream host's `ip:port`. Only an Exit span propagates: `sw8` goes upstream when the router
  has picked the host (`inject_upstream`, called by the router), its target address that host.
  Without an Exit span nothing is injected (an incoming `sw8` passes on unchanged), as cpp2sky's
  createSW8HeaderValue answers nothing for an Entry span.

Every span: layer Http (3), component 9000 (Envoy's), times in milliseconds, Envoy's tags
(tags.py) with three of them moved as Envoy's SkyWalking span moves them: `http.url` is sent
as `url`, `http.status_code` as `status_code`, `peer.address` becomes the span's peer; `error`
also sets isError.

`encode_segment` (main thread) writes the SegmentObject by hand (proxy/grpc/protobuf_wire.py),
fields in number order as protobuf serializes them.

Must not: do I/O or read clocks; a SegmentSpan belongs to its request's worker until finished.
"""

from __future__ import annotations

from ..grpc.protobuf_wire import length_delimited, varint
from .span import CLIENT, SERVER, Span
from .sw8 import SW8, Reference
from .sw8 import encode as sw8_encode
from .tags import request_attributes, upstream_attributes

__all__ = ["SegmentSpan", "encode_segment", "COMPONENT_ID", "LAYER_HTTP"]

COMPONENT_ID = 9000     # Envoy's component id ("for historical reason", cpp2sky)
LAYER_HTTP = 3
SPAN_TYPE_EXIT = 1
_RENAMED = {"http.url": "url", "http.status_code": "status_code"}
_ERROR = ("error", "true")


class SegmentSpan(Span):
    """A request's segment: its Entry span (this object) and its Exit span (`child`)."""

    late_inject = True          # the router calls inject_upstream once it has a host
    ref: Reference | None = None
    operation = b""             # the Entry span's operation name: the downstream :path
    names = (b"", b"")          # this tracer's service and instance, base64 (for sw8)

    def inject_upstream(self, head, host: str) -> None:
        """The upstream request is about to go to `host` ("ip:port"): the Exit span takes the
        upstream path as its name and its context goes upstream in `sw8`."""
        child = self.child
        if child is None:
            return
        child.operation = head.path
        service, instance = self.names
        head.headers.set(SW8, sw8_encode(self.trace_id.encode("latin-1"),
                                         self.id.encode("latin-1"), service, instance,
                                         self.operation, host.encode("latin-1")))

    def exit_span(self) -> Span:
        child = Span(self.trace_id, self.id, self.id, True, "", CLIENT, 0)
        child.operation = self.operation  # Envoy: the parent's name until injectContext
        return child


# -- encoding (main thread) ------------------------------------------------------------------

def _int32(field: int, n: int) -> bytes:
    """An int32 field; negative values as protobuf writes them (ten-byte two's complement)."""
    if not n:
        return b""
    return varint(field << 3) + varint(n & 0xFFFF_FFFF_FFFF_FFFF)


def _bytes(field: int, data: bytes) -> bytes:
    return length_delimited(field, data) if data else b""


def _text(field: int, text: str) -> bytes:
    return length_delimited(field, text.encode("utf-8", "replace")) if text else b""


def _tags(pairs: list[tuple[str, str]]) -> tuple[bytes, str, bool]:
    """(the tags field 12 entries, the peer, isError) from Envoy's tags in order."""
    out = []
    peer = ""
    error = False
    for key, value in pairs:
        if key == "peer.address":
            peer = value
            continue
        if (key, value) == _ERROR:
            error = True
        kv = _text(1, _RENAMED.get(key, key)) + _text(2, value)
        out.append(length_delimited(12, kv))
    return b"".join(out), peer, error


def _reference(ref: Reference) -> bytes:
    """The Entry span's SegmentReference (refType CrossProcess, 0, not written)."""
    return length_delimited(5, b"".join((
        _bytes(2, ref.trace_id), _bytes(3, ref.segment_id), _int32(4, ref.span_id),
        _bytes(5, ref.service), _bytes(6, ref.instance), _bytes(7, ref.endpoint),
        _bytes(8, ref.target))))


def _span(span_id: int, parent: int, start_ms: int, end_ms: int, ref: Reference | None,
          operation: bytes, pairs: list, kind: str) -> bytes:
    tags, peer, error = _tags(pairs)
    out = [_int32(1, span_id), _int32(2, parent), _int32(3, start_ms), _int32(4, end_ms)]
    if ref is not None:
        out.append(_reference(ref))
    out += (_bytes(6, operation), _text(7, peer),
            b"" if kind == SERVER else varint(8 << 3) + varint(SPAN_TYPE_EXIT),
            varint(9 << 3) + varint(LAYER_HTTP), varint(10 << 3) + varint(COMPONENT_ID),
            b"\x58\x01" if error else b"", tags)
    return length_delimited(3, b"".join(out))


def encode_segment(span: SegmentSpan, service: bytes, instance: bytes, node_id: str,
                   zone: str) -> bytes:
    """The SegmentObject of a finished request's segment."""
    start = span.start_us // 1000
    end = (span.start_us + span.duration_us) // 1000
    f = span.facts
    pairs = request_attributes(f, node_id, zone) if f is not None else list(span.tags.items())
    parts = [_text(1, span.trace_id), _text(2, span.id),
             _span(0, -1, start, end, span.ref, span.operation, pairs, SERVER)]
    child = span.child
    if child is not None and child.duration_us:
        cstart = child.start_us // 1000
        cpairs = upstream_attributes(child.facts) if child.facts is not None else list(child.tags.items())
        parts.append(_span(1, 0, cstart, (child.start_us + child.duration_us) // 1000, None,
                           child.operation, cpairs, CLIENT))
    parts += (_bytes(4, service), _bytes(5, instance))
    return b"".join(parts)
