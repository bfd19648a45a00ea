"""Envoy's request header handling in the HTTP connection manager, before routing.

Job: the rules Envoy's ConnectionManagerUtility::mutateRequestHeaders applies to every request
(hop-by-hop fields and the ones Connection names dropped, but `te: trailers`, x-forwarded-for / -proto, via,
x-request-id generated or kept, Envoy's x-envoy-* sanitising and x-envoy-external-address), and
the rewrite of an absolute-form target. Works on the request's `Headers` in place; the fields
to drop are one set per HCM and kind of request (`request_fields_removed`), so a request pays
one set test for all of them.

Who the client is (original_ip.py has the parsing): with use_remote_address, the socket's peer,
or with xff_num_trusted_hops N the Nth x-forwarded-for entry from the right; without, the
detection extensions decide (by default x-forwarded-for's entry xff_num_trusted_hops from
the right), and without an answer the peer. A derived address is the stream's remote address
(`derived_remote_address`, port 0), what every reader of the downstream remote address sees.
Envoy's internal/external split: a request is internal only when that address is trusted
(use_remote_address and no x-forwarded-for came; or a single x-forwarded-for entry and no
trusted hop; or a custom_header extension allowed to say so) and in internal_address_config's
networks (since Envoy 1.33 no address is unless listed). For an external request Envoy drops
the fields that would steer its router (x-envoy-retry-on, x-envoy-upstream-rq-timeout-ms, ...);
at the edge (use_remote_address, external) also the fields naming the caller, and sets
x-envoy-external-address to the client's address (HTTP header sanitizing, Envoy docs). An
internal request keeps them and gets `x-envoy-internal: true`; every request loses a
client's own x-envoy-internal. x-forwarded-for gets the peer's address, or this host's
(`ctx.local_address`) when the peer is on loopback, as Envoy does.
Thread affinity: the worker that owns the request. Must not: do I/O or answer requests (the
connection manager decides what to refuse; a detection extension's rejection is raised).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..network.address import is_loopback
from .client_cert import XFCC, xfcc_details
from .headers import HOP_BY_HOP, Headers, RequestHead, append_via
from .original_ip import XffDetection, last_address_from_xff
from ..router.steering import ROUTER_STEERING

__all__ = ["mutate_request_headers", "absolute_form", "request_fields_removed", "address_rules",
           "AddressRules"]


class AddressRules(NamedTuple):
    """One HCM's rules for the client's address (see the module docstring)."""
    # The detection extensions in order (without use_remote_address): the HCM's own
    # x-forwarded-for rule when none is configured.
    detectors: tuple[Any, ...]
    # Only the HCM's own rule: nothing to derive from a request without x-forwarded-for.
    xff_only: bool
    # Rules to apply to a request without x-forwarded-for too (use_remote_address, extensions).
    always: bool
    internal: Any                          # original_ip.InternalAddresses, or None
    # What an internal request loses (it keeps Envoy's x-envoy-* fields), and an upgrade one.
    internal_removed: frozenset[bytes]
    internal_upgrade_removed: frozenset[bytes]


def address_rules(config, forward_client_cert: str = "SANITIZE") -> AddressRules:
    detectors = config.original_ip_detection or (XffDetection(config.xff_num_trusted_hops),)
    internal = (_ENVOY_ROUTER_CONSUMED - {b"x-envoy-internal"}) | (
        {XFCC} if forward_client_cert == "SANITIZE" else frozenset())
    return AddressRules(detectors, not config.original_ip_detection,
                        config.use_remote_address or bool(config.original_ip_detection),
                        config.internal_address_config,
                        HOP_BY_HOP | internal, HOP_BY_HOP_UPGRADE | internal)


def request_fields_removed(hop_by_hop: frozenset[bytes], use_remote_address: bool,
                           internal_only: tuple[bytes, ...] = (),
                           forward_client_cert: str = "SANITIZE") -> frozenset[bytes]:
    """Every field the HCM drops from a request before routing, for one HCM config:
    `hop_by_hop` (connection-level fields), x-forwarded-client-cert under SANITIZE (the other
    modes decide per connection: client_cert.py), Envoy's x-envoy-* sanitising, and the route
    configuration's `internal_only` headers (internal_only_headers: Envoy removes them from
    external requests): what an external request loses (an internal one: AddressRules)."""
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
                           tls=None, info=None) -> bytes:
    """Envoy's request header sanitising and adding for the HCM context `ctx`
    (ConnectionManagerUtility::mutateRequestHeaders); `upgrade`: the request's Upgrade value
    when it asks to switch protocols; `tls`: the connection's TlsInfo (None: plaintext);
    `info`: the stream, whose `derived_remote_address` is set when the client's address is
    not the peer's. Returns the request's scheme as Envoy sets a missing :scheme:
    x-forwarded-proto when it is http or https, else https over TLS and http without.
    Raises original_ip.IpDetectionRejected when a detection extension rejects the request."""
    cfg = ctx.config
    proto = b"https" if tls is not None else b"http"
    # One pass collects the names present; each rule below is then a set lookup, and
    # the header list is only rebuilt when something must go.
    present = {kv[0] for kv in headers.fields}
    # Who the client is, and so what the request loses: only looked into when there is
    # something to look at (_client_address).
    if b"x-forwarded-for" in present or ctx.address_rules.always:
        client_ip, internal, drop = _client_address(ctx, headers, present, remote_ip, upgrade, info)
    else:
        drop = ctx.upgrade_request_headers_removed if upgrade is not None else ctx.request_headers_removed
    if upgrade is None and b"connection" in present:
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
    if cfg.use_remote_address:  # (client_ip and internal were set: _client_address ran)
        # A trusted hop's x-forwarded-proto is kept (Envoy: with xff_num_trusted_hops).
        if not cfg.xff_num_trusted_hops or b"x-forwarded-proto" not in present:
            headers.set(b"x-forwarded-proto", proto)
            scheme = proto
        else:
            xfp = headers.get(b"x-forwarded-proto")
            scheme = xfp if xfp.lower() in (b"http", b"https") else proto
        if not internal:
            # The edge: the first ingress into the trusted network (x-envoy-external-address).
            headers.fields.append((b"x-envoy-external-address",
                                   client_ip.encode() if client_ip else remote_ip.encode()))
    elif b"x-forwarded-proto" not in present:
        headers.fields.append((b"x-forwarded-proto", proto))
        scheme = proto
    else:  # a trusted proxy's value
        xfp = headers.get(b"x-forwarded-proto")
        scheme = xfp if xfp.lower() in (b"http", b"https") else proto
    if cfg.generate_request_id:
        if b"x-request-id" not in present:
            headers.fields.append((b"x-request-id", ctx.worker.new_request_id()))
        elif cfg.use_remote_address and not internal and not cfg.preserve_external_request_id:
            # (at the edge)
            headers.set(b"x-request-id", ctx.worker.new_request_id())
    mode = cfg.forward_client_cert_details
    if mode != "SANITIZE" and mode != "ALWAYS_FORWARD_ONLY":
        _mutate_xfcc(headers, mode, cfg.set_current_client_cert_details, tls)
    return scheme


def _client_address(ctx, headers: Headers, present: set[bytes], remote_ip: str,
                    upgrade: bytes | None, info) -> tuple[str | None, bool, frozenset[bytes]]:
    """Envoy's rules (module docstring): (the client's address when it is not the peer's,
    whether the request is internal, the fields it loses); sets `info.derived_remote_address`,
    appends this hop to x-forwarded-for when the rules say so, and marks an internal request
    (x-envoy-internal: true, which the drop set then keeps)."""
    cfg = ctx.config
    rules = ctx.address_rules
    networks = rules.internal
    has_xff = b"x-forwarded-for" in present
    client_ip = None
    if cfg.use_remote_address:
        if has_xff and cfg.xff_num_trusted_hops:
            client_ip = last_address_from_xff(_xff(headers), cfg.xff_num_trusted_hops - 1)[0]
        # Trusted only when no x-forwarded-for came (the peer is then the client).
        internal = networks is not None and not has_xff and networks.is_internal(remote_ip)
        append = not cfg.skip_xff_append
    elif rules.xff_only:  # the HCM's own rule: x-forwarded-for's entry (one came)
        client_ip, trusted = last_address_from_xff(_xff(headers), cfg.xff_num_trusted_hops)
        internal = trusted and networks is not None and networks.is_internal(client_ip)
        append = False
    else:
        xff = _xff(headers) if has_xff else None
        internal = False
        skip = True
        for detector in rules.detectors:
            ip, trusted, skip = detector.detect(xff, remote_ip, headers)
            if ip is not None:
                client_ip = ip
                internal = trusted and networks is not None and networks.is_internal(ip)
                break
        append = not skip
    if client_ip is not None and info is not None:
        info.derived_remote_address = (f"[{client_ip}]:0" if ":" in client_ip
                                       else client_ip + ":0")
    if append:
        xff = _xff(headers) if has_xff else None
        # Envoy appends its own address, not the peer's, when the peer is on loopback.
        ip = ctx.local_address if is_loopback(remote_ip) else remote_ip.encode()
        headers.set(b"x-forwarded-for", xff + b"," + ip if xff else ip)  # Envoy: "," alone
    if not internal:
        return client_ip, False, (ctx.upgrade_request_headers_removed if upgrade is not None
                                  else ctx.request_headers_removed)
    headers.set(b"x-envoy-internal", b"true")
    if info is not None:
        info.internal_request = True   # the router charges internal.* stats for it
        if not present.isdisjoint(ROUTER_STEERING):
            info.steering = True       # the router reads (and removes) these: router/steering.py
        if b"x-envoy-force-trace" in present:
            info.force_trace = True  # kept: Envoy echoes x-request-id in the response then
    return client_ip, True, (rules.internal_upgrade_removed if upgrade is not None
                             else rules.internal_removed)


def _xff(headers: Headers) -> bytes:
    """x-forwarded-for as one value: Envoy joins repeated fields with "," (and forwards them
    so, as one field)."""
    values = headers.get_all(b"x-forwarded-for")
    if len(values) == 1:
        return values[0]
    joined = b",".join(values)
    headers.set(b"x-forwarded-for", joined)
    return joined


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
# What an internal request loses of them: x-envoy-internal (Envoy sets its own) and
# x-envoy-upstream-alt-stat-name (no alternate stat names here). The fields Envoy's router acts
# on (ROUTER_STEERING) are kept for the router, which reads and removes them.
_ENVOY_ROUTER_CONSUMED = frozenset({b"x-envoy-internal", b"x-envoy-upstream-alt-stat-name"})
# Also dropped at the edge: the fields naming the caller, the client's own
# x-envoy-external-address (ours replaces it), and x-envoy-original-path (only ftproxy sets it).
_ENVOY_EDGE = frozenset({
    b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node", b"x-envoy-external-address",
    b"x-envoy-original-path",
})
