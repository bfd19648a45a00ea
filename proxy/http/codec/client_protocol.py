"""The client-side codec seam: what an upstream connection pool manages, what the router holds for
one request, and what the router is told.

Pools hand out streams, not connections (httpcore's `interfaces.py` is the model, Envoy's
`ConnectionPool::Instance` / `ClientConnection` the vocabulary):

- a `PoolConnection` is one upstream connection speaking one protocol. It says how many more
  streams it may take (`capacity`: 1 for an idle HTTP/1.1 connection, 0 while it serves its
  request; the peer's concurrent-stream limit minus the open streams for a multiplexing
  protocol) and answers small predicates (`is_available`, `is_idle`, `has_expired`); the pool
  decides which connection a request gets, when to open one and when to close one;
- `new_stream(callbacks)` hands out an `UpstreamStream`: one request/response exchange. A
  connection whose capacity is never more than 1 may be its own stream (HTTP/1.1 is: no
  object per request);
- the stream reports the response to its `UpstreamStreamCallbacks` (the router), and the
  connection reports its own life to its `PoolCallbacks` (the pool).

The pool picks the connection class from its key's protocol (conn_pool.CLIENT_CONNECTIONS):
HTTP/1.1 (codec_client.UpstreamHttpConnection), HTTP/2 (http2_client_connection.Http2ClientConnection), an
in-test multiplexing codec in the tests. Neither the pool nor the router knows which one it has.
A mixed pool (auto_config) opens an alpn_client_connection.AlpnClientConnection, which once
its TLS handshake is done hands its connected Connection to the class ALPN chose
(`PoolConnectionFactory.adopt`) and the pool puts that one in its place
(`on_protocol_selected`): from then on the pool holds an ordinary connection of that class.

Thread affinity: a pool, its connections, their streams and the streams' callbacks belong to one
worker; every call below happens on that worker's dispatcher.
Re-entrancy: a callback may call back into the stream it came from (the router releases or
resets its stream from `on_upstream_complete` or `on_upstream_headers`); a connection must
expect that and must not touch a stream after telling the pool it ended.
Must not: block, or read another stream's state.
"""

from __future__ import annotations

from typing import Protocol

from .events import ResponseHeaders

__all__ = ["UpstreamStream", "UpstreamStreamCallbacks", "PoolConnection", "PoolCallbacks",
           "PoolConnectionPredicates",
           "PoolConnectionFactory", "HeaderList", "CONNECTING", "READY", "BUSY", "CLOSED"]

HeaderList = list[tuple[bytes, bytes]]

# A pooled connection's states (its one `state` field). The connection sets CONNECTING (when
# made) and CLOSED (when its socket is gone); the pool moves a connected one between READY (it
# may take a stream: in the pool's ready list) and BUSY (it takes none now: full, retiring or
# going away). CONNECTING -> READY <-> BUSY -> CLOSED; any state -> CLOSED, set as soon as its
# socket is closed (before on_closed): a READY connection with capacity is available.
CONNECTING, READY, BUSY, CLOSED = "CONNECTING", "READY", "BUSY", "CLOSED"


class UpstreamStreamCallbacks(Protocol):
    """What the holder of an upstream stream (the router) is told, in wire order. After
    `on_upstream_complete` or `on_upstream_reset` nothing more is said about the stream."""

    def on_upstream_headers(self, ev: ResponseHeaders, body: bytes | None = None) -> None:
        """The response head. With `body` (b"" for none), the whole response: head, body and
        end arrived together (the usual case), handed over in one call; the response is then
        complete."""

    def on_upstream_data(self, data: bytes) -> None:
        """Response body bytes."""

    def on_upstream_complete(self, trailers: HeaderList | None) -> None:
        """The response's end (with its trailers, if any)."""

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        """The stream ended without a complete response: its connection closed or failed to
        connect, the peer reset this stream alone, or it answered bytes the codec refuses.
        `flag`/`status`: Envoy's response flag and the local reply's status; `reused`: the
        connection had served streams before this one (informational: as in Envoy, only the
        route's retry policy decides whether a failed request is retried);
        `transport_failure`: Envoy's upstream transport failure reason. The stream is over:
        its holder must not call it again."""

    def on_upstream_watermark(self, above: bool) -> None:
        """The stream's send buffer crossed its high (`above`) or low watermark: pause or
        resume reading the request body from downstream."""


class UpstreamStream(Protocol):
    """One request/response exchange on a pooled connection, held by one router."""

    # The connection's local address ("ip:port"), for access logs.
    local_address: str

    def send_headers(self, head, end_stream: bool, upgrade: bool) -> None:
        """The request head (a headers.RequestHead). `end_stream`: the request has no body
        and no trailers to follow; else `send_data`/`end` follow. `upgrade`: the request asks to
        switch protocols (only then may a 101 answer it; its stream then becomes a tunnel)."""

    def send_data(self, data: bytes) -> None:
        """Request body bytes."""

    def end(self, trailers: HeaderList | None) -> None:
        """The request's end, with its trailers if any. Called once, unless send_headers said
        end_stream."""

    def shutdown_write(self) -> None:
        """A tunnel's half-close: the downstream sent its FIN; no more bytes go up."""

    def read_disable(self, disable: bool) -> None:
        """Flow control: stop (True) or resume (False) taking this stream's response bytes;
        calls are counted in pairs. HTTP/1.1 pauses the connection's reading; a multiplexing
        protocol withholds the stream's window (others go on)."""

    def release(self, reusable: bool) -> None:
        """The holder is done with the stream. `reusable`: the exchange ended cleanly from the
        holder's side (the whole request went out). The connection decides what that means:
        HTTP/1.1 goes back to the pool only if the response also completed cleanly, else it
        closes; a multiplexing protocol resets a stream that has not ended both ways. A stream
        released before `send_headers` never existed on the wire."""

    def reset(self) -> None:
        """Abandon the stream (timeout, downstream gone): no callback follows. HTTP/1.1 has
        no way to end one exchange alone, so its connection closes; a multiplexing protocol
        resets the one stream and the others go on."""


