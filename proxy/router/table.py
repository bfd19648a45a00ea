"""`RouteTable`: virtual-host selection by Host, then the first matching route.

Job: index a parsed `RouteConfiguration` once (per RDS version) and answer `route(req)` per
request. Envoy's virtual-host search order (`RouteMatcher::findVirtualHost`):
  1. exact domain (`www.foo.com`),
  2. suffix wildcard (`*.foo.com`, `*-bar.foo.com`), longest first,
  3. prefix wildcard (`foo.*`, `foo-*`), longest first,
  4. the `*` virtual host.
A wildcard never matches the empty string; hosts compare case-insensitively.
Ports: with `ignore_port_in_host_matching` the Host's port is dropped before the search;
otherwise, as in Envoy, the Host is matched as sent, port included ("api.example.com:80" does
not match the domain "api.example.com", only "api.example.com:80" or a wildcard does).
A virtual host with `require_tls` answers a request that is not https (x-forwarded-proto, else
:scheme; EXTERNAL_ONLY exempts `x-envoy-internal: true`) with its 301 redirect route.

Must not: do I/O, or change after construction. Thread affinity: built on the main thread,
then shared read-only by every worker (no locks; `route` keeps no state).
"""

from __future__ import annotations

from typing import Any

from .config import Route, RouteConfiguration, VirtualHost
from .matchers import RequestView
from .redirect import request_scheme

__all__ = ["RouteTable", "strip_port"]

# (length, {fragment: vhost}) pairs, longest fragment first.
_Wildcards = tuple[tuple[int, dict[str, VirtualHost]], ...]


def strip_port(host: str) -> str:
    """`host` without a trailing `:port` (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        end = host.rfind("]")
        if end > 0 and host[end + 1:end + 2] == ":" and host[end + 2:].isdigit():
            return host[:end + 1]
        return host
    colon = host.rfind(":")
    if colon >= 0 and host.count(":") == 1 and host[colon + 1:].isdigit():
        return host[:colon]
    return host


def _group(pairs: list[tuple[str, VirtualHost]]) -> _Wildcards:
    by_len: dict[int, dict[str, VirtualHost]] = {}
    for frag, vh in pairs:
        by_len.setdefault(len(frag), {})[frag] = vh
    return tuple(sorted(by_len.items(), key=lambda kv: -kv[0]))


class RouteTable:
    """Immutable after `__init__`; safe to share between worker threads."""

    __slots__ = ("config", "_exact", "_suffix", "_prefix", "_default", "_strip_port_first", "_only_default")

    def __init__(self, config: RouteConfiguration) -> None:
        self.config = config
        exact: dict[str, VirtualHost] = {}
        suffixes: list[tuple[str, VirtualHost]] = []
        prefixes: list[tuple[str, VirtualHost]] = []
        default: VirtualHost | None = None
        for vh in config.virtual_hosts:
            for d in vh.domains:
                if d == "*":
                    default = vh
                    continue
                if d.startswith("*"):
                    suffixes.append((d[1:], vh))
                elif d.endswith("*"):
                    prefixes.append((d[:-1], vh))
                else:
                    exact[d] = vh
        self._exact = exact
        self._suffix = _group(suffixes)
        self._prefix = _group(prefixes)
        self._default = default
        self._strip_port_first = config.ignore_port_in_host_matching
        # Only a "*" virtual host (the common front-proxy table): the Host header cannot change
        # the outcome, so it is not even decoded.
        self._only_default = not (exact or suffixes or prefixes)

    # -- virtual host --------------------------------------------------------------------
    def _find_named(self, host: str) -> VirtualHost | None:
        vh = self._exact.get(host)
        if vh is not None:
            return vh
        n = len(host)
        for length, table in self._suffix:
            if length < n:  # the wildcard must match at least one character
                vh = table.get(host[n - length:])
                if vh is not None:
                    return vh
        for length, table in self._prefix:
            if length < n:
                vh = table.get(host[:length])
                if vh is not None:
                    return vh
        return None

    def virtual_host(self, host: str) -> VirtualHost | None:
        """The virtual host for a (lower-case) Host / :authority value."""
        vh = self._find_named(strip_port(host) if self._strip_port_first else host)
        return vh if vh is not None else self._default

    # -- route ---------------------------------------------------------------------------
    def route(self, req: Any) -> Route | None:
        """The route for `req` (a `RequestHead`), or None (Envoy answers 404 NR)."""
        vh = self._default if self._only_default else self.virtual_host(req.host_str)
        if vh is None:
            return None
        if vh.tls_redirect_route is not None and request_scheme(req) != "https":
            if vh.require_tls == "ALL" or req.headers.get(b"x-envoy-internal") != b"true":
                return vh.tls_redirect_route
        view = None
        target = req.path
        for route in vh.routes:
            match = route.match
            prefix = match.raw_prefix  # type: ignore[union-attr]
            if prefix is not None:
                if target.startswith(prefix):
                    return route
                continue
            if view is None:
                view = RequestView(req)
            if match.matches(view):  # type: ignore[union-attr]
                return route
        return None
