"""`envoy.config.route.v3.RouteConfiguration` parsed into an immutable model.

Job: validate a route configuration (from a bootstrap's inline `route_config` or an RDS push),
each message opened through its declared table (proxy.config.fields_table: every Envoy field
used, inert with why, or refused with "<path>: not supported yet"), so every error names its
full JSON path, and build frozen dataclasses with everything precompiled: regexes,
header-value formats, per-route combined header mutations, the synthetic `require_tls`
redirect route, direct-response bodies (read from `filename` here: config loading may read
files, request handling never does). The matchers' tables are in matchers.py, the redirect's
in redirect.py, the header values' in header_mutation.py, FilterConfig's in
per_filter_config.py.

Must not: match requests (see `table.py`) or do any I/O beyond reading direct-response body
files at parse time. Thread affinity: parse on the main thread; the result is immutable and
shared by all workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.config.data_source import read_data_source
from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import ConfigError, Fields, header_bytes
from proxy.config.registry import resolve
from proxy.tracing.config import Decorator, RouteTracing, parse_decorator, parse_route_tracing

from .header_mutation import HeaderMutation, combine_levels, parse_header_mutations
from .matchers import RouteMatch, parse_route_match, refuse_wrapped
from .per_filter_config import (NO_PER_FILTER_CONFIG, PerFilterConfig, merge_levels,
                               parse_typed_per_filter_config)
from .redirect import (PathRewrite, RedirectAction, RegexRewrite, parse_redirect,
                       parse_regex_rewrite)
from .hash_policy import HashPolicy, parse_hash_policy
from .internal_redirect import (InternalRedirectPolicy, legacy_internal_redirect_policy,
                                parse_internal_redirect_policy)
from .mirror_policy import MirrorPolicy, parse_mirror_policy
from .rate_limits import RateLimitEntry, parse_rate_limits
from .grpc_timeout import MAX_STREAM_DURATION, MaxStreamDuration, parse_max_stream_duration
from .retry_policy import (RETRY_REQUEST_HEADERS, RetryPolicy, parse_hedge_policy,
                           parse_retry_policy)

__all__ = ["RouteConfiguration", "VirtualHost", "Route", "RouteAction", "DirectResponseAction",
           "parse_route_configuration", "DEFAULT_ROUTE_TIMEOUT"]

DEFAULT_ROUTE_TIMEOUT = 15.0      # Envoy's RouteAction.timeout default; 0 disables
DEFAULT_MAX_DIRECT_RESPONSE_BODY = 4096
_NOT_FOUND_CODES = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}


@dataclass(frozen=True, slots=True)
class RouteAction:
    cluster: str | None = None
    cluster_header: bytes | None = None
    # A cluster specifier plugin (cluster_specifier_plugin / inline_...): `.cluster(head)`.
    cluster_specifier: Any = None
    weighted_clusters: tuple[tuple[str, int], ...] | None = None
    weighted_header_name: bytes | None = None   # header carrying the random value, if any
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: bytes | None = None
    auto_host_rewrite: bool = False
    high_priority: bool = False   # `priority: HIGH`: the cluster's HIGH circuit breakers and pools
    timeout: float = DEFAULT_ROUTE_TIMEOUT
    idle_timeout: float | None = None
    cluster_not_found_response_code: int = 503
    upgrade_configs: tuple[tuple[str, bool], ...] = ()
    # An enabled CONNECT upgrade config with `connect_config`: a CONNECT request on this route
    # is terminated here (answered 200 once a TCP connection to the host is up, its bytes then
    # streamed over it); without, a CONNECT request is forwarded to the upstream as it came.
    connect_terminate: bool = False
    # That connect_config's `allow_post`: a POST is terminated the same way (its body bytes
    # are the tunnel's); and its proxy_protocol_config's version (1 or 2; 0: none): the PROXY
    # header written first on the tunnel's upstream connection.
    connect_allow_post: bool = False
    connect_proxy_protocol: int = 0
    path_rewrite: PathRewrite = PathRewrite()
    # The route's retry_policy, else its virtual host's (Envoy: the route's replaces the
    # virtual host's whole); None: neither has one.
    retry_policy: RetryPolicy | None = None
    # The virtual host's include_request_attempt_count / include_attempt_count_in_response /
    # include_is_timeout_retry_header (x-envoy-attempt-count, x-envoy-is-timeout-retry).
    attempt_count_in_request: bool = False
    attempt_count_in_response: bool = False
    is_timeout_retry_header: bool = False
    # max_stream_duration (its presence makes Envoy ignore `timeout`: set to 0 at load) and
    # the legacy max_grpc_timeout / grpc_timeout_offset, in ms (grpc_timeout.py).
    max_stream_duration: MaxStreamDuration | None = None
    max_grpc_timeout: int | None = None
    grpc_timeout_offset: int | None = None
    request_mirror_policies: tuple[MirrorPolicy, ...] = ()
    # hash_policy (hash_policy.py): the hash a RING_HASH/MAGLEV cluster picks a host by.
    hash_policy: tuple[HashPolicy, ...] = ()
    # rate_limits (rate_limits.py): the route's, and its virtual host's (read when the route
    # has none, or with include_vh_rate_limits).
    rate_limits: tuple[RateLimitEntry, ...] = ()
    vh_rate_limits: tuple[RateLimitEntry, ...] = ()
    include_vh_rate_limits: bool = False
    # internal_redirect_policy (or the deprecated internal_redirect_action): the upstream's
    # 3xx the router follows itself (internal_redirect.py); None: every 3xx is passed on.
    internal_redirect: InternalRedirectPolicy | None = None
    # hedge_policy.hedge_on_per_try_timeout (the route's, else its virtual host's; an internal
    # request's x-envoy-hedge-on-per-try-timeout replaces it): on a per-try timeout the
    # attempt keeps running and another starts (proxy/http/router_hedge.py).
    hedge_on_per_try_timeout: bool = False
    # An internal request's own (router/steering.py; a per-request copy of the action):
    # x-envoy-upstream-rq-per-try-timeout-ms (None: the retry policy's), and
    # x-envoy-upstream-rq-timeout-alt-response (a timeout answers 204, not 504).
    per_try_override: float | None = None
    timeout_alt_response: bool = False
    rewrites_path: bool = field(default=False, init=False, compare=False)  # derived
    # x-envoy-expected-rq-timeout-ms, formatted once per route instead of once per request:
    # the per-try timeout when it is shorter than the route's, as Envoy's setTimeoutHeaders
    # (b"": no timeout at all, no header).
    timeout_ms: bytes = field(default=b"", init=False, compare=False)  # derived
    per_try_timeout: float = field(default=0.0, init=False, compare=False)  # derived

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewrites_path",
                           self.prefix_rewrite is not None or self.regex_rewrite is not None)
        per_try = self.per_try_override
        if per_try is None:
            per_try = self.retry_policy.per_try_timeout if self.retry_policy is not None else 0.0
        if self.timeout and per_try >= self.timeout:
            per_try = 0.0  # Envoy ignores a per-try timeout not shorter than the route's
        object.__setattr__(self, "per_try_timeout", per_try)
        # Envoy's setTimeoutHeaders: with hedging the upstream may use the whole route timeout.
        expected = self.timeout if self.hedge_on_per_try_timeout else (per_try or self.timeout)
        object.__setattr__(self, "timeout_ms", b"%d" % int(expected * 1000) if expected else b"")

    def choose_cluster(self, req: Any, rand: int) -> str | None:
        """Cluster name for this request; `rand` is a caller-supplied random integer."""
        if self.cluster is not None:
            return self.cluster
        if self.cluster_header is not None:
            v = req.headers.get(self.cluster_header)
            return v.decode("latin-1") if v else None
        if self.cluster_specifier is not None:
            return self.cluster_specifier.cluster(req)
        clusters = self.weighted_clusters or ()
        if self.weighted_header_name is not None:
            v = req.headers.get(self.weighted_header_name)
            if v is not None and v.isdigit():
                rand = int(v)
        total = sum(w for _, w in clusters)
        selected = rand % total
        end = 0
        for name, weight in clusters:
            end += weight
            if selected < end:
                return name
        return clusters[-1][0]  # unreachable: selected < total

    def rewrite_path(self, req: Any) -> bytes | None:
        """New :path (query kept) for prefix_rewrite / regex_rewrite, else None."""
        new = self.path_rewrite.apply(req.path_str)
        return None if new is None else new.encode("latin-1")


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    virtual_host_name: str
    match: RouteMatch | None
    action: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    request_mutations: tuple[HeaderMutation, ...] = ()
    response_mutations: tuple[HeaderMutation, ...] = ()
    # typed_per_filter_config of the route, its virtual host and route configuration, merged
    # (per_filter_config.py): filter name -> PerFilterConfig.
    per_filter_config: Mapping[str, PerFilterConfig] = NO_PER_FILTER_CONFIG
    decorator: Decorator | None = None       # tracing: the span's operation name
    tracing: RouteTracing | None = None      # tracing: samplings replacing the HCM's, tags
    # metadata.filter_metadata (namespace -> frozen JSON value): the Lua filter's metadata().
    metadata: Mapping[str, Any] = field(default_factory=lambda: _NO_ROUTE_METADATA)
    # Derived. `prepare`: the router has more to do than forward the request (a path or host
    # rewrite, request header mutations, a retry policy, attempt-count headers): one test per
    # request instead of one per feature. `retry_headers_added`: its request header mutations
    # set a header Envoy's retry state reads (x-envoy-retry-on...), which Envoy honours.
    prepare: bool = field(default=False, init=False, compare=False)
    retry_headers_added: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        a = self.action
        added = any(not m.remove and m.name in RETRY_REQUEST_HEADERS
                    for m in self.request_mutations)
        object.__setattr__(self, "retry_headers_added", added)
        object.__setattr__(self, "prepare", a is not None and bool(
            a.rewrites_path or a.host_rewrite_literal is not None or a.auto_host_rewrite
            or self.request_mutations or a.retry_policy is not None
            or a.attempt_count_in_request or a.attempt_count_in_response
            or a.max_stream_duration is not None or a.max_grpc_timeout is not None
            or a.request_mirror_policies or a.internal_redirect is not None))


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]            # lower-case
    routes: tuple[Route, ...]
    require_tls: str = "NONE"           # NONE, EXTERNAL_ONLY, ALL
    tls_redirect_route: Route | None = None


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    internal_only_headers: tuple[bytes, ...] = ()
    ignore_port_in_host_matching: bool = False
    # HTTP filters some level's FilterConfig enables or disables: the chain looks them up
    # per request (only them).
    filters_switched_per_route: frozenset[str] = frozenset()


def _levels(f: Fields) -> tuple[tuple[HeaderMutation, ...], tuple[HeaderMutation, ...]]:
    return (parse_header_mutations(f, "request_headers_to_add", "request_headers_to_remove", True),
            parse_header_mutations(f, "response_headers_to_add", "response_headers_to_remove", True))


# -- RouteAction ----------------------------------------------------------------------------

ROUTE_ACTION = Message("envoy.config.route.v3.RouteAction", model=RouteAction,
                       bookkeeping=("path_rewrite", "rewrites_path", "timeout_ms",
                                    "per_try_timeout", "per_try_override",
                                    "timeout_alt_response",  # the virtual host's, copied:
                                    "attempt_count_in_request", "attempt_count_in_response",
                                    "is_timeout_retry_header"), fields=(
    used("cluster"),
    used("cluster_header"),
    used("weighted_clusters", why="its own table"),
    used("cluster_specifier_plugin", attr="cluster_specifier",
         why="a name from the route configuration's cluster_specifier_plugins"),
    used("inline_cluster_specifier_plugin", attr="cluster_specifier"),
    used("cluster_not_found_response_code", "SERVICE_UNAVAILABLE"),
    refused("metadata_match"),
    used("prefix_rewrite"),
    used("regex_rewrite"),
    refused("path_rewrite_policy"),
    refused("path_rewrite", "substitution-format path rewrites"),
    used("host_rewrite_literal"),
    used("auto_host_rewrite", False),
    refused("host_rewrite_header"),
    refused("host_rewrite_path_regex"),
    refused("host_rewrite", "substitution-format host rewrites"),
    refused("append_x_forwarded_host"),
    used("timeout", "15s"),
    used("idle_timeout"),
    refused("flush_timeout"),
    refused("early_data_policy"),
    used("retry_policy", why="its own table; it replaces the virtual host's"),
    refused("retry_policy_typed_config", "retry policy extensions"),
    used("request_mirror_policies", why="its own table"),
    used("priority", "DEFAULT", attr="high_priority"),
    used("rate_limits", why="its own table (rate_limits.py)"),
    used("include_vh_rate_limits", False),
    used("hash_policy", why="its own table; read by RING_HASH and MAGLEV clusters"),
    refused("cors", "use the CORS filter's typed_per_filter_config"),
    used("max_grpc_timeout", why="gRPC requests' router timeout from grpc-timeout, capped"),
    used("grpc_timeout_offset"),
    used("upgrade_configs"),
    used("internal_redirect_policy", attr="internal_redirect",
         why="its own table (internal_redirect.py)"),
    used("internal_redirect_action", attr="internal_redirect",
         why="deprecated: HANDLE_INTERNAL_REDIRECT is a policy with its defaults"),
    used("max_internal_redirects", attr="internal_redirect", why="deprecated, with the above"),
    used("hedge_policy", attr="hedge_on_per_try_timeout", why="its own table; it replaces the "
         "virtual host's"),
    used("max_stream_duration", why="its own table; with it Envoy ignores `timeout`"),
))
UPGRADE_CONFIG = Message("envoy.config.route.v3.RouteAction.UpgradeConfig", fields=(
    used("upgrade_type", attr="upgrade_configs"),
    used("enabled", True, attr="upgrade_configs"),
    used("connect_config", attr="connect_terminate", why="CONNECT only: the proxy terminates "
         "the CONNECT and streams its bytes to a TCP connection to the host"),
))
CONNECT_CONFIG = Message("envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig", fields=(
    used("proxy_protocol_config", attr="connect_proxy_protocol", why="a PROXY header (the "
         "downstream connection's addresses) first on the tunnel's upstream connection"),
    used("allow_post", False, attr="connect_allow_post", why="a POST on the route is "
         "terminated as a CONNECT: its body bytes go raw to a TCP connection to the host"),
))
_NO_TLVS = "Envoy 1.40's CONNECT termination writes its header without TLVs, probed"
PROXY_PROTOCOL_CONFIG = Message("envoy.config.core.v3.ProxyProtocolConfig (connect_config)", fields=(
    used("version", "V1", attr="connect_proxy_protocol"),
    inert("pass_through_tlvs", _NO_TLVS),
    inert("added_tlvs", _NO_TLVS),
))
WEIGHTED_CLUSTER = Message("envoy.config.route.v3.WeightedCluster", fields=(
    used("clusters", attr="weighted_clusters"),
    used("total_weight", attr="", why="checked at load: the weights must add up to it"),
    inert("runtime_key_prefix", "without runtime overrides the configured weights stand"),
    used("header_name", attr="weighted_header_name"),
    refused("use_hash_policy", "choosing the weighted cluster by the hash_policy"),
))
CLUSTER_WEIGHT = Message("envoy.config.route.v3.WeightedCluster.ClusterWeight", fields=(
    used("name", attr="weighted_clusters"),
    refused("cluster_header"),
    used("weight", attr="weighted_clusters"),
    refused("metadata_match"),
    refused("request_headers_to_add", "per-weighted-cluster header mutations"),
    refused("request_headers_to_remove", "per-weighted-cluster header mutations"),
    refused("response_headers_to_add", "per-weighted-cluster header mutations"),
    refused("response_headers_to_remove", "per-weighted-cluster header mutations"),
    refused("typed_per_filter_config"),
    refused("host_rewrite_literal"),
))


def _parse_weighted(f: Fields) -> tuple[tuple[tuple[str, int], ...], bytes | None]:
    w = WEIGHTED_CLUSTER.read(f.value("weighted_clusters"), f.at("weighted_clusters"))
    clusters = []
    for item, cpath in w.list("clusters", required=True, min_items=1):
        c = CLUSTER_WEIGHT.read(item, cpath)
        name = c.str("name", required=True)
        if not name:
            raise ConfigError(c.at("name"), "must not be empty")
        clusters.append((name, c.int("weight", 0, min=0)))
    total = sum(weight for _, weight in clusters)
    if total <= 0:
        raise ConfigError(w.at("clusters"), "sum of weights must be greater than 0")
    declared = w.int("total_weight", None, min=1)
    if declared is not None and declared != total:
        raise ConfigError(w.at("total_weight"),
                          f"sum of weights ({total}) must equal total_weight ({declared})")
    w.str("runtime_key_prefix")  # accepted: without runtime overrides the weights stand
    header = w.str("header_name")
    return tuple(clusters), header_bytes(header.lower(), w.at("header_name")) if header else None


def _parse_route_action(raw: Any, path: str, match: RouteMatch, outer: _Outer) -> RouteAction:
    f = ROUTE_ACTION.read(raw, path)
    which = f.oneof("cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin",
                    "inline_cluster_specifier_plugin", required=True)
    cluster = cluster_header = weighted = header_name = specifier = None
    if which == "cluster":
        cluster = f.str("cluster")
        if not cluster:
            raise ConfigError(f.at("cluster"), "must not be empty")
    elif which == "cluster_header":
        name = f.str("cluster_header")
        if not name or name.startswith(":"):
            raise ConfigError(f.at("cluster_header"), "must be a non-empty regular header name")
        cluster_header = header_bytes(name.lower(), f.at("cluster_header"))
    elif which == "cluster_specifier_plugin":
        name = f.str("cluster_specifier_plugin")
        specifier = outer.plugins.get(name)
        if specifier is None:
            raise ConfigError(f.at("cluster_specifier_plugin"), f"unknown cluster specifier "
                              f"plugin {name!r} (not in the route configuration's "
                              "cluster_specifier_plugins)")
    elif which == "inline_cluster_specifier_plugin":
        specifier = _parse_cluster_specifier_plugin(f.raw[which], f.at(which))
    else:
        weighted, header_name = _parse_weighted(f)
    rewrite_kind = f.oneof("prefix_rewrite", "regex_rewrite")
    prefix = f.str("prefix_rewrite")
    if prefix is not None and match.kind == "safe_regex":
        raise ConfigError(f.at("prefix_rewrite"), "prefix_rewrite needs a prefix, path or "
                          "path_separated_prefix match, not safe_regex")
    regex = parse_regex_rewrite(f.raw["regex_rewrite"], f.at("regex_rewrite")) \
        if rewrite_kind == "regex_rewrite" else None
    host_literal = f.str("host_rewrite_literal")
    f.oneof("host_rewrite_literal", "auto_host_rewrite")
    upgrades = []
    connect_terminate = allow_post = False
    proxy_protocol = 0
    for item, upath in f.list("upgrade_configs"):
        u = UPGRADE_CONFIG.read(item, upath)
        kind = u.str("upgrade_type", required=True).lower()
        enabled = u.bool("enabled", True)
        upgrades.append((kind, enabled))
        if u.has("connect_config"):
            if kind != "connect":  # Envoy: "Non-CONNECT upgrade type ... has ConnectConfig"
                raise ConfigError(u.at("connect_config"), f"only a CONNECT upgrade config may have "
                                  f"one, not {kind!r}")
            c = CONNECT_CONFIG.read(u.value("connect_config"), u.at("connect_config"))
            connect_terminate = enabled
            allow_post = c.bool("allow_post", False)
            if c.has("proxy_protocol_config"):
                pp = PROXY_PROTOCOL_CONFIG.read(c.value("proxy_protocol_config"),
                                                c.at("proxy_protocol_config"))
                proxy_protocol = 1 if pp.enum("version", ("V1", "V2"), "V1") == "V1" else 2
                pp.value("pass_through_tlvs")  # accepted: no TLVs are written (see the table)
                pp.list("added_tlvs")
    code = f.enum("cluster_not_found_response_code", tuple(_NOT_FOUND_CODES),
                  "SERVICE_UNAVAILABLE")
    msd = (parse_max_stream_duration(MAX_STREAM_DURATION.read(f.value("max_stream_duration"),
                                                              f.at("max_stream_duration")))
           if f.has("max_stream_duration") else None)
    max_grpc = f.duration("max_grpc_timeout", None)
    grpc_offset = f.duration("grpc_timeout_offset", None)
    timeout = f.duration("timeout", DEFAULT_ROUTE_TIMEOUT)
    return RouteAction(
        cluster=cluster, cluster_header=cluster_header, cluster_specifier=specifier,
        weighted_clusters=weighted,
        weighted_header_name=header_name, prefix_rewrite=prefix, regex_rewrite=regex,
        host_rewrite_literal=header_bytes(host_literal, f.at("host_rewrite_literal")) if host_literal else None,
        auto_host_rewrite=f.bool("auto_host_rewrite", False),
        high_priority=f.enum("priority", ("DEFAULT", "HIGH"), "DEFAULT") == "HIGH",
        # Envoy (FilterUtility::finalTimeout): a route with max_stream_duration has no
        # router timeout; max_stream_duration bounds the stream instead.
        timeout=timeout if msd is None else 0.0,
        idle_timeout=f.duration("idle_timeout", None),
        max_stream_duration=msd,
        max_grpc_timeout=round(max_grpc * 1000) if max_grpc is not None else None,
        grpc_timeout_offset=round(grpc_offset * 1000) if grpc_offset is not None else None,
        request_mirror_policies=tuple(parse_mirror_policy(item, p)
                                      for item, p in f.list("request_mirror_policies")),
        hash_policy=tuple(parse_hash_policy(item, p) for item, p in f.list("hash_policy")),
        rate_limits=parse_rate_limits(f, "rate_limits"),
        vh_rate_limits=outer.rate_limits,
        include_vh_rate_limits=f.bool("include_vh_rate_limits", False),
        cluster_not_found_response_code=_NOT_FOUND_CODES[code],
        upgrade_configs=tuple(upgrades),
        connect_terminate=connect_terminate,
        connect_allow_post=connect_terminate and allow_post,
        connect_proxy_protocol=proxy_protocol if connect_terminate else 0,
        path_rewrite=PathRewrite(match.matched_length, prefix, regex),
        # Envoy: the route's retry_policy, if it has one, replaces the virtual host's whole.
        retry_policy=(parse_retry_policy(f.value("retry_policy"), f.at("retry_policy"))
                      if f.has("retry_policy") else outer.retry_policy),
        attempt_count_in_request=outer.attempt_count_in_request,
        attempt_count_in_response=outer.attempt_count_in_response,
        is_timeout_retry_header=outer.is_timeout_retry_header,
        internal_redirect=(parse_internal_redirect_policy(f.value("internal_redirect_policy"),
                                                          f.at("internal_redirect_policy"))
                           if f.has("internal_redirect_policy")
                           else legacy_internal_redirect_policy(f)),
        hedge_on_per_try_timeout=(parse_hedge_policy(f.value("hedge_policy"), f.at("hedge_policy"))
                                  if f.has("hedge_policy") else outer.hedge_on_per_try_timeout),
    )


# -- DirectResponseAction -------------------------------------------------------------------

DIRECT_RESPONSE = Message("envoy.config.route.v3.DirectResponseAction", model=DirectResponseAction,
                          fields=(
    used("status"),
    used("body"),
    refused("body_format", "substitution-format bodies"),
))
DIRECT_RESPONSE_BODY = Message("envoy.config.core.v3.DataSource (direct response body)", fields=(
    used("filename", attr="body", why="read at load"),
    used("inline_bytes", attr="body"),
    used("inline_string", attr="body"),
    refused("environment_variable"),
    refused("watched_directory"),
))


def _parse_direct_response(raw: Any, path: str, max_body: int) -> DirectResponseAction:
    f = DIRECT_RESPONSE.read(raw, path)
    status = f.int("status", required=True, min=200, max=599)
    body = b""
    if f.has("body"):
        body = read_data_source(DIRECT_RESPONSE_BODY, f.value("body"), f.at("body"), max_body)
        if len(body) > max_body:
            raise ConfigError(f.at("body"), f"response body is larger than "
                              f"max_direct_response_body_size_bytes ({max_body})")
    return DirectResponseAction(status, body)


# -- Route / VirtualHost / RouteConfiguration -----------------------------------------------

_NO_METADATA = "no filter or format operator here reads route metadata"
_NO_ROUTE_METADATA: Mapping[str, Any] = MappingProxyType({})
_PER_FILTER = "the filters' per-route configs (per_filter_config.py)"

ROUTE = Message("envoy.config.route.v3.Route", model=Route,
                bookkeeping=("virtual_host_name", "prepare", "retry_headers_added"),
                fields=(
    used("name"),
    used("match"),
    used("route", attr="action"),
    used("redirect"),
    used("direct_response"),
    refused("filter_action"),
    refused("non_forwarding_action"),
    used("metadata", why="filter_metadata, read by the Lua filter's metadata(), RBAC "
         "sourced_metadata ROUTE and the rate-limit metadata action (source ROUTE_ENTRY)"),
    used("decorator", why="read only when the HCM traces (proxy/tracing/tracer.py)"),
    used("typed_per_filter_config", attr="per_filter_config", why=_PER_FILTER),
    used("request_headers_to_add", attr="request_mutations"),
    used("request_headers_to_remove", attr="request_mutations"),
    used("response_headers_to_add", attr="response_mutations"),
    used("response_headers_to_remove", attr="response_mutations"),
    used("tracing", why="read only when the HCM traces (proxy/tracing/tracer.py)"),
    refused("per_request_buffer_limit_bytes"),
    refused("stat_prefix"),
    refused("request_body_buffer_limit"),
))


@dataclass(frozen=True, slots=True)
class _Outer:
    """Header levels above a route, and config-wide settings a route needs while parsing."""
    vhost_name: str
    request_levels: tuple[tuple[HeaderMutation, ...], ...]   # inner first: vhost, config
    response_levels: tuple[tuple[HeaderMutation, ...], ...]
    most_specific_wins: bool
    max_body: int
    per_filter_levels: tuple[Mapping[str, PerFilterConfig], ...] = ()  # vhost, config
    switched: set[str] | None = None   # collects names a FilterConfig switches
    retry_policy: RetryPolicy | None = None      # the virtual host's
    attempt_count_in_request: bool = False
    attempt_count_in_response: bool = False
    is_timeout_retry_header: bool = False
    rate_limits: tuple[RateLimitEntry, ...] = ()
    hedge_on_per_try_timeout: bool = False       # the virtual host's hedge_policy
    plugins: Mapping[str, Any] = field(default_factory=dict)  # cluster_specifier_plugins by name


CLUSTER_SPECIFIER_PLUGIN = Message("envoy.config.route.v3.ClusterSpecifierPlugin", fields=(
    used("extension", attr="", why="resolved by its typed_config's type"),
    refused("is_optional", "ignoring a route whose plugin is unknown"),
))


def _parse_cluster_specifier_plugin(raw: Any, path: str) -> Any:
    """A ClusterSpecifierPlugin: its extension's parsed config, which picks the cluster."""
    f = CLUSTER_SPECIFIER_PLUGIN.read(raw, path)
    _, plugin = resolve("cluster_specifier_plugin", f.value("extension", required=True),
                        f.at("extension"))
    return plugin


