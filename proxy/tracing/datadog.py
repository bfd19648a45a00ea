"""Datadog spans: the context a request's span gets under `envoy.tracers.datadog`, how it is read
from and written into requests, the sampling decision and the agent's msgpack payload, as
Envoy 1.40's Datadog tracer (dd-trace-cpp 2.1 with Envoy's defaults) makes them.

Extraction (`extract`), dd-trace-cpp's default styles in order, Datadog then W3C:
- Datadog: `x-datadog-trace-id` and `x-datadog-parent-id` (unsigned decimal 64-bit),
  `x-datadog-sampling-priority` (signed decimal), `x-datadog-origin`, `x-datadog-tags`
  (`k=v,...`, at most 512 bytes; only `_dd.p.*` kept; `_dd.p.tid` is the trace id's high 64
  bits). A value that does not parse fails the whole extraction: a new trace (Envoy logs it).
- W3C: `traceparent` (`vv-<32 hex>-<16 hex>-ff`, neither id zero, version not ff) and the
  `dd=` member of `tracestate` (`s:` priority when it agrees with the sampled flag, `o:`
  origin, `p:` the caller's Datadog parent, `t.<x>:` trace tag `_dd.p.<x>`); other members
  are passed on. A traceparent that does not parse is tagged `_dd.w3c_extraction_error`.
- The first style with a trace id wins; W3C, when it carries the same trace, lends its
  tracestate and, when its parent differs, its parent (the Datadog one kept as `_dd.parent_id`).
  No trace id, or a trace id without a parent id nor origin, or a zero trace id: a new trace.
A new trace: 128-bit id, high half the current Unix second << 32 (`_dd.p.tid`), low half
random; the root span's id is the low half. Other span ids are random 63-bit.

Sampling (`decide`): a priority from the request is kept. Otherwise, when the HCM did not trace
the request, USER_DROP (-1), as Envoy's tracer overrides it; else the agent's rate for
`service:<service>,env:` (or its default, or 1.0 before the agent answered: mechanism DEFAULT,
`-0`) applied to the trace id's low half by Knuth's multiplicative hash: AUTO_KEEP (1) or
AUTO_DROP (0), `_dd.p.dm` the mechanism when kept, `_dd.p.ksr` the rate when the agent gave
it, `_dd.agent_psr` the rate on the root span. Spans of every priority are reported (the
agent counts dropped traces too).

Injection (`inject`): `x-datadog-trace-id` (low half), `x-datadog-parent-id`,
`x-datadog-sampling-priority`, `x-datadog-origin`, `x-datadog-tags` (the `_dd.p.*` trace tags,
unless empty or over 512 bytes), then `traceparent` and `tracestate` (`dd=s:..;p:..;o:..;t.*`,
at most 256 bytes, then the other vendors' members), replacing what the request carried.

Encoding (`encode_traces`, main thread): each request is one trace chunk, its span then the
router's upstream span (spawn_upstream_span); a span is a msgpack map `service`, `name`
(`envoy.proxy`), `resource` (Envoy's operation name: `ingress`, `egress <host>`, the
decorator's, `router <cluster> egress`), `trace_id`, `span_id`, `parent_id`, `start` and
`duration` (ns), `error` (Envoy's `error` tag), `meta` (Envoy's tags, the trace tags, origin,
language, runtime id, version), `metrics` (sampling priority, agent rate, process id), `type`
(`web`).

Must not: do I/O or read clocks but the new trace's second (`time.time`, as dd-trace-cpp).
A DatadogSpan and its Trace belong to the request's worker until finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgpack

from .span import CLIENT, InvalidContext, Span
from .tags import request_attributes, upstream_attributes

__all__ = ["DatadogSpan", "Trace", "AgentRates", "extract", "new_trace", "decide", "inject",
           "encode_traces", "format_rate", "SPAN_NAME", "DEFAULT_RATES"]

SPAN_NAME = "envoy.proxy"
SPAN_TYPE = "web"
USER_DROP, AUTO_DROP, AUTO_KEEP = -1, 0, 1
DEFAULT, AGENT_RATE, MANUAL = 0, 1, 4            # sampling mechanisms
KNUTH = 1111111111111111111
MASK64 = (1 << 64) - 1
MAX_TAGS_HEADER = 512
MAX_DD_TRACESTATE = 256
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ZERO_PARENT = "0000000000000000"


@dataclass(frozen=True, slots=True)
class AgentRates:
    """The agent's last `rate_by_service` answer (immutable; the exporter replaces it)."""
    by_key: dict = field(default_factory=dict)
    default: float | None = None

    def rate_for(self, service: str) -> tuple[float, int]:
        """The rate for `service` (no env) and its mechanism."""
        return self.rate_for_key(f"service:{service},env:")

    def rate_for_key(self, key: str) -> tuple[float, int]:
        rate = self.by_key.get(key)
        if rate is not None:
            return rate, AGENT_RATE
        if self.default is not None:
            return self.default, AGENT_RATE
        return 1.0, DEFAULT


