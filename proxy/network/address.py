"""Address formatting as Envoy prints it: `ip:port`, IPv6 as `[ip]:port`."""

from __future__ import annotations

__all__ = ["format_address"]


def format_address(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
