"""Route and virtual-host `rate_limits` (envoy.config.route.v3.RateLimit): the descriptors a
request makes for a rate limit filter, as Envoy's Router::RateLimitPolicyEntryImpl builds them.

Each `RateLimit` entry has a `stage` (0-10: a filter reads only the entries of its own stage)
and a list of `actions`; each action yields one descriptor entry (key, value), and an entry
makes one descriptor of its actions' entries, or none when an action cannot produce its entry:
- `source_cluster`: ("source_cluster", the node's cluster: Envoy's local_info cluster name);
- `destination_cluster`: ("destination_cluster", the route's cluster);
- `request_headers`: (descriptor_key, the header's first value); absent: the descriptor is
  dropped, or with `skip_if_absent` only this entry is left out;
- `remote_address`: ("remote_address", the downstream remote address's IP, as Envoy's
  addressAsString: no port, no brackets);
- `masked_remote_address`: ("masked_remote_address", that address masked to a CIDR range,
  `v4_prefix_mask_len` default 32, `v6_prefix_mask_len` default 128: `10.0.0.0/24`);
- `generic_key`: (descriptor_key, default "generic_key", descriptor_value);
- `header_value_match`: (descriptor_key, default "header_match", descriptor_value) when the
  request's match of `headers` (all must match) equals `expect_match` (default true), else the
  descriptor is dropped.
- `metadata`: (descriptor_key, the string at `metadata_key` (a namespace and a path of keys) in the
  stream's dynamic metadata, as Envoy reads it when the filter runs); a missing value, or one
  that is not a string or is empty, gives `default_value` when set, else with `skip_if_absent`
  this entry is left out, else the descriptor is dropped; with `source: ROUTE_ENTRY` the
  route's metadata (`metadata.filter_metadata`) instead. The deprecated `dynamic_metadata`
  action is refused (Envoy 1.40 refuses it too, without a runtime override).
`disable_key` would let a runtime key `ratelimit.<key>.http_filter_enabled` turn an entry off;
without a runtime layer its default (100 %) applies, so the entry is always on. The other
actions (query parameters, extensions), `limit` overrides, `hits_addend` and
`apply_on_stream_done` are refused.

One builder (`descriptors`) for every rate limit filter: the global ratelimit filter today, the
local_ratelimit filter's `descriptors` when they are built. Thread affinity: parsed on the main
thread, immutable; `descriptors` is pure (any worker).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, inert, refused, used
from ..config.reader import ConfigError, Fields, header_bytes
from .matchers import HeaderMatcher, parse_header_matcher
from .metadata_matcher import lookup, parse_metadata_path

__all__ = ["RateLimitEntry", "RateLimitAction", "parse_rate_limits", "descriptors",
           "RATE_LIMIT", "MAX_STAGE"]

MAX_STAGE = 10     # Envoy's RateLimitPolicyImpl::MAX_STAGE_NUMBER

(SOURCE_CLUSTER, DESTINATION_CLUSTER, REQUEST_HEADERS, REMOTE_ADDRESS, GENERIC_KEY,
 HEADER_VALUE_MATCH, MASKED_REMOTE_ADDRESS, METADATA, ROUTE_METADATA) = range(9)


@dataclass(frozen=True, slots=True)
class RateLimitAction:
    kind: int
    key: bytes = b""                    # the descriptor entry's key (UTF-8)
    value: bytes = b""                  # generic_key / header_value_match: its value
    header: bytes = b""                 # request_headers: the header (lower-case)
    skip_if_absent: bool = False
    expect_match: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    v4_mask: int = 32
    v6_mask: int = 128
    metadata_key: tuple[str, tuple[str, ...]] = ("", ())   # metadata: (namespace, path)


@dataclass(frozen=True, slots=True)
class RateLimitEntry:
    stage: int
    actions: tuple[RateLimitAction, ...]
    disable_key: str = ""


RATE_LIMIT = Message("envoy.config.route.v3.RateLimit", model=RateLimitEntry, fields=(
    used("stage", 0),
    inert("disable_key", "no runtime layer: ratelimit.<key>.http_filter_enabled keeps its "
          "default (100 %), so the entry is always on", attr="disable_key"),
    used("actions"),
    refused("limit", "limit overrides from dynamic metadata"),
    refused("hits_addend"),
    refused("apply_on_stream_done", "rate limiting when the stream ends", default=False,
            only_default=True),
))
ACTION = Message("envoy.config.route.v3.RateLimit.Action", model=RateLimitAction,
                 bookkeeping=("kind", "key", "value", "header"), fields=(
    used("source_cluster", attr="kind"),
    used("destination_cluster", attr="kind"),
    used("request_headers", attr="kind", why="its own table"),
    used("remote_address", attr="kind"),
    used("generic_key", attr="kind", why="its own table"),
    used("header_value_match", attr="kind", why="its own table"),
    used("masked_remote_address", attr="kind", why="its own table"),
    refused("query_parameters"),
    refused("query_parameter_value_match"),
    refused("dynamic_metadata", "deprecated, and refused by Envoy 1.40 too: use metadata"),
    used("metadata", attr="kind", why="its own table"),
    refused("extension", "descriptor extensions"),
))
REQUEST_HEADERS_ACTION = Message("envoy.config.route.v3.RateLimit.Action.RequestHeaders", fields=(
    used("header_name", attr="header"),
    used("descriptor_key", attr="key"),
    used("skip_if_absent", False),
))
GENERIC_KEY_ACTION = Message("envoy.config.route.v3.RateLimit.Action.GenericKey", fields=(
    used("descriptor_value", attr="value"),
    used("descriptor_key", "generic_key", attr="key"),
))
HEADER_VALUE_MATCH_ACTION = Message("envoy.config.route.v3.RateLimit.Action.HeaderValueMatch", fields=(
    used("descriptor_value", attr="value"),
    used("descriptor_key", "header_match", attr="key"),
    used("expect_match", True),
    used("headers"),
))
MASKED_REMOTE_ADDRESS_ACTION = Message("envoy.config.route.v3.RateLimit.Action.MaskedRemoteAddress", fields=(
    used("v4_prefix_mask_len", 32, attr="v4_mask"),
    used("v6_prefix_mask_len", 128, attr="v6_mask"),
))
METADATA_ACTION = Message("envoy.config.route.v3.RateLimit.Action.MetaData", fields=(
    used("descriptor_key", attr="key"),
    used("metadata_key"),
    used("default_value", "", attr="value"),
    used("source", "DYNAMIC", attr="kind", why="DYNAMIC: the stream's dynamic metadata; ROUTE_ENTRY: the route's"),
    used("skip_if_absent", False),
))
METADATA_KEY = Message("envoy.type.metadata.v3.MetadataKey", fields=(
    used("key", attr="metadata_key", why="the namespace; required, non-empty"),
    used("path", attr="metadata_key", why="at least one key"),
))
EMPTY = Message("envoy.config.route.v3.RateLimit.Action.{SourceCluster,DestinationCluster,RemoteAddress}",
                fields=())

_SIMPLE = {"source_cluster": SOURCE_CLUSTER, "destination_cluster": DESTINATION_CLUSTER,
           "remote_address": REMOTE_ADDRESS}


def _parse_action(raw: Any, path: str) -> RateLimitAction:
    f = ACTION.read(raw, path)
    kind = f.oneof(*(s.name for s in ACTION.fields), required=True)
    at = f.at(kind)
    if kind in _SIMPLE:
        EMPTY.read(f.value(kind) or {}, at)
        return RateLimitAction(_SIMPLE[kind])
    if kind == "request_headers":
        a = REQUEST_HEADERS_ACTION.read(f.value(kind), at)
        name = a.str("header_name", required=True)
        key = a.str("descriptor_key", required=True)
        if not name:
            raise ConfigError(a.at("header_name"), "must not be empty")
        if not key:
            raise ConfigError(a.at("descriptor_key"), "must not be empty")
        return RateLimitAction(REQUEST_HEADERS, key=key.encode(), header=header_bytes(name.lower(), a.at("header_name")),
                               skip_if_absent=a.bool("skip_if_absent", False))
    if kind == "generic_key":
        a = GENERIC_KEY_ACTION.read(f.value(kind), at)
        value = a.str("descriptor_value", required=True)
        if not value:
            raise ConfigError(a.at("descriptor_value"), "must not be empty")
        return RateLimitAction(GENERIC_KEY, key=(a.str("descriptor_key", "") or "generic_key").encode(),
                               value=value.encode())
    if kind == "header_value_match":
        a = HEADER_VALUE_MATCH_ACTION.read(f.value(kind), at)
        value = a.str("descriptor_value", required=True)
        if not value:
            raise ConfigError(a.at("descriptor_value"), "must not be empty")
        matchers = tuple(parse_header_matcher(item, p)
                         for item, p in a.list("headers", required=True, min_items=1))
        return RateLimitAction(HEADER_VALUE_MATCH, key=(a.str("descriptor_key", "") or "header_match").encode(),
                               value=value.encode(), expect_match=a.bool("expect_match", True), headers=matchers)
    if kind == "masked_remote_address":
        a = MASKED_REMOTE_ADDRESS_ACTION.read(f.value(kind) or {}, at)
        return RateLimitAction(MASKED_REMOTE_ADDRESS, v4_mask=a.int("v4_prefix_mask_len", 32, min=0, max=32),
                               v6_mask=a.int("v6_prefix_mask_len", 128, min=0, max=128))
    if kind == "metadata":
        a = METADATA_ACTION.read(f.value(kind), at)
        key = a.str("descriptor_key", required=True)
        if not key:
            raise ConfigError(a.at("descriptor_key"), "must not be empty")
        source = a.enum("source", ("DYNAMIC", "ROUTE_ENTRY"), "DYNAMIC")
        k = METADATA_KEY.read(a.value("metadata_key", required=True), a.at("metadata_key"))
        namespace = k.str("key", required=True)
        if not namespace:
            raise ConfigError(k.at("key"), "must not be empty")
        return RateLimitAction(METADATA if source == "DYNAMIC" else ROUTE_METADATA, key=key.encode(), value=a.str("default_value", "").encode(),
                               skip_if_absent=a.bool("skip_if_absent", False),
                               metadata_key=(namespace, parse_metadata_path(k)))
    raise ConfigError(at, "unknown action")  # unreachable: the table refused it


def parse_rate_limits(f: Fields, key: str) -> tuple[RateLimitEntry, ...]:
    """The `rate_limits` list at `f[key]` (a route action's or a virtual host's)."""
    out = []
    for item, p in f.list(key):
        r = RATE_LIMIT.read(item, p)
        RATE_LIMIT.require_default(r, "apply_on_stream_done", r.bool("apply_on_stream_done", False))
        actions = tuple(_parse_action(a, ap) for a, ap in r.list("actions", required=True, min_items=1))
        out.append(RateLimitEntry(stage=r.int("stage", 0, min=0, max=MAX_STAGE), actions=actions,
                                  disable_key=r.str("disable_key", "")))
    return tuple(out)


# -- building descriptors (per request) ---------------------------------------------------------
def _ip(remote: str) -> str | None:
    """The IP of an `ip:port` / `[ip]:port` address string (None: not an IP address)."""
    if not remote:
        return None
    if remote[0] == "[":
        return remote[1:remote.index("]")]
    host, sep, _ = remote.rpartition(":")
    return host if sep else remote


def _masked(ip: str, action: RateLimitAction) -> str | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = action.v4_mask if addr.version == 4 else action.v6_mask
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def _entry(action: RateLimitAction, head, info, local_cluster: str, cluster: str):
    """The action's (key, value) bytes; None: the descriptor is dropped; (): this entry is left
    out."""
    kind = action.kind
    if kind == REQUEST_HEADERS:
        value = head.headers.get(action.header) if action.header[:1] != b":" else _pseudo(head, action.header)
        if value is None:
            return () if action.skip_if_absent else None
        return (action.key, value)
    if kind == GENERIC_KEY:
        return (action.key, action.value)
    if kind == HEADER_VALUE_MATCH:
        matched = all(m.matches(head) for m in action.headers)
        return (action.key, action.value) if matched == action.expect_match else None
    if kind == REMOTE_ADDRESS:
        ip = _ip(info.downstream_remote_address)
        return (b"remote_address", ip.encode()) if ip else None
    if kind == MASKED_REMOTE_ADDRESS:
        ip = _ip(info.downstream_remote_address)
        masked = _masked(ip, action) if ip else None
        return (b"masked_remote_address", masked.encode()) if masked else None
    if kind == METADATA or kind == ROUTE_METADATA:
        namespace, path = action.metadata_key
        md = getattr(info, "dynamic_metadata", None) if kind == METADATA else _route_metadata(info)
        found = lookup(md, namespace, path)
        if isinstance(found, str) and found:
            return (action.key, found.encode("utf-8"))
        if action.value:
            return (action.key, action.value)
        return () if action.skip_if_absent else None
    if kind == SOURCE_CLUSTER:
        return (b"source_cluster", local_cluster)
    return (b"destination_cluster", cluster)


def _route_metadata(info) -> Any:
    """The metadata of the stream's route (Envoy's info.route()->metadata())."""
    route_of = getattr(info, "route", None)   # the HTTP stream: its cached route
    route = route_of() if route_of is not None else None
    return route.metadata if route is not None else None


def _pseudo(head, name: bytes) -> bytes | None:
    value = head.get_str(name.decode("latin-1"))
    return value.encode("latin-1") if value is not None else None


def descriptors(entries: tuple[RateLimitEntry, ...], stage: int, head, info, local_cluster: bytes,
                cluster: bytes, out: list) -> None:
    """Append to `out` the descriptor (a tuple of (key, value) bytes entries) of each entry of
    `stage` whose every action produced its entry (Envoy's populateDescriptors). `head` is the
    RequestHead, `info` the StreamInfo (downstream_remote_address), `local_cluster` the node's
    cluster, `cluster` the route's."""
    for entry in entries:
        if entry.stage != stage:
            continue
        items = []
        for action in entry.actions:
            e = _entry(action, head, info, local_cluster, cluster)
            if e is None:
                break
            if e:
                items.append(e)
        else:
            out.append(tuple(items))
