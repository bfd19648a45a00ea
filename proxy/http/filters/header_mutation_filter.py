"""`envoy.filters.http.header_mutation`: add and remove request/response headers and trailers,
and rewrite the request's query parameters, as Envoy 1.40's header mutation filter does.

Config `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`: `mutations`
(request_mutations, response_mutations, request_trailers_mutations,
response_trailers_mutations: lists of `mutation_rules.v3.HeaderMutation` — `remove` a name or
`append` a HeaderValueOption; query_parameter_mutations: `remove` a name or `append` a
`record` under `action`), `most_specific_header_mutations_wins`. Per route
(`typed_per_filter_config`, at route, virtual host and route configuration level):
`HeaderMutationPerRoute` with its own `mutations`.

Envoy's order, kept here (header_mutation.cc): the filter's own mutations first, then every
level's per-route mutations — most specific first (route, virtual host, route configuration),
so the less specific level has the last word; with `most_specific_header_mutations_wins` the
reverse (route configuration, virtual host, route), so the route's does. Within a list, the
mutations run in the order written. Header rules (append actions, keep_empty_value, legacy
`append`, `:`-prefixed/host names refused) and value operators are the route tables'
(proxy/router/header_mutation.py), plus `%RESP(name)%`: the response's header (empty on the
request side, as in Envoy); request-trailer values see the request headers only.
Query parameters: header_mutation_query.py (each level parses and rewrites the path again,
as Envoy does).

Must not: do I/O. Thread affinity: the parsed config is immutable and shared; a filter
belongs to its stream's worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError, Fields
from ...config.registry import Extension, register
from ...router.header_mutation import (HeaderMutation, ResponseInfo, apply_mutations,
                                       check_header_name, compile_value_format,
                                       parse_header_value_option)
from ..filter import FilterHeadersStatus, PassThroughFilter
from ..headers import Headers
from .header_mutation_query import QUERY_APPEND_ACTIONS, QueryMutation, apply_query_mutations

__all__ = ["Mutations", "HeaderMutationConfig", "HeaderMutationPerRoute",
           "parse_header_mutation", "parse_header_mutation_per_route"]

NAME = "envoy.filters.http.header_mutation"
PROTO = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"


@dataclass(frozen=True, slots=True)
class Mutations:
    request_mutations: tuple[HeaderMutation, ...] = ()
    response_mutations: tuple[HeaderMutation, ...] = ()
    query_parameter_mutations: tuple[QueryMutation, ...] = ()
    request_trailers_mutations: tuple[HeaderMutation, ...] = ()
    response_trailers_mutations: tuple[HeaderMutation, ...] = ()
    # A request mutation adds or removes content-type: the stream notes first whether the
    # request arrived as gRPC (its local replies' shape; filter.py keeps_request_content_type).
    request_content_type: bool = False


NO_MUTATIONS = Mutations()


@dataclass(frozen=True, slots=True)
class HeaderMutationConfig:
    mutations: Mutations = NO_MUTATIONS
    most_specific_header_mutations_wins: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutationPerRoute:
    mutations: Mutations = NO_MUTATIONS


CONFIG = Message(PROTO, title="HTTP filter header_mutation", model=HeaderMutationConfig, fields=(
    used("mutations"),
    used("most_specific_header_mutations_wins", False),
))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter header_mutation (per route)",
                    model=HeaderMutationPerRoute, fields=(
    used("mutations"),
))
MUTATIONS = Message("envoy.extensions.filters.http.header_mutation.v3.Mutations", model=Mutations,
                    bookkeeping=("request_content_type",), fields=(
    used("request_mutations"),
    used("response_mutations"),
    used("query_parameter_mutations"),
    used("request_trailers_mutations"),
    used("response_trailers_mutations"),
))
RULE = Message("envoy.config.common.mutation_rules.v3.HeaderMutation", fields=(
    used("remove", attr="", why="a HeaderMutation with remove set"),
    used("append", attr="", why="its HeaderValueOption (the route tables' table)"),
    refused("remove_on_match", "a key matcher over the headers"),
))
QUERY_MUTATION = Message("envoy.config.core.v3.KeyValueMutation", model=QueryMutation, fields=(
    used("append", attr="", why="its KeyValueAppend"),
    used("remove", attr="key"),
))
QUERY_APPEND = Message("envoy.config.core.v3.KeyValueAppend", fields=(
    used("record", attr="", why="its KeyValuePair"),
    used("action", "APPEND_IF_EXISTS_OR_ADD"),
    refused("entry", "Envoy 1.40's header_mutation filter takes only `record`"),
))
QUERY_RECORD = Message("envoy.config.core.v3.KeyValuePair", fields=(
    used("key"),
    used("value", why="a string: a format, like a header value's"),
))


def _header_rules(f: Fields, key: str) -> tuple[HeaderMutation, ...]:
    out = []
    for raw, path in f.list(key):
        r = RULE.read(raw, path)
        which = r.oneof("remove", "append", required=True)
        if which == "remove":
            out.append(HeaderMutation(check_header_name(r.value("remove"), r.at("remove")), remove=True))
        else:
            out.append(parse_header_value_option(r.value("append"), r.at("append"), allow_resp=True))
    return tuple(out)


def _query_rules(f: Fields) -> tuple[QueryMutation, ...]:
    out = []
    for raw, path in f.list("query_parameter_mutations"):
        m = QUERY_MUTATION.read(raw, path)
        which = m.oneof("append", "remove")
        if which == "remove" and m.str("remove"):
            out.append(QueryMutation(m.str("remove").encode("utf-8")))
            continue
        if which != "append":
            raise ConfigError(path, "one of append, remove must be specified")
        a = QUERY_APPEND.read(m.raw_obj("append"), m.at("append"))
        record = a.raw_obj("record")
        if record is None:
            raise ConfigError(a.path, "no record specified for append mutation")
        r = QUERY_RECORD.read(record, a.at("record"))
        key = r.str("key", required=True)
        if not key:
            raise ConfigError(r.at("key"), "expected a non-empty parameter name")
        value = r.value("value", None)
        if not isinstance(value, str):
            raise ConfigError(r.at("value"), "only a string value is allowed for the record value")
        out.append(QueryMutation(key.encode("utf-8"),
                                 compile_value_format(value, r.at("value"), allow_resp=True),
                                 a.enum("action", QUERY_APPEND_ACTIONS, "APPEND_IF_EXISTS_OR_ADD")))
    return tuple(out)


def _parse_mutations(raw: Any, path: str) -> Mutations:
    if raw is None:
        return NO_MUTATIONS
    f = MUTATIONS.read(raw, path)
    request = _header_rules(f, "request_mutations")
    return Mutations(
        request_mutations=request,
        response_mutations=_header_rules(f, "response_mutations"),
        query_parameter_mutations=_query_rules(f),
        request_trailers_mutations=_header_rules(f, "request_trailers_mutations"),
        response_trailers_mutations=_header_rules(f, "response_trailers_mutations"),
        request_content_type=any(m.name == b"content-type" for m in request),
    )


def parse_header_mutation(raw: Mapping[str, Any], path: str) -> HeaderMutationConfig:
    f = CONFIG.read(raw, path)
    return HeaderMutationConfig(_parse_mutations(f.raw_obj("mutations"), f.at("mutations")),
                                f.bool("most_specific_header_mutations_wins", False))


def parse_header_mutation_per_route(raw: Mapping[str, Any], path: str) -> HeaderMutationPerRoute:
    f = PER_ROUTE.read(raw, path)
    return HeaderMutationPerRoute(_parse_mutations(f.raw_obj("mutations"), f.at("mutations")))


# -- runtime ----------------------------------------------------------------------------------


class HeaderMutationFactory:
    def __init__(self, config: HeaderMutationConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerHeaderMutationFactory:
        return WorkerHeaderMutationFactory(self)


class WorkerHeaderMutationFactory:
    decoder = True
    encoder = True

    def __init__(self, factory: HeaderMutationFactory) -> None:
        self.name = factory.name
        self.config = factory.config
        self.own_levels = (factory.config.mutations,)  # a stream whose route configures none

    def create(self, callbacks) -> HeaderMutationFilter:
        return HeaderMutationFilter(callbacks, self)


def _mutate_trailers(trailers: list[tuple[bytes, bytes]], levels: list[tuple[HeaderMutation, ...]],
                     info: Any) -> None:
    """Trailers are a list of (name, value) the filter chain passes on: changed in place."""
    if not any(levels):
        return
    headers = Headers(trailers)
    for mutations in levels:
        apply_mutations(mutations, headers, info)
    trailers[:] = headers.fields


class HeaderMutationFilter(PassThroughFilter):
    keeps_request_content_type = True  # (it notes the request's gRPC-ness before changing it)
    __slots__ = ("cb", "wf", "levels", "response_info")

    def __init__(self, callbacks, wf: WorkerHeaderMutationFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.levels: tuple[Mutations, ...] | None = None  # filter's, then the routes', in order
        self.response_info: ResponseInfo | None = None

    def _levels(self) -> tuple[Mutations, ...]:
        """Resolved once per stream (Envoy's maybeInitializeRouteConfigs): the same levels for
        the request and the response."""
        levels = self.levels
        if levels is None:
            wf = self.wf
            configs = self.cb.all_per_filter_configs(wf.name)
            if not configs:  # (the usual: the filter's own mutations alone)
                levels = self.levels = wf.own_levels
                return levels
            config = wf.config
            routes = [c.mutations for c in configs
                      if isinstance(c, HeaderMutationPerRoute)]  # most specific first
            if config.most_specific_header_mutations_wins:
                routes.reverse()
            levels = self.levels = (config.mutations, *routes)
        return levels

    def decode_headers(self, head, end_stream: bool) -> int:
        info = self.cb.stream_info
        for m in self._levels():
            if m.request_mutations:
                if m.request_content_type:
                    self.cb.note_request_grpc()
                apply_mutations(m.request_mutations, head.headers, info)
            if m.query_parameter_mutations and head.path:
                head.set_path(apply_query_mutations(head.path, m.query_parameter_mutations, info))
        return FilterHeadersStatus.CONTINUE

    def decode_trailers(self, trailers) -> int:
        info = self.cb.stream_info
        _mutate_trailers(trailers, [m.request_trailers_mutations for m in self._levels()], info)
        return 0

    def encode_headers(self, head, end_stream: bool) -> int:
        info = self.response_info = ResponseInfo(self.cb.stream_info, head)
        for m in self._levels():
            if m.response_mutations:
                apply_mutations(m.response_mutations, head.headers, info)
        return FilterHeadersStatus.CONTINUE

    def encode_trailers(self, trailers) -> int:
        info = self.response_info or ResponseInfo(self.cb.stream_info, None)
        _mutate_trailers(trailers, [m.response_trailers_mutations for m in self._levels()], info)
        return 0


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_header_mutation,
    factory=HeaderMutationFactory,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_header_mutation_per_route,
))
