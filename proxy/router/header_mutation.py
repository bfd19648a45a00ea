"""Header add/remove of the route tables (`request_headers_to_add` / `_remove` and the response
pair) at route-config, virtual-host and route level.

Job: parse `HeaderValueOption` lists and remove lists into flat tuples of `HeaderMutation`
(value formats precompiled), combine the levels in Envoy's order, and apply them to a
`Headers`. Envoy's rules kept here:
- each level removes first, then adds;
- levels run innermost first (route, virtual host, route config) so outer levels win
  conflicts; with `most_specific_header_mutations_wins` the order is reversed;
- `append_action` default APPEND_IF_EXISTS_OR_ADD; legacy `append: false` means
  OVERWRITE_IF_EXISTS_OR_ADD; both set is an error unless append_action is the default;
- an empty formatted value is skipped unless `keep_empty_value`;
- `:`-prefixed names and `host` may not be added or removed;
- values are format strings: `%%` is a literal percent; supported operators are
  `%DOWNSTREAM_REMOTE_ADDRESS%`, `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`,
  `%DOWNSTREAM_LOCAL_ADDRESS%`, `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`,
  `%DOWNSTREAM_REMOTE_PORT%`, `%DOWNSTREAM_LOCAL_PORT%`,
  `%REQ(name)%` (also `%REQ(a?b)%` and `:N` truncation), `%START_TIME%`,
  `%RESP(name)%` where the caller allows it (`allow_resp`: the route tables and the
  header_mutation filter, whose `info` for a response is a `ResponseInfo`; a request's mutations
  read "" as Envoy's do; elsewhere it is refused at load),
  `%REQUESTED_SERVER_NAME%`, `%DYNAMIC_METADATA(ns:key...)%` (access_log/metadata_format.py,
  from `info.dynamic_metadata`) and the TLS operators
  (`%DOWNSTREAM_TLS_VERSION%`, `%DOWNSTREAM_PEER_SUBJECT%`, ...: access_log/tls_operators.py,
  read from `info.downstream_ssl` / `upstream_ssl`); others are refused at load. Values come from `info`: an object with `downstream_remote_address: str`,
  optional `downstream_local_address: str`, `start_time: float` (epoch seconds) and
  `request_headers` (anything with `get_str(name)`); a missing value formats as "".

Must not: do I/O or read clocks (START_TIME comes from `info`). Thread affinity: mutations are
immutable and shared; `apply_mutations` mutates only the caller's `Headers`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.access_log.metadata_format import dynamic_metadata_getter
from proxy.access_log.tls_operators import TLS_OPERATORS
from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError, Fields, header_bytes
from proxy.http.headers import Headers

__all__ = ["HeaderMutation", "ValueFormat", "parse_header_mutations", "parse_header_value_option", "check_header_name",
           "combine_levels",
           "apply_mutations", "compile_value_format",
           "APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
           "OVERWRITE_IF_EXISTS"]

APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
ADD_IF_ABSENT = "ADD_IF_ABSENT"
OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"
_APPEND_ACTIONS = (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD,
                   OVERWRITE_IF_EXISTS)

# -- value formats ----------------------------------------------------------------------------


def _without_port(addr: str) -> str:
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:
        return addr.partition(":")[0]
    return addr


def _attr(name: str, strip_port: bool) -> Callable[[Any], str]:
    def get(info: Any) -> str:
        v = getattr(info, name, None) if info is not None else None
        if not v:
            return ""
        return _without_port(str(v)) if strip_port else str(v)
    return get


def _port(name: str) -> Callable[[Any], str]:
    def get(info: Any) -> str:
        v = getattr(info, name, None) if info is not None else None
        if not v:
            return ""
        port = str(v).rpartition(":")[2]
        return port if port.isdigit() else ""
    return get


def _start_time(info: Any) -> str:
    t = getattr(info, "start_time", None) if info is not None else None
    if t is None:
        return ""
    dt = datetime.datetime.fromtimestamp(t, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _header_of(which: str, names: tuple[str, ...], limit: int | None) -> Callable[[Any], str]:
    """%REQ(a?b)% / %RESP(a?b)%: the first of `names` present in `info.<which>` (the request's
    or the response's headers), cut to `limit`; "" without them."""
    def get(info: Any) -> str:
        headers = getattr(info, which, None) if info is not None else None
        if headers is None:
            return ""
        for n in names:
            v = headers.get_str(n)
            if v is not None:
                return v if limit is None else v[:limit]
        return ""
    return get


def _dynamic_metadata(get: Callable[[Any], str | None], limit: int | None) -> Callable[[Any], str]:
    def fmt(info: Any) -> str:
        v = get(info) if info is not None else None
        if v is None:
            return ""
        return v if limit is None else v[:limit]
    return fmt


_SIMPLE_OPS: dict[str, Callable[[Any], str]] = {
    "DOWNSTREAM_REMOTE_ADDRESS": _attr("downstream_remote_address", False),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _attr("downstream_remote_address", True),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _attr("downstream_direct_remote_address", False),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _attr("downstream_direct_remote_address", True),
    "DOWNSTREAM_LOCAL_ADDRESS": _attr("downstream_local_address", False),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _attr("downstream_local_address", True),
    "DOWNSTREAM_REMOTE_PORT": _port("downstream_remote_address"),
    "DOWNSTREAM_LOCAL_PORT": _port("downstream_local_address"),
    "START_TIME": _start_time,
    "REQUESTED_SERVER_NAME": _attr("requested_server_name", False),
}
_SIMPLE_OPS.update({name: (lambda get: lambda info: get(info) or "")(get)
                    for name, get in TLS_OPERATORS.items()})
_OP_RE = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::(\d{1,9}))?%")


