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
returned, as Envoy's; `executions` counts the hooks run.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ..async_client import AsyncRequest, AsyncResponse

__all__ = ["LuaConfig", "LuaPerRoute", "parse_lua", "parse_lua_per_route"]

log = logging.getLogger("ftproxy.lua")

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
    d = DATA_SOURCE.read(raw, path)
    kind = d.oneof("filename", "inline_string", "inline_bytes", "environment_variable", required=True)
    value = d.str(kind)
    if kind == "inline_string":
        return value.encode()
    if kind == "inline_bytes":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(d.at(kind), "not valid base64") from None
    if kind == "environment_variable":
        env = os.environ.get(value)
        if env is None:
            raise ConfigError(d.at(kind), f"environment variable {value!r} is not set")
        return env.encode()
    try:
        with open(value, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise ConfigError(d.at(kind), f"cannot read {value!r}: {e.strerror or e}") from None


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
    kind = f.oneof("disabled", "name", "source_code", required=True)
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
        self.default = self.rt.LuaState(cfg.default_source_code) if cfg.default_source_code else None
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
                state = self.named[per_route.name] = self.rt.LuaState(code)
            return state
        code = per_route.source_code
        state = self.per_route.get(code)
        if state is None:
            state = self.per_route[code] = self.rt.LuaState(code)
        return state

    def create(self, callbacks) -> LuaFilter:
        return LuaFilter(callbacks, self)


_UNRESOLVED = object()
# Stream handle states (Envoy's StreamHandleWrapper::State), and DONE: the coroutine ended.
RUNNING, WAIT_BODY, WAIT_CHUNK, WAIT_TRAILERS, HTTP_CALL, RESPONDED, DONE = range(7)
_LOG_LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
               logging.CRITICAL)
# The body of the local reply Envoy's router makes when a call gets no answer.
_LOCAL_BODIES = {"no_healthy_upstream": b"no healthy upstream", "cluster_not_found": b"",
                 "response_timeout": b"upstream request timeout", "overflow": b"upstream overflow"}


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


