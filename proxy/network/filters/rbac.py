"""`envoy.filters.network.rbac`: role-based access control of connections (L4).

Config `envoy.extensions.filters.network.rbac.v3.RBAC`: `rules` and `shadow_rules` (the same
`envoy.config.rbac.v3.RBAC` as the HTTP filter: proxy/http/filters/rbac_config.py; header and
url_path matchers need HTTP and are refused here), `stat_prefix` (required),
`shadow_rules_stat_prefix`, `enforcement_type` (ONE_TIME_ON_FIRST_BYTE, Envoy's default: the
decision is made when the connection's first bytes arrive, with its TLS identity known;
CONTINUOUS: again on every read), `delay_deny` (a denied connection is closed that much later).

A denied connection is closed (no byte reaches the terminal filter). Stats as Envoy's:
`<stat_prefix>rbac.allowed`, `denied`, `shadow_allowed`, `shadow_denied`.
Thread affinity: one filter per connection, on its worker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...http.filters.rbac_config import Rbac, RequestFacts, Rule, parse_rbac
from ..filter_chain import NetworkFilterStatus

__all__ = ["NetworkRbacConfig", "parse_network_rbac"]

NAME = "envoy.filters.network.rbac"
PROTO = "envoy.extensions.filters.network.rbac.v3.RBAC"


@dataclass(frozen=True, slots=True)
class NetworkRbacConfig:
    stat_prefix: str
    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    shadow_rules_stat_prefix: str = ""
    enforcement_type: str = "ONE_TIME_ON_FIRST_BYTE"
    delay_deny: float = 0.0


NETWORK_RBAC = Message(PROTO, title="Network filter rbac", model=NetworkRbacConfig, fields=(
    used("rules"),
    used("shadow_rules"),
    used("stat_prefix"),
    used("shadow_rules_stat_prefix", ""),
    used("enforcement_type", "ONE_TIME_ON_FIRST_BYTE"),
    used("delay_deny"),
    refused("matcher", "the xDS matcher tree: use rules"),
    refused("shadow_matcher", "the xDS matcher tree: use rules"),
))


def _no_http_rules(rbac: Rbac | None, path: str) -> None:
    def walk(rule: Rule) -> None:
        if rule.kind in ("header", "url_path"):
            raise ConfigError(path, f"a {rule.kind} matcher needs HTTP: use envoy.filters.http.rbac")
        if rule.kind in ("and", "or"):
            for r in rule.value:
                walk(r)
        elif rule.kind == "not":
            walk(rule.value)
    for policy in (rbac.policies if rbac is not None else ()):
        for rule in (*policy.permissions, *policy.principals):
            walk(rule)


def parse_network_rbac(raw: Mapping[str, Any], path: str) -> NetworkRbacConfig:
    f = NETWORK_RBAC.read(raw, path)
    prefix = f.str("stat_prefix", required=True)
    if not prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    rules = parse_rbac(f.value("rules"), f.at("rules")) if f.has("rules") else None
    shadow = parse_rbac(f.value("shadow_rules"), f.at("shadow_rules")) if f.has("shadow_rules") else None
    _no_http_rules(rules, f.at("rules"))
    _no_http_rules(shadow, f.at("shadow_rules"))
    return NetworkRbacConfig(
        stat_prefix=prefix, rules=rules, shadow_rules=shadow,
        shadow_rules_stat_prefix=f.str("shadow_rules_stat_prefix", ""),
        enforcement_type=f.enum("enforcement_type", ("ONE_TIME_ON_FIRST_BYTE", "CONTINUOUS"),
                                "ONE_TIME_ON_FIRST_BYTE"),
        delay_deny=f.duration("delay_deny", 0.0),
    )


class NetworkRbacFactory:
    def __init__(self, config: NetworkRbacConfig, name: str) -> None:
        self.config = config

    def for_worker(self, worker) -> WorkerNetworkRbac:
        return WorkerNetworkRbac(self.config, worker)


class WorkerNetworkRbac:
    def __init__(self, config: NetworkRbacConfig, worker) -> None:
        self.config = config
        scope = worker.stats.scope(f"{config.stat_prefix}rbac")
        self.allowed, self.denied = scope.counter("allowed"), scope.counter("denied")
        shadow = config.shadow_rules_stat_prefix
        self.shadow_allowed = scope.counter(f"{shadow}shadow_allowed")
        self.shadow_denied = scope.counter(f"{shadow}shadow_denied")

    def create(self, callbacks) -> NetworkRbacFilter:
        return NetworkRbacFilter(self, callbacks)


def _ip(address) -> Any:
    try:
        return ipaddress.ip_address(address[0]) if address else None
    except ValueError:
        return None


class NetworkRbacFilter:
    __slots__ = ("wf", "cb", "decided", "timer")

    def __init__(self, wf: WorkerNetworkRbac, callbacks) -> None:
        self.wf = wf
        self.cb = callbacks
        self.decided = False
        self.timer = None

    def on_new_connection(self) -> int:
        return NetworkFilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> int:
        wf = self.wf
        config = wf.config
        if self.decided and config.enforcement_type == "ONE_TIME_ON_FIRST_BYTE":
            return NetworkFilterStatus.CONTINUE
        if self.timer is not None:
            return NetworkFilterStatus.STOP_ITERATION  # denied: closing after delay_deny
        self.decided = True
        facts = self._facts()
        if config.shadow_rules is not None:
            ok = _allowed(config.shadow_rules, facts)
            (wf.shadow_allowed if ok else wf.shadow_denied).value += 1
        if config.rules is None or _allowed(config.rules, facts):
            if config.rules is not None:
                wf.allowed.value += 1
            return NetworkFilterStatus.CONTINUE
        wf.denied.value += 1
        if config.delay_deny > 0:
            self.timer = self.cb.dispatcher.call_later(config.delay_deny, self._close)
        else:
            self.cb.close()
        return NetworkFilterStatus.STOP_ITERATION

    def _close(self) -> None:
        self.timer = None
        self.cb.close()

    def on_close(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None

    def _facts(self) -> RequestFacts:
        cb = self.cb
        info = cb.info
        conn = cb.connection
        tls = conn.transport_socket.ssl() if conn is not None else None
        principals = None
        if tls is not None:
            principals = (*tls.peer_uri_sans, *tls.peer_dns_sans, tls.peer_subject)
        direct = info.direct_remote if info is not None else cb.remote
        sni = (tls.sni if tls is not None else "") or (getattr(info, "requested_server_name", "") or "")
        return RequestFacts(None, "", _ip(cb.remote), _ip(direct), _ip(cb.local),
                            cb.local[1] if cb.local else 0, sni, principals)


def _allowed(rbac: Rbac, facts: RequestFacts) -> bool:
    if rbac.action == "LOG":
        return True
    return (rbac.matched_policy(facts) is not None) == (rbac.action == "ALLOW")


register(Extension(
    category="network_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_network_rbac,
    factory=NetworkRbacFactory,
))
