"""PROXY protocol v1 and v2 headers (haproxy's proxy-protocol.txt): read from the first bytes
of a connection, and written (`proxy_header`). Pure, no I/O; the parser's verdicts are Envoy's
proxy_protocol filter's, the writer's bytes Envoy's generateProxyProtoHeader's.

`proxy_header(version, source, destination)` -> the bytes of a v1 ("PROXY TCP4|TCP6 src dst
sport dport\r\n") or v2 (PROXY command, STREAM transport, no TLVs) header for a connection
from `source` to `destination` ((ip, port) pairs; the family is the source's, as Envoy's).
The one writer: a terminated CONNECT's upstream (router connect_config) uses it.

`parse_proxy_header(data, ...)` -> `ProxyHeaderResult`:
- `NEED_MORE`: wait for more bytes (`need` says how many in all, when known: a v2 header's
  length is known once its 16-byte fixed part arrived).
- `SKIP`: `allow_without` and the bytes cannot begin an allowed version's signature: the
  connection has no PROXY header (Envoy's not_found_allowed).
- `NOT_FOUND`: at least 16 bytes that begin neither signature (not_found_disallowed).
- `DISALLOWED`: a signature of a version in `disallowed_versions` (vN.disallowed).
- `ERROR`: a header of version N that does not parse (vN.error): v1 longer than 108 bytes,
  not "PROXY TCP4|TCP6|UNKNOWN ..." with valid addresses and ports, an address of the other
  family, a non-unicast address; v2 not version 2, a command other than LOCAL/PROXY, a
  family other than INET/INET6 or a transport other than STREAM/DGRAM for PROXY, an address
  length shorter than the family's, malformed TLVs.
- `DONE`: `length` bytes of header (to consume); `remote`/`local` the carried addresses,
  None for v1 UNKNOWN and v2 LOCAL (the connection's own addresses stay); `tlvs` the v2 TLVs.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

__all__ = ["NEED_MORE", "SKIP", "NOT_FOUND", "DISALLOWED", "ERROR", "DONE", "ProxyHeaderResult",
           "parse_proxy_header", "V1_SIGNATURE", "V2_SIGNATURE", "MAX_V1_LENGTH",
           "V2_HEADER_LENGTH", "proxy_header"]

NEED_MORE = "need_more"
SKIP = "skip"
NOT_FOUND = "not_found"
DISALLOWED = "disallowed"
ERROR = "error"
DONE = "done"

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
MAX_V1_LENGTH = 108
_V2_LOCAL, _V2_PROXY = 0, 1
_AF_INET, _AF_INET6 = 1, 2
_STREAM, _DGRAM = 1, 2
_PORT = re.compile(r"[0-9]{1,5}")


class ProxyHeaderResult(NamedTuple):
    state: str
    version: int = 0                                 # 1 or 2 once a signature is seen
    length: int = 0                                  # DONE: bytes of header to consume
    remote: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    need: int = 0                                    # NEED_MORE: bytes wanted, when known


_NEED = ProxyHeaderResult(NEED_MORE)


def parse_proxy_header(data: bytes, *, v1_allowed: bool = True, v2_allowed: bool = True,
                       allow_without: bool = False) -> ProxyHeaderResult:
    n = len(data)
    if allow_without:
        # Only the allowed versions' signatures are looked for (Envoy: a disallowed
        # version's header then passes through as if it were the connection's own bytes).
        m2 = v2_allowed and data[:12] == V2_SIGNATURE[:min(12, n)]
        m1 = v1_allowed and data[:6] == V1_SIGNATURE[:min(6, n)]
        if not (m1 or m2):
            return ProxyHeaderResult(SKIP)
    if data[:12] == V2_SIGNATURE[:min(12, n)] and n >= 1:
        if n < 12:
            return _NEED
        if not v2_allowed:
            return ProxyHeaderResult(DISALLOWED, 2)
        return _v2(data)
    if data[:6] == V1_SIGNATURE[:min(6, n)]:
        if n < 6:
            return _NEED
        if not v1_allowed:
            return ProxyHeaderResult(DISALLOWED, 1)
        return _v1(data)
    return ProxyHeaderResult(NOT_FOUND) if n >= V2_HEADER_LENGTH or b"\n" in data else _NEED


def _v1(data: bytes) -> ProxyHeaderResult:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH + 1)
    if end < 0:
        return ProxyHeaderResult(ERROR, 1) if len(data) > MAX_V1_LENGTH else _NEED
    length = end + 2
    parts = data[:end].rstrip().split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        return ProxyHeaderResult(ERROR, 1)
    if parts[1] == b"UNKNOWN":
        return ProxyHeaderResult(DONE, 1, length)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        return ProxyHeaderResult(ERROR, 1)
    version = 4 if parts[1] == b"TCP4" else 6
    try:
        src = _address(parts[2], parts[4], version)
        dst = _address(parts[3], parts[5], version)
    except ValueError:
        return ProxyHeaderResult(ERROR, 1)
    return ProxyHeaderResult(DONE, 1, length, src, dst)


def _address(ip: bytes, port: bytes, version: int) -> tuple[str, int]:
    text = ip.decode("ascii")
    addr = ipaddress.ip_address(text)   # ValueError for anything but an IP literal
    if addr.version != version or not _unicast(addr) or "%" in text:
        raise ValueError(text)
    p = port.decode("ascii")
    if not _PORT.fullmatch(p) or int(p) > 65535:
        raise ValueError(p)
    return str(addr), int(p)


def _unicast(addr) -> bool:
    """Envoy's isUnicastAddress: not the any address, not broadcast, not multicast."""
    if addr.is_unspecified or addr.is_multicast:
        return False
    return not (addr.version == 4 and int(addr) == 0xFFFFFFFF)


