"""`envoy.filters.http.ratelimit`: the global rate limit filter. Each request's descriptors (the
route's and virtual host's `rate_limits` of the filter's `stage`: proxy/router/rate_limits.py)
are sent to a rate limit service (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit,
a unary gRPC call over the worker's async client to the `rate_limit_service` cluster, which
needs HTTP/2); the request waits for the answer.

Which descriptors (Envoy's Filter::populateRateLimitDescriptors): none for a route without a
route action (direct responses, redirects) or whose cluster does not exist; the route's, then
the virtual host's when the route has no rate_limits at all (OVERRIDE), always with the route's
`include_vh_rate_limits` (INCLUDE), or as the per-route `vh_rate_limits` says. No descriptor:
no call. `request_type` internal/external picks requests by `x-envoy-internal: true` (every
request is external here: request_headers.py).

The answer (Envoy's Filter::complete):
- OK (any overall_code but OVER_LIMIT): the service's request_headers_to_add are added to the
  request, its response_headers_to_add to the response; stat `ok`.
- OVER_LIMIT: `rate_limited_status` (default 429) with the service's raw_body as the body, its
  response headers (a content-type among them replaces the local reply's), `x-envoy-ratelimited:
  true` (unless `disable_x_envoy_ratelimited_header`) and the filter's
  `response_headers_to_add`; flag RL, details `request_rate_limited`; to a gRPC request HTTP
  200 with grpc-status UNAVAILABLE, or RESOURCE_EXHAUSTED with
  `rate_limited_as_resource_exhausted`. Stat `over_limit`, and the status charged to the
  cluster as an internal response (`upstream_rq_<code>`, `internal.upstream_rq_<code>`...).
  With `filter_enforced` off, the request goes on as for OK.
- A gRPC error, a timeout (`timeout`, default 20 ms), no cluster, a failed connection, an answer
  that is not a RateLimitResponse: stat `error`; with `failure_mode_deny` the request ends with
  `status_on_error` (default 500), flag RLSE, details `rate_limiter_error`; else it goes on
  (stat `failure_mode_allowed`).
With `enable_x_ratelimit_headers: DRAFT_VERSION_03` the answer's statuses give the response
`x-ratelimit-limit/-remaining/-reset` (ratelimit_wire.py). Stats are
`cluster.<route's cluster>.ratelimit.{ok,over_limit,error,failure_mode_allowed}`.

Per route `RateLimitPerRoute`: `vh_rate_limits` and `domain`; `override_option` (only its
default) and `rate_limits` are refused.

Thread affinity: config on the main thread (immutable); a filter on its stream's worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.grpc_metadata import parse_initial_metadata
from ...config.reader import ConfigError, Fields
from ...config.registry import Extension, register
from ...config.runtime_values import FractionalPercent, parse_runtime_fractional_percent
from ...grpc.unary import GrpcFailure, frame, reply_message, request_headers
from ...router.header_mutation import HeaderMutation, apply_mutations, parse_header_mutations
from ...router.rate_limits import descriptors
from ..async_client import AsyncRequest, AsyncResponse
from ..filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, PassThroughFilter
from . import ratelimit_wire as wire

__all__ = ["RateLimit", "RateLimitPerRoute", "parse_ratelimit", "parse_ratelimit_per_route"]

NAME = "envoy.filters.http.ratelimit"
PROTO = "envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
SERVICE_PATH = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
_NO_RUNTIME = "its default_value: there is no runtime layer"
BOTH, INTERNAL, EXTERNAL = 0, 1, 2
OVERRIDE, INCLUDE, IGNORE = 0, 1, 2     # RateLimitPerRoute.VhRateLimitsOptions
_RESOURCE_EXHAUSTED = 8


@dataclass(frozen=True, slots=True)
class RateLimit:
    domain: bytes
    cluster: str                                  # rate_limit_service's envoy_grpc cluster
    authority: bytes = b""
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()   # the grpc_service's, on every call
    stage: int = 0
    request_type: int = BOTH
    timeout: float = 0.02
    failure_mode_deny: bool = False
    grpc_resource_exhausted: bool = False
    x_ratelimit_headers: bool = False
    x_envoy_ratelimited: bool = True              # not disable_x_envoy_ratelimited_header
    rate_limited_status: int = 429
    status_on_error: int = 500
    response_headers_to_add: tuple[HeaderMutation, ...] = ()
    filter_enabled: FractionalPercent | None = None
    filter_enforced: FractionalPercent | None = None


@dataclass(frozen=True, slots=True)
class RateLimitPerRoute:
    vh_rate_limits: int = OVERRIDE
    domain: bytes = b""


RATELIMIT = Message(PROTO, title="HTTP filter ratelimit", model=RateLimit, fields=(
    used("domain"),
    used("stage", 0),
    used("request_type", "both"),
    used("timeout", "20ms"),
    used("failure_mode_deny", False),
    used("rate_limited_as_resource_exhausted", False, attr="grpc_resource_exhausted"),
    used("rate_limit_service", attr="cluster", why="its own table"),
    used("enable_x_ratelimit_headers", "OFF", attr="x_ratelimit_headers"),
    used("disable_x_envoy_ratelimited_header", False, attr="x_envoy_ratelimited"),
    used("rate_limited_status", attr="rate_limited_status", why="HttpStatus code; default 429"),
    used("response_headers_to_add", why="on the over-limit reply"),
    used("status_on_error", why="HttpStatus code; default 500"),
    refused("stat_prefix", "only the default (stats under cluster.<name>.ratelimit)"),
    used("filter_enabled", why=_NO_RUNTIME),
    used("filter_enforced", why=_NO_RUNTIME),
    refused("failure_mode_deny_percent"),
    refused("rate_limits", "the filter's own rate_limits (the route's and virtual host's are read)"),
))
SERVICE = Message("envoy.config.ratelimit.v3.RateLimitServiceConfig", fields=(
    used("grpc_service", attr="cluster", why="its own table"),
    used("transport_api_version", "AUTO", attr="", why="V3 or AUTO (V3); V2 is refused, as by Envoy 1.40"),
))
GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (ratelimit)", fields=(
    used("envoy_grpc", attr="cluster", why="its own table"),
    refused("google_grpc", "the Google C++ gRPC client (envoy_grpc is the one built)"),
    refused("timeout", "the filter's own `timeout` bounds the call"),
    used("initial_metadata", why="request headers of every rate limit call"),
    refused("retry_policy", "retries of the rate limit call"),
))
ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (ratelimit)", fields=(
    used("cluster_name", attr="cluster"),
    used("authority", why="default: the cluster's name"),
    refused("retry_policy", "retries of the rate limit call"),
    refused("max_receive_message_length", "a limit on the RateLimitResponse's size"),
    refused("skip_envoy_headers", "the x-envoy-* headers are always sent"),
))
HTTP_STATUS = Message("envoy.type.v3.HttpStatus (ratelimit)", fields=(used("code", attr="rate_limited_status"),))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter ratelimit per route", model=RateLimitPerRoute, fields=(
    used("vh_rate_limits", "OVERRIDE"),
    refused("override_option", "only its default", default="DEFAULT", only_default=True),
    refused("rate_limits", "per-route rate_limits (the route's own rate_limits are read)"),
    used("domain", ""),
))


def _status(f: Fields, key: str, default: int) -> int:
    if not f.has(key):
        return default
    s = HTTP_STATUS.read(f.value(key), f.at(key))
    return s.int("code", required=True, min=100, max=599)


def _service(f: Fields) -> tuple[str, bytes, tuple[tuple[bytes, bytes], ...]]:
    s = SERVICE.read(f.value("rate_limit_service", required=True), f.at("rate_limit_service"))
    if s.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO") == "V2":
        raise ConfigError(s.at("transport_api_version"), "V2 is not supported (Envoy 1.40 has only V3; AUTO means V3)")
    g = GRPC_SERVICE.read(s.value("grpc_service", required=True), s.at("grpc_service"))
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required (google_grpc is not supported yet)")
    e = ENVOY_GRPC.read(g.value("envoy_grpc"), g.at("envoy_grpc"))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    return cluster, (e.str("authority", "") or cluster).encode("latin-1"), parse_initial_metadata(g)


def parse_ratelimit(raw: Mapping[str, Any], path: str) -> RateLimit:
    f = RATELIMIT.read(raw, path)
    domain = f.str("domain", required=True)
    if not domain:
        raise ConfigError(f.at("domain"), "must not be empty")
    cluster, authority, metadata = _service(f)
    kind = f.str("request_type", "both")
    if kind not in ("both", "internal", "external", ""):   # a string field, case-sensitive
        raise ConfigError(f.at("request_type"), f'unknown value "{kind}"; expected internal, external or both')
    runtime = {}
    for key in ("filter_enabled", "filter_enforced"):
        if f.has(key):
            runtime[key] = parse_runtime_fractional_percent(f.raw_obj(key), f.at(key))
    headers = parse_header_mutations(f, "response_headers_to_add", None)
    if len(headers) > 10:
        raise ConfigError(f.at("response_headers_to_add"), "at most 10 headers")
    return RateLimit(
        domain=domain.encode("utf-8"), cluster=cluster, authority=authority,
        initial_metadata=metadata,
        stage=f.int("stage", 0, min=0, max=10),
        request_type={"internal": INTERNAL, "external": EXTERNAL}.get(kind, BOTH),
        timeout=f.duration("timeout", 0.02),
        failure_mode_deny=f.bool("failure_mode_deny", False),
        grpc_resource_exhausted=f.bool("rate_limited_as_resource_exhausted", False),
        x_ratelimit_headers=f.enum("enable_x_ratelimit_headers", ("OFF", "DRAFT_VERSION_03"), "OFF")
        == "DRAFT_VERSION_03",
        x_envoy_ratelimited=not f.bool("disable_x_envoy_ratelimited_header", False),
        rate_limited_status=_status(f, "rate_limited_status", 429),
        status_on_error=_status(f, "status_on_error", 500),
        response_headers_to_add=headers, **runtime)


def parse_ratelimit_per_route(raw: Mapping[str, Any], path: str) -> RateLimitPerRoute:
    f = PER_ROUTE.read(raw, path)
    PER_ROUTE.require_default(f, "override_option",
                              f.enum("override_option", ("DEFAULT", "OVERRIDE_POLICY", "INCLUDE_POLICY",
                                                         "IGNORE_POLICY", "NONE"), "DEFAULT"))
    vh = f.enum("vh_rate_limits", ("OVERRIDE", "INCLUDE", "IGNORE"), "OVERRIDE")
    return RateLimitPerRoute(vh_rate_limits={"OVERRIDE": OVERRIDE, "INCLUDE": INCLUDE, "IGNORE": IGNORE}[vh],
                             domain=f.str("domain", "").encode("utf-8"))


class RateLimitFactory:
    def __init__(self, config: RateLimit, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerRateLimit:
        return WorkerRateLimit(self, ctx)


class WorkerRateLimit:
    decoder = True
    encoder = True

    def __init__(self, factory: RateLimitFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.worker = ctx.worker
        health = ctx.worker.server_health
        # source_cluster: the node's cluster (Envoy's local_info clusterName).
        self.local_cluster = (health.node_cluster if health is not None else "").encode("utf-8")
        self.grpc_headers = tuple(request_headers(self.config.timeout, self.config.initial_metadata))
        self._stats: dict[str, tuple] = {}   # cluster name -> (its ClusterStats, counters)

    def stats(self, cluster) -> tuple:
        """(ok, over_limit, error, failure_mode_allowed) of `cluster` (a WorkerCluster): made
        at first use, as Envoy's, and again for a replaced cluster."""
        cs = cluster.stats
        found = self._stats.get(cluster.name)
        if found is None or found[0] is not cs:
            scope = cs.scope
            found = self._stats[cluster.name] = (cs, tuple(scope.counter("ratelimit." + n) for n in (
                "ok", "over_limit", "error", "failure_mode_allowed")))
        return found[1]

    def create(self, callbacks) -> RateLimitFilter:
        return RateLimitFilter(callbacks, self)


