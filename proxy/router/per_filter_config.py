"""`typed_per_filter_config`: HTTP filter settings per route, virtual host or route configuration.

Job: parse the map (filter name -> `Any`) at each of the three levels through the owning
filter's per-route parser (found in the registry by the config's `@type`), unwrap Envoy's
`envoy.config.route.v3.FilterConfig` (`config`, `disabled`, `is_optional`), and merge the
levels once at load so that a request looks up one dict: for each filter the most specific
config (route, then virtual host, then route configuration) and, separately, the most
specific `disabled` (only a FilterConfig says it; a plain config neither enables nor disables).

Must not: do I/O. Thread affinity: built on the main thread; the mappings are shared
read-only by every worker afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..config.fields_table import Message, used
from ..config.reader import ConfigError
from ..config.registry import per_route_extension, per_route_protos

__all__ = ["PerFilterConfig", "parse_typed_per_filter_config", "merge_levels", "NO_PER_FILTER_CONFIG"]

_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"

NO_PER_FILTER_CONFIG: Mapping[str, PerFilterConfig] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PerFilterConfig:
    config: Any = None            # the filter's parsed per-route config, or None
    disabled: bool | None = None  # FilterConfig.disabled where one says it
    # Merged only: every level's config, most specific first (a filter such as CORS takes
    # each field from the most specific level that sets it).
    all_configs: tuple[Any, ...] = ()


FILTER_CONFIG = Message(_FILTER_CONFIG, model=PerFilterConfig, bookkeeping=("all_configs",), fields=(
    used("config"),
    used("is_optional", False, attr="", why="an optional config of a type ftproxy does not know "
         "is skipped at load"),
    used("disabled", False),
))


def parse_typed_per_filter_config(raw: Any, path: str) -> dict[str, PerFilterConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "expected a map of HTTP filter name to config")
    out: dict[str, PerFilterConfig] = {}
    for name, value in raw.items():
        vpath = f"{path}.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(path, f"invalid filter name {name!r}")
        entry = _parse_entry(value, vpath)
        if entry is not None:
            out[name] = entry
    return out


def _type_of(value: Any, path: str) -> tuple[str, dict]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, 'expected a typed config with "@type"')
    url = value.get("@type")
    if not isinstance(url, str) or not url:
        raise ConfigError(path, 'missing "@type"')
    return url.rsplit("/", 1)[-1], {k: v for k, v in value.items() if k != "@type"}


def _parse_entry(value: Any, path: str) -> PerFilterConfig | None:
    proto, body = _type_of(value, path)
    if proto != _FILTER_CONFIG:
        return PerFilterConfig(_parse_config(proto, body, path))
    f = FILTER_CONFIG.read(body, path)
    disabled = f.bool("disabled", False)
    inner = f.raw_obj("config")
    if inner is None:
        return PerFilterConfig(None, disabled)
    ipath = f.at("config")
    iproto, ibody = _type_of(inner, ipath)
    if per_route_extension(iproto) is None and f.bool("is_optional", False):
        return None  # Envoy ignores an optional config it does not know
    return PerFilterConfig(_parse_config(iproto, ibody, ipath), disabled)


def _parse_config(proto: str, body: dict, path: str) -> Any:
    ext = per_route_extension(proto)
    if ext is None:
        raise ConfigError(f'{path}["@type"]', f'unsupported per-filter config type "{proto}"; '
                          f"supported: {', '.join(per_route_protos()) or 'none'}")
    return ext.parse_per_route(body, path)


def merge_levels(*levels: Mapping[str, PerFilterConfig]) -> Mapping[str, PerFilterConfig]:
    """One mapping from the levels, most specific first."""
    if not any(levels):
        return NO_PER_FILTER_CONFIG
    merged: dict[str, PerFilterConfig] = {}
    for name in {n for level in levels for n in level}:
        entries = [level[name] for level in levels if name in level]
        configs = tuple(e.config for e in entries if e.config is not None)
        disabled = next((e.disabled for e in entries if e.disabled is not None), None)
        merged[name] = PerFilterConfig(configs[0] if configs else None, disabled, configs)
    return MappingProxyType(merged)
