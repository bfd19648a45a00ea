"""Config model of Envoy's role-based access control (`envoy.config.rbac.v3.RBAC`), as the
HTTP filter `envoy.filters.http.rbac` uses it: policies of permissions (what is asked) and
principals (who asks), each a small tree of and/or/not over leaf matchers.

Job: validate into immutable matchers whose `matches(req)` the filter calls (rbac.py). Every
field is declared once in the tables; what needs data ftproxy does not keep (filter state,
CEL conditions) is refused by name. `metadata` (a MetadataMatcher, router/metadata_matcher.py)
tests the stream's dynamic metadata; `sourced_metadata` the dynamic metadata (DYNAMIC) or the
route's metadata (ROUTE). The network filter's facts have no dynamic metadata (no network
filter here writes a connection's): a metadata rule there sees none.
Must not: do I/O. Thread affinity: parsed on the main thread; immutable afterwards.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError, Fields
from ...router.matchers import HeaderMatcher, parse_header_matcher, parse_string_matcher
from ...router.metadata_matcher import parse_metadata_matcher

__all__ = ["Rbac", "Policy", "Rule", "parse_rbac", "ACTIONS"]

_P = "envoy.config.rbac.v3"
ACTIONS = ("ALLOW", "DENY", "LOG")
_NO_FILTER_STATE = "no filter here writes filter state"


class RequestFacts:
    """What the leaf matchers read from one request (built once per request by the filter)."""

    __slots__ = ("view", "req", "path", "remote_ip", "direct_remote_ip", "local_ip", "local_port",
                 "server_name", "peer_principals")

    def __init__(self, view, path: str, remote_ip, direct_remote_ip, local_ip, local_port: int,
                 server_name: str, peer_principals: tuple[str, ...] | None) -> None:
        self.view = view                      # for HeaderMatcher (router.matchers.RequestView)
        self.req = view.req if view is not None else None  # the request head
        self.path = path                      # the path without its query
        self.remote_ip = remote_ip            # ipaddress objects (None if unknown)
        self.direct_remote_ip = direct_remote_ip
        self.local_ip = local_ip
        self.local_port = local_port
        self.server_name = server_name        # the TLS SNI ("" without)
        self.peer_principals = peer_principals  # URI SANs, else DNS SANs, else subject; None: no TLS cert

    @property
    def dynamic_metadata(self) -> None:
        """A connection's dynamic metadata: none (no network filter here writes any)."""
        return None

    @property
    def route_metadata(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    """One permission or principal: `kind` and its argument; and/or/not hold sub-rules.
    The filter does not walk rules per request: `predicate(rule)` turns one into a function."""
    kind: str
    value: Any = None


def _true(r: RequestFacts) -> bool:
    return True


def _any_of(fns: tuple) -> Callable[[RequestFacts], bool]:
    if len(fns) == 1:
        return fns[0]

    def any_of(r: RequestFacts) -> bool:
        for fn in fns:
            if fn(r):
                return True
        return False
    return any_of


def _all_of(fns: tuple) -> Callable[[RequestFacts], bool]:
    if len(fns) == 1:
        return fns[0]

    def all_of(r: RequestFacts) -> bool:
        for fn in fns:
            if not fn(r):
                return False
        return True
    return all_of


def _header_predicate(m: HeaderMatcher) -> Callable[[RequestFacts], bool]:
    s = m.string
    if (s is not None and s.kind == "exact" and not s.ignore_case and not m.invert
            and m.name[:1] != ":" and m.name != "host"):
        # The common policy (an exact header value), without decoding: Envoy joins repeated
        # headers with "," before matching, as HeaderMatcher.matches does.
        try:
            name, want = m.name.encode("latin-1"), s.value.encode("latin-1")
        except UnicodeEncodeError:   # no header value can equal it: HeaderMatcher says so
            return lambda r: m.matches(r.req)
        if not want and m.treat_missing_as_empty:
            return lambda r: m.matches(r.req)

        def header_exact(r: RequestFacts) -> bool:
            values = [v for k, v in r.req.headers.fields if k == name]  # (Headers.get_all)
            if len(values) == 1:
                return values[0] == want
            return bool(values) and b",".join(values) == want
        return header_exact
    return lambda r: m.matches(r.req)


def predicate(rule: Rule) -> Callable[[RequestFacts], bool]:
    """The function deciding whether one request matches `rule` (built once, at load)."""
    kind, value = rule.kind, rule.value
    if kind == "any":
        return _true
    if kind == "and":
        return _all_of(tuple(predicate(sub) for sub in value))
    if kind == "or":
        return _any_of(tuple(predicate(sub) for sub in value))
    if kind == "not":
        inner = predicate(value)
        return lambda r: not inner(r)
    if kind == "header":
        return _header_predicate(value)
    if kind == "url_path":
        return lambda r: value.match(r.path)
    if kind in ("remote_ip", "direct_remote_ip", "destination_ip"):
        attr = {"remote_ip": "remote_ip", "direct_remote_ip": "direct_remote_ip",
                "destination_ip": "local_ip"}[kind]
        version = value.version

        def ip_in(r: RequestFacts) -> bool:
            ip = getattr(r, attr)
            return ip is not None and ip.version == version and ip in value
        return ip_in
    if kind == "destination_port":
        return lambda r: r.local_port == value
    if kind == "destination_port_range":
        lo, hi = value
        return lambda r: lo <= r.local_port < hi
    if kind == "requested_server_name":
        return lambda r: value.match(r.server_name)
    if kind == "metadata":
        return lambda r: value.matches(r.dynamic_metadata)
    if kind == "route_metadata":
        return lambda r: value.matches(r.route_metadata)
    if kind == "authenticated":
        def authenticated(r: RequestFacts) -> bool:
            principals = r.peer_principals
            if principals is None:
                return False
            return value is None or any(value.match(p) for p in principals)
        return authenticated
    raise AssertionError(kind)  # parsing admits only the kinds above


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]   # any of them
    principals: tuple[Rule, ...]    # any of them