@dataclass(frozen=True, slots=True)
class ValueFormat:
    """A header value with its operators compiled: parts are literal str or callables.
    `literal`: the value's bytes when it has no operator (None otherwise)."""

    source: str
    parts: tuple[str | Callable[[Any], str], ...]
    literal: bytes | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        literal = None
        if all(isinstance(p, str) for p in self.parts):
            literal = "".join(self.parts).encode("latin-1", "replace")  # type: ignore[arg-type]
        object.__setattr__(self, "literal", literal)

    def format(self, info: Any = None) -> str:
        return "".join(p if isinstance(p, str) else p(info) for p in self.parts)


def compile_value_format(value: str, path: str, allow_resp: bool = False) -> ValueFormat:
    """`value` compiled; `allow_resp`: `%RESP(name)%` is accepted (read from
    `info.response_headers`, "" while there is none)."""
    parts: list[str | Callable[[Any], str]] = []
    literal: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != "%":
            literal.append(c)
            i += 1
            continue
        if value.startswith("%%", i):
            literal.append("%")
            i += 2
            continue
        m = _OP_RE.match(value, i)
        if m is None:
            raise ConfigError(path, f"invalid header value format at position {i} in {value!r} "
                              "(write %% for a literal percent)")
        op, arg, limit = m.group(1), m.group(2), m.group(3)
        if op == "REQ" and arg:
            fn: Callable[[Any], str] = _header_of("request_headers", tuple(a.lower() for a in arg.split("?")),
                                                  int(limit) if limit else None)
        elif op == "RESP" and arg and allow_resp:
            fn = _header_of("response_headers", tuple(a.lower() for a in arg.split("?")),
                            int(limit) if limit else None)
        elif op == "DYNAMIC_METADATA":
            fn = _dynamic_metadata(dynamic_metadata_getter(arg, path), int(limit) if limit else None)
        elif op in _SIMPLE_OPS and arg is None and limit is None:
            fn = _SIMPLE_OPS[op]
        else:
            raise ConfigError(path, f"unsupported header value operator %{op}%")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(fn)
        i = m.end()
    if literal:
        parts.append("".join(literal))
    return ValueFormat(value, tuple(parts))


# -- mutations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """One step: remove `name`, or add it with `value` under `append_action`."""

    name: bytes
    remove: bool = False
    value: ValueFormat | None = None
    append_action: str = APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False


