"""HTTP/2 connection keepalive (Envoy's `connection_keepalive`), for both sides of a
connection: a PING every `interval` (plus up to `interval_jitter` percent, default 15), and
the connection closed when one is not answered within `timeout`; a client also pings, before
a new stream, a connection idle for `connection_idle_interval` (settings:
codec/keepalive_config.py). Counted in `http2.keepalive_timeout` (downstream) or
`cluster.<name>.http2.keepalive_timeout` (upstream) by the connection that owns it.

The timers are the owning connection's dispatcher's; they do nothing once `stop()` ran or the
connection closed (`alive()` says). Thread affinity: that connection's worker.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

from .codec.keepalive_config import KeepaliveSettings

__all__ = ["Keepalive"]


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