def _v2(data: bytes) -> ProxyHeaderResult:
    if len(data) < V2_HEADER_LENGTH:
        return ProxyHeaderResult(NEED_MORE, 2, need=V2_HEADER_LENGTH)
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        return ProxyHeaderResult(ERROR, 2)
    command = ver_cmd & 0x0F
    length = int.from_bytes(data[14:16], "big")
    whole = V2_HEADER_LENGTH + length
    if command == _V2_LOCAL:
        if len(data) < whole:
            return ProxyHeaderResult(NEED_MORE, 2, need=whole)
        return ProxyHeaderResult(DONE, 2, whole)   # TLVs of a LOCAL header are ignored
    family, transport = fam >> 4, fam & 0x0F
    if family == _AF_INET:
        addr_len = 12
    elif family == _AF_INET6:
        addr_len = 36
    else:
        return ProxyHeaderResult(ERROR, 2)
    if length < addr_len or command != _V2_PROXY or transport not in (_STREAM, _DGRAM):
        return ProxyHeaderResult(ERROR, 2)
    if len(data) < whole:
        return ProxyHeaderResult(NEED_MORE, 2, need=whole)
    a = data[V2_HEADER_LENGTH:V2_HEADER_LENGTH + addr_len]
    k = 4 if family == _AF_INET else 16
    src = ipaddress.ip_address(a[:k])
    dst = ipaddress.ip_address(a[k:2 * k])
    if not (_unicast(src) and _unicast(dst)):
        return ProxyHeaderResult(ERROR, 2)
    sport = int.from_bytes(a[2 * k:2 * k + 2], "big")
    dport = int.from_bytes(a[2 * k + 2:2 * k + 4], "big")
    tlvs = _tlvs(data[V2_HEADER_LENGTH + addr_len:whole])
    if tlvs is None:
        return ProxyHeaderResult(ERROR, 2)
    return ProxyHeaderResult(DONE, 2, whole, (str(src), sport), (str(dst), dport), tlvs)


def _tlvs(b: bytes) -> tuple[tuple[int, bytes], ...] | None:
    out = []
    i = 0
    while i < len(b):
        if i + 3 > len(b):
            return None
        kind, size = b[i], int.from_bytes(b[i + 1:i + 3], "big")
        i += 3
        if i + size > len(b):
            return None
        out.append((kind, bytes(b[i:i + size])))
        i += size
    return tuple(out)


def proxy_header(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY protocol `version` (1 or 2) header saying the connection came from `source` to
    `destination`. ValueError for an address that is no IP literal."""
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if dst.version != src.version:   # one family for both, the source's (as Envoy's)
        if src.version == 6:
            dst = ipaddress.IPv6Address(f"::ffff:{dst}")
        elif dst.ipv4_mapped is not None:
            dst = dst.ipv4_mapped
        else:
            raise ValueError(f"{destination[0]} is not an IPv4 address like {source[0]}")
    sport, dport = int(source[1]), int(destination[1])
    if version == 1:
        family = b"TCP4" if src.version == 4 else b"TCP6"
        return b"PROXY %s %s %s %d %d\r\n" % (family, str(src).encode(), str(dst).encode(),
                                              sport, dport)
    family = _AF_INET if src.version == 4 else _AF_INET6
    body = src.packed + dst.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return (V2_SIGNATURE + bytes([2 << 4 | _V2_PROXY, family << 4 | _STREAM])
            + len(body).to_bytes(2, "big") + body)
