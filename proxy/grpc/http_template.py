"""google.api.http path templates (google/api/http.proto) and matching request paths to them,
as the gRPC-JSON transcoder (grpc-httpjson-transcoding's PathMatcher) does, without I/O.

    Template = "/" Segments [ Verb ] ;   Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;   Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

`{x}` is `{x=*}`; `*` matches one segment, `**` the rest of the path (zero or more segments).
A request path's last segment ends in a verb only when `:verb` is one some template declares
(Envoy's default, match_unregistered_custom_verb off). Among the templates that match, the
one whose segments are most literal wins, segment by segment (literal, then `*`, then `**`),
as the matcher's trie prefers. Variable values are percent-decoded except for RFC 6570's
reserved characters (url_unescape_spec's default, ALL_CHARACTERS_EXCEPT_RESERVED).

Thread affinity: none (immutable templates, pure functions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PathTemplate", "TemplateError", "parse_template", "split_path", "unescape_reserved"]

_LITERAL, _ONE, _REST = 0, 1, 2
_RESERVED = frozenset(b":/?#[]@!$&'()*+,;=")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class TemplateError(ValueError):
    """A google.api.http path that is not a template."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    text: str
    segments: tuple[tuple[int, str], ...]           # (_LITERAL, text) | (_ONE, "*") | (_REST, "**")
    variables: tuple[tuple[str, int, int], ...]     # (field path, first segment, end segment)
    verb: str                                        # "" when none

    def match(self, segments: list[str], verb: str) -> tuple[tuple[str, str], ...] | None:
        """The (field path, value) bindings when `segments`/`verb` (from split_path) match."""
        if verb != self.verb:
            return None
        mine = self.segments
        n = len(segments)
        if mine and mine[-1][0] == _REST:
            if n < len(mine) - 1:
                return None
        elif n != len(mine):
            return None
        for k, (kind, text) in enumerate(mine):
            if kind == _LITERAL and segments[k] != text:
                return None
        out = []
        for field, first, end in self.variables:
            if end == len(mine) and mine[-1][0] == _REST:
                value = "/".join(segments[first:])
            else:
                value = "/".join(segments[first:end])
            out.append((field, value))
        return tuple(out)

    def rank(self) -> tuple[int, ...]:
        """Sorts the more literal template first."""
        return tuple(kind for kind, _ in self.segments)


def _segments(text: str, where: str) -> list[tuple[int, str]]:
    out = []
    for seg in text.split("/"):
        if seg == "*":
            out.append((_ONE, "*"))
        elif seg == "**":
            out.append((_REST, "**"))
        elif not seg or any(c in seg for c in "{}*"):
            raise TemplateError(f"{where}: bad segment {seg!r}")
        else:
            out.append((_LITERAL, seg))
    return out


def parse_template(text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise TemplateError(f"{text!r}: a template starts with '/'")
    body, verb = text[1:], ""
    close = body.rfind("}")
    colon = body.rfind(":")
    if colon > close:
        body, verb = body[:colon], body[colon + 1:]
        if not verb:
            raise TemplateError(f"{text!r}: empty verb")
    segments: list[tuple[int, str]] = []
    variables: list[tuple[str, int, int]] = []
    i = 0
    while i < len(body):
        if body[i] == "{":
            j = body.find("}", i)
            if j < 0:
                raise TemplateError(f"{text!r}: unclosed variable")
            inner = body[i + 1:j]
            field, _, sub = inner.partition("=")
            if not _FIELD_PATH.match(field):
                raise TemplateError(f"{text!r}: bad field path {field!r}")
            start = len(segments)
            segments.extend(_segments(sub or "*", text))
            variables.append((field, start, len(segments)))
            i = j + 1
        else:
            j = body.find("/", i)
            j = len(body) if j < 0 else j
            if "{" in body[i:j]:
                raise TemplateError(f"{text!r}: a variable must be a whole segment")
            segments.extend(_segments(body[i:j], text))
            i = j
        if i < len(body):
            if body[i] != "/":
                raise TemplateError(f"{text!r}: expected '/' at {i + 1}")
            i += 1
            if i == len(body):
                raise TemplateError(f"{text!r}: trailing '/'")
    if any(kind == _REST for kind, _ in segments[:-1]):
        raise TemplateError(f"{text!r}: '**' must be the last segment")
    return PathTemplate(text, tuple(segments), tuple(variables), verb)


def split_path(path: str, verbs: frozenset[str]) -> tuple[list[str], str]:
    """A request path (no query) as segments, and its verb when it ends in a known one."""
    segments = path[1:].split("/") if path.startswith("/") else path.split("/")
    verb = ""
    last = segments[-1]
    colon = last.rfind(":")
    if colon >= 0 and last[colon + 1:] in verbs:
        verb = last[colon + 1:]
        segments[-1] = last[:colon]
    if segments and segments[-1] == "" and not verb:
        segments.pop()  # (a trailing '/' is not a segment)
    return segments, verb


def unescape_reserved(value: str) -> str:
    """%XX decoded unless XX is a reserved character (then kept as written)."""
    raw = value.encode("utf-8", "surrogateescape")
    out = _PERCENT.sub(lambda m: m.group(0) if int(m.group(1), 16) in _RESERVED
                       else bytes((int(m.group(1), 16),)), raw)
    return out.decode("utf-8", "replace")
