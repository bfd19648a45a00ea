"""System DNS resolution for STRICT_DNS / LOGICAL_DNS clusters.

Job: `system_resolver(hostname, port, family)` -> IP strings, in resolver order, deduplicated,
filtered by Envoy's `dns_lookup_family`. It blocks (getaddrinfo), so it is called only by the
cluster manager on the main thread; workers never resolve names.

This is the only module in `proxy.upstream` that touches the network stack.
Failures raise OSError (socket.gaierror) for the caller to count as `update_failure`.
Thread affinity: main thread (by convention; the function itself keeps no state).
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["system_resolver", "order_by_family", "DNS_LOOKUP_FAMILIES"]

DNS_LOOKUP_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")


def order_by_family(addresses: list[str], family: str) -> list[str]:
    """Apply Envoy's lookup-family rule to a resolver answer (dedup, order kept).

    AUTO: IPv6 answers if any, else IPv4. V4_PREFERRED: IPv4 if any, else IPv6.
    V4_ONLY / V6_ONLY: that family only. ALL: everything.
    """
    seen: set[str] = set()
    v4: list[str] = []
    v6: list[str] = []
    every: list[str] = []
    for a in addresses:
        if a in seen:
            continue
        seen.add(a)
        every.append(a)
        (v6 if ipaddress.ip_address(a).version == 6 else v4).append(a)
    if family == "V4_ONLY":
        return v4
    if family == "V6_ONLY":
        return v6
    if family == "V4_PREFERRED":
        return v4 or v6
    if family == "ALL":
        return every
    if family == "AUTO":
        return v6 or v4
    raise ValueError(f"unknown dns_lookup_family {family!r}")


def system_resolver(hostname: str, port: int, family: str) -> list[str]:
    """Resolve `hostname` with getaddrinfo (blocking). Raises OSError on failure."""
    af = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    infos = socket.getaddrinfo(hostname, port, af, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # sockaddr[0] is the address; IPv6 scoped addresses come as "fe80::1%eth0": keep the scope.
    return order_by_family([str(info[4][0]) for info in infos], family)
