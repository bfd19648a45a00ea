"""Active health checking config: Envoy v3 `config.core.v3.HealthCheck` -> frozen model.

Job: validate a cluster's `health_checks` (HTTP and TCP checkers) and an endpoint's
`health_check_config` through their declared tables, with Envoy's defaults and bounds:
`timeout`, `interval`, `unhealthy_threshold` and `healthy_threshold` are required;
`no_traffic_interval` defaults to 60 s, `no_traffic_healthy_interval` to it,
`unhealthy_interval` to `interval`, `unhealthy_edge_interval` to `unhealthy_interval`,
`healthy_edge_interval` to `interval`; `reuse_connection` defaults to true; HTTP checks expect
200 unless `expected_statuses` says otherwise (Int64Range [start, end), 100 <= start < end <= 600).
Payloads (`send`, `receive`) are hex `text` or base64 `binary`, as Envoy's PayloadMatcher.

Must not: do I/O or keep state. Pure; callable from any thread.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, inert, not_supported, refused, used
from proxy.config.reader import ConfigError, Fields
from proxy.router.header_mutation import HeaderMutation, parse_header_mutations

__all__ = ["HealthCheckConfig", "HttpCheck", "TcpCheck", "GrpcCheck", "EndpointHealthCheck",
           "parse_health_checks", "parse_endpoint_health_check"]

_METHODS = ("METHOD_UNSPECIFIED", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
            "TRACE", "PATCH")
_CODECS = ("HTTP1", "HTTP2", "HTTP3")


@dataclass(frozen=True, slots=True)
class HttpCheck:
    path: str
    host: str = ""                                   # "" : the cluster's name (Envoy)
    method: str = "GET"
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)   # [start, end)
    retriable_statuses: tuple[tuple[int, int], ...] = ()
    headers: tuple[HeaderMutation, ...] = ()         # request_headers_to_remove, then _to_add
    receive: tuple[bytes, ...] = ()                  # segments the body must contain, in order
    http2: bool = False                              # codec_client_type HTTP2 (h2c, prior knowledge)


@dataclass(frozen=True, slots=True)
class GrpcCheck:
    """grpc.health.v1.Health/Check over HTTP/2."""

    service_name: str = ""
    authority: str = ""                              # "": as HTTP checks' host
    headers: tuple[HeaderMutation, ...] = ()         # initial_metadata


@dataclass(frozen=True, slots=True)
class TcpCheck:
    send: bytes = b""
    receive: tuple[bytes, ...] = ()                  # segments the answer must contain, in order


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    grpc: GrpcCheck | None = None
    initial_jitter: float = 0.0
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    no_traffic_interval: float = 60.0
    no_traffic_healthy_interval: float = 60.0
    unhealthy_interval: float = 0.0                  # parse fills the defaults below
    unhealthy_edge_interval: float = 0.0
    healthy_edge_interval: float = 0.0
    reuse_connection: bool = True
    always_log_health_check_failures: bool = False
    always_log_health_check_success: bool = False
    event_log_path: str = ""

    @property
    def kind(self) -> str:
        """Envoy's health_checker_type in event logs."""
        return "HTTP" if self.http is not None else "GRPC" if self.grpc is not None else "TCP"


@dataclass(frozen=True, slots=True)
class EndpointHealthCheck:
    """An endpoint's `health_check_config`: where its checks go instead of its own address."""

    port: int = 0               # 0: the endpoint's port
    address: str = ""           # "": the endpoint's address
    hostname: str = ""          # the host header of its HTTP checks (over `host` and the cluster name)
    disabled: bool = False      # disable_active_health_check


# -- declared fields (proxy.config.fields_table) -----------------------------------------

HEALTH_CHECK = Message("envoy.config.core.v3.HealthCheck", model=HealthCheckConfig, fields=(
    used("timeout"),
    used("interval"),
    used("initial_jitter", "0s"),
    used("interval_jitter", "0s"),
    used("interval_jitter_percent", 0),
    used("unhealthy_threshold"),
    used("healthy_threshold"),
    refused("alt_port", "use the endpoint's health_check_config.port_value"),
    used("reuse_connection", True),
    used("http_health_check", attr="http", why="its own table"),
    used("tcp_health_check", attr="tcp", why="its own table"),
    used("grpc_health_check", attr="grpc", why="its own table"),
    refused("custom_health_check", "custom health checkers"),
    used("no_traffic_interval", "60s"),
    used("no_traffic_healthy_interval", why="default: no_traffic_interval"),
    used("unhealthy_interval", why="default: interval"),
    used("unhealthy_edge_interval", why="default: unhealthy_interval"),
    used("healthy_edge_interval", why="default: interval"),
    used("event_log_path", why="JSON lines as Envoy's HealthCheckEventLoggerImpl"),
    refused("event_logger", "use event_log_path"),
    refused("event_service", "health check event streaming (gRPC)"),
    used("always_log_health_check_failures", False),
    used("always_log_health_check_success", False),
    refused("tls_options", "health checks over TLS"),
    refused("transport_socket_match_criteria", "one transport_socket per cluster"),
))

