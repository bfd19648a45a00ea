"""Local replies: responses the proxy writes itself, worded as Envoy words them.

Must not: write to sockets (the stream encodes the head it returns).
"""

from __future__ import annotations

from .headers import Headers, ResponseHead

__all__ = ["local_reply_head", "UPSTREAM_RESET_PREFIX", "reset_body"]

UPSTREAM_RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


def reset_body(reason: str) -> bytes:
    """Envoy's 503 body for an upstream reset before response headers."""
    return UPSTREAM_RESET_PREFIX + reason.encode()


def local_reply_head(status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> ResponseHead:
    items = [(b"content-length", b"%d" % len(body))]
    if body:
        items.append((b"content-type", b"text/plain"))
    if extra:
        items.extend(extra)
    return ResponseHead(status, Headers(items))