def _parse_route(raw: Any, path: str, outer: _Outer) -> Route:
    f = ROUTE.read(raw, path)
    refuse_wrapped(ROUTE, f, "per_request_buffer_limit_bytes", "request_body_buffer_limit")
    match = parse_route_match(f.value("match", required=True), f.at("match"))
    kind = f.oneof("route", "redirect", "direct_response", required=True)
    action = redirect = direct = None
    if kind == "route":
        action = _parse_route_action(f.raw[kind], f.at(kind), match, outer)
    elif kind == "redirect":
        length = None if match.kind == "safe_regex" else match.matched_length
        redirect = parse_redirect(f.raw[kind], f.at(kind), length)
    else:
        direct = _parse_direct_response(f.raw[kind], f.at(kind), outer.max_body)
    req_level, resp_level = _levels(f)
    per_filter = _per_filter_level(f, outer.switched)
    return Route(
        name=f.str("name", ""), virtual_host_name=outer.vhost_name, match=match,
        action=action, redirect=redirect, direct_response=direct,
        request_mutations=combine_levels((req_level,) + outer.request_levels,
                                         outer.most_specific_wins),
        response_mutations=combine_levels((resp_level,) + outer.response_levels,
                                          outer.most_specific_wins),
        per_filter_config=merge_levels(per_filter, *outer.per_filter_levels),
        decorator=parse_decorator(f.raw_obj("decorator"), f.at("decorator")),
        tracing=parse_route_tracing(f.raw_obj("tracing"), f.at("tracing")),
        metadata=_parse_metadata(f),
    )


