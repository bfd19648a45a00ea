"""Per-request (HTTP) or per-connection (TCP) facts that access loggers read.

Job: one mutable record, `StreamInfo`, that the HTTP connection manager / tcp_proxy fills in
as a request goes through its phases (start, request complete, first upstream byte, response
start, end) and hands to every configured access logger at the end.

Thread affinity: a StreamInfo is created, filled and logged by the one worker thread that
owns the connection; it is never shared between threads. Must not: do I/O, read clocks (the
owner writes the timestamps it took from its dispatcher's clock), or import other proxy
packages. Cheap to construct: it is created per request, so `__init__` only stores the start
times (the other fields' defaults are class attributes).

Timestamps: `start_time` is wall-clock epoch seconds (for %START_TIME%); every `*_monotonic`
is the dispatcher's monotonic clock in seconds (durations are differences of these).
Headers are any objects with `get_str(name) -> str | None` taking lower-case names
(`proxy.http.headers.RequestHead` also answers ":method", ":path", ":authority", ":scheme").
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["StreamInfo", "HeaderSource"]


class HeaderSource(Protocol):
    def get_str(self, name: str) -> str | None: ...


class StreamInfo:
    """Facts about one downstream request/connection; see the module docstring."""

    # One is created per request: every field's default is a class attribute, so creating
    # one stores only the start times (no __slots__; attributes are set as the request goes).
    start_time: float | None = None
    start_monotonic: float | None = None
    request_complete_monotonic: float | None = None
    first_upstream_tx_monotonic: float | None = None
    first_upstream_rx_monotonic: float | None = None
    response_start_monotonic: float | None = None
    end_monotonic: float | None = None
    request_headers: Any = None
    response_headers: Any = None
    response_trailers: Any = None
    response_code: int | None = None
    response_code_details: str | None = None
    # A tuple until the first flag is set (set_response_flag makes the instance's own list).
    response_flags: list[str] | tuple[()] = ()
    bytes_received = 0
    bytes_sent = 0
    protocol: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    downstream_local_address: str | None = None
    downstream_direct_remote_address: str | None = None
    route_name: str | None = None
    # The name of the filter chain that took the connection (listener access logs; None when
    # it has none, as Envoy's %FILTER_CHAIN_NAME%).
    filter_chain_name: str | None = None
    # Envoy's AccessLogType number when the log point sets it (a listener's log: 0, NotSet);
    # None: the logger's own (DownstreamEnd for HTTP, TcpConnectionEnd for TCP entries).
    access_log_type: int | None = None
    requested_server_name: str | None = None
    upstream_transport_failure_reason: str | None = None
    downstream_transport_failure_reason: str | None = None
    # What the TLS handshakes established (proxy.tls.info.TlsInfo), None for plaintext:
    # the %DOWNSTREAM_TLS_*% / %UPSTREAM_TLS_*% operators (tls_operators.py).
    downstream_ssl: Any = None
    upstream_ssl: Any = None
    connection_id = 0
    upstream_request_attempt_count = 0
    active_span: Any = None    # the request's tracing span (proxy/tracing/zipkin.Span)
    # The stream's compressor filters and their encoding decision (Envoy keeps it in filter
    # state): proxy/http/filters/compressor.py's _Registry, made by the first one created.
    compressors: Any = None

    def __init__(self, start_time: float | None = None, start_monotonic: float | None = None) -> None:
        self.start_time = start_time
        self.start_monotonic = start_monotonic

    def set_response_flag(self, flag: str) -> None:
        """Add an Envoy short response flag ("UH", "UF", ...) once."""
        flags = self.response_flags
        if flag not in flags:
            if type(flags) is tuple:
                self.response_flags = flags = []
            flags.append(flag)

    def has_response_flag(self, flag: str) -> bool:
        return flag in self.response_flags

    def __repr__(self) -> str:
        # The fields set on this request (the rest hold their class defaults).
        fields = ", ".join(f"{n}={v!r}" for n, v in vars(self).items())
        return f"StreamInfo({fields})"
