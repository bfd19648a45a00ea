"""Per-request (HTTP) or per-connection (TCP) facts that access loggers read.

Job: one mutable record, `StreamInfo`, that the HTTP connection manager / tcp_proxy fills in
as a request goes through its phases (start, request complete, first upstream byte, response
start, end) and hands to every configured access logger at the end.

Thread affinity: a StreamInfo is created, filled and logged by the one worker thread that
owns the connection; it is never shared between threads. Must not: do I/O, read clocks (the
owner writes the timestamps it took from its dispatcher's clock), or import other proxy
packages. Cheap to construct: it is created per request, so `__init__` only assigns slots.

Timestamps: `start_time` is wall-clock epoch seconds (for %START_TIME%); every `*_monotonic`
is the dispatcher's monotonic clock in seconds (durations are differences of these).
Headers are any objects with `get_str(name) -> str | None` taking lower-case names
(`proxy.http.headers.RequestHead` also answers ":method", ":path", ":authority", ":scheme").
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["StreamInfo", "HeaderSource", "RESPONSE_FLAG_ORDER"]


class HeaderSource(Protocol):
    def get_str(self, name: str) -> str | None: ...


# Envoy's rendering order of response flags (ResponseFlagUtils' table order), so that
# "%RESPONSE_FLAGS%" is the same whatever order the code set them in.
RESPONSE_FLAG_ORDER: tuple[str, ...] = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
    "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF",
    "DO", "DR",
)


class StreamInfo:
    """Facts about one downstream request/connection; see the module docstring."""

    __slots__ = (
        "start_time", "start_monotonic", "request_complete_monotonic",
        "first_upstream_tx_monotonic", "first_upstream_rx_monotonic",
        "response_start_monotonic", "end_monotonic",
        "request_headers", "response_headers", "response_trailers",
        "response_code", "response_code_details", "response_flags",
        "bytes_received", "bytes_sent", "protocol",
        "upstream_host", "upstream_cluster", "upstream_local_address",
        "downstream_remote_address", "downstream_local_address",
        "downstream_direct_remote_address", "route_name", "requested_server_name",
        "upstream_transport_failure_reason", "connection_id",
        "upstream_request_attempt_count",
    )

    def __init__(self, start_time: float | None = None, start_monotonic: float | None = None) -> None:
        self.start_time: float | None = start_time
        self.start_monotonic: float | None = start_monotonic
        self.request_complete_monotonic: float | None = None
        self.first_upstream_tx_monotonic: float | None = None
        self.first_upstream_rx_monotonic: float | None = None
        self.response_start_monotonic: float | None = None
        self.end_monotonic: float | None = None
        self.request_headers: Any = None
        self.response_headers: Any = None
        self.response_trailers: Any = None
        self.response_code: int | None = None
        self.response_code_details: str | None = None
        self.response_flags: list[str] = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.protocol: str | None = None
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.upstream_local_address: str | None = None
        self.downstream_remote_address: str | None = None
        self.downstream_local_address: str | None = None
        self.downstream_direct_remote_address: str | None = None
        self.route_name: str | None = None
        self.requested_server_name: str | None = None
        self.upstream_transport_failure_reason: str | None = None
        self.connection_id = 0
        self.upstream_request_attempt_count = 0

    def set_response_flag(self, flag: str) -> None:
        """Add an Envoy short response flag ("UH", "UF", ...) once."""
        if flag not in self.response_flags:
            self.response_flags.append(flag)

    def has_response_flag(self, flag: str) -> bool:
        return flag in self.response_flags

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__
                           if getattr(self, n) not in (None, 0, []))
        return f"StreamInfo({fields})"