HTTP_HEALTH_CHECK = Message("envoy.config.core.v3.HealthCheck.HttpHealthCheck", model=HttpCheck,
                            fields=(
    used("host", ""),
    used("path"),
    refused("send", "HTTP health check request bodies"),
    used("receive"),
    refused("response_buffer_size", "the whole body is searched for receive"),
    used("request_headers_to_add", attr="headers"),
    used("request_headers_to_remove", attr="headers"),
    used("expected_statuses", "[200, 201)"),
    used("retriable_statuses"),
    used("codec_client_type", "HTTP1", attr="http2", why="HTTP1 or HTTP2 (h2c); HTTP3 refused"),
    refused("service_name_matcher", "x-envoy-upstream-healthchecked-cluster verification"),
    used("method", "GET"),
))

GRPC_HEALTH_CHECK = Message("envoy.config.core.v3.HealthCheck.GrpcHealthCheck", model=GrpcCheck,
                            fields=(
    used("service_name", ""),
    used("authority", ""),
    used("initial_metadata", attr="headers"),
))

TCP_HEALTH_CHECK = Message("envoy.config.core.v3.HealthCheck.TcpHealthCheck", model=TcpCheck, fields=(
    used("send"),
    used("receive"),
    refused("proxy_protocol_config", "PROXY protocol on health check connections"),
))

PAYLOAD = Message("envoy.config.core.v3.HealthCheck.Payload", fields=(
    used("text", attr="", why="hex digits"),
    used("binary", attr="", why="base64 in JSON/YAML"),
))

INT64_RANGE = Message("envoy.type.v3.Int64Range (health check statuses)", fields=(
    used("start", attr="", why="inclusive"),
    used("end", attr="", why="exclusive"),
))

ENDPOINT_HEALTH_CHECK = Message("envoy.config.endpoint.v3.Endpoint.HealthCheckConfig",
                                model=EndpointHealthCheck, fields=(
    used("port_value", 0, attr="port"),
    used("hostname", ""),
    used("address", attr="address", why="a socket_address (its port_value is ignored, as Envoy)"),
    used("disable_active_health_check", False, attr="disabled"),
))

HC_ADDRESS = Message("envoy.config.core.v3.Address (health_check_config)", fields=(
    used("socket_address", attr="", why="its own table"),
    refused("pipe", "upstream hosts are TCP"),
    refused("envoy_internal_address", "upstream hosts are TCP"),
))

HC_SOCKET_ADDRESS = Message("envoy.config.core.v3.SocketAddress (health_check_config)", fields=(
    used("address"),
    inert("port_value", "Envoy checks health_check_config.port_value (or the endpoint's port)"),
    refused("protocol", "upstream hosts are TCP", default="TCP", only_default=True),
    refused("named_port"),
    refused("resolver_name"),
    inert("ipv4_compat", "meaningful only for listeners"),
    refused("network_namespace_filepath"),
))


# -- parsing ------------------------------------------------------------------------------

def parse_health_checks(f: Fields, key: str = "health_checks") -> tuple[HealthCheckConfig, ...]:
    return tuple(parse_health_check(item, p) for item, p in f.list(key))


def _positive(f: Fields, key: str, default: Any = None, required: bool = False) -> Any:
    if default is None and not required and not f.has(key):
        return None
    value = f.duration(key, default, required=required)
    if value is not None and value <= 0:
        raise ConfigError(f.at(key), "must be greater than 0s")
    return value


def parse_health_check(raw: Any, path: str) -> HealthCheckConfig:
    f = HEALTH_CHECK.read(raw, path)
    timeout = _positive(f, "timeout", required=True)
    interval = _positive(f, "interval", required=True)
    unhealthy = f.int("unhealthy_threshold", required=True, min=0, max=2**32 - 1)
    healthy = f.int("healthy_threshold", required=True, min=0, max=2**32 - 1)
    which = f.oneof("http_health_check", "tcp_health_check", "grpc_health_check",
                    "custom_health_check", required=True)
    http = tcp = grpc = None
    if which == "http_health_check":
        http = _http_check(f.value(which), f.at(which))
    elif which == "grpc_health_check":
        grpc = _grpc_check(f.value(which), f.at(which))
    else:
        tcp = _tcp_check(f.value(which), f.at(which))
    no_traffic = _positive(f, "no_traffic_interval", 60.0)
    unhealthy_interval = _positive(f, "unhealthy_interval") or interval
    jitter = f.duration("interval_jitter", 0.0)
    initial = f.duration("initial_jitter", 0.0)
    for key, v in (("interval_jitter", jitter), ("initial_jitter", initial)):
        if v < 0:
            raise ConfigError(f.at(key), "must not be negative")
    return HealthCheckConfig(
        timeout=timeout, interval=interval,
        # Envoy: a threshold of 0 behaves as 1 (the first result already reaches it).
        unhealthy_threshold=max(unhealthy, 1), healthy_threshold=max(healthy, 1),
        http=http, tcp=tcp, grpc=grpc,
        initial_jitter=initial, interval_jitter=jitter,
        interval_jitter_percent=f.int("interval_jitter_percent", 0, min=0, max=2**32 - 1),
        no_traffic_interval=no_traffic,
        no_traffic_healthy_interval=_positive(f, "no_traffic_healthy_interval") or no_traffic,
        unhealthy_interval=unhealthy_interval,
        unhealthy_edge_interval=_positive(f, "unhealthy_edge_interval") or unhealthy_interval,
        healthy_edge_interval=_positive(f, "healthy_edge_interval") or interval,
        reuse_connection=f.bool("reuse_connection", True),
        always_log_health_check_failures=f.bool("always_log_health_check_failures", False),
        always_log_health_check_success=f.bool("always_log_health_check_success", False),
        event_log_path=f.str("event_log_path", ""),
    )


