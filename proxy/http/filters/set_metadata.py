"""`envoy.filters.http.set_metadata`: puts configured values into the stream's dynamic
metadata when the request headers pass, as Envoy's set_metadata filter does.

Config `envoy.extensions.filters.http.set_metadata.v3.Config`: `metadata` entries
{`metadata_namespace` (non-empty), `allow_overwrite`, `value` (a Struct)}, and the deprecated
pair `metadata_namespace` + `value` (an entry with `allow_overwrite: true`, applied first).
`typed_value` is refused (nothing here reads typed metadata); an entry with neither value is
ignored, as Envoy ignores it (with a warning there).

Envoy 1.40's rules, kept here, per entry in order:
- a namespace the stream has no metadata in gets a copy of the value;
- an existing namespace with `allow_overwrite` gets the value merged (StructUtil::update:
  per key, a value of another kind replaces, scalars replace, objects merge recursively,
  lists append);
- an existing namespace without it is left as it is and `http.<prefix>.set_metadata.overwrite_denied`
  counts one.
Per route (`typed_per_filter_config`, the same `Config`; the most specific level only, a route's
replacing its virtual host's): its entries run after the filter's own, by the same rules, and
its refusals count `set_metadata.overwrite_denied` (no HTTP prefix: Envoy 1.40 builds route
configs without one; the counter appears with the first refusal).
The stream's dynamic metadata is `stream_info.dynamic_metadata`: namespace -> dict, created on
first use (what jwt_authn and Lua write too; access logs' and header formats'
%DYNAMIC_METADATA% read it).

Must not: share a mutable value between streams (values are copied in). Thread affinity: the
config is immutable and shared; a filter belongs to its stream's worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, inert, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ..filter import FilterHeadersStatus, PassThroughFilter

__all__ = ["MetadataEntry", "SetMetadataConfig", "parse_set_metadata", "merge_struct"]

NAME = "envoy.filters.http.set_metadata"
PROTO = "envoy.extensions.filters.http.set_metadata.v3.Config"
ENTRY_PROTO = "envoy.extensions.filters.http.set_metadata.v3.Metadata"


@dataclass(frozen=True, slots=True)
class MetadataEntry:
    metadata_namespace: str
    allow_overwrite: bool
    value: Mapping[str, Any]   # a Struct as JSON (never mutated: copied into each stream)


@dataclass(frozen=True, slots=True)
class SetMetadataConfig:
    metadata: tuple[MetadataEntry, ...]


CONFIG = Message(PROTO, title="HTTP filter set_metadata", model=SetMetadataConfig, fields=(
    used("metadata_namespace", attr="metadata", why="deprecated: with value, one entry that may overwrite"),
    used("value", attr="metadata", why="deprecated: with metadata_namespace"),
    used("metadata"),
))

ENTRY = Message(ENTRY_PROTO, title="HTTP filter set_metadata, metadata entry", model=MetadataEntry, fields=(
    used("metadata_namespace", why="required, non-empty"),
    used("allow_overwrite", False),
    used("value"),
    refused("typed_value", "typed dynamic metadata: nothing here reads it"),
))


def _struct(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(path, "expected an object (google.protobuf.Struct)")
    return _check_json(v, path)


def _check_json(v: Any, path: str) -> Any:
    """A Struct's JSON value, checked and copied into plain dicts and lists."""
    if isinstance(v, Mapping):
        out = {}
        for k, item in v.items():
            if not isinstance(k, str):
                raise ConfigError(path, f"a Struct's keys are strings, got {k!r}")
            out[k] = _check_json(item, f"{path}.{k}")
        return out
    if isinstance(v, list):
        return [_check_json(item, f"{path}[{i}]") for i, item in enumerate(v)]
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)  # a Value's number is a double: 2.0 is 2 (and a JSON log writes 2)
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    raise ConfigError(path, f"not a JSON value: {v!r}")