@dataclass(frozen=True, slots=True)
class Rbac:
    action: str                      # ALLOW, DENY, LOG
    policies: tuple[Policy, ...]     # in name order (Envoy keeps them in a sorted map)
    # (name, permissions' predicate, principals' predicate) per policy, built from `policies`;
    # a side that matches every request (`any: true`) is None: no call per request for it.
    compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", tuple(
            (p.name, _or_none(_any_of(tuple(predicate(r) for r in p.permissions))),
             _or_none(_any_of(tuple(predicate(r) for r in p.principals))))
            for p in self.policies))

    def matched_policy(self, r: RequestFacts) -> str | None:
        for name, permitted, principal in self.compiled:
            if (permitted is None or permitted(r)) and (principal is None or principal(r)):
                return name
        return None


def _or_none(fn: Callable[[RequestFacts], bool]) -> Callable[[RequestFacts], bool] | None:
    """None for the predicate that is always true (the caller skips it)."""
    return None if fn is _true else fn


RBAC = Message(f"{_P}.RBAC", model=Rbac, bookkeeping=("compiled",), fields=(
    used("action", "ALLOW"),
    used("policies"),
    refused("audit_logging_options"),
))

POLICY = Message(f"{_P}.Policy", model=Policy, fields=(
    used("permissions"),
    used("principals"),
    refused("condition", "CEL expressions"),
    refused("checked_condition", "CEL expressions"),
    refused("cel_config", "CEL expressions"),
))

PERMISSION = Message(f"{_P}.Permission", model=Rule, bookkeeping=("kind",), fields=(
    used("and_rules", attr="value"),
    used("or_rules", attr="value"),
    used("any", attr="value"),
    used("header", attr="value"),
    used("url_path", attr="value"),
    used("destination_ip", attr="value"),
    used("destination_port", attr="value"),
    used("destination_port_range", attr="value"),
    used("not_rule", attr="value"),
    used("requested_server_name", attr="value"),
    used("metadata", attr="value"),
    refused("matcher", "extension matchers"),
    refused("uri_template", "extension matchers"),
    used("sourced_metadata", attr="value"),
))

