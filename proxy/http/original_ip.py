"""The original client address of a request that came through other proxies.

Job: Envoy's rules for which address becomes a stream's downstream remote address (what
%DOWNSTREAM_REMOTE_ADDRESS%, RBAC `remote_ip`, rate limits' `remote_address`, access logs and
x-envoy-external-address read; %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% stays the socket's peer):
- x-forwarded-for parsing (Envoy's Utility::getLastAddressFromXFF and
  getLastNonTrustedAddressFromXFF): entries split at ",", each trimmed of spaces and parsed
  as a bare IPv4 or IPv6 literal (no brackets, no port); the entry `skip` places from the
  right, or the last one outside trusted CIDRs; an entry that does not parse is no address;
- the original IP detection extensions `envoy.http.original_ip_detection.xff` and
  `envoy.http.original_ip_detection.custom_header` (config and runtime, registered here);
- internal_address_config: whether an address is internal (since Envoy 1.33 none is unless
  its cidr_ranges list it).
The HCM's use of them (x-forwarded-for appended, x-envoy-internal, edge sanitising) is in
request_headers.py. Every object here is immutable and shared by the workers.

Must not: do I/O, touch streams or answer requests (a rejection is an exception the
connection manager turns into a local reply).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.listener import parse_cidr_ranges
from proxy.config.reader import ConfigError
from proxy.config.registry import Extension, register

__all__ = ["XffDetection", "CustomHeaderDetection", "InternalAddresses", "IpDetectionRejected",
           "parse_ip", "last_address_from_xff", "last_non_trusted_address_from_xff",
           "XFF_PROTO", "CUSTOM_HEADER_PROTO"]

XFF_PROTO = "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig"
CUSTOM_HEADER_PROTO = ("envoy.extensions.http.original_ip_detection.custom_header.v3"
                       ".CustomHeaderConfig")


class IpDetectionRejected(Exception):
    """A detection extension's `reject_with_status`: the request is answered with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# An IPv4 dotted quad as inet_pton takes it (no leading zeros): its text is already Envoy's.
_V4 = re.compile(rb"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                 rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")
_v4_match = _V4.fullmatch


