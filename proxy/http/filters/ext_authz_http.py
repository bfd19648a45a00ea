"""ext_authz's HTTP authorization service worked out once per config (Envoy's RawHttpClientImpl):
which of the request's headers go in the check request and what else it carries
(`check_headers`), and where the service's answer headers go (`HeaderNames` for each of the
`authorization_response` lists). ext_authz.py is the filter that uses them.

The ListStringMatchers over header names are precompiled (`HeaderNames`): the exact patterns
become one set of bytes, so the usual lists (exact names) cost a set lookup per header instead
of a decode and a call per pattern; the other patterns (prefix, suffix, contains, regex) are
asked as before. Header names are lower-case bytes (every codec gives them so: HTTP/1.1 codecs
lower-case them, HTTP/2 refuses others) and tokens (ASCII), so an exact pattern matches a name
exactly when its bytes are the name's (case-sensitive, as Envoy 1.40; an `ignore_case`
pattern's value is lower-cased at parse time).

Thread affinity: none. A CheckPlan is immutable: made on the main thread at config load, read
by every worker. Must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

from ...router.header_mutation import ValueFormat
from ...router.matchers import StringMatcher

__all__ = ["CheckPlan", "HeaderNames", "check_headers"]

# Envoy's defaults: the check request always carries the client's Authorization (never its
# host, which is the check's own authority, nor its content-length); a denial, when
# allowed_client_headers is set, always passes these on too (its content-length is the local
# reply's own).
_REQUEST_ALWAYS = (b"authorization",)
_REQUEST_NEVER = (b"host", b"content-length")
_CLIENT_ALWAYS = (b"content-length", b"www-authenticate", b"location")
_CLIENT_NEVER = (b"content-length",)
_PARTIAL_BODY = b"x-envoy-auth-partial-body"
_NAME = itemgetter(0)


class HeaderNames:
    """A ListStringMatcher over header names, precompiled, plus names always in (`always`) and
    never in (`never`, stronger than both). `name in names`; the hot paths read `exact` and
    `others` themselves and call `matches_other` only when `others` is not empty. Immutable
    once made (a frozenset, a tuple): shared by every worker."""

    __slots__ = ("exact", "others", "never")

    def __init__(self, matchers: Iterable[StringMatcher], always: Iterable[bytes] = (),
                 never: Iterable[bytes] = ()) -> None:
        exact = set(always)
        others = []
        for m in matchers:
            value = m.value.encode("latin-1", "replace") if m.kind == "exact" else None
            if value is not None and value.decode("latin-1") == m.value:
                exact.add(value)
            else:  # (an exact pattern with a character no header name has never matches either)
                others.append(m)
        self.never = frozenset(never)
        self.exact = frozenset(exact - self.never)
        self.others = tuple(others)

    def matches_other(self, name: bytes) -> bool:
        """`name` (not in `exact`) matched by a pattern that is not an exact name."""
        if name in self.never:
            return False
        text = name.decode("latin-1")
        for m in self.others:
            if m.match(text):
                return True
        return False

    def __contains__(self, name: bytes) -> bool:
        return name in self.exact or (bool(self.others) and self.matches_other(name))


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """One http_service config, compiled. `request`: the request's headers the check carries
    (authorization and allowed_headers, never host or content-length); `only_authorization`:
    no allowed_headers (the usual): the request's authorization alone. `headers_to_add`: name,
    value (None when formatted per request) and its ValueFormat, one per name (the last
    configured, in the order of the last occurrences: each replaces the earlier), `added`
    their names. `upstream`, `upstream_append`, `on_success`: the answer's headers that replace
    or are appended to the request's, or go on the client's response; None when not
    configured (`reads_answer`: one of them is). `client`: a denial's headers for the client, None for "all but host and
    content-length" (allowed_client_headers unset)."""

    request: HeaderNames
    only_authorization: bool
    headers_to_add: tuple[tuple[bytes, bytes | None, ValueFormat], ...]
    added: frozenset[bytes]
    upstream: HeaderNames | None
    upstream_append: HeaderNames | None
    on_success: HeaderNames | None
    reads_answer: bool
    client: HeaderNames | None

    @classmethod
    def compile(cls, config) -> CheckPlan:
        """From an ExtAuthz config (ext_authz.py) with an http_service."""
        last: dict[bytes, ValueFormat] = {}
        for name, fmt in config.headers_to_add:
            last.pop(name, None)
            last[name] = fmt
        to_add = tuple((name, _static(fmt), fmt) for name, fmt in last.items())

        def names(matchers) -> HeaderNames | None:
            return HeaderNames(matchers) if matchers else None

        upstream = names(config.allowed_upstream_headers)
        upstream_append = names(config.allowed_upstream_headers_to_append)
        on_success = names(config.allowed_client_headers_on_success)
        return cls(
            request=HeaderNames(config.allowed_headers, _REQUEST_ALWAYS, _REQUEST_NEVER),
            only_authorization=not config.allowed_headers,
            headers_to_add=to_add,
            added=frozenset(last),
            upstream=upstream,
            upstream_append=upstream_append,
            on_success=on_success,
            reads_answer=upstream is not None or upstream_append is not None or on_success is not None,
            client=(HeaderNames(config.allowed_client_headers, _CLIENT_ALWAYS, _CLIENT_NEVER)
                    if config.allowed_client_headers else None),
        )


def _static(fmt: ValueFormat) -> bytes | None:
    """The value's bytes when it has no operator (the same for every request), else None."""
    if all(isinstance(p, str) for p in fmt.parts):
        return "".join(fmt.parts).encode("latin-1", "replace")
    return None


def check_headers(plan: CheckPlan, fields: list[tuple[bytes, bytes]], body_len: int,
                  partial: bool | None, info) -> list[tuple[bytes, bytes]]:
    """The check request's headers (the async client adds its own after them): its
    content-length, the request's `fields` the plan selects (in their order), then
    `x-envoy-auth-partial-body` when a body goes along (`partial` not None: whether it was
    cut), then headers_to_add (formatted with `info`, the stream), each replacing any header
    of its name."""
    out = [(b"content-length", b"%d" % body_len if body_len else b"0")]
    if plan.only_authorization:
        if b"authorization" in list(map(_NAME, fields)):   # (one scan in C: often absent)
            out.extend(kv for kv in fields if kv[0] == b"authorization")
    else:
        names = plan.request
        exact = names.exact
        if names.others:
            for kv in fields:
                if kv[0] in exact or names.matches_other(kv[0]):
                    out.append(kv)
        else:
            for kv in fields:
                if kv[0] in exact:
                    out.append(kv)
    if partial is not None:
        out.append((_PARTIAL_BODY, b"true" if partial else b"false"))
    if plan.headers_to_add:
        added = plan.added
        out = [kv for kv in out if kv[0] not in added]
        for name, value, fmt in plan.headers_to_add:
            out.append((name, value if value is not None
                        else fmt.format(info).encode("latin-1", "replace")))
    return out
