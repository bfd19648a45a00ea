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
   samplings. x-envoy-force-trace is honoured only from internal requests, and every request
   is external here (request_headers.py drops it).
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

Thread affinity: a WorkerTracer and its batcher belong to one worker. Must not: block, or
touch another worker's or the main thread's objects but through `Dispatcher.post`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .config import TracingConfig
from .zipkin import CLIENT, SERVER, InvalidContext, Span, extract, inject

__all__ = ["HcmTracing", "WorkerTracer", "LocalInfo", "REASONS"]

NOT_TRACEABLE, SAMPLING, SERVICE_FORCED, CLIENT_FORCED = range(4)
REASONS = ("not_traceable", "random_sampling", "service_forced", "client_enabled")
# Envoy's fifth, `health_check`, counts requests its health_check filter marks: that filter is
# not built here, so the counter exists (for dashboards) and stays 0.
_FROM_NIBBLE = {0x39: SAMPLING, 0x61: SERVICE_FORCED, 0x62: CLIENT_FORCED}  # '9', 'a', 'b'
_NIBBLE = (b"4", b"9", b"a", b"b")


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """What Envoy's local_info gives a tracer: node id, cluster (the service name), zone and
    this host's address."""
    node_id: str = ""
    cluster: str = ""
    zone: str = ""
    address: str = ""


