"""The statsd stats sink (`envoy.stat_sinks.statsd`), flushed from the main thread at the
bootstrap's `stats_flush_interval`, as Envoy flushes its sinks.

Config `envoy.config.metrics.v3.StatsdSink`: `address` (a UDP socket address; an IP literal)
and `prefix` (default `envoy`). `tcp_cluster_name` is refused. Each flush sends, one metric per
UDP datagram as Envoy's UDP sink does, every used counter as `<prefix>.<name>:<delta since
the last flush>|c` (0 once it stops changing) and every used gauge as `<prefix>.<name>:<value>|g`.
Histograms are not sent: Envoy's sink sends each sample as it is recorded (`|ms`), and ftproxy
keeps histograms as buckets on the workers, not samples (a declared difference).
Thread affinity: main thread only (the workers' stores are merged by StatsRegistry.snapshot).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

__all__ = ["StatsdSinkConfig", "StatsdSink", "parse_statsd_sink"]

NAME = "envoy.stat_sinks.statsd"
PROTO = "envoy.config.metrics.v3.StatsdSink"


@dataclass(frozen=True, slots=True)
class StatsdSinkConfig:
    address: tuple[str, int]
    prefix: str = "envoy"


STATSD = Message(PROTO, title="Stats sink statsd", model=StatsdSinkConfig, fields=(
    used("address"),
    used("prefix", "envoy"),
    refused("tcp_cluster_name", "statsd over TCP through a cluster"),
))
ADDRESS = Message("envoy.config.core.v3.Address (statsd)", fields=(used("socket_address", attr="address"),))
SOCKET_ADDRESS = Message("envoy.config.core.v3.SocketAddress (statsd)", fields=(
    used("address"), used("port_value", attr="address"),
    used("protocol", "UDP", attr="address", why="only UDP"),
))


def parse_statsd_sink(raw: Mapping[str, Any], path: str) -> StatsdSinkConfig:
    f = STATSD.read(raw, path)
    if f.has("tcp_cluster_name") or not f.has("address"):
        raise ConfigError(f.at("address"), "required field is missing")
    a = ADDRESS.read(f.value("address"), f.at("address"))
    s = SOCKET_ADDRESS.read(a.value("socket_address", required=True), a.at("socket_address"))
    if s.enum("protocol", ("TCP", "UDP"), "UDP") != "UDP":
        raise ConfigError(s.at("protocol"), "not supported yet (statsd over TCP: only UDP)")
    host = s.str("address", required=True)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(s.at("address"), f"{host!r} is not an IP address") from None
    return StatsdSinkConfig((ip, s.int("port_value", required=True, min=1, max=65535)),
                            f.str("prefix", "envoy") or "envoy")


class StatsdSink:
    """One sink: remembers the counters' values at the last flush to send deltas."""

    def __init__(self, config: StatsdSinkConfig) -> None:
        self.config = config
        family = socket.AF_INET6 if ":" in config.address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.last: dict[str, int] = {}
        self.sent = 0       # datagrams sent, and lost to a full socket buffer (for tests, logs)
        self.dropped = 0

    def flush(self, snapshot) -> None:
        prefix = self.config.prefix
        used = snapshot.used
        last = self.last
        lines = []
        for name, value in snapshot.counters.items():
            if name in used:
                lines.append(f"{prefix}.{name}:{value - last.get(name, 0)}|c")
                last[name] = value
        for name, value in snapshot.gauges.items():
            if name in used:
                lines.append(f"{prefix}.{name}:{value}|g")
        send = self.sock.sendto
        address = self.config.address
        for line in lines:
            try:
                send(line.encode(), address)
                self.sent += 1
            except OSError:
                self.dropped += 1  # UDP: a full buffer or no listener loses the metric

    def close(self) -> None:
        self.sock.close()


register(Extension(
    category="stats_sink",
    name=NAME,
    proto=PROTO,
    parse=parse_statsd_sink,
    factory=lambda config, _name: StatsdSink(config),
))
