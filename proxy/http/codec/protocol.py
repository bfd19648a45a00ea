"""The server-side codec seam: what the HTTP connection manager (HCM) drives and what it is told.

A downstream connection's codec turns bytes into per-stream calls on its `ServerCodecCallbacks`
(the HCM) and the HCM's per-stream responses into bytes on the connection. Streams are named
by an int id the codec chooses; any number may be open at once (HTTP/2), or one at a time
(HTTP/1.1: the codec presents pipelined requests one after another, holding the next request's
bytes until the response before it is complete). The HCM never looks at the protocol: what a
stream reset, a go-away or flow control means on the wire is the codec's business.

The codec is made when the first bytes decide which protocol the connection speaks
(`ServerCodecFactory`, hcm_factory.server_codec_factory): HTTP/1.1 (http1_server.py) or
HTTP/2 (http2_server.py, h2c with prior knowledge; ALPN over TLS later).
The upstream (client) side of the seam is in client_protocol.py.

Thread affinity: a codec and its callbacks belong to one connection on one worker.
Must not: block, or call back into the HCM from inside an `encode_*` call.
"""

from __future__ import annotations

from typing import Protocol

from .errors import CodecError
from .events import RequestHeaders

__all__ = ["ServerCodec", "ServerCodecCallbacks", "ServerCodecFactory", "Transport",
           "HeaderList"]

HeaderList = list[tuple[bytes, bytes]]


class Transport(Protocol):
    """The part of network.Connection a codec writes to (its bytes go out in order)."""

    def write(self, data: bytes) -> None: ...

    def read_disable(self, disable: bool) -> None: ...


class ServerCodecCallbacks(Protocol):
    """What a server codec tells its connection manager, per stream, in wire order."""

    def on_stream_headers(self, stream_id: int, head: RequestHeaders, end_stream: bool) -> None:
        """A new stream and its request head. `end_stream`: the request has no body."""

    def on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Request body bytes (b"" with end_stream: the end of the request)."""

    def on_stream_trailers(self, stream_id: int, trailers: HeaderList) -> None:
        """The request's trailers: its end."""

    def on_stream_reset(self, stream_id: int, reason: str) -> None:
        """The peer abandoned this stream alone (HTTP/2 RST_STREAM); others go on."""

    def on_stream_watermark(self, stream_id: int, above: bool) -> None:
        """A multiplexing codec holds more of this stream's response than the buffer limit
        (True: stop reading its upstream) or has sent it down to half of that (False)."""

    def on_codec_error(self, stream_id: int | None, error: CodecError) -> None:
        """Input the codec refuses. `stream_id`: the stream it concerns (which is answered with
        error.status when its response has not started), or None: a request whose head never
        parsed. `error.status` 0: a connection error the codec answered on the wire itself
        (HTTP/2's GOAWAY); the connection closes. The codec accepts no more input after an
        error."""


class ServerCodec(Protocol):
    """One downstream connection's codec. Every `encode_*` writes to the Transport it was made
    with; `stream_id` is one the codec announced with on_stream_headers."""

    protocol: str  # the codec's protocol: "HTTP/1.1" (also serving HTTP/1.0 requests), later "HTTP/2"
    # A request head has begun and is not complete, with no stream for it yet (HTTP/1.1
    # reads heads byte by byte; the HCM times such a head from its first byte).
    head_in_progress: bool
    # Input is held behind a stream that is not finished (the next pipelined request, or bytes
    # after an upgrade request): `resume()` delivers it once the HCM is ready.
    holding: bool

    def dispatch(self, data: bytes) -> None:
        """Bytes from the peer (b"": its FIN). Calls the callbacks; never raises CodecError."""

    def resume(self) -> None:
        """Deliver the input held behind a finished stream. Called from the event loop, never
        from inside another stream's call chain."""

    def encode_continue(self, stream_id: int) -> None:
        """The interim `100 Continue` for a request that expects it."""

    def encode_headers(self, stream_id: int, status: int, headers: HeaderList,
                       end_stream: bool) -> None: ...

    def encode_response(self, stream_id: int, status: int, headers: HeaderList,
                        body: bytes) -> None:
        """A whole response (head, body, end) in one write: the usual proxied response."""

    def encode_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...

    def encode_trailers(self, stream_id: int, trailers: HeaderList) -> None: ...

    def reset_stream(self, stream_id: int) -> bool:
        """Abandon one stream on the wire. False when the protocol cannot end a stream alone
        (HTTP/1.1): then the connection must close."""

    def go_away(self) -> None:
        """Take no new streams: streams in progress finish. HTTP/1.1: the response being
        written next says `connection: close`."""

    def read_disable_stream(self, stream_id: int, disable: bool) -> None:
        """Flow control: stop (or resume) taking this stream's request bytes. HTTP/1.1 pauses
        the connection's reading; a multiplexing codec withholds the stream's window.

        Bytes consumed: a stream's request bytes count as consumed once `on_stream_data` has
        handed them on (to the filter chain, then the upstream's write buffer), unless the
        stream is read-disabled: the HCM's filters and router disable it while what they hold
        is above its watermark. So an HTTP/2 codec acknowledges a DATA frame (opens the
        window) when on_stream_data returns and the stream is not disabled, and otherwise when
        it is re-enabled: a slow upstream stalls its own stream only."""

    def stream_ended(self, stream_id: int) -> bool:
        """The HCM is done with this stream (its response complete, or reset). True when the
        connection must now close (HTTP/1.1: `connection: close` went out, the request was
        not read to its end, or the connection became a tunnel that ended)."""


class ServerCodecFactory(Protocol):
    """Chooses and makes the codec for a connection from its first bytes (later: ALPN)."""

    def __call__(self, first_bytes: bytes, transport: Transport,
                 callbacks: ServerCodecCallbacks) -> ServerCodec: ...
