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
import os
from collections.abc import Mapping
from typing import Any

import yaml

import proxy.extensions  # noqa: F401  fills the registry before any config is parsed
from proxy.config.bootstrap import Bootstrap
from proxy.config.bootstrap import parse_bootstrap as _parse_bootstrap
from proxy.config.reader import ConfigError, index, join

__all__ = ["load_bootstrap", "parse_bootstrap", "parse_text", "merge", "validate"]

_YAML_EXT = (".yaml", ".yml")
_JSON_EXT = (".json",)
_PROTO_EXT = (".pb", ".pb_text")


def parse_bootstrap(raw: Mapping[str, Any]) -> Bootstrap:
    """Validate an already-decoded bootstrap tree (registry filled by this module's import)."""
    return _checked(raw)


def load_bootstrap(path: str | None, *, config_yaml: str | None = None) -> Bootstrap:
    """Load and validate the bootstrap at `path`, with `config_yaml` merged over it."""
    tree: Any = {}
    if path:
        tree = _read_file(path)
    if config_yaml:
        overlay = parse_text(config_yaml, "--config-yaml", as_json=False)
        tree = merge(tree, overlay)
    if not path and not config_yaml:
        raise ConfigError("", "no configuration given (use -c <file> or --config-yaml)")
    if not isinstance(tree, Mapping):
        raise ConfigError("", f"{path}: the top level must be an object, got {type(tree).__name__}")
    return _checked(tree)


def _checked(tree: Mapping[str, Any]) -> Bootstrap:
    _check_depth(tree)  # bounded nesting: parsing (copies, format compilers) cannot recurse too deep
    return _parse_bootstrap(tree)


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
    """`--mode validate` / `proxyctl validate`: (exit status, message to print)."""
    try:
        load_bootstrap(path, config_yaml=config_yaml)
    except ConfigError as e:
        return 1, f"error initializing configuration '{path or '--config-yaml'}': {e}"
    return 0, f"configuration '{path or '--config-yaml'}' OK"


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
    return parse_text(text, path, as_json=ext in _JSON_EXT)


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
    return {} if data is None else data


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
