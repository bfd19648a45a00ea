"""HTTP/2 connection keepalive (core.v3.KeepaliveSettings, Envoy's `connection_keepalive` of
Http2ProtocolOptions), for both sides of a connection: a PING every `interval` (plus up to
`interval_jitter` percent, default 15), and the connection closed when one is not answered
within `timeout`; a client also pings, before a new stream, a connection idle for
`connection_idle_interval`. Counted in `http2.keepalive_timeout` (downstream) or
`cluster.<name>.http2.keepalive_timeout` (upstream) by the connection that owns it.

The timers are the owning connection's dispatcher's; they do nothing once `stop()` ran or the
connection closed (`alive()` says). Thread affinity: that connection's worker.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError

__all__ = ["KeepaliveSettings", "KEEPALIVE", "parse_keepalive", "Keepalive"]


@dataclass(frozen=True, slots=True)
class KeepaliveSettings:
    interval: float = 0.0          # 0: no periodic PING
    timeout: float = 0.0
    jitter_percent: float = 15.0
    idle_interval: float = 0.0     # client side: PING a connection idle this long (0: never)


KEEPALIVE = Message("envoy.config.core.v3.KeepaliveSettings", model=KeepaliveSettings, fields=(
    used("interval"),
    used("timeout", why="required"),
    used("interval_jitter", attr="jitter_percent", why="Percent; default 15"),
    used("connection_idle_interval", attr="idle_interval", why="client side (upstream) only"),
))
PERCENT = Message("envoy.type.v3.Percent (keepalive)", fields=(used("value", attr="jitter_percent"),))


def parse_keepalive(raw: Any, path: str, client: bool) -> KeepaliveSettings:
    f = KEEPALIVE.read(raw, path)
    timeout = f.duration("timeout", required=True)
    if timeout < 0.001:
        raise ConfigError(f.at("timeout"), "must be at least 1ms")
    interval = f.duration("interval", 0.0)
    if f.has("interval") and interval < 0.001:
        raise ConfigError(f.at("interval"), "must be at least 1ms")
    jitter = 15.0
    if f.has("interval_jitter"):
        p = PERCENT.read(f.value("interval_jitter"), f.at("interval_jitter"))
        jitter = p.float("value", 0.0)
        if not 0.0 <= jitter <= 100.0:
            raise ConfigError(p.at("value"), "must be between 0 and 100")
    idle = f.duration("connection_idle_interval", 0.0)
    if idle and not client:
        raise ConfigError(f.at("connection_idle_interval"), "applies to upstream (client) "
                          "connections only; not supported yet for downstream ones")
    return KeepaliveSettings(interval, timeout, jitter, idle)


class Keepalive:
    """One connection's keepalive: `send_ping(payload)` writes a PING, `on_timeout()` closes
    the connection (and counts it); the owner calls `on_ack()` for each PING ACK."""

    __slots__ = ("settings", "send_ping", "on_timeout", "alive", "send_timer", "timeout_timer",
                 "stopped")

    def __init__(self, settings: KeepaliveSettings, dispatcher, send_ping: Callable[[bytes], None],
                 on_timeout: Callable[[], None], alive: Callable[[], bool]) -> None:
        self.settings = settings
        self.send_ping = send_ping
        self.on_timeout = on_timeout
        self.alive = alive
        self.stopped = False
        self.send_timer = dispatcher.create_timer(self._send)
        self.timeout_timer = dispatcher.create_timer(self._timed_out)
        self._schedule()

    def _schedule(self) -> None:
        s = self.settings
        if not s.interval or self.stopped:
            return
        interval = s.interval
        jitter = s.jitter_percent * interval / 100.0
        if jitter > 0:  # Envoy: interval + random % (jitter percent of it)
            interval += jitter * (int.from_bytes(os.urandom(2), "big") / 65536.0)
        self.send_timer.enable(interval)

    def _send(self) -> None:
        if self.stopped or not self.alive():
            return
        self.ping()

    def ping(self) -> None:
        """A keepalive PING now (its answer is awaited for `timeout`)."""
        if self.timeout_timer.enabled:
            return  # one outstanding at a time
        self.send_ping(struct.pack(">d", time.time()))  # (the time, as Envoy's payload)
        self.timeout_timer.enable(self.settings.timeout)

    def on_ack(self) -> None:
        self.timeout_timer.disable()
        self.send_timer.disable()
        self._schedule()

    def _timed_out(self) -> None:
        if self.stopped or not self.alive():
            return
        self.stop()
        self.on_timeout()

    def stop(self) -> None:
        self.stopped = True
        self.send_timer.disable()
        self.timeout_timer.disable()
