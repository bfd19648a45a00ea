"""The Lua filter's values without Lua: the API's error, Lua-to-bytes conversions, and the
header view its handle's operations work on (Envoy's header map semantics over ftproxy's heads).
Imported by lua.py at start-up (no lupa here: see lua_runtime.py).

Thread affinity: a view belongs to its stream's worker. Must not: import lupa.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LuaApiError", "to_bytes", "to_int", "HeaderView"]


class LuaApiError(Exception):
    """An error an API call raises in the script (Envoy's luaL_error): the message is all."""


def to_bytes(v: Any, fn: str, arg: int) -> bytes:
    """A Lua string (or number, as luaL_checkstring takes it) as bytes."""
    if type(v) is bytes:
        return v
    if type(v) is int:
        return b"%d" % v
    if type(v) is float:
        return (b"%d" % v) if v.is_integer() and abs(v) < 1e15 else (b"%.14g" % v)
    got = "nil" if v is None else ("boolean" if type(v) is bool else "table")
    raise LuaApiError(f"bad argument #{arg} to '{fn}' (string expected, got {got})")


def to_int(v: Any, fn: str, arg: int) -> int:
    if type(v) is bool or not isinstance(v, (int, float)):
        raise LuaApiError(f"bad argument #{arg} to '{fn}' (number expected)")
    return int(v)


class HeaderView:
    """Envoy's header map semantics over a RequestHead / ResponseHead (pseudo-headers from their
    fields; `host` is `:authority`) or a trailers list."""

    __slots__ = ("head", "trailers", "is_request")

    def __init__(self, head: Any, trailers: list | None) -> None:
        self.head = head
        self.trailers = trailers
        self.is_request = head is not None and hasattr(head, "method")

    def fields(self) -> list[tuple[bytes, bytes]]:
        """A flat view with the pseudo-headers first, as Envoy's map keeps them."""
        if self.trailers is not None:
            return list(self.trailers)
        head = self.head
        if self.is_request:
            out = [(b":authority", head.authority), (b":path", head.path), (b":method", head.method)]
            if head.scheme:
                out.append((b":scheme", head.scheme))
            out.extend(kv for kv in head.headers.fields if kv[0] != b"host")
            return out
        return [(b":status", b"%d" % head.status), *head.headers.fields]

    def values(self, name: bytes) -> list[bytes]:
        if self.trailers is not None:
            return [v for k, v in self.trailers if k == name]
        head = self.head
        if self.is_request:
            if name == b"host" or name == b":authority":
                return [head.authority] if head.authority else []
            if name[:1] == b":":
                v = {b":path": head.path, b":method": head.method, b":scheme": head.scheme}.get(name)
                return [v] if v else []
        elif name[:1] == b":":
            return [b"%d" % head.status] if name == b":status" else []
        return head.headers.get_all(name)

    def add(self, name: bytes, value: bytes) -> None:
        if self.trailers is not None:
            self.trailers.append((name, value))
        elif name[:1] == b":" or (name == b"host" and self.is_request):
            self._set_pseudo(name, value)
        else:
            self.head.headers.add(name, value)

    def replace(self, name: bytes, value: bytes) -> None:
        if self.trailers is not None:
            idx = [i for i, (k, _) in enumerate(self.trailers) if k == name]
            if idx:
                self.trailers[idx[0]] = (name, value)
                for i in reversed(idx[1:]):
                    del self.trailers[i]
            else:
                self.trailers.append((name, value))
        elif name[:1] == b":" or (name == b"host" and self.is_request):
            self._set_pseudo(name, value)
        else:
            self.head.headers.set(name, value)

    def remove(self, name: bytes) -> None:
        if self.trailers is not None:
            self.trailers[:] = [kv for kv in self.trailers if kv[0] != name]
        elif name[:1] != b":":
            self.head.headers.remove(name)

    def _set_pseudo(self, name: bytes, value: bytes) -> None:
        head = self.head
        if not self.is_request:
            if name == b":status":
                try:
                    head.status = int(value)
                except ValueError:
                    raise LuaApiError(f"invalid :status {value!r}") from None
            return
        if name == b":path":
            head.set_path(value)
        elif name in (b":authority", b"host"):
            head.set_authority(value)
        elif name == b":method":
            head.method = value
        elif name == b":scheme":
            head.scheme = value
