"""Local replies: responses the proxy writes itself, worded as Envoy words them.

Must not: write to sockets (the stream encodes the head it returns).
"""

from __future__ import annotations

from .headers import Headers, ResponseHead

__all__ = ["local_reply_head", "UPSTREAM_RESET_PREFIX", "reset_body", "is_grpc_request",
           "grpc_local_reply_head", "grpc_reply_headers", "grpc_message", "http_to_grpc_status"]

UPSTREAM_RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


def reset_body(reason: str) -> bytes:
    """Envoy's 503 body for an upstream reset before response headers."""
    return UPSTREAM_RESET_PREFIX + reason.encode()


def local_reply_head(status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> ResponseHead:
    """With a body: its content-length and text/plain (unless `extra` has a content-type). Without: no framing field at all (the
    codec frames a headers-only response: HTTP/1.1 says content-length: 0, or for HEAD
    transfer-encoding: chunked, as Envoy's)."""
    items = []
    if body:
        items.append((b"content-length", b"%d" % len(body)))
        if not extra or not any(k == b"content-type" for k, _ in extra):
            items.append((b"content-type", b"text/plain"))  # (a content-type given replaces it)
    if extra:
        items.extend(extra)
    return ResponseHead(status, Headers(items))


# Envoy's Grpc::Utility::httpToGrpcStatus, for a local reply to a gRPC request.
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN = 2


def http_to_grpc_status(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, _GRPC_UNKNOWN)


def grpc_message(body: bytes) -> bytes:
    """A grpc-message value as Envoy writes it (Http::Utility::PercentEncoding::encode with
    "%" reserved): bytes below space or from "~" up, and "%", as %XX."""
    if all(0x20 <= c < 0x7E and c != 0x25 for c in body):
        return body
    return b"".join(b"%%%02X" % c if c < 0x20 or c >= 0x7E or c == 0x25 else bytes((c,))
                    for c in body)


def is_grpc_request(headers: Headers) -> bool:
    """Envoy's test: content-type application/grpc (optionally +proto, +json, ...)."""
    ctype = headers.get(b"content-type")
    return ctype is not None and (ctype == b"application/grpc"
                                  or ctype.startswith(b"application/grpc+"))


def grpc_local_reply_head(status: int, body: bytes, grpc_status: int | None,
                          extra: list[tuple[bytes, bytes]] | None = None,
                          head_request: bool = False) -> ResponseHead:
    """A local reply to a gRPC request, as Envoy makes it: the headers in `extra` (a filter's or
    the route's), then `grpc_reply_headers`."""
    headers = Headers(list(extra) if extra else [])
    grpc_reply_headers(headers, status, body, grpc_status, head_request)
    return ResponseHead(200, headers)


def grpc_reply_headers(headers: Headers, status: int, body: bytes, grpc_status: int | None,
                       head_request: bool, json_body: bool = False) -> None:
    """Envoy's prepareLocalReply for a gRPC request, on the reply's `headers` (its HTTP status
    becomes 200, trailers-only style): content-type application/grpc; grpc-status unless the
    headers have one (`grpc_status`, else mapped from the HTTP `status`); the body as a
    percent-encoded grpc-message, unless the request was HEAD (a JSON body's trailing newline
    dropped); no content-length (HTTP/1.1's codec says 0, or for HEAD transfer-encoding:
    chunked; HTTP/2 has none)."""
    headers.remove(b"content-type")
    headers.add(b"content-type", b"application/grpc")
    if not headers.get(b"grpc-status"):
        headers.remove(b"grpc-status")
        code = grpc_status if grpc_status is not None else _HTTP_TO_GRPC.get(status, _GRPC_UNKNOWN)
        headers.add(b"grpc-status", b"%d" % code)
    if body and not head_request:
        if json_body and body.endswith(b"\n"):
            body = body[:-1]
        headers.remove(b"grpc-message")
        headers.add(b"grpc-message", grpc_message(body))
    headers.remove(b"content-length")
