"""Envoy's request header handling in the HTTP connection manager, before routing.

Job: the rules Envoy's ConnectionManagerUtility::mutateRequestHeaders applies to every request
(hop-by-hop fields and the ones Connection names dropped, x-forwarded-for / -proto, via,
x-request-id generated or kept, x-envoy-* internal fields stripped at the edge), and the
rewrite of an absolute-form target. Works on the request's `Headers` in place.
Thread affinity: the worker that owns the request. Must not: do I/O or answer requests (the
connection manager decides what to refuse).
"""

from __future__ import annotations

from .headers import Headers, RequestHead, append_via

__all__ = ["mutate_request_headers", "absolute_form"]


def absolute_form(head: RequestHead) -> None:
    """The authority and path of an absolute-form target (RFC 9112 §3.2.2: the authority
    comes from the target, and replaces any Host)."""
    target = head.path
    rest = target.split(b"://", 1)[1]
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    head.set_authority(authority)
    head.set_path(path)
    head.headers.set(b"host", authority)


def mutate_request_headers(ctx, headers: Headers, remote_ip: str, upgrade: bytes | None) -> None:
    """Envoy's request header sanitising and adding for the HCM context `ctx`
    (ConnectionManagerUtility::mutateRequestHeaders); `upgrade`: the request's Upgrade value
    when it asks to switch protocols."""
    cfg = ctx.config
    # One pass collects the names present; each rule below is then a set lookup, and
    # the header list is only rebuilt when something must go.
    present = {kv[0] for kv in headers.fields}
    if upgrade is not None:
        drop = _HOP_BY_HOP_UPGRADE
    else:
        drop = ctx.request_headers_removed
        if b"connection" in present:
            # RFC 9110 §7.6.1: drop the fields that Connection names.
            names = {t.strip().lower() for t in headers.get(b"connection").split(b",")}
            drop = drop | (names - _PROTECTED)
    if not present.isdisjoint(drop):
        headers.remove_many(drop)
        present = {kv[0] for kv in headers.fields}
    if cfg.via:
        append_via(headers, ctx.via)
    if cfg.use_remote_address:
        if not cfg.skip_xff_append:
            xff = headers.get(b"x-forwarded-for")
            ip = remote_ip.encode()
            headers.set(b"x-forwarded-for", xff + b", " + ip if xff else ip)
        headers.set(b"x-forwarded-proto", b"http")
    elif b"x-forwarded-proto" not in present:
        headers.add(b"x-forwarded-proto", b"http")
    if cfg.generate_request_id:
        if b"x-request-id" not in present:
            headers.add(b"x-request-id", ctx.worker.new_request_id())
        elif cfg.use_remote_address and not cfg.preserve_external_request_id:
            headers.set(b"x-request-id", ctx.worker.new_request_id())
    # Envoy strips x-envoy-* internal headers from external requests at the edge.
    if cfg.use_remote_address and not present.isdisjoint(_ENVOY_INTERNAL):
        headers.remove_many(_ENVOY_INTERNAL)


_HOP_BY_HOP_UPGRADE = frozenset({b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                                 b"trailer", b"proxy-authenticate"})
_PROTECTED = frozenset({b"host", b"content-length", b"x-request-id"})
_ENVOY_INTERNAL = frozenset({b"x-envoy-original-path", b"x-envoy-upstream-service-time"})
