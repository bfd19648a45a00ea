"""Hot-restart protocol between epoch N (parent) and epoch N+1 (child): pure message logic.

Frames are a 4-byte big-endian length followed by a JSON object; listen-socket fds ride
along a frame as SCM_RIGHTS ancillary data (the channel module does that I/O).

Conversation (the child asks, the parent answers; Envoy's HotRestartingParent/Child split):
  child  {"type": "hello", "version": V, "epoch": N+1}
  parent {"type": "hello", "ok": true, "epoch": N, "start_time": T0}   (or ok false + reason)
  child  {"type": "listen_sockets", "address": "127.0.0.1:10000"}
  parent {"type": "listen_sockets", "address": ..., "count": k}       + k fds (0 when unknown)
  child  {"type": "stats"}
  parent {"type": "stats", "counters": {...}, "gauges": {...}}
  child  {"type": "shutdown_admin"}
  parent {"type": "shutdown_admin", "ok": true}
  child  {"type": "drain"}           parent stops accepting and drains (answers "drain" ok)
  parent {"type": "final_stats", ...} (unsolicited, just before it exits)

`ParentLogic.reply(request)` maps one request to (reply, fds, action) given a `ParentSide`
facade; the parent shell performs `action` ("shutdown_admin", "drain") on the main thread.
Must not: do I/O, import socket/threading/time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["HOT_RESTART_VERSION", "encode_frame", "FrameDecoder", "ProtocolError", "ParentLogic",
           "ParentSide", "Reply", "check_hello_reply", "socket_address"]

# Bump when the message set or its meaning changes; a restart between builds with different
# versions is refused with a clear message (Envoy's --hot-restart-version).
HOT_RESTART_VERSION = "ftproxy.hr.1"

_HEADER = struct.Struct(">I")
# A frame carries at most the stats of one process; 16 MiB bounds a hostile or broken peer.
MAX_FRAME = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def socket_address(base_id: int, epoch: int, path: str | None = None) -> str | bytes:
    """Where epoch `epoch` listens: a filesystem path (`path` + `.<epoch>`), or by default a
    Linux abstract-namespace name (no file to clean up; gone when the process is)."""
    if path:
        return f"{path}.{epoch}"
    return f"\0ftproxy_hot_restart_{base_id}_{epoch}".encode()


def encode_frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame too large: {len(body)} bytes")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes and yields complete messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = _HEADER.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"frame too large: {n} bytes")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            try:
                msg = json.loads(body)
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
                raise ProtocolError(f"bad frame: {type(e).__name__}: {str(e)[:200]}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise ProtocolError("bad frame: not an object with a type")
            out.append(msg)
        return out


class ParentSide(Protocol):
    """What the parent's logic needs from its server (all called on the main thread)."""

    epoch: int
    original_start_time: float  # the first epoch's start (uptime across epochs)

    def listen_fds(self, address: str) -> list[int]: ...
    def stats_counters(self) -> tuple[dict[str, int], dict[str, int]]: ...


@dataclass
class Reply:
    message: dict[str, Any]
    fds: list[int] = field(default_factory=list)
    action: str | None = None   # "shutdown_admin" | "drain" | None


class ParentLogic:
    def __init__(self, side: ParentSide, version: str = HOT_RESTART_VERSION) -> None:
        self.side = side
        self.version = version
        self.greeted = False

    def reply(self, req: dict[str, Any]) -> Reply:
        kind = req.get("type")
        if kind == "hello":
            if req.get("version") != self.version:
                return Reply({"type": "hello", "ok": False,
                              "reason": f"hot restart version mismatch: parent {self.version!r}, "
                                        f"child {str(req.get('version'))[:80]!r}; "
                                        "stop the old process first"})
            if req.get("epoch") != self.side.epoch + 1:
                return Reply({"type": "hello", "ok": False,
                              "reason": f"child epoch {req.get('epoch')} does not follow parent epoch "
                                        f"{self.side.epoch}"})
            self.greeted = True
            return Reply({"type": "hello", "ok": True, "epoch": self.side.epoch,
                          "start_time": self.side.original_start_time})
        if not self.greeted:
            return Reply({"type": "error", "reason": "hello expected first"})
        if kind == "listen_sockets":
            address = req.get("address")
            fds = self.side.listen_fds(address) if isinstance(address, str) else []
            return Reply({"type": "listen_sockets", "address": address, "count": len(fds)}, fds)
        if kind == "stats":
            counters, gauges = self.side.stats_counters()
            return Reply({"type": "stats", "counters": counters, "gauges": gauges})
        if kind == "shutdown_admin":
            return Reply({"type": "shutdown_admin", "ok": True}, action="shutdown_admin")
        if kind == "drain":
            return Reply({"type": "drain", "ok": True}, action="drain")
        return Reply({"type": "error", "reason": f"unknown request {kind!r}"})


def check_hello_reply(reply: dict[str, Any]) -> None:
    """Raise ProtocolError with the parent's reason when it refused the child."""
    if reply.get("type") != "hello":
        raise ProtocolError(f"unexpected reply to hello: {reply.get('type')!r}")
    if not reply.get("ok"):
        raise ProtocolError(str(reply.get("reason") or "parent refused the hot restart"))
