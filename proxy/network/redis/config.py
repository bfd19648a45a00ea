"""Config model of the Redis proxy network filter (`envoy.filters.network.redis_proxy`).

Job: validate `envoy.extensions.filters.network.redis_proxy.v3.RedisProxy` into an immutable
`RedisProxyConfig` and register the filter (its runtime: proxy_filter.py). Every field is
declared once in the tables below: honoured, or refused with "<path>: not supported yet".

Must not: do I/O beyond reading the auth DataSources at load, or proxy bytes. Thread
affinity: parsed on the main thread; the result is immutable and shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.data_source import read_data_source
from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

__all__ = ["RedisProxyConfig", "PrefixRoute", "parse_redis_proxy", "REDIS_PROXY_NAME", "REDIS_PROXY_PROTO"]

REDIS_PROXY_NAME = "envoy.filters.network.redis_proxy"
REDIS_PROXY_PROTO = "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"


@dataclass(frozen=True, slots=True)
class PrefixRoute:
    prefix: bytes          # lower-cased when the routes are case_insensitive
    cluster: str
    remove_prefix: bool = False


@dataclass(frozen=True, slots=True)
class RedisProxyConfig:
    stat_prefix: str
    op_timeout: float                       # settings.op_timeout (required)
    enable_hashtagging: bool = False
    # settings.max_buffer_size_before_flush / buffer_flush_timeout: requests to a host are
    # batched until this many bytes or the timeout (0: written at once, Envoy's default).
    max_buffer_size_before_flush: int = 0
    buffer_flush_timeout: float = 0.003
    routes: tuple[PrefixRoute, ...] = ()    # longest prefix first
    case_insensitive: bool = False
    catch_all_route: PrefixRoute | None = None
    downstream_auth_passwords: tuple[bytes, ...] = ()
    downstream_auth_username: bytes | None = None


REDIS_PROXY = Message(REDIS_PROXY_PROTO, title="Network filter redis_proxy", model=RedisProxyConfig, fields=(
    used("stat_prefix"),
    used("settings", attr="", why="its own table (ConnPoolSettings)"),
    used("prefix_routes", attr="", why="its own table (PrefixRoutes)"),
    refused("latency_in_micros", "no per-command latency histograms"),
    used("downstream_auth_password", attr="downstream_auth_passwords"),
    used("downstream_auth_passwords"),
    used("downstream_auth_username"),
    refused("faults"),
    refused("external_auth_provider"),
    refused("custom_commands"),
))

CONN_POOL_SETTINGS = Message(REDIS_PROXY_PROTO + ".ConnPoolSettings", fields=(
    used("op_timeout"),
    used("enable_hashtagging", False),
    refused("enable_redirection", "MOVED/ASK redirection", default=False, only_default=True),
    refused("dns_cache_config"),
    used("max_buffer_size_before_flush", 0),
    used("buffer_flush_timeout", "0.003s"),
    used("max_upstream_unknown_connections", 100, attr="",
         why="connections to unknown hosts come only from redirection, which is refused"),
    refused("enable_command_stats", "per-cluster command stats", default=False, only_default=True),
    refused("read_policy", "replicas are a Redis Cluster feature; only MASTER", default="MASTER",
            only_default=True),
    refused("connection_rate_limit"),
))

PREFIX_ROUTES = Message(REDIS_PROXY_PROTO + ".PrefixRoutes", fields=(
    used("routes"),
    used("case_insensitive", False),
    used("catch_all_route", attr="catch_all_route"),
))

ROUTE = Message(REDIS_PROXY_PROTO + ".PrefixRoutes.Route", model=PrefixRoute, fields=(
    used("prefix"),
    used("remove_prefix", False),
    used("cluster"),
    refused("request_mirror_policy"),
    refused("key_formatter"),
    refused("read_command_policy"),
))

AUTH_SOURCE = Message("envoy.config.core.v3.DataSource (redis_proxy downstream auth)", fields=(
    used("filename", attr="", why="read at load"),
    used("inline_bytes", attr="", why="read at load"),
    used("inline_string", attr="", why="read at load"),
    used("environment_variable", attr="", why="read at load"),
    refused("watched_directory"),
))


def parse_redis_proxy(raw: Mapping[str, Any], path: str) -> RedisProxyConfig:
    f = REDIS_PROXY.read(raw, path)
    prefix = f.str("stat_prefix", required=True)
    if not prefix:
        raise ConfigError(f.at("stat_prefix"), "must not be empty")
    s = CONN_POOL_SETTINGS.read(f.value("settings", required=True), f.at("settings"))
    op_timeout = s.duration("op_timeout", required=True)
    CONN_POOL_SETTINGS.require_default(s, "enable_redirection", s.bool("enable_redirection", False))
    CONN_POOL_SETTINGS.require_default(s, "enable_command_stats", s.bool("enable_command_stats", False))
    CONN_POOL_SETTINGS.require_default(s, "read_policy", s.enum(
        "read_policy", ("MASTER", "PREFER_MASTER", "REPLICA", "PREFER_REPLICA", "ANY", "AZ_AFFINITY",
                        "AZ_AFFINITY_REPLICAS_AND_PRIMARY"), "MASTER"))
    s.int("max_upstream_unknown_connections", 100, min=0, max=2**32 - 1)
    routes: list[PrefixRoute] = []
    case_insensitive = False
    catch_all = None
    if f.has("prefix_routes"):
        p = PREFIX_ROUTES.read(f.value("prefix_routes"), f.at("prefix_routes"))
        case_insensitive = p.bool("case_insensitive", False)
        seen: set[bytes] = set()
        for item, rpath in p.list("routes"):
            r = _route(item, rpath, case_insensitive)
            if r.prefix in seen:
                # Envoy's message for a prefix given twice.
                raise ConfigError(rpath, f"prefix `{r.prefix.decode('utf-8', 'replace')}` already exists.")
            seen.add(r.prefix)
            routes.append(r)
        if p.has("catch_all_route"):
            catch_all = _route(p.value("catch_all_route"), p.at("catch_all_route"), False, catch_all=True)
    if not routes and catch_all is None:   # Envoy's message
        raise ConfigError(f.at("prefix_routes"), "cannot configure a redis-proxy without any upstream")
    routes.sort(key=lambda r: len(r.prefix), reverse=True)
    passwords: list[bytes] = []
    if f.has("downstream_auth_password"):
        passwords.append(read_data_source(AUTH_SOURCE, f.value("downstream_auth_password"),
                                          f.at("downstream_auth_password")))
    for item, ppath in f.list("downstream_auth_passwords"):
        passwords.append(read_data_source(AUTH_SOURCE, item, ppath))
    username = None
    if f.has("downstream_auth_username"):
        username = read_data_source(AUTH_SOURCE, f.value("downstream_auth_username"),
                                    f.at("downstream_auth_username"))
    return RedisProxyConfig(
        stat_prefix=prefix,
        op_timeout=op_timeout,
        enable_hashtagging=s.bool("enable_hashtagging", False),
        max_buffer_size_before_flush=s.int("max_buffer_size_before_flush", 0, min=0, max=2**32 - 1),
        buffer_flush_timeout=s.duration("buffer_flush_timeout", 0.003),
        routes=tuple(routes),
        case_insensitive=case_insensitive,
        catch_all_route=catch_all,
        downstream_auth_passwords=tuple(p for p in passwords if p),
        downstream_auth_username=username or None,
    )


def _route(raw: Any, path: str, case_insensitive: bool, catch_all: bool = False) -> PrefixRoute:
    r = ROUTE.read(raw, path)
    cluster = r.str("cluster", required=True)
    if not cluster:
        raise ConfigError(r.at("cluster"), "must not be empty")
    prefix = r.str("prefix", "").encode("utf-8")
    if len(prefix) > 1000:
        raise ConfigError(r.at("prefix"), "must be at most 1000 bytes")
    if case_insensitive:
        prefix = prefix.lower()
    return PrefixRoute(prefix=b"" if catch_all else prefix, cluster=cluster,
                       remove_prefix=r.bool("remove_prefix", False) and not catch_all)


def _factory(config: RedisProxyConfig, name: str):
    from .proxy_filter import RedisProxyFactory
    return RedisProxyFactory(config)


register(Extension(
    category="network_filter",
    name=REDIS_PROXY_NAME,
    proto=REDIS_PROXY_PROTO,
    parse=parse_redis_proxy,
    factory=_factory,
))
