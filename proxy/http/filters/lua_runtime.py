"""The Lua side of `envoy.filters.http.lua`: a Lua state per worker and script (lupa, LuaJIT as
Envoy's), the prelude that gives a script Envoy's stream handle API, and the header view the
handle's operations work on.

Importing this module imports lupa's LuaJIT runtime, and on a free-threaded CPython that turns
the GIL back on for the whole process (lupa's extension modules do not declare free-threading
support): it is imported only when a config uses the Lua filter (lua.py imports it lazily),
logs a warning saying so, and notes it for /server_info (proxy/server/gil_notes.py).
tests/unit/test_gil_off.py leaves this module out of its walk for that reason.

How a hook runs: `envoy_on_request(handle)` runs as a Lua coroutine, created and resumed by
Lua's own coroutine library (the prelude's `start`). Every object a script sees (the handle,
headers, buffers, metadata, stream info, connection) is a Lua table of the prelude; its
methods call one Python function, `api(op, handle_id, ...)`, with strings and numbers only,
and get strings, numbers, booleans (or Lua tables made by the runtime) back. No Python object
crosses into Lua: lupa 2.8 proxies of Python objects called from inside a coroutine resumed
across Python calls return wrong values after a few hundred calls (measured), and strings are
all the API needs. A method that must wait (body(), bodyChunks(), trailers(), httpCall(),
respond()) asks Python whether to, and yields the coroutine from Lua; the filter stops
iteration and resumes it when the awaited thing arrives. Each yield ends the *scope* of the
objects handed out before it ("object used outside of proper scope", as Envoy's markDead).
API errors come back as a marker and message, and the prelude raises them with the script's
line (Envoy's luaL_error messages); `python` is removed from the script's globals.

Thread affinity: a LuaState belongs to the worker that made it (lupa also locks it per call).
Must not: do I/O (but `require` at load, as Envoy's scripts may).
"""

from __future__ import annotations

import logging
import sys
import sysconfig
import warnings
from collections.abc import Callable, Mapping
from typing import Any

_GIL_BEFORE = bool(getattr(sys, "_is_gil_enabled", lambda: True)())
with warnings.catch_warnings():
    # (CPython's own RuntimeWarning about the GIL: the warning below says it in our words.)
    warnings.simplefilter("ignore", RuntimeWarning)
    try:
        from lupa import luajit21 as _lupa  # Envoy runs LuaJIT: Lua 5.1 semantics, number formatting
    except ImportError:  # a lupa build without LuaJIT
        from lupa import lua51 as _lupa

from ...server import gil_notes
from .lua_values import LuaApiError

__all__ = ["LuaState", "LuaScriptError", "ERR", "error_text"]

log = logging.getLogger("ftproxy.lua")

if (sysconfig.get_config_var("Py_GIL_DISABLED") and not _GIL_BEFORE
        and getattr(sys, "_is_gil_enabled", lambda: False)()):
    log.warning("envoy.filters.http.lua: loading lupa (%s) re-enabled the GIL on this "
                "free-threaded build: workers now take turns for all Python code",
                _lupa.__name__)
    gil_notes.note("lupa (envoy.filters.http.lua)")

ERR = b"\x00ftproxy-lua-error"   # first value of an API answer that is an error


class LuaScriptError(Exception):
    """The script failed at load (syntax, or an error in its top-level code)."""


# -- the prelude -------------------------------------------------------------------------------------

