"""`envoy.filters.http.ext_authz` with an HTTP or a gRPC authorization service: each request is
first shown to the service; its answer lets the request on, or ends it.

The gRPC service (`grpc_service`, envoy.service.auth.v3.Authorization/Check; its config is
ext_authz_grpc.py's): the CheckRequest and CheckResponse are ext_authz_wire.py's; the call is a
unary gRPC POST (HTTP/2 to a cluster with http2_protocol_options) over the same async client.
OK -> allowed (the answer's header mutations, removals, query parameters, response headers; a
request header the mutations would make invalid -> 503 with flag DPE, as Envoy's header check
after the filter); a gRPC error, a timeout, no cluster, a failed connection -> an error as below; else denied (the answer's status, default 403, body
and headers). Per route `check_settings.context_extensions` go in the request (merged from the
least specific level to the most). Stats as the HTTP service's.

Config `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz` with `http_service` or
`grpc_service`: `server_uri` (`cluster`, `timeout`), `path_prefix`,
`authorization_request.headers_to_add`, `authorization_response` (`allowed_upstream_headers`,
`allowed_upstream_headers_to_append`, `allowed_client_headers`,
`allowed_client_headers_on_success`), `allowed_headers`, `failure_mode_allow`,
`failure_mode_allow_header_add`, `status_on_error`, `with_request_body`, `clear_route_cache`,
`filter_enabled`, `stat_prefix`. Per route `ExtAuthzPerRoute`: `disabled`, and
`check_settings` (`disable_request_body_buffering`, `with_request_body`).

The check (Envoy's RawHttpClientImpl): the request's method, its path behind `path_prefix`,
its authority, `content-length` (0, or the body sent along), the client's Authorization and
the headers `allowed_headers` matches (case-sensitively, as Envoy 1.40), then `headers_to_add`; sent to the
cluster through the worker's async client (async_client.py) with the service's timeout (one
Deadlines per worker times every check). What goes in the check and where the answer's
headers go is worked out once per config (ext_authz_http.py's CheckPlan: the name lists
precompiled, static values encoded); the filter is an encoder only when the response may get
the service's headers (allowed_client_headers_on_success, or the gRPC service).
- 200: allowed. The answer's headers that `allowed_upstream_headers` matches replace the
  request's, `allowed_upstream_headers_to_append` ones are appended, and
  `allowed_client_headers_on_success` ones go on the client's response. Stat `ok`.
- 5xx, no answer, a timeout, no cluster: an error. With `failure_mode_allow` the request goes
  on (`failure_mode_allowed`; `x-envoy-auth-failure-mode-allowed: true` with
  failure_mode_allow_header_add); else `status_on_error` (403) with flag UAEX, details
  `ext_authz_error`. Stat `error`.
- Any other status: denied. The client gets that status, the service's body, and its headers
  (those `allowed_client_headers` matches, with Envoy's defaults), flag UAEX, details
  `ext_authz_denied`. Stat `denied`.
Stats `http.<prefix>.ext_authz.[<stat_prefix>.]{ok,denied,error,disabled,failure_mode_allowed}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...config.fields_table import Message, inert, refused, used
from ...config.reader import ConfigError, Fields, header_bytes
from ...config.registry import Extension, register
from ...config.runtime_values import FractionalPercent, parse_runtime_fractional_percent
from ...router.header_mutation import ValueFormat, compile_value_format
from ...router.matchers import StringMatcher, parse_string_matcher
from ...grpc.unary import GrpcFailure, frame, reply_message, request_headers
from ..async_client import AsyncRequest, AsyncResponse, Deadlines
from . import ext_authz_wire as wire
from .ext_authz_http import CheckPlan, check_headers
from .ext_authz_grpc import SERVICE_PATH, GrpcAuthzService, parse_grpc_service
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter

__all__ = ["ExtAuthz", "ExtAuthzPerRoute", "parse_ext_authz", "parse_ext_authz_per_route"]

NAME = "envoy.filters.http.ext_authz"
PROTO = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_GRPC = "the gRPC authorization service (envoy.service.auth.v3)"
_RAW = "header_map with raw header values in the CheckRequest"
_METADATA = "dynamic metadata (no filter here produces or reads it)"
_CONTINUE = FilterHeadersStatus.CONTINUE
_HOLD = FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK


@dataclass(frozen=True, slots=True)
class BodySettings:
    max_request_bytes: int
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


@dataclass(frozen=True, slots=True)
class ExtAuthz:
    cluster: str
    timeout: float = 0.2
    path_prefix: bytes = b""
    headers_to_add: tuple[tuple[bytes, ValueFormat], ...] = ()
    allowed_headers: tuple[StringMatcher, ...] = ()
    allowed_upstream_headers: tuple[StringMatcher, ...] = ()
    allowed_upstream_headers_to_append: tuple[StringMatcher, ...] = ()
    allowed_client_headers: tuple[StringMatcher, ...] = ()
    allowed_client_headers_on_success: tuple[StringMatcher, ...] = ()
    failure_mode_allow: bool = False
    failure_mode_allow_header_add: bool = False
    status_on_error: int = 403
    with_request_body: BodySettings | None = None
    clear_route_cache: bool = False
    filter_enabled: FractionalPercent | None = None
    stat_prefix: str = ""
    grpc_service: GrpcAuthzService | None = None


@dataclass(frozen=True, slots=True)
class ExtAuthzPerRoute:
    disabled: bool = False
    context_extensions: tuple[tuple[str, str], ...] = ()
    disable_request_body_buffering: bool = False
    with_request_body: BodySettings | None = None


EXT_AUTHZ = Message(PROTO, title="HTTP filter ext_authz", model=ExtAuthz, fields=(
    used("grpc_service", why="its own table (ext_wire.py)"),
    used("http_service", attr="cluster", why="its own table"),
    inert("transport_api_version", "V3 is the only version (AUTO means V3); the HTTP service has none"),
    used("failure_mode_allow", False),
    used("failure_mode_allow_header_add", False),
    used("with_request_body", why="its own table"),
    used("clear_route_cache", False),
    used("status_on_error", why="HttpStatus code; default 403"),
    refused("validate_mutations", "header mutation checks"),
    refused("metadata_context_namespaces", _METADATA),
    refused("typed_metadata_context_namespaces", _METADATA),
    refused("route_metadata_context_namespaces", _METADATA),
    refused("route_typed_metadata_context_namespaces", _METADATA),
    used("filter_enabled", why="its default_value: there is no runtime layer"),
    refused("filter_enabled_metadata", _METADATA),
    refused("deny_at_disable", "no runtime layer"),
    inert("include_peer_certificate", "the HTTP service is sent no certificate; with grpc_service, true is refused"),
    used("stat_prefix", ""),
    refused("bootstrap_metadata_labels_key", "destination labels from the node's metadata"),
    used("allowed_headers", why="ListStringMatcher"),
    refused("disallowed_headers"),
    inert("include_tls_session", "the HTTP service is sent no TLS session; with grpc_service, true is refused"),
    refused("charge_cluster_response_stats", "only the default (the service's cluster is charged)"),
    refused("encode_raw_headers", _RAW),
    refused("decoder_header_mutation_rules", "rules on the service's header mutations"),
    refused("enable_dynamic_metadata_ingestion", _METADATA),
    refused("filter_metadata", _METADATA),
    refused("emit_filter_state_stats", "filter state"),
))
HTTP_SERVICE = Message("envoy.extensions.filters.http.ext_authz.v3.HttpService", fields=(
    used("server_uri", attr="cluster", why="its own table"),
    used("path_prefix"),
    used("authorization_request", attr="headers_to_add", why="its own table"),
    used("authorization_response", attr="allowed_upstream_headers", why="its own table"),
    refused("retry_policy", "retries of the check request"),
))
HTTP_URI = Message("envoy.config.core.v3.HttpUri (ext_authz)", fields=(
    used("uri", attr="", why="checked; Envoy takes only its path (and host)"),
    used("cluster"),
    used("timeout", why="required, as in Envoy"),
))
AUTHZ_REQUEST = Message("envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest", fields=(
    used("allowed_headers", why="deprecated; the same as ExtAuthz.allowed_headers"),
    used("headers_to_add"),
))
AUTHZ_RESPONSE = Message("envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse", fields=(
    used("allowed_upstream_headers"),
    used("allowed_upstream_headers_to_append"),
    used("allowed_client_headers"),
    used("allowed_client_headers_on_success"),
    refused("dynamic_metadata_from_headers", _METADATA),
))
BUFFER_SETTINGS = Message("envoy.extensions.filters.http.ext_authz.v3.BufferSettings", model=BodySettings,
                          fields=(
    used("max_request_bytes", why="required, > 0"),
    used("allow_partial_message", False),
    used("pack_as_bytes", False, why="gRPC: the body as raw_body; the HTTP service sends it raw"),
))
LIST_MATCHER = Message("envoy.type.matcher.v3.ListStringMatcher (ext_authz)",
                       fields=(used("patterns", attr="allowed_headers"),))
HEADER_VALUE = Message("envoy.config.core.v3.HeaderValue (ext_authz)", fields=(
    used("key", attr="headers_to_add"),
    used("value", attr="headers_to_add"),
    refused("raw_value"),
))
HTTP_STATUS = Message("envoy.type.v3.HttpStatus (ext_authz)", fields=(used("code", attr="status_on_error"),))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter ext_authz per route", model=ExtAuthzPerRoute, fields=(
    used("disabled", False),
    used("check_settings", attr="with_request_body", why="its own table"),
))
CHECK_SETTINGS = Message("envoy.extensions.filters.http.ext_authz.v3.CheckSettings", fields=(
    used("context_extensions", why="gRPC service only (Envoy's HTTP service ignores them)"),
    used("disable_request_body_buffering", False),
    used("with_request_body"),
    refused("grpc_service", "a per-route authorization service"),
    refused("http_service", "a per-route authorization service"),
))


def _list(f: Fields, key: str) -> tuple[StringMatcher, ...]:
    if not f.has(key):
        return ()
    lf = LIST_MATCHER.read(f.value(key), f.at(key))
    # Case-sensitive unless a pattern says ignore_case (Envoy 1.40: its runtime flag
    # ext_authz_http_service_enable_case_sensitive_string_matcher is on).
    return tuple(parse_string_matcher(item, p) for item, p in lf.list("patterns", required=True))


def _body_settings(f: Fields, key: str) -> BodySettings | None:
    if not f.has(key):
        return None
    b = BUFFER_SETTINGS.read(f.value(key), f.at(key))
    return BodySettings(b.int("max_request_bytes", required=True, min=1, max=2**32 - 1),
                        b.bool("allow_partial_message", False), b.bool("pack_as_bytes", False))


def parse_ext_authz(raw: Mapping[str, Any], path: str) -> ExtAuthz:
    f = EXT_AUTHZ.read(raw, path)
    if f.oneof("grpc_service", "http_service", required=True) == "grpc_service":
        return _parse_grpc(f)
    f.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO")
    f.bool("include_peer_certificate", False)
    f.bool("include_tls_session", False)
    hs = HTTP_SERVICE.read(f.value("http_service"), f.at("http_service"))
    uri = HTTP_URI.read(hs.value("server_uri", required=True), hs.at("server_uri"))
    text = uri.str("uri", required=True)
    if not urlsplit(text if "://" in text else "http://" + text).hostname:
        raise ConfigError(uri.at("uri"), f"server URI {text!r} is not a valid URI")
    cluster = uri.str("cluster", required=True)
    if not cluster:
        raise ConfigError(uri.at("cluster"), "must not be empty")
    headers_to_add: list[tuple[bytes, ValueFormat]] = []
    allowed = _list(f, "allowed_headers")
    if hs.has("authorization_request"):
        rq = AUTHZ_REQUEST.read(hs.value("authorization_request"), hs.at("authorization_request"))
        allowed += _list(rq, "allowed_headers")
        for item, p in rq.list("headers_to_add"):
            h = HEADER_VALUE.read(item, p)
            key = h.str("key", required=True)
            headers_to_add.append((header_bytes(key.lower(), h.at("key")),
                                   compile_value_format(h.str("value", ""), h.at("value"))))
    rs = (AUTHZ_RESPONSE.read(hs.value("authorization_response"), hs.at("authorization_response"))
          if hs.has("authorization_response") else None)
    return ExtAuthz(
        cluster=cluster,
        timeout=uri.duration("timeout", required=True),
        path_prefix=(hs.str("path_prefix", "") or "").encode("latin-1"),
        headers_to_add=tuple(headers_to_add),
        allowed_headers=allowed,
        allowed_upstream_headers=_list(rs, "allowed_upstream_headers") if rs else (),
        allowed_upstream_headers_to_append=_list(rs, "allowed_upstream_headers_to_append") if rs else (),
        allowed_client_headers=_list(rs, "allowed_client_headers") if rs else (),
        allowed_client_headers_on_success=_list(rs, "allowed_client_headers_on_success") if rs else (),
        **_common(f),
    )


def _common(f: Fields) -> dict[str, Any]:
    """The fields both services share."""
    status = 403
    if f.has("status_on_error"):
        s = HTTP_STATUS.read(f.value("status_on_error"), f.at("status_on_error"))
        status = s.int("code", required=True, min=100, max=599)
    enabled = f.raw_obj("filter_enabled")
    return dict(
        failure_mode_allow=f.bool("failure_mode_allow", False),
        failure_mode_allow_header_add=f.bool("failure_mode_allow_header_add", False),
        status_on_error=status,
        with_request_body=_body_settings(f, "with_request_body"),
        clear_route_cache=f.bool("clear_route_cache", False),
        filter_enabled=(parse_runtime_fractional_percent(enabled, f.at("filter_enabled"))
                        if enabled is not None else None),
        stat_prefix=f.str("stat_prefix", ""),
    )


def _parse_grpc(f: Fields) -> ExtAuthz:
    if f.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO") == "V2":
        raise ConfigError(f.at("transport_api_version"), "V2 is not supported (Envoy 1.40 has only V3)")
    for key in ("include_peer_certificate", "include_tls_session"):
        if f.bool(key, False):
            raise ConfigError(f.at(key), "not supported yet (true: the gRPC service is sent no TLS facts)")
    service = parse_grpc_service(f, "grpc_service")
    return ExtAuthz(cluster=service.cluster, timeout=service.timeout, grpc_service=service,
                    allowed_headers=_list(f, "allowed_headers"), **_common(f))


def parse_ext_authz_per_route(raw: Mapping[str, Any], path: str) -> ExtAuthzPerRoute:
    f = PER_ROUTE.read(raw, path)
    f.oneof("disabled", "check_settings", required=True)
    if f.bool("disabled", False):
        return ExtAuthzPerRoute(disabled=True)
    if not f.has("check_settings"):
        raise ConfigError(f.at("disabled"), "must be true when set (or set check_settings)")
    c = CHECK_SETTINGS.read(f.value("check_settings"), f.at("check_settings"))
    extensions = c.raw_obj("context_extensions") or {}
    for k, v in extensions.items():
        if not isinstance(v, str):
            raise ConfigError(f"{c.at('context_extensions')}.{k}", "must be a string")
    return ExtAuthzPerRoute(disable_request_body_buffering=c.bool("disable_request_body_buffering", False),
                            with_request_body=_body_settings(c, "with_request_body"),
                            context_extensions=tuple(extensions.items()))


def _reply_headers(mutations) -> list[tuple[bytes, bytes]]:
    """A denial's headers for the local reply (each replaces the reply's own)."""
    return [(name, value) for name, value, _ in mutations if name != b"content-length"]


class ExtAuthzFactory:
    def __init__(self, config: ExtAuthz, name: str) -> None:
        self.config = config
        self.name = name
        # The HTTP service's selections, compiled once (immutable, read by every worker).
        self.plan = CheckPlan.compile(config) if config.grpc_service is None else None

    def for_worker(self, ctx) -> WorkerExtAuthz:
        return WorkerExtAuthz(self, ctx)


class WorkerExtAuthz:
    """Per worker: the stats, the timeouts of the checks (one Deadlines), and the filter's
    maker. A decoder filter; an encoder too only when the response may get headers from the
    service: the gRPC service's response_headers_to_add, or the HTTP service's
    allowed_client_headers_on_success (no per-route setting changes that, so the chain's shape
    is known from the filter's own config)."""

    decoder = True

    def __init__(self, factory: ExtAuthzFactory, ctx) -> None:
        self.name = factory.name
        config = self.config = factory.config
        self.plan = factory.plan
        self.encoder = config.grpc_service is not None or factory.plan.on_success is not None
        self.worker = ctx.worker
        self.deadlines = Deadlines(ctx.worker.dispatcher, config.timeout) if config.timeout else None
        prefix = f"http.{ctx.config.stat_prefix}.ext_authz"
        if config.stat_prefix:
            prefix += "." + config.stat_prefix
        scope = ctx.worker.stats.scope(prefix)
        self.ok = scope.counter("ok")
        self.denied = scope.counter("denied")
        self.error = scope.counter("error")
        self.disabled = scope.counter("disabled")
        self.failure_mode_allowed = scope.counter("failure_mode_allowed")

    def create(self, callbacks) -> ExtAuthzFilter:
        return ExtAuthzFilter(callbacks, self)   # (a call from Python: specialized, no type lookups)


class ExtAuthzFilter(PassThroughFilter):
    __slots__ = ("cb", "wf", "head", "request", "body", "buffering", "buffered", "pending",
                 "on_success_headers", "response_mutations")

    # The request's content-type is not changed before the service answers; the answer's
    # header changes (and failure_mode_allow_header_add) note first whether the request
    # arrived as gRPC (filter_chain_plan.py).
    keeps_request_content_type = True

    def __init__(self, callbacks, wf: WorkerExtAuthz) -> None:
        self.cb = callbacks
        self.wf = wf
        self.head = None
        self.request: AsyncRequest | None = None
        self.body: BodySettings | None = None
        self.buffering = False   # (`buffered` is set when it starts)
        self.pending = False
        self.on_success_headers: list[tuple[bytes, bytes]] | None = None
        self.response_mutations: tuple = ()   # the gRPC service's response_headers_to_add

    # -- the request -------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        cfg = wf.config
        route_cfg = self.cb.per_filter_config(wf.name)
        body = cfg.with_request_body
        if route_cfg is not None:
            if route_cfg.disabled:
                return _CONTINUE
            if route_cfg.disable_request_body_buffering:
                body = None
            elif route_cfg.with_request_body is not None:
                body = route_cfg.with_request_body
        if cfg.filter_enabled is not None and not cfg.filter_enabled.enabled(wf.worker.rand_bits):
            wf.disabled.value += 1
            return _CONTINUE
        self.head = head
        if body is not None and not end_stream:
            self.body = body
            self.buffering = True
            self.buffered = 0
            return FilterHeadersStatus.STOP_ITERATION
        # (no body to send along: no x-envoy-auth-partial-body either, as Envoy)
        self._check(b"", False)
        return _HOLD

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.buffering:
            return FilterDataStatus.STOP_ITERATION_AND_BUFFER if self.pending else 0
        self.buffered += len(data)
        limit = self.body.max_request_bytes
        if end_stream or self.buffered >= limit:
            if self.buffered > limit and not self.body.allow_partial_message:
                self.buffering = False
                self.cb.send_local_reply(413, b"Payload Too Large", None, "request_payload_too_large")
                return FilterDataStatus.STOP_ITERATION_NO_BUFFER
            self.buffering = False
            whole = bytes(self.cb.decoding_buffer() or b"") + data
            self._check(whole[:limit], not end_stream or len(whole) > limit)
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def decode_trailers(self, trailers) -> int:
        if self.buffering:
            self.buffering = False
            self._check(bytes(self.cb.decoding_buffer() or b"")[:self.body.max_request_bytes], False)
        return 1 if self.pending else 0

    def _check(self, body: bytes, partial: bool) -> None:
        """Ask the service (Envoy's RawHttpClientImpl::check): the request's method, its path
        behind path_prefix, its authority, and the headers of ext_authz_http.check_headers."""
        wf = self.wf
        cfg = wf.config
        if cfg.grpc_service is not None:
            return self._check_grpc(body, partial)
        head = self.head
        fields = check_headers(wf.plan, head.headers.fields, len(body),
                               partial if self.body is not None else None, self.cb)
        self.pending = True
        request = self.request = AsyncRequest(
            wf.worker, cfg.cluster, head.method, cfg.path_prefix + head.path if cfg.path_prefix else head.path,
            head.authority, fields, body, cfg.timeout, self._on_answer, False, wf.deadlines)
        request.send()

    def _check_grpc(self, body: bytes, partial: bool) -> None:
        """Ask the gRPC service (Envoy's GrpcClientImpl::check): one CheckRequest, unary."""
        wf = self.wf
        cfg = wf.config
        service = cfg.grpc_service
        extensions: dict[str, str] = {}
        for level in reversed(self.cb.all_per_filter_configs(wf.name)):
            extensions.update(level.context_extensions)
        settings = self.body
        rand = wf.worker.rand_bits
        message = wire.check_request(
            self.head, self.cb.stream_info, rand() << 32 | rand(), cfg.allowed_headers,
            body if settings is not None else None, partial,
            settings is not None and settings.pack_as_bytes, extensions)
        metadata = tuple((name, value.format(self.cb).encode("latin-1", "replace"))
                         for name, value in service.initial_metadata)
        self.pending = True
        self.request = AsyncRequest(wf.worker, service.cluster, b"POST", SERVICE_PATH,
                                    service.authority, request_headers(service.timeout, metadata),
                                    frame(message), service.timeout, self._on_grpc_answer,
                                    True, wf.deadlines)   # Envoy's gRPC async client appends its address
        self.request.send()

    # -- the answer --------------------------------------------------------------------------
    def _on_grpc_answer(self, response: AsyncResponse) -> None:
        self.request = None
        self.pending = False
        wf = self.wf
        try:
            if response.local:
                raise GrpcFailure(14, response.details)
            answer = wire.read_answer(reply_message(response.status, response.headers,
                                                          response.body, response.trailers))
        except GrpcFailure:
            wf.error.value += 1
            self._on_error()
            return
        if answer.kind == wire.ALLOW:
            wf.ok.value += 1
            self._allow_grpc(answer)
        elif answer.kind == wire.DENY:
            wf.denied.value += 1
            self._reply(answer.status, answer.body, "ext_authz_denied", _reply_headers(answer.headers))
        else:
            wf.error.value += 1
            self._on_error(answer)

    def _allow_grpc(self, answer) -> None:
        head = self.head
        headers = head.headers
        mutations = [m for m in answer.headers if m[0][:1] != b":"]
        self.response_mutations = answer.response_headers   # on any reply, the local one too
        bad = wire.invalid_header(mutations)
        if bad is not None:  # Envoy: the request's headers are checked once the filter goes on
            self.cb.send_local_reply(503, bad.encode("latin-1"), "DPE",
                                     "filter_removed_required_request_headers{%s}" % bad.replace(" ", "_"))
            return
        if mutations or answer.remove:
            self.cb.note_request_grpc()   # (before the request's headers change)
        changed = wire.apply_mutations(headers, mutations)
        for name in answer.remove:
            if name[:1] != b":" and name != b"host":   # Envoy's isRemovableHeader
                changed = headers.remove(name) or changed
        if answer.query_set or answer.query_remove:
            head.set_path(wire.rewrite_query(head.path, answer.query_set, answer.query_remove))
            changed = True
        if changed and self.wf.config.clear_route_cache:
            self.cb.clear_route_cache()
        self.cb.continue_decoding()

    def _on_answer(self, answer: AsyncResponse) -> None:
        self.request = None
        self.pending = False
        wf = self.wf
        status = answer.status
        if status == 200 and not answer.local:
            wf.ok.value += 1
            if wf.plan.reads_answer:
                self._allow(wf.plan, answer.headers)
            self.cb.continue_decoding()
        elif answer.local or status >= 500:
            wf.error.value += 1
            self._on_error()
        else:
            wf.denied.value += 1
            self._deny(answer)

    def _allow(self, plan: CheckPlan, answer_headers) -> None:
        """A 200's headers: those allowed_upstream_headers names replace the request's,
        allowed_upstream_headers_to_append ones are appended, and
        allowed_client_headers_on_success ones go on the client's response."""
        headers = self.head.headers
        upstream, append, on_success = plan.upstream, plan.upstream_append, plan.on_success
        changed = False
        for name, value in answer_headers:
            name = name.lower()
            if upstream is not None and name in upstream:
                if not changed:
                    self.cb.note_request_grpc()   # (before the request's headers change)
                headers.set(name, value)
                changed = True
            if append is not None and name in append:
                if not changed:
                    self.cb.note_request_grpc()
                headers.fields.append((name, value))
                changed = True
            if on_success is not None and name in on_success:
                if self.on_success_headers is None:
                    self.on_success_headers = []
                self.on_success_headers.append((name, value))
        if changed and self.wf.config.clear_route_cache:
            self.cb.clear_route_cache()

    def _deny(self, answer: AsyncResponse) -> None:
        """The service's status, body and headers (those allowed_client_headers names, with
        Envoy's defaults; all but host when it is unset) to the client."""
        client = self.wf.plan.client
        extra = []
        for name, value in answer.headers:
            name = name.lower()
            if name == b"content-length":
                continue  # the local reply's own
            if client is not None:
                if name in client:
                    extra.append((name, value))
            elif name != b"host":
                extra.append((name, value))
        self._reply(answer.status, answer.body, "ext_authz_denied", extra)

    def _on_error(self, answer=None) -> None:
        cfg = self.wf.config
        if cfg.failure_mode_allow:
            self.wf.failure_mode_allowed.value += 1
            if cfg.failure_mode_allow_header_add:
                self.cb.note_request_grpc()   # (before the request's headers change)
                self.head.headers.set(b"x-envoy-auth-failure-mode-allowed", b"true")
            self.cb.continue_decoding()
            return
        if answer is not None:  # the gRPC service's error_response
            self._reply(answer.status or cfg.status_on_error, answer.body, "ext_authz_error",
                        _reply_headers(answer.headers))
            return
        self._reply(cfg.status_on_error, b"", "ext_authz_error", None)

    def _reply(self, status: int, body: bytes, details: str, extra) -> None:
        self.cb.send_local_reply(status, body, "UAEX", details, extra)

    # -- the response (only when the factory is an encoder) ----------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        if self.on_success_headers:
            for name, value in self.on_success_headers:
                head.headers.set(name, value)
        if self.response_mutations:
            wire.apply_mutations(head.headers, self.response_mutations)
        return _CONTINUE

    def on_destroy(self) -> None:
        if self.request is not None:
            self.request.cancel()
            self.request = None


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_ext_authz,
    factory=ExtAuthzFactory,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_ext_authz_per_route,
))
