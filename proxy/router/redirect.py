"""Path rewriting (`prefix_rewrite`, `regex_rewrite`) and `config.route.v3.RedirectAction`.

Job: parse both, and compute rewritten paths and redirect `Location` values the way Envoy
does (`Http::Utility::newUri`):
- a prefix rewrite replaces the first `len(matched prefix)` characters of the path (so prefix
  "/api/" + rewrite "/" turns "/api/x" into "/x", while prefix "/api" + rewrite "/" gives
  "//x", exactly as Envoy); the query string is kept;
- a regex rewrite substitutes every match in the path (not the query); RE2's `\\N` group
  references work in the substitution;
- redirect scheme: `scheme_redirect`, else https when `https_redirect`, else the request's
  (x-forwarded-proto, then :scheme); host: `host_redirect`, else the request's host with its
  port dropped when `port_redirect` is set or when the scheme changes away from the port's
  default (":80" for http, ":443" for https); `path_redirect` keeps the request's query
  unless it has its own; `strip_query` drops the query (never one given by path_redirect).

Must not: do I/O or keep per-request state. Thread affinity: none (immutable, shared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.config.fields_table import Message, used
from proxy.config.reader import ConfigError

from .matchers import parse_regex_matcher, split_path

__all__ = ["RegexRewrite", "PathRewrite", "RedirectAction", "parse_regex_rewrite",
           "parse_redirect", "REDIRECT_CODES", "request_scheme"]

# Proto enum order (values 0..4) matters: configs may give the number.
REDIRECT_CODES = MappingProxyType({
    "MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308})


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """`type.matcher.v3.RegexMatchAndSubstitute`; `parts` is the substitution compiled into
    literal strings and group numbers."""

    pattern: re.Pattern[str]
    substitution: str
    parts: tuple[str | int, ...]

    def apply(self, path: str) -> str:
        """Every match replaced as RE2's GlobalReplace does (Envoy): an empty match right where
        the previous match ended is skipped (Python's re.sub would replace it too: `.*` on
        "/x" would give the substitution twice)."""
        parts = self.parts
        out: list[str] = []
        pos = 0
        last_end = -1
        for m in self.pattern.finditer(path):
            start, end = m.span()
            if start == end == last_end:
                continue
            out.append(path[pos:start])
            out.append("".join(p if isinstance(p, str) else (m.group(p) or "") for p in parts))
            pos = last_end = end
        out.append(path[pos:])
        return "".join(out)


def _compile_substitution(sub: str, groups: int, path: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    lit: list[str] = []
    i = 0
    while i < len(sub):
        c = sub[i]
        if c == "\\" and i + 1 < len(sub):
            nxt = sub[i + 1]
            if nxt.isdigit():
                n = int(nxt)
                if n > groups:
                    raise ConfigError(path, f"substitution refers to group \\{n} but the pattern "
                                      f"has {groups} group(s)")
                if lit:
                    parts.append("".join(lit))
                    lit = []
                parts.append(n)
                i += 2
                continue
            if nxt == "\\":
                lit.append("\\")
                i += 2
                continue
            raise ConfigError(path, f"invalid escape \\{nxt} in substitution")
        lit.append(c)
        i += 1
    if lit:
        parts.append("".join(lit))
    return tuple(parts)


REGEX_REWRITE = Message("envoy.type.matcher.v3.RegexMatchAndSubstitute", model=RegexRewrite,
                        bookkeeping=("substitution",), fields=(   # its source text
    used("pattern"),
    used("substitution", attr="parts"),
))


def parse_regex_rewrite(raw: Any, path: str) -> RegexRewrite:
    f = REGEX_REWRITE.read(raw, path)
    pattern = parse_regex_matcher(f.value("pattern", required=True), f.at("pattern"))
    sub = f.str("substitution", "")
    return RegexRewrite(pattern, sub, _compile_substitution(sub, pattern.groups,
                                                             f.at("substitution")))


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """A route's path rewrite: `prefix_rewrite` over the matched length, or a regex rewrite."""

    matched_length: int = 0
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None

    def apply(self, target: str) -> str | None:
        """New request target (query kept), or None when this route rewrites nothing."""
        if self.prefix_rewrite is None and self.regex_rewrite is None:
            return None
        path, query = split_path(target)
        if self.prefix_rewrite is not None:
            new = self.prefix_rewrite + path[self.matched_length:]
        else:
            new = self.regex_rewrite.apply(path)  # type: ignore[union-attr]
        return f"{new}?{query}" if query else new


