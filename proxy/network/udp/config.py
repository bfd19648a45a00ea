"""Config model of the UDP proxy listener filter (`envoy.filters.udp_listener.udp_proxy`).

Job: validate `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig` into an immutable
`UdpProxyConfig` and register the filter (category "udp_listener_filter": only a listener
whose socket address says `protocol: UDP` resolves it). The upstream cluster is named by the
legacy `cluster` field or by a `matcher` with only an `on_no_match` action (a
`udp_proxy.v3.Route`): every datagram goes to that cluster, as Envoy routes with such a matcher.
Every field is declared once in the tables below.

Must not: do I/O or proxy datagrams (listener.py). Thread affinity: parsed on the main
thread; the result is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, Fields
from proxy.config.registry import Extension, register

__all__ = ["UdpProxyConfig", "parse_udp_proxy", "UDP_PROXY_NAME", "UDP_PROXY_PROTO",
           "DEFAULT_IDLE_TIMEOUT"]

UDP_PROXY_NAME = "envoy.filters.udp_listener.udp_proxy"
UDP_PROXY_PROTO = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE_PROTO = "envoy.extensions.filters.udp.udp_proxy.v3.Route"
DEFAULT_IDLE_TIMEOUT = 60.0   # Envoy's: a session with no datagram either way for 60 s ends


@dataclass(frozen=True, slots=True)
class UdpProxyConfig:
    stat_prefix: str           # stats root: udp.<stat_prefix>.
    cluster: str               # every session's upstream cluster
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT   # > 0 (0 is refused: see parse_udp_proxy)


# -- declared fields (proxy.config.fields_table) -----------------------------------------

UDP_PROXY = Message(UDP_PROXY_PROTO, title="UDP proxy", model=UdpProxyConfig, fields=(
    used("stat_prefix"),
    used("cluster", why="deprecated: the legacy spelling of a matcher with only on_no_match"),
    used("matcher", attr="cluster", why="only on_no_match naming a cluster (udp_proxy.v3.Route)"),
    used("idle_timeout", "60s"),
    refused("use_original_src_ip", default=False, only_default=True),
    refused("hash_policies", "the cluster's load balancer picks each session's host"),
    refused("upstream_socket_config"),
    refused("use_per_packet_load_balancing", "one host per session", default=False,
            only_default=True),
    refused("access_log"),
    refused("proxy_access_log"),
    refused("access_log_options"),
    refused("session_filters"),
    refused("tunneling_config"),
))

MATCHER = Message("xds.type.matcher.v3.Matcher (UDP proxy)", fields=(
    used("on_no_match", attr="", why="its action names the cluster"),
    refused("matcher_list", "only on_no_match: every datagram goes to one cluster"),
    refused("matcher_tree", "only on_no_match: every datagram goes to one cluster"),
))

ON_MATCH = Message("xds.type.matcher.v3.Matcher.OnMatch (UDP proxy)", fields=(
    used("action", attr="", why="a udp_proxy.v3.Route"),
    refused("matcher", "only an action"),
    refused("keep_matching", default=False, only_default=True),
))

ACTION = Message("envoy.config.core.v3.TypedExtensionConfig (UDP proxy action)", fields=(
    used("name", attr="", why="any name (Envoy's too: the type selects the action)"),
    used("typed_config", attr="", why="a udp_proxy.v3.Route"),
))

ROUTE = Message(ROUTE_PROTO, fields=(
    used("cluster", attr="", why="the UdpProxyConfig's cluster"),
))


def parse_udp_proxy(raw: Mapping[str, Any], path: str) -> UdpProxyConfig:
    f = UDP_PROXY.read(raw, path)
    stat_prefix = f.str("stat_prefix", required=True)
    if not stat_prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    for name in ("use_original_src_ip", "use_per_packet_load_balancing"):
        UDP_PROXY.require_default(f, name, f.bool(name, False))
    which = f.oneof("cluster", "matcher", required=True)
    if which == "cluster":
        cluster = f.str("cluster", required=True)
        if not cluster:
            raise ConfigError(f.at("cluster"), "must not be empty")
    else:
        cluster = _matcher_cluster(f)
    idle = f.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    if idle == 0:   # Envoy accepts it (and ends each session at its next loop iteration)
        raise ConfigError(f.at("idle_timeout"), "not supported yet (an idle_timeout of 0s)")
    return UdpProxyConfig(stat_prefix=stat_prefix, cluster=cluster, idle_timeout=idle)


def _matcher_cluster(f: Fields) -> str:
    m = MATCHER.read(f.value("matcher"), f.at("matcher"))
    on = ON_MATCH.read(m.value("on_no_match", required=True), m.at("on_no_match"))
    ON_MATCH.require_default(on, "keep_matching", on.bool("keep_matching", False))
    a = ACTION.read(on.value("action", required=True), on.at("action"))
    a.str("name")
    typed = a.raw_obj("typed_config", required=True)
    tpath = a.at("typed_config")
    url = typed.get("@type")
    if not isinstance(url, str) or url.rsplit("/", 1)[-1] != ROUTE_PROTO:
        raise ConfigError(f'{tpath}["@type"]', f'unsupported action type "{url}"; supported: '
                                                f"type.googleapis.com/{ROUTE_PROTO}")
    r = ROUTE.read(typed, tpath, extra=("@type",))
    cluster = r.str("cluster", required=True)
    if not cluster:
        raise ConfigError(r.at("cluster"), "must not be empty")
    return cluster


def _factory(config: UdpProxyConfig, _name: str):
    from .listener import UdpProxyFactory   # the runtime (I/O); config parsing needs none of it
    return UdpProxyFactory(config)


register(Extension(
    category="udp_listener_filter",
    name=UDP_PROXY_NAME,
    proto=UDP_PROXY_PROTO,
    parse=parse_udp_proxy,
    factory=_factory,
))
