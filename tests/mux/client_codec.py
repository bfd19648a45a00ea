"""The mux codec's client side: a PoolConnection that carries up to `max_concurrent_streams`
streams interleaved on one connection (frames.py's wire format), as an HTTP/2 client will.

It is registered with the pool under a test protocol name (`register()`), which is all it
takes for HttpConnPool to open these instead of HTTP/1.1 connections: the proof that the pool
and the router's stream interface are not HTTP/1-shaped. It uses the real network Connection
on the worker's dispatcher, as UpstreamHttpConnection does.

Stream ids are odd and grow (like HTTP/2's client streams). A stream that the router pauses
(`read_disable`) keeps its frames until resumed; the others go on. A RESET from the peer ends
that stream alone (the router is told on_upstream_reset, flag UR); a GOAWAY takes the
connection's capacity to 0 and closes it once its last stream ends.
Thread affinity: the worker that owns its pool.
"""

from __future__ import annotations

import socket
import time

from proxy.http.codec.client_protocol import CLOSED, CONNECTING, PoolConnectionPredicates
from proxy.http.codec_client import lost_stream_reset
from proxy.http.codec.events import ResponseHeaders
from proxy.network.address import format_address
from proxy.network.connection import CloseReason, Connection, ConnectionCallbacks
from proxy.upstream.conn_pool import register_client_connection

from .frames import (DATA, DATA_END, GOAWAY, HEADERS, HEADERS_END, RESET, TRAILERS, FrameReader,
                     frame, header_block, parse_block)

__all__ = ["MUX", "MuxClientConnection", "MuxStream", "register"]

MUX = "mux-test"


class MuxStream:
    """One request/response exchange: the UpstreamStream the router holds."""

    def __init__(self, conn: MuxClientConnection, stream_id: int, callbacks, reused: bool) -> None:
        self.conn = conn
        self.id = stream_id
        self.callbacks = callbacks
        self.reused = reused          # the connection had streams before this one
        self.sent_headers = False
        self.local_ended = False      # our side (the request) has ended on the wire
        self.remote_ended = False     # the peer's side (the response) has ended
        self.done = False             # handed back to the connection (no more callbacks)
        self.paused = 0               # read_disable count
        self.held: list[tuple[bytes, bytes]] = []  # frames that arrived while paused

    # -- UpstreamStream ---------------------------------------------------------------------
    @property
    def local_address(self) -> str:
        return self.conn.connection.local_address

    def send_headers(self, head, end_stream: bool, upgrade: bool) -> None:
        fields = [(b":method", head.method), (b":path", head.path),
                  (b":authority", head.authority)] + list(head.headers.fields)
        self.sent_headers = True
        self.local_ended = end_stream
        self.conn.write(frame(HEADERS_END if end_stream else HEADERS, self.id, header_block(fields)))

    def send_data(self, data: bytes) -> None:
        if data and not self.local_ended:
            self.conn.write(frame(DATA, self.id, data))

    def end(self, trailers) -> None:
        if self.local_ended:
            return
        self.local_ended = True
        if trailers:
            self.conn.write(frame(TRAILERS, self.id, header_block(trailers)))
        else:
            self.conn.write(frame(DATA_END, self.id))

    def shutdown_write(self) -> None:
        self.end(None)

    def read_disable(self, disable: bool) -> None:
        self.paused += 1 if disable else -1
        if not self.paused and self.held:
            held, self.held = self.held, []
            for kind, payload in held:
                if self.done:
                    return
                self.conn._deliver(self, kind, payload)

    def release(self, reusable: bool) -> None:
        if self.done:
            return
        if self.sent_headers and not (self.local_ended and self.remote_ended):
            self.conn.write(frame(RESET, self.id, b"cancel"))
        self.conn._stream_done(self)

    def reset(self) -> None:
        if self.done:
            return
        if self.sent_headers:
            self.conn.write(frame(RESET, self.id, b"cancel"))
        self.conn._stream_done(self)