def parse_set_metadata(raw: Mapping[str, Any], path: str) -> SetMetadataConfig:
    f = CONFIG.read(raw, path)
    entries: list[MetadataEntry] = []
    namespace = f.str("metadata_namespace", "")
    if f.has("value") and namespace:   # Envoy: has_value() && !metadata_namespace().empty()
        entries.append(MetadataEntry(namespace, True, _struct(f.value("value"), f.at("value"))))
    for item, p in f.list("metadata"):
        e = ENTRY.read(item, p)
        ns = e.str("metadata_namespace", required=True)
        if not ns:
            raise ConfigError(e.at("metadata_namespace"), "value length must be at least 1 characters")
        overwrite = e.bool("allow_overwrite", False)
        if e.has("value"):
            entries.append(MetadataEntry(ns, overwrite, _struct(e.value("value"), e.at("value"))))
        # Neither value nor typed_value: Envoy ignores the entry (and logs a warning).
    return SetMetadataConfig(metadata=tuple(entries))


def _copy(v: Any) -> Any:
    if v.__class__ is dict:
        return {k: _copy(x) for k, x in v.items()}
    if v.__class__ is list:
        return [_copy(x) for x in v]
    return v


def _kind(v: Any) -> int:
    """protobuf Value's kind: null, number, string, bool, struct, list."""
    if v is None:
        return 0
    if v.__class__ is bool:
        return 3
    if isinstance(v, (int, float)):
        return 1
    if isinstance(v, str):
        return 2
    return 4 if isinstance(v, dict) else 5


def merge_struct(obj: dict[str, Any], with_: Mapping[str, Any]) -> None:
    """Envoy's StructUtil::update: `with_` merged into `obj` in place (its values copied)."""
    for key, val in with_.items():
        cur = obj.get(key, _ABSENT)
        kind = _kind(val)
        if cur is _ABSENT or _kind(cur) != kind or kind < 4:
            obj[key] = _copy(val)
        elif kind == 4:
            merge_struct(cur, val)
        else:
            cur.extend(_copy(x) for x in val)


_ABSENT = object()


class SetMetadataFactory:
    def __init__(self, config: SetMetadataConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerSetMetadataFactory:
        return WorkerSetMetadataFactory(self, ctx)


class WorkerSetMetadataFactory:
    decoder = True
    encoder = False

    def __init__(self, factory: SetMetadataFactory, ctx) -> None:
        self.name = factory.name
        self.entries = factory.config.metadata
        self.stats = ctx.worker.stats
        scope = self.stats.scope(f"http.{ctx.config.stat_prefix}.set_metadata")
        self.overwrite_denied = scope.counter("overwrite_denied")
        self.route_overwrite_denied = None   # made with the first refusal by a route's config

    def route_denied(self):
        c = self.route_overwrite_denied
        if c is None:
            c = self.route_overwrite_denied = self.stats.scope("set_metadata").counter("overwrite_denied")
        return c

    def create(self, callbacks) -> SetMetadataFilter:
        return SetMetadataFilter(callbacks, self)


class SetMetadataFilter(PassThroughFilter):
    __slots__ = ("cb", "wf")

    def __init__(self, callbacks, wf: WorkerSetMetadataFactory) -> None:
        self.cb = callbacks
        self.wf = wf

    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        denied = self._apply(wf.entries)
        if denied:
            wf.overwrite_denied.value += denied
        per_route = self.cb.per_filter_config(wf.name)
        if per_route is not None and per_route.metadata:
            denied = self._apply(per_route.metadata)
            if denied:
                wf.route_denied().value += denied
        return FilterHeadersStatus.CONTINUE

    def _apply(self, entries: tuple[MetadataEntry, ...]) -> int:
        """The entries written into the stream's dynamic metadata; how many were refused."""
        if not entries:
            return 0
        info = self.cb.stream_info
        md = getattr(info, "dynamic_metadata", None)
        if md is None:
            md = info.dynamic_metadata = {}
        denied = 0
        for entry in entries:
            current = md.get(entry.metadata_namespace)
            if current is None:
                md[entry.metadata_namespace] = _copy(entry.value)
            elif entry.allow_overwrite:
                merge_struct(current, entry.value)
            else:
                denied += 1
        return denied


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_set_metadata,
    factory=SetMetadataFactory,
    empty_config_ok=True,
    per_route_proto=PROTO,
    parse_per_route=parse_set_metadata,
))
