"""The statsd stats sink (`envoy.stat_sinks.statsd`), flushed from the main thread at the
bootstrap's `stats_flush_interval`, as Envoy flushes its sinks.

Config `envoy.config.metrics.v3.StatsdSink`: `address` (a UDP socket address; an IP literal)
and `prefix` (default `envoy`). `tcp_cluster_name` is refused. Each flush sends, one metric per
UDP datagram as Envoy's UDP sink does, every used counter as `<prefix>.<name>:<delta since
the last flush>|c` (0 once it stops changing), every used gauge as `<prefix>.<name>:<value>|g`,
and every histogram sample recorded since the last flush as `<prefix>.<name>:<ms>|ms` (whole
milliseconds, as Envoy's timers). Envoy's sink sends each sample from the worker as it is
recorded; ftproxy's workers keep them (proxy.stats.histogram.SampledHistogram, made only when a
statsd sink is configured: Histogram.record is unchanged for everyone else) and main sends them
at the flush, after the counters and gauges: the same lines, later, in another order.
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

__all__ = ["StatsdSinkConfig", "StatsdSink", "UdpStatsdSink", "parse_statsd_sink", "parse_udp_address"]

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


def parse_udp_address(raw: Any, path: str) -> tuple[str, int]:
    """A statsd sink's `address`: a UDP socket address with an IP literal."""
    a = ADDRESS.read(raw, path)
    s = SOCKET_ADDRESS.read(a.value("socket_address", required=True), a.at("socket_address"))
    if s.enum("protocol", ("TCP", "UDP"), "UDP") != "UDP":
        raise ConfigError(s.at("protocol"), "not supported yet (statsd over TCP: only UDP)")
    host = s.str("address", required=True)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(s.at("address"), f"{host!r} is not an IP address") from None
    return ip, s.int("port_value", required=True, min=1, max=65535)


def parse_statsd_sink(raw: Mapping[str, Any], path: str) -> StatsdSinkConfig:
    f = STATSD.read(raw, path)
    if f.has("tcp_cluster_name") or not f.has("address"):
        raise ConfigError(f.at("address"), "required field is missing")
    return StatsdSinkConfig(parse_udp_address(f.value("address"), f.at("address")),
                            f.str("prefix", "envoy") or "envoy")


class UdpStatsdSink:
    """Envoy's Common::Statsd::UdpStatsdSink: every used counter as its delta since the last
    flush (`|c`), every used gauge as its value (`|g`). `use_tags` (dog_statsd): the
    tag-extracted name and the tags as `|#name:value,...` after the type; else the flat name.
    `max_bytes`: datagrams batch metrics, newline-separated, up to that many bytes (a metric
    longer goes alone); 0: one metric per datagram."""

    def __init__(self, address: tuple[str, int], prefix: str, use_tags: bool = False,
                 max_bytes: int = 0) -> None:
        self.address = address
        self.prefix = prefix
        self.use_tags = use_tags
        self.max_bytes = max_bytes
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.last: dict[str, int] = {}
        self.sent = 0       # datagrams sent, and lost to a full socket buffer (for tests, logs)
        self.dropped = 0

    def _line(self, producer, name: str, value: int, kind: str) -> str:
        if not self.use_tags:
            return f"{self.prefix}.{name}:{value}{kind}"
        extracted, tags = producer.produce(name)
        tag_str = ("|#" + ",".join(f"{k}:{v}" for k, v in tags)) if tags else ""
        return f"{self.prefix}.{extracted}:{value}{kind}{tag_str}"

    def metric_lines(self, snapshot) -> list[str]:
        """This flush's metrics (and the counters' new baselines): main thread only."""
        producer = snapshot.tags() if self.use_tags else None
        used = snapshot.used
        last = self.last
        lines = []
        for name, value in snapshot.counters.items():
            if name in used:
                lines.append(self._line(producer, name, value - last.get(name, 0), "|c"))
                last[name] = value
        for name, value in snapshot.gauges.items():
            if name in used:
                lines.append(self._line(producer, name, value, "|g"))
        for name, values in snapshot.samples.items():
            for v in values:
                lines.append(self._line(producer, name, int(v), "|ms"))
        return lines

    def datagrams(self, lines: list[str]) -> list[bytes]:
        """Envoy's writeBuffer: batch up to max_bytes, newline-separated."""
        limit = self.max_bytes
        out: list[bytes] = []
        buf = b""
        for line in lines:
            data = line.encode()
            if len(data) >= limit:
                out.append(data)
            elif len(buf) + len(data) + 1 > limit:
                if buf:
                    out.append(buf)
                buf = data
            else:
                buf = buf + b"\n" + data if buf else data
        if buf:
            out.append(buf)
        return out

    def flush(self, snapshot) -> None:
        send = self.sock.sendto
        for data in self.datagrams(self.metric_lines(snapshot)):
            try:
                send(data, self.address)
                self.sent += 1
            except OSError:
                self.dropped += 1  # UDP: a full buffer or no listener loses the metric

    def close(self) -> None:
        self.sock.close()


def StatsdSink(config: StatsdSinkConfig) -> UdpStatsdSink:  # noqa: N802  (the factory)
    """`envoy.stat_sinks.statsd` over UDP: flat names, one metric per datagram."""
    return UdpStatsdSink(config.address, config.prefix)


register(Extension(
    category="stats_sink",
    name=NAME,
    proto=PROTO,
    parse=parse_statsd_sink,
    factory=lambda config, _name: StatsdSink(config),
))
