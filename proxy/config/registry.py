"""Registry of extensions by Envoy name and `typed_config` type URL.

An extension (network filter, HTTP filter, access logger, ...) registers one `Extension`:
its category, Envoy name, the proto full name of its config, and `parse(raw, path)` that
validates the typed_config (without the "@type" key) into an immutable config object.
Resolution follows Envoy: by `@type` URL when `typed_config` is given, else by `name`
(accepted only for extensions whose config may be empty, e.g. the router).

Thread affinity: filled at import time by `proxy.extensions` (main thread, before workers
start), read-only afterwards. Must not: import extension modules itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .reader import ConfigError, Fields

__all__ = ["Extension", "register", "resolve", "TYPE_URL_PREFIX", "registered",
           "per_route_extension", "per_route_protos"]

TYPE_URL_PREFIX = "type.googleapis.com/"

# Type URLs whose payload wraps another config (xds.type.v3.TypedStruct); not supported yet.
_TYPED_STRUCT = {"xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"}


@dataclass(frozen=True, slots=True)
class Extension:
    category: str            # "network_filter", "http_filter", "access_logger", "listener_filter"
    name: str                # Envoy name, e.g. "envoy.filters.network.tcp_proxy"
    proto: str               # full proto name of the config message
    parse: Callable[[Mapping[str, Any], str], Any]
    empty_config_ok: bool = False
    aliases: tuple[str, ...] = ()
    # The runtime: `factory(config, name)` makes the filter's FilterFactory from its parsed
    # config and the name it was configured under. Required for filters: registering a
    # filter is what makes it run, so a filter cannot be registered without its runtime.
    factory: Callable[[Any, str], Any] | None = None
    # typed_per_filter_config: the proto of the filter's per-route config and its parser.
    per_route_proto: str | None = None
    parse_per_route: Callable[[Mapping[str, Any], str], Any] | None = None


# Filled at import time, before any thread starts; never mutated afterwards.
_BY_NAME: dict[tuple[str, str], Extension] = {}
_BY_PROTO: dict[tuple[str, str], Extension] = {}
_BY_PER_ROUTE_PROTO: dict[str, Extension] = {}


_NEEDS_FACTORY = ("http_filter",)


def register(ext: Extension) -> Extension:
    if ext.category in _NEEDS_FACTORY and ext.factory is None:
        raise TypeError(f"{ext.name}: a filter extension needs its runtime factory")
    if (ext.per_route_proto is None) != (ext.parse_per_route is None):
        raise TypeError(f"{ext.name}: per_route_proto and parse_per_route go together")
    for name in (ext.name, *ext.aliases):
        _BY_NAME[(ext.category, name)] = ext
    _BY_PROTO[(ext.category, ext.proto)] = ext
    if ext.per_route_proto is not None:
        _BY_PER_ROUTE_PROTO[ext.per_route_proto] = ext
    return ext


def per_route_extension(proto: str) -> Extension | None:
    """The HTTP filter whose per-route config (typed_per_filter_config) is `proto`."""
    return _BY_PER_ROUTE_PROTO.get(proto)


def per_route_protos() -> list[str]:
    return sorted(_BY_PER_ROUTE_PROTO)


def registered(category: str) -> list[str]:
    return sorted(n for (c, n) in _BY_NAME if c == category)


def resolve(category: str, item: Any, path: str, *, extra_fields: tuple[str, ...] = ()) -> tuple[Extension, Any]:
    """Resolve `{name, typed_config}` at `path` to (extension, parsed config).

    `extra_fields` are other fields the caller allows beside name/typed_config (e.g.
    `disabled`, `is_optional` for HTTP filters); the caller reads them itself.
    """
    f = Fields(item, path, ("name", "typed_config", *extra_fields))
    name = f.str("name")
    typed = f.raw_obj("typed_config")
    if typed is not None:
        url = typed.get("@type")
        tpath = f.at("typed_config")
        if not isinstance(url, str) or not url:
            raise ConfigError(tpath, 'missing "@type"')
        proto = url.rsplit("/", 1)[-1]
        if proto in _TYPED_STRUCT:
            raise ConfigError(join_type(tpath), f"unsupported type {proto} (write the config message directly)")
        ext = _BY_PROTO.get((category, proto))
        if ext is None:
            raise ConfigError(join_type(tpath), f'unsupported {category.replace("_", " ")} type "{url}"'
                              f"; supported: {', '.join(sorted(p for (c, p) in _BY_PROTO if c == category))}")
        body = {k: v for k, v in typed.items() if k != "@type"}
        return ext, ext.parse(body, tpath)
    if name is None:
        raise ConfigError(path, 'one of "name" or "typed_config" is required')
    ext = _BY_NAME.get((category, name))
    if ext is None:
        raise ConfigError(f.at("name"), f'unsupported {category.replace("_", " ")} "{name}"'
                          f"; supported: {', '.join(registered(category))}")
    if not ext.empty_config_ok:
        raise ConfigError(path, f'"{name}" needs a typed_config')
    return ext, ext.parse({}, f.at("typed_config"))


def join_type(path: str) -> str:
    return f'{path}["@type"]'