def request_scheme(req: Any) -> str:
    xfp = req.headers.get(b"x-forwarded-proto")
    if xfp:
        return xfp.decode("latin-1").lower()
    scheme = getattr(req, "scheme", b"")
    return scheme.decode("latin-1").lower() if scheme else "http"


def _host_port_split(host: str) -> int:
    """Index of the ':' that starts the port in `host`, or -1."""
    if host.startswith("["):
        i = host.rfind("]:")
        return i + 1 if i >= 0 else -1
    return host.rfind(":")


@dataclass(frozen=True, slots=True)
class RedirectAction:
    scheme_redirect: str | None = None
    https_redirect: bool = False
    host_redirect: str | None = None
    port_redirect: int | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    response_code: int = 301
    strip_query: bool = False
    path_rewrite: PathRewrite = PathRewrite()

    def location(self, req: Any) -> bytes:
        orig_scheme = request_scheme(req)
        if self.scheme_redirect:
            scheme = self.scheme_redirect
        elif self.https_redirect:
            scheme = "https"
        else:
            scheme = orig_scheme
        port = f":{self.port_redirect}" if self.port_redirect else ""
        host = self.host_redirect or self._request_host(req, orig_scheme, scheme, port)

        target = req.path_str
        path_has_query = False
        if self.path_redirect is not None:
            path_has_query = "?" in self.path_redirect
            if path_has_query:
                path = self.path_redirect
            else:
                q = target.find("?")
                path = self.path_redirect + (target[q:] if q >= 0 else "")
        else:
            path = self.path_rewrite.apply(target) or target
        if not path.startswith("/"):
            path = "/" + path
        if self.strip_query and not path_has_query:
            q = path.find("?")
            if q >= 0:
                path = path[:q]
        return f"{scheme}://{host}{port}{path}".encode("latin-1")

    @staticmethod
    def _request_host(req: Any, orig_scheme: str, scheme: str, port: str) -> str:
        host = req.authority.decode("latin-1")
        colon = _host_port_split(host)
        if colon < 0:
            return host
        request_port = host[colon:]
        remove = bool(port)
        if scheme != orig_scheme:
            remove |= orig_scheme == "https" and request_port == ":443"
            remove |= orig_scheme == "http" and request_port == ":80"
        return host[:colon] if remove else host


REDIRECT = Message("envoy.config.route.v3.RedirectAction", model=RedirectAction,
                   bookkeeping=("path_rewrite",), fields=(   # prefix_rewrite / regex_rewrite
    used("https_redirect", False),
    used("scheme_redirect"),
    used("host_redirect"),
    used("port_redirect"),
    used("path_redirect"),
    used("prefix_rewrite"),
    used("regex_rewrite"),
    used("response_code", "MOVED_PERMANENTLY"),
    used("strip_query", False),
))


def parse_redirect(raw: Any, path: str, matched_length: int | None) -> RedirectAction:
    """`matched_length` is the route's prefix/path length, None for regex routes (where a
    prefix_rewrite has no prefix to replace)."""
    f = REDIRECT.read(raw, path)
    f.oneof("https_redirect", "scheme_redirect")
    path_kind = f.oneof("path_redirect", "prefix_rewrite", "regex_rewrite")
    scheme = f.str("scheme_redirect")
    if scheme is not None:
        scheme = scheme.lower()
    prefix = f.str("prefix_rewrite")
    if prefix is not None and matched_length is None:
        raise ConfigError(f.at("prefix_rewrite"), "prefix_rewrite needs a prefix, path or "
                          "path_separated_prefix match")
    regex = parse_regex_rewrite(f.raw["regex_rewrite"], f.at("regex_rewrite")) \
        if path_kind == "regex_rewrite" else None
    code_name = f.enum("response_code", tuple(REDIRECT_CODES), "MOVED_PERMANENTLY")
    port = f.int("port_redirect", 0, min=0, max=65535)
    return RedirectAction(
        scheme_redirect=scheme or None,
        https_redirect=f.bool("https_redirect", False),
        host_redirect=f.str("host_redirect") or None,
        port_redirect=port or None,
        path_redirect=f.str("path_redirect"),
        prefix_rewrite=prefix,
        regex_rewrite=regex,
        response_code=REDIRECT_CODES[code_name],
        strip_query=f.bool("strip_query", False),
        path_rewrite=PathRewrite(matched_length or 0, prefix, regex),
    )