PRINCIPAL = Message(f"{_P}.Principal", model=Rule, bookkeeping=("kind",), fields=(
    used("and_ids", attr="value"),
    used("or_ids", attr="value"),
    used("any", attr="value"),
    used("authenticated", attr="value"),
    used("source_ip", attr="value", why="deprecated spelling of direct_remote_ip"),
    used("direct_remote_ip", attr="value"),
    used("remote_ip", attr="value"),
    used("header", attr="value"),
    used("url_path", attr="value"),
    used("not_id", attr="value"),
    used("metadata", attr="value"),
    refused("filter_state", _NO_FILTER_STATE),
    refused("custom", "extension principals"),
    used("sourced_metadata", attr="value"),
))

SET = Message(f"{_P}.Permission.Set (and_rules, or_rules)", fields=(used("rules", attr="value"),))
ID_SET = Message(f"{_P}.Principal.Set (and_ids, or_ids)", fields=(used("ids", attr="value"),))
AUTHENTICATED = Message(f"{_P}.Principal.Authenticated", fields=(used("principal_name", attr="value"),))
PATH_MATCHER = Message("envoy.type.matcher.v3.PathMatcher (RBAC)", fields=(used("path", attr="value"),))
CIDR = Message("envoy.config.core.v3.CidrRange (RBAC)", fields=(
    used("address_prefix", attr="value"), used("prefix_len", attr="value")))
SOURCED_METADATA = Message(f"{_P}.SourcedMetadata", fields=(
    used("metadata_matcher", attr="value"),
    used("metadata_source", "DYNAMIC", attr="value", why="DYNAMIC: the stream's dynamic metadata; ROUTE: the route's"),
))
PORT_RANGE = Message("envoy.type.v3.Int32Range (RBAC)", fields=(used("start", attr="value"),
                                                                used("end", attr="value")))

_PERMISSION_KINDS = ("and_rules", "or_rules", "any", "header", "url_path", "destination_ip",
                     "destination_port", "destination_port_range", "not_rule", "requested_server_name",
                     "metadata", "sourced_metadata")
_PRINCIPAL_KINDS = ("and_ids", "or_ids", "any", "authenticated", "source_ip", "direct_remote_ip",
                    "remote_ip", "header", "url_path", "not_id", "metadata", "sourced_metadata")


def parse_rbac(raw: Any, path: str) -> Rbac:
    f = RBAC.read(raw, path)
    action = f.enum("action", ACTIONS, "ALLOW")
    policies_raw = f.raw_obj("policies") or {}
    policies = []
    for name in sorted(policies_raw):
        ppath = f'{f.at("policies")}["{name}"]'
        p = POLICY.read(policies_raw[name], ppath)
        permissions = tuple(_rule(item, ip, PERMISSION, _PERMISSION_KINDS)
                            for item, ip in p.list("permissions", required=True, min_items=1))
        principals = tuple(_rule(item, ip, PRINCIPAL, _PRINCIPAL_KINDS)
                           for item, ip in p.list("principals", required=True, min_items=1))
        policies.append(Policy(name, permissions, principals))
    return Rbac(action, tuple(policies))


