"""The HCM's `local_reply_config` (http_connection_manager.v3.LocalReplyConfig): how the proxy
rewrites the replies it makes itself, compiled once per HCM config.

Job: parse `mappers` (each an access-log `filter`, an optional `status_code`, `body` (a
DataSource, read at load), `body_format_override` (a SubstitutionFormatString) and
`headers_to_add`) and `body_format`, and `prepare` one local reply as Envoy 1.40's
LocalReplyImpl::rewrite and Utility::prepareLocalReply do:
- the reply's code is the stream's response code before any mapper runs (status filters see
  it; %RESPONSE_CODE% and access logs show the mapped code);
- the mappers are tried in order; the first whose filter passes applies its body, then its
  headers_to_add, then its status code, and its body format; the others are not tried;
- the body format (the mapper's, else `body_format`, else the body as it is) renders the reply
  with %LOCAL_REPLY_BODY% standing for the (mapped) body; JSON keys come out sorted, as Envoy's
  (a protobuf Struct's);
- the content-type: the format's `content_type`, else application/json for json_format, else
  text/plain; it replaces one the reply already had when the body changed, unless a mapper's
  headers_to_add set it; no body: no content-length, no content-type;
- to a gRPC request: HTTP 200, content-type application/grpc, grpc-status (unless a mapper set
  one: the filter's, else the mapped HTTP code's), the body as a percent-encoded grpc-message
  (a JSON body's trailing newline dropped), no content-length.
Direct responses and redirects are local replies in Envoy: they go through here too.

An HCM without `local_reply_config` has `local_reply = None`: nothing here runs for it.
Must not: do I/O after load (a `filename` body is read at load). Thread affinity: the
config is immutable and shared by every worker; `prepare` mutates only the stream it is given
(its response code) and the head it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.access_log.config import JSON_FORMAT_OPTIONS
from proxy.access_log.filters import LogFilter, parse_log_filter
from proxy.access_log.formatter import compile_format, compile_json_format
from proxy.config.data_source import read_data_source
from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError
from proxy.router.header_mutation import HeaderMutation, apply_mutations, parse_header_value_option

from .headers import Headers, ResponseHead
from .local_reply import grpc_reply_headers

__all__ = ["LocalReplyConfig", "ResponseMapper", "BodyFormat", "parse_local_reply_config",
           "FLAG_AFTER_REPLY"]

_P = "envoy.extensions.filters.network.http_connection_manager.v3"
TEXT = "text/plain"
JSON = "application/json"
# Replies whose filter sets its response flag only after sendLocalReply returned, so no
# mapper sees it (Envoy 1.40's local_ratelimit: the RL flag comes after the reply).
FLAG_AFTER_REPLY = frozenset({"local_rate_limited"})


class _ReplyInfo:
    """The stream's info as a local reply's mappers and formats read it: the reply's headers as
    the response headers (%RESP(...)%, grpc_status_filter) and the body for
    %LOCAL_REPLY_BODY%. Everything else is the stream's."""

    __slots__ = ("_info", "response_headers", "local_reply_body")

    def __init__(self, info: Any, response_headers: Headers) -> None:
        self._info = info
        self.response_headers = response_headers
        self.local_reply_body = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)


def _local_reply_body(info: Any) -> str:
    return info.local_reply_body


_EXTRA_OPS = MappingProxyType({"LOCAL_REPLY_BODY": _local_reply_body})


@dataclass(frozen=True, slots=True)
class BodyFormat:
    """A compiled SubstitutionFormatString for local reply bodies."""
    formatter: Any                  # TextFormatter | JsonFormatter
    content_type: str = TEXT
    json: bool = False              # json_format (a gRPC message drops its trailing newline)


@dataclass(frozen=True, slots=True)
class ResponseMapper:
    filter: LogFilter
    status_code: int | None = None
    body: bytes | None = None
    body_format: BodyFormat | None = None
    headers_to_add: tuple[HeaderMutation, ...] = ()


@dataclass(frozen=True, slots=True)
class LocalReplyConfig:
    mappers: tuple[ResponseMapper, ...] = ()
    body_format: BodyFormat | None = None   # None: the body as it is, text/plain

    def prepare(self, stream: Any, status: int, body: bytes,
                extra: list[tuple[bytes, bytes]] | None, grpc: bool,
                grpc_status: int | None, head_request: bool) -> tuple[ResponseHead, bytes]:
        """The reply's head and body (see the module doc). `extra`: headers the caller put on
        the reply before the rewrite (Envoy's modify_headers); sets the stream's
        response_code to the (mapped) code."""
        headers = Headers(list(extra) if extra else [])
        ctype_before = headers.get(b"content-type")
        info = _ReplyInfo(stream, headers)
        stream.response_code = code = status
        original = body
        fmt = None
        for m in self.mappers:
            if not m.filter.passes(info):
                continue
            if m.body is not None:
                body = m.body
            if m.headers_to_add:
                apply_mutations(m.headers_to_add, headers, info)
            if m.status_code is not None and m.status_code != code:
                stream.response_code = code = m.status_code
            fmt = m.body_format
            break
        if fmt is None:
            fmt = self.body_format
        content_type = TEXT
        if fmt is not None:
            info.local_reply_body = body.decode("utf-8", "replace")
            body = fmt.formatter.format(info).encode("utf-8")
            content_type = fmt.content_type
        custom_ctype = headers.get(b"content-type") != ctype_before
        if grpc:
            grpc_reply_headers(headers, code, body, grpc_status, head_request,
                               fmt is not None and fmt.json)
            return ResponseHead(200, headers), b""
        headers.remove(b"content-length")
        if body:
            headers.add(b"content-length", b"%d" % len(body))
            if headers.get(b"content-type") is None or (body != original and not custom_ctype):
                headers.remove(b"content-type")
                headers.add(b"content-type", content_type.encode("latin-1"))
        else:
            headers.remove(b"content-type")
        return ResponseHead(code, headers), body


