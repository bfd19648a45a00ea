"""`envoy.filters.http.rbac`: role-based access control of requests.

Config `envoy.extensions.filters.http.rbac.v3.RBAC`: `rules` (an `envoy.config.rbac.v3.RBAC`:
ALLOW, DENY or LOG, with named policies; rbac_config.py), `shadow_rules` (evaluated and counted,
never enforced), `rules_stat_prefix`, `shadow_rules_stat_prefix`, `track_per_rule_stats`.
Per route (`typed_per_filter_config`): `RBACPerRoute` whose `rbac` replaces the filter's
config for that route; an `RBACPerRoute` without `rbac` turns the filter off there.

Decode: with `rules` ALLOW a request matching no policy, and with DENY a request matching one,
gets 403 `RBAC: access denied` with details `rbac_access_denied_matched_policy[<policy>]`
(`[none]` when nothing matched); LOG lets everything through. Without `rules`, everything
passes (Envoy: "no rules: allowed"). Stats as Envoy: `http.<stat_prefix>.rbac.<rules prefix>allowed`
/ `denied`, `shadow_allowed` / `shadow_denied`, and with `track_per_rule_stats`
`rbac.<prefix>policy.<name>.allowed|denied` (shadow likewise).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...config.fields_table import Message, used
from ...config.registry import Extension, register
from ...router.matchers import RequestView
from ..filter import FilterHeadersStatus, PassThroughFilter
from .rbac_config import Rbac, parse_rbac, parse_rbac_matcher

__all__ = ["RbacConfig", "parse_rbac_filter", "RbacFilter"]

RBAC_NAME = "envoy.filters.http.rbac"
RBAC_PROTO = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_PROTO = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


@dataclass(frozen=True, slots=True)
class RbacConfig:
    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""
    track_per_rule_stats: bool = False
    matcher: Any = None               # rbac_config.RbacMatcher, instead of rules
    shadow_matcher: Any = None
    # Derived at load: nothing to evaluate (every request passes); matchers instead of rules.
    inactive: bool = field(default=True, init=False, repr=False, compare=False)
    by_matcher: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_matcher = self.matcher is not None or self.shadow_matcher is not None
        object.__setattr__(self, "by_matcher", by_matcher)
        object.__setattr__(self, "inactive", not by_matcher and self.rules is None
                           and self.shadow_rules is None)


@dataclass(frozen=True, slots=True)
class RbacPerRoute:
    rbac: RbacConfig | None = None     # None: the filter is off for this route


_MATCHER = "the xDS matcher tree: use rules"

RBAC_FILTER = Message(RBAC_PROTO, title="HTTP filter rbac", model=RbacConfig,
                      bookkeeping=("inactive", "by_matcher"), fields=(
    used("rules"),
    used("shadow_rules"),
    used("rules_stat_prefix", ""),
    used("shadow_rules_stat_prefix", ""),
    used("track_per_rule_stats", False),
    used("matcher", why="matcher_list of request-header predicates naming RBAC actions"),
    used("shadow_matcher", why="as matcher, counted only"),
))

RBAC_PER_ROUTE = Message(RBAC_PER_ROUTE_PROTO, model=RbacPerRoute, fields=(used("rbac"),))


def parse_rbac_filter(raw: Mapping[str, Any], path: str) -> RbacConfig:
    f = RBAC_FILTER.read(raw, path)
    return RbacConfig(
        rules=parse_rbac(f.value("rules"), f.at("rules")) if f.has("rules") else None,
        shadow_rules=(parse_rbac(f.value("shadow_rules"), f.at("shadow_rules"))
                      if f.has("shadow_rules") else None),
        rules_stat_prefix=f.str("rules_stat_prefix", ""),
        shadow_rules_stat_prefix=f.str("shadow_rules_stat_prefix", ""),
        track_per_rule_stats=f.bool("track_per_rule_stats", False),
        matcher=parse_rbac_matcher(f.value("matcher"), f.at("matcher")) if f.has("matcher") else None,
        shadow_matcher=(parse_rbac_matcher(f.value("shadow_matcher"), f.at("shadow_matcher"))
                        if f.has("shadow_matcher") else None),
    )


def parse_rbac_per_route(raw: Mapping[str, Any], path: str) -> RbacPerRoute:
    f = RBAC_PER_ROUTE.read(raw, path)
    if not f.has("rbac"):
        return RbacPerRoute(None)
    return RbacPerRoute(parse_rbac_filter(f.value("rbac"), f.at("rbac")))


class RbacFactory:
    def __init__(self, config: RbacConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerRbacFactory:
        return WorkerRbacFactory(self, ctx)


class WorkerRbacFactory:
    decoder = True
    encoder = False

    def __init__(self, factory: RbacFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.rbac")
        self._counters: dict[Any, Any] = {}  # by name, or by (prefix, shadow, outcome)
        # The usual config, decided without the general path's steps (None: the general path):
        # enforced ALLOW or DENY rules alone, no shadow rules, no matcher, no per-rule stats.
        config = self.config
        rules = config.rules
        self.plain = (rules.compiled, rules.action == "ALLOW", config.rules_stat_prefix) if (
            rules is not None and rules.action != "LOG" and config.shadow_rules is None
            and not config.by_matcher and not config.track_per_rule_stats) else None
        self.plain_counters = [None, None]   # denied, allowed: made on first use
        # create(callbacks) makes the filter without a Python frame of its own
        self.create = partial(RbacFilter, self)

    def plain_counter(self, allowed: bool):
        c = self.plain_counters[allowed] = self.scope.counter(
            f"{self.plain[2]}{'allowed' if allowed else 'denied'}")
        return c

    def count(self, name: str) -> None:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = self.scope.counter(name)
        c.value += 1


def _ip(address: str):
    host = address.rsplit(":", 1)[0].strip("[]") if address else ""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class RbacFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf")

    def __init__(self, wf: WorkerRbacFactory, callbacks) -> None:
        self.wf = wf
        self.cb = callbacks

    def decode_headers(self, head, end_stream: bool) -> int:
        cb = self.cb
        wf = self.wf
        route = cb.route()
        entry = route.per_filter_config.get(wf.name) if route is not None else None
        if entry is None or entry.config is None:
            plain = wf.plain
            if plain is not None:
                return self._decide_plain(plain, head)
            config = wf.config
        else:
            per_route = entry.config
            if per_route.rbac is None:
                return FilterHeadersStatus.CONTINUE  # disabled for this route
            config = per_route.rbac
        if config.inactive:
            return FilterHeadersStatus.CONTINUE
        facts = LazyRequestFacts(cb, head)
        if config.by_matcher:
            return self._decide_by_matcher(config, facts)
        if config.shadow_rules is not None:
            self._decide(config.shadow_rules, facts, config, config.shadow_rules_stat_prefix, "shadow_")
        if config.rules is None:
            return FilterHeadersStatus.CONTINUE
        allowed, policy = self._decide(config.rules, facts, config, config.rules_stat_prefix, "")
        if allowed:
            return FilterHeadersStatus.CONTINUE
        cb.send_local_reply(403, b"RBAC: access denied", None,
                            f"rbac_access_denied_matched_policy[{policy or 'none'}]")
        return FilterHeadersStatus.STOP_ITERATION

    def _decide_plain(self, plain: tuple, head) -> int:
        """The filter's own ALLOW/DENY rules, enforced (WorkerRbacFactory.plain): the general
        path's outcome and counters, in fewer steps."""
        compiled, allow, _prefix = plain
        facts = LazyRequestFacts(self.cb, head)
        policy = None
        for name, permitted, principal in compiled:
            if (permitted is None or permitted(facts)) and (principal is None or principal(facts)):
                policy = name
                break
        allowed = (policy is not None) == allow
        wf = self.wf
        counter = wf.plain_counters[allowed] or wf.plain_counter(allowed)
        counter.value += 1
        if allowed:
            return FilterHeadersStatus.CONTINUE
        self.cb.send_local_reply(403, b"RBAC: access denied", None,
                                 f"rbac_access_denied_matched_policy[{policy or 'none'}]")
        return FilterHeadersStatus.STOP_ITERATION

    def _decide_by_matcher(self, config: RbacConfig, facts) -> int:
        wf = self.wf
        if config.shadow_matcher is not None:
            _name, action = config.shadow_matcher.decide(facts)
            wf.count(f"{config.shadow_rules_stat_prefix}shadow_{'denied' if action == 'DENY' else 'allowed'}")
        if config.matcher is None:
            return FilterHeadersStatus.CONTINUE
        name, action = config.matcher.decide(facts)
        if action != "DENY":
            wf.count(f"{config.rules_stat_prefix}allowed")
            return FilterHeadersStatus.CONTINUE
        wf.count(f"{config.rules_stat_prefix}denied")
        self.cb.send_local_reply(403, b"RBAC: access denied", None,
                                 f"rbac_access_denied_matched_policy[{name or 'none'}]")
        return FilterHeadersStatus.STOP_ITERATION

    def _decide(self, rbac: Rbac, facts, config: RbacConfig, prefix: str,
                shadow: str) -> tuple[bool, str | None]:
        policy = rbac.matched_policy(facts)
        if rbac.action == "LOG":
            allowed = True
            outcome = "logged" if policy else "not_logged"
        else:
            allowed = (policy is not None) == (rbac.action == "ALLOW")
            outcome = "allowed" if allowed else "denied"
        wf = self.wf
        # (wf.count inlined, its counters keyed by the name's parts: no name built per request)
        key = (prefix, shadow, outcome)
        counter = wf._counters.get(key)
        if counter is None:
            counter = wf._counters[key] = wf.scope.counter(f"{prefix}{shadow}{outcome}")
        counter.value += 1
        if config.track_per_rule_stats and policy is not None:
            wf.count(f"{prefix}policy.{policy}.{shadow}{outcome}")
        return allowed, policy



