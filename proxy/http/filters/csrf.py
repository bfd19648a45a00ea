"""`envoy.filters.http.csrf`: a mutating request (POST, PUT, DELETE, PATCH) whose origin is not
the host it is sent to is refused, as Envoy's CSRF filter does.

Config `envoy.extensions.filters.http.csrf.v3.CsrfPolicy` (the filter's, and per route in
`typed_per_filter_config`, which replaces it there): `filter_enabled` (required; its default
value: there is no runtime layer), `shadow_enabled` (counted, never enforced),
`additional_origins` (string matchers on the source origin's host[:port]).
The source origin is the Origin header's host[:port], else the Referer's; it must equal the
request's host (or match an additional origin). A mutating request without either header, or
with `Origin: null`, counts `missing_source_origin`; a mismatch counts `request_invalid` and, enforced, gets 403
`Invalid origin` with details `csrf_origin_mismatch`; a match counts `request_valid`.
Stats `http.<prefix>.csrf.*`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.registry import Extension, register
from ...config.runtime_values import FractionalPercent, parse_runtime_fractional_percent
from ...router.matchers import StringMatcher, parse_string_matcher
from ..filter import FilterHeadersStatus, PassThroughFilter

__all__ = ["CsrfPolicy", "parse_csrf_policy"]

NAME = "envoy.filters.http.csrf"
PROTO = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
_MODIFY = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})


@dataclass(frozen=True, slots=True)
class CsrfPolicy:
    filter_enabled: FractionalPercent
    shadow_enabled: FractionalPercent | None = None
    additional_origins: tuple[StringMatcher, ...] = ()


CSRF = Message(PROTO, title="HTTP filter csrf", model=CsrfPolicy, fields=(
    used("filter_enabled", why="its default_value: there is no runtime layer"),
    used("shadow_enabled", why="its default_value: there is no runtime layer"),
    used("additional_origins"),
))


def parse_csrf_policy(raw: Mapping[str, Any], path: str) -> CsrfPolicy:
    f = CSRF.read(raw, path)
    shadow = f.raw_obj("shadow_enabled")
    return CsrfPolicy(
        filter_enabled=parse_runtime_fractional_percent(f.raw_obj("filter_enabled", required=True),
                                                        f.at("filter_enabled")),
        shadow_enabled=(parse_runtime_fractional_percent(shadow, f.at("shadow_enabled"))
                        if shadow is not None else None),
        additional_origins=tuple(parse_string_matcher(m, p) for m, p in f.list("additional_origins")),
    )


class CsrfFactory:
    def __init__(self, config: CsrfPolicy, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerCsrfFactory:
        return WorkerCsrfFactory(self, ctx)


class WorkerCsrfFactory:
    decoder = True
    encoder = False

    def __init__(self, factory: CsrfFactory, ctx) -> None:
        self.name = factory.name
        self.config = factory.config
        self.worker = ctx.worker
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.csrf")
        self.missing_source_origin = scope.counter("missing_source_origin")
        self.request_invalid = scope.counter("request_invalid")
        self.request_valid = scope.counter("request_valid")

    def create(self, callbacks) -> CsrfFilter:
        return CsrfFilter(callbacks, self)


def _host_and_port(value: bytes | None) -> bytes:
    """An absolute URL's host[:port] (Envoy's hostAndPort): `http://a:8080/x` -> `a:8080`; a value
    that is not an absolute URL (`null`, a bare host) is compared as it is."""
    if not value:
        return b""
    scheme, sep, rest = value.partition(b"://")
    if not sep or not scheme:
        return value
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
    return authority or value


class CsrfFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf")

    def __init__(self, callbacks, wf: WorkerCsrfFactory) -> None:
        self.cb = callbacks
        self.wf = wf

    def decode_headers(self, head, end_stream: bool) -> int:
        if head.method not in _MODIFY:
            return FilterHeadersStatus.CONTINUE
        wf = self.wf
        policy = self.cb.per_filter_config(wf.name) or wf.config
        rand = wf.worker.rand_bits
        enforced = policy.filter_enabled.enabled(rand)
        if not enforced and not (policy.shadow_enabled is not None and policy.shadow_enabled.enabled(rand)):
            return FilterHeadersStatus.CONTINUE
        headers = head.headers
        origin = headers.get(b"origin")
        # Envoy 1.40 (behaviour, not its docs): `Origin: null` is a missing source, with no
        # fall back to the Referer; a missing source is not also counted as invalid.
        source = (b"" if origin == b"null" else _host_and_port(origin)) if origin else \
            _host_and_port(headers.get(b"referer"))
        valid = False
        if not source:
            wf.missing_source_origin.value += 1
        elif (source == (head.authority or headers.get(b"host"))
              or any(m.match(source.decode("latin-1")) for m in policy.additional_origins)):
            valid = True
        else:
            wf.request_invalid.value += 1
        if valid:
            wf.request_valid.value += 1
            return FilterHeadersStatus.CONTINUE
        if not enforced:
            return FilterHeadersStatus.CONTINUE
        self.cb.send_local_reply(403, b"Invalid origin", None, "csrf_origin_mismatch")
        return FilterHeadersStatus.STOP_ITERATION


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_csrf_policy,
    factory=CsrfFactory,
    per_route_proto=PROTO,
    parse_per_route=parse_csrf_policy,
))
