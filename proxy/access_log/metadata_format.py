"""`%DYNAMIC_METADATA(NAMESPACE:KEY:...)%`: the stream's dynamic metadata in format strings
(access logs and header values), as Envoy's MetadataFormatter renders it.

Job: `dynamic_metadata_getter(arg, path)` compiles the operator's argument once; the getter
reads `info.dynamic_metadata` (namespace -> dict: what set_metadata, jwt_authn and Lua write)
and walks the keys. Envoy's rules:
- no key: the whole namespace, as JSON; a missing namespace or key, or a key under a value
  that is not an object, is unset (None: "-" in a text access log, "" in a header);
- a string renders as itself, any other value as compact JSON (protobuf's JSON of a Value:
  numbers are doubles, so 1 renders "1" and 1.5 "1.5"; objects' keys sorted, as protobuf's
  JSON printer writes a Struct); a null value is unset.
`typed_dynamic_metadata_getter` is the same walk returning the value itself (a format
dictionary keeps a single operator's type).

Must not: mutate the metadata it reads. Thread affinity: getters are immutable and shared;
each call reads only its argument.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from proxy.config.reader import ConfigError

__all__ = ["dynamic_metadata_getter", "typed_dynamic_metadata_getter", "metadata_json"]


def _number(v: float | int) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return json.dumps(str(v))  # protobuf writes these as strings ("NaN", "Infinity")
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return repr(v)
    return str(v)


def metadata_json(v: Any) -> str:
    """protobuf's compact JSON of a google.protobuf.Value."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return _number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + metadata_json(v[k])
                              for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(metadata_json(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def _parse_arg(arg: str | None, path: str) -> tuple[str, tuple[str, ...]]:
    if not arg:
        raise ConfigError(path, "%DYNAMIC_METADATA% needs an argument: (NAMESPACE:KEY:...)")
    namespace, *keys = arg.split(":")
    if not namespace:
        raise ConfigError(path, f"%DYNAMIC_METADATA({arg})%: the namespace is empty")
    return namespace, tuple(keys)


def typed_dynamic_metadata_getter(arg: str | None, path: str) -> Callable[[Any], Any]:
    namespace, keys = _parse_arg(arg, path)

    def get(info: Any) -> Any:
        md = getattr(info, "dynamic_metadata", None)
        if not md:
            return None
        v = md.get(namespace)
        for k in keys:
            if v.__class__ is not dict:
                return None
            v = v.get(k)
        return v
    return get


def dynamic_metadata_getter(arg: str | None, path: str) -> Callable[[Any], str | None]:
    walk = typed_dynamic_metadata_getter(arg, path)

    def get(info: Any) -> str | None:
        v = walk(info)
        if v is None:
            return None
        return v if v.__class__ is str else metadata_json(v)
    get.typed = walk  # type: ignore[attr-defined]  # what a format dictionary's value keeps
    return get
