"""ActiveStream: one request/response exchange of an HTTP connection manager.

The router filter talks to its stream through this object: `encode_headers`, `encode_data`,
`encode_end`, `send_local_reply` (Envoy's wording and response flags), `reset`, and
downstream flow control. The stream applies Envoy's response header handling (date, server,
via, x-request-id echo) and hands bytes to the connection's codec; its connection manager
(conn_manager.py) owns its life: creation, timeouts, logging, and what happens next on the
connection.
Thread affinity: the worker that owns the connection. Must not: read from sockets.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..access_log.stream_info import StreamInfo
from .headers import RequestHead, ResponseHead, append_via
from .local_reply import local_reply_head

if TYPE_CHECKING:
    from .conn_manager import ConnectionManager
    from .router_filter import RouterFilter

__all__ = ["ActiveStream"]


class ActiveStream:
    """One request/response exchange. Owned by its ConnectionManager."""

    __slots__ = ("hcm", "stream_id", "head", "info", "router", "request_complete",
                 "response_started", "response_complete", "keep_alive", "upgrade", "upgraded",
                 "response_head", "closed", "last_activity")

    def __init__(self, hcm: ConnectionManager, stream_id: int, head: RequestHead, info: StreamInfo,
                 keep_alive: bool, upgrade: bytes | None) -> None:
        self.hcm = hcm
        self.stream_id = stream_id
        self.head = head
        self.info = info
        self.router: RouterFilter | None = None
        self.request_complete = False
        self.response_started = False
        self.response_complete = False
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.upgraded = False
        self.response_head: ResponseHead | None = None
        self.closed = False
        self.last_activity = info.start_monotonic  # for stream_idle_timeout

    # -- encode path (called by the router filter) ----------------------------------------
    def encode_headers(self, head: ResponseHead, end_stream: bool) -> None:
        if self.closed:
            return
        hcm = self.hcm
        ctx = hcm.ctx
        self.response_started = True
        self.response_head = head
        info = self.info
        status = info.response_code = head.status
        info.response_headers = head
        info.response_start_monotonic = self.last_activity = time.monotonic()
        cfg = ctx.config
        headers = head.headers
        headers.set_default(b"date", ctx.worker.http_date())
        if cfg.via:
            append_via(headers, ctx.via)
        if cfg.always_set_request_id_in_response:
            rid = self.head.headers.get(b"x-request-id")
            if rid is not None:
                headers.set(b"x-request-id", rid)
        transformation = cfg.server_header_transformation
        if transformation == "OVERWRITE":
            headers.set(b"server", ctx.server_name)
        elif transformation == "APPEND_IF_ABSENT":
            headers.set_default(b"server", ctx.server_name)
        if hcm.draining or ctx.worker.draining:
            self.keep_alive = False
        if status == 101 and self.upgrade:
            self.upgraded = True
            hcm.stats.downstream_cx_upgrades_total.value += 1
            hcm.stats.downstream_cx_upgrades_active.value += 1
        req = self.head
        hcm.connection.write(hcm.codec.encode_response_head(
            status, head.reason or None, headers.items(), req.method, req.http_version,
            self.keep_alive))
        if self.upgrade is not None:
            hcm.resume_held()
        if end_stream:
            self.encode_end(None)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.closed:
            return
        if data:
            self.info.bytes_sent += len(data)
            self.last_activity = time.monotonic()
            self.hcm.connection.write(self.hcm.codec.encode_body(data))
        if end_stream:
            self.encode_end(None)

    def encode_end(self, trailers) -> None:
        if self.closed or self.response_complete:
            return
        self.response_complete = True
        hcm = self.hcm
        if not self.upgraded:
            last = hcm.codec.encode_end(trailers)
            if last:
                hcm.connection.write(last)
        if hcm.codec.response_must_close:
            self.keep_alive = False
        hcm.stream_done(self)

    def send_local_reply(self, status: int, body: bytes, flag: str | None, details: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Envoy-style local reply (text/plain body), unless the response already started."""
        info = self.info
        if flag:
            info.set_response_flag(flag)
        info.response_code_details = details
        if self.response_started:
            self.reset(details)
            return
        if not self.request_complete:
            # The rest of the request body will not be read: the connection cannot be reused.
            self.keep_alive = False
        self.encode_local(local_reply_head(status, body, extra), body)

    def encode_local(self, head: ResponseHead, body: bytes) -> None:
        """A response the proxy made itself (local reply, direct response, redirect): its head,
        then its body unless the request was HEAD (Envoy sends the headers only, with the
        content-length of the body it would have sent)."""
        if self.head.method == b"HEAD":
            body = b""
        self.encode_headers(head, end_stream=not body)
        if body:
            self.encode_data(body, end_stream=True)

    def reset(self, details: str = "") -> None:
        """Abort the stream: the downstream connection is closed (HTTP/1.1 has no stream reset)."""
        if self.closed:
            return
        if details and not self.info.response_code_details:
            self.info.response_code_details = details
        self.hcm.stats.downstream_rq_tx_reset.value += 1
        self.keep_alive = False
        self.hcm.stream_done(self, reset=True)

    def read_disable_downstream(self, disable: bool) -> None:
        self.hcm.connection.read_disable(disable)