# -- declared fields (proxy.config.fields_table) -------------------------------------------

LOCAL_REPLY = Message(f"{_P}.LocalReplyConfig", title="Local reply config", model=LocalReplyConfig,
                      fields=(
    used("mappers"),
    used("body_format"),
))

RESPONSE_MAPPER = Message(f"{_P}.ResponseMapper", model=ResponseMapper, fields=(
    used("filter"),
    used("status_code"),
    used("body"),
    used("body_format_override", attr="body_format"),
    used("headers_to_add"),
))

BODY_FORMAT = Message("envoy.config.core.v3.SubstitutionFormatString (local reply)", model=BodyFormat,
                      bookkeeping=("json",), fields=(
    used("text_format", attr="formatter"),
    used("json_format", attr="formatter"),
    used("text_format_source", attr="formatter"),
    used("omit_empty_values", False, attr="formatter"),
    used("content_type"),
    used("json_format_options", attr="formatter",
         why="sort_properties: keys come out sorted either way, as Envoy's local replies"),
    refused("formatters", "formatter extensions"),
))

BODY_SOURCE = Message("envoy.config.core.v3.DataSource (local reply body)", fields=(
    used("inline_string", attr="body"),
    used("inline_bytes", attr="body"),
    used("filename", attr="body", why="read at load"),
    used("environment_variable", attr="body", why="read at load"),
    refused("watched_directory", "the file is read once, at load"),
))

FORMAT_SOURCE = Message("envoy.config.core.v3.DataSource (local reply format)", fields=(
    used("inline_string", attr="formatter"),
    used("inline_bytes", attr="formatter"),
    used("filename", attr="formatter", why="read at load"),
    used("environment_variable", attr="formatter", why="read at load"),
    refused("watched_directory", "the file is read once, at load"),
))

def parse_body_format(raw: Any, path: str) -> BodyFormat:
    """A SubstitutionFormatString for local reply bodies (%LOCAL_REPLY_BODY% allowed)."""
    f = BODY_FORMAT.read(raw, path)
    omit = f.bool("omit_empty_values", False)
    content_type = f.str("content_type", "")
    if f.has("json_format_options"):
        JSON_FORMAT_OPTIONS.read(f.value("json_format_options"), f.at("json_format_options"))
    which = f.oneof("text_format", "json_format", "text_format_source", required=True)
    if which == "json_format":
        mapping = f.raw_obj("json_format")
        fmt = compile_json_format(mapping, f.at("json_format"), omit, sort_properties=True,
                                  extra_ops=_EXTRA_OPS, omit_only_unset=True)
        return BodyFormat(fmt, content_type or JSON, True)
    if f.has("json_format_options"):
        raise ConfigError(f.at("json_format_options"), "only applies to json_format")
    if which == "text_format":
        text, tpath = f.str("text_format"), f.at("text_format")
    else:
        tpath = f.at("text_format_source")
        data = read_data_source(FORMAT_SOURCE, f.value("text_format_source"), tpath)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(tpath, "not valid UTF-8 text") from None
    fmt = compile_format(text, tpath, omit_empty_values=omit, extra_ops=_EXTRA_OPS)
    return BodyFormat(fmt, content_type or TEXT, False)


def _parse_mapper(raw: Any, path: str) -> ResponseMapper:
    f = RESPONSE_MAPPER.read(raw, path)
    log_filter = parse_log_filter(f.value("filter", required=True), f.at("filter"))
    status = None
    if f.has("status_code"):
        status = f.int("status_code")
        if not 200 <= status < 600:
            raise ConfigError(f.at("status_code"), f"must be in [200, 600), got {status}")
    body = None
    if f.has("body"):
        body = read_data_source(BODY_SOURCE, f.value("body"), f.at("body"))
    fmt = (parse_body_format(f.value("body_format_override"), f.at("body_format_override"))
           if f.has("body_format_override") else None)
    adds = tuple(parse_header_value_option(item, p, allow_resp=True)
                 for item, p in f.list("headers_to_add"))
    if len(adds) > 1000:
        raise ConfigError(f.at("headers_to_add"), "at most 1000 entries")
    return ResponseMapper(log_filter, status, body, fmt, adds)


def parse_local_reply_config(raw: Any, path: str) -> LocalReplyConfig:
    """`local_reply_config` at `path`; ConfigError naming the field at fault."""
    f = LOCAL_REPLY.read(raw, path)
    mappers = tuple(_parse_mapper(item, p) for item, p in f.list("mappers"))
    fmt = (parse_body_format(f.value("body_format"), f.at("body_format"))
           if f.has("body_format") else None)
    return LocalReplyConfig(mappers, fmt)
