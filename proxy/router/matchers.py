"""Request matchers of `config.route.v3.RouteMatch`: string, header, query-parameter and path.

Job: parse the matcher config (each message opened through its declared table, below, so
errors name the JSON path and every Envoy field is used, inert or refused), compile it once
(regexes included) into immutable objects, and answer `matches(...)` for a request with
Envoy's semantics:
- the path matchers see the path without query string and fragment; `case_sensitive` (default
  true) applies to `prefix`, `path` and `path_separated_prefix`, never to `safe_regex`;
- `safe_regex` is a full-string match (Python `re` stands in for RE2);
- a header matcher reads all values of the header joined with "," (pseudo-headers `:method`,
  `:path`, `:authority`, `:scheme` and `host` come from the request head); a missing header
  fails the match (true when inverted) unless `treat_missing_header_as_empty`;
- a matcher with no specifier is a presence match;
- query parameters are percent-decoded and the first value of a name is used;
- `dynamic_metadata` matchers (router/metadata_matcher.py) read the stream's dynamic metadata
  as it was when the route was resolved (`req.dynamic_metadata`: Envoy resolves the route
  before the filters run, again only after a filter clears the route cache).

Must not: do I/O, keep per-request state, or import anything from `proxy` beyond
`proxy.config.reader`, `proxy.config.fields_table`, `proxy.http.headers` and (when parsing)
`proxy.router.metadata_matcher`. Thread affinity:
none; every object here is immutable after parse and shared by all workers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from proxy.config.fields_table import Message, inert, not_supported, refused, used
from proxy.config.reader import ConfigError, Fields

__all__ = [
    "StringMatcher", "HeaderMatcher", "QueryParameterMatcher", "RouteMatch", "RequestView",
    "parse_string_matcher", "parse_header_matcher", "parse_route_match", "compile_regex",
    "parse_regex_matcher", "split_path", "refuse_wrapped",
]

# Parse-time helpers shared by the router's config modules ---------------------------------


def refuse_wrapped(table: Message, f: Fields, *names: str) -> None:
    """Refused fields of a wrapper type (`google.protobuf.UInt32Value`, ...): there 0 is a value
    (`per_request_buffer_limit_bytes: 0` is a 0-byte limit), not proto3's "unset" that
    `Message.read` lets through, so any value given is refused."""
    for name in names:
        if f.raw.get(name) is not None:
            raise not_supported(f.at(name), table.spec(name).why)


def compile_regex(regex: str, path: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except (re.error, OverflowError, RecursionError) as e:  # e.g. a{99999999999}, deep nesting
        raise ConfigError(path, f"invalid regex {regex[:200]!r}: {type(e).__name__}: {str(e)[:200]}") from None


REGEX_MATCHER = Message("envoy.type.matcher.v3.RegexMatcher", fields=(
    used("regex"),
    inert("google_re2", "selects RE2, the only engine there is; Python's re stands in"),
))
GOOGLE_RE2 = Message("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", fields=(
    refused("max_program_size", "RE2 program-size limits"),
))


def parse_regex_matcher(raw: Any, path: str) -> re.Pattern[str]:
    """`type.matcher.v3.RegexMatcher`."""
    f = REGEX_MATCHER.read(raw, path)
    if f.has("google_re2"):
        refuse_wrapped(GOOGLE_RE2, GOOGLE_RE2.read(f.value("google_re2"), f.at("google_re2")),
                       "max_program_size")
    return compile_regex(f.str("regex", required=True), f.at("regex"))


def split_path(target: str) -> tuple[str, str]:
    """(path, query) of a request target; the fragment, if any, is dropped."""
    hash_at = target.find("#")
    if hash_at >= 0:
        target = target[:hash_at]
    q = target.find("?")
    if q < 0:
        return target, ""
    return target[:q], target[q + 1:]


# String matcher ---------------------------------------------------------------------------

_STRING_KINDS = ("exact", "prefix", "suffix", "safe_regex", "contains")


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """`type.matcher.v3.StringMatcher`. `value` is lower-cased already when `ignore_case`."""

    kind: str                            # one of _STRING_KINDS
    value: str = ""
    regex: re.Pattern[str] | None = None
    ignore_case: bool = False

    def match(self, s: str) -> bool:
        kind = self.kind
        if kind == "safe_regex":
            return self.regex.fullmatch(s) is not None  # type: ignore[union-attr]
        if self.ignore_case:
            s = s.lower()
        if kind == "exact":
            return s == self.value
        if kind == "prefix":
            return s.startswith(self.value)
        if kind == "suffix":
            return s.endswith(self.value)
        return self.value in s  # contains


STRING_MATCHER = Message("envoy.type.matcher.v3.StringMatcher", model=StringMatcher,
                         bookkeeping=("kind",), fields=(
    used("exact", attr="value"),
    used("prefix", attr="value"),
    used("suffix", attr="value"),
    used("safe_regex", attr="regex"),
    used("contains", attr="value"),
    refused("custom", "extension string matchers"),
    used("ignore_case", False),
))


def _string_matcher(kind: str, value: Any, path: str, ignore_case: bool) -> StringMatcher:
    if kind == "safe_regex":
        return StringMatcher("safe_regex", regex=parse_regex_matcher(value, path))
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {type(value).__name__}")
    if kind != "exact" and not value:
        raise ConfigError(path, "must not be empty")
    return StringMatcher(kind, value.lower() if ignore_case else value, None, ignore_case)


def parse_string_matcher(raw: Any, path: str) -> StringMatcher:
    f = STRING_MATCHER.read(raw, path)
    kind = f.oneof(*_STRING_KINDS, required=True)
    return _string_matcher(kind, f.raw[kind], f.at(kind), f.bool("ignore_case", False))


# Header matcher ---------------------------------------------------------------------------

_LEGACY_HEADER_KINDS = {"exact_match": "exact", "prefix_match": "prefix",
                        "suffix_match": "suffix", "contains_match": "contains",
                        "safe_regex_match": "safe_regex"}
_HEADER_SPECIFIERS = ("string_match", "present_match", "range_match") + tuple(_LEGACY_HEADER_KINDS)


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """`config.route.v3.HeaderMatcher`. Exactly one of `string`, `present`, `range` is set."""

    name: str                                   # lower-case; may be a pseudo-header
    string: StringMatcher | None = None
    present: bool | None = None
    range: tuple[int, int] | None = None        # [start, end)
    invert: bool = False
    treat_missing_as_empty: bool = False

    def matches(self, req: Any) -> bool:
        value = _header_value(req, self.name)
        if self.present is not None:
            return ((value is not None) == self.present) != self.invert
        if value is None:
            if not self.treat_missing_as_empty:
                return self.invert
            value = ""
        if self.string is not None:
            ok = self.string.match(value)
        else:
            ok = _in_range(value, self.range)  # type: ignore[arg-type]
        return ok != self.invert


HEADER_MATCHER = Message("envoy.config.route.v3.HeaderMatcher", model=HeaderMatcher, fields=(
    used("name"),
    used("exact_match", attr="string", why="deprecated spelling of string_match.exact"),
    used("safe_regex_match", attr="string", why="deprecated spelling of string_match.safe_regex"),
    used("range_match", attr="range"),
    used("present_match", attr="present"),
    used("prefix_match", attr="string", why="deprecated spelling of string_match.prefix"),
    used("suffix_match", attr="string", why="deprecated spelling of string_match.suffix"),
    used("contains_match", attr="string", why="deprecated spelling of string_match.contains"),
    used("string_match", attr="string"),
    used("invert_match", False, attr="invert"),
    used("treat_missing_header_as_empty", False, attr="treat_missing_as_empty"),
))
INT64_RANGE = Message("envoy.type.v3.Int64Range (range_match)", fields=(
    used("start", attr="range"),
    used("end", attr="range"),
))


def _in_range(value: str, bounds: tuple[int, int]) -> bool:
    try:
        n = int(value.strip(), 10)
    except ValueError:
        return False
    return bounds[0] <= n < bounds[1]


def _header_value(req: Any, name: str) -> str | None:
    if name[:1] == ":" or name == "host":
        return req.get_str(name)
    values = req.headers.get_all(name.encode("latin-1"))
    if not values:
        return None
    if len(values) == 1:
        return values[0].decode("latin-1")
    return b",".join(values).decode("latin-1")


def parse_header_matcher(raw: Any, path: str) -> HeaderMatcher:
    f = HEADER_MATCHER.read(raw, path)
    name = f.str("name", required=True)
    if not name:
        raise ConfigError(f.at("name"), "must not be empty")
    common = {"name": name.lower(), "invert": f.bool("invert_match", False),
              "treat_missing_as_empty": f.bool("treat_missing_header_as_empty", False)}
    kind = f.oneof(*_HEADER_SPECIFIERS)
    if kind is None:  # Envoy: no specifier means "header is present"
        return HeaderMatcher(present=True, **common)
    if kind == "present_match":
        return HeaderMatcher(present=f.bool("present_match"), **common)
    if kind == "range_match":
        r = INT64_RANGE.read(f.value("range_match", required=True), f.at("range_match"))
        start, end = r.int("start", required=True), r.int("end", required=True)
        if start >= end:
            raise ConfigError(r.path, f"start ({start}) must be less than end ({end})")
        return HeaderMatcher(range=(start, end), **common)
    if kind == "string_match":
        return HeaderMatcher(string=parse_string_matcher(f.raw[kind], f.at(kind)), **common)
    return HeaderMatcher(string=_string_matcher(_LEGACY_HEADER_KINDS[kind], f.raw[kind],
                                                f.at(kind), False), **common)


# Query parameter matcher ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    """`config.route.v3.QueryParameterMatcher`: the parameter must be present, and when
    `string` is set its first (decoded) value must match it."""

    name: str
    string: StringMatcher | None = None

    def matches(self, query: Mapping[str, str]) -> bool:
        value = query.get(self.name)
        if value is None:
            return False
        return self.string is None or self.string.match(value)


QUERY_PARAMETER_MATCHER = Message("envoy.config.route.v3.QueryParameterMatcher",
                                  model=QueryParameterMatcher, fields=(
    used("name"),
    used("string_match", attr="string"),
    used("present_match", attr="", why="presence is what a matcher without string_match checks"),
))


def parse_query_parameter_matcher(raw: Any, path: str) -> QueryParameterMatcher:
    f = QUERY_PARAMETER_MATCHER.read(raw, path)
    name = f.str("name", required=True)
    if not name:
        raise ConfigError(f.at("name"), "must not be empty")
    kind = f.oneof("string_match", "present_match")
    if kind == "string_match":
        return QueryParameterMatcher(name, parse_string_matcher(f.raw[kind], f.at(kind)))
    if kind == "present_match":
        f.bool("present_match")  # type check only; Envoy treats any value as "present"
    return QueryParameterMatcher(name)


def parse_query(query: str) -> dict[str, str]:
    """Decoded query parameters, first value per name (Envoy's getFirstValue)."""
    out: dict[str, str] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote(name, encoding="latin-1")
        if name not in out:
            out[name] = unquote(value, encoding="latin-1")
    return out


# Per-request view -------------------------------------------------------------------------


class RequestView:
    """What the matchers read from one request: path split once, query parsed on demand.
    Owned by the worker handling the request; never shared."""

    __slots__ = ("req", "path", "_query_str", "_query")

    def __init__(self, req: Any) -> None:
        self.req = req
        self.path, self._query_str = split_path(req.path_str)
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        q = self._query
        if q is None:
            q = self._query = parse_query(self._query_str)
        return q


# Route match ------------------------------------------------------------------------------

_PATH_KINDS = ("prefix", "path", "safe_regex", "path_separated_prefix", "connect_matcher")
CONNECT_MATCH_TABLE = Message("envoy.config.route.v3.RouteMatch.ConnectMatcher", fields=())


def _is_grpc(req: Any) -> bool:
    ct = req.headers.get(b"content-type")
    if ct is None:
        return False
    # Envoy's Grpc::Common::hasGrpcContentType: exact, or "+proto"-style / parameters.
    return ct == b"application/grpc" or ct.startswith((b"application/grpc+", b"application/grpc;"))


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """`config.route.v3.RouteMatch`. `kind` is the path specifier; `value` is lower-cased
    when not `case_sensitive`."""

    kind: str
    value: str = ""
    regex: re.Pattern[str] | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()
    grpc: bool = False
    # tls_context (TlsContextMatchOptions): the downstream connection's client certificate
    # was presented / validated (None: not asked). Read from `req.tls` (TlsInfo, None for
    # plaintext: then neither was).
    tls_presented: bool | None = None
    tls_validated: bool | None = None
    # dynamic_metadata: MetadataMatchers (router/metadata_matcher.py), all must match.
    dynamic_metadata: tuple = ()
    # A case-sensitive prefix with nothing else to check matches on the raw target bytes
    # (a prefix without "?" or "#" matches the target iff it matches its path part).
    raw_prefix: bytes | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.kind == "prefix" and self.case_sensitive and not self.headers
                and not self.query_parameters and not self.grpc and self.tls_presented is None
                and self.tls_validated is None and not self.dynamic_metadata and "?" not in self.value
                and "#" not in self.value and self.value.isascii()):
            object.__setattr__(self, "raw_prefix", self.value.encode("ascii"))

    def matches(self, view: RequestView) -> bool:
        if not self._path_matches(view):
            return False
        req = view.req
        for h in self.headers:
            if not h.matches(req):
                return False
        if self.query_parameters:
            query = view.query
            for q in self.query_parameters:
                if not q.matches(query):
                    return False
        if self.grpc and not _is_grpc(req):
            return False
        if self.tls_presented is not None or self.tls_validated is not None:
            tls = getattr(req, "tls", None)
            if self.tls_presented is not None and self.tls_presented != (
                    tls is not None and tls.peer_certificate is not None):
                return False
            if self.tls_validated is not None and self.tls_validated != (
                    tls is not None and tls.peer_validated):
                return False
        if self.dynamic_metadata:
            md = getattr(req, "dynamic_metadata", None)
            for m in self.dynamic_metadata:
                if not m.matches(md):
                    return False
        return True

    def _path_matches(self, view: RequestView) -> bool:
        kind = self.kind
        if kind == "connect_matcher":  # Envoy's ConnectRouteEntryImpl: CONNECT requests only
            return view.req.method == b"CONNECT"
        path = view.path
        if kind == "safe_regex":
            return self.regex.fullmatch(path) is not None  # type: ignore[union-attr]
        if not self.case_sensitive:
            path = path.lower()
        if kind == "prefix":
            return path.startswith(self.value)
        if kind == "path":
            return path == self.value
        # path_separated_prefix: the prefix, then end of path or "/".
        value = self.value
        return path.startswith(value) and (len(path) == len(value) or path[len(value)] == "/")

    @property
    def matched_length(self) -> int:
        """Characters of the path a prefix_rewrite replaces (prefix/path kinds only)."""
        return len(self.value)