class PoolCallbacks(Protocol):
    """What a pooled connection tells its pool (conn_pool.HttpConnPool)."""

    idle_timeout: float  # the cluster's idle_timeout (0: none), for has_expired

    def on_connected(self, conn: PoolConnection) -> None:
        """The connection (and its transport) is up: it may take `capacity` streams."""

    def on_stream_done(self, conn: PoolConnection) -> None:
        """One of its streams ended (released or reset by its holder, reset by the peer):
        `active_streams` and `capacity` already count it. Said once per stream handed out,
        except for streams that end with the connection (see on_closed)."""

    def on_capacity_changed(self, conn: PoolConnection) -> None:
        """`capacity` changed other than by a stream starting or ending (the peer's settings
        or a GOAWAY)."""

    def on_protocol_selected(self, conn: PoolConnection, chosen: PoolConnection, protocol: str) -> None:
        """A mixed pool's connecting connection negotiated `protocol` ("h2" or "http/1.1"):
        `chosen` (its adopting connection, still CONNECTING) replaces it; `chosen`'s
        on_connected follows."""

    def on_closed(self, conn: PoolConnection, prev_state: str, reason: str, lost: int) -> None:
        """The connection is gone (`reason`: network.connection.CloseReason). `prev_state`:
        CONNECTING for a failed connect. `lost`: how many active streams ended with it (their
        holders are told on_upstream_reset right after)."""


class PoolConnection(Protocol):
    """One upstream connection in a pool. Made by the pool (PoolConnectionFactory), which owns
    it until it closes; it starts connecting when made."""

    # See CONNECTING/READY/BUSY/CLOSED above.
    state: str
    # Streams it may still take. Set from the protocol's expectation when made (the pool counts
    # a connecting connection with it when deciding to open another); once connected, a change
    # other than a stream starting or ending is reported with on_capacity_changed.
    capacity: int
    active_streams: int      # streams handed out and not yet ended
    total_streams: int       # streams handed out over its life (max_requests_per_connection)
    idle_since: float        # time.monotonic() when active_streams last became 0
    holds_slot: bool         # the pool's: it holds a max_connections circuit-breaker slot
    # The cluster.<name>.* counter of connections of this protocol (upstream_cx_http1_total),
    # or None.
    cx_total_stat: str | None

    def is_available(self) -> bool:
        """Connected, open, and `capacity > 0`: `new_stream` may be called."""

    def is_idle(self) -> bool:
        """No active stream."""

    def has_expired(self, now: float) -> bool:
        """Should be closed rather than used: idle for the pool's idle_timeout as of `now`
        (time.monotonic()), or closed."""

    def new_stream(self, callbacks: UpstreamStreamCallbacks) -> UpstreamStream:
        """Take one stream (only when is_available()); `capacity` drops by one."""

    def close(self) -> None:
        """Close now (its active streams are reset, their holders told)."""


class PoolConnectionPredicates:
    """PoolConnection's three predicates, the same for every connection class (a mixin: the
    class has PoolConnection's attributes, its `connection` (network Connection) and `pool`
    (its PoolCallbacks))."""

    __slots__ = ()

    def is_available(self) -> bool:
        return (self.capacity > 0 and self.state not in (CONNECTING, CLOSED)
                and not self.connection.closed)

    def is_idle(self) -> bool:
        return self.active_streams == 0

    def has_expired(self, now: float) -> bool:
        if self.connection.closed:
            return True
        timeout = self.pool.idle_timeout
        return bool(timeout) and self.active_streams == 0 and now - self.idle_since >= timeout


class PoolConnectionFactory(Protocol):
    """A PoolConnection class, registered under its protocol name in conn_pool."""

    cx_total_stat: str | None
    # The ALPN names its transport offers over TLS when the cluster's UpstreamTlsContext
    # configures no alpn_protocols (Envoy's ALPN fallback): ("http/1.1",), ("h2",), or both
    # for a mixed pool's connection. Passed to TransportSocketFactory.create.
    alpn: tuple[str, ...]

    def __call__(self, pool: PoolCallbacks, dispatcher, address: tuple[str, int],
                 connect_timeout: float, buffer_limit: int, codec_impl: str, conn_id: int,
                 transport_factory) -> PoolConnection: ...

    # Optional (HTTP/1.1 and HTTP/2 have it: a mixed pool may choose them):
    # adopt(pool, connection, buffer_limit, codec_impl, connect_started) -> PoolConnection:
    # a connection of this class on an already connected network Connection (its transport
    # connected, `protocol()` final), CONNECTING until its `on_connected()` is called, which
    # its maker does next. It becomes the Connection's callbacks.
