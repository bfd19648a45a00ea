"""HTTP/2 connection keepalive settings (core.v3.KeepaliveSettings, the `connection_keepalive`
of Http2ProtocolOptions): their table and parsing. The runtime (PINGs and timers) is
proxy/http/h2_keepalive.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError

__all__ = ["KeepaliveSettings", "KEEPALIVE", "parse_keepalive"]

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
