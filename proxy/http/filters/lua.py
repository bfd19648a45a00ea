"""`envoy.filters.http.lua`: Lua scripts on the request and response paths, with Envoy's stream
handle API, run on lupa's LuaJIT (lua_runtime.py) in a Lua state per worker and script.

Config `envoy.extensions.filters.http.lua.v3.Lua`: `default_source_code` (or the deprecated
`inline_code`), `source_codes` (named scripts a route may pick), `stat_prefix`,
`clear_route_cache`. Per route `LuaPerRoute`: `disabled`, `name` (one of `source_codes`), or
`source_code` (a script of its own). Every script is loaded at config load (a syntax error or an
error in its top-level code is a config error naming the field) and again on each worker.

lupa is an optional dependency (`pip install 'ftproxy[lua]'`): this module does not import it;
parsing a Lua config does (lua_runtime.py), and on a free-threaded build that turns the GIL back
on, which the start-up log and /server_info say.

Per stream (Envoy's StreamHandleWrapper): each hook runs as a coroutine. `body()` yields until
the whole body is buffered (the filter stops iteration and buffers, up to the buffer limit),
`bodyChunks()` yields for each chunk as it passes, `trailers()` until the trailers, `httpCall()`
until the cluster answers (over the worker's async client), `respond()` ends the script with a
local reply (details `lua_response`). A script error is logged (`script log: ...`), counted
(`http.<prefix>.lua[.<stat_prefix>].errors`), and the stream goes on as if the script had
returned, as Envoy's; `executions` counts the hooks run. The per-stream driver and the
handle's operations are in lua_handle.py.

Thread affinity: the config is parsed (and its scripts checked) on the main thread and is
immutable; each worker's WorkerLua owns its Lua states (for_worker: the default script;
named and per-route scripts on first use), used only by that worker's streams.
Must not: import lupa at module level (this module is imported by proxy/extensions.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...config.data_source import read_data_source
from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from .lua_handle import OPS, StreamHandle

__all__ = ["LuaConfig", "LuaPerRoute", "parse_lua", "parse_lua_per_route"]

NAME = "envoy.filters.http.lua"
PROTO = "envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.lua.v3.LuaPerRoute"
INSTALL = "pip install 'ftproxy[lua]'"


@dataclass(frozen=True, slots=True)
class LuaConfig:
    default_source_code: bytes | None = None
    source_codes: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    stat_prefix: str = ""
    clear_route_cache: bool = True


@dataclass(frozen=True, slots=True)
class LuaPerRoute:
    disabled: bool = False
    name: str = ""
    source_code: bytes | None = None


LUA = Message(PROTO, title="HTTP filter lua", model=LuaConfig, fields=(
    used("inline_code", attr="default_source_code", why="deprecated; the same as default_source_code"),
    used("default_source_code", why="DataSource, loaded at config load and on each worker"),
    used("source_codes", why="named DataSources a route picks with LuaPerRoute.name"),
    used("stat_prefix", ""),
    used("clear_route_cache", True, why="a header change on the request path clears the route cache"),
))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter lua per route", model=LuaPerRoute, fields=(
    used("disabled", False),
    used("name", ""),
    used("source_code"),
    refused("filter_context", "the handle's filterContext()"),
))
DATA_SOURCE = Message("envoy.config.core.v3.DataSource (lua)", fields=(
    used("filename", attr="", why="read at load"),
    used("inline_string", attr="", why="the script itself"),
    used("inline_bytes", attr="", why="base64 in YAML/JSON"),
    used("environment_variable", attr="", why="read at load"),
    refused("watched_directory", "reloading a script when its directory changes"),
))


def _runtime(path: str):
    try:
        lua_runtime = importlib.import_module(f"{__package__}.lua_runtime")
    except ImportError as e:
        raise ConfigError(path, f"envoy.filters.http.lua needs the lupa package ({e}): "
                          f"{INSTALL}") from None
    return lua_runtime


def _read_source(raw: Any, path: str) -> bytes:
    return read_data_source(DATA_SOURCE, raw, path)


def _check_script(code: bytes, path: str) -> None:
    """Load the script once now, as Envoy does at config load: a syntax error or an error in
    its top-level code is the config's."""
    rt = _runtime(path)
    try:
        rt.LuaState(code)
    except rt.LuaScriptError as e:
        raise ConfigError(path, f"script load error: {e}") from None


