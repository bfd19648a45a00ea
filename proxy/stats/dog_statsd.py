"""The DogStatsD stats sink (`envoy.stat_sinks.dog_statsd`), flushed from the main thread at the
bootstrap's `stats_flush_interval`, as Envoy flushes its sinks.

Config `envoy.config.metrics.v3.DogStatsdSink`: `address` (a UDP socket address; an IP literal),
`prefix` (default `envoy`), `max_bytes_per_datagram` (batch metrics, newline-separated, up to
that size; unset: one metric per datagram). As Envoy's sink (Common::Statsd::UdpStatsdSink with
DogStatsD's tag format), each flush sends every used counter as
`<prefix>.<tag-extracted name>:<delta>|c|#<tag>:<value>,...` and every used gauge as `...|g|#...`,
the tags those of the bootstrap's stats_config (proxy.stats.tag_extraction), in Envoy's order;
a stat without tags has no `|#`; each histogram sample as `...:<ms>|ms|#...` (see statsd.py:
sent at the flush).
Thread affinity: main thread only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

from .statsd import UdpStatsdSink, parse_udp_address

__all__ = ["DogStatsdSinkConfig", "DogStatsdSink", "parse_dog_statsd_sink"]

NAME = "envoy.stat_sinks.dog_statsd"
PROTO = "envoy.config.metrics.v3.DogStatsdSink"


@dataclass(frozen=True, slots=True)
class DogStatsdSinkConfig:
    address: tuple[str, int]
    prefix: str = "envoy"
    max_bytes_per_datagram: int = 0   # 0: one metric per datagram


DOG_STATSD = Message(PROTO, title="Stats sink dog_statsd", model=DogStatsdSinkConfig, fields=(
    used("address"),
    used("prefix", "envoy"),
    used("max_bytes_per_datagram"),
))


def parse_dog_statsd_sink(raw: Mapping[str, Any], path: str) -> DogStatsdSinkConfig:
    f = DOG_STATSD.read(raw, path)
    if not f.has("address"):
        raise ConfigError(f.at("address"), "required field is missing")
    max_bytes = f.int("max_bytes_per_datagram", 0, min=0)
    if f.has("max_bytes_per_datagram") and max_bytes == 0:
        raise ConfigError(f.at("max_bytes_per_datagram"), "value must be greater than 0")
    return DogStatsdSinkConfig(parse_udp_address(f.value("address"), f.at("address")),
                               f.str("prefix", "envoy") or "envoy", max_bytes)


def DogStatsdSink(config: DogStatsdSinkConfig) -> UdpStatsdSink:  # noqa: N802  (the factory)
    return UdpStatsdSink(config.address, config.prefix, use_tags=True,
                         max_bytes=config.max_bytes_per_datagram)


register(Extension(
    category="stats_sink",
    name=NAME,
    proto=PROTO,
    parse=parse_dog_statsd_sink,
    factory=lambda config, _name: DogStatsdSink(config),
))
