"""`envoy.filters.http.grpc_json_transcoder`: a REST/JSON request whose method and path match a
google.api.http rule of the configured services becomes a gRPC call upstream, and its answer
JSON again, as Envoy 1.40's JsonTranscoderFilter does (case `filter_grpc_json_transcoder`).

Request: path variables, query parameters (dotted field paths; repeated fields by repeating
the parameter) and the JSON body (`body: "*"` the whole message, or one field) make the
request message (proxy/grpc/json_transcoding.py); the request goes upstream as POST
`/<package>.<Service>/<Method>`, content-type application/grpc, te: trailers, one gRPC message,
with x-envoy-original-path; the route is chosen again for the new path unless
`match_incoming_request_route`. A request no rule maps (another path or method, a gRPC
request, a query parameter naming no field unless `ignore_unknown_query_parameters`) passes
through untouched. A value that does not fit its field is a 400 with the reason, details
`[early_]grpc_json_transcode_failure{INVALID_ARGUMENT}`.

Response: a unary call's answer is held to its end: 200 (or the HTTP status of a failed call's
grpc-status, Grpc::Utility::grpcToHttpStatus), application/json, the reply message as JSON
(`print_options`), grpc-status and grpc-message in the headers, a content-length. A server
streaming call's answer streams as a JSON array. A trailers-only answer keeps its headers
(the status mapped; a streaming one gets `[]`). A non-gRPC answer (a local reply, an
upstream's error page) passes untouched.

A route's typed_per_filter_config (a whole GrpcJsonTranscoder) replaces the filter's config
for its requests, as in Envoy.

Refused (not built): per-method google.api.HttpBody, client streaming methods, `response_body`,
`convert_grpc_status`, `request_validation_options`, the body size limits,
`capture_unknown_query_parameters`, `case_insensitive_enum_parsing`,
`query_param_unescape_plus`, `match_unregistered_custom_verb`, a `url_unescape_spec` other than
its default, `print_options.stream_*`. The error text of a body that is not valid JSON (or not
the message's JSON) is protobuf's Python json_format's, not Envoy's C++ parser's.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...grpc.transcoding_types import NotMapped, PrintOptions, SetupError, TranscodeError
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter
from ..local_reply import is_grpc_request

__all__ = ["GrpcJsonTranscoderConfig", "parse_grpc_json_transcoder"]

NAME = "envoy.filters.http.grpc_json_transcoder"
PROTO = "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
_NO_BUFFER = FilterDataStatus.STOP_ITERATION_NO_BUFFER
log = logging.getLogger(__name__)

# Grpc::Utility::grpcToHttpStatus
_GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
                 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


@dataclass(frozen=True, slots=True)
class GrpcJsonTranscoderConfig:
    transcoding: Any   # proxy.grpc.json_transcoding.Transcoding
    match_incoming_request_route: bool = False


TRANSCODER = Message(PROTO, title="HTTP filter grpc_json_transcoder", model=GrpcJsonTranscoderConfig, fields=(
    used("proto_descriptor", attr="transcoding", why="a FileDescriptorSet file"),
    used("proto_descriptor_bin", attr="transcoding", why="a FileDescriptorSet, base64 in JSON/YAML"),
    used("services", attr="transcoding"),
    used("print_options", attr="transcoding"),
    used("match_incoming_request_route", False),
    used("ignored_query_parameters", attr="transcoding"),
    used("auto_mapping", False, attr="transcoding"),
    used("ignore_unknown_query_parameters", False, attr="transcoding"),
    refused("convert_grpc_status", "google.rpc.Status bodies", default=False, only_default=True),
    refused("url_unescape_spec", "only ALL_CHARACTERS_EXCEPT_RESERVED",
            default="ALL_CHARACTERS_EXCEPT_RESERVED", only_default=True),
    refused("query_param_unescape_plus", default=False, only_default=True),
    refused("match_unregistered_custom_verb", default=False, only_default=True),
    refused("request_validation_options", "request validation"),
    refused("case_insensitive_enum_parsing", default=False, only_default=True),
    refused("max_request_body_size", "body size limits (the connection's buffer limit applies)"),
    refused("max_response_body_size", "body size limits (the connection's buffer limit applies)"),
    refused("capture_unknown_query_parameters", default=False, only_default=True),
))
PRINT = Message(f"{PROTO}.PrintOptions", fields=(
    used("add_whitespace", False, attr="transcoding"),
    used("always_print_primitive_fields", False, attr="transcoding"),
    used("always_print_enums_as_ints", False, attr="transcoding"),
    used("preserve_proto_field_names", False, attr="transcoding"),
    refused("stream_newline_delimited", default=False, only_default=True),
    refused("stream_sse_style_delimited", default=False, only_default=True),
))


def _descriptor(f, path: str) -> bytes:
    which = f.oneof("proto_descriptor", "proto_descriptor_bin", required=True)
    if which == "proto_descriptor":
        name = f.str("proto_descriptor")
        try:
            with open(name, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise ConfigError(f.at(which), f"cannot read {name}: {e.strerror}") from None
    raw = f.value("proto_descriptor_bin")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if not isinstance(raw, str):
        raise ConfigError(f.at(which), "expected base64 bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise ConfigError(f.at(which), "not base64") from None


def parse_grpc_json_transcoder(raw: Mapping[str, Any], path: str) -> GrpcJsonTranscoderConfig:
    f = TRANSCODER.read(raw, path)
    for name in ("convert_grpc_status", "query_param_unescape_plus", "match_unregistered_custom_verb",
                 "case_insensitive_enum_parsing", "capture_unknown_query_parameters"):
        TRANSCODER.require_default(f, name, f.bool(name, False))
    TRANSCODER.require_default(f, "url_unescape_spec", f.str("url_unescape_spec", "ALL_CHARACTERS_EXCEPT_RESERVED"))
    options = PrintOptions()
    if f.has("print_options"):
        p = PRINT.read(f.value("print_options"), f.at("print_options"))
        for name in ("stream_newline_delimited", "stream_sse_style_delimited"):
            PRINT.require_default(p, name, p.bool(name, False))
        options = PrintOptions(p.bool("add_whitespace", False), p.bool("always_print_primitive_fields", False),
                               p.bool("always_print_enums_as_ints", False),
                               p.bool("preserve_proto_field_names", False))
    descriptor = _descriptor(f, path)
    from ...grpc.json_transcoding import Transcoding  # (protobuf: only when a config uses it)
    try:
        transcoding = Transcoding(descriptor, f.strs("services"), f.bool("auto_mapping", False),
                                  frozenset(f.strs("ignored_query_parameters")),
                                  f.bool("ignore_unknown_query_parameters", False), options)
    except SetupError as e:
        raise ConfigError(path, f"transcoding_filter: {e}") from None
    return GrpcJsonTranscoderConfig(transcoding, f.bool("match_incoming_request_route", False))


class _Frames:
    """gRPC messages out of a byte stream cut anywhere (length-prefixed, 5-byte header)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        out, i, n = [], 0, len(buf)
        while n - i >= 5:
            end = i + 5 + int.from_bytes(buf[i + 1:i + 5], "big")
            if end > n:
                break
            out.append(buf[i + 5:end])
            i = end
        self.buf = buf[i:]
        return out