def _rule(raw: Any, path: str, table: Message, kinds: tuple[str, ...]) -> Rule:
    f = table.read(raw, path)
    kind = f.oneof(*kinds, required=True)
    at = f.at(kind)
    if kind == "any":
        if f.bool("any") is not True:
            raise ConfigError(at, "must be true")
        return Rule("any")
    if kind in ("and_rules", "or_rules", "and_ids", "or_ids"):
        s = (SET if kind.endswith("rules") else ID_SET).read(f.value(kind), at)
        key = "rules" if kind.endswith("rules") else "ids"
        subs = tuple(_rule(item, ip, table, kinds) for item, ip in s.list(key, required=True, min_items=1))
        return Rule("and" if kind.startswith("and") else "or", subs)
    if kind in ("not_rule", "not_id"):
        return Rule("not", _rule(f.value(kind), at, table, kinds))
    if kind == "header":
        return Rule("header", parse_header_matcher(f.value(kind), at))
    if kind == "url_path":
        pm = PATH_MATCHER.read(f.value(kind), at)
        return Rule("url_path", parse_string_matcher(pm.value("path", required=True), pm.at("path")))
    if kind in ("destination_ip", "source_ip", "direct_remote_ip", "remote_ip"):
        return Rule("direct_remote_ip" if kind == "source_ip" else kind, _cidr(f.value(kind), at))
    if kind == "destination_port":
        return Rule(kind, f.int(kind, min=0, max=65535))
    if kind == "destination_port_range":
        r = PORT_RANGE.read(f.value(kind), at)
        return Rule(kind, (r.int("start", 0), r.int("end", 0)))
    if kind == "requested_server_name":
        return Rule(kind, parse_string_matcher(f.value(kind), at))
    if kind == "metadata":
        return Rule(kind, parse_metadata_matcher(f.value(kind), at))
    if kind == "sourced_metadata":
        sm = SOURCED_METADATA.read(f.value(kind), at)
        matcher = parse_metadata_matcher(sm.value("metadata_matcher", required=True),
                                         sm.at("metadata_matcher"))
        source = sm.enum("metadata_source", ("DYNAMIC", "ROUTE"), "DYNAMIC")
        return Rule("metadata" if source == "DYNAMIC" else "route_metadata", matcher)
    # authenticated: principal_name matches the peer certificate's URI SAN, else DNS SAN, else
    # subject (Envoy's order); no principal_name: any verified peer certificate.
    a = AUTHENTICATED.read(f.value(kind) or {}, at)
    name = a.value("principal_name")
    return Rule("authenticated", parse_string_matcher(name, a.at("principal_name")) if name is not None else None)


def _cidr(raw: Any, path: str):
    c = CIDR.read(raw, path)
    prefix = c.str("address_prefix", required=True)
    try:
        ip = ipaddress.ip_address(prefix)
    except ValueError:
        raise ConfigError(c.at("address_prefix"), f"{prefix!r} is not an IP address") from None
    length = c.int("prefix_len", ip.max_prefixlen, min=0)
    return ipaddress.ip_network((ip, min(length, ip.max_prefixlen)), strict=False)


# -- the xDS matcher tree (`matcher`), the subset the RBAC examples use ---------------------

@dataclass(frozen=True, slots=True)
class Predicate:
    """`xds.type.matcher.v3.Matcher.MatcherList.Predicate`: a request header against a string
    matcher, or and/or/not of predicates."""
    kind: str                      # "header", "and", "or", "not"
    value: Any = None

    def matches(self, r: RequestFacts) -> bool:
        kind, value = self.kind, self.value
        if kind == "header":
            name, matcher = value
            header = r.req.headers.get(name) if r.req is not None else None
            return header is not None and matcher.match(header.decode("latin-1"))
        if kind == "and":
            return all(p.matches(r) for p in value)
        if kind == "or":
            return any(p.matches(r) for p in value)
        return not value.matches(r)


@dataclass(frozen=True, slots=True)
class RbacMatcher:
    """`matcher`: the first predicate that matches names the RBAC action (name, ALLOW/DENY/LOG);
    none: `on_no_match`'s; neither: (None, "DENY")."""
    rules: tuple[tuple[Predicate, tuple[str, str]], ...]
    on_no_match: tuple[str, str] | None

    def decide(self, r: RequestFacts) -> tuple[str | None, str]:
        for predicate, action in self.rules:
            if predicate.matches(r):
                return action
        return self.on_no_match or (None, "DENY")


_XDS = "xds.type.matcher.v3"
MATCHER = Message(f"{_XDS}.Matcher (RBAC)", fields=(
    used("matcher_list", attr="", why="its own table"),
    used("on_no_match", attr="", why="the action when nothing matched"),
    refused("matcher_tree", "matcher trees: use matcher_list"),
))
MATCHER_LIST = Message(f"{_XDS}.Matcher.MatcherList (RBAC)", fields=(used("matchers", attr="", why="in order"),))
FIELD_MATCHER = Message(f"{_XDS}.Matcher.MatcherList.FieldMatcher (RBAC)", fields=(
    used("predicate", attr="", why="its own table"), used("on_match", attr="", why="its own table")))
