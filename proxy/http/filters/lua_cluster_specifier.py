"""`envoy.router.cluster_specifier_plugin.lua`: a route's cluster chosen by a Lua script, as
Envoy's Lua cluster specifier plugin (a router extension; it lives beside the Lua filter whose
runtime, lua_runtime.py, it shares).

Config `envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig`: `source_code` (a
DataSource, loaded and checked at config load: it must define `envoy_on_route`) and
`default_cluster`. A route names it in `inline_cluster_specifier_plugin`, or by name in
`cluster_specifier_plugin` from the route configuration's `cluster_specifier_plugins`.

Per request: `envoy_on_route(route_handle)` runs on the worker's own Lua state for this script
(made on the worker's first request: lupa states are not shared between threads) and returns
the cluster's name; `route_handle:headers():get(name)` reads the request's headers (every value
of a name joined by ","; nil when absent). A script error, a yield, or a return value that is
not a string (or number) logs `script log: ..., use default cluster` and the request goes to
`default_cluster`. A name that is no cluster gets the route's cluster_not_found answer (503),
as in Envoy. Deliberate difference: `route_handle:getCluster()` is not provided (a script that
calls it fails, so its route uses default_cluster).

Like the Lua filter, this imports lupa only when a config uses it (turning the GIL back on on a
free-threaded build, which the start-up log and /server_info say).

Thread affinity: the config object is immutable and shared; its `threading.local` holds one Lua
state per worker thread, used only by that thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from .lua import _read_source, _runtime
from .lua_values import HeaderView, to_bytes

__all__ = ["LuaClusterSpecifier", "parse_lua_cluster_specifier"]

NAME = "envoy.router.cluster_specifier_plugin.lua"
PROTO = "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"

log = logging.getLogger("ftproxy.lua")

LUA_CLUSTER = Message(PROTO, title="cluster specifier plugin lua", fields=(
    used("source_code", attr="code", why="DataSource, loaded at config load and on each worker"),
    used("default_cluster"),
))


class _RouteHandle:
    """What `route_handle` reaches in Python: the request's head (headers():get only)."""

    __slots__ = ("head",)

    def __init__(self, head: Any) -> None:
        self.head = head


def _op_hget(handle: _RouteHandle, kind: Any, key: Any) -> Any:
    values = HeaderView(handle.head, None).values(to_bytes(key, "get", 2).lower())
    return b",".join(values) if values else ()


_OPS = {b"hget": _op_hget}


class LuaClusterSpecifier:
    """The parsed plugin: immutable but for its per-thread Lua states."""

    __slots__ = ("code", "default_cluster", "_rt", "_local")

    def __init__(self, code: bytes, default_cluster: str, runtime: Any) -> None:
        self.code = code
        self.default_cluster = default_cluster
        self._rt = runtime                # the lua_runtime module (imported at config load)
        self._local = threading.local()   # per worker thread: .state, its LuaState

    def _state(self):
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self._rt.LuaState(self.code, _OPS)
        return state

    def cluster(self, head: Any) -> str:
        """The cluster for this request: the script's answer, else default_cluster."""
        state = self._state()
        hid = state.register(_RouteHandle(head))
        try:
            answer = state.start(state.on_route, hid)
        except Exception as e:  # (lupa's own failure: treated as the script's)
            answer = (False, e)
        finally:
            state.release(hid)
        if not answer[0]:
            log.error("script log: %s, use default cluster", self._rt.error_text(answer[1]))
            return self.default_cluster
        if len(answer) == 4 and isinstance(answer[3], bytes):
            return answer[3].decode("latin-1")
        if len(answer) == 3:
            log.error("script log: envoy_on_route yielded, use default cluster")
        else:
            log.error("script log: return value is not string, use default cluster")
        return self.default_cluster


def parse_lua_cluster_specifier(raw: Mapping[str, Any], path: str) -> LuaClusterSpecifier:
    f = LUA_CLUSTER.read(raw, path)
    code = _read_source(f.raw_obj("source_code", required=True), f.at("source_code"))
    rt = _runtime(f.at("source_code"))
    try:
        state = rt.LuaState(code)
    except rt.LuaScriptError as e:
        raise ConfigError(f.at("source_code"), f"script load error: {e}") from None
    if state.on_route is None:
        raise ConfigError(f.at("source_code"), "envoy_on_route() function not found. "
                          "Lua will not hook cluster specifier.")
    return LuaClusterSpecifier(code, f.str("default_cluster", ""), rt)


register(Extension(
    category="cluster_specifier_plugin",
    name=NAME,
    proto=PROTO,
    parse=parse_lua_cluster_specifier,
))
