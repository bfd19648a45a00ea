"""HTTP/2 client side, sans-I/O: what the upstream HTTP/2 connection (http/http2_client_connection.py)
needs beyond the `h2` library: a request head as HTTP/2 header fields, a response header block
as the router's ResponseHeaders, and h2's connection made to honour a graceful GOAWAY.

Must not: do I/O or keep state (pure functions; the connection class is per connection).
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection

from .events import ResponseHeaders
from .hpack_codec import install as install_hpack

__all__ = ["request_fields", "response_headers", "new_client_connection"]

# RFC 9113 §8.2.2: connection-specific header fields are not sent in HTTP/2 (`te` is, only as
# "trailers"); `host` becomes :authority.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade", b"host", b"te"})
_CONFIG = H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)


def new_client_connection() -> H2Connection:
    """A client-side h2 connection (bytes header names and values, inbound headers checked)."""
    conn = _ClientH2Connection(config=_CONFIG)
    install_hpack(conn)
    return conn


def request_fields(head) -> list[tuple[bytes, bytes]]:
    """The request head as HTTP/2 header fields (pseudo-headers first); :scheme is the
    downstream request's (Envoy keeps it whatever the upstream's transport)."""
    fields = [(b":method", head.method), (b":scheme", head.scheme or b"http"),
              (b":authority", head.authority or head.headers.get(b"host") or b""),
              (b":path", head.path)]
    connection_named: set[bytes] = set()
    for name, value in head.headers.fields:
        if name.lower() == b"connection":
            connection_named.update(t.strip().lower() for t in value.split(b","))
    for name, value in head.headers.fields:
        n = name.lower()
        if n in _CONNECTION_SPECIFIC or n in connection_named:
            if n == b"te" and b"trailers" in [t.strip().lower() for t in value.split(b",")]:
                fields.append((b"te", b"trailers"))
            continue
        fields.append((n, value))
    if head.method == b"CONNECT":  # RFC 9113 §8.5: no :scheme, no :path
        fields = [f for f in fields if f[0] not in (b":scheme", b":path")]
    return fields


def response_headers(fields) -> ResponseHeaders:
    """h2's validated response header block -> the router's ResponseHeaders."""
    status = 0
    headers = []
    content_length = None
    for name, value in fields:
        if name[:1] == b":":
            if name == b":status":
                status = int(value)
            continue
        if name == b"content-length":
            content_length = int(value)
        headers.append((name, value))
    return ResponseHeaders(status, b"", b"2", headers, True, content_length, False)


class _ClientH2Connection(H2Connection):
    """h2's connection, which after a GOAWAY refuses every later frame (its state machine goes
    CLOSED): RFC 9113 §6.8 lets the streams up to last_stream_id finish, so ours stays open
    to receive them (we open no new stream after a GOAWAY: capacity is 0)."""

    def _receive_goaway_frame(self, frame):
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events
