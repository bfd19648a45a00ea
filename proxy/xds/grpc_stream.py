"""One bidirectional gRPC streaming call on the main thread: HTTP/2 (h2, prior knowledge) over
a `ClientSocket` on the main Dispatcher, as the active gRPC health checks do.

gRPC is HTTP/2 plus messages framed as 1 byte (compressed flag, always 0 here) + 4 bytes of
big-endian length + the protobuf bytes; the call is a POST with `content-type:
application/grpc` and `te: trailers`, and ends with a `grpc-status` (and `grpc-message`) in
the trailers (or in the headers of a trailers-only answer). `GrpcFramer` is the framing, with
no I/O; `GrpcStream` is the call. Every DATA frame is acknowledged to h2 as it is consumed
(else the peer stalls at the 64 KiB window); messages larger than the peer's window wait for
its WINDOW_UPDATE.

Transport: plaintext (`ClientSocket`) or, when the cluster's transport socket is TLS
(`transport`: its UpstreamTlsContext factory), TLS through that factory — the workers' own
TLS client (proxy/network/client_transport_socket.py): ALPN `h2` unless the context names
its own, SNI from `sni`, its validation_context and client certificate (mTLS), `:scheme
https`. A failed handshake is counted on `cluster.<name>.ssl.*` (`connection_error`, or
the `fail_verify_*` of the check that failed, as Envoy counts them; `handshake` when it
succeeds) and ends the call like a failed connect (`on_close(None, ...)` naming the TLS
failure), so the caller retries with its backoff.

The xDS cluster's `connect_timeout` bounds the TCP connect (and the TLS handshake), and its HTTP/2 options apply to
this connection as to its pools: the receive windows
(`initial_stream_window_size`, `initial_connection_window_size`) and `connection_keepalive`
(PINGs; an unanswered one closes the connection, and the stream is retried).

Callbacks (main thread): `on_open()` once the connection is up and the request headers are
sent; `on_message(bytes)` for each message; `on_close(status, message)` once, when the call
ends for any reason (status None: the connection failed or closed without a gRPC status);
`on_response(status)`, if given, with the response headers' `:status`.
`stats`, if given (proxy/stats/grpc_client_stats.py GrpcCallStats): told the call's life
(connected, the response's :status, bytes sent and received, its end) to charge the cluster's
`upstream_*` stats as Envoy's gRPC client does.
Thread affinity: main thread only.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from proxy.http.codec.hpack_codec import install as install_hpack
from proxy.http.h2_keepalive import Keepalive
from proxy.network.client_transport_socket import TransportClientSocket
from proxy.threads.client_socket import ClientSocket

__all__ = ["GrpcFramer", "GrpcStream", "frame"]

log = logging.getLogger("ftproxy.xds")

XDS_SWITCH_INTERVAL = 0.0002   # seconds: the GIL's switch interval while main decodes a push


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while one message is decoded and applied: decoding a big push
    allocates hundreds of thousands of short-lived (acyclic) objects, which would trigger
    collections — stop-the-world on a free-threaded build, so every worker would pause too.
    They are freed by reference counting; the collector runs again afterwards.
    With a GIL (3.13), the switch interval is lowered meanwhile (5 ms -> XDS_SWITCH_INTERVAL):
    a worker waiting for the GIL while main decodes takes it after that long instead of 5 ms,
    and a request waits for it several times (perf/RESULTS.md, xDS under load)."""
    was = gc.isenabled()
    gc.disable()
    interval = None
    if getattr(sys, "_is_gil_enabled", lambda: True)():
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, XDS_SWITCH_INTERVAL))
    try:
        yield
    finally:
        if interval is not None:
            sys.setswitchinterval(interval)
        if was:
            gc.enable()


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class GrpcFramer:
    """Length-prefixed gRPC messages out of a byte stream (`feed` returns the whole messages)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 5:
            if buf[0] != 0:
                raise ValueError("a compressed gRPC message (no grpc-encoding was offered)")
            n = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + n:
                break
            out.append(bytes(buf[5:5 + n]))
            del buf[:5 + n]
        return out


class GrpcStream:
    def __init__(self, dispatcher, address: tuple[str, int], authority: str, path: str,
                 on_open: Callable[[], None], on_message: Callable[[bytes], None],
                 on_close: Callable[[int | None, str], None], user_agent: bytes = b"ftproxy",
                 http2=None, connect_timeout: float | None = None,
                 on_response: Callable[[bytes], None] | None = None,
                 metadata: Sequence[tuple[bytes, bytes]] = (), stats=None, transport=None) -> None:
        """`metadata`: more request headers, after the call's own (a gRPC service's
        `initial_metadata`); `stats`: the call's stats hook (module docstring), or None;
        `transport`: the cluster's transport socket factory (its `transport_socket`), or None
        (plaintext)."""
        self.dispatcher = dispatcher
        self.stats = stats
        self.on_response = on_response   # the response headers' :status (once, if given)
        self.on_open, self.on_message, self.on_close = on_open, on_message, on_close
        self.framer = GrpcFramer()
        self.pending = bytearray()   # framed bytes waiting for flow-control window
        self.closed = False
        self.status: int | None = None
        self.status_message = ""
        self.keepalive: Keepalive | None = None
        self._connect_timer = None
        self.http2 = http2
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        install_hpack(self.h2)
        if http2 is not None:   # as the cluster's pools' connections (http2_client_connection.py)
            self.h2.local_settings.update({SettingCodes.ENABLE_PUSH: 0,
                                           SettingCodes.INITIAL_WINDOW_SIZE: http2.initial_stream_window_size})
            self.h2.local_settings.acknowledge()
        self.h2.initiate_connection()
        if http2 is not None and http2.initial_connection_window_size > 65535:
            self.h2.increment_flow_control_window(http2.initial_connection_window_size - 65535)
        self.stream_id = self.h2.get_next_available_stream_id()
        secure = transport is not None and transport.implements_secure_transport
        self.h2.send_headers(self.stream_id, [
            (b":method", b"POST"), (b":scheme", b"https" if secure else b"http"), (b":authority", authority.encode()),
            (b":path", path.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), (b"user-agent", user_agent), *metadata])
        if secure:
            # Bound to the cluster's ssl.* stats (cached per cluster by the stats hook).
            bound = stats.transport(transport) if stats is not None else transport
            self.sock = TransportClientSocket(dispatcher, address, bound, self._on_connected,
                                              self._on_data, self._on_closed, alpn=("h2",))
        else:
            self.sock = ClientSocket(dispatcher, address, self._on_connected, self._on_data, self._on_closed)
        if connect_timeout and not self.sock.closed:
            self._connect_timer = dispatcher.call_later(connect_timeout, self._connect_timed_out)
        self._flush()

    # -- sending -----------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        if self.closed:
            return
        self.pending += frame(message)
        self._send_pending()
        self._flush()

    def _send_pending(self) -> None:
        h2c = self.h2
        while self.pending:
            try:
                window = min(h2c.local_flow_control_window(self.stream_id), h2c.max_outbound_frame_size)
            except H2Error:
                return
            if window <= 0:
                return
            chunk = bytes(self.pending[:window])
            try:
                h2c.send_data(self.stream_id, chunk)
            except H2Error as e:
                self._finish(None, f"HTTP/2 error sending: {e}")
                return
            del self.pending[:len(chunk)]

    def _flush(self) -> None:
        if not self.closed:
            out = self.h2.data_to_send()
            if out:
                self.sock.write(out)
                if self.stats is not None:
                    self.stats.on_sent(len(out))

    # -- receiving ---------------------------------------------------------------------------
    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if not self.sock.connected:
            self._finish(None, "connect timeout (the xDS cluster's connect_timeout)")

    def _on_connected(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.disable()
            self._connect_timer = None
        if self.closed:
            return
        if self.stats is not None:
            self.stats.on_connected()
        ka = getattr(self.http2, "connection_keepalive", None)
        if ka is not None:
            self.keepalive = Keepalive(ka, self.dispatcher, self._send_ping, self._keepalive_timeout,
                                       lambda: not self.closed)
        self.on_open()

    def _send_ping(self, payload: bytes) -> None:
        self.h2.ping(payload)
        self._flush()

    def _keepalive_timeout(self) -> None:
        self._finish(None, "keepalive timeout (a PING went unanswered)")

    def _on_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self.stats is not None:
            self.stats.on_received(len(data))
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self._finish(None, f"HTTP/2 protocol error: {e}")
            return
        for ev in events:
            if self.closed:
                return
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if sid != self.stream_id:
                    continue
                try:
                    messages = self.framer.feed(ev.data)
                except ValueError as e:
                    self._reset(str(e))
                    return
                for m in messages:
                    if self.closed:
                        return
                    with gc_paused():
                        self.on_message(m)
            elif isinstance(ev, h2events.ResponseReceived) and sid == self.stream_id:
                self._headers(ev.headers, trailers=False)
                if self.on_response is not None or self.stats is not None:
                    status = next((v for k, v in ev.headers if k == b":status"), b"")
                    if self.stats is not None:
                        self.stats.on_response(status)
                    if self.on_response is not None:
                        self.on_response(status)
            elif isinstance(ev, h2events.TrailersReceived) and sid == self.stream_id:
                self._headers(ev.headers, trailers=True)
            elif isinstance(ev, h2events.StreamEnded) and sid == self.stream_id:
                self._finish(self.status, self.status_message or "stream ended")
            elif isinstance(ev, h2events.StreamReset) and sid == self.stream_id:
                self._finish(None, f"stream reset ({ev.error_code!r})")
            elif isinstance(ev, h2events.ConnectionTerminated):
                self._finish(None, f"GOAWAY ({ev.error_code!r})")
            elif isinstance(ev, h2events.WindowUpdated):
                self._send_pending()
            elif isinstance(ev, h2events.PingAckReceived) and self.keepalive is not None:
                self.keepalive.on_ack()
        self._flush()

    def _headers(self, headers, trailers: bool) -> None:
        for k, v in headers:
            k = k.lower()
            if k == b":status" and v != b"200":
                self.status_message = f"HTTP status {v.decode('latin-1')}"
                self.status = 2 if self.status is None else self.status   # UNKNOWN, as gRPC maps it
            elif k == b"grpc-status":
                try:
                    self.status = int(v)
                except ValueError:
                    self.status = 2
            elif k == b"grpc-message":
                self.status_message = v.decode("utf-8", "replace")

    def _on_closed(self) -> None:
        why = "connection closed" if self.sock.connected else "connection failed"
        failure = getattr(self.sock, "failure_reason", "")
        self._finish(None, f"{why}: {failure}" if failure else why)

    def reset(self, why: str) -> None:
        """End the call from our side (RST_STREAM CANCEL), reported through on_close."""
        self._reset(why)

    def _reset(self, why: str) -> None:
        try:
            self.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            self._flush()
        except H2Error:
            pass
        self._finish(None, why)

    def _finish(self, status: int | None, message: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_timers()
        self.sock.close()
        if self.stats is not None:
            self.stats.on_end()
        self.on_close(status, message)

    def close(self) -> None:
        """Our own close: no callback."""
        if not self.closed:
            self.closed = True
            self._stop_timers()
            self.sock.close()
            if self.stats is not None:
                self.stats.on_end()

    def _stop_timers(self) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        if self._connect_timer is not None:
            self._connect_timer.disable()
            self._connect_timer = None