def check_header_name(name: Any, path: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ConfigError(path, "expected a non-empty header name")
    lower = name.lower()
    if lower.startswith(":") or lower == "host":
        raise ConfigError(path, f"\":\"-prefixed or host headers may not be modified: {name!r}")
    if any(c in name for c in " \t\r\n\0:"):
        raise ConfigError(path, f"invalid header name {name!r}")
    return header_bytes(lower, path)


HEADER_VALUE_OPTION = Message("envoy.config.core.v3.HeaderValueOption (route)", model=HeaderMutation,
                              bookkeeping=("remove",), fields=(   # a *_headers_to_remove entry
    used("header", attr="", why="its own table"),
    used("append", attr="append_action", why="deprecated: false means OVERWRITE_IF_EXISTS_OR_ADD"),
    used("append_action", "APPEND_IF_EXISTS_OR_ADD"),
    used("keep_empty_value", False),
))
HEADER_VALUE = Message("envoy.config.core.v3.HeaderValue (route)", fields=(
    used("key", attr="name"),
    used("value"),
    used("raw_value", attr="value"),
))


def parse_header_value_option(raw: Any, path: str, allow_resp: bool = False) -> HeaderMutation:
    """One `HeaderValueOption` (see the module doc; `allow_resp` as compile_value_format's)."""
    f = HEADER_VALUE_OPTION.read(raw, path)
    h = HEADER_VALUE.read(f.value("header", required=True), f.at("header"))
    name = check_header_name(h.str("key", required=True), h.at("key"))
    if h.has("value") and h.has("raw_value"):
        raise ConfigError(h.path, "only one of value, raw_value may be set")
    if h.has("raw_value"):
        try:
            text = base64.b64decode(h.str("raw_value"), validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            raise ConfigError(h.at("raw_value"), "invalid base64") from None
        value = compile_value_format(text, h.at("raw_value"), allow_resp)
    else:
        text = h.str("value", "")
        if any(c in text for c in "\r\n\0"):
            raise ConfigError(h.at("value"), "header values may not contain CR, LF or NUL")
        value = compile_value_format(text, h.at("value"), allow_resp)
    if f.has("append") and f.enum("append_action", _APPEND_ACTIONS,
                                  APPEND_IF_EXISTS_OR_ADD) != APPEND_IF_EXISTS_OR_ADD:
        # (as Envoy: append_action at its default is as good as unset)
        raise ConfigError(f.path, "both append and append_action are set; use append_action")
    if f.has("append"):
        action = APPEND_IF_EXISTS_OR_ADD if f.bool("append") else OVERWRITE_IF_EXISTS_OR_ADD
    else:
        action = f.enum("append_action", _APPEND_ACTIONS, APPEND_IF_EXISTS_OR_ADD)
    return HeaderMutation(name, False, value, action, f.bool("keep_empty_value", False))


def parse_header_mutations(f: Fields, add_key: str, remove_key: str | None,
                           allow_resp: bool = False) -> tuple[HeaderMutation, ...]:
    """One level's mutations from fields `add_key` / `remove_key` (None: a message with only
    additions) of `f`: removals first (`allow_resp` as compile_value_format's)."""
    removals = f.list(remove_key) if remove_key else ()
    out = [HeaderMutation(check_header_name(name, p), remove=True) for name, p in removals]
    out.extend(parse_header_value_option(item, p, allow_resp) for item, p in f.list(add_key))
    return tuple(out)


class ResponseInfo:
    """A stream's info with the response headers being mutated, for %RESP(...)%: the stream
    records its response head only as it is written, after the filters and route tables."""

    __slots__ = ("_info", "response_headers")

    def __init__(self, info: Any, response_headers: Any) -> None:
        self._info = info
        self.response_headers = response_headers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)


def combine_levels(levels_inner_first: Iterable[tuple[HeaderMutation, ...]],
                   most_specific_wins: bool) -> tuple[HeaderMutation, ...]:
    """Flatten (route, vhost, route-config) levels in the order Envoy evaluates them."""
    levels = list(levels_inner_first)
    if most_specific_wins:
        levels.reverse()
    return tuple(m for level in levels for m in level)


def apply_mutations(mutations: Iterable[HeaderMutation], headers: Headers,
                    info: Any = None) -> None:
    """Apply precomputed mutations in order to the caller's `headers` (see module doc)."""
    for m in mutations:
        if m.remove:
            headers.remove(m.name)
            continue
        value = m.value.literal  # type: ignore[union-attr]
        if value is None:
            value = m.value.format(info).encode("latin-1", "replace")  # type: ignore[union-attr]
        if not value and not m.keep_empty_value:
            continue
        action = m.append_action
        if action == APPEND_IF_EXISTS_OR_ADD:
            headers.add(m.name, value)
        elif action == ADD_IF_ABSENT:
            headers.set_default(m.name, value)
        elif action == OVERWRITE_IF_EXISTS_OR_ADD or headers.has(m.name):  # or IF_EXISTS
            # Envoy's setReferenceKey: drop every existing value, then append the new one.
            headers.remove(m.name)
            headers.add(m.name, value)
