"""The HTTP connection manager's tracer: the per-worker half of tracing.

`HcmTracing` is made once per HCM `tracing` config on the main thread (immutable);
`for_worker` gives each worker its `WorkerTracer`, which the connection manager calls twice
per request: `start(stream)` after Envoy's request header handling (x-request-id is there) and
`finish(stream, span)` when the stream ends. Finished sampled spans go to the worker's
`SpanBatcher`, which hands them to the main thread's exporter in batches (exporter.py).

What `start` does, as Envoy's HCM (ConnectionManagerUtility::mutateTracingRequestHeader and
ActiveStream::traceRequest) and zipkin driver do:
1. The trace reason, from x-request-id: its 15th character records an earlier decision (`9`
   sampled, `a` service forced, `b` client forced, `4` none); else x-client-trace-id under
   `client_sampling`, else `random_sampling` of the first 32 bits of the request id modulo
   10,000; `overall_sampling` (same draw) may veto. A new decision is written back into the
   request id, as Envoy's UUID extension packs it. A route's `tracing` replaces the three
   samplings. x-envoy-force-trace (after x-client-trace-id, before random_sampling) forces
   the trace; only an internal request keeps it (request_headers.py drops an external one's).
2. The span (zipkin.py): the incoming B3 context's sampled flag overrides the decision. On an
   egress listener (traffic_direction OUTBOUND) without spawn_upstream_span the request's span
   is a CLIENT span, child of the caller's; else a SERVER span sharing the caller's context
   (shared_span_context) or its child.
3. Its name: the request's authority, or the route `decorator`'s operation; on an ingress
   listener a request's x-envoy-decorator-operation overrides it (and is removed); on an egress
   one (traffic_direction OUTBOUND) the decorator's operation is sent upstream in that header.
   On the response, as Envoy: ingress, the decorator's operation goes back to the caller in
   that header (unless the request named one); egress, an upstream's renames the span and is
   removed.
4. The context injected into the request (the upstream span's with spawn_upstream_span).
The other providers decide their own span and propagation: OpenTelemetry (traceparent.py),
SkyWalking (skywalking.py, sw8 injected by the router) and Datadog (datadog.py: Datadog and
W3C headers, the agent's sampling rates, every span reported whatever its priority).

Thread affinity: a WorkerTracer and its batcher belong to one worker. Must not: block, or
touch another worker's or the main thread's objects but through `Dispatcher.post`.
"""

from __future__ import annotations

import random
import time

from . import datadog as dd
from .config import TracingConfig
from .datadog_config import DatadogConfig
from .otel_config import OpenTelemetryConfig
from .skywalking import SegmentSpan
from .skywalking_config import SkyWalkingConfig
from .sw8 import SW8 as _SW8
from .sw8 import extract as _sw8_extract
from .tags import Facts
from .traceparent import TRACEPARENT as _TRACEPARENT
from .traceparent import TRACESTATE as _TRACESTATE
from .traceparent import extract as _tp_extract
from .traceparent import inject as _tp_inject
from .zipkin import CLIENT, SERVER, InvalidContext, Span, extract, inject

__all__ = ["HcmTracing", "WorkerTracer", "REASONS"]

