"""A stream's deadline from the route: `max_stream_duration` (RouteAction.MaxStreamDuration,
else the HCM's common_http_protocol_options.max_stream_duration) and the gRPC `grpc-timeout`
header, and the legacy `max_grpc_timeout` / `grpc_timeout_offset` router timeout. Protocol
logic only, in Envoy's integer milliseconds (Grpc::Common::getGrpcTimeout / toGrpcTimeout,
ConnectionManagerImpl::ActiveStream::refreshDurationTimeout, FilterUtility::finalTimeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.fields_table import Message, used
from ..config.reader import Fields

__all__ = ["MaxStreamDuration", "MAX_STREAM_DURATION", "parse_max_stream_duration",
           "parse_grpc_timeout", "format_grpc_timeout", "stream_duration_ms", "legacy_grpc_timeout_ms"]

_MAX_VALUE = 99_999_999  # a grpc-timeout value has at most 8 digits
_UNIT_MS = {0x48: 3_600_000, 0x4D: 60_000, 0x53: 1000, 0x6D: 1}  # H M S m


@dataclass(frozen=True, slots=True)
class MaxStreamDuration:
    """Milliseconds; None: not set."""
    max_stream_duration: int | None = None
    grpc_timeout_header_max: int | None = None
    grpc_timeout_header_offset: int | None = None


MAX_STREAM_DURATION = Message("envoy.config.route.v3.RouteAction.MaxStreamDuration",
                              model=MaxStreamDuration, fields=(
    used("max_stream_duration", why="0 disables the HCM's for this route"),
    used("grpc_timeout_header_max", why="0: the grpc-timeout header is not capped"),
    used("grpc_timeout_header_offset"),
))


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def parse_max_stream_duration(f: Fields) -> MaxStreamDuration:
    return MaxStreamDuration(_ms(f.duration("max_stream_duration", None)),
                             _ms(f.duration("grpc_timeout_header_max", None)),
                             _ms(f.duration("grpc_timeout_header_offset", None)))


def parse_grpc_timeout(value: bytes | None) -> int | None:
    """A grpc-timeout header (`<at most 8 digits><H|M|S|m|u|n>`) in milliseconds, micro- and
    nanoseconds rounded up; None when absent or malformed (Envoy then ignores it)."""
    if not value or len(value) < 2:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isdigit():
        return None
    n = int(digits)
    if n > _MAX_VALUE:
        return None
    scale = _UNIT_MS.get(unit)
    if scale is not None:
        return n * scale
    if unit == 0x75:  # u
        return -(-n // 1000)
    if unit == 0x6E:  # n
        return -(-n // 1_000_000)
    return None


def format_grpc_timeout(ms: int) -> bytes:
    """Envoy's toGrpcTimeout: milliseconds while they fit 8 digits, then S, M, H (clipped)."""
    units = b"mSMH"
    i = 0
    if ms > _MAX_VALUE:
        ms //= 1000
        i = 1
    while ms > _MAX_VALUE:
        if i == 3:
            ms = _MAX_VALUE
        else:
            ms //= 60
            i += 1
    return b"%d%c" % (ms, units[i])


def stream_duration_ms(route_msd: MaxStreamDuration | None, hcm_ms: int,
                       grpc_timeout: int | None) -> int | None:
    """The stream's duration limit in ms, or None for none (refreshDurationTimeout): the
    grpc-timeout header, capped by grpc_timeout_header_max and less its offset, when the route
    sets grpc_timeout_header_max; else the route's max_stream_duration (0: none); else the
    HCM's (0: none)."""
    header_max = route_msd.grpc_timeout_header_max if route_msd is not None else None
    if grpc_timeout is None or header_max is None:
        if route_msd is not None and route_msd.max_stream_duration is not None:
            return route_msd.max_stream_duration or None
        return hcm_ms or None
    timeout = grpc_timeout
    if header_max and timeout > header_max:
        timeout = header_max
    offset = route_msd.grpc_timeout_header_offset
    if timeout and offset is not None:
        timeout = timeout - offset if offset < timeout else 0
    return timeout


def legacy_grpc_timeout_ms(max_grpc_timeout: int, offset: int | None, grpc_timeout: int | None) -> int:
    """The router's timeout for a gRPC request on a route with max_grpc_timeout (ms, 0: none):
    the header's (absent: infinite) less the offset, capped by max_grpc_timeout (0: no cap)."""
    timeout = grpc_timeout or 0
    if offset is not None and offset < timeout:
        timeout -= offset
    if max_grpc_timeout and (timeout == 0 or timeout > max_grpc_timeout):
        timeout = max_grpc_timeout
    return timeout
