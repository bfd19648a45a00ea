"""The Lua side of `envoy.filters.http.lua`: a Lua state per worker and script (lupa, LuaJIT as
Envoy's), and the objects a script's stream handle hands out (headers, buffers, metadata,
stream info, connection), with Envoy's names and errors.

Importing this module imports lupa's LuaJIT runtime, and on a free-threaded CPython that turns
the GIL back on for the whole process (lupa's extension modules do not declare free-threading
support): it is imported only when a config uses the Lua filter (lua.py imports it lazily),
logs a warning saying so, and notes it for /server_info (proxy/server/gil_notes.py).
tests/unit/test_gil_off.py leaves this module out of its walk for that reason.

How a hook runs: `envoy_on_request(handle)` runs as a Lua coroutine. The stream handle is a
Lua table (the prelude below) whose methods call the Python `StreamHandle` (lua.py); a method
that must wait (body(), bodyChunks(), trailers(), httpCall(), respond()) asks Python whether
to wait and, if so, yields the coroutine from Lua (a Python call cannot yield it). The filter
then stops iteration and resumes the coroutine with the value when it arrives.

Strings cross as bytes both ways (the runtime has no encoding). `python` is removed from the
script's globals: a script sees Envoy's API, not the interpreter.

Thread affinity: a LuaState belongs to the worker that made it (lupa also locks it per call).
Must not: do I/O (but `require` at load, as Envoy's scripts may).
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
import sysconfig
from collections.abc import Mapping
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

__all__ = ["LuaState", "LuaScriptError", "LuaApiError", "HeaderMapWrapper", "BufferWrapper",
           "MetadataWrapper", "DynamicMetadataWrapper", "StreamInfoWrapper", "ConnectionWrapper",
           "to_bytes", "lua_version"]

log = logging.getLogger("ftproxy.lua")

if (sysconfig.get_config_var("Py_GIL_DISABLED") and not _GIL_BEFORE
        and getattr(sys, "_is_gil_enabled", lambda: False)()):
    log.warning("envoy.filters.http.lua: loading lupa (%s) re-enabled the GIL on this "
                "free-threaded build: workers now take turns for all Python code",
                _lupa.__name__)
    gil_notes.note("lupa (envoy.filters.http.lua)")


_LAST = threading.local()


class LuaApiError(Exception):
    """An error the API raises into the script (Envoy's luaL_error): the message is all.
    (lupa does not carry a Python exception out of a coroutine, only an empty LuaError: the
    worker's last one is kept here for the log.)"""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        _LAST.message = message


def last_api_error() -> str:
    message = getattr(_LAST, "message", "")
    _LAST.message = ""
    return message


class Scope:
    """Where the objects a handle gave out are valid: until the script next yields (Envoy
    marks them dead then: "object used outside of proper scope")."""

    __slots__ = ("alive",)

    def __init__(self) -> None:
        self.alive = True


def _dead() -> None:
    raise LuaApiError("object used outside of proper scope")


class LuaScriptError(Exception):
    """The script failed at load (syntax, or an error in its top-level code)."""


def lua_version() -> str:
    return f"{_lupa.__name__.rsplit('.', 1)[-1]}"


def to_bytes(v: Any, fn: str, arg: int) -> bytes:
    """A Lua string (or number, as luaL_checkstring takes it) as bytes."""
    if type(v) is bytes:
        return v
    if type(v) is int:
        return b"%d" % v
    if type(v) is float:
        return (b"%d" % v) if v.is_integer() and abs(v) < 1e15 else (b"%.14g" % v)
    got = "nil" if v is None else ("boolean" if type(v) is bool else "table" if _is_table(v) else "userdata")
    raise LuaApiError(f"bad argument #{arg} to '{fn}' (string expected, got {got})")


def _is_table(v: Any) -> bool:
    return _lupa.lua_type(v) == "table"


# -- the prelude: the stream handle and pairs() over the API's objects -----------------------------

_PRELUDE = r"""
local py_pairs = ...
local yield = coroutine.yield
local rawpairs = pairs
local type = type
local setmetatable = setmetatable
pairs = function(t)
  if type(t) == "userdata" then return py_pairs(t) end
  return rawpairs(t)
end
python = nil

local H = {}
H.__index = H
function H:headers() return self._p:headers() end
function H:body(always_wrap)
  local p = self._p
  if p:body_wait(always_wrap) then return yield() end
  return p:body(always_wrap)
end
function H:bodyChunks()
  local p = self._p
  p:chunks_start()
  return function()
    if p:chunk_wait() then return yield() end
    return nil
  end
end
function H:trailers()
  local p = self._p
  if p:trailers_wait() then return yield() end
  return p:trailers()
end
function H:httpCall(cluster, headers, body, options, asynchronous)
  local p = self._p
  if p:http_call(cluster, headers, body, options, asynchronous) then
    local r = yield()
    return r[1], r[2]
  end
end
function H:respond(headers, body)
  self._p:respond(headers, body)
  return yield()
end
function H:metadata() return self._p:metadata() end
function H:streamInfo() return self._p:stream_info() end
function H:connection() return self._p:connection() end
function H:logTrace(m) self._p:log(0, m) end
function H:logDebug(m) self._p:log(1, m) end
function H:logInfo(m) self._p:log(2, m) end
function H:logWarn(m) self._p:log(3, m) end
function H:logErr(m) self._p:log(4, m) end
function H:logCritical(m) self._p:log(5, m) end
function H:clearRouteCache() self._p:clear_route_cache() end
function H:base64Escape(s) return self._p:base64_escape(s) end
function H:timestamp() return self._p:timestamp() end

return function(fn, p)
  return fn(setmetatable({_p = p}, H))
end
"""


def _py_pairs(obj: Any):
    it = getattr(obj, "lua_pairs", None)
    if it is None:
        raise LuaApiError("bad argument #1 to 'pairs' (table expected, got userdata)")
    return it(), None, None


class LuaState:
    """One script compiled and loaded in its own Lua state (per worker, per script): its
    `envoy_on_request` / `envoy_on_response`, and `run`, which calls one in the stream
    handle. Made on the worker that uses it; at config load one is made to check the script."""

    __slots__ = ("runtime", "run", "on_request", "on_response", "table_from")

    def __init__(self, code: bytes) -> None:
        rt = self.runtime = _lupa.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                             register_eval=False, register_builtins=False)
        g = rt.globals()
        self.run = rt.execute(_PRELUDE.encode(), _py_pairs)
        # Compiled by Lua's own loadstring: chunk names (and error messages) as Envoy's.
        chunk = g[b"loadstring"](code)
        if type(chunk) is tuple:  # nil, message
            raise LuaScriptError(_text(chunk[1]))
        try:
            chunk()
        except _lupa.LuaError as e:
            raise LuaScriptError(error_text(e)) from None
        except Exception as e:  # an API error raised while loading
            raise LuaScriptError(str(e)) from None
        self.on_request = g[b"envoy_on_request"]
        self.on_response = g[b"envoy_on_response"]
        if _lupa.lua_type(self.on_request) != "function":
            self.on_request = None
        if _lupa.lua_type(self.on_response) != "function":
            self.on_response = None
        self.table_from = rt.table_from

    def coroutine(self, fn: Any, handle: Any) -> Any:
        return self.run.coroutine(fn, handle)


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def error_text(e: BaseException) -> str:
    """A script error's message as Envoy logs it (lupa appends a traceback)."""
    if isinstance(e, _lupa.LuaError):
        text = _text(e.args[0]) if e.args else str(e)
        text = text.split("\nstack traceback:", 1)[0]
        return text or last_api_error()
    return str(e)


LuaError = _lupa.LuaError


def lua_type(v: Any) -> str | None:
    return _lupa.lua_type(v)


# -- the objects a handle hands out ------------------------------------------------------------------

class HeaderMapWrapper:
    """Envoy's HeaderMapWrapper over a RequestHead / ResponseHead (pseudo-headers from their
    fields) or a trailers list. `modifiable()` says whether the map may still change."""

    __slots__ = ("scope", "head", "trailers", "modifiable", "on_modify", "iterating")

    def __init__(self, scope: Scope, head: Any, trailers: list | None, modifiable: Any,
                 on_modify: Any = None) -> None:
        self.scope = scope
        self.head = head
        self.trailers = trailers
        self.modifiable = modifiable
        self.on_modify = on_modify
        self.iterating = False

    # -- a flat view: (name, value) with the pseudo-headers first, as Envoy's map keeps them
    def _fields(self) -> list[tuple[bytes, bytes]]:
        if self.trailers is not None:
            return list(self.trailers)
        head = self.head
        if hasattr(head, "method"):
            out = [(b":authority", head.authority), (b":path", head.path), (b":method", head.method)]
            if head.scheme:
                out.append((b":scheme", head.scheme))
            out.extend(kv for kv in head.headers.fields if kv[0] != b"host")
            return out
        return [(b":status", b"%d" % head.status), *head.headers.fields]

    def _values(self, name: bytes) -> list[bytes]:
        if not self.scope.alive:
            _dead()
        head = self.head
        if name == b"host" and self.trailers is None:
            name = b":authority"  # Envoy's header map knows host as :authority
        if self.trailers is None and name[:1] == b":":
            if hasattr(head, "method"):
                v = {b":authority": head.authority, b":path": head.path, b":method": head.method,
                     b":scheme": head.scheme}.get(name)
                return [v] if v else []
            return [b"%d" % head.status] if name == b":status" else []
        if self.trailers is not None:
            return [v for k, v in self.trailers if k == name]
        return head.headers.get_all(name)

    def _check(self) -> None:
        if not self.scope.alive:
            _dead()
        if self.iterating:
            raise LuaApiError("header map cannot be modified while iterating")
        if not self.modifiable():
            raise LuaApiError("header map can no longer be modified")
        if self.on_modify is not None:
            self.on_modify()

    def get(self, key: Any) -> bytes | tuple[()]:
        values = self._values(to_bytes(key, "get", 2).lower())
        return b",".join(values) if values else ()  # (no value at all, as Envoy's)

    def getAtIndex(self, key: Any, index: Any) -> bytes | tuple[()]:  # noqa: N802 - Envoy's name
        values = self._values(to_bytes(key, "getAtIndex", 2).lower())
        if not isinstance(index, (int, float)) or index < 0:
            raise LuaApiError("bad argument #3 to 'getAtIndex' (index must be >= 0)")
        i = int(index)
        return values[i] if i < len(values) else ()

    def getNumValues(self, key: Any) -> int:  # noqa: N802
        return len(self._values(to_bytes(key, "getNumValues", 2).lower()))

    def add(self, key: Any, value: Any) -> None:
        name = to_bytes(key, "add", 2).lower()
        val = to_bytes(value, "add", 3)
        self._check()
        if name == b"host" and hasattr(self.head, "method"):
            name = b":authority"
        if self.trailers is not None:
            self.trailers.append((name, val))
        elif name[:1] == b":":
            self._set_pseudo(name, val)
        else:
            self.head.headers.add(name, val)

    def replace(self, key: Any, value: Any) -> None:
        name = to_bytes(key, "replace", 2).lower()
        val = to_bytes(value, "replace", 3)
        self._check()
        if name == b"host" and hasattr(self.head, "method"):
            name = b":authority"
        if self.trailers is not None:
            idx = [i for i, (k, _) in enumerate(self.trailers) if k == name]
            if idx:
                self.trailers[idx[0]] = (name, val)
                for i in reversed(idx[1:]):
                    del self.trailers[i]
            else:
                self.trailers.append((name, val))
        elif name[:1] == b":":
            self._set_pseudo(name, val)
        else:
            self.head.headers.set(name, val)

    def remove(self, key: Any) -> None:
        name = to_bytes(key, "remove", 2).lower()
        self._check()
        if self.trailers is not None:
            self.trailers[:] = [kv for kv in self.trailers if kv[0] != name]
        elif name[:1] != b":":
            self.head.headers.remove(name)

    def setHttp1ReasonPhrase(self, reason: Any) -> None:  # noqa: N802
        val = to_bytes(reason, "setHttp1ReasonPhrase", 2)
        self._check()
        if hasattr(self.head, "reason"):
            self.head.reason = val

    def _set_pseudo(self, name: bytes, val: bytes) -> None:
        head = self.head
        if name == b":status" and hasattr(head, "status"):
            try:
                head.status = int(val)
            except ValueError:
                raise LuaApiError(f"invalid :status {val!r}") from None
        elif name == b":path" and hasattr(head, "method"):
            head.set_path(val)
        elif name == b":authority" and hasattr(head, "method"):
            head.set_authority(val)
        elif name == b":method" and hasattr(head, "method"):
            head.method = val
        elif name == b":scheme" and hasattr(head, "method"):
            head.scheme = val

    def lua_pairs(self):
        if not self.scope.alive:
            _dead()
        items = self._fields()
        self.iterating = True
        pos = [0]

        def step(_state=None, _key=None):
            i = pos[0]
            if i >= len(items):
                self.iterating = False
                return None
            pos[0] = i + 1
            return items[i]
        return step


class BufferWrapper:
    """Envoy's BufferWrapper: a body (or one chunk) as a script sees it. `data` is a bytearray
    changed in place; `headers` (a head) gets the new content-length on setBytes."""

    __slots__ = ("scope", "data", "headers")

    def __init__(self, scope: Scope, data: bytearray, headers: Any = None) -> None:
        self.scope = scope
        self.data = data
        self.headers = headers

    def length(self) -> int:
        if not self.scope.alive:
            _dead()
        return len(self.data)

    def getBytes(self, index: Any, length: Any) -> bytes:  # noqa: N802
        if not self.scope.alive:
            _dead()
        if not isinstance(index, (int, float)) or not isinstance(length, (int, float)):
            raise LuaApiError("bad argument to 'getBytes' (number expected)")
        i, n = int(index), int(length)
        if i < 0 or n < 0 or i + n > len(self.data):
            raise LuaApiError("index/length must be >= 0 and (index + length) must be <= buffer size")
        return bytes(self.data[i:i + n])

    def setBytes(self, value: Any) -> int:  # noqa: N802
        if not self.scope.alive:
            _dead()
        val = to_bytes(value, "setBytes", 2)
        self.data[:] = val
        head = self.headers
        if head is not None:  # Envoy: the new length, and no chunked framing
            head.headers.set(b"content-length", b"%d" % len(val))
            head.headers.remove(b"transfer-encoding")
        return len(val)


def to_lua(state: LuaState, value: Any) -> Any:
    """A metadata value (JSON-like) as Lua sees it: strings as bytes, maps and lists as tables."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Mapping):
        return state.table_from({k.encode() if isinstance(k, str) else k: to_lua(state, v)
                                 for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return state.table_from([to_lua(state, v) for v in value])
    return value


def from_lua(value: Any, depth: int = 0) -> Any:
    """A Lua value as metadata (Envoy's Struct): tables become maps (or lists when keyed 1..n)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _lupa.lua_type(value) == "table" and depth < 32:
        items = list(value.items())
        keys = [k for k, _ in items]
        if keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
            return [from_lua(v, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
        return {(_text(k) if isinstance(k, bytes) else str(k)): from_lua(v, depth + 1) for k, v in items}
    raise LuaApiError("unexpected type in metadata value")


class MetadataWrapper:
    """Envoy's MetadataMapWrapper over one filter's route metadata (read-only)."""

    __slots__ = ("scope", "state", "values")

    def __init__(self, scope: Scope, state: LuaState, values: Any) -> None:
        self.scope = scope
        self.state = state
        self.values = values or {}

    def get(self, key: Any) -> Any:
        if not self.scope.alive:
            _dead()
        name = to_bytes(key, "get", 2).decode("utf-8", "replace")
        if name not in self.values:
            return ()
        return to_lua(self.state, self.values[name])

    def lua_pairs(self):
        items = [(k.encode(), to_lua(self.state, v)) for k, v in self.values.items()]
        pos = [0]

        def step(_s=None, _k=None):
            i = pos[0]
            if i >= len(items):
                return None
            pos[0] = i + 1
            return items[i]
        return step


class DynamicMetadataWrapper:
    """Envoy's DynamicMetadataMapWrapper: the stream's dynamic metadata, namespace -> map."""

    __slots__ = ("state", "stream")

    def __init__(self, state: LuaState, stream: Any) -> None:
        self.state = state
        self.stream = stream

    def _all(self) -> dict:
        md = getattr(self.stream, "dynamic_metadata", None)
        if md is None:
            md = {}
            try:
                self.stream.dynamic_metadata = md
            except AttributeError:
                pass
        return md

    def get(self, ns: Any) -> Any:
        name = to_bytes(ns, "get", 2).decode("utf-8", "replace")
        md = self._all()
        return to_lua(self.state, md[name]) if name in md else ()

    def set(self, ns: Any, key: Any, value: Any) -> None:
        name = to_bytes(ns, "set", 2).decode("utf-8", "replace")
        k = to_bytes(key, "set", 3).decode("utf-8", "replace")
        self._all().setdefault(name, {})[k] = from_lua(value)

    def lua_pairs(self):
        items = [(k.encode(), to_lua(self.state, v)) for k, v in self._all().items()]
        pos = [0]

        def step(_s=None, _k=None):
            i = pos[0]
            if i >= len(items):
                return None
            pos[0] = i + 1
            return items[i]
        return step


class SslConnectionWrapper:
    """The downstream TLS connection as connection():ssl() gives it (non-nil means TLS)."""

    __slots__ = ("tls",)

    def __init__(self, tls: Any) -> None:
        self.tls = tls

    def tlsVersion(self) -> bytes:  # noqa: N802
        return (getattr(self.tls, "tls_version", "") or "").encode()

    def ciphersuiteString(self) -> bytes:  # noqa: N802
        return (getattr(self.tls, "cipher", "") or "").encode()

    def peerCertificatePresented(self) -> bool:  # noqa: N802
        return bool(getattr(self.tls, "peer_certificate", None))


class ConnectionWrapper:
    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def ssl(self) -> SslConnectionWrapper | None:
        tls = self.stream.downstream_ssl
        return None if tls is None else SslConnectionWrapper(tls)


class StreamInfoWrapper:
    """Envoy's StreamInfoWrapper: the stream's protocol, addresses, SNI, dynamic metadata."""

    __slots__ = ("state", "stream", "dynamic")

    def __init__(self, state: LuaState, stream: Any) -> None:
        self.state = state
        self.stream = stream
        self.dynamic = None

    def protocol(self) -> bytes:
        return (self.stream.protocol or "").encode()

    def downstreamLocalAddress(self) -> bytes:  # noqa: N802
        return (self.stream.downstream_local_address or "").encode()

    def downstreamDirectRemoteAddress(self) -> bytes:  # noqa: N802
        return (self.stream.downstream_direct_remote_address or "").encode()

    def downstreamRemoteAddress(self) -> bytes:  # noqa: N802
        return (self.stream.downstream_remote_address or "").encode()

    def requestedServerName(self) -> bytes:  # noqa: N802
        return (self.stream.requested_server_name or "").encode()

    def routeName(self) -> bytes:  # noqa: N802
        return (self.stream.route_name or "").encode()

    def downstreamSslConnection(self) -> SslConnectionWrapper | None:  # noqa: N802
        tls = self.stream.downstream_ssl
        return None if tls is None else SslConnectionWrapper(tls)

    def dynamicMetadata(self) -> DynamicMetadataWrapper:  # noqa: N802
        if self.dynamic is None:
            self.dynamic = DynamicMetadataWrapper(self.state, self.stream)
        return self.dynamic
