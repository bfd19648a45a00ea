"""Registry of extensions by Envoy name and `typed_config` type URL.

An extension (network filter, HTTP filter, access logger, ...) registers one `Extension`:
its category, Envoy name, the proto full name of its config, and `parse(raw, path)` that
validates the typed_config (without the "@type" key) into an immutable config object.
Resolution follows Envoy: by `@type` URL when `typed_config` is given, else by `name`
(accepted only for extensions whose config may be empty, e.g. the router).

Built-in extensions load on first use: `proxy.extensions` lists which module registers each
config proto (`catalogue`); the first `resolve` of a proto not yet registered imports its
module, which registers it. A config that names only the router pays for no other filter's
import (start-up and each hot-restart epoch are faster). A name-only reference (no
typed_config), `registered()` and the error messages that list what is supported load the
whole category first; `load_all()` loads everything (the field-table tools, the tests).

Thread affinity: resolved on the main thread (config load, xDS updates) or in a validator;
loading on first use is safe from any thread anyway: the import system's module lock makes
one thread import a module (which registers) while another asking for it waits. Once
registered, an extension is never replaced. Must not: import extension modules but through
the catalogue, or do I/O.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .reader import ConfigError, Fields

__all__ = ["Extension", "register", "resolve", "TYPE_URL_PREFIX", "registered",
           "per_route_extension", "per_route_protos", "catalogue", "load_all", "registered_by"]

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


# Filled as extension modules are imported; an entry is never replaced or removed.
_BY_NAME: dict[tuple[str, str], Extension] = {}
_BY_PROTO: dict[tuple[str, str], Extension] = {}
_BY_PER_ROUTE_PROTO: dict[str, Extension] = {}
_MODULE_OF: dict[tuple[str, str], str] = {}    # (category, proto) -> the module that registered it

# The catalogue of built-in extensions (proxy.extensions): where each is registered.
_CATALOGUE: dict[tuple[str, str], str] = {}          # (category, proto) -> module
_CATALOGUE_PER_ROUTE: dict[str, str] = {}            # per-route proto -> module


def catalogue(module: str, category: str, proto: str, per_route_proto: str | None = None) -> None:
    """Declare that importing `module` registers the `category` extension configured by
    `proto` (and the per-route config `per_route_proto`). proxy.extensions' table calls this."""
    _CATALOGUE[(category, proto)] = module
    if per_route_proto is not None:
        _CATALOGUE_PER_ROUTE[per_route_proto] = module


def _load(module: str) -> None:
    importlib.import_module(module)


def _load_category(category: str) -> None:
    for (c, _), module in list(_CATALOGUE.items()):
        if c == category:
            _load(module)


def load_all() -> None:
    """Import every catalogued extension module (the field-table tools and tests need them all)."""
    for module in sorted(set(_CATALOGUE.values()) | set(_CATALOGUE_PER_ROUTE.values())):
        _load(module)


def registered_by(category: str, proto: str) -> str | None:
    """The module whose import registered this extension (the catalogue's check)."""
    return _MODULE_OF.get((category, proto))


def _by_proto(category: str, proto: str) -> Extension | None:
    ext = _BY_PROTO.get((category, proto))
    if ext is None and (module := _CATALOGUE.get((category, proto))) is not None:
        _load(module)
        ext = _BY_PROTO.get((category, proto))
    return ext


def _by_name(category: str, name: str) -> Extension | None:
    ext = _BY_NAME.get((category, name))
    if ext is None:
        _load_category(category)
        ext = _BY_NAME.get((category, name))
    return ext


def _supported_protos(category: str) -> list[str]:
    return sorted({p for (c, p) in _BY_PROTO if c == category} | {p for (c, p) in _CATALOGUE if c == category})


_NEEDS_FACTORY = ("http_filter",)


def register(ext: Extension) -> Extension:
    if ext.category in _NEEDS_FACTORY and ext.factory is None:
        raise TypeError(f"{ext.name}: a filter extension needs its runtime factory")
    if (ext.per_route_proto is None) != (ext.parse_per_route is None):
        raise TypeError(f"{ext.name}: per_route_proto and parse_per_route go together")
    for name in (ext.name, *ext.aliases):
        _BY_NAME[(ext.category, name)] = ext
    _BY_PROTO[(ext.category, ext.proto)] = ext
    _MODULE_OF[(ext.category, ext.proto)] = sys._getframe(1).f_globals.get("__name__", "?")
    if ext.per_route_proto is not None:
        _BY_PER_ROUTE_PROTO[ext.per_route_proto] = ext
    return ext


def per_route_extension(proto: str) -> Extension | None:
    """The HTTP filter whose per-route config (typed_per_filter_config) is `proto`."""
    ext = _BY_PER_ROUTE_PROTO.get(proto)
    if ext is None and (module := _CATALOGUE_PER_ROUTE.get(proto)) is not None:
        _load(module)
        ext = _BY_PER_ROUTE_PROTO.get(proto)
    return ext


def per_route_protos() -> list[str]:
    return sorted(set(_BY_PER_ROUTE_PROTO) | set(_CATALOGUE_PER_ROUTE))


def registered(category: str) -> list[str]:
    _load_category(category)
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
        ext = _by_proto(category, proto)
        if ext is None:
            raise ConfigError(join_type(tpath), f'unsupported {category.replace("_", " ")} type "{url}"'
                              f"; supported: {', '.join(_supported_protos(category))}")
        body = {k: v for k, v in typed.items() if k != "@type"}
        return ext, ext.parse(body, tpath)
    if name is None:
        raise ConfigError(path, 'one of "name" or "typed_config" is required')
    ext = _by_name(category, name)
    if ext is None:
        raise ConfigError(f.at("name"), f'unsupported {category.replace("_", " ")} "{name}"'
                          f"; supported: {', '.join(registered(category))}")
    if not ext.empty_config_ok:
        raise ConfigError(path, f'"{name}" needs a typed_config')
    return ext, ext.parse({}, f.at("typed_config"))


def join_type(path: str) -> str:
    return f'{path}["@type"]'
