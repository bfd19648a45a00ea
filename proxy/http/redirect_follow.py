"""Following an internal redirect: the router's side (Envoy 1.40's setupRedirect).

The decision is proxy/router/internal_redirect.py's (no I/O); `follow_internal_redirect(router,
status, headers, response_complete)` applies it, from the router, on an upstream 3xx its
route's policy lists. For a request that ended with its body kept (within the stream's buffer
limit), it rewrites the request for the Location (keeping the old one to restore when the
redirect is refused), routes it again, asks the predicates, counts
`upstream_internal_redirect_succeeded_total` / `_failed_total` on the cluster and the router's
`passthrough_internal_redirect_*`, ends the upstream attempt and asks the stream to be
recreated (`stream.recreate`: ActiveStream, then ConnectionManager.recreate_stream). False:
the 3xx goes on to the client as it is.

Thread affinity: the worker owning the stream. Must not: parse or decide (internal_redirect.py),
or create streams (the connection manager does).
"""

from __future__ import annotations

from ..router.internal_redirect import (RedirectState, accept_route, becomes_get,
                                        copy_response_headers, original_url, plan_redirect)
from .headers import ResponseHead

__all__ = ["follow_internal_redirect"]


def follow_internal_redirect(router, status: int, headers, response_complete: bool) -> bool:
    """Envoy's setupRedirect for the upstream answer `status` / `headers` (Headers)."""
    stream = router.stream
    body = router.redirect_body
    cstats = router.cluster.stats
    if not router.request_ended or body is None or not _redirect(router, stream, headers):
        cstats.upstream_internal_redirect_failed_total.value += 1
        return False
    cstats.upstream_internal_redirect_succeeded_total.value += 1
    if becomes_get(status, stream.head.method):
        stream.head.method = b"GET"
        stream.head.headers.remove(b"content-length")
        body = None
    router._finish_upstream(response_complete)  # (the request ended: reusable if the answer did)
    router.done = True
    stream.recreate(ResponseHead(status, headers), b"".join(body) if body else b"")
    return True


def _redirect(router, stream, headers) -> bool:
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
        head.headers.fields = fields
        head.set_authority(authority)
        head.set_path(path)
        getattr(router.ctx.stats, "passthrough_internal_redirect_" + reason).value += 1
        return False
    state.count += 1
    head.headers.set(b"x-envoy-original-url", original_url(is_http, saved[2], saved[3]))
    return True
