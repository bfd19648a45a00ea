"""`envoy.filters.listener.original_dst`: the connection's local address becomes the
destination it had before an iptables REDIRECT/DNAT (`SO_ORIGINAL_DST`, or
`IP6T_SO_ORIGINAL_DST` for IPv6), as Envoy's filter does on Linux.

Where the socket was not redirected (no conntrack entry: loopback tests, no iptables),
getsockopt fails or returns the socket's own address, and the local address stays what it is:
Envoy's behaviour too. The restored address is what the filter-chain match's
`destination_port` / `prefix_ranges` and `%DOWNSTREAM_LOCAL_ADDRESS%` see; handing the
connection to the listener of that address (the listener's `use_original_dst`) stays refused.

Config `envoy.extensions.filters.listener.original_dst.v3.OriginalDst`: `traffic_direction`
is inert (Envoy reads it on Windows only).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from ...config.fields_table import Message, inert
from ...config.registry import Extension, register
from . import ListenerFilterStatus

__all__ = ["original_destination", "OriginalDstFactory"]

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of an accepted socket, or None when the kernel has none."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            return str(ipaddress.IPv6Address(raw[8:24])), int.from_bytes(raw[2:4], "big")
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")
    except (OSError, ValueError):
        return None


ORIGINAL_DST = Message("envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
                       title="Listener filter original_dst", fields=(
    inert("traffic_direction", "Envoy reads it on Windows only", default="UNSPECIFIED"),
))


def parse_original_dst(raw: Mapping[str, Any], path: str) -> None:
    f = ORIGINAL_DST.read(raw, path)
    f.enum("traffic_direction", ("UNSPECIFIED", "INBOUND", "OUTBOUND"), "UNSPECIFIED")
    return None


class OriginalDstFactory:
    def __init__(self, config: Any, name: str) -> None:
        pass

    def for_worker(self, worker) -> OriginalDstFactory:
        return self

    def create(self, callbacks) -> OriginalDstFilter:
        return OriginalDstFilter()


class OriginalDstFilter:
    __slots__ = ()
    max_read_bytes = 0

    def on_accept(self, callbacks) -> int:
        original = original_destination(callbacks.socket)
        if original is not None and original != callbacks.local:
            callbacks.restore_local_address(original)
        return ListenerFilterStatus.CONTINUE

    def on_data(self, data: bytes) -> int:
        return ListenerFilterStatus.CONTINUE

    def on_close(self) -> None:
        pass


register(Extension(
    category="listener_filter",
    name="envoy.filters.listener.original_dst",
    proto="envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    parse=parse_original_dst,
    empty_config_ok=True,
    factory=OriginalDstFactory,
))