ROUTE_METADATA = Message("envoy.config.core.v3.Metadata (route)", fields=(
    used("filter_metadata", attr="", why="the route's metadata, per filter namespace"),
    inert("typed_filter_metadata", "no filter here reads typed route metadata"),
))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _parse_metadata(f: Fields) -> Mapping[str, Any]:
    if not f.has("metadata"):
        return _NO_ROUTE_METADATA
    m = ROUTE_METADATA.read(f.value("metadata"), f.at("metadata"))
    raw = m.value("filter_metadata", {}) or {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ConfigError(m.at("filter_metadata"), "expected a map of namespace to object")
    return _freeze(raw)


def _per_filter_level(f: Fields, switched: set[str] | None) -> dict[str, PerFilterConfig]:
    level = parse_typed_per_filter_config(f.raw_obj("typed_per_filter_config"),
                                          f.at("typed_per_filter_config"))
    if switched is not None:
        switched.update(n for n, e in level.items() if e.disabled is not None)
    return level


_IN_EACH_ROUTE = "combined into each route's header mutations at load"
_MERGED = "merged into each route's per_filter_config at load"
_IN_EACH_ACTION = ("copied into each route action at load (attempt_count_in_request, "
                   "attempt_count_in_response, is_timeout_retry_header)")

VIRTUAL_HOST = Message("envoy.config.route.v3.VirtualHost", model=VirtualHost,
                       bookkeeping=("tls_redirect_route",), fields=(   # from require_tls
    used("name"),
    used("domains"),
    used("routes"),
    refused("matcher"),
    used("require_tls", "NONE"),
    refused("virtual_clusters"),
    used("rate_limits", attr="", why="copied into each route action at load (vh_rate_limits)"),
    used("request_headers_to_add", attr="", why=_IN_EACH_ROUTE),
    used("request_headers_to_remove", attr="", why=_IN_EACH_ROUTE),
    used("response_headers_to_add", attr="", why=_IN_EACH_ROUTE),
    used("response_headers_to_remove", attr="", why=_IN_EACH_ROUTE),
    refused("cors", "use the CORS filter's typed_per_filter_config"),
    used("typed_per_filter_config", attr="", why=_MERGED),
    used("include_request_attempt_count", False, attr="", why=_IN_EACH_ACTION),
    used("include_attempt_count_in_response", False, attr="", why=_IN_EACH_ACTION),
    used("retry_policy", attr="", why="each route without its own retry_policy takes it at load"),
    refused("retry_policy_typed_config", "retry policy extensions"),
    used("hedge_policy", attr="", why="each route without its own hedge_policy takes it at load"),
    used("include_is_timeout_retry_header", False, attr="", why=_IN_EACH_ACTION),
    refused("per_request_buffer_limit_bytes"),
    refused("request_body_buffer_limit"),
    refused("request_mirror_policies"),
    inert("metadata", _NO_METADATA),
))


def _parse_vhost(raw: Any, path: str, config_req: tuple[HeaderMutation, ...],
                 config_resp: tuple[HeaderMutation, ...], most_specific: bool,
                 max_body: int, seen: dict[str, str],
                 config_filters: Mapping[str, PerFilterConfig], switched: set[str],
                 plugins: Mapping[str, Any]) -> VirtualHost:
    f = VIRTUAL_HOST.read(raw, path)
    refuse_wrapped(VIRTUAL_HOST, f, "per_request_buffer_limit_bytes", "request_body_buffer_limit")
    name = f.str("name", required=True)
    if not name:
        raise ConfigError(f.at("name"), "must not be empty")
    domains = []
    for d, dpath in f.list("domains", required=True, min_items=1):
        if not isinstance(d, str) or not d:
            raise ConfigError(dpath, "expected a non-empty domain")
        if any(c in d for c in " \t\r\n\0/"):
            raise ConfigError(dpath, f"invalid domain {d!r}")
        d = d.lower()
        if d in seen:
            if d == "*":
                raise ConfigError(dpath, "only one virtual host may have the domain \"*\" "
                                  f"(already in {seen[d]})")
            raise ConfigError(dpath, f"domain {d!r} is already used by {seen[d]}")
        seen[d] = f"{path} ({name})"
        domains.append(d)
    req_level, resp_level = _levels(f)
    vhost_filters = _per_filter_level(f, switched)
    vhost_policy = (parse_retry_policy(f.value("retry_policy"), f.at("retry_policy"))
                    if f.has("retry_policy") else None)
    outer = _Outer(name, (req_level, config_req), (resp_level, config_resp), most_specific,
                   max_body, (vhost_filters, config_filters), switched, vhost_policy,
                   f.bool("include_request_attempt_count", False),
                   f.bool("include_attempt_count_in_response", False),
                   f.bool("include_is_timeout_retry_header", False),
                   parse_rate_limits(f, "rate_limits"),
                   parse_hedge_policy(f.value("hedge_policy"), f.at("hedge_policy"))
                   if f.has("hedge_policy") else False, plugins)
    routes = tuple(_parse_route(item, p, outer) for item, p in f.list("routes"))
    require_tls = f.enum("require_tls", ("NONE", "EXTERNAL_ONLY", "ALL"), "NONE")
    tls_route = None
    if require_tls != "NONE":
        # Envoy's SslRedirectRoute: a 301 to the same URL over https.
        tls_route = Route(name="", virtual_host_name=name, match=None,
                          redirect=RedirectAction(https_redirect=True, response_code=301),
                          per_filter_config=merge_levels(*outer.per_filter_levels))
    return VirtualHost(name, tuple(domains), routes, require_tls, tls_route)


ROUTE_CONFIGURATION = Message("envoy.config.route.v3.RouteConfiguration", title="Routes",
                              model=RouteConfiguration,
                              bookkeeping=("filters_switched_per_route",), fields=(
    used("name"),
    used("virtual_hosts"),
    refused("vhds", "xDS"),
    used("internal_only_headers"),
    used("response_headers_to_add", attr="", why=_IN_EACH_ROUTE),
    used("response_headers_to_remove", attr="", why=_IN_EACH_ROUTE),
    used("request_headers_to_add", attr="", why=_IN_EACH_ROUTE),
    used("request_headers_to_remove", attr="", why=_IN_EACH_ROUTE),
    used("most_specific_header_mutations_wins", False, attr="",
         why="orders each route's combined header mutations at load"),
    used("validate_clusters", attr="", why="checked at load: an inline route_config's routes "
         "must name defined clusters unless it is false"),
    used("max_direct_response_body_size_bytes", 4096, attr="",
         why="checked at load against each direct response body"),
    used("cluster_specifier_plugins", attr="", why="parsed into the routes that name them"),
    refused("request_mirror_policies"),
    used("ignore_port_in_host_matching", False),
    refused("vhost_header"),
    refused("ignore_path_parameters_in_path_matching"),
    used("typed_per_filter_config", attr="", why=_MERGED),
    inert("metadata", _NO_METADATA),
))


def parse_route_configuration(raw: Mapping[str, Any], path: str) -> RouteConfiguration:
    """Validate `raw` (a RouteConfiguration as plain dicts) found at JSON path `path`."""
    f = ROUTE_CONFIGURATION.read(raw, path)
    most_specific = f.bool("most_specific_header_mutations_wins", False)
    max_body = f.int("max_direct_response_body_size_bytes", DEFAULT_MAX_DIRECT_RESPONSE_BODY,
                     min=0, max=2**32 - 1)  # Envoy's field is a uint32
    f.bool("validate_clusters", None)  # type check; bootstrap.py checks the clusters
    req_level, resp_level = _levels(f)
    internal = []
    for h, hpath in f.list("internal_only_headers"):
        if not isinstance(h, str) or not h:
            raise ConfigError(hpath, "expected a non-empty header name")
        internal.append(header_bytes(h.lower(), hpath))
    seen: dict[str, str] = {}
    switched: set[str] = set()
    config_filters = _per_filter_level(f, switched)
    plugins: dict[str, Any] = {}
    for item, ppath in f.list("cluster_specifier_plugins"):
        ext = item.get("extension") if isinstance(item, Mapping) else None
        name = ext.get("name") if isinstance(ext, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{ppath}.extension.name", "a plugin needs a name")
        if name in plugins:
            raise ConfigError(f"{ppath}.extension.name", f"plugin name {name!r} is used twice")
        plugins[name] = _parse_cluster_specifier_plugin(item, ppath)
    vhosts = tuple(_parse_vhost(item, p, req_level, resp_level, most_specific, max_body, seen,
                                config_filters, switched, plugins)
                   for item, p in f.list("virtual_hosts"))
    names: dict[str, str] = {}
    for vh, (_, p) in zip(vhosts, f.list("virtual_hosts")):
        if vh.name in names:
            raise ConfigError(f"{p}.name", f"virtual host name {vh.name!r} is already used by "
                              f"{names[vh.name]}")
        names[vh.name] = p
    return RouteConfiguration(
        name=f.str("name", ""),
        virtual_hosts=vhosts,
        internal_only_headers=tuple(internal),
        ignore_port_in_host_matching=f.bool("ignore_port_in_host_matching", False),
        filters_switched_per_route=frozenset(switched),
    )