DEFAULT_RATES = AgentRates()


class Trace:
    """What a request's spans share (dd-trace-cpp's TraceSegment): the trace id halves, the
    sampling decision, origin, `_dd.p.*` trace tags (ordered) and the tracestate members passed
    on."""

    __slots__ = ("high", "low", "priority", "mechanism", "local", "rate", "origin", "tags",
                 "extra_dd", "extra_w3c", "root_tags")

    def __init__(self, high: int, low: int) -> None:
        self.high = high
        self.low = low
        self.priority: int | None = None
        self.mechanism: int | None = None
        self.local = False           # the decision was made here (not extracted)
        self.rate: float | None = None
        self.origin: str | None = None
        self.tags: list[tuple[str, str]] = []
        self.extra_dd: str | None = None      # tracestate dd= members not understood
        self.extra_w3c: str | None = None     # other vendors' tracestate members
        self.root_tags: dict[str, str] = {}   # _dd.parent_id, _dd.propagation_error, ...


class DatadogSpan(Span):
    """A request's (or the router's upstream) span: ids as integers (`dd_id`, `dd_parent`),
    the trace's shared state in `trace`. `trace_id` holds what Envoy's getTraceIdAsHex answers
    (for %TRACE_ID%): the span id in unpadded hex."""

    trace: Trace
    dd_id = 0
    dd_parent = 0

    def child_span(self, span_id: str, name: str, start_us: int) -> Span:
        child = DatadogSpan(span_id, span_id, self.id, True, name, CLIENT, start_us)
        child.trace = self.trace
        child.dd_id = int(span_id, 16)
        child.dd_parent = self.dd_id
        return child


def make_span(trace: Trace, span_id: int, parent: int, name: str | None, kind: str) -> DatadogSpan:
    h = "%x" % span_id
    span = DatadogSpan(h, "%016x" % span_id, None if not parent else "%016x" % parent, True,
                       name, kind, 0)
    span.trace = trace
    span.dd_id = span_id
    span.dd_parent = parent
    return span


def new_trace(low: int, now: float | None = None) -> Trace:
    """A new trace: its high half the current Unix second << 32, `_dd.p.tid` its hex."""
    seconds = int(time.time() if now is None else now)
    high = max(0, seconds) << 32
    trace = Trace(high, low)
    trace.tags.append(("_dd.p.tid", "%016x" % high))
    return trace


# -- extraction ------------------------------------------------------------------------------

def _uint64(value: bytes, base: int) -> int:
    v = value.strip(b" \t")
    if not v or not (_DIGITS if base == 10 else _HEX).issuperset(v):
        raise InvalidContext(f"not a valid integer: {value!r}")
    n = int(v, base)
    if n > MASK64:
        raise InvalidContext(f"out of range: {value!r}")
    return n


def _int(value: bytes) -> int:
    v = value.strip(b" \t")
    digits = v[1:] if v[:1] == b"-" else v
    if not digits or not _DIGITS.issuperset(digits):
        raise InvalidContext(f"not a valid integer: {value!r}")
    n = int(v)
    if not -(2**31) <= n < 2**31:
        raise InvalidContext(f"out of range: {value!r}")
    return n


class _Extracted:
    __slots__ = ("trace_high", "trace_low", "parent", "priority", "origin", "tags",
                 "dd_parent", "extra_dd", "extra_w3c")

    def __init__(self) -> None:
        self.trace_high = 0
        self.trace_low: int | None = None
        self.parent: int | None = None
        self.priority: int | None = None
        self.origin: str | None = None
        self.tags: list[tuple[str, str]] = []
        self.dd_parent: str | None = None
        self.extra_dd: str | None = None
        self.extra_w3c: str | None = None


def _tid(value: str) -> int | None:
    if len(value) != 16 or not _HEX.issuperset(value.encode()):
        return None
    return int(value, 16)