class MuxClientConnection(PoolConnectionPredicates, ConnectionCallbacks):
    """PoolConnection with capacity `max_concurrent_streams` (subclass to change it)."""

    max_concurrent_streams = 4
    cx_total_stat = None  # no cluster.<name>.upstream_cx_<protocol>_total for a test protocol

    def __init__(self, pool, dispatcher, address: tuple[str, int], connect_timeout: float,
                 buffer_limit: int, codec_impl: str, conn_id: int, transport_factory) -> None:
        self.pool = pool
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.connection = Connection(dispatcher, transport_factory.create(sock), self,
                                     buffer_limit=buffer_limit,
                                     remote_address=format_address(address), conn_id=conn_id)
        self.state = CONNECTING
        self.capacity = self.max_concurrent_streams
        self.active_streams = 0
        self.total_streams = 0
        self.idle_since = 0.0
        self.holds_slot = False
        self.streams: dict[int, MuxStream] = {}
        self.next_id = 1
        self.going_away = False
        self.reader = FrameReader()
        self.connection.connect(address, connect_timeout)

    # -- PoolConnection ---------------------------------------------------------------------
    def new_stream(self, callbacks) -> MuxStream:
        s = MuxStream(self, self.next_id, callbacks, reused=self.total_streams > 0)
        self.next_id += 2
        self.streams[s.id] = s
        self.active_streams += 1
        self.capacity -= 1
        self.total_streams += 1
        return s

    def close(self) -> None:
        self.connection.close(flush=False)

    # -- streams ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.connection.closed:
            self.connection.write(data)

    def _stream_done(self, s: MuxStream) -> None:
        s.done = True
        if self.streams.pop(s.id, None) is None:
            return
        self.active_streams -= 1
        if self.active_streams == 0:
            self.idle_since = time.monotonic()
        if not self.going_away:
            self.capacity += 1
        self.pool.on_stream_done(self)
        if self.going_away and self.active_streams == 0 and not self.connection.closed:
            self.connection.close(flush=True)

    def _deliver(self, s: MuxStream, kind: bytes, payload: bytes, body: bytes | None = None) -> None:
        cb = s.callbacks
        if kind in (HEADERS, HEADERS_END):
            fields = parse_block(payload)
            status = next((int(v) for n, v in fields if n == b":status"), 0)
            headers = [(n, v) for n, v in fields if not n.startswith(b":")]
            ev = ResponseHeaders(status, b"", b"mux", headers, True, None, False)
            if kind == HEADERS_END or body is not None:
                s.remote_ended = True
                cb.on_upstream_headers(ev, body if body is not None else b"")
            else:
                cb.on_upstream_headers(ev)
        elif kind == DATA:
            cb.on_upstream_data(payload)
        elif kind == DATA_END:
            s.remote_ended = True
            if payload:
                cb.on_upstream_data(payload)
            if not s.done:
                cb.on_upstream_complete(None)
        elif kind == TRAILERS:
            s.remote_ended = True
            cb.on_upstream_complete(parse_block(payload))

    # -- connection callbacks ---------------------------------------------------------------
    def on_connected(self) -> None:
        self.idle_since = time.monotonic()
        self.pool.on_connected(self)

    def on_data(self, data: bytes) -> None:
        frames = self.reader.feed(data)
        i, n = 0, len(frames)
        while i < n:
            kind, sid, payload = frames[i]
            i += 1
            if kind == GOAWAY:
                self.going_away = True
                self.capacity = 0
                self.pool.on_capacity_changed(self)
                if self.active_streams == 0 and not self.connection.closed:
                    self.connection.close(flush=True)
                continue
            s = self.streams.get(sid)
            if s is None or s.done:
                continue  # a stream we reset or released: its late frames are dropped
            if kind == RESET:
                self._stream_done(s)
                s.callbacks.on_upstream_reset("remote reset", "UR", reused=False)
                continue
            if s.paused:
                s.held.append((kind, payload))
                continue
            body = None
            if kind == HEADERS and i < n and frames[i][0] == DATA_END and frames[i][1] == sid:
                body = frames[i][2]  # the usual response: head and whole body in one read
                i += 1
            self._deliver(s, kind, payload, body)

    def on_eof(self) -> None:
        self.connection.close(flush=False, reason=CloseReason.REMOTE)

    def on_close(self, reason: str) -> None:
        prev = self.state
        self.state = CLOSED
        streams = [s for s in self.streams.values() if not s.done]
        self.streams.clear()
        lost = self.active_streams
        self.active_streams = 0
        self.capacity = 0
        self.pool.on_closed(self, prev, reason, lost)
        reset_reason, flag = lost_stream_reset(reason)
        for s in streams:
            s.done = True
            s.callbacks.on_upstream_reset(reset_reason, flag, reused=s.reused)

    def on_above_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            s.callbacks.on_upstream_watermark(True)

    def on_below_write_watermark(self) -> None:
        for s in list(self.streams.values()):
            s.callbacks.on_upstream_watermark(False)


def register(cls: type = MuxClientConnection, protocol: str = MUX) -> str:
    """Register `cls` with the pool under `protocol` (idempotent); returns the name."""
    register_client_connection(protocol, cls)
    return protocol