_PRELUDE = r"""
local papi, E, BATCH = ...
local yield, create, resume, status = coroutine.yield, coroutine.create, coroutine.resume, coroutine.status
local setmetatable, getmetatable, type, select, error, unpack, rawpairs =
      setmetatable, getmetatable, type, select, error, unpack, pairs
python = nil

-- An API answer: its values, or the error it carries raised at the script's line.
-- Header writes a hook's first run makes (add/replace/remove of its own headers with string
-- arguments, which cannot fail then) wait in Q[id] as (op, key, value) triples: the next API
-- call takes them first ("hbatch"), and the end of the run hands the rest to Python with its
-- answer. One crossing into Python fewer per write (each costs more than the write).
local Q = {}
local function flush(id, q)
  local r = {papi("hbatch", id, unpack(q, 1, q.n))}
  q.n = 0
  for i = #q, 1, -1 do q[i] = nil end
  return r
end
local function api(op, id, ...)
  local q = Q[id]
  if q ~= nil and q.n > 0 then flush(id, q) end
  return papi(op, id, ...)
end
local function queue(o, code, k, v)
  local q = Q[o.h.id]
  if q == nil or o.k ~= 0 or type(k) ~= "string" or type(v) ~= "string" then return false end
  local n = q.n
  q[n + 1] = code; q[n + 2] = k; q[n + 3] = v
  q.n = n + 3
  return true
end
local function pass(...)
  if ... == E then error((select(2, ...)), 2) end
  return ...
end
local function chk(...)
  if ... == E then error((select(2, ...)), 3) end
  return ...
end
local function live(o)
  if o.s ~= o.h.scope then error("object used outside of proper scope", 3) end
end
local function flatpairs(...)
  local flat = {...}
  local i, n = -1, select("#", ...)
  return function()
    i = i + 2
    if i > n then return nil end
    return flat[i], flat[i + 1]
  end
end
-- pairs() over the API's objects (LuaJIT has no __pairs).
pairs = function(t)
  local mt = getmetatable(t)
  if type(mt) == "table" and mt.__pairs ~= nil then return mt.__pairs(t) end
  return rawpairs(t)
end
-- A header table as Envoy takes it (a value may be a table of values): a flat list.
local function flatten(t)
  local out = {}
  for k, v in rawpairs(t) do
    if type(v) == "table" then
      for _, x in rawpairs(v) do out[#out + 1] = k; out[#out + 1] = x end
    else
      out[#out + 1] = k; out[#out + 1] = v
    end
  end
  return out
end
local function map(...)
  local t = {}
  for i = 1, select("#", ...), 2 do
    local k, v = select(i, ...)
    t[k] = v
  end
  return t
end

local HM = {}
HM.__index = HM
local function modify(o)
  if o.s ~= o.h.scope then error("object used outside of proper scope", 3) end
  if o.it then error("header map cannot be modified while iterating", 3) end
end
function HM:get(k) live(self); return pass(api("hget", self.h.id, self.k, k)) end
function HM:getAtIndex(k, i) live(self); return pass(api("hgetat", self.h.id, self.k, k, i)) end
function HM:getNumValues(k) live(self); return pass(api("hnum", self.h.id, self.k, k)) end
function HM:add(k, v)
  modify(self)
  if queue(self, 1, k, v) then return end
  return pass(api("hadd", self.h.id, self.k, k, v))
end
function HM:replace(k, v)
  modify(self)
  if queue(self, 2, k, v) then return end
  return pass(api("hreplace", self.h.id, self.k, k, v))
end
function HM:remove(k)
  modify(self)
  if queue(self, 3, k, "") then return end
  return pass(api("hremove", self.h.id, self.k, k))
end
function HM:setHttp1ReasonPhrase(r) modify(self); return pass(api("hreason", self.h.id, self.k, r)) end
HM.__pairs = function(self)
  live(self)
  local it = flatpairs(chk(api("hpairs", self.h.id, self.k)))
  self.it = true
  return function()
    local k, v = it()
    if k == nil then self.it = nil end
    return k, v
  end, self, nil
end

local B = {}
B.__index = B
function B:length() live(self); return pass(api("blen", self.h.id, self.k)) end
function B:getBytes(i, n) live(self); return pass(api("bget", self.h.id, self.k, i, n)) end
function B:setBytes(s) live(self); return pass(api("bset", self.h.id, self.k, s)) end

local MD = {}
MD.__index = MD
function MD:get(k) live(self); return pass(api("mdget", self.h.id, k)) end
MD.__pairs = function(self) live(self); return flatpairs(chk(api("mdpairs", self.h.id))), self, nil end

local DM = {}
DM.__index = DM
function DM:get(ns) live(self); return pass(api("dmget", self.h.id, ns)) end
function DM:set(ns, k, v)
  live(self)
  if type(v) == "table" then
    return pass(api("dmset", self.h.id, ns, k, true, unpack(flatten(v))))
  end
  return pass(api("dmset", self.h.id, ns, k, false, v))
end
DM.__pairs = function(self) live(self); return flatpairs(chk(api("dmpairs", self.h.id))), self, nil end

local S = {}
S.__index = S
function S:peerCertificatePresented() live(self); return pass(api("ssl", self.h.id, "peer")) end
function S:tlsVersion() live(self); return pass(api("ssl", self.h.id, "version")) end
function S:ciphersuiteString() live(self); return pass(api("ssl", self.h.id, "cipher")) end
function S:sni() live(self); return pass(api("ssl", self.h.id, "sni")) end
local function ssl(o)
  if chk(api("ssl", o.h.id, "present")) then return setmetatable({h = o.h, s = o.s}, S) end
  return nil
end

local SI = {}
SI.__index = SI
function SI:protocol() live(self); return pass(api("si", self.h.id, "protocol")) end
function SI:downstreamLocalAddress() live(self); return pass(api("si", self.h.id, "local")) end
function SI:downstreamDirectRemoteAddress() live(self); return pass(api("si", self.h.id, "direct_remote")) end
function SI:downstreamRemoteAddress() live(self); return pass(api("si", self.h.id, "remote")) end
function SI:requestedServerName() live(self); return pass(api("si", self.h.id, "sni")) end
function SI:routeName() live(self); return pass(api("si", self.h.id, "route")) end
function SI:dynamicMetadata() live(self); return setmetatable({h = self.h, s = self.s}, DM) end
function SI:downstreamSslConnection() live(self); return ssl(self) end

local C = {}
C.__index = C
function C:ssl() live(self); return ssl(self) end

local H = {}
H.__index = H
-- Wait for what the filter brings; the objects given out so far die (Envoy's markDead).
local function wait(h)
  local q = Q[h.id]
  if q ~= nil then  -- (writes are queued in the first run only, before any wait)
    if q.n > 0 then flush(h.id, q) end
    Q[h.id] = nil
  end
  h.scope = h.scope + 1
  h._hm = nil
  return yield()
end
local function new(h, mt, k) return setmetatable({h = h, s = h.scope, k = k}, mt) end
function H:headers()
  local o = self._hm
  if o == nil then o = new(self, HM, 0); self._hm = o end
  return o
end
function H:body(always_wrap)
  if chk(api("body_wait", self.id, always_wrap)) then wait(self) end
  if chk(api("body_has", self.id, always_wrap)) then return new(self, B, 0) end
end
function H:bodyChunks()
  chk(api("chunks_start", self.id))
  local h = self
  return function()
    if chk(api("chunk_wait", h.id)) then
      wait(h)
      if chk(api("chunk_has", h.id)) then return new(h, B, 1) end
    end
    return nil
  end
end
function H:trailers()
  if chk(api("trailers_wait", self.id)) then wait(self) end
  if chk(api("trailers_has", self.id)) then return new(self, HM, 1) end
end
local function answer(body, ...) return map(...), body end
function H:httpCall(cluster, headers, body, options, asynchronous)
  if type(headers) ~= "table" then error("bad argument #3 to 'httpCall' (table expected, got " .. type(headers) .. ")", 2) end
  local timeout, send_xff = options, true
  if type(options) == "table" then
    timeout = options.timeout_ms or 0
    asynchronous = options.asynchronous
    if options.send_xff == false then send_xff = false end
  end
  if chk(api("http_call", self.id, cluster, body, timeout, asynchronous, send_xff, unpack(flatten(headers)))) then
    wait(self)
    return answer(chk(api("http_answer", self.id)))
  end
end
function H:respond(headers, body)
  if type(headers) ~= "table" then error("bad argument #2 to 'respond' (table expected, got " .. type(headers) .. ")", 2) end
  chk(api("respond", self.id, body, unpack(flatten(headers))))
  return wait(self)
end
function H:metadata() return new(self, MD) end
function H:streamInfo() return new(self, SI) end
function H:connection() return new(self, C) end
function H:logTrace(m) chk(api("log", self.id, 0, m)) end
function H:logDebug(m) chk(api("log", self.id, 1, m)) end
function H:logInfo(m) chk(api("log", self.id, 2, m)) end
function H:logWarn(m) chk(api("log", self.id, 3, m)) end
function H:logErr(m) chk(api("log", self.id, 4, m)) end
function H:logCritical(m) chk(api("log", self.id, 5, m)) end
function H:clearRouteCache() chk(api("clear_route_cache", self.id)) end
function H:base64Escape(s) return pass(api("base64", self.id, s)) end
function H:timestamp() return pass(api("timestamp", self.id)) end

-- start(fn, id): the hook as a coroutine, run until it first ends or waits (one call from
-- Python instead of two); then the step function resumes it. Each run answers
-- true, dead | false, message. A hook that ended at once returning a string (or a number,
-- as its string: Lua's coercion) answers true, true, nil, that string: the cluster
-- specifier's envoy_on_route. (Only strings cross: no Lua object goes to Python.)
local tostring = tostring
-- The header writes still queued at the end of the first run follow the answer's first four
-- values (ok, res, step or nil, value or nil), for Python to make before anything else.
--
-- A hook runs in a runner coroutine that LuaJIT lets yield across its pcall: one that saw its
-- hook end (returned or failed) waits, parked, for the next hook instead of a new coroutine
-- per hook. A hook that waits keeps its runner until it ends. (Lua 5.1 without LuaJIT cannot
-- yield across pcall: there each hook gets a coroutine of its own, as the function it is.)
local DONE = {}
local POOL = rawget(_G, "jit") ~= nil
local idle = nil
local function runner(fn, h)
  while true do
    local ok, v = pcall(fn, h)
    fn, h = yield(DONE, ok, v)
  end
end
return function(fn, id)
  local h = setmetatable({id = id, scope = 0}, H)
  local value
  local co
  if POOL then
    co = idle
    idle = nil
    if co == nil then co = create(runner) end
  else
    co = create(function() return fn(h) end)
  end
  local function step(...)
    local rok, tag, ok, v = resume(co, ...)
    if not rok then return false, tag end
    if POOL then
      if tag ~= DONE then return true, false end
      if idle == nil then idle = co end
      if not ok then return false, v end
      value = v
      return true, true
    end
    if status(co) == "dead" then value = tag; return true, true end
    return true, false
  end
  local q = {n = 0}
  if BATCH then Q[id] = q end  -- (when the ops take "hbatch": the stream filter's do)
  local ok, res = step(fn, h)
  Q[id] = nil
  local kind = type(value)
  if ok and res and (kind == "string" or kind == "number") then value = tostring(value) else value = nil end
  local st = nil
  if ok and not res then st = step end
  if q.n > 0 then return ok, res, st, value, unpack(q, 1, q.n) end
  if value ~= nil then return ok, res, nil, value end
  if st ~= nil then return ok, res, st end
  return ok, res  -- (ended: no step function to hand to Python, which costs a wrapper)
end
"""


