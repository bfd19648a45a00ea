"""A worker's asynchronous HTTP client: one whole request to a cluster, one whole response back
(Envoy's Http::AsyncClient::send), marked internal (`x-envoy-internal: true`) with the
router's `x-envoy-expected-rq-timeout-ms`, as Envoy's. For filters that ask another service before they let a
request on (ext_authz's HTTP service, a Python filter's `http_call`).

The request takes the cluster's load balancer, pools and circuit breakers like the router's
(counted in the cluster's `upstream_rq_*` stats), and the answer is what Envoy's async client
gives its caller: the upstream's response, or the local reply Envoy's router would make
(503 for no cluster, no healthy host, an overflow or a failed connection, 504 at the
timeout), marked `local`. Bodies are held whole: this is for small control-plane exchanges.

Thread affinity: the worker that made it; every callback runs on that worker's dispatcher,
never re-entrantly from `send()` (a failure known at once is posted). Must not: outlive its
worker (`cancel()` when the caller goes away first). A `Deadlines` (the timeouts of one
length on one worker, for a caller that makes a call per request: ext_authz) belongs to the
worker of the requests it times.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..network.address import node_address
from .headers import Headers, RequestHead

__all__ = ["AsyncResponse", "AsyncRequest", "Deadlines"]

HeaderList = list[tuple[bytes, bytes]]


@functools.cache  # thread-safe (the C cache); the value never changes after the first call
def _this_host() -> bytes:
    """This host's address for x-forwarded-for, looked up once (Envoy's local_info address is
    fixed at start): node_address() asks the kernel about every interface."""
    return node_address().encode()


@dataclass(slots=True)
class AsyncResponse:
    status: int
    headers: HeaderList
    body: bytes
    trailers: HeaderList | None = None
    local: bool = False      # made here (no upstream answer): Envoy's router's local reply
    details: str = ""        # for a local one: why (Envoy's response code details)


class Deadlines:
    """The timeouts of one length (`timeout` s) of the requests one worker sends for one
    caller, with one Timer instead of one per request: the requests wait in the order they
    were sent, which is their deadlines' order, and the timer is armed for the oldest one
    still waiting. A request leaves when it is done (dropped from the front as the requests
    before it are done too, at the latest when the timer fires). Envoy arms a timer per
    request; in C++ that costs nothing, here a Timer, a heap entry and its cancellation per
    request (~90 bytecodes). Thread affinity: the worker's dispatcher (`dispatcher`)."""

    __slots__ = ("timeout", "_waiting", "_timer")

    def __init__(self, dispatcher, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: deque[tuple[float, AsyncRequest]] = deque()
        self._timer = dispatcher.create_timer(self._fire)

    def add(self, request: AsyncRequest) -> None:
        self._waiting.append((time.monotonic() + self.timeout, request))
        if self._timer.deadline is None:
            self._timer.enable(self.timeout)  # (fires at or after this request's deadline)

    def drop_done(self) -> None:
        """Forget the requests at the front that are done (called as one ends)."""
        waiting = self._waiting
        while waiting and waiting[0][1].done:
            waiting.popleft()

    def _fire(self) -> None:
        waiting = self._waiting
        now = time.monotonic()
        while waiting:
            deadline, request = waiting[0]
            if not request.done and deadline > now:
                self._timer.enable(deadline - now)
                return
            waiting.popleft()
            if not request.done:
                request._on_timeout()

    def __len__(self) -> int:
        return len(self._waiting)


class AsyncRequest:
    """Send `method path` with `headers` and `body` to `cluster`; `on_response` gets the
    AsyncResponse once, unless `cancel()` came first. `timeout` (s, 0: none) bounds the whole
    exchange; `send_xff`: append this host's address to x-forwarded-for (Envoy's shadows do).
    `deadlines`: a Deadlines of this `timeout` on this worker that times the request instead
    of a Timer of its own."""

    def __init__(self, worker, cluster: str, method: bytes, path: bytes, authority: bytes,
                 headers: HeaderList, body: bytes, timeout: float,
                 on_response: Callable[[AsyncResponse], None], send_xff: bool = False,
                 deadlines: Deadlines | None = None) -> None:
        self.worker = worker
        self.cluster_name = cluster
        # As Envoy's async client sends it: internal, with the router's expected timeout.
        fields = list(headers)
        if send_xff:  # this host's address appended, as Envoy's async client's send_xff
            xff = next((v for n, v in fields if n == b"x-forwarded-for"), None)
            fields = [kv for kv in fields if kv[0] != b"x-forwarded-for"]
            local = _this_host()
            fields.append((b"x-forwarded-for", xff + b"," + local if xff else local))
        fields.append((b"x-envoy-internal", b"true"))
        if timeout:
            fields.append((b"x-envoy-expected-rq-timeout-ms", b"%d" % round(timeout * 1000)))
        self.head = RequestHead(method, path, authority, b"http", Headers(fields))
        self.body = body
        self.timeout = timeout
        self.on_response = on_response
        self.deadlines = deadlines
        self.stream = self        # what a DownstreamProtocolPool reads: stream.head.http_version
        self.cluster = self.pool = self.upstream = self.pool_handle = self.timer = None
        self.holds_slot = False
        self.done = False
        self.started = 0.0
        self.status = 0
        self.headers: HeaderList = []
        self.chunks: list[bytes] = []

    # -- the caller's side ---------------------------------------------------------------------
    def send(self) -> None:
        cluster = self.worker.clusters.get(self.cluster_name)
        if cluster is None:
            return self._local_later(503, "cluster_not_found")
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            return self._local_later(503, "no_healthy_upstream")
        self.cluster = cluster
        pool = self.pool = cluster.pool_for(host)
        if not pool.limits.try_acquire_request():
            cluster.stats.upstream_rq_active_overflow.value += 1
            return self._local_later(503, "overflow")
        self.holds_slot = True
        cluster.stats.upstream_rq_active.value += 1
        if self.timeout:
            if self.deadlines is not None:
                self.deadlines.add(self)
            else:
                self.timer = self.worker.dispatcher.call_later(self.timeout, self._on_timeout)
        self.pool_handle = pool.new_stream(self)

    def cancel(self) -> None:
        """The caller no longer wants the answer: nothing more is said."""
        if self.done:
            return
        self.done = True
        self._abandon()

    # -- pool callbacks ------------------------------------------------------------------------
    def on_pool_ready(self, upstream) -> None:
        self.pool_handle = None
        if self.done:
            upstream.release(reusable=True)
            return
        self.upstream = upstream
        self.started = time.monotonic()
        self.cluster.stats.upstream_rq_total.value += 1
        upstream.send_headers(self.head, not self.body, False)
        if self.body:
            upstream.send_data(self.body)
            upstream.end(None)

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.pool_handle = None
        if not self.done:
            self._local(503, "upstream_reset_before_response_started{%s}" % reason.replace(" ", "_"))

    # -- the response (UpstreamStreamCallbacks) ------------------------------------------------
    def on_upstream_headers(self, ev, body: bytes | None = None) -> None:
        if self.done:
            return
        self.status = ev.status
        # Envoy's router in the async client adds its x-envoy-upstream-service-time.
        self.headers = ev.headers + [(b"x-envoy-upstream-service-time",
                                      b"%d" % int((time.monotonic() - self.started) * 1000))]
        if body is not None:
            self.chunks.append(body)
            self._complete(None)

    def on_upstream_data(self, data: bytes) -> None:
        if not self.done:
            self.chunks.append(data)

    def on_upstream_complete(self, trailers) -> None:
        if not self.done:
            self._complete(trailers)

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        if self.done:
            return
        self.upstream = None
        self.cluster.stats.upstream_rq_rx_reset.value += 1
        self._local(status, "upstream_reset_before_response_started{%s}" % reason.replace(" ", "_"))

    def on_upstream_watermark(self, above: bool) -> None:
        pass  # the request is written whole at once

    # -- endings -------------------------------------------------------------------------------
    def _complete(self, trailers) -> None:
        self.done = True
        up, self.upstream = self.upstream, None
        if up is not None:
            up.release(True)
        self._release()
        # Its request carries x-envoy-internal: true, so Envoy charges the internal.* stats.
        self.cluster.stats.record_response(self.status, self.pool, True)
        self.on_response(AsyncResponse(self.status, self.headers, b"".join(self.chunks), trailers))

    def _on_timeout(self) -> None:
        self.timer = None
        if not self.done:
            self.cluster.stats.upstream_rq_timeout.value += 1
            self._local(504, "response_timeout")

    def _local(self, status: int, details: str) -> None:
        self.done = True
        self._abandon()
        body = b"upstream request timeout" if status == 504 else b""
        self.on_response(AsyncResponse(status, [], body, None, True, details))

    def _local_later(self, status: int, details: str) -> None:
        self.done = True
        response = AsyncResponse(status, [], b"", None, True, details)
        self.worker.dispatcher.post(lambda: self.on_response(response))

    def _abandon(self) -> None:
        if self.pool_handle is not None:
            self.pool_handle.cancel()
            self.pool_handle = None
        up, self.upstream = self.upstream, None
        if up is not None:
            up.reset()
        self._release()

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.disable()
            self.timer = None
        elif self.deadlines is not None:
            self.deadlines.drop_done()
        if self.holds_slot:
            self.holds_slot = False
            self.pool.limits.release_request()
            self.cluster.stats.upstream_rq_active.value -= 1