NOT_TRACEABLE, SAMPLING, SERVICE_FORCED, CLIENT_FORCED = range(4)
REASONS = ("not_traceable", "random_sampling", "service_forced", "client_enabled")
# Envoy's fifth, `health_check`, counts requests its health_check filter marks: that filter is
# not built here, so the counter exists (for dashboards) and stays 0.
_FROM_NIBBLE = {0x39: SAMPLING, 0x61: SERVICE_FORCED, 0x62: CLIENT_FORCED}  # '9', 'a', 'b'
_NIBBLE = (b"4", b"9", b"a", b"b")
_B3_MULTI = frozenset({b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled"})
_B3_FIELDS = _B3_MULTI | {b"b3"}
_new_tuple = tuple.__new__
_NEW_SAMPLED, _NEW_UNSAMPLED = "00-%s-%s-01", "00-%s-%s-00"   # a new trace's traceparent
_DD_FIELDS = frozenset({b"x-datadog-trace-id", b"x-datadog-parent-id",
                        b"x-datadog-sampling-priority", b"x-datadog-origin", b"x-datadog-tags",
                        b"traceparent", b"tracestate"})


def _uuid4(n: int) -> str:
    """A random (version 4, RFC 4122 variant) UUID from 128 random bits, as cpp2sky makes
    SkyWalking's trace and segment ids."""
    n = (n & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = "%032x" % n
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _str_getter(h: dict):
    def get(name: str) -> str | None:
        v = h.get(name.encode())
        return None if v is None else v.decode("latin-1")
    return get


class HcmTracing:
    """One HCM's tracing (main thread, immutable): its config, the exporter its spans go to
    and whether its listener is egress."""  # noqa: D401

    def __init__(self, config: TracingConfig, exporter, egress: bool,
                 start_child_span: bool = False) -> None:
        self.config = config
        self.exporter = exporter
        self.egress = egress
        # The router's upstream span: the HCM's spawn_upstream_span or the router's own
        # (deprecated) start_child_span, as Envoy's router reads either.
        self.spawn_upstream = config.spawn_upstream_span or start_child_span

    def for_worker(self, worker, stat_prefix: str) -> WorkerTracer:
        return WorkerTracer(self, worker, stat_prefix)


class WorkerTracer:
    def __init__(self, hcm: HcmTracing, worker, stat_prefix: str) -> None:
        cfg = hcm.config
        self.config = cfg
        self.egress = hcm.egress
        self.batcher = hcm.exporter.batcher_for(worker)
        self.rng = random.Random()          # span ids: per worker, no shared state
        provider = cfg.provider
        # The provider decides only propagation (and export): OpenTelemetry's W3C
        # traceparent, or Zipkin's B3.
        self.otel = isinstance(provider, OpenTelemetryConfig)
        self.skywalking = isinstance(provider, SkyWalkingConfig)
        self.datadog = isinstance(provider, DatadogConfig)
        if self.datadog:
            # The agent's sampling rates: the exporter replaces its immutable snapshot.
            self.dd_exporter = hcm.exporter
            self.dd_service = provider.service_name
            self.dd_key = f"service:{provider.service_name},env:"
        if self.skywalking:
            # sw8 carries the tracer's service and instance (the exporter resolves the
            # node's defaults), base64-encoded once.
            self.sw_names = hcm.exporter.sw8_names
        if self.otel or self.skywalking or self.datadog:
            self.shared_context, self.trace_128 = False, True
        else:
            self.shared_context = provider.shared_span_context
            self.trace_128 = provider.trace_id_128bit
        # OpenTelemetry names a span without a decorator after the traffic direction (Envoy's
        # operation name); Zipkin after the request's authority (set when the span ends).
        self.default_name = ("egress" if hcm.egress else "ingress") if self.otel else None
        scope = worker.stats.scope(f"http.{stat_prefix}.tracing")
        self.reason_counters = tuple(scope.counter(n) for n in REASONS)
        scope.counter("health_check")
        self.spawn_upstream = hcm.spawn_upstream
        # Envoy 1.40's zipkin tracer: on an egress listener without an upstream span, the
        # request's span is the CLIENT span (a child of the caller's, never shared); else
        # a SERVER span.
        self.kind = CLIENT if hcm.egress and not hcm.spawn_upstream else SERVER

    # -- request start ---------------------------------------------------------------------
    def start(self, stream) -> None:
        head = stream.head
        headers = head.headers
        # One pass: the request's fields by name, the first of each name winning (as Envoy
        # reads these untrusted fields); every test below is then a dict lookup.
        h = dict(reversed(headers.fields))
        route = stream.route()
        reason = self._decide(headers, h, route)
        self.reason_counters[reason].value += 1
        traced = reason != NOT_TRACEABLE
        kind = self.kind
        if self.otel:
            self._start_otel(stream, headers, h, route, reason, traced, kind)
            return
        if self.skywalking:
            self._start_skywalking(stream, headers, h, route, reason, traced)
            return
        if self.datadog:
            self._start_datadog(stream, headers, h, route, reason, traced)
            return
        no_b3 = _B3_FIELDS.isdisjoint(h)
        if no_b3:  # the usual request: no context, a new trace
            context, sampled, single = None, traced, False
        else:
            try:
                context, sampled, single = extract(_str_getter(h), traced)
            except InvalidContext:
                return  # Envoy: a null span; nothing injected, the headers pass as they came
        # The name (the authority, unless a decorator names it) and the start time are set
        # when a sampled span ends: an unsampled one never needs them.
        getrandbits = self.rng.getrandbits
        if context is None:
            span_id = "%016x" % getrandbits(64)
            trace = ("%016x" % getrandbits(64)) + span_id if self.trace_128 else span_id
            span = Span(trace, span_id, None, sampled, None, kind, 0, single)
        elif kind == SERVER and self.shared_context:
            span = Span(context[0], context[1], context[2], sampled, None, kind, 0, single)
        else:
            span = Span(context[0], "%016x" % getrandbits(64), context[1], sampled, None, kind,
                        0, single)
        span.reason = reason
        self._name(span, headers, h, route)
        stream.active_span = span
        if self.spawn_upstream:
            # The router's upstream span: its id is what the upstream sees as its parent.
            span.child = span.child_span("%016x" % getrandbits(64), "", 0)
            span = span.child
        if no_b3:
            # Nothing to replace: the three fields go at the end (no scans).
            trace_b = span.trace_id.encode()
            fields = headers.fields
            fields.append((b"x-b3-traceid", trace_b))
            fields.append((b"x-b3-spanid", trace_b if span.id == span.trace_id else span.id.encode()))
            if span.parent_id is not None:
                fields.append((b"x-b3-parentspanid", span.parent_id.encode()))
            fields.append((b"x-b3-sampled", b"1" if span.sampled else b"0"))
        else:
            inject(span, headers)

    def _start_otel(self, stream, headers, h: dict, route, reason: int, traced: bool,
                    kind: str) -> None:
        """Envoy's OpenTelemetry Driver::startSpan: a request's `traceparent` makes the span
        a child of the caller's (sampled when its flag and the HCM's decision both are, its
        tracestate kept); without one, a new 128-bit trace with the HCM's decision; one that
        does not parse, no span at all."""
        getrandbits = self.rng.getrandbits
        value = h.get(_TRACEPARENT)
        if value is None:
            span = Span("%032x" % getrandbits(128), "%016x" % getrandbits(64), None, traced,
                        self.default_name, kind, 0)
        else:
            try:
                trace, parent, sampled, state = _tp_extract(value, headers.fields)
            except InvalidContext:
                return  # Envoy: a null span; nothing injected, the headers pass as they came
            # Envoy 1.40 samples a joined span only when both the caller's flag and the
            # HCM's decision say so (either one off: unsampled).
            span = Span(trace, "%016x" % getrandbits(64), parent, sampled and traced,
                        self.default_name, kind, 0)
            span.remote_parent = True
            if state:
                span.trace_state = state
        span.reason = reason
        self._name(span, headers, h, route)
        stream.active_span = span
        if self.spawn_upstream:
            span.child = span.child_span("%016x" % getrandbits(64), "", 0)
            span = span.child
        if value is None and _TRACESTATE not in h:
            # The usual request: nothing to replace, the two fields go at the end (no scans).
            fields = headers.fields
            fields.append((_TRACEPARENT, ((_NEW_SAMPLED if span.sampled else _NEW_UNSAMPLED)
                                          % (span.trace_id, span.id)).encode()))
            fields.append((_TRACESTATE, b""))
        else:
            _tp_inject(span, headers)

    def _start_skywalking(self, stream, headers, h: dict, route, reason: int,
                          traced: bool) -> None:
        """Envoy's SkyWalking Driver::startSpan: a request's `sw8` joins the caller's trace
        whatever the HCM decided (SkyWalking samples everything it is handed); one that does
        not parse is ignored. Without a context an untraced request gets no span at all (a
        null span: nothing injected), a traced one a new trace. The context goes upstream
        when the router has a host (skywalking.SegmentSpan.inject_upstream)."""
        value = h.get(_SW8)
        ref = None
        if value is not None:
            try:
                ref = _sw8_extract(value)
            except InvalidContext:
                ref = None
        if ref is None and not traced:
            return
        getrandbits = self.rng.getrandbits
        trace = _uuid4(getrandbits(128)) if ref is None else ref.trace_id.decode("utf-8", "replace")
        span = SegmentSpan(trace, _uuid4(getrandbits(128)), None, True, None, SERVER, 0)
        span.ref = ref
        span.reason = reason
        span.operation = stream.head.path
        span.names = self.sw_names
        self._name(span, headers, h, route)   # the decorator header's propagation only
        stream.active_span = span
        if self.spawn_upstream:
            span.child = span.exit_span()

    def _start_datadog(self, stream, headers, h: dict, route, reason: int, traced: bool) -> None:
        """Envoy's Datadog Tracer::startSpan (datadog.py): the caller's context (Datadog
        headers, else W3C) or a new trace; named `ingress` / `egress <host>` unless a decorator
        names it; the sampling decision (a caller's priority kept, USER_DROP when the HCM did
        not trace, else the agent's rates); the context injected into the request. Every span
        is reported whatever its priority."""
        getrandbits = self.rng.getrandbits
        fresh = _DD_FIELDS.isdisjoint(h)
        extracted = None if fresh else dd.extract(h)
        if extracted is None:
            low = getrandbits(64)
            trace = dd.new_trace(low)
            span_id, parent = low, 0
        else:
            trace, parent = extracted
            span_id = getrandbits(63)
        name = (f"egress {stream.head.authority.decode('latin-1')}" if self.egress
                else "ingress")
        span = dd.make_span(trace, span_id, parent, name, SERVER)
        span.reason = reason
        self._name(span, headers, h, route)
        stream.active_span = span
        dd.decide(trace, traced, self.dd_exporter.rates, self.dd_service, self.dd_key)
        if self.spawn_upstream:
            span.child = span.child_span("%016x" % getrandbits(63), "", 0)
            span = span.child
        dd.inject(span, headers, fresh)

    def _name(self, span: Span, headers, h: dict, route) -> None:
        """The decorator's operation names the span; x-envoy-decorator-operation goes
        upstream (egress) or renames the span (ingress), as Envoy's HCM does."""
        decorator = route.decorator if route is not None else None
        if decorator is not None:
            span.name = decorator.operation
        if self.egress:
            if decorator is not None and decorator.propagate:
                headers.set(b"x-envoy-decorator-operation", decorator.operation.encode())
        else:
            override = h.get(b"x-envoy-decorator-operation")
            if override is not None:
                if override:
                    span.name = override.decode("latin-1")
                headers.remove(b"x-envoy-decorator-operation")
            if decorator is not None and decorator.propagate and not override:
                # Envoy tells the caller the operation, for its client span.
                span.response_operation = decorator.operation.encode()

    def _decide(self, headers, h: dict, route) -> int:
        """Envoy's mutateTracingRequestHeader; writes a new decision into x-request-id."""
        rid = h.get(b"x-request-id")
        if rid is None or len(rid) < 8:
            return NOT_TRACEABLE
        try:
            draw = int(rid[:8], 16) % 10_000  # Envoy's draw, then percent % denominator
        except ValueError:
            return NOT_TRACEABLE
        rt = route.tracing if route is not None else None
        cfg = rt if rt is not None else self.config
        uuid = len(rid) == 36
        reason = _FROM_NIBBLE.get(rid[14], NOT_TRACEABLE) if uuid else NOT_TRACEABLE
        decided = reason
        if reason == NOT_TRACEABLE:
            if b"x-client-trace-id" in h and cfg.client_sampling.enabled(self.rng.getrandbits(32)):
                reason = CLIENT_FORCED
            elif b"x-envoy-force-trace" in h:  # (only an internal request keeps it)
                reason = SERVICE_FORCED
            else:
                rs = cfg.random_sampling
                if draw % rs.denominator < rs.numerator:  # Sampling.enabled, inlined
                    reason = SAMPLING
        if reason != NOT_TRACEABLE:
            ov = cfg.overall_sampling
            if draw % ov.denominator >= ov.numerator:
                reason = NOT_TRACEABLE
        if uuid and reason != decided:
            fields = headers.fields  # the first x-request-id (the one `h` holds) rewritten
            fields[fields.index((b"x-request-id", rid))] = (
                b"x-request-id", rid[:14] + _NIBBLE[reason] + rid[15:])
        return reason

    # -- response ---------------------------------------------------------------------------
    def response_headers(self, span: Span, headers) -> None:
        """Envoy's x-envoy-decorator-operation on the response: ingress, the route decorator's
        operation goes to the caller; egress, the upstream's renames the span and is removed."""
        if span.response_operation is not None:
            headers.set(b"x-envoy-decorator-operation", span.response_operation)
        elif self.egress:
            override = headers.get(b"x-envoy-decorator-operation")
            if override is not None:
                if override:
                    span.name = override.decode("latin-1")
                headers.remove(b"x-envoy-decorator-operation")

    # -- request end -----------------------------------------------------------------------
    def finish(self, stream, span: Span) -> None:
        """The span's end, and a snapshot of the request for its tags (tags.py: the main
        thread turns it into Envoy's tags when it encodes), then off to the batcher."""
        end = stream.end_monotonic or time.monotonic()
        span.duration_us = max(0, int((end - stream.start_monotonic) * 1_000_000))
        if not span.sampled:
            return
        head = stream.head
        span.start_us = start_us = int(stream.start_time * 1_000_000)
        if span.name is None:
            span.name = head.authority.decode("latin-1")
        host = stream.upstream_host
        cluster = stream.upstream_cluster
        # tuple.__new__: the NamedTuple without its Python-level constructor; the header
        # list as a tuple of (bytes, bytes), which the GC stops tracking (no cycles to find
        # while the span waits for the main thread).
        span.facts = _new_tuple(Facts, (
            tuple(head.headers.fields), head.authority, head.path, head.method,
            stream.protocol, stream.hcm.remote_ip, stream.response_code, stream.bytes_sent,
            stream.bytes_received, tuple(stream.response_flags), cluster, host,
            getattr(stream.cached_route, "tracing", None), self.config))
        child = span.child
        if child is not None:
            if host is None:
                span.child = None  # no upstream request was made: no upstream span
            else:
                child.name = f"router {cluster} egress"
                child.start_us = start_us
                child.duration_us = max(1, span.duration_us)
                child.facts = span.facts
        self.batcher.add(span)