def parse_lua(raw: Mapping[str, Any], path: str) -> LuaConfig:
    f = LUA.read(raw, path)
    _runtime(path)  # lupa first: without it, say how to get it before anything else
    f.oneof("inline_code", "default_source_code")
    code = None
    if f.has("inline_code"):
        code = f.str("inline_code").encode()
        _check_script(code, f.at("inline_code"))
    elif f.has("default_source_code"):
        code = _read_source(f.value("default_source_code"), f.at("default_source_code"))
        _check_script(code, f.at("default_source_code"))
    named: dict[str, bytes] = {}
    sources = f.value("source_codes", {}) or {}
    if not isinstance(sources, Mapping):
        raise ConfigError(f.at("source_codes"), "expected a map of name to DataSource")
    for name, value in sources.items():
        p = f"{f.at('source_codes')}.{name}"
        named[str(name)] = _read_source(value, p)
        _check_script(named[str(name)], p)
    return LuaConfig(default_source_code=code, source_codes=MappingProxyType(named),
                     stat_prefix=f.str("stat_prefix", ""),
                     clear_route_cache=f.bool("clear_route_cache", True))


def parse_lua_per_route(raw: Mapping[str, Any], path: str) -> LuaPerRoute:
    f = PER_ROUTE.read(raw, path)
    kind = f.oneof("disabled", "name", "source_code")
    if kind is None:  # Envoy accepts it: no override, the filter's default script runs
        return LuaPerRoute()
    if kind == "disabled":
        if not f.bool("disabled"):
            raise ConfigError(f.at("disabled"), "must be true when set")
        return LuaPerRoute(disabled=True)
    if kind == "name":
        name = f.str("name")
        if not name:
            raise ConfigError(f.at("name"), "must not be empty")
        return LuaPerRoute(name=name)
    code = _read_source(f.value("source_code"), f.at("source_code"))
    _check_script(code, f.at("source_code"))
    return LuaPerRoute(source_code=code)


# -- runtime ----------------------------------------------------------------------------------

class LuaFactory:
    def __init__(self, config: LuaConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerLua:
        return WorkerLua(self, ctx)


class WorkerLua:
    """Per worker: the scripts' Lua states (made here, used only by this worker's streams),
    and the stats."""

    decoder = True
    encoder = True

    def __init__(self, factory: LuaFactory, ctx) -> None:
        self.rt = _runtime(factory.name)
        self.name = factory.name
        self.config = cfg = factory.config
        self.worker = ctx.worker
        prefix = f"http.{ctx.config.stat_prefix}.lua"
        if cfg.stat_prefix:
            prefix += "." + cfg.stat_prefix
        scope = ctx.worker.stats.scope(prefix)
        self.errors = scope.counter("errors")
        self.executions = scope.counter("executions")
        self.default = self.rt.LuaState(cfg.default_source_code, OPS) if cfg.default_source_code else None
        self.named: dict[str, Any] = {}
        self.per_route: dict[bytes, Any] = {}

    def state_for(self, per_route: LuaPerRoute | None):
        """The Lua state a stream runs (None: the filter does nothing for it)."""
        if per_route is None:
            return self.default
        if per_route.disabled:
            return None
        if per_route.name:
            state = self.named.get(per_route.name)
            if state is None:
                code = self.config.source_codes.get(per_route.name)
                if code is None:
                    return None  # Envoy: no such script, the filter skips the stream
                state = self.named[per_route.name] = self.rt.LuaState(code, OPS)
            return state
        code = per_route.source_code
        if code is None:
            return self.default
        state = self.per_route.get(code)
        if state is None:
            state = self.per_route[code] = self.rt.LuaState(code, OPS)
        return state

    def create(self, callbacks) -> LuaFilter:
        return LuaFilter(callbacks, self)


_UNRESOLVED = object()


class LuaFilter:
    __slots__ = ("cb", "wf", "state", "req", "resp")

    def __init__(self, callbacks, wf: WorkerLua) -> None:
        self.cb = callbacks
        self.wf = wf
        self.state = _UNRESOLVED
        self.req: StreamHandle | None = None
        self.resp: StreamHandle | None = None

    def _state(self):
        state = self.state
        if state is _UNRESOLVED:
            state = self.state = self.wf.state_for(self.cb.per_filter_config(self.wf.name))
        return state

    # -- the request -----------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        state = self._state()
        if state is None or state.on_request is None:
            return 0
        h = self.req = StreamHandle(self, state, True, head, end_stream)
        return h.start(state.on_request)

    def decode_data(self, data: bytes, end_stream: bool):
        h = self.req
        return 0 if h is None else h.on_data(data, end_stream)

    def decode_trailers(self, trailers) -> int:
        h = self.req
        return 0 if h is None else h.on_trailers(trailers)

    # -- the response ----------------------------------------------------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        state = self._state()
        if state is None or state.on_response is None:
            return 0
        h = self.resp = StreamHandle(self, state, False, head, end_stream)
        return h.start(state.on_response)

    def encode_data(self, data: bytes, end_stream: bool):
        h = self.resp
        return 0 if h is None else h.on_data(data, end_stream)

    def encode_trailers(self, trailers) -> int:
        h = self.resp
        return 0 if h is None else h.on_trailers(trailers)

    def on_destroy(self) -> None:
        for h in (self.req, self.resp):
            if h is not None:
                h.abandon()
        self.req = self.resp = None


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_lua,
    factory=LuaFactory,
    empty_config_ok=True,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_lua_per_route,
))