class HcmTracing:
    """One HCM's tracing (main thread, immutable): its config, the exporter its spans go to
    and whether its listener is egress."""

    def __init__(self, config: TracingConfig, exporter, egress: bool, local: LocalInfo,
                 start_child_span: bool = False) -> None:
        self.config = config
        self.exporter = exporter
        self.egress = egress
        self.local = local
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
        zipkin = cfg.provider
        self.shared_context = zipkin.shared_span_context
        self.trace_128 = zipkin.trace_id_128bit
        scope = worker.stats.scope(f"http.{stat_prefix}.tracing")
        self.reason_counters = tuple(scope.counter(n) for n in REASONS)
        scope.counter("health_check")
        local = hcm.local
        common = {"component": "proxy"}
        if local.node_id:
            common["node_id"] = local.node_id
        if local.zone:
            common["zone"] = local.zone
        self.common_tags = common
        self.spawn_upstream = hcm.spawn_upstream
        # Envoy 1.40's zipkin tracer: on an egress listener without an upstream span, the
        # request's span is the CLIENT span (a child of the caller's, never shared); else
        # a SERVER span.
        self.kind = CLIENT if hcm.egress and not hcm.spawn_upstream else SERVER

    # -- request start ---------------------------------------------------------------------
    def start(self, stream) -> None:
        head = stream.head
        headers = head.headers
        route = stream.route()
        reason = self._decide(headers, route)
        self.reason_counters[reason].value += 1
        get = headers.get_str
        try:
            context, sampled, single = extract(get, reason != NOT_TRACEABLE)
        except InvalidContext:
            return  # Envoy: a null span; nothing injected, the headers pass as they came
        start_us = int(stream.start_time * 1_000_000)
        name = head.authority.decode("latin-1")
        kind = self.kind
        if context is None:
            n = self.rng.getrandbits(64)
            span_id = "%016x" % n
            trace = ("%016x" % self.rng.getrandbits(64)) + span_id if self.trace_128 else span_id
            span = Span(trace, span_id, None, sampled, name, kind, start_us, single)
        elif kind == SERVER and self.shared_context:
            span = Span(context[0], context[1], context[2], sampled, name, kind, start_us, single)
        else:
            span = Span(context[0], self._new_id(), context[1], sampled, name, kind, start_us,
                        single)
        span.reason = reason
        decorator = route.decorator if route is not None else None
        if decorator is not None:
            span.name = decorator.operation
        if self.egress:
            if decorator is not None and decorator.propagate:
                headers.set(b"x-envoy-decorator-operation", decorator.operation.encode())
        else:
            override = headers.get(b"x-envoy-decorator-operation")
            if override is not None:
                if override:
                    span.name = override.decode("latin-1")
                headers.remove(b"x-envoy-decorator-operation")
            if decorator is not None and decorator.propagate and not override:
                # Envoy tells the caller the operation, for its client span.
                span.response_operation = decorator.operation.encode()
        stream.active_span = span
        if self.spawn_upstream:
            # The router's upstream span: its id is what the upstream sees as its parent.
            span.child = span.child_span(self._new_id(), "", start_us)
            inject(span.child, headers)
        else:
            inject(span, headers)

    def _new_id(self) -> str:
        return "%016x" % self.rng.getrandbits(64)

    def _decide(self, headers, route) -> int:
        """Envoy's mutateTracingRequestHeader; writes a new decision into x-request-id."""
        rid = headers.get(b"x-request-id")
        if rid is None or len(rid) < 8:
            return NOT_TRACEABLE
        try:
            draw = int(rid[:8], 16) % 10_000
        except ValueError:
            return NOT_TRACEABLE
        rt = route.tracing if route is not None else None
        cfg = rt if rt is not None else self.config
        uuid = len(rid) == 36
        reason = _FROM_NIBBLE.get(rid[14], NOT_TRACEABLE) if uuid else NOT_TRACEABLE
        decided = reason
        if reason == NOT_TRACEABLE:
            client = cfg.client_sampling
            if headers.get(b"x-client-trace-id") is not None and client.enabled(
                    self.rng.getrandbits(32)):
                reason = CLIENT_FORCED
            elif cfg.random_sampling.enabled(draw):
                reason = SAMPLING
        if reason != NOT_TRACEABLE and not cfg.overall_sampling.enabled(draw):
            reason = NOT_TRACEABLE
        if uuid and reason != decided:
            headers.set(b"x-request-id", rid[:14] + _NIBBLE[reason] + rid[15:])
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
        end = stream.end_monotonic or time.monotonic()
        span.duration_us = max(0, int((end - stream.start_monotonic) * 1_000_000))
        if not span.sampled:
            return
        head = stream.head
        headers = head.headers
        cfg = self.config
        tags = dict(self.common_tags)
        rid = headers.get_str("x-request-id")
        if rid is not None:
            tags["guid:x-request-id"] = rid
        path = headers.get_str("x-envoy-original-path") or head.path.decode("latin-1")
        proto = headers.get_str("x-forwarded-proto") or ""
        tags["http.url"] = f"{proto}://{head.authority.decode('latin-1')}{path[:cfg.max_path_tag_length]}"
        tags["http.method"] = head.method.decode("latin-1")
        tags["downstream_cluster"] = headers.get_str("x-envoy-downstream-service-cluster") or "-"
        tags["user_agent"] = headers.get_str("user-agent") or "-"
        tags["http.protocol"] = stream.protocol
        tags["peer.address"] = stream.hcm.remote_ip
        client_id = headers.get_str("x-client-trace-id")
        if client_id is not None:
            tags["guid:x-client-trace-id"] = client_id
        _custom_tags(tags, cfg.custom_tags, headers)
        route = stream.cached_route
        rt = getattr(route, "tracing", None)
        if rt is not None:
            _custom_tags(tags, rt.custom_tags, headers)
        code = stream.response_code
        tags["http.status_code"] = str(code or 0)
        tags["response_size"] = str(stream.bytes_sent)
        tags["request_size"] = str(stream.bytes_received)
        flags = ",".join(stream.response_flags) or "-"
        tags["response_flags"] = flags
        cluster = stream.upstream_cluster
        if cluster is not None and stream.upstream_host is not None:
            tags["upstream_cluster"] = cluster
            tags["upstream_cluster.name"] = cluster
        if not code or code >= 500:
            tags["error"] = "true"
        span.tags = tags
        child = span.child
        if child is not None:
            if stream.upstream_host is None:
                span.child = None  # no upstream request was made: no upstream span
            else:
                child.name = f"router {cluster} egress"
                child.duration_us = max(1, span.duration_us)
                host = stream.upstream_host
                ctags = {"component": "proxy", "http.protocol": stream.protocol,
                         "http.status_code": tags["http.status_code"], "peer.address": host,
                         "upstream_address": host, "response_flags": flags,
                         "upstream_cluster": cluster, "upstream_cluster.name": cluster}
                if "error" in tags:
                    ctags["error"] = "true"
                child.tags = ctags
        self.batcher.add(span)


def _custom_tags(tags: dict[str, str], custom, headers) -> None:
    for t in custom:
        if t.header is None:
            value = t.value
        else:
            value = headers.get_str(t.header.decode()) or t.value
        if value:
            tags[t.tag] = value

