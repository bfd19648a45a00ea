"""`envoy.filters.http.fault`: inject delays and aborts (Envoy's fault injection filter).

Config `envoy.extensions.filters.http.fault.v3.HTTPFault` (also its per-route config):
`delay` (`fixed_delay` or `header_delay`, `percentage`), `abort` (`http_status`,
`grpc_status` or `header_abort`, `percentage`), `upstream_cluster`, `headers`,
`downstream_nodes`, `max_active_faults`, `disable_downstream_cluster_stats`; the `*_runtime`
keys are accepted (there is no runtime layer, so the configured values apply, as in Envoy when
the runtime has no such key). `response_rate_limit` and `filter_metadata` are refused.

Per request, as Envoy's filter does: the route's per-filter config replaces the filter's; the
request must go to `upstream_cluster` (if set), come from one of `downstream_nodes`
(x-envoy-downstream-service-node) and match `headers`; then a delay (a timer; the request
waits with StopIteration, its body under flow control) and, after it or instead, an abort
(a local reply "fault filter abort"). Header-controlled faults read
x-envoy-fault-delay-request (ms), x-envoy-fault-abort-request (status),
x-envoy-fault-abort-grpc-request, and their -percentage headers, which can only lower the
configured percentage. `max_active_faults` bounds faults in progress across all workers.
Stats `http.<stat_prefix>.fault.{delays_injected,aborts_injected,faults_overflow}`, gauge
`active_faults`, and per downstream cluster `fault.<cluster>.{delays,aborts}_injected`;
response flags DI (delayed) and FI (aborted).

Thread affinity: the config and the shared active-fault count are made on the main thread;
filters live on the worker of their stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ...config.runtime_values import (FractionalPercent,
                                          parse_fractional_percent)
from ...config.fields_table import Message, inert, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...router.matchers import HeaderMatcher, parse_header_matcher
from ...threads.shared_count import SharedCount
from ..filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, PassThroughFilter

__all__ = ["FaultConfig", "parse_fault", "FaultFilter", "FAULT_PROTO"]

FAULT_NAME = "envoy.filters.http.fault"
FAULT_PROTO = "envoy.extensions.filters.http.fault.v3.HTTPFault"

_DELAY_HEADER = b"x-envoy-fault-delay-request"
_DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
_ABORT_HEADER = b"x-envoy-fault-abort-request"
_ABORT_GRPC_HEADER = b"x-envoy-fault-abort-grpc-request"
_ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"
_NODE_HEADER = b"x-envoy-downstream-service-node"
_CLUSTER_HEADER = b"x-envoy-downstream-service-cluster"

_RUNTIME_KEYS = ("delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime",
                 "abort_http_status_runtime", "max_active_faults_runtime",
                 "response_rate_limit_percent_runtime", "abort_grpc_status_runtime")


# -- config ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed_ms: int | None            # fixed_delay, or None: header_delay
    percentage: FractionalPercent


@dataclass(frozen=True, slots=True)
class FaultAbort:
    http_status: int | None         # one of the three, or neither: header_abort
    grpc_status: int | None
    percentage: FractionalPercent

    @property
    def from_header(self) -> bool:
        return self.http_status is None and self.grpc_status is None


@dataclass(frozen=True, slots=True)
class FaultConfig:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    upstream_cluster: str = ""
    headers: tuple[HeaderMatcher, ...] = ()
    downstream_nodes: frozenset[str] = frozenset()
    max_active_faults: int | None = None
    disable_downstream_cluster_stats: bool = False


_NO_RUNTIME = "there is no runtime layer: the configured value applies, as in Envoy without the key"

FAULT = Message(FAULT_PROTO, title="HTTP filter fault", model=FaultConfig, fields=(
    used("delay"),
    used("abort"),
    used("upstream_cluster", ""),
    used("headers"),
    used("downstream_nodes"),
    used("max_active_faults"),
    used("disable_downstream_cluster_stats", False),
    *(inert(key, _NO_RUNTIME) for key in _RUNTIME_KEYS),
    refused("response_rate_limit"),
    refused("filter_metadata"),
))
FAULT_DELAY = Message("envoy.extensions.filters.common.fault.v3.FaultDelay", model=FaultDelay, fields=(
    used("fixed_delay", attr="fixed_ms"),
    used("header_delay", attr="", why="the delay comes from x-envoy-fault-delay-request"),
    used("percentage", "0%"),
    refused("type", "deprecated: only FIXED existed"),
))
FAULT_ABORT = Message("envoy.extensions.filters.http.fault.v3.FaultAbort", model=FaultAbort, fields=(
    used("http_status"),
    used("grpc_status"),
    used("header_abort", attr="", why="the status comes from x-envoy-fault-abort-request"),
    used("percentage", "0%"),
))
EMPTY = Message("envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay", fields=())


def _parse_delay(raw: Any, path: str) -> FaultDelay:
    f = FAULT_DELAY.read(raw, path)
    kind = f.oneof("fixed_delay", "header_delay", required=True)
    fixed = None
    if kind == "fixed_delay":
        seconds = f.duration("fixed_delay")
        if seconds <= 0:
            raise ConfigError(f.at("fixed_delay"), "must be greater than 0s")
        fixed = max(1, round(seconds * 1000))
    else:
        EMPTY.read(f.raw["header_delay"], f.at("header_delay"))
    return FaultDelay(fixed, parse_fractional_percent(f.raw_obj("percentage"), f.at("percentage")))


def _parse_abort(raw: Any, path: str) -> FaultAbort:
    f = FAULT_ABORT.read(raw, path)
    kind = f.oneof("http_status", "grpc_status", "header_abort", required=True)
    http = grpc = None
    if kind == "http_status":
        http = f.int("http_status", min=200, max=599)  # Envoy: [200, 600)
    elif kind == "grpc_status":
        grpc = f.int("grpc_status", min=0, max=2**32 - 1)
    else:
        EMPTY.read(f.raw["header_abort"], f.at("header_abort"))
    return FaultAbort(http, grpc, parse_fractional_percent(f.raw_obj("percentage"),
                                                           f.at("percentage")))


def parse_fault(raw: Mapping[str, Any], path: str) -> FaultConfig:
    f = FAULT.read(raw, path)
    for key in _RUNTIME_KEYS:
        f.str(key, "")  # no runtime layer: the configured value is what applies
    delay = f.value("delay")
    abort = f.value("abort")
    return FaultConfig(
        delay=_parse_delay(delay, f.at("delay")) if delay is not None else None,
        abort=_parse_abort(abort, f.at("abort")) if abort is not None else None,
        upstream_cluster=f.str("upstream_cluster", ""),
        headers=tuple(parse_header_matcher(h, p) for h, p in f.list("headers")),
        downstream_nodes=frozenset(f.strs("downstream_nodes")),
        max_active_faults=f.int("max_active_faults", None, min=0, max=2**32 - 1),
        disable_downstream_cluster_stats=f.bool("disable_downstream_cluster_stats", False),
    )


# -- runtime ---------------------------------------------------------------------------------

class FaultFactory:
    """Main thread: the parsed config and the shared active-fault count."""

    def __init__(self, config: FaultConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.active = SharedCount()  # faults in progress, all workers (max_active_faults)

    def for_worker(self, ctx) -> WorkerFaultFactory:
        return WorkerFaultFactory(self, ctx)


class WorkerFaultFactory:
    decoder = True
    encoder = False

    def __init__(self, factory: FaultFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.header_only = _header_only(factory.config)  # (the filter's own config's, once)
        self.active = factory.active
        self.worker = ctx.worker
        self.scope = scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.fault")
        self.delays_injected = scope.counter("delays_injected")
        self.aborts_injected = scope.counter("aborts_injected")
        self.faults_overflow = scope.counter("faults_overflow")
        scope.counter("response_rl_injected")  # declared as Envoy's; rate limits are refused
        self.active_faults = scope.gauge("active_faults")

    def create(self, callbacks) -> FaultFilter:
        return FaultFilter(callbacks, self)


_FAULT_HEADER_PREFIX = b"x-envoy-fault-"
_NO_FIELDS: Mapping[bytes, bytes] = MappingProxyType({})  # (until the request's are read)


def _fault_headers(head) -> dict[bytes, bytes]:
    """The request's x-envoy-fault-* fields, in one pass over its headers."""
    return {n: v for n, v in head.headers.fields if n.startswith(_FAULT_HEADER_PREFIX)}


