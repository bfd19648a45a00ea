"""Loading a bootstrap file (`-c`, `--config-yaml`) and the `validate` entry point.

Job: read a .yaml/.yml/.json file, optionally merge `--config-yaml` over it the way Envoy
merges protos (objects merged, lists appended, scalars replaced), fill the extension registry
and validate the tree into a `Bootstrap`. Every failure is a `ConfigError` with a clear
message (file, line for syntax errors, JSON path for bad values).

Must not: touch sockets or start anything. Thread affinity: main thread only (file I/O).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import yaml

import proxy.extensions  # noqa: F401  fills the registry before any config is parsed
from proxy.config.bootstrap import Bootstrap
from proxy.config.bootstrap import parse_bootstrap as _parse_bootstrap
from proxy.config.reader import ConfigError, all_errors, index, join

__all__ = ["load_bootstrap", "parse_bootstrap", "parse_text", "merge", "validate", "errors_of",
           "check_is_v3_bootstrap"]

_YAML_EXT = (".yaml", ".yml")
_JSON_EXT = (".json",)
_PROTO_EXT = (".pb", ".pb_text")

log = logging.getLogger("ftproxy.config")


def parse_bootstrap(raw: Mapping[str, Any]) -> Bootstrap:
    """Validate an already-decoded bootstrap tree (registry filled by this module's import)."""
    return _checked(raw)


def load_bootstrap(path: str | None, *, config_yaml: str | None = None,
                   log_warnings: bool = True) -> Bootstrap:
    """Load and validate the bootstrap at `path`, with `config_yaml` merged over it. Its
    warnings (e.g. no listeners) are logged unless `log_warnings` is false (validate prints
    them itself)."""
    tree: Any = {}
    if path:
        tree = _read_file(path)
    if config_yaml:
        overlay = parse_text(config_yaml, "--config-yaml", as_json=False)
        if overlay is None:  # only comments: nothing to merge
            overlay = {}
        tree = merge(tree, overlay)
    if not path and not config_yaml:
        raise ConfigError("", "no configuration given (use -c <file> or --config-yaml)")
    if not isinstance(tree, Mapping):
        raise ConfigError("", f"{path}: the top level must be an object, got {type(tree).__name__}")
    bootstrap = _checked(tree)
    for warning in bootstrap.warnings if log_warnings else ():
        log.warning("%s: %s", path or "--config-yaml", warning)
    return bootstrap


def _checked(tree: Mapping[str, Any]) -> Bootstrap:
    _check_depth(tree)  # bounded nesting: parsing (copies, format compilers) cannot recurse too deep
    check_is_v3_bootstrap(tree)
    return _parse_bootstrap(tree)


# -- files that are not a v3 bootstrap ----------------------------------------------------------

_V3_TOP = ("static_resources", "dynamic_resources", "admin", "node", "layered_runtime")


def check_is_v3_bootstrap(tree: Mapping[str, Any]) -> None:
    """A ConfigError naming what the file is when it is clearly not an Envoy v3 bootstrap
    (a v1 or v2 Envoy config, an xDS resource file, a docker-compose file), instead of a
    did-you-mean on its first key."""
    keys = set(k for k in tree if isinstance(k, str))
    if "services" in keys and not keys & set(_V3_TOP):
        raise ConfigError("", "this is a docker-compose file (top-level services:), not an Envoy "
                              "bootstrap; give proxyctl the Envoy config the compose file mounts")
    resources = tree.get("resources")
    if isinstance(resources, list) and not keys & set(_V3_TOP):
        kinds = sorted({str(r.get("@type", "?")).rsplit(".", 1)[-1] for r in resources
                        if isinstance(r, Mapping)}) or ["?"]
        raise ConfigError("resources", f"this is an xDS resource file ({', '.join(kinds)}), not a "
                                       "bootstrap; ftproxy does not read xDS yet: put the resources "
                                       "under static_resources.listeners / static_resources.clusters")
    if _is_v1(tree):
        where = "listeners" if "listeners" in keys else "cluster_manager.clusters"
        raise ConfigError(where, "this is an Envoy v1 config (top-level listeners: / "
                                 "cluster_manager.clusters); ftproxy reads v3 bootstraps: "
                                 "static_resources.listeners and static_resources.clusters")
    for key in ("listeners", "clusters"):
        if key in keys and "static_resources" not in keys:
            raise ConfigError(key, f"{key} belongs under static_resources "
                                   f"(static_resources.{key}) in a v3 bootstrap")
    v2 = _v2_marker(tree)
    if v2 is not None:
        path, what = v2
        raise ConfigError(path, f"this is an Envoy v2 config ({what}); ftproxy reads v3 "
                                "bootstraps: filters take typed_config with a v3 \"@type\" URL")


def _is_v1(tree: Mapping[str, Any]) -> bool:
    """Envoy v1's JSON: listeners with "tcp://" address strings and filters with a "type", or
    clusters under cluster_manager."""
    cm = tree.get("cluster_manager")
    if isinstance(cm, Mapping) and "clusters" in cm:
        return True
    listeners = tree.get("listeners")
    for lis in listeners if isinstance(listeners, list) else ():
        if not isinstance(lis, Mapping):
            continue
        if isinstance(lis.get("address"), str):
            return True
        filters = lis.get("filters")
        if isinstance(filters, list) and any(isinstance(x, Mapping) and "type" in x for x in filters):
            return True
    return False


_V2_TYPE_MARKS = ("envoy.api.v2.", "envoy.config.filter.", ".v2.", ".v2alpha.")


def _v2_marker(tree: Any) -> tuple[str, str] | None:
    """(path, reason) of the first v2-only construct: a filter configured with `config:`, or
    a v2 type URL. Walked without recursion (the tree may be deep)."""
    stack: list[tuple[Any, str]] = [(tree, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            name = value.get("name")
            if isinstance(name, str) and name.startswith("envoy.") and isinstance(
                    value.get("config"), Mapping) and "typed_config" not in value:
                return join(path, "config"), f"filter {name!r} configured with config:"
            url = value.get("@type")
            if isinstance(url, str) and any(m in url for m in _V2_TYPE_MARKS):
                return join(path, "@type"), f"v2 type {url!r}"
            stack.extend((v, join(path, str(k))) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, index(path, i)) for i, v in reversed(list(enumerate(value))))
    return None


MAX_DEPTH = 100  # protobuf's default recursion limit, which Envoy's config parsing inherits


def _check_depth(tree: Any) -> None:
    """ConfigError at the first value nested deeper than MAX_DEPTH (walked without recursion:
    copying or compiling such a value would exhaust Python's stack)."""
    stack: list[tuple[Any, str, int]] = [(tree, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(path, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            stack.extend((v, join(path, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, index(path, i), depth + 1) for i, v in enumerate(value))


def validate(path: str | None, *, config_yaml: str | None = None) -> tuple[int, str]:
    """`--mode validate` / `proxyctl validate`: (exit status, message to print). Every error
    of the file is listed, one per line with its path; warnings follow an OK."""
    name = path or "--config-yaml"
    try:
        bootstrap = load_bootstrap(path, config_yaml=config_yaml, log_warnings=False)
    except ConfigError as e:
        return 1, f"error initializing configuration '{name}': {e}"
    lines = [f"warning: {w}" for w in bootstrap.warnings]
    return 0, "\n".join([*lines, f"configuration '{name}' OK"])


def errors_of(e: ConfigError) -> tuple[ConfigError, ...]:
    """The single errors a load raised (one, or each of several)."""
    return all_errors(e)


def _read_file(path: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    if ext in _PROTO_EXT:
        raise ConfigError("", f"{path}: protobuf bootstrap files ({ext}) are not supported yet; "
                              "use YAML or JSON")
    if ext not in _YAML_EXT + _JSON_EXT:
        raise ConfigError("", f"{path}: unknown config file extension {ext!r} "
                              "(expected .yaml, .yml or .json)")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError("", f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path}: config file is not UTF-8 text ({e.reason})") from None
    if not text.strip():
        # Envoy refuses it too ("Unable to convert YAML as JSON"); `{}` is the empty bootstrap.
        raise ConfigError("", f"{path}: the file is empty (write {{}} for an empty bootstrap)")
    tree = parse_text(text, path, as_json=ext in _JSON_EXT)
    if tree is None:
        raise ConfigError("", f"{path}: the file holds no configuration, only comments "
                              "(write {} for an empty bootstrap)")
    return tree


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a pasted second `admin:` or `clusters:` would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[str] = set()
        for key_node, _ in node.value:
            # Merge keys (`<<: *anchor`) may be overridden by explicit ones: only explicit
            # scalar keys are compared.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key_node.value!r}",
                                           problem_mark=key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_text(text: str, source: str, *, as_json: bool) -> Any:
    """Decode JSON or YAML text (YAML is a superset, so .yaml files may hold JSON). A key
    given twice in one object is an error, in both."""
    if as_json:
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"{source}: invalid JSON at line {e.lineno} column {e.colno}: "
                                  f"{e.msg}") from None
        except (RecursionError, ValueError) as e:  # absurd nesting; an integer over 4300 digits
            raise ConfigError("", f"{source}: invalid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{source}: invalid YAML{where}: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source}: invalid YAML: {e}") from None
    except (RecursionError, ValueError) as e:  # absurd nesting; an integer over 4300 digits
        raise ConfigError("", f"{source}: invalid YAML: {type(e).__name__}: {str(e)[:200]}") from None
    return data


def merge(base: Any, overlay: Any) -> Any:
    """Proto MergeFrom on decoded trees: objects merge key by key, lists append, else replace."""
    if isinstance(base, Mapping) and isinstance(overlay, Mapping):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(overlay, list):
        return [*base, *copy.deepcopy(overlay)]
    return copy.deepcopy(overlay)
