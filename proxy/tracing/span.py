"""The span model every tracing provider shares (Zipkin, OpenTelemetry, SkyWalking): ids, kind, sampled
flag, name, times and the request snapshot its tags are made from. The providers differ only
in how a context is propagated (zipkin.py: B3; traceparent.py: W3C) and exported.

Must not: do I/O or keep shared state: a Span belongs to the worker of its request until
finished, then is read-only (the main thread encodes it).
"""

from __future__ import annotations

__all__ = ["Span", "InvalidContext", "SERVER", "CLIENT"]

SERVER = "SERVER"
CLIENT = "CLIENT"


class InvalidContext(ValueError):
    """The incoming context does not parse (Envoy: ExtractorException, a null span)."""


class Span:
    """One span. Ids are lower-case hex strings (trace 16 or 32, span and parent 16).
    A plain class (CPython 3.13 builds its instances inline, cheaper than slots); the fields
    most spans leave alone are class-level defaults."""

    duration_us = 0
    tags: dict[str, str] = {}   # tags set directly (else made from `facts`); never mutated
    facts = None                # tags.Facts: the request's snapshot its tags are made from
    child: Span | None = None   # the router's upstream span (spawn_upstream_span)
    reason = 0                  # the HCM's trace reason (tracer.py: NOT_TRACEABLE, ...)
    response_operation: bytes | None = None  # ingress: the decorator's, for the response
    trace_state = ""            # W3C tracestate, passed through (OpenTelemetry)
    remote_parent = False       # the parent came from the request (OpenTelemetry's span flags)
    late_inject = False         # the context goes upstream once the router has a host
    #                             (SkyWalking's sw8 names it: skywalking.SegmentSpan)

    def __init__(self, trace_id: str, span_id: str, parent_id: str | None, sampled: bool,
                 name: str | None, kind: str, start_us: int, single_header: bool = False) -> None:
        self.trace_id = trace_id
        self.id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.name = name
        self.kind = kind
        self.start_us = start_us
        self.single_header = single_header

    def child_span(self, span_id: str, name: str, start_us: int) -> Span:
        child = Span(self.trace_id, span_id, self.id, self.sampled, name, CLIENT, start_us,
                     self.single_header)
        if self.trace_state:
            child.trace_state = self.trace_state
        return child
