"""ActiveStream: one request/response exchange of an HTTP connection manager.

The stream runs its HTTP filter chain (it is a FilterManager: filter_manager.py) and is what
filters call back (`encode_headers`, `send_local_reply`, `continue_decoding`, `route()`...).
At the end of the encoder chain it writes the response (`_write_headers`, `_write_data`,
`_write_trailers`): Envoy's response header handling (date, server, via, x-request-id echo),
then the connection's codec. Its connection manager (conn_manager.py) owns its life:
creation, timeouts, logging, and what happens next on the connection.

A stream is its own StreamInfo: the facts access loggers read are fields of this object (one
object per request instead of two), and the connection-level ones (addresses, connection id)
are read from the connection manager when a logger asks.
A stream's lifecycle is one field, `state`, of the flags in stream_state.py;
`request_complete`, `closed`... are read-only views of it for filters. Its id is the one its codec gave it (`stream_id`).

Thread affinity: the worker that owns the connection. Must not: read from sockets.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..access_log.stream_info import StreamInfo
from .filter_manager import _UNRESOLVED, FilterManager
from .headers import RequestHead, ResponseHead, append_via
from .stream_state import (CLOSED, REQUEST_COMPLETE, RESPONSE_COMPLETE, RESPONSE_STARTED,
                           UPGRADE_ACCEPTED, UPGRADED)

if TYPE_CHECKING:
    from .conn_manager import ConnectionManager

__all__ = ["ActiveStream"]


class ActiveStream(FilterManager, StreamInfo):
    """One request/response exchange, its StreamInfo and its filter chain. Owned by its
    ConnectionManager, which knows it by `stream_id`."""

    # Slots for StreamInfo's per-request fields too (they shadow its class defaults): a slot
    # store is cheaper than an instance dict's, and a stream takes a dozen of them.
    __slots__ = ("hcm", "ctx", "stream_id", "head", "state", "upgrade",
                 "last_activity", "idle_timeout", "duration_deadline",
                 "start_time", "start_monotonic", "request_complete_monotonic",
                 "first_upstream_tx_monotonic", "first_upstream_rx_monotonic",
                 "response_start_monotonic", "end_monotonic", "request_headers",
                 "response_headers", "response_trailers", "response_code",
                 "response_code_details", "response_flags", "bytes_received", "bytes_sent",
                 "upstream_host", "upstream_cluster", "upstream_local_address", "route_name",
                 "requested_server_name", "upstream_transport_failure_reason", "upstream_ssl",
                 "upstream_request_attempt_count", "active_span")

    def __init__(self, hcm: ConnectionManager, stream_id: int, head: RequestHead,
                 upgrade: bytes | None, start_time: float, start_monotonic: float) -> None:
        self.hcm = hcm
        self.ctx = hcm.ctx
        self.stream_id = stream_id
        self.head = self.request_headers = head
        self.init_filters()
        self.state = 0
        self.upgrade = upgrade
        self.start_time = start_time
        self.start_monotonic = self.last_activity = start_monotonic  # for stream_idle_timeout
        # The route's idle_timeout, when it overrides the HCM's; when max_stream_duration (or
        # a grpc-timeout the route honours) ends the stream, on the monotonic clock.
        self.idle_timeout = self.duration_deadline = None
        self.request_complete_monotonic = self.first_upstream_tx_monotonic = None
        self.first_upstream_rx_monotonic = self.response_start_monotonic = None
        self.end_monotonic = self.response_headers = self.response_trailers = None
        self.response_code = self.response_code_details = None
        self.response_flags = ()
        self.bytes_received = self.bytes_sent = self.upstream_request_attempt_count = 0
        self.upstream_host = self.upstream_cluster = self.upstream_local_address = None
        self.route_name = self.upstream_transport_failure_reason = self.upstream_ssl = None
        self.active_span = None  # the tracer's span (proxy/tracing), when the HCM traces
        # %REQUESTED_SERVER_NAME%: what tls_inspector read (Envoy 1.40 leaves it empty when the
        # TLS transport socket alone terminates TLS, SNI or not).
        self.requested_server_name = hcm.requested_server_name

    # -- lifecycle views (of `state`) ---------------------------------------------------------
    @property
    def request_complete(self) -> bool:
        return bool(self.state & REQUEST_COMPLETE)

    @property
    def response_started(self) -> bool:
        return bool(self.state & RESPONSE_STARTED)

    @property
    def response_complete(self) -> bool:
        return bool(self.state & RESPONSE_COMPLETE)

    @property
    def upgraded(self) -> bool:
        return bool(self.state & UPGRADED)

    @property
    def closed(self) -> bool:
        return self.state >= CLOSED

    # The stream's dynamic metadata: namespace -> dict (set_metadata, jwt_authn and Lua write
    # it), None until the first write. It lives on the request head, where route matching's
    # `dynamic_metadata` matchers read it. Envoy resolves the route before any filter runs, so
    # the first write resolves a route no filter asked for yet (set_metadata writes before it
    # asks for its per-route config): a route sees the metadata only once a filter clears the
    # route cache, as in Envoy. (Not told apart: a cache cleared before the stream's first
    # write, which Envoy would resolve with that write.)
    @property
    def dynamic_metadata(self):
        return self.head.dynamic_metadata

    @dynamic_metadata.setter
    def dynamic_metadata(self, md) -> None:
        if self.cached_route is _UNRESOLVED:
            self.route()
        self.head.dynamic_metadata = md

    # The client's address when the HCM derived it from the request (x-forwarded-for or a
    # detection extension: request_headers.py), "ip:0"; None: the connection's peer. Kept in
    # the instance dict once set, so a request that derives nothing pays nothing.
    derived_remote_address = None
    # An internal request kept its x-envoy-force-trace: the response echoes x-request-id.
    force_trace = False
    # The request is internal (request_headers.py: x-envoy-internal: true); `steering`: it also
    # kept an x-envoy-* field the router acts on (router/steering.py). Instance dict once set.
    internal_request = False
    steering = False

    # StreamInfo's connection-level facts, for access loggers.
    @property
    def downstream_remote_address(self) -> str:
        """Envoy's stream remote address: the derived one, else the connection's (the peer,
        or what a PROXY protocol header said)."""
        derived = self.derived_remote_address
        return self.hcm.remote if derived is None else derived

    @property
    def downstream_direct_remote_address(self) -> str:
        return self.hcm.direct_remote

    @property
    def downstream_local_address(self) -> str:
        return self.hcm.local

    @property
    def downstream_ssl(self):
        """The downstream connection's TlsInfo (None: plaintext)."""
        return self.hcm.tls

    @property
    def connection_id(self) -> int:
        return self.hcm.connection.id

    @property
    def protocol(self) -> str:
        version = self.head.http_version  # b"1.1", b"1.0" (b"2" from an HTTP/2 codec)
        return "HTTP/1.1" if version == b"1.1" else "HTTP/" + version.decode("ascii")

    # -- the wire: what the end of the encoder chain calls --------------------------------
    def _write_headers(self, head: ResponseHead, end_stream: bool, body: bytes | None = None) -> None:
        """A response head: Envoy's response header rules for this HCM, then the codec.
        With `body` (then `end_stream` is True), the whole response: head, body and end go
        out as one write (the usual upstream response arrives in one read)."""
        if self.state >= CLOSED:
            return
        hcm = self.hcm
        self.state |= RESPONSE_STARTED
        self.response_headers = head
        status = self.response_code = head.status
        self.response_start_monotonic = self.last_activity = time.monotonic()
        ctx = hcm.ctx
        cfg = ctx.config
        headers = head.headers
        for name, _ in headers.fields:  # Envoy keeps the upstream's date, else adds one
            if name == b"date":
                break
        else:
            headers.fields.append((b"date", ctx.worker.http_date()))
        if cfg.via:
            append_via(headers, ctx.via)
        if cfg.always_set_request_id_in_response or self.force_trace:
            rid = self.head.headers.get(b"x-request-id")
            if rid is not None:
                headers.set(b"x-request-id", rid)
        span = self.active_span
        if span is not None and (span.response_operation is not None or ctx.tracer.egress):
            ctx.tracer.response_headers(span, headers)  # x-envoy-decorator-operation (tracing)
        # (OVERWRITE: the codec writes `server`, see HcmContext.response_fields.)
        if cfg.server_header_transformation == "APPEND_IF_ABSENT":
            headers.set_default(b"server", ctx.server_name)
        codec = hcm.codec
        if ctx.worker.draining:
            codec.go_away()
        if self.upgrade is not None and (status == 101 or (
                self.upgrade == b"CONNECT" and 200 <= status < 300)):
            self.state |= UPGRADED  # a tunnel from here (RFC 9110 §9.3.6 for CONNECT)
        if body:  # the whole response (what encode_data and encode_end do); b"": headers only
            self.bytes_sent += len(body)
            codec.encode_response(self.stream_id, status, headers.fields, body)
            self.state |= RESPONSE_COMPLETE
            if self.upgrade is not None:
                hcm.resume_codec()
            hcm.stream_done(self)
            return
        codec.encode_headers(self.stream_id, status, headers.fields, end_stream)
        if self.upgrade is not None:
            hcm.resume_codec()
        if end_stream:
            self.state |= RESPONSE_COMPLETE
            hcm.stream_done(self)

    def _write_data(self, data: bytes, end_stream: bool) -> None:
        if self.state >= CLOSED:
            return
        if data:
            self.bytes_sent += len(data)
            self.last_activity = time.monotonic()
        if end_stream:
            # (A tunnel's end: HTTP/2 sends END_STREAM; HTTP/1.1 writes nothing, its tunnel
            # ends with the connection.)
            self.hcm.codec.encode_data(self.stream_id, data, True)
            self.state |= RESPONSE_COMPLETE
            self.hcm.stream_done(self)
        elif data:
            self.hcm.codec.encode_data(self.stream_id, data, False)

    def _write_trailers(self, trailers) -> None:
        """The end of the response, with trailers."""
        if self.state & (CLOSED | RESPONSE_COMPLETE):
            return
        self.state |= RESPONSE_COMPLETE
        # (A tunnel has no trailers: its end alone.)
        self.hcm.codec.encode_trailers(self.stream_id, None if self.state & UPGRADED else trailers)
        self.hcm.stream_done(self)

    def accept_upgrade(self) -> None:
        """The route allows this stream's upgrade (or CONNECT): Envoy counts it then, whatever
        the answer (downstream_cx_upgrades_total and _active, until the stream ends)."""
        if not self.state & UPGRADE_ACCEPTED:
            self.state |= UPGRADE_ACCEPTED
            st = self.hcm.stats
            st.downstream_cx_upgrades_total.value += 1
            st.downstream_cx_upgrades_active.value += 1

    def reset(self, details: str = "") -> None:
        """Abort the stream: its codec resets it on the wire (HTTP/1.1: by closing the
        connection); the connection's other streams go on."""
        if self.state >= CLOSED:
            return
        if details and not self.response_code_details:
            self.response_code_details = details
        self.hcm.stats.downstream_rq_tx_reset.value += 1
        self.hcm.reset_stream(self)

    def close_after_bad_request(self) -> None:
        """Envoy's ActiveStream::onLocalReply: a 400 local reply over HTTP/1.x (a messaging
        error) closes the connection after it."""
        if self.head.http_version != b"2":
            self.hcm.codec.go_away()

    def abandon_request(self) -> None:
        """The response will end this stream before its request is read to the end."""
        self.hcm.codec.abandon_request(self.stream_id)

    def set_idle_timeout(self, timeout: float) -> None:
        """The route's `idle_timeout` replaces the HCM's stream_idle_timeout for this stream
        (0 disables it)."""
        self.idle_timeout = timeout
        self.hcm.watch_stream(self)

    def set_max_duration(self, timeout: float) -> None:
        """Envoy's max_stream_duration timer: the stream ends `timeout` seconds after it began
        (408, or 504 once the request is complete: "downstream duration timeout")."""
        self.duration_deadline = self.start_monotonic + timeout
        self.hcm.watch_stream(self)

    def read_disable_downstream(self, disable: bool) -> None:
        self.hcm.codec.read_disable_stream(self.stream_id, disable)

    # The codec holds more of this stream's response than the buffer limit (HTTP/2: the
    # client's window is shut): set by the HCM's on_stream_watermark. A class default, kept in
    # the instance dict once set, so an HTTP/1.1 stream pays nothing.
    codec_above_high_watermark = False

    def downstream_above_high_watermark(self) -> bool:
        return self.hcm.connection.above_high_watermark or self.codec_above_high_watermark

    # An internal redirect's RedirectState (proxy/router/internal_redirect.py), handed from a
    # stream to the one recreated for it: in the instance dict, set only by a redirect.
    internal_redirect_state = None

    def recreate(self, head: ResponseHead, body: bytes) -> None:
        """Envoy's recreateStream, from the router that followed an internal redirect (its
        request rewritten in `self.head`, `body` the request body kept): this stream ends,
        logged with the upstream's 3xx `head` and details `internal_redirect`, and a new one
        runs the whole filter chain for the rewritten request. The connection manager does it
        once the upstream callback that decided it has returned (Envoy defers the old
        stream's deletion the same way): the new stream's router may take the very
        connection the 3xx came on."""
        self.response_code = head.status
        self.response_code_details = "internal_redirect"
        self.response_headers = head
        hcm = self.hcm
        self.ctx.worker.dispatcher.defer(lambda: hcm.recreate_stream(self, body))

    # A filter's setDecoderBufferLimit (the buffer filter): kept in the instance dict, not a
    # slot, so a stream that never sets it pays nothing at creation.
    decoder_buffer_limit = None

    def set_decoder_buffer_limit(self, limit: int) -> None:
        """Envoy's setDecoderBufferLimit: the stream's one buffer limit, from now on."""
        self.decoder_buffer_limit = limit

    def buffer_limit(self) -> int:
        """The stream's buffer limit: its connection's (per_connection_buffer_limit_bytes),
        unless a filter set another (set_decoder_buffer_limit)."""
        limit = self.decoder_buffer_limit
        return self.hcm.connection.limit if limit is None else limit