class LuaState:
    """One script compiled and loaded in its own Lua state (per worker, per script): its
    `envoy_on_request` / `envoy_on_response`, and `start(fn, handle)`, which makes a hook's
    coroutine for a stream handle. `ops` maps the prelude's operation names to the handle's
    methods (lua.py). Made on the worker that uses it; at config load one is made to check
    the script."""

    __slots__ = ("runtime", "_start", "on_request", "on_response", "on_route", "table_from",
                 "handles", "next_id", "ops")

    def __init__(self, code: bytes, ops: Mapping[bytes, Callable[..., Any]] | None = None) -> None:
        self.handles: dict[int, Any] = {}
        self.next_id = 0
        self.ops = ops or {}
        rt = self.runtime = _lupa.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                             register_eval=False, register_builtins=False)
        g = rt.globals()
        self._start = rt.execute(_PRELUDE.encode(), self._api, ERR, b"hbatch" in self.ops)
        # Compiled by Lua's own loadstring: chunk names (and error messages) as Envoy's.
        chunk = g[b"loadstring"](code)
        if type(chunk) is tuple:  # nil, message
            raise LuaScriptError(_text(chunk[1]))
        try:
            chunk()
        except _lupa.LuaError as e:
            raise LuaScriptError(error_text(e)) from None
        on_request = g[b"envoy_on_request"]
        on_response = g[b"envoy_on_response"]
        self.on_request = on_request if _lupa.lua_type(on_request) == "function" else None
        self.on_response = on_response if _lupa.lua_type(on_response) == "function" else None
        on_route = g[b"envoy_on_route"]  # (a cluster specifier's script)
        self.on_route = on_route if _lupa.lua_type(on_route) == "function" else None
        self.table_from = rt.table_from

    def register(self, handle: Any) -> int:
        """A stream handle's id, by which the prelude's objects reach it."""
        self.next_id += 1
        self.handles[self.next_id] = handle
        return self.next_id

    def start(self, fn: Any, hid: int) -> tuple:
        """Make the hook's coroutine for handle `hid` and run it until it ends or waits: the
        first run's answer (ok, dead or message), and when it waits the step function that
        resumes it; when it ended returning a string or number, (True, True, None, that
        string as bytes)."""
        return self._start(fn, hid)

    def release(self, hid: int) -> None:
        self.handles.pop(hid, None)

    def _api(self, op: bytes, hid: Any, *args: Any) -> Any:
        handle = self.handles.get(hid)
        if handle is None:  # a stream's object kept past its stream (a global)
            return ERR, b"object used outside of proper scope"
        fn = self.ops.get(op)
        if fn is None:
            return ERR, b"unknown operation " + op
        try:
            return fn(handle, *args)
        except LuaApiError as e:
            return ERR, str(e).encode()

    def to_lua(self, value: Any) -> Any:
        """A metadata value (JSON-like) as Lua sees it: strings as bytes, maps and lists as
        Lua tables."""
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, Mapping):
            return self.table_from({k.encode() if isinstance(k, str) else k: self.to_lua(v)
                                    for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return self.table_from([self.to_lua(v) for v in value])
        return value


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def error_text(e: Any) -> str:
    """A script error's message as Envoy logs it (lupa appends a traceback to its own)."""
    if isinstance(e, _lupa.LuaError):
        e = e.args[0] if e.args else str(e)
    return _text(e).split("\nstack traceback:", 1)[0]
