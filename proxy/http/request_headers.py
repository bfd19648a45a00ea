"""Envoy's request header handling in the HTTP connection manager, before routing.

Job: the rules Envoy's ConnectionManagerUtility::mutateRequestHeaders applies to every request
(hop-by-hop fields and the ones Connection names dropped, but `te: trailers`, x-forwarded-for / -proto, via,
x-request-id generated or kept, Envoy's x-envoy-* sanitising and x-envoy-external-address), and
the rewrite of an absolute-form target. Works on the request's `Headers` in place; the fields
to drop are one set per HCM (`request_fields_removed`), so a request pays one set test for
all of them.

Envoy's internal/external split: a request is internal only when its single XFF address is in
internal_address_config; since Envoy 1.33 no address is unless listed, and ftproxy accepts only
that default, so every request is external here. For external requests Envoy drops the fields
that would steer its router (x-envoy-retry-on, x-envoy-upstream-rq-timeout-ms, ...), always
drops x-envoy-internal, and at the edge (use_remote_address) also drops the fields naming the
caller and sets x-envoy-external-address to the client's address (HTTP header sanitizing,
Envoy docs). x-forwarded-for gets the peer's address, or this host's (`ctx.local_address`) when
the peer is on loopback, as Envoy does.
Thread affinity: the worker that owns the request. Must not: do I/O or answer requests (the
connection manager decides what to refuse).
"""

from __future__ import annotations

from ..network.address import is_loopback
from .client_cert import XFCC, xfcc_details
from .headers import Headers, RequestHead, append_via

__all__ = ["mutate_request_headers", "absolute_form", "request_fields_removed"]


def request_fields_removed(hop_by_hop: frozenset[bytes], use_remote_address: bool,
                           internal_only: tuple[bytes, ...] = (),
                           forward_client_cert: str = "SANITIZE") -> frozenset[bytes]:
    """Every field the HCM drops from a request before routing, for one HCM config:
    `hop_by_hop` (connection-level fields), x-forwarded-client-cert under SANITIZE (the other
    modes decide per connection: client_cert.py), Envoy's x-envoy-* sanitising, and the route
    configuration's `internal_only` headers (internal_only_headers: Envoy removes them from
    external requests, and every request is external here)."""
    removed = hop_by_hop | _ENVOY_EXTERNAL | frozenset(internal_only)
    if forward_client_cert == "SANITIZE":
        removed |= {XFCC}
    return removed | _ENVOY_EDGE if use_remote_address else removed


def absolute_form(head: RequestHead) -> bytes:
    """The authority and path of an absolute-form target (RFC 9112 §3.2.2: the authority
    comes from the target, and replaces any Host); returns the target's scheme."""
    target = head.path
    scheme, rest = target.split(b"://", 1)
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    head.set_authority(authority)
    head.set_path(path)
    head.headers.set(b"host", authority)
    return scheme.lower()


