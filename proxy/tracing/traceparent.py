"""W3C trace context (`traceparent`, `tracestate`) as Envoy's OpenTelemetry tracer reads and
writes it (source/extensions/tracers/opentelemetry: SpanContextExtractor, Span::injectContext).

- Extraction: the first `traceparent` field, exactly 55 characters `vv-<32 hex>-<16 hex>-ff`
  (any two-hex-digit version, upper or lower case), neither id all zeros; else the context is
  invalid (`InvalidContext`: Envoy starts a null span, injects nothing and passes the headers
  on as they came). Sampled is the flags' low bit; the span is sampled when it and the HCM's
  decision both are (tracer.py), as Envoy 1.40 decides (checked against it). Every
  `tracestate` field, joined with ",", is kept on the span.
- The server span is a child of the caller's span (a new span id, the caller's as parent), in
  the caller's trace; a request without `traceparent` starts a 128-bit trace.
- Injection: `traceparent: 00-<trace>-<span>-0<sampled>` and `tracestate` (set, and sent
  empty when there is none, as Envoy does), replacing what the request carried. No B3: Envoy's
  OpenTelemetry tracer neither reads nor writes it (x-b3-* pass through as any header).

Must not: do I/O or keep state.
"""

from __future__ import annotations

from .span import InvalidContext

__all__ = ["extract", "inject", "TRACEPARENT", "TRACESTATE"]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_HEX = frozenset(b"0123456789abcdefABCDEF")


def extract(value: bytes, fields) -> tuple[str, str, bool, str]:
    """(trace id, parent span id, sampled, tracestate) from a `traceparent` value; `fields`:
    the request's header list (for its `tracestate` fields)."""
    if len(value) != 55 or value[2] != 0x2D or value[35] != 0x2D or value[52] != 0x2D:
        raise InvalidContext("invalid traceparent")
    if not _HEX.issuperset(value[:2] + value[3:35] + value[36:52] + value[53:]):
        raise InvalidContext("invalid traceparent hex")
    trace = value[3:35].decode().lower()
    parent = value[36:52].decode().lower()
    if trace == "0" * 32 or parent == "0" * 16:
        raise InvalidContext("invalid traceparent id")
    sampled = bool(int(value[53:], 16) & 1)
    states = [v for k, v in fields if k == TRACESTATE]
    state = b",".join(states).decode("latin-1") if states else ""
    return trace, parent, sampled, state


def inject(span, headers) -> None:
    """The span's context into the upstream request's `headers` (proxy.http.headers.Headers)."""
    headers.set(TRACEPARENT, b"00-%s-%s-0%s" % (span.trace_id.encode(), span.id.encode(),
                                                 b"1" if span.sampled else b"0"))
    headers.set(TRACESTATE, span.trace_state.encode("latin-1"))
