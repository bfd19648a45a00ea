"""Envoy access-log format strings and format dictionaries, compiled once, applied per request.

Job: `compile_format(text, path)` turns an Envoy format string ("%REQ(:METHOD)% %RESPONSE_CODE%")
into a `TextFormatter`; `compile_json_format(mapping, path)` turns a format dictionary
(`json_format`) into a `JsonFormatter`. Compilation checks every command operator and raises
`ConfigError` naming `path`; formatting is then a loop over precompiled getters (one small
closure per operator) and literal text, with no parsing per request.

Rendering rules (Envoy's): an unset value renders "-" in text (or "" with omit_empty_values);
in a format dictionary a value that is exactly one operator keeps its type (numbers stay
numbers, unset is null, or the key is dropped with omit_empty_values), any other string is
rendered as text; the JSON line ends with "\n". `%%` is a literal "%". Times are UTC.

Thread affinity: formatters are immutable after compilation and may be shared by all
workers; `format(info)` reads only its argument (the one exception is %START_TIME%'s
per-second memo, see start_time.py). Must not: do
I/O, read clocks (times come from the StreamInfo), or keep other state between calls.
"""

from __future__ import annotations

import difflib
import operator
import platform
import re
from collections.abc import Callable, Mapping
from typing import Any

from proxy.config.reader import ConfigError, index, join

from .metadata_format import dynamic_metadata_getter
from .start_time import compile_start_time, format_start_time
from .stream_info import StreamInfo
from .tls_operators import TLS_OPERATORS

try:  # orjson is much faster; the stdlib is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is installed in our venv
    _orjson = None
import json as _json

__all__ = ["DEFAULT_FORMAT", "TextFormatter", "JsonFormatter", "compile_format",
           "compile_json_format", "format_start_time"]

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

Getter = Callable[[StreamInfo], Any]   # returns str | int | None (None = unset)

# %NAME%, %NAME(arg)%, %NAME(arg):N%  (Envoy: arguments cannot contain ")").
_COMMAND_RE = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::(\d{1,9}))?%")

# -- helpers for getters ----------------------------------------------------------------------
def _ms(start: float | None, end: float | None) -> int | None:
    """Whole milliseconds between two monotonic readings (truncated, as Envoy's duration_cast)."""
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1_000_000) // 1000)


def _without_port(addr: str | None) -> str | None:
    if addr is None:
        return None
    if addr.startswith("["):           # "[::1]:443"
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:           # "10.0.0.1:80"
        return addr.rsplit(":", 1)[0]
    return addr                        # bare IPv6 or a pipe path


def _response_flags(info: StreamInfo) -> str:
    """Envoy 1.40's ResponseFlagUtils::toShortString: the flags in the order they were set
    (StreamInfo::responseFlags() is a vector; a retry's URX comes before the UF or UC of the
    failure that ended the retries, "URX,UF")."""
    flags = info.response_flags
    if not flags:
        return "-"  # Envoy's ResponseFlagUtils::NONE, in text and JSON alike
    if len(flags) == 1:
        return flags[0]
    return ",".join(flags)


def _attempt_count(info: StreamInfo) -> int:
    """Envoy's attempt count: set (to 1) once the router found the request's cluster and a host
    for it, raised by each retry. Only a retry stores it (router_retry.py); a request the router
    sent on is 1 without a store on its path: it has a cluster and no UH flag."""
    n = info.upstream_request_attempt_count
    if n:
        return n
    return 1 if info.upstream_cluster is not None and "UH" not in info.response_flags else 0


def _attr(name: str) -> Getter:
    return operator.attrgetter(name)


def _filter_chain_name(info: StreamInfo) -> str | None:
    """%FILTER_CHAIN_NAME%: the connection's filter chain; an HTTP stream reads its
    connection manager's (`hcm`), so no request pays for it unless the operator is used."""
    name = info.filter_chain_name
    if name is None:
        hcm = getattr(info, "hcm", None)
        name = getattr(hcm, "filter_chain_name", None)
    return name


def _failure_reason(name: str) -> Getter:
    """A transport failure reason with its spaces as "_", as Envoy renders both
    ("delayed_connect_error:_Connection_refused")."""
    get = operator.attrgetter(name)

    def reason(info: StreamInfo) -> str | None:
        v = get(info)
        return v.replace(" ", "_") if v else None
    return reason


# -- operators ---------------------------------------------------------------------------------
def _trace_id(info: StreamInfo) -> str | None:
    """%TRACE_ID%: the trace id of the request's span (proxy/tracing), '-' without one."""
    span = info.active_span
    return span.trace_id if span is not None else None


