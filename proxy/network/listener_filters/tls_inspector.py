"""`envoy.filters.listener.tls_inspector`: does the connection start with a TLS ClientHello,
and which server name (SNI) and application protocols (ALPN) does it ask for?

As Envoy 1.40's filter: it peeks at the socket (`initial_read_buffer_size`, doubling up to
`max_client_hello_size`, default and maximum 16384 bytes) until client_hello.py has a verdict.
- A ClientHello: transport protocol "tls", the SNI as requested server name, the ALPN list as
  application protocols (for filter-chain matching); stats tls_found, sni_found or
  sni_not_found, alpn_found or alpn_not_found.
- Not TLS: tls_not_found, and the connection goes on as raw_buffer (with
  `close_connection_on_client_hello_parsing_errors` it is closed instead).
- Still incomplete after `max_client_hello_size` bytes: client_hello_too_large, closed.
Stats `tls_inspector.*`, rooted at the server's scope (not the listener's), as in Envoy.

Config `envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector`: the JA3 and JA4
fingerprints are refused (no access-log operator or filter here reads them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from . import ListenerFilterStatus
from .client_hello import NEED_MORE, TLS, parse_client_hello

__all__ = ["TlsInspectorConfig", "TlsInspectorFactory", "TLS_MAX_CLIENT_HELLO"]

TLS_MAX_CLIENT_HELLO = 16384   # Envoy 1.40: SSL3_RT_MAX_PLAIN_LENGTH


@dataclass(frozen=True, slots=True)
class TlsInspectorConfig:
    max_client_hello_size: int = TLS_MAX_CLIENT_HELLO
    initial_read_buffer_size: int = TLS_MAX_CLIENT_HELLO
    close_connection_on_client_hello_parsing_errors: bool = False


TLS_INSPECTOR = Message("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                        title="Listener filter tls_inspector", model=TlsInspectorConfig, fields=(
    used("max_client_hello_size", TLS_MAX_CLIENT_HELLO),
    used("initial_read_buffer_size"),
    used("close_connection_on_client_hello_parsing_errors", False),
    refused("enable_ja3_fingerprinting", "no access-log operator or filter reads the fingerprint here",
            default=False, only_default=True),
    refused("enable_ja4_fingerprinting", "no access-log operator or filter reads the fingerprint here",
            default=False, only_default=True),
))


def parse_tls_inspector(raw: Mapping[str, Any], path: str) -> TlsInspectorConfig:
    f = TLS_INSPECTOR.read(raw, path)
    for name in ("enable_ja3_fingerprinting", "enable_ja4_fingerprinting"):
        TLS_INSPECTOR.require_default(f, name, f.bool(name, False))
    max_size = f.int("max_client_hello_size", TLS_MAX_CLIENT_HELLO, max=2**32 - 1)
    if max_size <= 255 or max_size > TLS_MAX_CLIENT_HELLO:
        # The proto's range (gt 255, lte 16384); Envoy words the upper bound itself too.
        raise ConfigError(f.at("max_client_hello_size"),
                          f"must be in (255, {TLS_MAX_CLIENT_HELLO}], got {max_size}")
    initial = f.int("initial_read_buffer_size", max_size, max=2**32 - 1)
    if f.has("initial_read_buffer_size") and not 255 < initial < 65537:
        raise ConfigError(f.at("initial_read_buffer_size"), f"must be in (255, 65536], got {initial}")
    return TlsInspectorConfig(
        max_client_hello_size=max_size,
        initial_read_buffer_size=min(initial, max_size),
        close_connection_on_client_hello_parsing_errors=f.bool(
            "close_connection_on_client_hello_parsing_errors", False))


_STATS = ("client_hello_too_large", "tls_found", "tls_not_found", "alpn_found", "alpn_not_found",
          "sni_found", "sni_not_found")


class TlsInspectorFactory:
    def __init__(self, config: TlsInspectorConfig, name: str) -> None:
        self.config = config

    def for_worker(self, worker) -> WorkerTlsInspector:
        return WorkerTlsInspector(self.config, worker)


class WorkerTlsInspector:
    def __init__(self, config: TlsInspectorConfig, worker) -> None:
        self.config = config
        scope = worker.stats.scope("tls_inspector")
        self.stats = {n: scope.counter(n) for n in _STATS}

    def create(self, callbacks) -> TlsInspectorFilter:
        return TlsInspectorFilter(self, callbacks)


class TlsInspectorFilter:
    __slots__ = ("w", "cb", "max_read_bytes")

    def __init__(self, w: WorkerTlsInspector, callbacks) -> None:
        self.w = w
        self.cb = callbacks
        self.max_read_bytes = w.config.initial_read_buffer_size

    def on_accept(self, callbacks) -> int:
        return ListenerFilterStatus.STOP_ITERATION

    def on_data(self, data: bytes) -> int:
        hello = parse_client_hello(data)
        cfg = self.w.config
        stats = self.w.stats
        if hello.state == NEED_MORE:
            if len(data) >= cfg.max_client_hello_size:
                stats["client_hello_too_large"].value += 1
                self.cb.close()
                return ListenerFilterStatus.STOP_ITERATION
            if len(data) >= self.max_read_bytes:
                self.max_read_bytes = min(2 * len(data), cfg.max_client_hello_size)
            return ListenerFilterStatus.STOP_ITERATION
        if hello.alpn:
            self.cb.set_application_protocols(hello.alpn)
        if hello.state == TLS:
            if hello.server_name:
                stats["sni_found"].value += 1
                self.cb.set_requested_server_name(hello.server_name)
            else:
                stats["sni_not_found"].value += 1
            stats["tls_found"].value += 1
            stats["alpn_found" if hello.alpn else "alpn_not_found"].value += 1
            self.cb.set_transport_protocol("tls")
            return ListenerFilterStatus.CONTINUE
        if cfg.close_connection_on_client_hello_parsing_errors:
            self.cb.close()
            return ListenerFilterStatus.STOP_ITERATION
        stats["tls_not_found"].value += 1
        return ListenerFilterStatus.CONTINUE

    def on_close(self) -> None:
        pass


register(Extension(
    category="listener_filter",
    name="envoy.filters.listener.tls_inspector",
    proto="envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    parse=parse_tls_inspector,
    empty_config_ok=True,
    factory=TlsInspectorFactory,
))
