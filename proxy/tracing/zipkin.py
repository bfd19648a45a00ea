"""Zipkin's span model, B3 propagation and JSON v2 encoding, as Envoy's zipkin tracer
(source/extensions/tracers/zipkin) does them.

- Extraction: a `b3` single header wins over the `x-b3-*` multi headers. The sampled flag is
  read from `b3` (by its length: 1, 35, 51, 52 or 68 characters; `1`/`d` sampled, `0` not, else
  the HCM's decision) or from `x-b3-sampled` (`1` or `true`; absent: the HCM's decision).
  `x-b3-flags` is not read (Envoy 1.40 neither: it is passed through as any header). A context
  that does not parse (`InvalidContext`) means no span at all, and no header is injected.
- A server span shares the incoming span's id and parent (`shared_span_context`, Envoy's
  default) or is its child; a request without context starts a trace whose id is the span id
  (64 bits, or 128 with `trace_id_128bit`).
- Injection into the upstream request: the format the request came with: `b3` single
  (`trace-span-sampled[-parent]`) when it had a `b3` header, else the four multi headers
  (`x-b3-parentspanid` only when there is a parent).
- JSON v2: one object per span with `kind` SERVER (annotation `ss`, `shared: true` under
  shared_span_context) or CLIENT (annotation `cr`), microsecond timestamps, the tags as strings.

Must not: do I/O, read clocks (callers pass times) or keep shared state: a Span belongs to the
worker of its request until finished, then is read-only (the main thread encodes it).
"""

from __future__ import annotations

from json import dumps as _dumps
from json.encoder import encode_basestring_ascii as _q

from .span import CLIENT, SERVER, InvalidContext, Span
from .tags import request_tags, upstream_tags

__all__ = ["Span", "InvalidContext", "extract", "inject", "encode_spans", "SERVER", "CLIENT"]

_HEX = frozenset("0123456789abcdefABCDEF")
_SAMPLED_POS = {1: 0, 35: 34, 51: 50, 52: 34, 68: 50}


def _hex64(s: str, what: str) -> str:
    if not s or len(s) > 16 or not _HEX.issuperset(s):
        raise InvalidContext(f"invalid {what} {s!r}")
    return "%016x" % int(s, 16)


def _trace_id(s: str) -> str:
    if len(s) == 32:
        return _hex64(s[:16], "trace id") + _hex64(s[16:], "trace id")
    return _hex64(s, "trace id")


def sampled_flag(b3: str | None, x_b3_sampled: str | None, traced: bool) -> bool:
    """Envoy's SpanContextExtractor::extractSampled."""
    if b3 is not None:
        pos = _SAMPLED_POS.get(len(b3))
        if pos is None:
            return traced
        c = b3[pos]
        if c == "1" or c == "d":
            return True
        return False if c == "0" else traced
    if x_b3_sampled is None:
        return traced
    return x_b3_sampled == "1" or x_b3_sampled == "true"


def extract(get, traced: bool) -> tuple[tuple[str, str, str | None] | None, bool, bool]:
    """(context or None, sampled, came as a single `b3` header) from a request whose header
    values `get(name)` returns (str or None). context: (trace id, span id, parent id)."""
    b3 = get("b3")
    sampled = sampled_flag(b3, get("x-b3-sampled") if b3 is None else None, traced)
    if b3 is not None:
        return _from_single(b3), sampled, True
    trace, span = get("x-b3-traceid"), get("x-b3-spanid")
    if trace is None or span is None:
        return None, sampled, False
    parent = get("x-b3-parentspanid")
    return (_trace_id(trace), _hex64(span, "span id"),
            _hex64(parent, "parent id") if parent else None), sampled, False


def _from_single(b3: str) -> tuple[str, str, str | None] | None:
    """Envoy's extractSpanContextFromB3SingleFormat."""
    n = len(b3)
    if n == 0:
        raise InvalidContext("empty b3")
    if n == 1:
        if b3 in "01d":
            return None
        raise InvalidContext(f"invalid sampling flag {b3!r}")
    if n < 33:
        raise InvalidContext(f"truncated b3 {b3!r}")
    if n > 32 and b3[32:33] == "-":
        trace, pos = _trace_id(b3[:32]), 32
    elif b3[16] == "-":
        trace, pos = _trace_id(b3[:16]), 16
    else:
        raise InvalidContext("trace id should be 16 or 32 characters")
    pos += 1
    span = _hex64(b3[pos:pos + 16], "span id")
    pos += 16
    parent = None
    if n > pos:
        if n == pos + 1 or b3[pos] != "-":
            raise InvalidContext(f"truncated b3 {b3!r}")
        pos += 1
        if b3[pos] not in "01d":
            raise InvalidContext(f"invalid sampling flag {b3[pos]!r}")
        pos += 1
        if n > pos:
            if n == pos + 1 or b3[pos] != "-":
                raise InvalidContext(f"truncated b3 {b3!r}")
            pos += 1
            if n != pos + 16:
                raise InvalidContext(f"truncated b3 {b3!r}")
            parent = _hex64(b3[pos:], "parent id")
    return trace, span, parent


def inject(span: Span, headers) -> None:
    """Span context into the upstream request's `headers` (proxy.http.headers.Headers)."""
    if span.single_header:
        value = "%s-%s-%s" % (span.trace_id, span.id, "1" if span.sampled else "0")
        if span.parent_id is not None:
            value += "-" + span.parent_id
        headers.set(b"b3", value.encode())
        return
    headers.set(b"x-b3-traceid", span.trace_id.encode())
    headers.set(b"x-b3-spanid", span.id.encode())
    if span.parent_id is not None:
        headers.set(b"x-b3-parentspanid", span.parent_id.encode())
    headers.set(b"x-b3-sampled", b"1" if span.sampled else b"0")


def encode_spans(spans, endpoint: str, common_tags: str, shared_span_context: bool) -> str:
    """The JSON v2 list (Envoy's JsonV2Serializer) for `spans`, as text: a server span's
    upstream child, when it has one, follows it. `endpoint`: the localEndpoint object's JSON;
    `common_tags`: the tags every request span carries ("component", "node_id", "zone"),
    as JSON members without braces. A span's tags come from its `facts` (tags.py) or, when
    it has none, its `tags`."""
    out = []
    for span in spans:
        if span.facts is not None:
            members = request_tags(span.facts)
        else:
            members = _members(span.tags)
        members = common_tags + "," + members if common_tags and members else common_tags or members
        out.append(_encode(span, endpoint, members, shared_span_context))
        child = span.child
        if child is not None and child.duration_us:
            members = upstream_tags(child.facts) if child.facts is not None else _members(child.tags)
            out.append(_encode(child, endpoint, members, False))
    return "[" + ",".join(out) + "]"


def _members(tags: dict[str, str]) -> str:
    return _dumps(tags, separators=(",", ":"))[1:-1] if tags else ""


def _encode(span: Span, endpoint: str, members: str, shared: bool) -> str:
    server = span.kind == SERVER
    end = span.start_us + span.duration_us
    text = ('{"traceId":"%s","id":"%s","kind":"%s","timestamp":%d,"duration":%d,'
            '"localEndpoint":%s,"annotations":[{"timestamp":%d,"value":"%s"}]'
            % (span.trace_id, span.id, span.kind, span.start_us, span.duration_us, endpoint,
               end, "ss" if server else "cr"))
    if span.name:
        text += ',"name":' + _q(span.name)
    if span.parent_id is not None:
        text += ',"parentId":"%s"' % span.parent_id
    if server and shared:
        text += ',"shared":true'
    if members:
        text += ',"tags":{' + members + "}"
    return text + "}"