def _header_getter(container: str, arg: str | None, op: str, path: str) -> Getter:
    if not arg:
        raise ConfigError(path, f"%{op}(...)% needs a header name")
    names = arg.lower().split("?")
    if len(names) > 2:
        raise ConfigError(path, f'%{op}({arg})%: more than one alternative header given')
    if any(not n for n in names):
        raise ConfigError(path, f'%{op}({arg})%: empty header name')
    main = names[0]
    alt = names[1] if len(names) == 2 else None
    get_container = operator.attrgetter(container)
    if alt is None:
        def one(info: StreamInfo) -> str | None:
            h = get_container(info)
            return None if h is None else h.get_str(main)
        return one

    def either(info: StreamInfo) -> str | None:
        h = get_container(info)
        if h is None:
            return None
        v = h.get_str(main)
        return h.get_str(alt) if v is None else v
    return either


_HEADER_OPS = {
    "REQ": "request_headers", "REQUEST_HEADER": "request_headers",
    "RESP": "response_headers", "RESPONSE_HEADER": "response_headers",
    "TRAILER": "response_trailers", "RESPONSE_TRAILER": "response_trailers",
}


def _plain_ops(hostname: str) -> dict[str, Getter]:
    """Operators without an argument."""
    return {
        "RESPONSE_CODE": lambda i: i.response_code or 0,
        "RESPONSE_CODE_DETAILS": _attr("response_code_details"),
        "RESPONSE_FLAGS": _response_flags,
        "BYTES_RECEIVED": _attr("bytes_received"),
        "BYTES_SENT": _attr("bytes_sent"),
        "DURATION": lambda i: _ms(i.start_monotonic, i.end_monotonic),
        "REQUEST_DURATION": lambda i: _ms(i.start_monotonic, i.request_complete_monotonic),
        "RESPONSE_DURATION": lambda i: _ms(i.start_monotonic, i.first_upstream_rx_monotonic),
        "RESPONSE_TX_DURATION": lambda i: _ms(i.first_upstream_rx_monotonic, i.end_monotonic),
        "PROTOCOL": _attr("protocol"),
        "UPSTREAM_HOST": _attr("upstream_host"),
        "UPSTREAM_REMOTE_ADDRESS": _attr("upstream_host"),
        "UPSTREAM_CLUSTER": _attr("upstream_cluster"),
        "UPSTREAM_LOCAL_ADDRESS": _attr("upstream_local_address"),
        "UPSTREAM_TRANSPORT_FAILURE_REASON": _failure_reason("upstream_transport_failure_reason"),
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON": _failure_reason("downstream_transport_failure_reason"),
        "DOWNSTREAM_REMOTE_ADDRESS": _attr("downstream_remote_address"),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
            lambda i: _without_port(i.downstream_remote_address),
        "DOWNSTREAM_LOCAL_ADDRESS": _attr("downstream_local_address"),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
            lambda i: _without_port(i.downstream_local_address),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _attr("downstream_direct_remote_address"),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
            lambda i: _without_port(i.downstream_direct_remote_address),
        "REQUESTED_SERVER_NAME": _attr("requested_server_name"),
        "ROUTE_NAME": _attr("route_name"),
        "FILTER_CHAIN_NAME": _filter_chain_name,
        "TRACE_ID": _trace_id,
        "CONNECTION_ID": _attr("connection_id"),
        "HOSTNAME": lambda i: hostname,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT": _attempt_count,
        **TLS_OPERATORS,
    }


_PLAIN_NAMES = frozenset(_plain_ops(""))
# Envoy operators we know but do not implement yet: refused by name rather than as unknown.
_NOT_SUPPORTED = frozenset({
    "CLUSTER_METADATA", "UPSTREAM_METADATA", "FILTER_STATE",
    "UPSTREAM_FILTER_STATE", "LOCAL_REPLY_BODY", "REQ_WITHOUT_QUERY", "GRPC_STATUS",
    "GRPC_STATUS_NUMBER", "CONNECTION_TERMINATION_DETAILS", "REQUEST_TX_DURATION",
    "UPSTREAM_WIRE_BYTES_SENT", "UPSTREAM_WIRE_BYTES_RECEIVED", "DOWNSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_SESSION_ID", "DOWNSTREAM_PEER_CERT_V_START", "DOWNSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START", "UPSTREAM_PEER_CERT_V_END", "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN", "DOWNSTREAM_LOCAL_IP_SAN", "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256", "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS", "ENVIRONMENT",
    "COMMON_DURATION", "RESPONSE_FLAGS_LONG", "UNIQUE_ID", "STREAM_ID",
    "REQUEST_HEADERS_BYTES", "RESPONSE_HEADERS_BYTES", "VIRTUAL_CLUSTER_NAME",
})
_ALL_NAMES = tuple(sorted(_PLAIN_NAMES | set(_HEADER_OPS) | {"START_TIME", "DYNAMIC_METADATA"}))


