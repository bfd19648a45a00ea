"""A unary gRPC call as HTTP/2 request and response pieces (the gRPC-over-HTTP/2 wire format),
without I/O: what Envoy's async gRPC client sends and how it judges the answer.

- `request_headers(timeout, metadata)`: content-type application/grpc, te: trailers, the
  grpc-timeout Envoy writes for the call's timeout (Grpc::Common::toGrpcTimeout: milliseconds,
  else seconds, minutes, hours, at most 8 digits), then the service's initial metadata.
- `frame(message)`: the 5-byte prefix (not compressed, big-endian length) and the message.
- `reply_message(status, headers, body, trailers)`: the one message of a successful answer,
  or a `GrpcFailure` with the gRPC status Envoy's client reports (the HTTP status mapped as
  Grpc::Utility::httpToGrpcStatus, grpc-status from the trailers or a trailers-only answer,
  INTERNAL for a body that is not exactly one whole uncompressed message).

Thread affinity: none (pure functions).
"""

from __future__ import annotations

__all__ = ["GrpcFailure", "frame", "grpc_timeout", "http_to_grpc_status", "reply_message",
           "request_headers"]

OK, UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 0, 2, 4, 12, 13, 14, 16
PERMISSION_DENIED = 7
_MAX_TIMEOUT_VALUE = 99999999


class GrpcFailure(Exception):
    """The call failed: `status` is the gRPC status (google.rpc.Code), `message` why."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status
        self.message = message


def grpc_timeout(ms: int) -> bytes:
    """Envoy's Grpc::Common::toGrpcTimeout."""
    units = b"mSMH"
    unit = 0
    if ms > _MAX_TIMEOUT_VALUE:
        ms //= 1000
        unit = 1
    while ms > _MAX_TIMEOUT_VALUE:
        if unit == 3:
            ms = _MAX_TIMEOUT_VALUE
        else:
            ms //= 60
            unit += 1
    return b"%d" % ms + units[unit:unit + 1]


def request_headers(timeout: float, metadata: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    fields = [(b"content-type", b"application/grpc")]
    if timeout:
        fields.append((b"grpc-timeout", grpc_timeout(round(timeout * 1000))))
    fields.append((b"te", b"trailers"))
    fields.extend(metadata)
    return fields


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


# Grpc::Utility::httpToGrpcStatus
_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}


def http_to_grpc_status(status: int) -> int:
    """Grpc::Utility::httpToGrpcStatus: the gRPC status for an HTTP status (UNKNOWN else)."""
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def _header(fields, name: bytes) -> bytes | None:
    for k, v in fields or ():
        if k == name:
            return v
    return None


def reply_message(status: int, headers, body: bytes, trailers) -> bytes:
    """The answer's one message, or GrpcFailure."""
    if status != 200:
        raise GrpcFailure(_HTTP_TO_GRPC.get(status, UNKNOWN), f"HTTP status {status}")
    code = _header(trailers, b"grpc-status")
    if code is None:
        code = _header(headers, b"grpc-status")   # trailers-only
    if code is None:
        raise GrpcFailure(INTERNAL, "no grpc-status")
    try:
        value = int(code)
    except ValueError:
        raise GrpcFailure(UNKNOWN, "bad grpc-status") from None
    if value != OK:
        message = _header(trailers, b"grpc-message") or _header(headers, b"grpc-message") or b""
        raise GrpcFailure(value, message.decode("latin-1"))
    if len(body) < 5 or body[0] != 0:
        raise GrpcFailure(INTERNAL, "no message" if len(body) < 5 else "compressed message")
    length = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise GrpcFailure(INTERNAL, "not exactly one message")
    return body[5:]