def _datadog(h: dict, span_tags: dict) -> _Extracted:
    """The Datadog style; InvalidContext when an id or the priority does not parse."""
    r = _Extracted()
    v = h.get(b"x-datadog-trace-id")
    if v is not None:
        r.trace_low = _uint64(v, 10)
    v = h.get(b"x-datadog-parent-id")
    if v is not None:
        r.parent = _uint64(v, 10)
    v = h.get(b"x-datadog-sampling-priority")
    if v is not None:
        r.priority = _int(v)
    v = h.get(b"x-datadog-origin")
    if v is not None:
        r.origin = v.decode("latin-1")
    v = h.get(b"x-datadog-tags")
    if v is not None:
        if len(v) > MAX_TAGS_HEADER:
            span_tags["_dd.propagation_error"] = "extract_max_size"
        else:
            pairs = []
            for entry in v.decode("latin-1").split(",") if v else ():
                key, sep, value = entry.partition("=")
                if not sep:
                    span_tags["_dd.propagation_error"] = "decoding_error"
                    pairs = None
                    break
                pairs.append((key, value))
            for key, value in pairs or ():
                if not key.startswith("_dd.p."):
                    continue
                if key == "_dd.p.tid":
                    high = _tid(value)
                    if high is None:
                        span_tags["_dd.propagation_error"] = "malformed_tid " + value
                        continue
                    if r.trace_low is not None:
                        r.trace_high = high
                r.tags.append((key, value))
    return r


def _traceparent(value: bytes) -> tuple[int, int, int, int] | None:
    """(high, low, parent, sampled) of a `traceparent`, None when it does not parse."""
    v = value.strip(b" \t")
    if len(v) < 55 or v[2:3] != b"-" or v[35:36] != b"-" or v[52:53] != b"-":
        return None
    version = v[:2]
    if not _HEX.issuperset(v[:2] + v[3:35] + v[36:52] + v[53:55]) or version.lower() == b"ff":
        return None
    if len(v) > 55 and (version == b"00" or v[55:56] != b"-"):
        return None
    trace = int(v[3:35], 16)
    parent = int(v[36:52], 16)
    if not trace or not parent:
        return None
    return trace >> 64, trace & MASK64, parent, int(v[53:55], 16) & 1


def _w3c(h: dict, span_tags: dict) -> _Extracted:
    r = _Extracted()
    v = h.get(b"traceparent")
    if v is None:
        return r
    parsed = _traceparent(v)
    if parsed is None:
        span_tags["_dd.w3c_extraction_error"] = "malformed_traceparent"
        return r
    r.trace_high, r.trace_low, r.parent, r.priority = parsed
    r.dd_parent = _ZERO_PARENT
    state = h.get(b"tracestate")
    if state:
        _tracestate(r, state.decode("latin-1").strip(" \t"), span_tags)
    return r


def _tracestate(r: _Extracted, state: str, span_tags: dict) -> None:
    members = state.split(",")
    dd_index = None
    for i, m in enumerate(members):
        key, sep, _ = m.strip(" \t").partition("=")
        if sep and key == "dd":
            dd_index = i
            break
    if dd_index is None:
        if state:
            r.extra_w3c = state
        return
    others = ",".join(members[:dd_index] + members[dd_index + 1:])
    if others:
        r.extra_w3c = others
    dd_value = members[dd_index].strip(" \t").partition("=")[2]
    if len(dd_value) > MAX_TAGS_HEADER:
        span_tags["_dd.propagation_error"] = "extract_max_size"
        return
    extra = []
    for pair in dd_value.split(";"):
        key, sep, value = pair.partition(":")
        if not pair or not sep:
            continue
        if key == "o":
            r.origin = value.replace("~", "=")
        elif key == "s":
            try:
                priority = _int(value.encode("latin-1"))
            except InvalidContext:
                continue
            if r.priority is None or (r.priority > 0) == (priority > 0):
                r.priority = priority
        elif key == "p":
            r.dd_parent = value
        elif key.startswith("t."):
            r.tags.append(("_dd.p." + key[2:], value.replace("~", "=")))
        elif key != "ts":
            extra.append(pair)
    if extra:
        r.extra_dd = ";".join(extra)