def _truncating(getter: Getter, n: int) -> Getter:
    def get(info: StreamInfo) -> Any:
        v = getter(info)
        return v[:n] if v.__class__ is str else v
    return get


def _operator_getter(name: str, arg: str | None, max_len: str | None, path: str,
                     plain: Mapping[str, Getter]) -> Getter:
    if name in _HEADER_OPS:
        getter = _header_getter(_HEADER_OPS[name], arg, name, path)
    elif name == "START_TIME":
        render = compile_start_time(arg)

        def getter(info: StreamInfo) -> str | None:
            t = info.start_time
            return None if t is None else render(t)
    elif name == "DYNAMIC_METADATA":
        getter = dynamic_metadata_getter(arg, path)
    elif name in plain:
        if arg is not None:
            raise ConfigError(path, f"%{name}% takes no argument, got ({arg})")
        getter = plain[name]
    elif name in _NOT_SUPPORTED:
        raise ConfigError(path, f"command operator %{name}% is not supported yet")
    else:
        hint = difflib.get_close_matches(name, _ALL_NAMES, n=1, cutoff=0.6)
        more = f" (did you mean %{hint[0]}%?)" if hint else ""
        raise ConfigError(path, f"unknown command operator %{name}%{more}")
    if max_len is not None:
        n = int(max_len)
        if n <= 0:
            raise ConfigError(path, f"%{name}%: length must be greater than 0")
        getter = _truncating(getter, n)
    return getter


def _parse(text: str, path: str, hostname: str,
           extra: Mapping[str, Getter] | None = None) -> tuple[str, tuple[tuple[Getter, str], ...]]:
    """(leading literal, ((getter, literal after it), ...)). `extra`: operators a caller adds
    (the local reply formats' %LOCAL_REPLY_BODY%)."""
    if not isinstance(text, str):
        raise ConfigError(path, f"expected a format string, got {type(text).__name__}")
    plain = _plain_ops(hostname)
    if extra:
        plain = {**plain, **extra}
    head: str | None = None
    steps: list[tuple[Getter, str]] = []
    lit: list[str] = []
    pos = 0
    n = len(text)
    while pos < n:
        i = text.find("%", pos)
        if i < 0:
            lit.append(text[pos:])
            break
        lit.append(text[pos:i])
        if text.startswith("%%", i):
            lit.append("%")
            pos = i + 2
            continue
        m = _COMMAND_RE.match(text, i)
        if m is None:
            snippet = text[i:i + 30]
            raise ConfigError(path, f"invalid command operator at position {i}: {snippet!r} "
                              '(expected %NAME%, %NAME(arg)% or %NAME(arg):N%; write "%%" for "%")')
        getter = _operator_getter(m.group(1), m.group(2), m.group(3), path, plain)
        if head is None:
            head = "".join(lit)
        else:
            steps[-1] = (steps[-1][0], "".join(lit))
        lit = []
        steps.append((getter, ""))
        pos = m.end()
    tail = "".join(lit)
    if head is None:
        return tail, ()
    steps[-1] = (steps[-1][0], tail)
    return head, tuple(steps)


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


# -- formatters -----------------------------------------------------------------------------
class TextFormatter:
    """A compiled format string. Immutable; `format(info)` is safe from any thread."""

    __slots__ = ("source", "_head", "_steps", "_unset", "_template", "_getters")

    def __init__(self, source: str, head: str, steps: tuple[tuple[Getter, str], ...],
                 omit_empty_values: bool) -> None:
        self.source = source
        self._head = head
        self._steps = steps
        self._unset = "" if omit_empty_values else "-"
        # One str.format call per line: literals (braces escaped) around "{}" slots.
        esc = _escape_braces
        self._template = esc(head) + "".join("{}" + esc(lit) for _, lit in steps)
        self._getters = tuple(g for g, _ in steps)

    @property
    def single_getter(self) -> Getter | None:
        """The getter when the whole string is exactly one operator (typed JSON values)."""
        if self._head == "" and len(self._steps) == 1 and self._steps[0][1] == "":
            return self._steps[0][0]
        return None

    @property
    def is_constant(self) -> bool:
        return not self._steps

    def format(self, info: StreamInfo) -> str:
        unset = self._unset
        return self._template.format(
            *[unset if (v := g(info)) is None else v for g in self._getters])

    def __repr__(self) -> str:
        return f"TextFormatter({self.source!r})"


