"""The router HTTP filter (`envoy.filters.http.router`): route -> cluster -> host -> upstream.

The terminal filter of every HTTP filter chain. Its callbacks are its stream (the stream's
filter manager): it reads the route through `route()` (so a filter before it that changed the
request and cleared the route cache is routed anew), and answers through `encode_*` and
`send_local_reply`, which run the encoder filters.

Decode side: match the route; answer redirects, direct responses and failures locally
(404 NR, 503 NC/UH/UO/UF/UC, 504 UT, 502 UPE); otherwise take a connection from the
worker's pool for the chosen host and stream the request to it. Encode side: stream the
upstream response back, adding `x-envoy-upstream-service-time` and route header mutations.

Flow control: the upstream connection's reading pauses while the downstream write buffer is
above its high watermark, and the downstream's reading pauses while the upstream's is (or while
request body waits for a connection beyond the buffer limit).
Thread affinity: one worker. Must not: block or touch another worker's pools.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..router.grpc_timeout import (format_grpc_timeout, legacy_grpc_timeout_ms, parse_grpc_timeout,
                                   stream_duration_ms)
from ..router.hash_policy import request_hash, set_cookie_value
from ..router.header_mutation import ResponseInfo, apply_mutations
from ..upstream.hashing_lb import xxhash64
from ..router.mirror_policy import shadow_authority
from ..router.steering import steer_action, strict_value_ok
from .codec.events import ResponseHeaders
from .filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus
from .headers import HOP_BY_HOP, Headers, ResponseHead
from .async_client import AsyncRequest
from ..upstream.outlier_monitor import grpc_http_status
from .local_reply import grpc_local_reply_head, is_grpc_request, local_reply_head, reset_body
from .redirect_follow import follow_internal_redirect
from .stream_state import UPGRADED
from ..network.listener_filters.proxy_protocol_header import proxy_header

__all__ = ["RouterFilter", "RouterFactory"]

_STOP = FilterHeadersStatus.STOP_ITERATION
_TAKEN = FilterDataStatus.STOP_ITERATION_NO_BUFFER
_STOP_TRAILERS = FilterTrailersStatus.STOP_ITERATION

_RESPONSE_HOP_BY_HOP = HOP_BY_HOP
_MS = tuple(b"%d" % i for i in range(1000))  # x-envoy-upstream-service-time values under 1 s


class RouterFilter:
    # A route's internal_redirect_policy, and the request body kept for a redirect (None past
    # the buffer limit): class defaults, set by _prepare for such a route only
    # (redirect_follow.py), so other requests pay nothing at creation.
    redirect_policy = None
    redirect_body: list[bytes] | None = None
    redirect_body_bytes = 0

    # A plain class whose __init__ sets every field (CPython 3.13 builds it inline; slotted
    # objects go through type_call), one per request. perf/RESULTS.md, fourth round.
    # Bytes written on a terminated CONNECT's upstream connection before the stream's own (a
    # connect_config's PROXY header): set on the instance only when there are some.
    preamble = None
    tcp_tunnel = False  # the upstream is a terminated CONNECT's (or allow_post POST's) TCP connection

    def __init__(self, stream, ctx, config) -> None:
        self.stream = stream          # its FilterCallbacks (and StreamInfo)
        self.ctx = ctx
        self.config = config          # RouterFilterConfig
        self.route = None
        self.cluster = None
        self.pool = None              # the host's pool for the route's priority (its `limits`)
        self.host = None
        self.pool_handle = None
        self.upstream = None          # its UpstreamStream (codec/client_protocol.py) while attached
        self.buffered: list[bytes] | None = None  # request body waiting for a connection
        self.buffered_bytes = 0
        self.request_ended = False
        self.trailers = None
        self.timeout_timer = None
        self.upstream_start = 0.0
        self.response_started = False
        self.done = False
        self.holds_request_slot = False
        self.downstream_paused = False
        self.upstream_paused = False
        self.chunked = False
        self.holds_retry_slot = False
        self.shadows: list[Shadow] | None = None  # request_mirror_policies' copies being read
        self.set_cookies: list[bytes] | None = None  # a hash policy's generated cookies

    # -- decode path ---------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        self._decode_headers(head, end_stream)
        return _STOP

    def _decode_headers(self, head, end_stream: bool) -> None:
        stream = self.stream
        ctx = self.ctx
        route = stream.route()
        if stream.upgrade is not None and not self._accept_upgrade(route):
            return
        ctx.stats.rq_total.value += 1  # Envoy: every request that reaches the router
        if route is None:
            ctx.stats.no_route.value += 1
            stream.send_local_reply(404, b"", "NR", "route_not_found")
            return
        self.route = route
        stream.route_name = route.name or None
        if route.direct_response is not None:
            ctx.stats.rq_direct_response.value += 1
            dr = route.direct_response
            self._local_with_mutations(dr.status, dr.body, "direct_response")
            return
        if route.redirect is not None:
            ctx.stats.rq_redirect.value += 1
            rd = route.redirect
            self._local_with_mutations(rd.response_code, b"", "direct_response",
                                       [(b"location", rd.location(head))])
            return
        action = route.action
        if action.idle_timeout is not None:
            stream.set_idle_timeout(action.idle_timeout)
        name = action.cluster or stream.route_cluster(action)
        cluster = ctx.worker.clusters.get(name) if name is not None else None
        if cluster is None:
            ctx.stats.no_cluster.value += 1
            stream.send_local_reply(action.cluster_not_found_response_code, b"", "NC", "cluster_not_found")
            return
        self.cluster = cluster
        stream.upstream_cluster = cluster.name
        cstats = cluster.stats
        if self.config.strict_check_headers and stream.steering and self._strict_check_failed(head):
            return
        if action.hash_policy and cluster.hashing:  # RING_HASH/MAGLEV: by the request's hash
            remote = stream.downstream_remote_address or ""
            h = request_hash(action.hash_policy, head, remote.rsplit(":", 1)[0].strip("[]"),
                             xxhash64, self._add_cookie)
            host = cluster.choose_host() if h is None else cluster.choose_host_by_hash(h)
        else:
            host = cluster.choose_host()
        if host is None:
            if cluster.request_lb is not None:
                # ORIGINAL_DST (no hosts of its own to choose from): the request names its host.
                host = cluster.request_lb.choose(head, stream.hcm.restored_local)
            if host is None:
                cstats.upstream_cx_none_healthy.value += 1
                if self.config.dynamic_stats:  # Envoy charges the cluster a 503 (no host's tally)
                    cstats.record_response(503, _HostlessTally(), stream.internal_request)
                stream.send_local_reply(503, b"no healthy upstream", "UH", "no_healthy_upstream")
                return
        self.host = host
        if action.connect_terminate and (stream.upgrade == b"CONNECT" or (
                action.connect_allow_post and head.method == b"POST")):
            # Envoy's TCP upstream: a TCP connection to the host; once it is up the CONNECT
            # (or, with allow_post, the POST) is answered 200 and the stream's bytes are its
            # bytes (tcp_upstream.py).
            pool = self.pool = cluster.tcp_pool_for(host, action.high_priority)
            self.tcp_tunnel = True
            if action.connect_proxy_protocol:
                self.preamble = tunnel_proxy_header(action.connect_proxy_protocol, stream.hcm)
        else:
            pool = self.pool = cluster.pool_for(host, action.high_priority)
        if not pool.limits.try_acquire_request():
            # max_requests (Envoy counts it when the request would be attached to a
            # connection; ftproxy refuses before opening one, see README).
            cstats.upstream_rq_active_overflow.value += 1
            self._reset_reply(503, "overflow", "UO")
            return
        self.holds_request_slot = True
        if route.prepare or stream.steering:  # rewrites, header mutations, retries, deadlines,
            # an internal request's x-envoy-* steering fields (one test for all)
            action = self._prepare(route, action, head, end_stream)
        elif ctx.config.max_stream_duration:
            self._set_deadlines(route, action, head)
        if action.timeout_ms and not self.config.suppress_envoy_headers:
            head.headers.set(b"x-envoy-expected-rq-timeout-ms", action.timeout_ms)
        if end_stream:
            self.request_ended = True
            if action.timeout:
                self._start_timeout()
        else:
            headers = head.headers
            self.chunked = headers.has(b"transfer-encoding") or (
                not headers.has(b"content-length") and stream.upgrade is None)
        cstats.upstream_rq_active.value += 1
        self.pool_handle = pool.new_stream(self)

    def _accept_upgrade(self, route) -> bool:
        """Envoy's HCM, before the router: an upgrade (or CONNECT) request is taken when its
        route's upgrade_configs, else the HCM's, enable its kind (counted in
        downstream_cx_upgrades_total); else answered 403 (counted in
        downstream_rq_ws_on_non_ws_route, not in rq_total: the router never saw it)."""
        ctx = self.ctx
        stream = self.stream
        if not ctx.route_upgrade_allowed(route.action if route is not None else None, stream.upgrade):
            ctx.stats.downstream_rq_ws_on_non_ws_route.value += 1
            stream.send_local_reply(403, b"", None, "upgrade_failed")
            return False
        stream.accept_upgrade()
        return True

    def _add_cookie(self, policy) -> str:
        """A cookie hash policy's missing cookie (Envoy's addDownstreamSetCookie): its value is
        xxHash64 of the connection's remote and local addresses in hex, the same for every
        request of the connection; the response (from upstream) sets it."""
        stream = self.stream
        value = "%016x" % xxhash64((stream.downstream_remote_address
                                    + stream.downstream_local_address).encode())
        if self.set_cookies is None:
            self.set_cookies = []
        self.set_cookies.append(set_cookie_value(policy, value))
        return value

    def _local_with_mutations(self, status: int, body: bytes, details: str, extra=None) -> None:
        """A direct response or redirect: a local reply that the route's response header
        mutations apply to (as to every local reply of a routed stream: send_local_reply).
        As every local reply: to a gRPC request a trailers-only 200, and local_reply_config
        rewrites it."""
        stream = self.stream
        stream.response_code_details = details
        if not stream.request_complete:
            stream.abandon_request()  # the rest of the request body will not be read
        rewrite = stream.ctx.config.local_reply
        grpc = stream.grpc_request
        if grpc is None:
            grpc = is_grpc_request(stream.head.headers)
        if rewrite is None and not grpc:
            head = local_reply_head(status, body, extra)
            if self.route.response_mutations:
                apply_mutations(self.route.response_mutations, head.headers, ResponseInfo(stream, head.headers))
            stream.encode_local(head, body)
            return
        # Envoy's sendLocalReply: the route's mutations (modify_headers), then the rewrite.
        headers = Headers(list(extra) if extra else [])
        if self.route.response_mutations:
            apply_mutations(self.route.response_mutations, headers, ResponseInfo(stream, headers))
        head_request = stream.head.method == b"HEAD"
        if rewrite is not None:
            head, body = rewrite.prepare(stream, status, body, headers.items(), grpc, None, head_request)
        else:
            head, body = grpc_local_reply_head(status, body, None, headers.items(), head_request), b""
        stream.encode_local(head, body)

    def _prepare(self, route, action, head, end_stream: bool):
        """What a route asks beyond forwarding: its rewrites and request header mutations,
        its deadlines (max_stream_duration, grpc-timeout), then (they may add
        x-envoy-retry-on...) its retry state and attempt-count headers. A request that may be
        retried, or answers with x-envoy-attempt-count, is carried on by a RetryingRouter
        (router_retry.py): this object becomes one, and a request on a route without a retry
        policy never pays for it. Returns the route action in force for this request."""
        if (action.max_stream_duration is not None or action.max_grpc_timeout is not None
                or self.ctx.config.max_stream_duration):
            action = self._set_deadlines(route, action, head)
            route = self.route
        steering = self.stream.steering
        if steering:  # an internal request's timeouts and hedging (router/steering.py)
            steered = steer_action(action, head.headers, self.config.respect_expected_rq_timeout)
            if steered is not action:
                action = steered
                self.route = route = replace(route, action=action)
                if (action.max_grpc_timeout is not None and action.max_stream_duration is None
                        and action.timeout_ms and is_grpc_request(head.headers)):
                    # Envoy's setTimeoutHeaders: the upstream is told the timeout in force.
                    head.headers.set(b"grpc-timeout", format_grpc_timeout(int(action.timeout_ms)))
        if (action.rewrites_path or action.host_rewrite_literal is not None
                or action.auto_host_rewrite or route.request_mutations):
            self._rewrite_request(action)
        if action.request_mirror_policies:
            self._start_shadows(action, head, end_stream)
        if action.internal_redirect is not None and self.stream.upgrade is None:
            self.redirect_policy = action.internal_redirect
            self.redirect_body = []
        if action.attempt_count_in_request:
            head.headers.set(b"x-envoy-attempt-count", b"1")
        if (action.retry_policy is not None or route.retry_headers_added or steering
                or action.attempt_count_in_response):
            from .router_retry import become_retrying
            become_retrying(self, route, action, head)
        return action

    def _start_shadows(self, action, head, end_stream: bool) -> None:
        """request_mirror_policies: a copy of the request (as the upstream gets it, but its
        authority `-shadow`ed) for each mirror cluster the request names; sent once the
        request is read to its end, its answer discarded (mirror_policy.py)."""
        worker = self.ctx.worker
        shadows = []
        for policy in action.request_mirror_policies:
            fraction = policy.runtime_fraction
            if fraction is not None and not fraction.enabled(worker.rand_bits):
                continue
            cluster = policy.target(head.headers)
            if cluster is None or cluster not in worker.clusters:
                continue  # (Envoy mirrors nothing for a missing or unknown cluster)
            authority = head.authority if policy.disable_shadow_host_suffix_append \
                else shadow_authority(head.authority)
            shadows.append(Shadow(worker, cluster, head, authority, action.timeout))
        if not shadows:
            return
        if end_stream:
            for shadow in shadows:
                shadow.send()
        else:
            self.shadows = shadows

    def _feed_shadows(self, data: bytes, end: bool) -> None:
        shadows = self.shadows
        if data:
            limit = self.cluster.buffer_limit
            for shadow in shadows:
                shadow.body.append(data)
                shadow.size += len(data)
            if shadows[0].size > limit:  # too much to hold: the copies are given up
                self.cluster.stats.retry_or_shadow_abandoned.value += len(shadows)
                self.shadows = None
                return
        if end:
            self.shadows = None
            for shadow in shadows:
                shadow.send()

    def _set_deadlines(self, route, action, head):
        """Envoy's refreshDurationTimeout (the stream's max_stream_duration, or the
        grpc-timeout header capped by grpc_timeout_header_max less its offset, which a gRPC
        request's upstream is then told) and, for a gRPC request on a route with the legacy
        max_grpc_timeout, the router timeout from grpc-timeout (finalTimeout). That timeout
        is this request's own: it gets a copy of its route with it (dataclasses.replace
        recomputes the per-try and x-envoy-expected-rq-timeout-ms values). Returns the action."""
        headers = head.headers
        msd = action.max_stream_duration
        grpc = is_grpc_request(headers)
        header_ms = parse_grpc_timeout(headers.get(b"grpc-timeout"))
        cfg_ms = round(self.ctx.config.max_stream_duration * 1000)
        if msd is not None or cfg_ms:
            ms = stream_duration_ms(msd, cfg_ms, header_ms)
            if ms is not None:
                if msd is not None and grpc:
                    headers.set(b"grpc-timeout", format_grpc_timeout(ms))
                self.stream.set_max_duration(ms / 1000)
        if msd is None and action.max_grpc_timeout is not None and grpc:
            ms = legacy_grpc_timeout_ms(action.max_grpc_timeout, action.grpc_timeout_offset, header_ms)
            action = replace(action, timeout=ms / 1000)
            self.route = replace(route, action=action)
            if action.timeout_ms:  # the per-try or the new timeout, as Envoy tells the upstream
                headers.set(b"grpc-timeout", format_grpc_timeout(int(action.timeout_ms)))
        return action

    def _rewrite_request(self, action) -> None:
        """The route's path and host rewrites and request header mutations."""
        stream = self.stream
        head = stream.head
        headers = head.headers
        new_path = action.rewrite_path(head)
        if new_path is not None:
            headers.set(b"x-envoy-original-path", head.path)
            head.set_path(new_path)
        new_host = None
        if action.host_rewrite_literal is not None:
            new_host = action.host_rewrite_literal
        elif action.auto_host_rewrite and self.host.hostname:
            # Envoy: the chosen host's hostname (a STRICT/LOGICAL_DNS name, or the endpoint's
            # `hostname`); a host without one leaves the Host as it was.
            new_host = self.host.hostname.encode("idna")
        if new_host is not None:
            if not self.config.suppress_envoy_headers:  # Envoy tells the upstream the original
                headers.set(b"x-envoy-original-host", head.authority)
            head.set_authority(new_host)
        if self.route.request_mutations:
            apply_mutations(self.route.request_mutations, headers, stream)

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.shadows is not None:
            self._feed_shadows(data, end_stream)
        if self.done:
            return _TAKEN
        if self.redirect_body is not None and data:
            self._keep_for_redirect(data)
        if end_stream and not data and self.stream.upgraded:
            self.decode_eof()  # the downstream half-closed a tunnel
            return _TAKEN
        up = self.upstream
        if up is not None:
            up.send_data(data)
        elif self.host is not None:
            if self.buffered is None:
                self.buffered = []
            self.buffered.append(data)
            self.buffered_bytes += len(data)
            if not self.downstream_paused and self.buffered_bytes > self.cluster.buffer_limit:
                self.downstream_paused = True
                self.stream.read_disable_downstream(True)
        if end_stream:
            self.decode_end(None)
        return _TAKEN

    def _keep_for_redirect(self, data: bytes) -> None:
        """The request body, kept while a redirect may replay it: up to the stream's buffer
        limit (Envoy's retry_shadow_buffer_limit), past which no redirect is followed."""
        self.redirect_body_bytes += len(data)
        if self.redirect_body_bytes > self.stream.buffer_limit():
            self.redirect_body = None
        else:
            self.redirect_body.append(data)

    def decode_trailers(self, trailers) -> int:
        if self.shadows is not None:
            self._feed_shadows(b"", True)
        self.decode_end(trailers)
        return _STOP_TRAILERS

    def decode_end(self, trailers) -> None:
        if self.done or self.request_ended:
            return
        self.request_ended = True
        self.trailers = trailers
        if self.upstream is not None:
            self.upstream.end(trailers)
        self._start_timeout()

    def decode_eof(self) -> None:
        """Downstream half-closed an upgraded (tunnelled) stream: pass the FIN on."""
        if self.upstream is not None:
            self.upstream.shutdown_write()

    def _start_timeout(self) -> None:
        route = self.route
        if route is None or route.action is None or self.done:
            return
        timeout = route.action.timeout
        if timeout and self.timeout_timer is None and not self.stream.upgrade:
            self.timeout_timer = self.ctx.worker.dispatcher.call_later(timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self.timeout_timer = None
        if self.done:
            return
        self.cluster.stats.upstream_rq_timeout.value += 1
        self.pool.rq_timeout += 1   # the host's (admin /clusters)
        self._outlier_timeout()
        status, body = self._timeout_reply()
        self._charge_local(status)
        self._abandon_upstream()
        self.stream.send_local_reply(status, body, "UT", "response_timeout")

    def _timeout_reply(self) -> tuple[int, bytes]:
        """Envoy's answer to a timeout: 504 "upstream request timeout", or an empty 204 when
        the (internal) request asked with x-envoy-upstream-rq-timeout-alt-response."""
        if self.route.action.timeout_alt_response:
            return 204, b""
        return 504, b"upstream request timeout"

    def _strict_check_failed(self, head) -> bool:
        """strict_check_headers (Envoy's StrictHeaderChecker): a named field with a value
        Envoy would not parse is answered 400 (IH) before anything else is done."""
        headers = head.headers
        for name in self.config.strict_check_headers:
            value = headers.get(name)
            if value is None or strict_value_ok(name, value):
                continue
            stream = self.stream
            stream.send_local_reply(
                400, b"invalid header '%s' with value '%s'" % (name, value), "IH",
                "request_headers_failed_strict_check{%s}" % name.decode())
            return True
        return False

    # -- pool callbacks ----------------------------------------------------------------------------
    def on_pool_ready(self, upstream) -> None:
        self.pool_handle = None
        if self.done:
            upstream.release(reusable=True)
            return
        self.upstream = upstream
        self.cluster.stats.upstream_rq_total.value += 1  # Envoy: a request sent upstream
        od = self.host.outlier
        if od is not None and od.split:
            od.put_connect_success(self.ctx.worker.index)   # a local-origin success
        stream = self.stream
        stream.upstream_host = host_str = self.pool.host_str
        stream.upstream_local_address = upstream.local_address
        span = stream.active_span
        if span is not None and span.late_inject:
            span.inject_upstream(stream.head, host_str)  # SkyWalking's sw8 names the host
        if self.cluster.transport_factory.implements_secure_transport:
            stream.upstream_ssl = upstream.ssl  # %UPSTREAM_TLS_VERSION% ...
        self.upstream_start = stream.first_upstream_tx_monotonic = time.monotonic()
        end_now = self.request_ended and not self.buffered and self.trailers is None
        if self.preamble:  # connect_config's PROXY header: the tunnel's first bytes (Envoy's order)
            upstream.send_data(self.preamble)
        upstream.send_headers(stream.head, end_now, stream.upgrade is not None)
        if self.buffered:
            for chunk in self.buffered:
                upstream.send_data(chunk)
            self.buffered = None
            self.buffered_bytes = 0
            if self.downstream_paused:
                self.downstream_paused = False
                stream.read_disable_downstream(False)
        if self.request_ended and not end_now:
            upstream.end(self.trailers)  # the request's end (and trailers)
        if stream.downstream_above_high_watermark():
            self.on_downstream_watermark(True)

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.pool_handle = None
        if self.done:
            return
        if flag != "UO":  # Envoy logs the host a connect failed to (%UPSTREAM_HOST%)
            self.stream.upstream_host = self.pool.host_str
        self._outlier_connect_failed(flag)
        self._release_request_slot()
        status = 503
        self._charge_local(status)
        self._reset_reply(status, reason, flag, transport_failure)

    def _outlier_connect_failed(self, flag: str) -> None:
        """Envoy's LocalOriginConnectFailed for the host (a failed connect or a reset), except
        for an overflow: a circuit breaker is the cluster's, not the host's fault."""
        od = self.host.outlier if self.host is not None else None
        if od is not None and flag != "UO":
            od.put_connect_failed(self.ctx.worker.index)

    def _outlier_response(self, od, status: int, headers: Headers) -> None:
        """A response from the host (Envoy: a gRPC request's grpc-status in the response
        headers counts as its HTTP equivalent)."""
        grpc = headers.get(b"grpc-status")
        if grpc is not None and is_grpc_request(self.stream.head.headers):
            status = grpc_http_status(grpc)
        od.put_http_code(status, self.ctx.worker.index)

    def _outlier_timeout(self) -> None:
        """Envoy's LocalOriginTimeout (as a 504 unless local-origin errors are split)."""
        od = self.host.outlier if self.host is not None else None
        if od is not None:
            od.put_timeout(self.ctx.worker.index)

    def _reset_reply(self, status: int, reason: str, flag: str, transport_failure: str = "") -> None:
        """Envoy's local reply for an upstream reset before the response started; its details
        carry the transport failure reason when there is one."""
        stream = self.stream
        detail = reason
        if transport_failure:
            stream.upstream_transport_failure_reason = transport_failure
            detail = f"{reason}|{transport_failure}"
        extra = [(b"x-envoy-overloaded", b"true")] if (
            flag == "UO" and not self.config.suppress_envoy_headers) else None
        stream.send_local_reply(status, reset_body(reason), flag,
                                "upstream_reset_before_response_started{%s}" % detail.replace(" ", "_"),
                                extra)

    # -- upstream response ---------------------------------------------------------------------------
    def on_upstream_headers(self, ev: ResponseHeaders, body: bytes | None = None) -> None:
        """The response head; with `body`, the whole response (head, body and end arrived in
        one read: the usual case), handed to the stream in one call."""
        if self.done:
            return
        stream = self.stream
        stream.first_upstream_rx_monotonic = now = time.monotonic()
        stream.response_code_details = "via_upstream"  # Envoy's details for a proxied response
        self.response_started = True
        if self.timeout_timer is not None and ev.status == 101:
            self.timeout_timer.disable()
            self.timeout_timer = None
        headers = Headers.adopt(ev.headers)
        if ev.status != 101:
            headers.remove_many(_RESPONSE_HOP_BY_HOP)
        else:
            headers.remove_many(_RESPONSE_HOP_BY_HOP - {b"connection", b"upgrade"})
        od = self.host.outlier
        if od is not None:
            self._outlier_response(od, ev.status, headers)
        if self.cluster.hc_report is not None and headers.has(b"x-envoy-immediate-health-check-fail"):
            self.cluster.hc_report(self.host)   # health-checked clusters only: main marks the host
        policy = self.redirect_policy
        if (policy is not None and ev.status in policy.redirect_response_codes
                and follow_internal_redirect(self, ev.status, headers, body is not None)):
            return  # the stream is recreated for the Location (redirect_follow.py)
        rc = self.config
        if not rc.suppress_envoy_headers and (
                (stream.upgrade is None and not self.tcp_tunnel) or self.request_ended):
            # (Envoy adds it once the downstream request is complete: not to a tunnel's answer.)
            ms = int((now - self.upstream_start) * 1000)
            headers.fields.append((b"x-envoy-upstream-service-time",
                                   _MS[ms] if ms < 1000 else b"%d" % ms))
        if self.set_cookies is not None:
            headers.fields.extend((b"set-cookie", c) for c in self.set_cookies)
        if self.route.response_mutations:
            apply_mutations(self.route.response_mutations, headers, ResponseInfo(stream, headers))
        if rc.dynamic_stats:
            self.cluster.stats.record_response(ev.status, self.pool, stream.internal_request)
        elif ev.status < 500:
            self.pool.rq_success += 1  # Envoy counts a host's successes either way
        # The reason phrase is not passed on: like Envoy, the downstream codec writes the
        # standard one (an upstream's may carry bytes a client should not see).
        if body is None:  # the rest follows: on_upstream_data, on_upstream_complete
            stream.encode_headers(ResponseHead(ev.status, headers), False)
            return
        self._finish_upstream(self.request_ended)  # as on_upstream_complete
        self.done = True
        self._record_time(now)
        stream.encode_headers(ResponseHead(ev.status, headers), True, body)

    def on_upstream_data(self, data: bytes) -> None:
        if self.done:
            return
        if not self.response_started:
            # Body bytes before any response head: a codec bug or a peer it misread. Never
            # forward raw upstream bytes to the client.
            self._abandon_upstream()
            self._charge_local(502)
            self.stream.send_local_reply(502, reset_body("protocol error"), "UPE",
                                         "upstream_reset_before_response_started{protocol_error}")
            return
        self.stream.encode_data(data, False)

    def on_upstream_complete(self, trailers) -> None:
        if self.done:
            return
        # Reuse the connection only if the whole request went out (an early response would
        # leave the rest of the request body unread on that connection).
        self._finish_upstream(self.request_ended)  # (positional: CALL_KW is not specialised)
        self.done = True  # nothing is left for on_destroy to release
        self._record_time(time.monotonic())
        if trailers:
            self.stream.encode_trailers(trailers)
        else:
            self.stream.encode_data(b"", True)

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        """The upstream connection failed mid-request (closed, or sent a bad response), or
        could not connect (`transport_failure`: Envoy's upstream transport failure reason).
        Without a retry policy it is not retried, as in Envoy, even when it met a keep-alive
        connection the upstream had just closed (`reused`): Envoy answers that 503 UC too,
        and retries it only under retry_on `reset` (or 5xx, gateway-error; not
        reset-before-request: the request was written). See router_retry.py."""
        if self.done:
            return
        self.upstream = None
        self._release_request_slot()
        stream = self.stream
        if stream.upgraded:
            # A tunnel ends when either side closes (its upstream closing is no reset).
            stream.encode_data(b"", True)
            return
        self.cluster.stats.upstream_rq_rx_reset.value += 1
        self._outlier_connect_failed(flag)
        if not self.response_started:
            self._charge_local(status)
        if self.response_started:
            stream.set_response_flag(flag)
            stream.reset("upstream_reset_after_response_started{%s}" % reason.replace(" ", "_"))
            return
        self._reset_reply(status, reason, flag, transport_failure)

    def on_upstream_watermark(self, above: bool) -> None:
        """Upstream write buffer crossed a watermark: pause/resume reading the downstream."""
        if self.downstream_paused != above and not self.done:
            self.downstream_paused = above
            self.stream.read_disable_downstream(above)

    def on_downstream_watermark(self, above: bool) -> None:
        up = self.upstream
        if up is not None and self.upstream_paused != above:
            self.upstream_paused = above
            up.read_disable(above)

    def _charge_local(self, status: int) -> None:
        """Envoy counts a reply the router made for a chosen host (reset, timeout) in the
        cluster's upstream_rq_<code> stats too (dynamic stats, like a response's; no time)."""
        if self.config.dynamic_stats:
            self.cluster.stats.record_response(status, self.pool, self.stream.internal_request)

    def _record_time(self, now: float) -> None:
        """Envoy's upstream_rq_time: from the end of the downstream request to the end of
        the upstream response, recorded when the response is complete."""
        if self.config.dynamic_stats:
            stream = self.stream
            ms = (now - (stream.request_complete_monotonic or self.upstream_start)) * 1000.0
            self.cluster.stats.upstream_rq_time.record(ms)
            if stream.internal_request:   # (Envoy's internal.upstream_rq_time too)
                self.cluster.stats.record_internal_time(ms)

    # -- teardown -----------------------------------------------------------------------------------
    def _finish_upstream(self, reusable: bool) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            if self.upstream_paused:
                self.upstream_paused = False
                up.read_disable(False)
            up.release(reusable and not self.stream.state & UPGRADED)
        self._release_request_slot()
        if self.timeout_timer is not None:
            self.timeout_timer.disable()
            self.timeout_timer = None

    def _abandon_upstream(self) -> None:
        if self.pool_handle is not None:
            self.pool_handle.cancel()
            self.pool_handle = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.reset()
        self._release_request_slot()

    def _release_request_slot(self) -> None:
        if self.holds_retry_slot:
            self.holds_retry_slot = False
            self.pool.limits.release_retry()
        if self.holds_request_slot:
            self.holds_request_slot = False
            self.pool.limits.release_request()
            self.cluster.stats.upstream_rq_active.value -= 1

    def on_destroy(self) -> None:
        """The stream is over (completed, reset or the downstream went away)."""
        if self.done:
            return
        if self.upstream is not None or self.pool_handle is not None:
            self.cluster.stats.upstream_rq_cancelled.value += 1 if not self.stream.response_complete else 0
            self._abandon_upstream()
        self.done = True
        if self.timeout_timer is not None:
            self.timeout_timer.disable()
            self.timeout_timer = None
        if self.holds_request_slot or self.holds_retry_slot:
            self._release_request_slot()


def tunnel_proxy_header(version: int, hcm) -> bytes | None:
    """A terminated CONNECT's PROXY header (connect_config.proxy_protocol_config), as Envoy's
    generateProxyProtoHeader: the downstream connection's remote and local addresses (what a
    listener filter restored, not x-forwarded-for). None for an address that is no IP."""
    try:
        return proxy_header(version, _split(hcm.remote), _split(hcm.local))
    except ValueError:
        return None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _HostlessTally:
    """Where ClusterStats.record_response counts a reply made before any host was chosen."""

    __slots__ = ("rq_error", "rq_success")

    def __init__(self) -> None:
        self.rq_error = self.rq_success = 0


class Shadow:
    """One mirrored copy of a request: its head now, its body as it is read."""

    __slots__ = ("worker", "cluster", "method", "path", "authority", "fields", "timeout", "body", "size")

    def __init__(self, worker, cluster: str, head, authority: bytes, timeout: float) -> None:
        self.worker = worker
        self.cluster = cluster
        self.method = head.method
        self.path = head.path
        self.authority = authority
        self.fields = list(head.headers.fields)
        self.timeout = timeout
        self.body: list[bytes] = []
        self.size = 0

    def send(self) -> None:
        AsyncRequest(self.worker, self.cluster, self.method, self.path, self.authority, self.fields,
                     b"".join(self.body), self.timeout, _discard, send_xff=True).send()


def _discard(answer) -> None:
    """A shadow's answer: thrown away (its cluster's stats counted it)."""


class RouterFactory:
    """The router's per-worker filter factory (FilterFactory / WorkerFilterFactory)."""

    decoder = True
    encoder = False

    def __init__(self, config, name: str = "envoy.filters.http.router", ctx=None) -> None:
        self.config = config
        self.name = name
        self.ctx = ctx

    def for_worker(self, ctx) -> RouterFactory:
        return RouterFactory(self.config, self.name, ctx)

    def create(self, callbacks) -> RouterFilter:
        return RouterFilter(callbacks, self.ctx, self.config)
