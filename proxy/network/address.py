"""Addresses as Envoy prints and classifies them, and this host's own address.

`format_address`: `ip:port`, IPv6 as `[ip]:port`. `is_loopback`: Envoy's
Network::Utility::isLoopbackAddress on an IP literal. `node_address`: the address Envoy takes as
its own (`local_info.address()`, what it appends to x-forwarded-for for a loopback peer): the
first IPv4 address of an interface that is up and not loopback, else 127.0.0.1. It asks the
kernel (one ioctl per interface, no traffic), so call it once per config, not per request.
Thread affinity: any (no state).
"""

from __future__ import annotations

import fcntl
import socket
import struct

__all__ = ["format_address", "is_loopback", "node_address"]

_SIOCGIFFLAGS, _SIOCGIFADDR = 0x8913, 0x8915
_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8


def format_address(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped 127.0.0.0/8."""
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


def node_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
                if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                    continue
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24])
            except OSError:  # no IPv4 address on this interface
                continue
            if not is_loopback(addr):
                return addr
    return "127.0.0.1"