def compile_format(text: str, path: str, *, omit_empty_values: bool = False,
                   hostname: str | None = None,
                   extra_ops: Mapping[str, Getter] | None = None) -> TextFormatter:
    """Compile an Envoy format string; ConfigError naming `path` on a bad operator.
    `extra_ops`: operators beyond the access log's, by name (NAME -> getter)."""
    host = platform.node() if hostname is None else hostname
    head, steps = _parse(text, path, host, extra_ops)
    return TextFormatter(text, head, steps, omit_empty_values)


Node = Callable[[StreamInfo], Any]
_OMIT = (None, "")


def _const(value: Any) -> Node:
    return lambda info: value


def _compile_node(value: Any, path: str, omit: bool | str, host: str,
                  extra: Mapping[str, Getter] | None = None) -> Node:
    if isinstance(value, Mapping):
        items = []
        for key, sub in value.items():
            if not isinstance(key, str):
                raise ConfigError(path, f"format dictionary keys must be strings, got {key!r}")
            items.append((key, _compile_node(sub, join(path, key), omit, host, extra)))
        fields = tuple(items)
        if omit == "unset":
            def omitting_unset(info: StreamInfo) -> dict[str, Any]:
                out = {}
                for k, f in fields:
                    v = f(info)
                    if v is not None:
                        out[k] = v
                return out
            return omitting_unset
        if omit:
            def omitting(info: StreamInfo) -> dict[str, Any]:
                out = {}
                for k, f in fields:
                    v = f(info)
                    if v is not None and v != "":
                        out[k] = v
                return out
            return omitting
        return lambda info: {k: f(info) for k, f in fields}
    if isinstance(value, list):
        elems = tuple(_compile_node(v, index(path, i), omit, host, extra) for i, v in enumerate(value))
        return lambda info: [f(info) for f in elems]
    if isinstance(value, str):
        head, steps = _parse(value, path, host, extra)
        text = TextFormatter(value, head, steps, omit)
        if text.is_constant:
            return _const(head)
        single = text.single_getter
        # A typed getter (%DYNAMIC_METADATA%) gives the value itself: an object stays one.
        return getattr(single, "typed", single) if single is not None else text.format
    if value is None or isinstance(value, (bool, int, float)):
        return _const(value)
    raise ConfigError(path, f"unsupported value in format dictionary: {type(value).__name__}")


class JsonFormatter:
    """A compiled format dictionary; `format(info)` returns one JSON line ending in "\\n"."""

    __slots__ = ("source", "_root", "_sort")

    def __init__(self, source: Mapping[str, Any], root: Node, sort_properties: bool) -> None:
        self.source = source
        self._root = root
        self._sort = sort_properties

    def render(self, info: StreamInfo) -> dict[str, Any]:
        """The dictionary before serialisation (for tests and other sinks)."""
        return self._root(info)

    def format(self, info: StreamInfo) -> str:
        obj = self._root(info)
        if _orjson is not None:
            opts = _orjson.OPT_APPEND_NEWLINE | (_orjson.OPT_SORT_KEYS if self._sort else 0)
            return _orjson.dumps(obj, option=opts).decode()
        return _json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                           sort_keys=self._sort) + "\n"

    def __repr__(self) -> str:
        return f"JsonFormatter({dict(self.source)!r})"


def compile_json_format(mapping: Any, path: str, omit_empty_values: bool = False, *,
                        sort_properties: bool = False, hostname: str | None = None,
                        extra_ops: Mapping[str, Getter] | None = None,
                        omit_only_unset: bool = False) -> JsonFormatter:
    """Compile an Envoy format dictionary (json_format); ConfigError naming the bad key's path.
    `omit_only_unset`: omit_empty_values drops unset values only, an empty string stays (as
    Envoy's local reply bodies: their %LOCAL_REPLY_BODY% is "" when there is none)."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(path, f"expected an object, got {type(mapping).__name__}")
    host = platform.node() if hostname is None else hostname
    omit: bool | str = "unset" if omit_empty_values and omit_only_unset else omit_empty_values
    root = _compile_node(mapping, path, omit, host, extra_ops)
    return JsonFormatter(mapping, root, sort_properties)