_IDLE, _CALLING, _DONE, _RESPONDED = 0, 1, 2, 3


class RateLimitFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: it notes the request first, when it adds)
    __slots__ = ("cb", "wf", "state", "request", "head", "cluster", "response_headers", "local")

    def __init__(self, callbacks, wf: WorkerRateLimit) -> None:
        self.cb = callbacks
        self.wf = wf
        self.state = _IDLE
        self.request: AsyncRequest | None = None
        self.head = None
        self.cluster = None
        self.response_headers: list | None = None   # added to the response (the service's, ours)
        self.local = False                          # the over-limit local reply is ours

    # -- the request -------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        cfg = wf.config
        if cfg.filter_enabled is not None and not cfg.filter_enabled.enabled(wf.worker.rand_bits):
            return FilterHeadersStatus.CONTINUE
        if cfg.request_type:
            internal = head.headers.get(b"x-envoy-internal") == b"true"
            if internal != (cfg.request_type == INTERNAL):
                return FilterHeadersStatus.CONTINUE
        cb = self.cb
        route = cb.route()
        action = route.action if route is not None else None
        if action is None or not (action.rate_limits or action.vh_rate_limits):
            return FilterHeadersStatus.CONTINUE  # (no descriptor can come of it)
        name = action.cluster or cb.route_cluster(action)
        cluster = wf.worker.clusters.get(name) if name is not None else None
        if cluster is None:
            return FilterHeadersStatus.CONTINUE
        found: list = []
        per_route = cb.per_filter_config(wf.name)
        info = cb.stream_info
        local = wf.local_cluster
        target = name.encode("utf-8")
        if action.rate_limits:
            descriptors(action.rate_limits, cfg.stage, head, info, local, target, found)
        if action.vh_rate_limits:
            vh = INCLUDE if action.include_vh_rate_limits else (
                per_route.vh_rate_limits if per_route is not None else OVERRIDE)
            if vh == INCLUDE or (vh == OVERRIDE and not action.rate_limits):
                descriptors(action.vh_rate_limits, cfg.stage, head, info, local, target, found)
        if not found:
            return FilterHeadersStatus.CONTINUE
        self.head = head
        self.cluster = cluster
        domain = per_route.domain if per_route is not None and per_route.domain else cfg.domain
        self.state = _CALLING
        self.request = AsyncRequest(wf.worker, cfg.cluster, b"POST", SERVICE_PATH, cfg.authority,
                                    list(wf.grpc_headers), frame(wire.rate_limit_request(domain, found)),
                                    cfg.timeout, self._on_answer, send_xff=True)
        self.request.send()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.state == _CALLING:   # held until the answer, under flow control
            return FilterDataStatus.STOP_ITERATION_AND_WATERMARK
        return FilterDataStatus.CONTINUE

    def decode_trailers(self, trailers) -> int:
        return FilterTrailersStatus.STOP_ITERATION if self.state == _CALLING else FilterTrailersStatus.CONTINUE

    # -- the answer --------------------------------------------------------------------------
    def _on_answer(self, response: AsyncResponse) -> None:
        self.request = None
        self.state = _DONE
        wf = self.wf
        cfg = wf.config
        ok, over_limit, error, failure_mode_allowed = wf.stats(self.cluster)
        try:
            if response.local:
                raise GrpcFailure(14, response.details)
            answer = wire.read_answer(reply_message(response.status, response.headers,
                                                    response.body, response.trailers),
                                      cfg.x_ratelimit_headers)
        except GrpcFailure:
            error.value += 1
            if not cfg.failure_mode_deny:
                failure_mode_allowed.value += 1
                self.cb.continue_decoding()
                return
            self.state = _RESPONDED
            self.cb.send_local_reply(cfg.status_on_error, b"", "RLSE", "rate_limiter_error")
            return
        extra = list(answer.response_headers)
        if answer.over_limit:
            over_limit.value += 1
            self.cluster.stats.record_filter_response(cfg.rate_limited_status)
            if cfg.x_envoy_ratelimited:
                extra.append((b"x-envoy-ratelimited", b"true"))
        else:
            ok.value += 1
        if cfg.x_ratelimit_headers:
            extra.extend(wire.x_ratelimit_headers(answer.statuses))
        self.response_headers = extra or None
        if answer.over_limit and (cfg.filter_enforced is None or cfg.filter_enforced.enabled(wf.worker.rand_bits)):
            self.state = _RESPONDED
            self.local = True
            self.cb.send_local_reply(cfg.rate_limited_status, answer.body, "RL", "request_rate_limited",
                                     grpc_status=_RESOURCE_EXHAUSTED if cfg.grpc_resource_exhausted else None)
            return
        headers = self.head.headers
        if answer.request_headers:
            self.cb.note_request_grpc()  # (keeps_request_content_type: before changing them)
        for name, value in answer.request_headers:
            headers.add(name, value)
        self.cb.continue_decoding()

    # -- the response ------------------------------------------------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        extra = self.response_headers
        if extra is not None:
            self.response_headers = None
            headers = head.headers
            if self.local and any(name == b"content-type" for name, _ in extra):
                headers.remove(b"content-type")   # the service's content-type is the reply's
            for name, value in extra:
                headers.add(name, value)
        if self.local and self.wf.config.response_headers_to_add:
            apply_mutations(self.wf.config.response_headers_to_add, head.headers, self.cb.stream_info)
        return FilterHeadersStatus.CONTINUE

    def on_destroy(self) -> None:
        if self.request is not None:
            self.request.cancel()
            self.request = None


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_ratelimit,
    factory=RateLimitFactory,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_ratelimit_per_route,
))
