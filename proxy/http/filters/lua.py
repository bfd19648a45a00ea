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
from functools import partial
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...config.data_source import read_data_source
from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from .lua_handle import DONE, OPS, StreamHandle

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
    # Whether the default script or a named one defines envoy_on_response (found at load):
    # without one, and without a route's own script that does, the filter is not in the
    # response path at all (WorkerLua.encoder). True unless parse_lua found out.
    response_hooks: bool = True


@dataclass(frozen=True, slots=True)
class LuaPerRoute:
    disabled: bool = False
    name: str = ""
    source_code: bytes | None = None
    # Whether `source_code` defines envoy_on_response (found at load; see LuaConfig's).
    response_hook: bool = True


LUA = Message(PROTO, title="HTTP filter lua", model=LuaConfig, bookkeeping=("response_hooks",), fields=(
    used("inline_code", attr="default_source_code", why="deprecated; the same as default_source_code"),
    used("default_source_code", why="DataSource, loaded at config load and on each worker"),
    used("source_codes", why="named DataSources a route picks with LuaPerRoute.name"),
    used("stat_prefix", ""),
    used("clear_route_cache", True, why="a header change on the request path clears the route cache"),
))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter lua per route", model=LuaPerRoute,
                    bookkeeping=("response_hook",), fields=(
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


def _check_script(code: bytes, path: str) -> bool:
    """Load the script once now, as Envoy does at config load: a syntax error or an error in
    its top-level code is the config's. Answers whether it defines envoy_on_response."""
    rt = _runtime(path)
    try:
        return rt.LuaState(code).on_response is not None
    except rt.LuaScriptError as e:
        raise ConfigError(path, f"script load error: {e}") from None


def parse_lua(raw: Mapping[str, Any], path: str) -> LuaConfig:
    f = LUA.read(raw, path)
    _runtime(path)  # lupa first: without it, say how to get it before anything else
    f.oneof("inline_code", "default_source_code")
    code = None
    response_hooks = False
    if f.has("inline_code"):
        code = f.str("inline_code").encode()
        response_hooks = _check_script(code, f.at("inline_code"))
    elif f.has("default_source_code"):
        code = _read_source(f.value("default_source_code"), f.at("default_source_code"))
        response_hooks = _check_script(code, f.at("default_source_code"))
    named: dict[str, bytes] = {}
    sources = f.value("source_codes", {}) or {}
    if not isinstance(sources, Mapping):
        raise ConfigError(f.at("source_codes"), "expected a map of name to DataSource")
    for name, value in sources.items():
        p = f"{f.at('source_codes')}.{name}"
        named[str(name)] = _read_source(value, p)
        if _check_script(named[str(name)], p):
            response_hooks = True
    return LuaConfig(default_source_code=code, source_codes=MappingProxyType(named),
                     stat_prefix=f.str("stat_prefix", ""),
                     clear_route_cache=f.bool("clear_route_cache", True),
                     response_hooks=response_hooks)


def parse_lua_per_route(raw: Mapping[str, Any], path: str) -> LuaPerRoute:
    f = PER_ROUTE.read(raw, path)
    kind = f.oneof("disabled", "name", "source_code")
    # (response_hook: a named script is the filter config's, which says for it)
    if kind is None:  # Envoy accepts it: no override, the filter's default script runs
        return LuaPerRoute(response_hook=False)
    if kind == "disabled":
        if not f.bool("disabled"):
            raise ConfigError(f.at("disabled"), "must be true when set")
        return LuaPerRoute(disabled=True, response_hook=False)
    if kind == "name":
        name = f.str("name")
        if not name:
            raise ConfigError(f.at("name"), "must not be empty")
        return LuaPerRoute(name=name, response_hook=False)
    code = _read_source(f.value("source_code"), f.at("source_code"))
    return LuaPerRoute(source_code=code, response_hook=_check_script(code, f.at("source_code")))


# -- runtime ----------------------------------------------------------------------------------

class LuaFactory:
    def __init__(self, config: LuaConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerLua:
        return WorkerLua(self, ctx)


class WorkerLua:
    """Per worker: the scripts' Lua states (made here, used only by this worker's streams),
    the stats, and what the HCM's route table says of this filter (both fixed for the
    worker's HcmContext unless the table comes from RDS):

    - `routed`: whether a stream's script depends on its route (a route with a
      typed_per_filter_config for this filter, or RDS). Otherwise every stream runs the
      default script, found without resolving the route (which a header the script adds would
      make the router resolve again).
    - `encoder`: whether the filter is in the response path at all (filter_chain_plan.py reads
      it per worker factory): only when a script it may run defines envoy_on_response (the
      default, a named one, or a route's own; with RDS, a later route's may)."""

    decoder = True

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
        routes = _route_configs(ctx, factory.name)
        self.routed = routes is None or bool(routes)
        self.encoder = (cfg.response_hooks or routes is None
                        or any(isinstance(c, LuaPerRoute) and c.response_hook for c in routes))
        self.create = partial(LuaFilter, wf=self)  # create(callbacks): a stream's filter

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



def _route_configs(ctx, name: str) -> list | None:
    """This filter's per-route configs in the HCM's route table (each route's merged
    typed_per_filter_config), or None when the table may change under the worker (RDS)."""
    table = getattr(ctx, "route_table", None)
    config = getattr(table, "config", None)
    if config is None or getattr(ctx.config, "rds", None) is not None:
        return None
    out = []
    for vh in config.virtual_hosts:
        for route in (*vh.routes, vh.tls_redirect_route):
            entry = route.per_filter_config.get(name) if route is not None else None
            if entry is not None:
                out.append(entry.config)
    return out


_UNRESOLVED = object()


class LuaFilter:
    """One stream's filter. A hook that ended in its first run (the usual) leaves no handle
    behind: the rest of its direction passes as it would past an ended hook."""

    # A request header write of content-type notes first whether the request arrived as gRPC
    # (lua_handle.py): no snapshot per request needed (filter_chain_plan.py).
    keeps_request_content_type = True
    # (No __slots__: what a stream may change later keeps its class default until then.)
    state: Any = _UNRESOLVED              # the stream's LuaState, once resolved (routed)
    req: StreamHandle | None = None       # the request hook's handle while it is not over
    resp: StreamHandle | None = None      # the response hook's

    def __init__(self, callbacks, wf: WorkerLua) -> None:
        self.cb = callbacks
        self.wf = wf

    def _state(self):
        state = self.state
        if state is _UNRESOLVED:
            wf = self.wf
            state = self.state = (wf.state_for(self.cb.per_filter_config(wf.name)) if wf.routed
                                  else wf.default)
        return state

    # -- the request -----------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        state = self._state() if wf.routed else wf.default
        if state is None:
            return 0
        fn = state.on_request
        if fn is None:
            return 0
        wf.executions.value += 1
        h = self.req = StreamHandle(self, state, True, head, end_stream)
        status = h.start(fn)
        if h.status == DONE:  # (set first: the stream may end while it runs, respond())
            self.req = None
        return status

    def decode_data(self, data: bytes, end_stream: bool):
        h = self.req
        return 0 if h is None else h.on_data(data, end_stream)

    def decode_trailers(self, trailers) -> int:
        h = self.req
        return 0 if h is None else h.on_trailers(trailers)

    # -- the response (only when a script may have envoy_on_response: WorkerLua.encoder) --------
    def encode_headers(self, head, end_stream: bool) -> int:
        state = self._state()
        if state is None:
            return 0
        fn = state.on_response
        if fn is None:
            return 0
        self.wf.executions.value += 1
        h = self.resp = StreamHandle(self, state, False, head, end_stream)
        status = h.start(fn)
        if h.status == DONE:  # (set first: the stream may end while it runs, respond())
            self.resp = None
        return status

    def encode_data(self, data: bytes, end_stream: bool):
        h = self.resp
        return 0 if h is None else h.on_data(data, end_stream)

    def encode_trailers(self, trailers) -> int:
        h = self.resp
        return 0 if h is None else h.on_trailers(trailers)

    def on_destroy(self) -> None:
        h = self.req
        if h is not None:
            self.req = None
            h.abandon()
        h = self.resp
        if h is not None:
            self.resp = None
            h.abandon()


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