def _ranges(f: Fields, key: str, kind: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item, p in f.list(key):
        r = INT64_RANGE.read(item, p)
        start, end = r.int("start", 0), r.int("end", 0)
        # Envoy's HttpStatusChecker::validateRange messages.
        if start >= end:
            raise ConfigError(p, f"Invalid http {kind} status range: expecting start < end, "
                                 f"but found start={start} and end={end}")
        if start < 100:
            raise ConfigError(p, f"Invalid http {kind} status range: expecting start >= 100, "
                                 f"but found start={start}")
        if end > 600:
            raise ConfigError(p, f"Invalid http {kind} status range: expecting end <= 600, "
                                 f"but found end={end}")
        out.append((start, end))
    return tuple(out)


def _http_check(raw: Any, path: str) -> HttpCheck:
    h = HTTP_HEALTH_CHECK.read(raw, path)
    codec = h.enum("codec_client_type", _CODECS, "HTTP1")
    if codec == "HTTP3":
        raise not_supported(h.at("codec_client_type"), "HTTP/3 health checks")
    p = h.str("path", required=True)
    if not p:
        raise ConfigError(h.at("path"), "must not be empty")
    if any(c in p for c in " \r\n\0"):
        raise ConfigError(h.at("path"), f"invalid path {p!r}")
    method = h.enum("method", _METHODS, "METHOD_UNSPECIFIED")
    if method == "CONNECT":  # Envoy's validation: not_in [CONNECT]
        raise ConfigError(h.at("method"), "CONNECT is not a health check method")
    expected = _ranges(h, "expected_statuses", "expected") or ((200, 201),)
    return HttpCheck(
        path=p, host=h.str("host", ""),
        method="GET" if method == "METHOD_UNSPECIFIED" else method,
        expected_statuses=expected,
        retriable_statuses=_ranges(h, "retriable_statuses", "retriable"),
        headers=parse_header_mutations(h, "request_headers_to_add", "request_headers_to_remove"),
        receive=tuple(_payload(item, p) for item, p in h.list("receive")),
        http2=codec == "HTTP2",
    )


def _grpc_check(raw: Any, path: str) -> GrpcCheck:
    g = GRPC_HEALTH_CHECK.read(raw, path)
    return GrpcCheck(service_name=g.str("service_name", ""), authority=g.str("authority", ""),
                     headers=parse_header_mutations(g, "initial_metadata", None))


def _tcp_check(raw: Any, path: str) -> TcpCheck:
    t = TCP_HEALTH_CHECK.read(raw, path)
    send = _payload(t.value("send"), t.at("send")) if t.has("send") else b""
    return TcpCheck(send=send,
                    receive=tuple(s for s in (_payload(item, p) for item, p in t.list("receive")) if s))


def _payload(raw: Any, path: str) -> bytes:
    p = PAYLOAD.read(raw, path)
    which = p.oneof("text", "binary", required=True)
    text = p.str(which)
    if which == "binary":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(p.at("binary"), "invalid base64") from None
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    if not data:  # Envoy: Hex::decode failed or empty
        raise ConfigError(p.at("text"), f"invalid hex string '{text}'")
    return data


def parse_endpoint_health_check(raw: Any, path: str) -> EndpointHealthCheck:
    h = ENDPOINT_HEALTH_CHECK.read(raw, path)
    address = ""
    if h.has("address"):
        a = HC_ADDRESS.read(h.value("address"), h.at("address"))
        sa = HC_SOCKET_ADDRESS.read(a.value("socket_address", required=True), a.at("socket_address"))
        HC_SOCKET_ADDRESS.require_default(sa, "protocol", sa.enum("protocol", ("TCP", "UDP"), "TCP"))
        sa.int("port_value", 0, min=0, max=65535)
        sa.bool("ipv4_compat", False)
        address = sa.str("address", required=True)
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ConfigError(sa.at("address"), f"health check addresses must be IP addresses, "
                                                f"got {address!r}") from None
    return EndpointHealthCheck(port=h.int("port_value", 0, min=0, max=65535), address=address,
                               hostname=h.str("hostname", ""),
                               disabled=h.bool("disable_active_health_check", False))