ROUTE_MATCH = Message("envoy.config.route.v3.RouteMatch", model=RouteMatch,
                      bookkeeping=("kind", "raw_prefix"), fields=(
    used("prefix", attr="value"),
    used("path", attr="value"),
    used("safe_regex", attr="regex"),
    used("connect_matcher", attr="kind", why="matches CONNECT requests (Envoy: no other)"),
    used("path_separated_prefix", attr="value"),
    refused("path_match_policy"),
    used("case_sensitive", True),
    refused("runtime_fraction"),
    used("headers"),
    used("query_parameters"),
    refused("cookies"),
    used("grpc"),
    used("tls_context", attr="tls_presented"),
    used("dynamic_metadata"),
    refused("filter_state"),
))
GRPC_ROUTE_MATCH = Message("envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions", fields=())
TLS_CONTEXT_MATCH = Message("envoy.config.route.v3.RouteMatch.TlsContextMatchOptions", fields=(
    used("presented", attr="tls_presented"),
    used("validated", attr="tls_validated"),
))


def parse_route_match(raw: Any, path: str) -> RouteMatch:
    f = ROUTE_MATCH.read(raw, path)
    kind = f.oneof(*_PATH_KINDS, required=True)
    case_sensitive = f.bool("case_sensitive", True)
    value, regex = "", None
    if kind == "safe_regex":
        regex = parse_regex_matcher(f.raw[kind], f.at(kind))
    elif kind == "connect_matcher":
        CONNECT_MATCH_TABLE.read(f.raw[kind], f.at(kind))
    else:
        value = f.str(kind)
        if kind == "path_separated_prefix":
            if not value.startswith("/") or value.endswith("/") or "?" in value or "#" in value:
                raise ConfigError(f.at(kind), "must start with \"/\", not end with \"/\", and "
                                  "contain no \"?\" or \"#\"")
        if not case_sensitive:
            value = value.lower()
    headers = tuple(parse_header_matcher(item, p) for item, p in f.list("headers"))
    queries = tuple(parse_query_parameter_matcher(item, p)
                    for item, p in f.list("query_parameters"))
    grpc = False
    if f.has("grpc"):
        GRPC_ROUTE_MATCH.read(f.raw["grpc"], f.at("grpc"))
        grpc = True
    presented = validated = None
    if f.value("tls_context") is not None:
        t = TLS_CONTEXT_MATCH.read(f.value("tls_context"), f.at("tls_context"))
        presented = t.bool("presented", None)
        validated = t.bool("validated", None)
    dynamic_metadata = ()
    if f.has("dynamic_metadata"):
        from .metadata_matcher import parse_metadata_matcher  # (it imports this module)
        dynamic_metadata = tuple(parse_metadata_matcher(item, p)
                                 for item, p in f.list("dynamic_metadata"))
    return RouteMatch(kind, value, regex, case_sensitive, headers, queries, grpc,
                      presented, validated, dynamic_metadata)
