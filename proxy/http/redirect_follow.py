"""Following an internal redirect: the router's side and the connection manager's side.

The decision is proxy/router/internal_redirect.py's (no I/O); this module applies it, as Envoy
1.40 does:
- `follow_internal_redirect(router, status, headers, response_complete)`: from the router, on
  an upstream 3xx its route's policy lists. For a request that ended with its body kept (within
  the stream's buffer limit), it rewrites the request for the Location (keeping the old one to
  restore when the redirect is refused), routes it again, asks the predicates, counts
  `upstream_internal_redirect_succeeded_total` / `_failed_total` on the cluster and the router's
  `passthrough_internal_redirect_*`, ends the upstream attempt and asks the stream to be
  recreated. False: the 3xx goes on to the client as it is.
- `recreate_stream(hcm, old, body)`: Envoy's recreateStream. The old stream is finished and
  logged (its 3xx, details `internal_redirect`, not counted as a completed response); a new
  stream with the same id, head (as the router left it: rewritten path, x-envoy-original-path,
  x-request-id...), start time and redirect state runs the whole HTTP filter chain again (new
  filter instances) with the kept body. What the connection manager did to the head when it
  arrived (x-forwarded-for, x-forwarded-proto, x-request-id...) is not done again: it is
  already there. Run from the dispatcher's deferred queue, after the upstream callback that
  decided it has returned (Envoy defers the old stream's deletion the same way): the new
  stream's router may take the very connection the 3xx came on.

Thread affinity: the worker owning the stream. Must not: parse or decide (internal_redirect.py).
"""

from __future__ import annotations

import logging
import time

from ..router.internal_redirect import (RedirectState, accept_route, becomes_get,
                                        copy_response_headers, original_url, plan_redirect)
from .headers import ResponseHead
from .stream_state import CLOSED, REQUEST_COMPLETE, RESPONSE_STARTED

__all__ = ["follow_internal_redirect", "recreate_stream", "INTERNAL_REDIRECT_DETAILS"]

INTERNAL_REDIRECT_DETAILS = "internal_redirect"

log = logging.getLogger("ftproxy.http")


def follow_internal_redirect(router, status: int, headers, response_complete: bool) -> bool:
    """Envoy's setupRedirect for the upstream answer `status` / `headers` (Headers)."""
    stream = router.stream
    body = router.redirect_body
    cstats = router.cluster.stats
    if not router.request_ended or body is None or not _redirect(router, stream, status, headers):
        cstats.upstream_internal_redirect_failed_total.value += 1
        return False
    cstats.upstream_internal_redirect_succeeded_total.value += 1
    if becomes_get(status, stream.head.method):
        stream.head.method = b"GET"
        stream.head.headers.remove(b"content-length")
        body = None
    router._finish_upstream(response_complete)  # (the request ended: reusable if the answer did)
    router.done = True
    stream.response_code = status
    stream.response_code_details = INTERNAL_REDIRECT_DETAILS
    stream.response_headers = ResponseHead(status, headers)
    hcm = stream.hcm
    data = b"".join(body) if body else b""
    stream.dispatcher.defer(lambda: recreate_stream(hcm, stream, data))
    return True


def _redirect(router, stream, status: int, headers) -> bool:
    """convertRequestHeadersForInternalRedirect: the request rewritten for the Location and
    its new route accepted (True), or left as it was (False, the reason counted)."""
    policy = router.redirect_policy
    head = stream.head
    is_http = head.scheme == b"http" or stream.downstream_ssl is None
    state = stream.internal_redirect_state
    if state is None:
        state = stream.internal_redirect_state = RedirectState()
    target, reason = plan_redirect(policy, state, headers.get(b"location"), is_http)
    if target is None:
        if reason is not None:
            getattr(router.ctx.stats, "passthrough_internal_redirect_" + reason).value += 1
        return False
    saved = (list(head.headers.fields), head.scheme, head.authority, head.path,
             stream.cached_route, stream.picked_cluster)
    if policy.response_headers_to_copy:
        copy_response_headers(policy.response_headers_to_copy, headers, head.headers)
    head.scheme = target.scheme
    head.set_authority(target.authority)
    head.headers.set(b"host", target.authority)
    head.set_path(target.path)
    stream.clear_route_cache()
    route = stream.route()
    reason = None
    if route is None:
        reason = "no_route"
    elif not accept_route(policy, state, router.route.name, route.name, is_http, target.is_http):
        reason = "predicate"
    if reason is not None:
        fields, head.scheme, authority, path, stream.cached_route, stream.picked_cluster = saved
        head.headers.fields[:] = fields
        head.set_authority(authority)
        head.set_path(path)
        getattr(router.ctx.stats, "passthrough_internal_redirect_" + reason).value += 1
        return False
    state.count += 1
    head.headers.set(b"x-envoy-original-url", original_url(is_http, saved[2], saved[3]))
    return True


def recreate_stream(hcm, old, body: bytes) -> None:
    """The stream `old` (its router followed a redirect) replaced by a new one for its
    rewritten request (see the module docstring); nothing if it ended meanwhile."""
    if (old.state & (CLOSED | RESPONSE_STARTED) or hcm.streams.get(old.stream_id) is not old
            or hcm.connection.closed):
        return
    hcm._finish_stream(old, count_response=False)
    st = hcm.stats
    st.downstream_rq_total.value += 1
    st.downstream_rq_active.value += 1
    ps = hcm.protocol_stats
    if ps is not None:
        ps[2].value += 1   # downstream_rq_http1_total / _http2_total, as Envoy's new stream
    stream = type(old)(hcm, old.stream_id, old.head, None, old.start_time, old.start_monotonic)
    stream.internal_redirect_state = old.internal_redirect_state
    stream.state = REQUEST_COMPLETE
    stream.request_complete_monotonic = old.request_complete_monotonic or time.monotonic()
    stream.bytes_received = old.bytes_received
    hcm.streams[old.stream_id] = stream
    hcm.watch_stream(stream)
    ctx = hcm.ctx
    if ctx.tracer is not None:
        try:
            ctx.tracer.start(stream)
        except Exception:
            log.exception("tracer failed to start a span")
    stream.create_filter_chain(ctx.filter_factories, ctx.filter_chain_plans)
    stream.decode_headers(not body)
    if body and stream.state < CLOSED:
        stream.decode_data(body, True)