PREDICATE = Message(f"{_XDS}.Matcher.MatcherList.Predicate (RBAC)", fields=(
    used("single_predicate", attr="", why="a request header against a value_match"),
    used("or_matcher", attr="", why="any of its predicates"),
    used("and_matcher", attr="", why="all of its predicates"),
    used("not_matcher", attr="", why="the opposite"),
))
SINGLE = Message(f"{_XDS}.Matcher.MatcherList.Predicate.SinglePredicate (RBAC)", fields=(
    used("input", attr="", why="envoy.type.matcher.v3.HttpRequestHeaderMatchInput only"),
    used("value_match", attr="", why="a string matcher"),
    refused("custom_match", "extension matchers"),
))
PREDICATE_LIST = Message(f"{_XDS}.Matcher.MatcherList.Predicate.PredicateList (RBAC)",
                         fields=(used("predicate", attr="", why="two or more"),))
ON_MATCH = Message(f"{_XDS}.Matcher.OnMatch (RBAC)", fields=(
    used("action", attr="", why="an envoy.config.rbac.v3.Action"),
    refused("matcher", "nested matchers"),
    refused("keep_matching"),
))
EXTENSION = Message("envoy.config.core.v3.TypedExtensionConfig (RBAC matcher)", fields=(
    used("name", attr="", why="not read"), used("typed_config", attr="", why="by its type")))
HEADER_INPUT = Message("envoy.type.matcher.v3.HttpRequestHeaderMatchInput (RBAC)",
                       fields=(used("header_name", attr="", why="the request header matched"),))
ACTION = Message(f"{_P}.Action (RBAC)", fields=(
    used("name", attr="", why="in the denial's details"), used("action", attr="", why="ALLOW, DENY or LOG")))
_HEADER_INPUT = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_ACTION = "envoy.config.rbac.v3.Action"


def _typed(raw: Any, path: str, expected: str) -> Fields:
    e = EXTENSION.read(raw, path)
    typed = e.raw_obj("typed_config", required=True)
    url = str(typed.get("@type", "")).rsplit("/", 1)[-1]
    if url != expected:
        raise ConfigError(e.at("typed_config"), f'not supported yet ("{url}"; only {expected})')
    return Fields({k: v for k, v in typed.items() if k != "@type"}, e.at("typed_config"),
                  ("header_name", "name", "action"))


def _action(raw: Any, path: str) -> tuple[str, str]:
    o = ON_MATCH.read(raw, path)
    a = _typed(o.value("action", required=True), o.at("action"), _ACTION)
    ACTION.read(a.raw, a.path)
    return a.str("name", ""), a.enum("action", ACTIONS, "ALLOW")


def _predicate(raw: Any, path: str) -> Predicate:
    p = PREDICATE.read(raw, path)
    kind = p.oneof("single_predicate", "or_matcher", "and_matcher", "not_matcher", required=True)
    at = p.at(kind)
    if kind == "single_predicate":
        s = SINGLE.read(p.value(kind), at)
        inp = _typed(s.value("input", required=True), s.at("input"), _HEADER_INPUT)
        HEADER_INPUT.read(inp.raw, inp.path)
        name = inp.str("header_name", required=True).lower().encode("latin-1")
        return Predicate("header", (name, parse_string_matcher(s.value("value_match", required=True),
                                                              s.at("value_match"))))
    if kind == "not_matcher":
        return Predicate("not", _predicate(p.value(kind), at))
    lst = PREDICATE_LIST.read(p.value(kind), at)
    return Predicate("or" if kind == "or_matcher" else "and",
                     tuple(_predicate(item, ip) for item, ip in lst.list("predicate", required=True, min_items=2)))


def parse_rbac_matcher(raw: Any, path: str) -> RbacMatcher:
    m = MATCHER.read(raw, path)
    rules = []
    if m.has("matcher_list"):
        ml = MATCHER_LIST.read(m.value("matcher_list"), m.at("matcher_list"))
        for item, ipath in ml.list("matchers", required=True, min_items=1):
            fm = FIELD_MATCHER.read(item, ipath)
            rules.append((_predicate(fm.value("predicate", required=True), fm.at("predicate")),
                          _action(fm.value("on_match", required=True), fm.at("on_match"))))
    no_match = _action(m.value("on_no_match"), m.at("on_no_match")) if m.has("on_no_match") else None
    return RbacMatcher(tuple(rules), no_match)