def extract(h: dict) -> tuple[Trace, int] | None:
    """The caller's context from the request's fields (`h`: name -> first value): (the trace,
    the parent span id), or None for a new trace (nothing to extract, or it does not parse)."""
    span_tags: dict[str, str] = {}
    try:
        dd = _datadog(h, span_tags)
    except InvalidContext:
        return None
    w3c = _w3c(h, span_tags)
    if dd.trace_low is not None:
        r = dd
        if w3c.trace_low is not None and (w3c.trace_high, w3c.trace_low) == (dd.trace_high, dd.trace_low):
            r.extra_w3c, r.extra_dd = w3c.extra_w3c, w3c.extra_dd
            if r.parent != w3c.parent:
                if w3c.dd_parent is not None and w3c.dd_parent != _ZERO_PARENT:
                    r.dd_parent = w3c.dd_parent
                elif dd.parent is not None:
                    r.dd_parent = "%016x" % dd.parent
                r.parent = w3c.parent
    elif w3c.trace_low is not None:
        r = w3c
    else:
        return None   # no trace id (a lone parent id is an error too): a new trace
    if r.parent is None:
        if r.origin is None:
            return None
        r.parent = 0
    if not r.trace_low and not r.trace_high:
        return None
    trace = Trace(r.trace_high, r.trace_low)
    tags = r.tags
    if r.trace_high:
        want = "%016x" % r.trace_high
        for i, (key, value) in enumerate(tags):
            if key == "_dd.p.tid":
                if value != want:
                    span_tags["_dd.propagation_error"] = (
                        ("malformed_tid " if _tid(value) is None else "inconsistent_tid ") + value)
                    tags[i] = (key, want)
                break
        else:
            tags.append(("_dd.p.tid", want))
    trace.tags = [(k, v) for k, v in tags if k != "_dd.p.ts"]
    trace.origin = r.origin
    trace.priority = r.priority
    trace.extra_dd, trace.extra_w3c = r.extra_dd, r.extra_w3c
    if r.dd_parent is not None:
        span_tags["_dd.parent_id"] = r.dd_parent
    trace.root_tags = span_tags
    return trace, r.parent


# -- sampling --------------------------------------------------------------------------------

def format_rate(rate: float) -> str:
    """dd-trace-cpp's rate text: six decimals, trailing zeros and point stripped."""
    text = "%.6f" % rate
    return text.rstrip("0").rstrip(".") if "." in text else text


def _max_id(rate: float) -> int:
    if rate >= 1.0:
        return MASK64
    return min(MASK64, int(rate * float(MASK64)))


def _set_dm(trace: Trace) -> None:
    """dd-trace-cpp's update_decision_maker_trace_tag: `_dd.p.dm` is `-<mechanism>` when
    kept, absent when dropped."""
    tags = trace.tags
    for i, (key, _) in enumerate(tags):
        if key == "_dd.p.dm":
            if trace.priority > 0:
                tags[i] = (key, "-%d" % trace.mechanism)
            else:
                del tags[i]
            return
    if trace.priority > 0:
        tags.append(("_dd.p.dm", "-%d" % trace.mechanism))


def decide(trace: Trace, traced: bool, rates: AgentRates, service: str,
           key: str | None = None) -> None:
    """The trace's sampling priority, unless the request carried one. `key`: the agent's
    rate key of `service` (`service:<service>,env:`), when the caller keeps it made."""
    if trace.priority is not None:
        return
    trace.local = True
    if not traced:
        trace.priority, trace.mechanism = USER_DROP, MANUAL
        _set_dm(trace)
        return
    rate, mechanism = rates.rate_for_key(key or f"service:{service},env:")
    keep = (trace.low * KNUTH) & MASK64 <= _max_id(rate)
    trace.priority = AUTO_KEEP if keep else AUTO_DROP
    trace.mechanism = mechanism
    trace.rate = rate
    _set_dm(trace)
    if mechanism != DEFAULT:
        trace.tags.append(("_dd.p.ksr", format_rate(rate)))


# -- injection -------------------------------------------------------------------------------

def _sanitize(text: str, banned: str) -> str:
    return "".join("_" if (c < " " or c > "~" or c in banned) else c for c in text)


def _tracestate_dd(span: DatadogSpan) -> str:
    trace = span.trace
    out = "dd=s:%d;p:%016x" % (trace.priority, span.dd_id)
    if trace.origin is not None:
        out += ";o:" + _sanitize(trace.origin, ",;~").replace("=", "~")
    for key, value in trace.tags:
        if not key.startswith("_dd.p.") or key == "_dd.p.tid":
            continue
        out += ";t." + _sanitize(key[6:], " ,;=") + ":" + _sanitize(value, ",;~").replace("=", "~")
    if trace.extra_dd:
        out += ";" + trace.extra_dd
    while len(out) > MAX_DD_TRACESTATE:
        out = out[:out.rindex(";")]
    return out