def mutate_request_headers(ctx, headers: Headers, remote_ip: str, upgrade: bytes | None,
                           tls=None) -> bytes:
    """Envoy's request header sanitising and adding for the HCM context `ctx`
    (ConnectionManagerUtility::mutateRequestHeaders); `upgrade`: the request's Upgrade value
    when it asks to switch protocols; `tls`: the connection's TlsInfo (None: plaintext).
    Returns the request's scheme as Envoy sets a missing :scheme: x-forwarded-proto when it is
    http or https, else https over TLS and http without."""
    cfg = ctx.config
    proto = b"https" if tls is not None else b"http"
    # One pass collects the names present; each rule below is then a set lookup, and
    # the header list is only rebuilt when something must go.
    present = {kv[0] for kv in headers.fields}
    if upgrade is not None:
        drop = ctx.upgrade_request_headers_removed
    else:
        drop = ctx.request_headers_removed
        if b"connection" in present:
            # RFC 9110 §7.6.1: drop the fields that Connection names.
            names = {t.strip().lower() for t in headers.get(b"connection").split(b",")}
            drop = drop | (names - _PROTECTED)
    if not present.isdisjoint(drop):
        te = headers.get(b"te") if b"te" in present else None
        headers.remove_many(drop)
        if te is not None and _asks_trailers(te):
            headers.fields.append((b"te", b"trailers"))  # Envoy's sanitizeTEHeader
        present = {kv[0] for kv in headers.fields}
    if cfg.via:
        append_via(headers, ctx.via)
    if ctx.user_agent is not None:
        _add_user_agent(headers, ctx.user_agent)
    if cfg.use_remote_address:
        if not cfg.skip_xff_append:
            xff = headers.get(b"x-forwarded-for")
            # Envoy appends its own address, not the peer's, when the peer is on loopback.
            ip = ctx.local_address if is_loopback(remote_ip) else remote_ip.encode()
            headers.set(b"x-forwarded-for", xff + b"," + ip if xff else ip)  # Envoy: "," alone
        headers.set(b"x-forwarded-proto", proto)
        # The edge: the first ingress into the trusted network (x-envoy-external-address).
        headers.fields.append((b"x-envoy-external-address", remote_ip.encode()))
        scheme = proto
    elif b"x-forwarded-proto" not in present:
        headers.fields.append((b"x-forwarded-proto", proto))
        scheme = proto
    else:  # a trusted proxy's value (every request is external, but Envoy keeps it here too)
        xfp = headers.get(b"x-forwarded-proto")
        scheme = xfp if xfp.lower() in (b"http", b"https") else proto
    if cfg.generate_request_id:
        if b"x-request-id" not in present:
            headers.fields.append((b"x-request-id", ctx.worker.new_request_id()))
        elif cfg.use_remote_address and not cfg.preserve_external_request_id:
            headers.set(b"x-request-id", ctx.worker.new_request_id())
    mode = cfg.forward_client_cert_details
    if mode != "SANITIZE" and mode != "ALWAYS_FORWARD_ONLY":
        _mutate_xfcc(headers, mode, cfg.set_current_client_cert_details, tls)
    return scheme


def _add_user_agent(headers: Headers, node: tuple[bytes, bytes]) -> None:
    """add_user_agent (Envoy's mutateRequestHeaders): the node's cluster names the caller."""
    cluster, node_id = node
    headers.set(b"x-envoy-downstream-service-cluster", cluster)
    if not headers.get(b"user-agent"):
        headers.set(b"user-agent", cluster)
    if node_id:
        headers.set(b"x-envoy-downstream-service-node", node_id)


def _asks_trailers(te: bytes) -> bool:
    """Envoy keeps a TE field naming `trailers` (gRPC needs it), as `te: trailers` alone."""
    return any(t.strip() == b"trailers" for t in te.split(b","))


def _mutate_xfcc(headers: Headers, mode: str, details: tuple[str, ...], tls) -> None:
    """FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET (client_cert.py has the rules)."""
    if tls is None or tls.peer_certificate is None:
        headers.remove(XFCC)  # not mutual TLS: nothing a client says about itself is kept
        return
    if mode == "FORWARD_ONLY":
        return
    value = xfcc_details(tls, details)
    if mode == "APPEND_FORWARD":
        current = headers.get(XFCC)
        headers.set(XFCC, current + b"," + value if current else value)
    else:  # SANITIZE_SET
        headers.set(XFCC, value)


# What an upgrade request keeps of the hop-by-hop fields: Connection and Upgrade go upstream.
HOP_BY_HOP_UPGRADE = frozenset({b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te"})
_PROTECTED = frozenset({b"host", b"content-length", b"x-request-id"})
# Dropped from every external request (see the module docstring), x-envoy-internal included.
_ENVOY_EXTERNAL = frozenset({
    b"x-envoy-internal", b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-force-trace", b"x-envoy-ip-tags",
    b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-original-url",
})
# Also dropped at the edge: the fields naming the caller, the client's own
# x-envoy-external-address (ours replaces it), and fields only ftproxy itself sets.
_ENVOY_EDGE = frozenset({
    b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node", b"x-envoy-external-address",
    b"x-envoy-original-path", b"x-envoy-upstream-service-time",
})