class LazyRequestFacts:
    """RequestFacts (rbac_config.py) for one HTTP request, each fact read from the stream
    when a rule first asks for it (a slot stays unset until then): a policy on a header
    parses no address and splits no path."""

    __slots__ = ("cb", "req", "_view", "_remote_ip", "_direct_remote_ip", "_local",
                 "_server_name", "_principals")

    def __init__(self, callbacks, head) -> None:
        self.cb = callbacks   # (its stream_info is read when a rule asks for a connection fact)
        self.req = head

    @property
    def info(self):
        return self.cb.stream_info

    @property
    def view(self) -> RequestView:
        try:
            return self._view
        except AttributeError:
            v = self._view = RequestView(self.req)
            return v

    @property
    def path(self) -> str:
        return self.view.path

    @property
    def remote_ip(self):
        try:
            return self._remote_ip
        except AttributeError:
            v = self._remote_ip = _ip(self.info.downstream_remote_address)
            return v

    @property
    def direct_remote_ip(self):
        try:
            return self._direct_remote_ip
        except AttributeError:
            v = self._direct_remote_ip = _ip(self.info.downstream_direct_remote_address)
            return v

    def _local_address(self) -> tuple:
        try:
            return self._local
        except AttributeError:
            local = self.info.downstream_local_address
            try:
                port = int(local.rsplit(":", 1)[1])
            except (IndexError, ValueError, AttributeError):
                port = 0
            v = self._local = (_ip(local), port)
            return v

    @property
    def local_ip(self):
        return self._local_address()[0]

    @property
    def local_port(self) -> int:
        return self._local_address()[1]

    @property
    def server_name(self) -> str:
        try:
            return self._server_name
        except AttributeError:
            tls = self.info.downstream_ssl
            v = self._server_name = ((tls.sni if tls is not None else "")
                                     or (self.info.requested_server_name or ""))
            return v

    @property
    def dynamic_metadata(self):
        """The stream's dynamic metadata as it is when the filter decides (what filters before
        it wrote: set_metadata, jwt_authn, Lua); read afresh on each ask."""
        return getattr(self.info, "dynamic_metadata", None)

    @property
    def route_metadata(self):
        route = self.cb.route()
        return route.metadata if route is not None else None

    @property
    def peer_principals(self):
        try:
            return self._principals
        except AttributeError:
            tls = self.info.downstream_ssl
            v = self._principals = (None if tls is None else
                                    (*tls.peer_uri_sans, *tls.peer_dns_sans, tls.peer_subject))
            return v


register(Extension(
    category="http_filter",
    name=RBAC_NAME,
    proto=RBAC_PROTO,
    parse=parse_rbac_filter,
    empty_config_ok=True,
    factory=RbacFactory,
    per_route_proto=RBAC_PER_ROUTE_PROTO,
    parse_per_route=parse_rbac_per_route,
))
