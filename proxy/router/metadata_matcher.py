"""`envoy.type.matcher.v3.MetadataMatcher` and `ValueMatcher`: a test of one value in a stream's
dynamic metadata (`info.dynamic_metadata`: namespace -> dict, what set_metadata, jwt_authn and
Lua write), as Envoy's Matchers::MetadataMatcher decides it.

Job: parse the config (through the declared tables below, so errors name the JSON path) and
compile it once into immutable matchers. Envoy's rules, kept here:
- the value is found as Envoy's Config::Metadata::metadataValue finds it: the `filter`
  namespace, then each `path` key in turn, each step inside an object; a missing namespace or
  key, or a key under a value that is not an object, gives NO value (protobuf's unset Value);
- no value matches nothing: not `null_match`, not `present_match` (true or false), not a
  list; `present_match: false` matches nothing at all;
- `double_match` takes numbers only (never a bool or a numeric string): `exact` is equality
  of doubles, `range` is [start, end);
- `string_match` takes strings only (the StringMatcher of router/matchers.py), `bool_match`
  bools only, `null_match` a null value only;
- `list_match.one_of`: the value is a list and one of its items matches `one_of`;
- `or_match`: any of its value matchers matches;
- `invert` flips the result, the no-value case included (Envoy's `match(...) ^ invert`).
`lookup(metadata, filter, path)` is the walk alone (ABSENT: no value), for callers that treat
a missing key their own way (the access log's metadata_filter).

Must not: do I/O or mutate the metadata it reads. Thread affinity: none; every object here is
immutable after parse and shared by all workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError
from proxy.router.matchers import parse_string_matcher

__all__ = ["ABSENT", "ValueMatcher", "MetadataMatcher", "lookup", "parse_metadata_matcher",
           "parse_value_matcher", "parse_metadata_path"]


class _Absent:
    """No value at the path (protobuf's Value with no kind set)."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def lookup(metadata: Mapping[str, Any] | None, namespace: str, path: tuple[str, ...]) -> Any:
    """The value at `namespace` / `path` in `metadata`, or ABSENT."""
    if not metadata:
        return ABSENT
    current = metadata.get(namespace)
    if not isinstance(current, Mapping):
        return ABSENT
    value: Any = ABSENT
    for key in path:
        if not isinstance(current, Mapping):
            return ABSENT
        value = current.get(key, ABSENT)
        if value is ABSENT:
            return ABSENT
        current = value
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_VALUE_KINDS = ("null_match", "double_match", "string_match", "bool_match", "present_match",
                "list_match", "or_match")


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """`type.matcher.v3.ValueMatcher`. `value` by kind: null_match None; double_match
    ("exact", x) or ("range", start, end); string_match a StringMatcher; bool_match and
    present_match a bool; list_match the `one_of` ValueMatcher; or_match a tuple of them."""

    kind: str
    value: Any = None

    def match(self, v: Any) -> bool:
        kind, arg = self.kind, self.value
        if kind == "string_match":
            return isinstance(v, str) and arg.match(v)
        if kind == "present_match":
            return arg and v is not ABSENT
        if kind == "bool_match":
            return isinstance(v, bool) and v == arg
        if kind == "double_match":
            if not _is_number(v):
                return False
            try:
                x = float(v)
            except OverflowError:  # an int past a double's range (JSON can carry one)
                x = math.inf if v > 0 else -math.inf
            if arg[0] == "exact":
                return x == arg[1]
            return arg[1] <= x < arg[2]
        if kind == "null_match":
            return v is None
        if kind == "list_match":
            return isinstance(v, (list, tuple)) and any(arg.match(item) for item in v)
        if kind == "or_match":
            return any(m.match(v) for m in arg)
        raise AssertionError(kind)  # parsing admits only the kinds above


@dataclass(frozen=True, slots=True)
class MetadataMatcher:
    """`type.matcher.v3.MetadataMatcher`: `matches(metadata)` for a stream's dynamic metadata."""

    filter: str                   # the namespace
    path: tuple[str, ...]         # keys, outermost first (at least one)
    value: ValueMatcher
    invert: bool = False

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        return self.value.match(lookup(metadata, self.filter, self.path)) != self.invert


_M = "envoy.type.matcher.v3"
METADATA_MATCHER = Message(f"{_M}.MetadataMatcher", model=MetadataMatcher, fields=(
    used("filter", why="the metadata namespace; required, non-empty"),
    used("path", why="keys walked inside the namespace; at least one"),
    used("value", why="required"),
    used("invert", False),
))
PATH_SEGMENT = Message(f"{_M}.MetadataMatcher.PathSegment", fields=(
    used("key", attr="path", why="required, non-empty"),
))
VALUE_MATCHER = Message(f"{_M}.ValueMatcher", model=ValueMatcher, bookkeeping=("kind",), fields=(
    *(used(k, attr="value") for k in _VALUE_KINDS),
))
NULL_MATCH = Message(f"{_M}.ValueMatcher.NullMatch", fields=())
DOUBLE_MATCHER = Message(f"{_M}.DoubleMatcher", fields=(
    used("range", attr="value"),
    used("exact", attr="value"),
))
DOUBLE_RANGE = Message("envoy.type.v3.DoubleRange", fields=(
    used("start", attr="value"),
    used("end", attr="value"),
))
LIST_MATCHER = Message(f"{_M}.ListMatcher", fields=(used("one_of", attr="value"),))
OR_MATCHER = Message(f"{_M}.OrMatcher", fields=(used("value_matchers", attr="value"),))


def parse_value_matcher(raw: Any, path: str) -> ValueMatcher:
    f = VALUE_MATCHER.read(raw, path)
    kind = f.oneof(*_VALUE_KINDS, required=True)
    at = f.at(kind)
    if kind == "null_match":
        NULL_MATCH.read(f.value(kind), at)
        return ValueMatcher(kind)
    if kind in ("bool_match", "present_match"):
        return ValueMatcher(kind, f.bool(kind))
    if kind == "string_match":
        return ValueMatcher(kind, parse_string_matcher(f.value(kind), at))
    if kind == "list_match":
        lst = LIST_MATCHER.read(f.value(kind), at)
        return ValueMatcher(kind, parse_value_matcher(lst.value("one_of", required=True),
                                                      lst.at("one_of")))
    if kind == "or_match":
        o = OR_MATCHER.read(f.value(kind), at)
        return ValueMatcher(kind, tuple(parse_value_matcher(item, p) for item, p in
                                        o.list("value_matchers", required=True, min_items=2)))
    d = DOUBLE_MATCHER.read(f.value(kind), at)
    which = d.oneof("range", "exact", required=True)
    if which == "exact":
        return ValueMatcher(kind, ("exact", d.float("exact")))
    r = DOUBLE_RANGE.read(d.value("range"), d.at("range"))
    return ValueMatcher(kind, ("range", r.float("start", 0.0), r.float("end", 0.0)))


def parse_metadata_path(f: Any, key: str = "path") -> tuple[str, ...]:
    """The `path` of a MetadataMatcher (or MetadataKey): at least one non-empty `key`."""
    keys = []
    for item, p in f.list(key, required=True, min_items=1):
        s = PATH_SEGMENT.read(item, p)
        k = s.str("key", required=True)
        if not k:
            raise ConfigError(s.at("key"), "must not be empty")
        keys.append(k)
    return tuple(keys)


def parse_metadata_matcher(raw: Any, path: str) -> MetadataMatcher:
    f = METADATA_MATCHER.read(raw, path)
    namespace = f.str("filter", required=True)
    if not namespace:
        raise ConfigError(f.at("filter"), "must not be empty")
    keys = parse_metadata_path(f)
    value = parse_value_matcher(f.value("value", required=True), f.at("value"))
    return MetadataMatcher(namespace, keys, value, f.bool("invert", False))