def _header_int(fields: dict[bytes, bytes], name: bytes) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        n = int(value.strip(), 10)
    except ValueError:
        return None
    return n if n >= 0 else None


def _header_only(cfg: FaultConfig) -> bool:
    """Every fault this config can inject needs an x-envoy-fault-* request header."""
    return ((cfg.delay is None or cfg.delay.fixed_ms is None)
            and (cfg.abort is None or cfg.abort.from_header))


class FaultFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf", "cfg", "timer", "active", "downstream_cluster", "fault_fields")

    def __init__(self, callbacks, wf: WorkerFaultFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.cfg = wf.config
        self.timer = None
        self.active = False
        self.downstream_cluster = None
        self.fault_fields: Mapping[bytes, bytes] = _NO_FIELDS

    # -- decode ----------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        cb = self.cb
        wf = self.wf
        cfg = self.cfg = cb.per_filter_config(wf.name) or wf.config
        if cfg.upstream_cluster and not self._to_cluster(cfg.upstream_cluster):
            return FilterHeadersStatus.CONTINUE
        if cfg.downstream_nodes:
            node = head.headers.get(_NODE_HEADER)
            if node is None or node.decode("latin-1") not in cfg.downstream_nodes:
                return FilterHeadersStatus.CONTINUE
        for matcher in cfg.headers:
            if not matcher.matches(head):
                return FilterHeadersStatus.CONTINUE
        fields = self.fault_fields = _fault_headers(head)
        if not fields and (wf.header_only if cfg is wf.config else _header_only(cfg)):
            return FilterHeadersStatus.CONTINUE  # header-controlled faults, none asked for
        cluster = head.headers.get(_CLUSTER_HEADER)
        if cluster and not cfg.disable_downstream_cluster_stats:
            self.downstream_cluster = cluster.decode("latin-1")
        delay_ms = self._delay_ms(head)
        if delay_ms is not None and self._try_activate():
            self.timer = cb.dispatcher.call_later(delay_ms / 1000.0, self._on_delay_done)
            self._count("delays_injected")
            cb.stream_info.set_response_flag("DI")
            return FilterHeadersStatus.STOP_ITERATION
        if self._abort_enabled(head) and self._try_activate():
            self._abort(head)
            return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.timer is None:
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_WATERMARK

    def decode_trailers(self, trailers) -> int:
        if self.timer is None:
            return FilterTrailersStatus.CONTINUE
        return FilterTrailersStatus.STOP_ITERATION

    def on_destroy(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        if self.active:
            self.active = False
            self.wf.active.release()
            self.wf.active_faults.value -= 1

    # -- faults ----------------------------------------------------------------------------
    def _to_cluster(self, name: str) -> bool:
        route = self.cb.route()
        action = route.action if route is not None else None
        return action is not None and action.cluster == name

    def _draw(self, percentage: FractionalPercent) -> bool:
        return percentage.enabled(self.wf.worker.rand_bits)

    def _delay_ms(self, head) -> int | None:
        delay = self.cfg.delay
        if delay is None:
            return None
        percentage = delay.percentage
        if delay.fixed_ms is None:
            header_percent = _header_int(self.fault_fields, _DELAY_PERCENT_HEADER)
            if header_percent is not None:
                percentage = percentage.capped(header_percent)
        if not self._draw(percentage):
            return None
        if delay.fixed_ms is not None:
            return delay.fixed_ms
        ms = _header_int(self.fault_fields, _DELAY_HEADER)
        return ms if ms else None  # absent, malformed or 0: no delay

    def _abort_enabled(self, head) -> bool:
        abort = self.cfg.abort
        if abort is None:
            return False
        percentage = abort.percentage
        if abort.from_header:
            if self._abort_status(head) is None:
                return False
            header_percent = _header_int(self.fault_fields, _ABORT_PERCENT_HEADER)
            if header_percent is not None:
                percentage = percentage.capped(header_percent)
        return self._draw(percentage)

    def _abort_status(self, head) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) for this request's abort, or None."""
        abort = self.cfg.abort
        if abort.http_status is not None:
            return abort.http_status, None
        if abort.grpc_status is not None:
            return 200, abort.grpc_status
        status = _header_int(self.fault_fields, _ABORT_HEADER)
        if status is not None and 200 <= status < 600:
            return status, None
        grpc = _header_int(self.fault_fields, _ABORT_GRPC_HEADER)
        if grpc is not None:
            return 200, grpc
        return None

    def _abort(self, head) -> None:
        status, grpc = self._abort_status(head)
        self._count("aborts_injected")
        self.cb.send_local_reply(status, b"fault filter abort", "FI", "fault_filter_abort",
                                 grpc_status=grpc)

    def _on_delay_done(self) -> None:
        self.timer = None
        head = self.cb.request_head
        if self._abort_enabled(head):  # a delay can be followed by an abort
            self._abort(head)
        else:
            self.cb.continue_decoding()

    def _try_activate(self) -> bool:
        wf = self.wf
        if not wf.active.try_acquire(self.cfg.max_active_faults):
            wf.faults_overflow.value += 1
            return False
        self.active = True
        wf.active_faults.value += 1
        return True

    def _count(self, name: str) -> None:
        getattr(self.wf, name).value += 1
        if self.downstream_cluster:
            self.wf.scope.counter(f"{self.downstream_cluster}.{name}").value += 1


register(Extension(
    category="http_filter",
    name=FAULT_NAME,
    proto=FAULT_PROTO,
    parse=parse_fault,
    factory=FaultFactory,
    per_route_proto=FAULT_PROTO,
    parse_per_route=parse_fault,
))
