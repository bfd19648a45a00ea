"""Path-tracking readers for Envoy v3 config trees (plain dicts/lists from YAML or JSON).

Job: turn untrusted config values into checked Python values, and on any mistake raise
`ConfigError` whose message names the full path (`static_resources.clusters[0].lb_policy`).
Every parser in ftproxy (bootstrap, filters, routes, clusters, xDS resources) reads through
`Fields` so that a bad file and a bad xDS push get the same message.

Rules followed (Envoy's, from its JSON->proto loading):
- unknown fields are errors, with a "did you mean" suggestion;
- enum names are case-insensitive (`round_robin` == `ROUND_ROBIN`);
- durations are strings (`"0.25s"`, `"5s"`, `"1.5ms"` is NOT valid proto JSON but `"0.0015s"` is),
  or `{seconds, nanos}` (Envoy 1.40 accepts both); a plain number (`connect_timeout: 5`) is an
  error, as in Envoy ("expected '\"'");
- wrapper types (UInt32Value, BoolValue) may be given as plain scalars or `{value: x}`;
- a field present with value null is treated as absent.

Must not: do I/O, import anything from proxy beyond this package, or keep state.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["ConfigError", "ConfigErrors", "ErrorCollector", "Fields", "MISSING", "join", "index",
           "parse_duration"]


class ConfigError(ValueError):
    """A config value is wrong. `path` is the JSON path, `message` the reason."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigErrors(ConfigError):
    """Several independent config errors found in one pass (a compiler's list). `path` and
    `message` are the first error's, so code that handles one ConfigError still works; `errors`
    holds them all, in the order found; str() gives one line per error."""

    def __init__(self, errors: list[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for e in errors:
            flat.extend(e.errors if isinstance(e, ConfigErrors) else (e,))
        self.errors: tuple[ConfigError, ...] = tuple(flat)
        first = self.errors[0]
        ValueError.__init__(self, f"{len(self.errors)} errors:\n" + "\n".join(
            f"  {e}" for e in self.errors))
        self.path = first.path
        self.message = first.message


def all_errors(e: ConfigError) -> tuple[ConfigError, ...]:
    """The single errors of `e` (itself, or each of a ConfigErrors)."""
    return e.errors if isinstance(e, ConfigErrors) else (e,)


class ErrorCollector:
    """Runs independent parsing steps and keeps going after a failure: each step's errors are
    kept, and `raise_if_any()` raises them together (one ConfigError, or ConfigErrors)."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), or MISSING after recording the ConfigError it raised."""
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            self.errors.extend(all_errors(e))
            return MISSING

    def add(self, e: ConfigError) -> None:
        self.errors.extend(all_errors(e))

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


_DURATION_RE = re.compile(r"^(-?\d+(?:\.\d+)?)s$")
_MAX_DURATION_S = 315_576_000_000  # google.protobuf.Duration's range: 10,000 years


def parse_duration(value: Any, path: str) -> float:
    """Duration in seconds from `"1.5s"` or `{seconds, nanos}`. A plain number is refused, as
    Envoy refuses it: proto JSON writes a Duration as a string with its unit."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration such as \"5s\", got {value!r}")
    try:
        if isinstance(value, (int, float)):
            raise ConfigError(path, _bare_number(value))
        if isinstance(value, str):
            m = _DURATION_RE.match(value.strip())
            if not m:
                raise ConfigError(path, f"invalid duration {value[:80]!r} (expected e.g. \"0.25s\")")
            seconds = float(m.group(1))
        elif isinstance(value, Mapping):
            f = Fields(value, path, ("seconds", "nanos"))
            seconds = f.int("seconds", 0) + f.int("nanos", 0) / 1e9
        else:
            raise ConfigError(path, f"expected a duration such as \"5s\", got {type(value).__name__}")
    except OverflowError:
        raise ConfigError(path, "duration out of range") from None
    if not math.isfinite(seconds) or seconds > _MAX_DURATION_S:
        raise ConfigError(path, "duration out of range (at most 315576000000s, as protobuf's)")
    if seconds < 0:
        raise ConfigError(path, "duration must not be negative")
    return seconds


def _bare_number(value: int | float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f'a duration is a string with its unit, such as "5s" (got the bare number {value})'
    if isinstance(value, int) and value.bit_length() > 64:  # repr() of a huge int may raise
        return 'a duration is a string with its unit, such as "5s" (got a bare number)'
    return (f'a duration is a string with its unit, such as "{value}s" '
            f"(got the bare number {value})")


def header_bytes(value: str, path: str) -> bytes:
    """A config string that goes on the wire in an HTTP/1 head (a header name or value, a
    host): Latin-1 bytes, or ConfigError naming `path`."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(path, f"{value[:80]!r}: an HTTP header can only carry Latin-1 characters") from None


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__


class Fields:
    """A config object (mapping) at `path`, restricted to `allowed` field names.

    Construction checks the type and rejects unknown fields. Accessors take the field name
    and a default; `required=True` makes absence an error.
    """

    __slots__ = ("raw", "path")

    def __init__(self, value: Any, path: str, allowed: Iterable[str]) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected an object, got {_type_name(value)}")
        allowed = tuple(allowed)
        errors = []
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(path, f"field names must be strings, got {key!r}")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                more = f' (did you mean "{hint[0]}"?)' if hint else ""
                errors.append(ConfigError(path, f'unknown field "{key}"{more}'))
        if len(errors) == 1:
            raise errors[0]
        if errors:  # every misspelling of the object at once
            raise ConfigErrors(errors)
        self.raw: Mapping[str, Any] = value
        self.path = path

    # -- plumbing -------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def at(self, key: str) -> str:
        return join(self.path, key)

    def value(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        v = self.raw.get(key)
        if v is None:
            if required or default is MISSING:
                if required:
                    raise ConfigError(self.at(key), "required field is missing")
                return None
            return default
        return v

    def _unwrap(self, key: str, v: Any) -> Any:
        # Wrapper types (google.protobuf.UInt32Value etc.) may be written as {value: x}.
        if isinstance(v, Mapping) and set(v) == {"value"}:
            return v["value"]
        return v

    # -- scalars ------------------------------------------------------------------------
    def str(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        if not isinstance(v, str):
            raise ConfigError(self.at(key), f"expected a string, got {_type_name(v)}")
        return v

    def bool(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        v = self._unwrap(key, v)
        if not isinstance(v, bool):
            raise ConfigError(self.at(key), f"expected true or false, got {v!r}")
        return v

    def int(self, key: str, default: Any = MISSING, required: bool = False,
            min: int | None = None, max: int | None = None) -> Any:
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        v = self._unwrap(key, v)
        if isinstance(v, str) and re.fullmatch(r"-?\d{1,20}", v.strip()):
            v = int(v)  # proto3 JSON writes 64-bit integers as strings
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.at(key), f"expected an integer, got {v!r}")
        if min is not None and v < min:
            raise ConfigError(self.at(key), f"must be >= {min}, got {v}")
        if max is not None and v > max:
            raise ConfigError(self.at(key), f"must be <= {max}, got {v}")
        return v

    def float(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        v = self._unwrap(key, v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(self.at(key), f"expected a number, got {v!r}")
        return float(v)

    def duration(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        return parse_duration(v, self.at(key))

    def enum(self, key: str, choices: Iterable[str], default: Any = MISSING,
             required: bool = False) -> Any:
        """Case-insensitive enum; returns the canonical (upper-case) name."""
        v = self.value(key, default, required)
        if v is None or v is default:
            return v
        choices = tuple(choices)
        if isinstance(v, str) and v.upper() in choices:
            return v.upper()
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(choices):
            return choices[v]  # proto enums may be written by number
        hint = difflib.get_close_matches(str(v).upper(), choices, n=1, cutoff=0.6)
        more = f' (did you mean "{hint[0]}"?)' if hint else ""
        raise ConfigError(self.at(key), f'unknown value "{v}"{more}; expected one of {", ".join(choices)}')

    # -- structure ----------------------------------------------------------------------
    def obj(self, key: str, allowed: Iterable[str], required: bool = False) -> Fields | None:
        v = self.value(key, required=required)
        if v is None:
            return None
        return Fields(v, self.at(key), allowed)

    def raw_obj(self, key: str, required: bool = False) -> Mapping[str, Any] | None:
        """An object whose fields the caller checks (e.g. a typed_config)."""
        v = self.value(key, required=required)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise ConfigError(self.at(key), f"expected an object, got {_type_name(v)}")
        return v

    def list(self, key: str, required: bool = False, min_items: int = 0) -> list[tuple[Any, str]]:
        """Items of a list field as (value, path) pairs. A single value where the list is
        stands for a list of that one item, as Envoy's protobuf JSON parser takes it
        (`domains: "*"`, a `routes` object, ...)."""
        v = self.value(key, required=required)
        base = self.at(key)
        if v is None:
            v = []
        elif not isinstance(v, list):
            v = [v]
            if min_items > 1:
                raise ConfigError(base, f"must have at least {min_items} item(s)")
            return [(v[0], base)]
        if len(v) < min_items:
            raise ConfigError(base, f"must have at least {min_items} item(s)")
        return [(item, index(base, i)) for i, item in enumerate(v)]

    def objs(self, key: str, allowed: Iterable[str], required: bool = False,
             min_items: int = 0) -> Iterator[Fields]:
        allowed = tuple(allowed)
        for item, path in self.list(key, required=required, min_items=min_items):
            yield Fields(item, path, allowed)

    def strs(self, key: str, required: bool = False, min_items: int = 0) -> tuple[str, ...]:
        out = []
        for item, path in self.list(key, required=required, min_items=min_items):
            if not isinstance(item, str):
                raise ConfigError(path, f"expected a string, got {_type_name(item)}")
            out.append(item)
        return tuple(out)

    def oneof(self, *keys: str, required: bool = False) -> str | None:
        """Which of the mutually exclusive `keys` is set (None if none)."""
        present = [k for k in keys if self.has(k)]
        if len(present) > 1:
            raise ConfigError(self.path, f"only one of {', '.join(keys)} may be set, got {', '.join(present)}")
        if not present:
            if required:
                raise ConfigError(self.path, f"one of {', '.join(keys)} is required")
            return None
        return present[0]