class StreamHandle:
    """One hook's run over one direction of a stream: the Python side of the script's handle
    (its Lua table calls these methods) and the coroutine's driver."""

    __slots__ = ("f", "lua", "decoding", "head", "end_stream", "status", "co",
                 "headers_continued", "saw_body", "buffered_body", "trailers_list",
                 "headers_wrapper", "request", "always_wrap", "info", "md", "scope")

    def __init__(self, flt: LuaFilter, lua, decoding: bool, head, end_stream: bool) -> None:
        self.f = flt
        self.lua = lua
        self.decoding = decoding
        self.head = head
        self.end_stream = end_stream
        self.status = RUNNING
        self.co = None
        self.headers_continued = False
        self.saw_body = False
        self.buffered_body = False
        self.trailers_list = None
        self.headers_wrapper = None
        self.request: AsyncRequest | None = None
        self.always_wrap = False
        self.info = None
        self.md = None
        self.scope = flt.wf.rt.Scope()

    # -- driving the coroutine -------------------------------------------------------------------
    def start(self, fn) -> int:
        self.f.wf.executions.value += 1
        self.co = self.lua.coroutine(fn, self)
        self._resume(None)
        if self.status in (WAIT_BODY, HTTP_CALL, RESPONDED):
            return 1  # StopIteration
        self.headers_continued = True
        return 0

    def _resume(self, value) -> None:
        self.status = RUNNING
        try:
            self.co.send(value)
        except StopIteration:  # it returned nothing
            self.status = DONE
            return
        except Exception as e:  # the script's error (or an API error raised into it)
            self._error(e)
            return
        if not self.co:
            self.status = DONE
            return
        # Suspended: what the handle gave out so far is dead (Envoy's markDead).
        self.scope.alive = False
        self.scope = self.f.wf.rt.Scope()
        self.headers_wrapper = self.info = self.md = None
        if self.status == RUNNING:
            self._error(Exception("script performed an unexpected yield"))

    def _error(self, e: BaseException) -> None:
        wf = self.f.wf
        wf.errors.value += 1
        log.error("script log: %s", wf.rt.error_text(e))
        self.status = DONE
        self.co = None
        self.abandon()

    def abandon(self) -> None:
        req, self.request = self.request, None
        if req is not None:
            req.cancel()

    def _buffer(self) -> bytearray | None:
        cb = self.f.cb
        return cb.decoding_buffer() if self.decoding else cb.encoding_buffer()

    def _body_value(self):
        buf = self._buffer()
        if buf is None:
            if not self.always_wrap:
                return None
            buf = bytearray()
        return self.f.wf.rt.BufferWrapper(self.scope, buf, self.head)

    def on_data(self, data: bytes, end_stream: bool):
        self.end_stream = end_stream
        self.saw_body = True
        st = self.status
        added = False
        out = None
        if st == WAIT_CHUNK:
            chunk = bytearray(data)
            self._resume(self.f.wf.rt.BufferWrapper(self.scope, chunk, None))
            if chunk != data:
                out = bytes(chunk)
        elif st == WAIT_BODY and end_stream:
            cb = self.f.cb
            (cb.add_decoded_data if self.decoding else cb.add_encoded_data)(data)
            added = True
            self._resume(self._body_value())
        elif st == WAIT_TRAILERS and end_stream:
            self._resume(None)
        st = self.status
        if st == HTTP_CALL or st == WAIT_BODY:
            self.buffered_body = True
            return 3 if added else 1  # StopIterationNoBuffer (it is buffered) / AndBuffer
        if st == RESPONDED:
            return 3
        self.headers_continued = True
        if added:
            return b""  # the buffered body (changed in place) goes on
        return 0 if out is None else out

    def on_trailers(self, trailers) -> int:
        self.end_stream = True
        self.trailers_list = trailers
        st = self.status
        if st == WAIT_CHUNK:
            self._resume(None)
        elif st == WAIT_BODY:
            self._resume(self._body_value())
        if self.status == WAIT_TRAILERS:
            self._resume(self._trailers_value())
        if self.status == HTTP_CALL or self.status == RESPONDED:
            return 1
        self.headers_continued = True
        return 0

    # -- the handle's API (called from the Lua side) -------------------------------------------
    def headers(self):
        w = self.headers_wrapper
        if w is None:
            w = self.headers_wrapper = self.f.wf.rt.HeaderMapWrapper(
                self.scope, self.head, None, self._modifiable, self._modifying if self.decoding else None)
        return w

    def _modifiable(self) -> bool:
        return not self.headers_continued

    def _modifying(self) -> None:
        if self.f.wf.config.clear_route_cache:
            self.f.cb.clear_route_cache()

    def body_wait(self, always_wrap=None) -> bool:
        self.always_wrap = bool(always_wrap)
        if self.end_stream:
            if not self.buffered_body and self.saw_body:
                raise self.f.wf.rt.LuaApiError("cannot call body() after body has been streamed")
            return False
        if self.saw_body and not self.buffered_body:
            raise self.f.wf.rt.LuaApiError("cannot call body() after body streaming has started")
        self.status = WAIT_BODY
        self.buffered_body = True
        return True

    def body(self, always_wrap=None):
        self.always_wrap = bool(always_wrap)
        if not self.saw_body and not self.always_wrap:
            return ()  # (no value, as Envoy's)
        value = self._body_value()
        return () if value is None else value

    def chunks_start(self) -> None:
        if self.saw_body:
            raise self.f.wf.rt.LuaApiError("cannot call bodyChunks after body processing has begun")

    def chunk_wait(self) -> bool:
        if self.end_stream:
            return False
        self.status = WAIT_CHUNK
        return True

    def trailers_wait(self) -> bool:
        if self.end_stream or self.trailers_list is not None:
            return False
        self.status = WAIT_TRAILERS
        return True

    def trailers(self):
        value = self._trailers_value()
        return () if value is None else value

    def _trailers_value(self):
        if self.trailers_list is None:
            return None
        return self.f.wf.rt.HeaderMapWrapper(self.scope, None, self.trailers_list, _always)

    def http_call(self, cluster, headers, body, options, asynchronous) -> bool:
        rt = self.f.wf.rt
        name = rt.to_bytes(cluster, "httpCall", 2).decode("utf-8", "replace")
        if rt.lua_type(headers) != "table":
            raise rt.LuaApiError("bad argument #3 to 'httpCall' (table expected)")
        payload = None if body is None else rt.to_bytes(body, "httpCall", 4)
        send_xff = True
        if rt.lua_type(options) == "table":
            timeout_ms = options[b"timeout_ms"] or 0
            asynchronous = options[b"asynchronous"]
            if options[b"send_xff"] is False:
                send_xff = False
        else:
            timeout_ms = options
            if not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool):
                raise rt.LuaApiError("bad argument #5 to 'httpCall' (number expected)")
        if asynchronous is not None and not isinstance(asynchronous, bool):
            raise rt.LuaApiError("http call asynchronous flag must be 'true', 'false', or empty")
        if not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise rt.LuaApiError("http call timeout must be >= 0")
        worker = self.f.wf.worker
        if worker.clusters.get(name) is None:
            raise rt.LuaApiError("http call cluster invalid. Must be configured")
        fields: list[tuple[bytes, bytes]] = []
        pseudo: dict[bytes, bytes] = {}
        for key, value in headers.items():
            k = rt.to_bytes(key, "httpCall", 3).lower()
            values = ([rt.to_bytes(v, "httpCall", 3) for _, v in value.items()]
                      if rt.lua_type(value) == "table" else [rt.to_bytes(value, "httpCall", 3)])
            for v in values:
                if k[:1] == b":":
                    pseudo.setdefault(k, v)
                elif k == b"host":
                    pseudo.setdefault(b":authority", v)
                else:
                    fields.append((k, v))
        if not (b":path" in pseudo and b":method" in pseudo and b":authority" in pseudo):
            raise rt.LuaApiError("http call headers must include ':path', ':method', and ':authority'")
        if payload is not None:
            fields = [kv for kv in fields if kv[0] != b"content-length"]
            fields.append((b"content-length", b"%d" % len(payload)))
        if asynchronous:
            AsyncRequest(worker, name, pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"],
                         fields, payload or b"", timeout_ms / 1000.0, _ignore, send_xff).send()
            return False
        self.status = HTTP_CALL
        self.request = AsyncRequest(worker, name, pseudo[b":method"], pseudo[b":path"],
                                    pseudo[b":authority"], fields, payload or b"",
                                    timeout_ms / 1000.0, self._on_answer, send_xff)
        self.request.send()
        return True

    def _on_answer(self, answer: AsyncResponse) -> None:
        self.request = None
        if self.co is None:
            return
        lua = self.lua
        if answer.local:
            body = _LOCAL_BODIES.get(answer.details, b"")
            if answer.details.startswith("upstream_reset_before_response_started"):
                reason = answer.details[len("upstream_reset_before_response_started{"):-1]
                body = (b"upstream connect error or disconnect/reset before headers. reset reason: "
                        + reason.replace("_", " ").encode())
            items = [(b":status", b"%d" % answer.status)]
            if body:
                items += [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
        else:
            body = answer.body
            items = [(b":status", b"%d" % answer.status), *answer.headers]
        table = {}
        for k, v in items:
            table[k.lower()] = v  # a later value of a name replaces an earlier one, as Envoy's
        result = lua.table_from([lua.table_from(table), body if body else None])
        self._resume(result)
        if self.status in (RUNNING, DONE):
            self.headers_continued = True
            cb = self.f.cb
            (cb.continue_decoding if self.decoding else cb.continue_encoding)()

    def respond(self, headers, body) -> None:
        rt = self.f.wf.rt
        if not self.decoding:
            raise rt.LuaApiError("respond not currently supported in the response path")
        if self.headers_continued:
            raise rt.LuaApiError("respond() cannot be called if headers have been continued")
        if rt.lua_type(headers) != "table":
            raise rt.LuaApiError("bad argument #2 to 'respond' (table expected)")
        payload = b"" if body is None else rt.to_bytes(body, "respond", 3)
        fields: list[tuple[bytes, bytes]] = []
        status_text = b""
        for key, value in headers.items():
            k = rt.to_bytes(key, "respond", 2).lower()
            values = ([rt.to_bytes(v, "respond", 2) for _, v in value.items()]
                      if rt.lua_type(value) == "table" else [rt.to_bytes(value, "respond", 2)])
            for v in values:
                if k == b":status":
                    status_text = v
                elif k[:1] != b":":
                    fields.append((k, v))
        try:
            status = int(status_text)
        except ValueError:
            status = 0
        if not 200 <= status < 600:
            raise rt.LuaApiError(":status must be between 200-599")
        self.status = RESPONDED
        self.f.cb.send_local_reply(status, payload, None, "lua_response", fields)

    def metadata(self):
        md = self.md
        if md is None:
            route = self.f.cb.route()
            values = {}
            if route is not None:
                meta = route.metadata
                values = meta.get(self.f.wf.name) or meta.get(NAME) or {}
            md = self.md = self.f.wf.rt.MetadataWrapper(self.scope, self.lua, values)
        return md

    def stream_info(self):
        info = self.info
        if info is None:
            info = self.info = self.f.wf.rt.StreamInfoWrapper(self.lua, self.f.cb.stream_info)
        return info

    def connection(self):
        return self.f.wf.rt.ConnectionWrapper(self.f.cb.stream_info)

    def log(self, level: int, message) -> None:
        text = self.f.wf.rt.to_bytes(message, "log", 2).decode("utf-8", "replace")
        log.log(_LOG_LEVELS[level], "script log: %s", text)

    def clear_route_cache(self) -> None:
        if self.decoding:
            self.f.cb.clear_route_cache()

    def base64_escape(self, value) -> bytes:
        return base64.b64encode(self.f.wf.rt.to_bytes(value, "base64Escape", 2))

    def timestamp(self) -> int:
        return int(time.time() * 1000)


def _ignore(_answer: AsyncResponse) -> None:
    pass


def _always() -> bool:
    return True


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
