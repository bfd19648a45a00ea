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
local yield, create, resume = coroutine.yield, coroutine.create, coroutine.resume
local setmetatable, getmetatable, type, select, error, unpack, rawpairs =
      setmetatable, getmetatable, type, select, error, unpack, pairs
python = nil

-- An API answer: its values, or the error it carries raised at the script's line.
-- Header writes a hook's first run makes (add/replace/remove of its own headers, not
-- pseudo-headers, with string arguments, which cannot fail then) wait in the handle's `q` as
-- (op, lower-case name, value) triples: the next API call takes them first ("hbatch"), and
-- the end of the run hands the rest to Python with its answer. One crossing into Python fewer
-- per write (each costs more than the write). h.q: nil once writes are no longer queued (after
-- the first run, or a wait), false while none waits, else the queue.
local function flush(h, q)
  h.q = false
  return papi("hbatch", h.id, unpack(q, 1, q.n))
end
local function api(op, h, ...)
  local q = h.q
  if q then flush(h, q) end
  return papi(op, h.id, ...)
end
local byte, lower = string.byte, string.lower
local function queue(o, code, k, v)
  local h = o.h
  local q = h.q
  if q == nil or o.k ~= 0 or type(k) ~= "string" or type(v) ~= "string" or byte(k, 1) == 58 then
    return false  -- (a pseudo-header's value may be refused: that goes to Python now)
  end
  k = lower(k)
  if q then
    local n = q.n
    q[n + 1] = code; q[n + 2] = k; q[n + 3] = v
    q.n = n + 3
  else
    h.q = {code, k, v, n = 3}
  end
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
function HM:get(k) live(self); return pass(api("hget", self.h, self.k, k)) end
function HM:getAtIndex(k, i) live(self); return pass(api("hgetat", self.h, self.k, k, i)) end
function HM:getNumValues(k) live(self); return pass(api("hnum", self.h, self.k, k)) end
function HM:add(k, v)
  modify(self)
  if queue(self, 1, k, v) then return end
  return pass(api("hadd", self.h, self.k, k, v))
end
function HM:replace(k, v)
  modify(self)
  if queue(self, 2, k, v) then return end
  return pass(api("hreplace", self.h, self.k, k, v))
end
function HM:remove(k)
  modify(self)
  if queue(self, 3, k, "") then return end
  return pass(api("hremove", self.h, self.k, k))
end
function HM:setHttp1ReasonPhrase(r) modify(self); return pass(api("hreason", self.h, self.k, r)) end
HM.__pairs = function(self)
  live(self)
  local it = flatpairs(chk(api("hpairs", self.h, self.k)))
  self.it = true
  return function()
    local k, v = it()
    if k == nil then self.it = nil end
    return k, v
  end, self, nil
end

local B = {}
B.__index = B
function B:length() live(self); return pass(api("blen", self.h, self.k)) end
function B:getBytes(i, n) live(self); return pass(api("bget", self.h, self.k, i, n)) end
function B:setBytes(s) live(self); return pass(api("bset", self.h, self.k, s)) end

local MD = {}
MD.__index = MD
function MD:get(k) live(self); return pass(api("mdget", self.h, k)) end
MD.__pairs = function(self) live(self); return flatpairs(chk(api("mdpairs", self.h))), self, nil end

local DM = {}
DM.__index = DM
function DM:get(ns) live(self); return pass(api("dmget", self.h, ns)) end
function DM:set(ns, k, v)
  live(self)
  if type(v) == "table" then
    return pass(api("dmset", self.h, ns, k, true, unpack(flatten(v))))
  end
  return pass(api("dmset", self.h, ns, k, false, v))
end
DM.__pairs = function(self) live(self); return flatpairs(chk(api("dmpairs", self.h))), self, nil end

local S = {}
S.__index = S
function S:peerCertificatePresented() live(self); return pass(api("ssl", self.h, "peer")) end
function S:tlsVersion() live(self); return pass(api("ssl", self.h, "version")) end
function S:ciphersuiteString() live(self); return pass(api("ssl", self.h, "cipher")) end
function S:sni() live(self); return pass(api("ssl", self.h, "sni")) end
local function ssl(o)
  if chk(api("ssl", o.h, "present")) then return setmetatable({h = o.h, s = o.s}, S) end
  return nil
end

local SI = {}
SI.__index = SI
function SI:protocol() live(self); return pass(api("si", self.h, "protocol")) end
function SI:downstreamLocalAddress() live(self); return pass(api("si", self.h, "local")) end
function SI:downstreamDirectRemoteAddress() live(self); return pass(api("si", self.h, "direct_remote")) end
function SI:downstreamRemoteAddress() live(self); return pass(api("si", self.h, "remote")) end
function SI:requestedServerName() live(self); return pass(api("si", self.h, "sni")) end
function SI:routeName() live(self); return pass(api("si", self.h, "route")) end
function SI:dynamicMetadata() live(self); return setmetatable({h = self.h, s = self.s}, DM) end
function SI:downstreamSslConnection() live(self); return ssl(self) end

local C = {}
C.__index = C
function C:ssl() live(self); return ssl(self) end

local H = {}
H.__index = H
-- Wait for what the filter brings; the objects given out so far die (Envoy's markDead).
local function wait(h)
  local q = h.q
  if q then flush(h, q) end
  h.q = nil  -- (writes are queued in the first run only, before any wait)
  h.scope = h.scope + 1
  h._hm = false
  return yield()
end
local function new(h, mt, k) return setmetatable({h = h, s = h.scope, k = k}, mt) end
function H:headers()
  local o = self._hm
  if not o then o = new(self, HM, 0); self._hm = o end
  return o
end
function H:body(always_wrap)
  if chk(api("body_wait", self, always_wrap)) then wait(self) end
  if chk(api("body_has", self, always_wrap)) then return new(self, B, 0) end
end
function H:bodyChunks()
  chk(api("chunks_start", self))
  local h = self
  return function()
    if chk(api("chunk_wait", h)) then
      wait(h)
      if chk(api("chunk_has", h)) then return new(h, B, 1) end
    end
    return nil
  end
end
function H:trailers()
  if chk(api("trailers_wait", self)) then wait(self) end
  if chk(api("trailers_has", self)) then return new(self, HM, 1) end
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
  if chk(api("http_call", self, cluster, body, timeout, asynchronous, send_xff, unpack(flatten(headers)))) then
    wait(self)
    return answer(chk(api("http_answer", self)))
  end
end
function H:respond(headers, body)
  if type(headers) ~= "table" then error("bad argument #2 to 'respond' (table expected, got " .. type(headers) .. ")", 2) end
  chk(api("respond", self, body, unpack(flatten(headers))))
  return wait(self)
end
function H:metadata() return new(self, MD) end
function H:streamInfo() return new(self, SI) end
function H:connection() return new(self, C) end
function H:logTrace(m) chk(api("log", self, 0, m)) end
function H:logDebug(m) chk(api("log", self, 1, m)) end
function H:logInfo(m) chk(api("log", self, 2, m)) end
function H:logWarn(m) chk(api("log", self, 3, m)) end
function H:logErr(m) chk(api("log", self, 4, m)) end
function H:logCritical(m) chk(api("log", self, 5, m)) end
function H:clearRouteCache() chk(api("clear_route_cache", self)) end
function H:base64Escape(s) return pass(api("base64", self.id, s)) end
function H:timestamp() return pass(api("timestamp", self)) end

-- start(fn, id): the hook as a coroutine, run until it first ends or waits (one call from
-- Python instead of two); then the step function resumes it. Each run answers
-- true, dead | false, message. A hook that ended at once returning a string (or a number,
-- as its string: Lua's coercion) answers true, true, nil, that string: the cluster
-- specifier's envoy_on_route. (Only strings cross: no Lua object goes to Python.)
local tostring = tostring
-- The header writes still queued at the end of the first run follow the answer's first four
-- values (ok, res, step or nil, value or nil), for Python to make before anything else.
--
-- A hook runs in a runner coroutine: one that saw its hook return waits, parked, for the
-- next hook instead of a new coroutine per hook. A hook that waits keeps its runner until it
-- ends; one that fails kills its runner (no pcall in it: one call less per hook), and the
-- next hook gets a new one.
local DONE = {}
local idle = nil
local function runner(fn, h)
  while true do
    fn, h = yield(DONE, fn(h))
  end
end
-- One run of a hook's coroutine: true, true, the value it returned | true, false (it
-- waits) | false, message.
local function run(co, ...)
  local rok, tag, v = resume(co, ...)
  if not rok then return false, tag end
  if tag ~= DONE then return true, false end
  if idle == nil then idle = co end
  return true, true, v
end
return function(fn, id)
  -- (every field the handle gets, made at once: no resize of the table later)
  local h = setmetatable({id = id, scope = 0, q = false, _hm = false}, H)
  if not BATCH then h.q = nil end  -- (the stream filter's ops take "hbatch")
  local co = idle
  idle = nil
  if co == nil then co = create(runner) end
  local ok, res, value = run(co, fn, h)
  local q = h.q
  h.q = nil
  if ok and res then
    local kind = type(value)
    if kind == "string" or kind == "number" then value = tostring(value) else value = nil end
    if q then return true, true, nil, value, unpack(q, 1, q.n) end
    if value ~= nil then return true, true, nil, value end
    return true, true  -- (the usual: it returned, nothing more to hand to Python)
  end
  local st = nil
  if ok then  -- it waits: the function that resumes it
    st = function(...)
      local a, b = run(co, ...)
      return a, b
    end
  end
  if q then return ok, res, st, nil, unpack(q, 1, q.n) end
  if st ~= nil then return ok, res, st end
  return ok, res  -- (failed: no step function to hand to Python, which costs a wrapper)
end
"""


class LuaState:
    """One script compiled and loaded in its own Lua state (per worker, per script): its
    `envoy_on_request` / `envoy_on_response`, and `start(fn, handle)`, which makes a hook's
    coroutine for a stream handle. `ops` maps the prelude's operation names to the handle's
    methods (lua.py). Made on the worker that uses it; at config load one is made to check
    the script."""

    __slots__ = ("runtime", "start", "on_request", "on_response", "on_route", "table_from",
                 "handles", "next_id", "ops")

    def __init__(self, code: bytes, ops: Mapping[bytes, Callable[..., Any]] | None = None) -> None:
        self.handles: dict[int, Any] = {}
        self.next_id = 0
        self.ops = ops or {}
        rt = self.runtime = _lupa.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                             register_eval=False, register_builtins=False)
        g = rt.globals()
        # start(fn, hid): make the hook's coroutine for handle `hid` and run it until it ends or
        # waits: the first run's answer (ok, dead or message), and when it waits the step
        # function that resumes it; when it ended returning a string or number, (True, True,
        # None, that string as bytes); then the header writes it queued (the prelude's end).
        # (The Lua function itself: no Python frame around the call.)
        self.start = rt.execute(_PRELUDE.encode(), self._api, ERR, b"hbatch" in self.ops)
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
