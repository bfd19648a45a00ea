"""Hot-restart child: epoch N+1 takes listen sockets and stats from epoch N.

Runs on the main thread during start-up (blocking, with timeouts) before workers start;
afterwards its channel is polled from the main Dispatcher for the parent's stats until the
parent exits (counters then continue from the parent's last values).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ..threads.dispatcher import READ
from .channel import ChildChannel
from .messages import HOT_RESTART_VERSION, FrameDecoder, ProtocolError, check_hello_reply

__all__ = ["HotRestartChild"]

log = logging.getLogger("ftproxy.hotrestart")


class HotRestartChild:
    def __init__(self, parent_address: str | bytes, epoch: int, timeout: float = 10.0) -> None:
        self.channel = ChildChannel(parent_address, timeout)
        reply, _ = self.channel.request({"type": "hello", "version": HOT_RESTART_VERSION, "epoch": epoch})
        check_hello_reply(reply)
        self.parent_epoch = reply.get("epoch")
        self.original_start_time = _number(reply.get("start_time") or 0.0, "start_time")
        self.parent_counters: dict[str, int] = {}
        self.parent_gauges: dict[str, int] = {}
        self._dispatcher = None
        self._decoder = FrameDecoder()
        self._on_stats = None
        self.connected = True

    def listen_sockets(self, address: str) -> list[socket.socket]:
        reply, fds = self.channel.request({"type": "listen_sockets", "address": address})
        if reply.get("type") != "listen_sockets":
            for fd in fds:
                socket.close(fd)
            raise ProtocolError(f"unexpected reply {reply.get('type')!r}")
        socks = [socket.socket(fileno=fd) for fd in fds]
        for s in socks:
            s.setblocking(False)
        return socks

    def fetch_stats(self) -> None:
        reply, _ = self.channel.request({"type": "stats"})
        self._take_stats(reply)

    def _take_stats(self, msg: dict) -> None:
        self.parent_counters = _stat_map(msg.get("counters"), "counters")
        self.parent_gauges = _stat_map(msg.get("gauges"), "gauges")
        if self._on_stats is not None:
            self._on_stats(self.parent_counters, self.parent_gauges)

    def shutdown_parent_admin(self) -> None:
        self.channel.request({"type": "shutdown_admin"})

    def drain_parent(self, dispatcher, on_stats) -> None:
        """Tell the parent to drain, then follow its stats on `dispatcher` until it exits."""
        self._dispatcher = dispatcher
        self._on_stats = on_stats
        self.channel.request({"type": "drain"})
        self.channel.sock.setblocking(False)
        dispatcher.register(self.channel.sock, READ, self._on_readable)

    def poll_stats(self) -> None:
        """Ask for fresh stats (non-blocking; the answer arrives in _on_readable)."""
        if not self.connected:
            return
        from .channel import send
        try:
            self.channel.sock.setblocking(True)
            send(self.channel.sock, {"type": "stats"})
        except OSError:
            self._gone()
        finally:
            if self.connected:
                self.channel.sock.setblocking(False)

    def _on_readable(self, _mask: int) -> None:
        try:
            data = self.channel.sock.recv(1 << 20)
            msgs = self._decoder.feed(data) if data else None
        except BlockingIOError:
            return
        except (OSError, ProtocolError):
            msgs = None
        if msgs is None:
            self._gone()
            return
        for msg in msgs:
            if msg.get("type") in ("stats", "final_stats"):
                try:
                    self._take_stats(msg)
                except ProtocolError as e:
                    log.warning("hot restart: %s", e)
                    self._gone()
                    return

    def _gone(self) -> None:
        if not self.connected:
            return
        self.connected = False
        log.info("hot restart: parent epoch %s exited", self.parent_epoch)
        if self._dispatcher is not None:
            self._dispatcher.unregister(self.channel.sock)
        self.channel.close()
        # Its counters carry on; its gauges (connections it held) went with it.
        self.parent_gauges = {}
        if self._on_stats is not None:
            self._on_stats(self.parent_counters, self.parent_gauges)

    def close(self) -> None:
        self._gone()


def parent_gauge_carryover(gauges: dict[str, int]) -> dict[str, int]:
    """The parent's gauges that count toward the child's while the parent lives: Envoy's
    ImportMode Accumulate gauges (connections and requests in flight: `*_active`, and
    server.total_connections, "of both new and old Envoy processes"), plus
    server.parent_connections. The others (server.live, state, uptime, concurrency, ...) are
    the child's own (Envoy: NeverImport)."""
    carried = {n: v for n, v in gauges.items() if n.endswith("_active")}
    total = gauges.get("server.total_connections", 0)
    carried["server.total_connections"] = total
    carried["server.parent_connections"] = total
    return carried


def _number(value: Any, field: str) -> float:
    """A number the parent sent, or ProtocolError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"bad {field} from the parent: {str(value)[:80]!r}")
    return float(value)


def _stat_map(value: Any, field: str) -> dict[str, int]:
    """{stat name: int} from the parent's message, or ProtocolError naming the field."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()):
        raise ProtocolError(f"bad {field} from the parent: not a map of names to integers")
    return dict(value)
