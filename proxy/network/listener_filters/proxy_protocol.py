"""`envoy.filters.listener.proxy_protocol`: read a PROXY protocol v1/v2 header off the start of
the connection and make the addresses it carries the connection's downstream addresses.

As Envoy 1.40's filter: it peeks until proxy_protocol_header.py has a verdict, then consumes
the header (a read, not a peek: the bytes after it are the connection's own). A PROXY
(v2) or TCP4/TCP6 (v1) header sets the remote address (x-forwarded-for, access logs'
`%DOWNSTREAM_REMOTE_ADDRESS%`, filter-chain `source_prefix_ranges`) and restores the local
address (`destination_port`, `prefix_ranges`, `%DOWNSTREAM_LOCAL_ADDRESS%`); v2 LOCAL and v1
UNKNOWN keep the socket's own. `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%` stays the socket's peer.
A connection without a header is closed, or, with `allow_requests_without_proxy_protocol`,
goes on untouched; a version in `disallowed_versions` is refused (or, with
allow_requests_without_proxy_protocol, not looked for).

Stats as Envoy 1.40's: `proxy_proto.[<stat_prefix>.]versions.v1|v2.found|disallowed|error`,
`proxy_proto.[<stat_prefix>.]not_found_allowed|not_found_disallowed`, and the legacy
`downstream_cx_proxy_proto_error` at the root, for every connection the filter closes.

Refused: `rules` and `pass_through_tlvs` (TLVs go to dynamic metadata and filter state,
which nothing here reads), `tlv_location` other than its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from . import ListenerFilterStatus
from .proxy_protocol_header import (DISALLOWED, DONE, ERROR, MAX_V1_LENGTH, NEED_MORE, NOT_FOUND,
                                    SKIP, V2_HEADER_LENGTH, parse_proxy_header)

__all__ = ["ProxyProtocolConfig", "ProxyProtocolFactory"]

_VERSIONS = ("V1", "V2")


@dataclass(frozen=True, slots=True)
class ProxyProtocolConfig:
    allow_requests_without_proxy_protocol: bool = False
    disallowed_versions: frozenset[str] = frozenset()
    stat_prefix: str = ""


PROXY_PROTOCOL = Message("envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
                         title="Listener filter proxy_protocol", model=ProxyProtocolConfig, fields=(
    used("allow_requests_without_proxy_protocol", False),
    used("disallowed_versions"),
    used("stat_prefix"),
    refused("rules", "TLVs to dynamic metadata: nothing here reads dynamic metadata"),
    refused("pass_through_tlvs", "TLVs to filter state: nothing here reads them (no upstream "
                                 "PROXY protocol)"),
    refused("tlv_location", "TLVs are not kept (rules are refused)", default="DYNAMIC_METADATA",
            only_default=True),
))


def parse_proxy_protocol(raw: Mapping[str, Any], path: str) -> ProxyProtocolConfig:
    f = PROXY_PROTOCOL.read(raw, path)
    PROXY_PROTOCOL.require_default(f, "tlv_location", f.enum(
        "tlv_location", ("DYNAMIC_METADATA", "FILTER_STATE"), "DYNAMIC_METADATA"))
    disallowed = set()
    for item, ipath in f.list("disallowed_versions"):
        if isinstance(item, str) and item.upper() in _VERSIONS:
            disallowed.add(item.upper())
        elif isinstance(item, int) and not isinstance(item, bool) and item in (0, 1):
            disallowed.add(_VERSIONS[item])
        else:
            raise ConfigError(ipath, f'unknown value "{item}"; expected one of V1, V2')
    return ProxyProtocolConfig(
        allow_requests_without_proxy_protocol=f.bool("allow_requests_without_proxy_protocol", False),
        disallowed_versions=frozenset(disallowed),
        stat_prefix=f.str("stat_prefix", ""),
    )


class ProxyProtocolFactory:
    def __init__(self, config: ProxyProtocolConfig, name: str) -> None:
        self.config = config

    def for_worker(self, worker) -> WorkerProxyProtocol:
        return WorkerProxyProtocol(self.config, worker)


class WorkerProxyProtocol:
    def __init__(self, config: ProxyProtocolConfig, worker) -> None:
        self.config = config
        self.v1_allowed = "V1" not in config.disallowed_versions
        self.v2_allowed = "V2" not in config.disallowed_versions
        root = worker.stats
        scope = root.scope("proxy_proto." + config.stat_prefix if config.stat_prefix else "proxy_proto")
        self.legacy_error = root.counter("downstream_cx_proxy_proto_error")
        self.not_found_allowed = scope.counter("not_found_allowed")
        self.not_found_disallowed = scope.counter("not_found_disallowed")
        self.versions = {v: {s: scope.counter(f"versions.v{v}.{s}") for s in ("found", "disallowed", "error")}
                         for v in (1, 2)}

    def create(self, callbacks) -> ProxyProtocolFilter:
        return ProxyProtocolFilter(self, callbacks)


class ProxyProtocolFilter:
    __slots__ = ("w", "cb", "max_read_bytes")

    def __init__(self, w: WorkerProxyProtocol, callbacks) -> None:
        self.w = w
        self.cb = callbacks
        self.max_read_bytes = V2_HEADER_LENGTH + 216  # Envoy's v2 header with a UNIX address

    def on_accept(self, callbacks) -> int:
        return ListenerFilterStatus.STOP_ITERATION

    def on_data(self, data: bytes) -> int:
        w = self.w
        r = parse_proxy_header(data, v1_allowed=w.v1_allowed, v2_allowed=w.v2_allowed,
                               allow_without=w.config.allow_requests_without_proxy_protocol)
        state = r.state
        if state == NEED_MORE:
            if r.need > self.max_read_bytes:
                self.max_read_bytes = r.need
            elif len(data) >= self.max_read_bytes:   # a v1 line longer than the buffer
                self.max_read_bytes = max(self.max_read_bytes, MAX_V1_LENGTH + 1)
            return ListenerFilterStatus.STOP_ITERATION
        if state == SKIP:
            w.not_found_allowed.value += 1
            return ListenerFilterStatus.CONTINUE
        if state == DONE:
            if not self.cb.drain(r.length):
                return self._refuse(w.versions[r.version]["error"])
            w.versions[r.version]["found"].value += 1
            if r.remote is not None:
                self.cb.set_remote_address(r.remote)
                self.cb.restore_local_address(r.local)
            return ListenerFilterStatus.CONTINUE
        if state == NOT_FOUND:
            return self._refuse(w.not_found_disallowed)
        if state == DISALLOWED:
            return self._refuse(w.versions[r.version]["disallowed"])
        assert state == ERROR, state
        return self._refuse(w.versions[r.version]["error"])

    def _refuse(self, counter) -> int:
        counter.value += 1
        self.w.legacy_error.value += 1
        self.cb.close()
        return ListenerFilterStatus.STOP_ITERATION

    def on_close(self) -> None:
        pass


register(Extension(
    category="listener_filter",
    name="envoy.filters.listener.proxy_protocol",
    proto="envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
    parse=parse_proxy_protocol,
    empty_config_ok=True,
    factory=ProxyProtocolFactory,
))
