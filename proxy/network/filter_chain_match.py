"""Filter-chain matching (`envoy.config.listener.v3.FilterChainMatch`): which of a listener's
filter chains takes an accepted connection, from what the socket and the listener filters found.

Envoy's algorithm (source/common/listener_manager/filter_chain_manager_impl.cc), criterion by
criterion in this order, each level keeping only its most specific entry that applies and
never backtracking to a less specific one when the levels below it do not match:

1. destination port: the chains naming the connection's local port; only when no chain
   names that port, those with none. (A port named by some chain whose rules below do not
   match gives the default chain, not the port-less chains: Envoy's rule.)
2. destination IP (`prefix_ranges`): the longest prefix containing the local address (no
   ranges = 0.0.0.0/0 and ::/0).
3. `server_names`: the exact name, else the longest wildcard suffix (`*.b.example.com` before
   `*.example.com`), else the chains with no server names.
4. `transport_protocol` ("tls" from tls_inspector, "raw_buffer" otherwise): exact, else empty.
5. `application_protocols`: the first of the connection's protocols (ALPN, or http_inspector's
   finding) that some chain names, else the chains naming none.
6. `direct_source_prefix_ranges`: longest prefix containing the socket's peer address.
7. `source_type`: SAME_IP_OR_LOOPBACK for a peer on loopback or on the local address,
   EXTERNAL otherwise, when some chain asks for that type; else ANY.
8. `source_prefix_ranges`: longest prefix containing the (maybe PROXY-protocol) remote address.
9. `source_ports`: exact, else the chains naming none.
No chain left -> the listener's `default_filter_chain`, if any, else no match (the connection
is closed and counted in `listener.<prefix>.no_filter_chain_match`).

The tree is built once per listener on the main thread (`FilterChainMatcher`) and is
immutable afterwards (nested `MappingProxyType`s and tuples): every worker reads it without a
lock. Overlapping rules (two chains reaching the same leaf) raise `OverlappingMatchError`;
the config layer refuses them at load with Envoy's message first (proxy/config/listener.py).
Pure logic: no I/O, no stats, no imports from the rest of the proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

__all__ = ["FilterChainMatcher", "OverlappingMatchError", "is_same_ip_or_loopback",
           "OVERLAPPING", "parse_cidr"]

OVERLAPPING = "multiple filter chains with overlapping matching rules are defined"

_ANY = "ANY"
_LOCAL = "SAME_IP_OR_LOOPBACK"
_EXTERNAL = "EXTERNAL"


class OverlappingMatchError(ValueError):
    """Two filter chains reach the same leaf of the match tree (Envoy refuses the listener)."""


def parse_cidr(text: str) -> tuple[int, int, int]:
    """"10.1.2.3/8" -> (version, network as int, prefix length), host bits cleared."""
    net = ipaddress.ip_network(text, strict=False)
    return net.version, int(net.network_address), net.prefixlen


_CATCH_ALL = ((4, 0, 0), (6, 0, 0))


class _CidrTable:
    """Longest-prefix lookup over a few ranges (Envoy's LcTrie with exclusive results): each
    entry is (version, network, mask, prefix length, value), most specific first."""

    __slots__ = ("entries",)

    def __init__(self, items: dict[str, Any]) -> None:
        entries = []
        for order, (cidr, value) in enumerate(items.items()):
            ranges = _CATCH_ALL if cidr == "" else (parse_cidr(cidr),)
            for version, network, plen in ranges:
                bits = 32 if version == 4 else 128
                mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
                # An explicit range before the catch-all of the same length.
                entries.append((-plen, cidr == "", order, version, network, mask, value))
        entries.sort(key=lambda e: e[:3])
        self.entries = tuple((v, n, m, val) for _p, _c, _o, v, n, m, val in entries)

    def get(self, address: tuple[int, int]) -> Any:
        version, value = address
        for v, network, mask, data in self.entries:
            if v == version and value & mask == network:
                return data
        return None


def _ip(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    return a.version, int(a)


def is_same_ip_or_loopback(remote_ip: str, local_ip: str) -> bool:
    """Envoy's Network::Utility::isSameIpOrLoopback: the peer is on a loopback address or on
    the connection's own address."""
    try:
        a = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return False
    return a.is_loopback or remote_ip == local_ip


def _freeze(node: Any) -> Any:
    if isinstance(node, dict):
        return MappingProxyType({k: _freeze(v) for k, v in node.items()})
    return node


class FilterChainMatcher:
    """The match tree of one listener. `matches[i]` is chain i's FilterChainMatchConfig (its
    attributes are read here); `find(...)` returns the index of the chain that takes the
    connection, `default_index` (len(matches)) for the default chain, or None."""

    __slots__ = ("ports", "default_index", "single")

    def __init__(self, matches: Sequence[Any], has_default: bool) -> None:
        ports: dict[int, dict] = {}
        for index, m in enumerate(matches):
            self._add(ports, index, m)
        # destination port -> _CidrTable(destination IP -> server names -> ...)
        self.ports = MappingProxyType({port: self._tables(ips) for port, ips in ports.items()})
        self.default_index = len(matches) if has_default else None
        # One chain matching everything and no default: every connection gets chain 0.
        self.single = 0 if len(matches) == 1 and not has_default and _matches_all(matches[0]) else None

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def _add(ports: dict, index: int, m: Any) -> None:
        ips = ports.setdefault(m.destination_port or 0, {})
        for ip in m.prefix_ranges or ("",):
            names = ips.setdefault(ip, {})
            for name in m.server_names or ("",):
                key = name[1:] if name.startswith("*.") else name
                transports = names.setdefault(key, {})
                alpns = transports.setdefault(m.transport_protocol, {})
                for alpn in m.application_protocols or ("",):
                    directs = alpns.setdefault(alpn, {})
                    for direct in m.direct_source_prefix_ranges or ("",):
                        types = directs.setdefault(direct, {})
                        sources = types.setdefault(m.source_type or _ANY, {})
                        for source in m.source_prefix_ranges or ("",):
                            source_ports = sources.setdefault(source, {})
                            for port in m.source_ports or (0,):
                                if port in source_ports:
                                    raise OverlappingMatchError(OVERLAPPING)
                                source_ports[port] = index

    def _tables(self, ips: dict) -> _CidrTable:
        """The nested dicts with their IP levels made into longest-prefix tables."""
        out = {}
        for ip, names in ips.items():
            frozen_names = {}
            for name, transports in names.items():
                ft = {}
                for transport, alpns in transports.items():
                    fa = {}
                    for alpn, directs in alpns.items():
                        fd = {}
                        for direct, types in directs.items():
                            fd[direct] = _freeze({t: _CidrTable({s: _freeze(p) for s, p in sources.items()})
                                                  for t, sources in types.items()})
                        fa[alpn] = _CidrTable(fd)
                    ft[transport] = MappingProxyType(fa)
                frozen_names[name] = MappingProxyType(ft)
            out[ip] = MappingProxyType(frozen_names)
        return _CidrTable(out)

    # -- matching ------------------------------------------------------------------------------
    def find(self, local: tuple[str, int], remote: tuple[str, int], direct_remote: tuple[str, int],
             server_name: str = "", transport_protocol: str = "raw_buffer",
             application_protocols: Sequence[str] = ()) -> int | None:
        """The chain for a connection: `local`/`remote` are its (maybe restored) addresses,
        `direct_remote` the socket's peer; the rest is what listener filters found."""
        if self.single is not None:
            return self.single
        ports = self.ports
        table = ports.get(local[1])
        if table is not None:
            found = self._by_destination_ip(table, local, remote, direct_remote, server_name,
                                            transport_protocol, application_protocols)
            return found if found is not None else self.default_index
        table = ports.get(0)
        found = None
        if table is not None:
            found = self._by_destination_ip(table, local, remote, direct_remote, server_name,
                                            transport_protocol, application_protocols)
        return found if found is not None else self.default_index

    def _by_destination_ip(self, table, local, remote, direct_remote, server_name, transport,
                           alpns) -> int | None:
        names = table.get(_ip(local[0]))
        if names is None:
            return None
        transports = _by_server_name(names, server_name.lower())
        if transports is None:
            return None
        protocols = transports.get(transport)
        if protocols is None:
            protocols = transports.get("")
            if protocols is None:
                return None
        directs = None
        for alpn in alpns:
            directs = protocols.get(alpn)
            if directs is not None:
                break
        else:
            directs = protocols.get("")
        if directs is None:
            return None
        types = directs.get(_ip(direct_remote[0]))
        if types is None:
            return None
        local_t, external_t = types.get(_LOCAL), types.get(_EXTERNAL)
        sources = None
        if local_t is not None or external_t is not None:
            sources = local_t if is_same_ip_or_loopback(remote[0], local[0]) else external_t
        if sources is None:
            sources = types.get(_ANY)
            if sources is None:
                return None
        source_ports = sources.get(_ip(remote[0]))
        if source_ports is None:
            return None
        found = source_ports.get(remote[1])
        if found is None and remote[1] != 0:
            found = source_ports.get(0)
        return found


def _by_server_name(names, server_name: str):
    """Exact name, then wildcard suffixes longest first (".b.example.com", ".example.com",
    ".com" for "a.b.example.com"), then the chains naming no server."""
    found = names.get(server_name)
    if found is not None and server_name:
        return found
    if server_name:
        pos = server_name.find(".", 1)
        while pos != -1 and pos < len(server_name) - 1:
            found = names.get(server_name[pos:])
            if found is not None:
                return found
            pos = server_name.find(".", pos + 1)
    return names.get("")


def _matches_all(m: Any) -> bool:
    return not (m.destination_port or m.prefix_ranges or m.server_names or m.transport_protocol
                or m.application_protocols or m.direct_source_prefix_ranges
                or (m.source_type or _ANY) != _ANY or m.source_prefix_ranges or m.source_ports)
