"""HTTP/2 client side, sans-I/O: what the upstream HTTP/2 connection (http/http2_client_connection.py)
needs beyond the `h2` library: a request head as HTTP/2 header fields, a response header block
as the router's ResponseHeaders, and h2's connection made to honour a graceful GOAWAY.

Must not: do I/O or keep state (pure functions; the connection class is per connection).
"""

from __future__ import annotations

import re

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.exceptions import ProtocolError

from .events import ResponseHeaders
from .hpack_codec import install as install_hpack

__all__ = ["request_fields", "trailer_fields", "response_headers", "new_client_connection",
           "checked_fields", "extended_connect_fields", "upgrade_response"]

# RFC 9113 §8.2.2: connection-specific header fields are not sent in HTTP/2 (`te` is, only as
# "trailers"); `host` becomes :authority.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade", b"host", b"te"})
# h2 validates what the peer sends; what ftproxy sends it built itself and checks below
# (checked_fields: h2's outbound validation and normalisation cost ~40 % of a send_headers).
_CONFIG = H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True,
                          validate_outbound_headers=False, normalize_outbound_headers=False)
_FIELD_NAME = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+\Z")   # RFC 9110 token, lower case
_VALUE_FLAW = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def checked_fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`fields` as h2's outbound checks would let them through: a name that is not a
    lower-case token, or a value with NUL, CR or LF, raises h2's ProtocolError (the stream
    fails, 502 UPE); surrounding spaces and tabs are stripped from a value (h2 normalised
    them). Cheap: two compiled regexes a field."""
    out = fields
    for i, (name, value) in enumerate(fields):
        if _FIELD_NAME.match(name) is None:
            raise ProtocolError(f"invalid header field name {name!r}")
        if _VALUE_FLAW.search(value) is not None:
            if b"\0" in value or b"\r" in value or b"\n" in value:
                raise ProtocolError(f"invalid header field value for {name!r}")
            if out is fields:
                out = list(fields)
            out[i] = (name, value.strip(b" \t"))
    return out


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
    return checked_fields(fields)


def extended_connect_fields(head, protocol: bytes) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 upgrade request (`Upgrade: protocol`) as an extended CONNECT (RFC 8441),
    Envoy's transformUpgradeRequestFromH1toH2: :method CONNECT, :protocol the upgrade token,
    :scheme and :path kept; `upgrade` and `connection` dropped (request_fields drops them), and
    a `content-length: 0`. The original method is lost, as in Envoy."""
    fields = [(b":method", b"CONNECT"), (b":protocol", protocol)]
    for name, value in request_fields(head):
        if name == b":method" or (name == b"content-length" and value == b"0"):
            continue
        fields.append((name, value))
    return fields


def upgrade_response(r: ResponseHeaders, protocol: bytes) -> ResponseHeaders:
    """The answer to an extended CONNECT as the HTTP/1.1 upgrade's (Envoy's
    transformUpgradeResponseFromH2toH1): a 200 is a 101 with `upgrade: <protocol>` and
    `connection: upgrade`; any other status stays what it is (the upgrade was refused)."""
    if r.status != 200:
        return r
    return ResponseHeaders(101, b"", r.http_version,
                           r.headers + [(b"upgrade", protocol), (b"connection", b"upgrade")],
                           True, None, False)


def trailer_fields(trailers) -> list[tuple[bytes, bytes]]:
    """Request trailers as HTTP/2 fields: names lower-cased; pseudo-headers and the
    connection-specific fields, which no HTTP/2 trailer may carry, left out."""
    return [(n, v) for n, v in ((name.lower(), value) for name, value in trailers)
            if n[:1] != b":" and n not in _CONNECTION_SPECIFIC]


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