def parse_ip(text: str | bytes) -> str | None:
    """The address as Envoy prints it (inet_ntop's form), or None: Envoy's
    Network::Utility::parseInternetAddressNoThrow takes a bare IPv4 dotted quad or an IPv6
    literal, nothing around it (no brackets, no port, no spaces)."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            return None
    if _v4_match(text):
        return text.decode("ascii")
    if b":" not in text or text[:1] in b" \t" or text[-1:] in b" \t":
        return None
    try:
        ip = ipaddress.IPv6Address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if ip.scope_id:
        return _scoped(ip)
    if ip.ipv4_mapped is not None:
        return "::ffff:" + str(ip.ipv4_mapped)  # inet_ntop's form (3.12's str() writes hex)
    return str(ip)


def _scoped(ip: ipaddress.IPv6Address) -> str | None:
    """An IPv6 literal with a zone: Envoy (getaddrinfo) writes the zone as the interface's
    index ("fe80::1%4"); an interface this host does not have is no address."""
    scope = ip.scope_id
    if not scope.isdigit():
        import socket  # an interface-table lookup, no I/O on a connection
        try:
            scope = str(socket.if_nametoindex(scope))
        except OSError:
            return None
    return f"{str(ip).split('%', 1)[0]}%{scope}"


def last_address_from_xff(xff: bytes, skip: int) -> tuple[str | None, bool]:
    """Envoy's getLastAddressFromXFF: (the address `skip` entries from the right of
    x-forwarded-for, or None; whether it is the only entry and skip is 0, which is what lets
    it count as internal). Only the text after the last remaining comma is read: an entry
    left of it is never looked at."""
    single = not skip
    while skip:
        comma = xff.rfind(b",")
        if comma < 0:
            return None, False
        xff = xff[:comma]
        skip -= 1
    comma = xff.rfind(b",")
    if comma >= 0:
        single = False
        if comma + 1 < len(xff):
            xff = xff[comma + 1:]
    # (A value ending with a comma keeps its comma, and does not parse: Envoy's quirk.)
    xff = xff.strip(b" \t")
    if _v4_match(xff):  # the usual case, without a call
        return xff.decode("ascii"), single
    ip = parse_ip(xff)
    return (None, False) if ip is None else (ip, single)


def last_non_trusted_address_from_xff(xff: bytes, trusted: tuple) -> tuple[str | None, bool]:
    """Envoy's getLastNonTrustedAddressFromXFF: from the right, the first entry outside the
    `trusted` networks (the leftmost when all are inside); any entry that does not parse on
    the way makes it None."""
    entries = xff.split(b",")
    last = None
    for entry in reversed(entries):
        ip = parse_ip(entry.strip(b" \t"))
        if ip is None:
            return None, False
        last = ip
        if not _in_any(ip, trusted):
            return ip, len(entries) == 1
    return last, len(entries) == 1


def _in_any(ip: str, networks: tuple) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in n for n in networks if n.version == addr.version)


# What a detection extension says (`detect`), a tuple: the address (None: not found, the
# next extension is asked), whether the HCM may use it to decide the request is internal, and
# whether x-forwarded-for is left as it is (Envoy takes this from the last extension asked,
# found or not).
_UNTRUSTED_PEER = (None, False, False)
_NOT_FOUND_CUSTOM = (None, False, True)


@dataclass(frozen=True, slots=True)
class XffDetection:
    """`envoy.http.original_ip_detection.xff` (and the HCM's own x-forwarded-for rule without
    use_remote_address: this extension with the HCM's xff_num_trusted_hops)."""
    xff_num_trusted_hops: int = 0
    # Networks (ipaddress objects) of xff_trusted_cidrs: with any, the peer must be in one,
    # and the address is the last x-forwarded-for entry outside them.
    xff_trusted_cidrs: tuple = ()
    skip_xff_append: bool = True

    def detect(self, xff: bytes | None, peer_ip: str, headers) -> tuple[str | None, bool, bool]:
        cidrs = self.xff_trusted_cidrs
        if cidrs:
            if not _in_any(peer_ip, cidrs):
                # Envoy 1.40: a peer outside the trusted networks gets x-forwarded-for
                # appended whatever skip_xff_append says.
                return _UNTRUSTED_PEER
            ip, trusted = (last_non_trusted_address_from_xff(xff, cidrs) if xff is not None
                           else (None, False))
        elif xff is None:
            ip, trusted = None, False
        else:
            ip, trusted = last_address_from_xff(xff, self.xff_num_trusted_hops)
        return ip, trusted, self.skip_xff_append


@dataclass(frozen=True, slots=True)
class CustomHeaderDetection:
    """`envoy.http.original_ip_detection.custom_header`: the address is the (first) value of
    `header_name`; without one that parses, the next extension is asked, or the request is
    answered with `reject_with_status` when set. It never appends to x-forwarded-for."""
    header_name: bytes
    allow_extension_to_set_address_as_trusted: bool = False
    reject_with_status: int | None = None

    def detect(self, xff: bytes | None, peer_ip: str, headers) -> tuple[str | None, bool, bool]:
        value = headers.get(self.header_name)
        ip = parse_ip(value) if value is not None else None
        if ip is None:
            if self.reject_with_status is not None:
                raise IpDetectionRejected(self.reject_with_status)
            return _NOT_FOUND_CUSTOM
        return ip, self.allow_extension_to_set_address_as_trusted, True


@dataclass(frozen=True, slots=True)
class InternalAddresses:
    """internal_address_config: the networks whose addresses are internal (Envoy 1.40 calls
    no address internal unless listed here)."""
    cidr_ranges: tuple = ()

    def is_internal(self, ip: str) -> bool:
        return _in_any(ip, self.cidr_ranges)


# -- config ---------------------------------------------------------------------------------

XFF = Message(XFF_PROTO, title="Original IP detection: xff", model=XffDetection, fields=(
    used("xff_num_trusted_hops", 0),
    used("xff_trusted_cidrs", why="its cidrs: the peer must be in one; the address is the last "
                                  "x-forwarded-for entry outside them"),
    used("skip_xff_append", True, why="false: the peer's address is appended to x-forwarded-for "
                                       "when this extension found the address"),
))

XFF_TRUSTED_CIDRS = Message("envoy.extensions.http.original_ip_detection.xff.v3.XffTrustedCidrs",
                            fields=(used("cidrs", attr="xff_trusted_cidrs"),))


def parse_xff(raw: Mapping[str, Any], path: str) -> XffDetection:
    f = XFF.read(raw, path)
    hops = f.int("xff_num_trusted_hops", 0, min=0, max=2**32 - 1)
    cidrs: tuple = ()
    if f.value("xff_trusted_cidrs") is not None:
        if hops:
            raise ConfigError(path, "Cannot set both xff_num_trusted_hops and xff_trusted_cidrs "
                                    "(as Envoy)")
        t = XFF_TRUSTED_CIDRS.read(f.value("xff_trusted_cidrs"), f.at("xff_trusted_cidrs"))
        cidrs = parse_cidr_ranges(t.list("cidrs"))
    return XffDetection(hops, cidrs, f.bool("skip_xff_append", True))


CUSTOM_HEADER = Message(CUSTOM_HEADER_PROTO, title="Original IP detection: custom_header",
                        model=CustomHeaderDetection, fields=(
    used("header_name"),
    used("allow_extension_to_set_address_as_trusted", False),
    used("reject_with_status", why="its code; out of 400..511, 403 (as Envoy)"),
))

# envoy.type.v3.StatusCode names ("Unauthorized", "TooManyRequests"): the reason phrases.
_STATUS_BY_NAME = {"OK": 200, **{s.phrase.replace(" ", "").replace("-", ""): s.value
                                 for s in HTTPStatus if s.value != 200}}

_HEADER_NAME_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                               b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_custom_header(raw: Mapping[str, Any], path: str) -> CustomHeaderDetection:
    f = CUSTOM_HEADER.read(raw, path)
    name = f.str("header_name", required=True)
    if name and name[0] == ":":
        raise ConfigError(f.at("header_name"), f"{name!r}: a pseudo-header is not supported yet "
                                               "(Envoy takes one)")
    if not name or not set(name.encode("latin-1", "replace")) <= _HEADER_NAME_CHARS:
        raise ConfigError(f.at("header_name"), f"{name!r} is not an HTTP header name")
    status = None
    reject = f.value("reject_with_status")
    if reject is not None:
        if not isinstance(reject, Mapping) or set(reject) - {"code"}:
            raise ConfigError(f.at("reject_with_status"), "an HttpStatus ({code: N}) is expected")
        code = reject.get("code", 0)
        if isinstance(code, str):  # the StatusCode enum's name, as protobuf JSON allows
            code = _STATUS_BY_NAME.get(code, code)
        if not isinstance(code, int) or isinstance(code, bool) or not code:
            raise ConfigError(f.at("reject_with_status") + ".code",
                              f"{code!r} is not an HTTP status (a number, or its StatusCode name)")
        status = code if 400 <= code <= 511 else 403
    return CustomHeaderDetection(name.lower().encode("latin-1"),
                                 f.bool("allow_extension_to_set_address_as_trusted", False), status)


register(Extension(category="original_ip_detection", name="envoy.http.original_ip_detection.xff",
                   proto=XFF_PROTO, parse=parse_xff, empty_config_ok=False))
register(Extension(category="original_ip_detection",
                   name="envoy.http.original_ip_detection.custom_header",
                   proto=CUSTOM_HEADER_PROTO, parse=parse_custom_header))