def inject(span: DatadogSpan, headers, fresh: bool = False) -> None:
    """The span's context into the upstream request's `headers` (proxy.http.headers.Headers).
    `fresh`: the request carries none of these fields, so they go at the end (no scans)."""
    trace = span.trace
    priority = trace.priority
    out = []
    out.append((b"x-datadog-trace-id", b"%d" % trace.low))
    out.append((b"x-datadog-parent-id", b"%d" % span.dd_id))
    out.append((b"x-datadog-sampling-priority", b"%d" % priority))
    if trace.origin is not None:
        out.append((b"x-datadog-origin", trace.origin.encode("latin-1")))
    if trace.tags:
        encoded = ",".join([f"{k}={v}" for k, v in trace.tags])
        if len(encoded) > MAX_TAGS_HEADER:
            trace.root_tags["_dd.propagation_error"] = "inject_max_size"
        else:
            out.append((b"x-datadog-tags", encoded.encode("latin-1")))
    out.append((b"traceparent", b"00-%016x%016x-%016x-%s" % (
        trace.high, trace.low, span.dd_id, b"01" if priority > 0 else b"00")))
    state = _tracestate_dd(span)
    if trace.extra_w3c:
        state += "," + trace.extra_w3c
    out.append((b"tracestate", state.encode("latin-1")))
    if fresh:
        headers.fields.extend(out)
    else:
        for name, value in out:
            headers.set(name, value)


# -- encoding (main thread) ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Process:
    """What every span of this process carries: service, version, runtime id, process id, and
    the node's id and zone (Envoy's tags)."""
    service: str
    version: str
    runtime_id: str
    process_id: int
    language: str = "python"
    node_id: str = ""
    zone: str = ""


def _meta(pairs, trace: Trace, common: dict) -> tuple[dict, int]:
    """A span's meta from Envoy's tags (the `error` tag becomes the span's error) and the
    tags every span carries (`common`: language, runtime id, version)."""
    meta = dict(pairs)
    error = 1 if meta.pop("error", None) == "true" else 0
    if trace.origin is not None:
        meta["_dd.origin"] = trace.origin
    meta.update(common)
    return meta, error


def _span_map(span: DatadogSpan, resource: str, meta: dict, metrics: dict, error: int,
              proc: Process) -> dict:
    return {"service": proc.service, "name": SPAN_NAME, "resource": resource,
            "trace_id": span.trace.low, "span_id": span.dd_id, "parent_id": span.dd_parent,
            "start": span.start_us * 1000, "duration": span.duration_us * 1000,
            "error": error, "meta": meta, "metrics": metrics, "type": SPAN_TYPE}


def trace_chunk(span: DatadogSpan, proc: Process, common: dict | None = None) -> list[dict]:
    """One request's spans as the agent takes them: the request's span (the local root,
    carrying the trace's tags and decision), then the router's upstream span."""
    if common is None:
        common = _common(proc)
    trace = span.trace
    f = span.facts
    pairs = request_attributes(f, proc.node_id, proc.zone) if f is not None else list(span.tags.items())
    meta, error = _meta(pairs, trace, common)
    meta.update(trace.tags)
    meta.update(trace.root_tags)
    metrics = {"_sampling_priority_v1": float(trace.priority)}
    if trace.local and trace.mechanism in (DEFAULT, AGENT_RATE):
        metrics["_dd.agent_psr"] = float(trace.rate)
    metrics["process_id"] = float(proc.process_id)
    out = [_span_map(span, span.name or "", meta, metrics, error, proc)]
    child = span.child
    if child is not None and child.duration_us:
        cpairs = upstream_attributes(child.facts) if child.facts is not None else list(child.tags.items())
        cmeta, cerror = _meta(cpairs, trace, common)
        out.append(_span_map(child, child.name or "", cmeta,
                             {"process_id": float(proc.process_id)}, cerror, proc))
    return out


def _common(proc: Process) -> dict:
    return {"language": proc.language, "runtime-id": proc.runtime_id, "version": proc.version}


def encode_traces(spans: list, proc: Process) -> tuple[bytes, int]:
    """(the `/v0.4/traces` body, its trace count) of finished request spans."""
    common = _common(proc)
    chunks = [trace_chunk(s, proc, common) for s in spans]
    return msgpack.packb(chunks, use_bin_type=True), len(chunks)
