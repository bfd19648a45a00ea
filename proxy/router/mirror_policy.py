"""A route's `request_mirror_policies` (Envoy's shadowing): each request the route forwards is
also sent, as a copy, to another cluster, whose answer is thrown away. Config and the rules
Envoy applies to the copy; the router (http/router_filter.py) sends it.

`envoy.config.route.v3.RouteAction.RequestMirrorPolicy`: `cluster` or `cluster_header` (the
cluster named in that request header; a missing header or an unknown cluster mirrors
nothing), `runtime_fraction` (its default_value: no runtime layer), `trace_sampled` (inert:
no tracing here), `disable_shadow_host_suffix_append`. The copy's authority gets `-shadow`
after its host and before any port (`example.com:8080` -> `example.com-shadow:8080`), unless
disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, inert, refused, used
from ..config.reader import ConfigError, header_bytes
from ..config.runtime_values import FractionalPercent, parse_runtime_fractional_percent

__all__ = ["MirrorPolicy", "MIRROR_POLICY", "parse_mirror_policy", "shadow_authority"]


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    cluster: str | None = None
    cluster_header: bytes | None = None
    runtime_fraction: FractionalPercent | None = None   # None: every request
    disable_shadow_host_suffix_append: bool = False

    def target(self, headers) -> str | None:
        """The cluster this request is mirrored to (None: not mirrored)."""
        if self.cluster is not None:
            return self.cluster
        v = headers.get(self.cluster_header)
        return v.decode("latin-1") if v else None


MIRROR_POLICY = Message("envoy.config.route.v3.RouteAction.RequestMirrorPolicy", model=MirrorPolicy,
                        fields=(
    used("cluster"),
    used("cluster_header"),
    used("runtime_fraction", why="its default_value: there is no runtime layer"),
    inert("trace_sampled", "no tracing here"),
    used("disable_shadow_host_suffix_append", False),
    refused("request_headers_mutations", "header mutations of the copy"),
    refused("host_rewrite_literal", "a host rewrite of the copy"),
))


def parse_mirror_policy(raw: Any, path: str) -> MirrorPolicy:
    f = MIRROR_POLICY.read(raw, path)
    which = f.oneof("cluster", "cluster_header", required=True)
    cluster = header = None
    if which == "cluster":
        cluster = f.str("cluster")
        if not cluster:
            raise ConfigError(f.at("cluster"), "must not be empty")
    else:
        name = f.str("cluster_header")
        if not name or name.startswith(":"):
            raise ConfigError(f.at("cluster_header"), "must be a non-empty regular header name")
        header = header_bytes(name.lower(), f.at("cluster_header"))
    f.raw_obj("trace_sampled")
    fraction = f.raw_obj("runtime_fraction")
    return MirrorPolicy(cluster, header,
                        parse_runtime_fractional_percent(fraction, f.at("runtime_fraction"))
                        if fraction is not None else None,
                        f.bool("disable_shadow_host_suffix_append", False))


def shadow_authority(authority: bytes) -> bytes:
    """Envoy's shadow host: `-shadow` after the host, before a port (IPv6 literals kept)."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[:end + 1] + b"-shadow" + authority[end + 1:] if end >= 0 else authority + b"-shadow"
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"
