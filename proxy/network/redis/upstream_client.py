"""One pipelined connection to one Redis host, per filter config per worker (Envoy's
Redis::Client::ClientImpl).

Job: write requests to the host in order (batched up to `max_buffer_size_before_flush` bytes
or `buffer_flush_timeout` when that is set), decode its responses and hand each to the request
at the head of the queue: Redis answers a connection's commands in order. `op_timeout` runs
from the first request written on a connected client and restarts at each response; when it
fires, or the connection fails or closes, every request still waiting fails ("upstream
failure") and the client is forgotten (the next request connects again). With the cluster's
RedisProtocolOptions (`redis_auth`) a new connection sends AUTH first and drops its answer, as
Envoy does. A response nobody waits for, or bytes that are not RESP, close the connection
(`upstream_cx_protocol_error`).

Thread affinity: the worker of its owner (`RedisProxyContext`). Must not: know about commands
or downstream connections (requests are bytes and a callback).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable

from ..connection import CloseReason, Connection, ConnectionCallbacks
from .resp import Decoder, ProtocolError, encode_request

__all__ = ["UpstreamClient", "UpstreamRequest", "FAILED"]

FAILED = object()   # what a request's callback gets instead of a value when the host failed it


class UpstreamRequest:
    """A request in flight; `cancel()` drops its answer (its downstream went away)."""
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[object], None] | None) -> None:
        self.callback = callback

    def cancel(self) -> None:
        self.callback = None


class UpstreamClient(ConnectionCallbacks):
    def __init__(self, owner, cluster, host, op_timeout: float, max_buffer: int,
                 flush_timeout: float) -> None:
        self.owner = owner          # .forget(client) once closed
        self.cluster = cluster
        self.key = (cluster.name, host.key)
        self.op_timeout = op_timeout
        self.max_buffer = max_buffer
        self.flush_timeout = flush_timeout
        self.pending: deque[UpstreamRequest] = deque()
        self.decoder = Decoder(self._on_value)
        self.connected = False
        self.closed = False
        self.close_when_idle = False   # close once every pending request is answered
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        dispatcher = owner.worker.dispatcher
        self.op_timer = dispatcher.create_timer(self._on_op_timeout)
        self.flush_timer = dispatcher.create_timer(self._flush_batch) if max_buffer else None
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_active.value += 1
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = Connection(dispatcher, cluster.transport_factory.create(sock, host.hostname), self,
                                     buffer_limit=cluster.buffer_limit or 1024 * 1024, remote_address=str(host))
        self.connect_started = time.monotonic()
        self.connection.connect((host.address, host.port), cluster.config.connect_timeout)
        auth = cluster.config.redis_auth
        if auth is not None:   # the cluster's RedisProtocolOptions: AUTH first, its answer unread
            user, password = auth
            self.request(encode_request([b"auth", user, password] if user is not None
                                        else [b"auth", password]), None)

    # -- requests ----------------------------------------------------------------------------
    def request(self, payload: bytes, callback: Callable[[object], None] | None) -> UpstreamRequest:
        req = UpstreamRequest(callback)
        self.pending.append(req)
        stats = self.cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        if self.flush_timer is None:
            self.connection.write(payload)
        else:
            self.batch.append(payload)
            self.batch_bytes += len(payload)
            if self.batch_bytes >= self.max_buffer:
                self._flush_batch()
            elif not self.flush_timer.enabled:
                self.flush_timer.enable(self.flush_timeout)
        if self.connected and not self.op_timer.enabled:
            self.op_timer.enable(self.op_timeout)
        return req

    def _flush_batch(self) -> None:
        if self.flush_timer.enabled:
            self.flush_timer.disable()
        if self.batch:
            self.connection.write(b"".join(self.batch))
            self.batch.clear()
            self.batch_bytes = 0

    # -- responses ---------------------------------------------------------------------------
    def _on_value(self, value: object) -> None:
        if not self.pending:
            raise ProtocolError("a response nobody asked for")
        req = self.pending.popleft()
        self.cluster.stats.upstream_rq_active.value -= 1
        self.cluster.stats.upstream_rq_completed.value += 1
        if self.pending:
            self.op_timer.enable(self.op_timeout)
        else:
            self.op_timer.disable()
        if req.callback is not None:
            req.callback(value)
        if self.close_when_idle and not self.pending:
            self.connection.close(flush=False)

    # -- ConnectionCallbacks -----------------------------------------------------------------
    def on_connected(self) -> None:
        self.connected = True
        self.cluster.stats.upstream_cx_connect_ms.record((time.monotonic() - self.connect_started) * 1000.0)
        if self.pending:
            self.op_timer.enable(self.op_timeout)

    def on_data(self, data: bytes) -> None:
        try:
            self.decoder.feed(data)
        except ProtocolError:
            self.cluster.stats.scope.counter("upstream_cx_protocol_error").value += 1
            self.connection.close(flush=False)

    def on_eof(self) -> None:
        self.connection.close(flush=False)

    def _on_op_timeout(self) -> None:
        self.cluster.stats.upstream_rq_timeout.value += 1
        self.connection.close(flush=False)

    def on_close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.op_timer.disable()
        if self.flush_timer is not None:
            self.flush_timer.disable()
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        stats.upstream_cx_rx_bytes_total.value += self.connection.bytes_received
        stats.upstream_cx_tx_bytes_total.value += self.connection.bytes_sent
        if not self.connected:
            stats.upstream_cx_connect_fail.value += 1
            if reason == CloseReason.CONNECT_TIMEOUT:
                stats.upstream_cx_connect_timeout.value += 1
        self.owner.forget(self)
        pending, self.pending = self.pending, deque()
        for req in pending:
            stats.upstream_rq_active.value -= 1
            if req.callback is not None:
                req.callback(FAILED)

    def on_above_write_watermark(self) -> None:
        pass

    def on_below_write_watermark(self) -> None:
        pass

    def close(self) -> None:
        """Close once the requests written are answered (at once when none is pending)."""
        if self.pending:
            self.close_when_idle = True
        else:
            self.connection.close(flush=False)

    def abort(self) -> None:
        """Close now: what is pending fails."""
        self.connection.close(flush=False)