def _grpc_status(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


class TranscoderFactory:
    def __init__(self, config: GrpcJsonTranscoderConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerTranscoder:
        return WorkerTranscoder(self)


class WorkerTranscoder:
    decoder = True
    encoder = True

    def __init__(self, factory: TranscoderFactory) -> None:
        self.name = factory.name
        self.config = factory.config

    def create(self, callbacks) -> TranscoderFilter:
        return TranscoderFilter(callbacks, self.config, self.name)


class TranscoderFilter(PassThroughFilter):
    """One stream. `mapped` is set once the request is transcoded; `passing` once the answer
    turned out not to be gRPC (it then goes on untouched)."""

    __slots__ = ("cb", "config", "name", "mapped", "body", "frames", "head", "out", "passing", "started")

    def __init__(self, callbacks, config: GrpcJsonTranscoderConfig, name: str) -> None:
        self.cb = callbacks
        self.config = config
        self.name = name
        self.mapped = None
        self.body: bytearray | None = None
        self.frames: _Frames | None = None
        self.head = None
        self.out = bytearray()    # the JSON answer of a unary call, as it is made
        self.passing = False
        self.started = False      # a streaming answer's "[" went out

    # -- request --------------------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        headers = head.headers
        if is_grpc_request(headers):
            return FilterHeadersStatus.CONTINUE
        route_config = self.cb.per_filter_config(self.name)
        if route_config is not None:  # (the route's own config replaces the filter's)
            self.config = route_config
        try:
            mapped = self.config.transcoding.lookup(head.method, head.path)
        except NotMapped:
            return FilterHeadersStatus.CONTINUE
        self.mapped = mapped
        if self.config.match_incoming_request_route:
            self.cb.route()  # (chosen for the path as it came, as Envoy chose it before filters)
        headers.remove(b"content-length")
        headers.set(b"content-type", b"application/grpc")
        headers.set(b"x-envoy-original-path", head.path)
        headers.add(b"x-envoy-original-method", head.method)
        head.set_path(mapped.method.grpc_path)
        head.method = b"POST"
        headers.set(b"te", b"trailers")
        if not self.config.match_incoming_request_route:
            self.cb.clear_route_cache()
        if end_stream:
            frame = self._request_frame(b"", early=True)
            if frame is not None:
                self.cb.add_decoded_data(frame)
            return FilterHeadersStatus.CONTINUE
        self.body = bytearray()
        return FilterHeadersStatus.CONTINUE

    def _request_frame(self, body: bytes, early: bool) -> bytes | None:
        try:
            message = self.config.transcoding.request_message(self.mapped, body)
        except TranscodeError as e:
            prefix = "early_grpc_json_transcode_failure" if early else "grpc_json_transcode_failure"
            self.cb.send_local_reply(400, e.message.encode(), None, f"{prefix}{{{e.code}}}")
            return None
        return b"\x00" + len(message).to_bytes(4, "big") + message

    def decode_data(self, data: bytes, end_stream: bool):
        body = self.body
        if body is None:
            return FilterDataStatus.CONTINUE
        body += data
        if not end_stream:
            if len(body) > self.cb.buffer_limit():
                self.body = None
                self.cb.send_local_reply(413, b"Payload Too Large", None, "request_payload_too_large")
            return _NO_BUFFER
        self.body = None
        frame = self._request_frame(bytes(body), early=False)
        return _NO_BUFFER if frame is None else frame

    def decode_trailers(self, trailers):
        if self.body is not None:  # (the body ends with the trailers)
            body, self.body = self.body, None
            frame = self._request_frame(bytes(body), early=False)
            del trailers[:]
            return frame if frame is not None else 0
        return 0

    # -- response -------------------------------------------------------------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        mapped = self.mapped
        if mapped is None:
            return FilterHeadersStatus.CONTINUE
        headers = head.headers
        if not _is_grpc_response(head, end_stream):
            self.passing = True
            return FilterHeadersStatus.CONTINUE
        streaming = mapped.method.server_streaming
        if end_stream:  # trailers-only
            status = _grpc_status(headers.get(b"grpc-status"))
            head.status = 503 if status is None else _GRPC_TO_HTTP.get(status, 500)
            if streaming:
                headers.set(b"content-type", b"application/json")
                headers.remove(b"content-length")
                self.cb.add_encoded_data(b"[]")
            else:
                headers.set(b"content-length", b"0")
            return FilterHeadersStatus.CONTINUE
        headers.set(b"content-type", b"application/json")
        headers.remove(b"content-length")
        self.frames = _Frames()
        if streaming:
            return FilterHeadersStatus.CONTINUE
        self.head = head
        return FilterHeadersStatus.STOP_ITERATION

    def _json(self, data: bytes) -> bytes:
        method = self.mapped.method
        parts = []
        for message in self.frames.feed(data):
            try:
                text = self.config.transcoding.response_json(method, message)
            except Exception as e:  # (a compressed or foreign message: the upstream's fault)
                log.warning("grpc_json_transcoder: %s: reply message not readable: %s",
                            method.grpc_path.decode(), e)
                continue
            if method.server_streaming:
                parts.append((b"," if self.started else b"[") + text)
                self.started = True
            else:
                parts.append(text)
        return b"".join(parts)

    def encode_data(self, data: bytes, end_stream: bool):
        if self.mapped is None or self.passing or self.frames is None:
            return FilterDataStatus.CONTINUE
        text = self._json(data)
        if self.mapped.method.server_streaming:
            if end_stream:
                text += b"]" if self.started else b"[]"
            return text if text or end_stream else _NO_BUFFER
        self.out += text
        if end_stream:  # (no trailers: the answer goes as it is)
            out, self.out = bytes(self.out), bytearray()
            return out
        return _NO_BUFFER

    def encode_trailers(self, trailers):
        if self.mapped is None or self.passing or self.frames is None:
            return 0
        if self.mapped.method.server_streaming:
            return b"]" if self.started else b"[]"
        head = self.head
        headers = head.headers
        status = None
        message = None
        for name, value in trailers:
            if name == b"grpc-status" and status is None:
                status = _grpc_status(value)
            elif name == b"grpc-message" and message is None:
                message = value
        if status is None:
            head.status = 503
        else:
            head.status = _GRPC_TO_HTTP.get(status, 500)
            headers.set(b"grpc-status", b"%d" % status)
        if message is not None:
            headers.set(b"grpc-message", message)
        out = bytes(self.out)
        self.out = bytearray()
        headers.set(b"content-length", b"%d" % len(out))
        return out


def _is_grpc_response(head, end_stream: bool) -> bool:
    """Grpc::Common::isGrpcResponseHeaders."""
    headers = head.headers
    if end_stream:
        return headers.has(b"grpc-status")
    if head.status != 200:
        return False
    ctype = headers.get(b"content-type")
    return (ctype is not None and ctype.startswith(b"application/grpc")
            and (len(ctype) == 16 or ctype[16:17] in (b"+", b";")))


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_grpc_json_transcoder,
    factory=TranscoderFactory,
    per_route_proto=PROTO,
    parse_per_route=parse_grpc_json_transcoder,
))
