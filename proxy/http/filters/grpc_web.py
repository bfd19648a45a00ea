"""`envoy.filters.http.grpc_web`: a browser's gRPC-Web call (HTTP/1.1 or HTTP/2) becomes a
gRPC call upstream, and the gRPC answer a gRPC-Web one, as Envoy 1.40's GrpcWebFilter does
(case `filter_grpc_web` compares the two byte for byte).

Request (content-type exactly application/grpc-web, -web+proto, -web-text or -web-text+proto):
content-length removed, content-type application/grpc, te: trailers, grpc-accept-encoding:
identity unless the client sent one; a -text body is base64-decoded as it streams
(proxy/grpc/web.py): a body that is not base64 gets Envoy's 400 local reply ("Bad gRPC-web
request, invalid base64 data.", details grpc_base_64_decode_failed[_bad_size]), which this
filter then answers as gRPC-Web like any other non-gRPC answer.

Response: content-type application/grpc-web+proto, or -web-text+proto when the request's
`accept` is exactly -web-text(+proto) (each gRPC message then base64 on its own);
content-length removed; the trailers become the body's last frame (flag 0x80) and no HTTP
trailers go out. A trailers-only answer keeps grpc-status/grpc-message in its headers. An
answer that is neither gRPC nor proto-encoded gRPC-Web (an upstream's 404 page, a local
reply) is held to its end: grpc-status from its HTTP status (httpToGrpcStatus), its body
(up to 16 KiB once buffered, Envoy's MAX_BUFFERED_PLAINTEXT_LENGTH) percent-encoded as
grpc-message, content-length: 0, the body dropped; a headers-only one passes as it is.

Stats: `cluster.<cluster>.grpc-web.<service>.<method>.{<grpc-status>,success|failure,total}`
from a grpc-status in the response headers or trailers, when the route has a cluster and the
path is `/<service>/<method>` (Envoy's gRPC context, Protocol::GrpcWeb).

Config `envoy.extensions.filters.http.grpc_web.v3.GrpcWeb` has no fields.
One deliberate difference: a -text answer whose stream ends inside a gRPC message ends there
(Envoy leaves such a stream hanging, its filter stopped with nothing to release).
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message
from ...config.registry import Extension, register
from ...grpc.names import request_names
from ...grpc.unary import http_to_grpc_status
from ...grpc.web import (GRPC_WEB_PROTO, GRPC_WEB_TEXT_PROTO, REQUEST_TYPES, TEXT_TYPES,
                         BadBase64, TextRequestDecoder, TextResponseEncoder, percent_encode,
                         trailer_frame)
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter

__all__ = ["GrpcWeb", "parse_grpc_web"]

NAME = "envoy.filters.http.grpc_web"
PROTO = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"

# Envoy's MAX_BUFFERED_PLAINTEXT_LENGTH: the most of a buffered non-gRPC body that becomes
# grpc-message (a header: an upstream's large error page must not make a huge one).
MAX_BUFFERED_PLAINTEXT = 16384
BAD_REQUEST_BODY = b"Bad gRPC-web request, invalid base64 data."

_NO_BUFFER = FilterDataStatus.STOP_ITERATION_NO_BUFFER
_BUFFER = FilterDataStatus.STOP_ITERATION_AND_BUFFER


@dataclass(frozen=True, slots=True)
class GrpcWeb:
    pass


GRPC_WEB = Message(PROTO, title="HTTP filter grpc_web", model=GrpcWeb, fields=())


def parse_grpc_web(raw: Mapping[str, Any], path: str) -> GrpcWeb:
    GRPC_WEB.read(raw, path)
    return GrpcWeb()


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


def _is_proto_grpc_web_response(head) -> bool:
    """Envoy's isProtoEncodedGrpcWebResponseHeaders: 200 and grpc-web(+proto), any case,
    parameters ignored."""
    if head.status != 200:
        return False
    ctype = head.headers.get(b"content-type")
    if ctype is None:
        return False
    media = ctype.split(b";", 1)[0].rstrip().lower()
    return media == GRPC_WEB_PROTO or media == b"application/grpc-web"


class GrpcWebFactory:
    def __init__(self, config: GrpcWeb, name: str) -> None:
        self.name = name

    def for_worker(self, ctx) -> WorkerGrpcWeb:
        return WorkerGrpcWeb(self, ctx)


class WorkerGrpcWeb:
    """Per worker: the filter's name and the worker's stats store (counters cached by name)."""

    decoder = True
    encoder = True

    def __init__(self, factory: GrpcWebFactory, ctx) -> None:
        self.name = factory.name
        self.stats = ctx.worker.stats
        self.counters: dict[str, Any] = {}

    def add(self, name: str) -> None:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = self.stats.counter(name)
        c.value += 1

    def create(self, callbacks) -> GrpcWebFilter:
        return GrpcWebFilter(callbacks, self)


class GrpcWebFilter(PassThroughFilter):
    """One stream's conversion. `web` says the request is gRPC-Web (nothing else happens
    otherwise); `transform` that the answer is held to become grpc-status/grpc-message."""

    __slots__ = ("cb", "wf", "web", "text_in", "text_out", "stat_prefix", "transform", "head")

    def __init__(self, callbacks, wf: WorkerGrpcWeb) -> None:
        self.cb = callbacks
        self.wf = wf
        self.web = False
        self.text_in: TextRequestDecoder | None = None
        self.text_out: TextResponseEncoder | None = None
        self.stat_prefix: str | None = None
        self.transform = False
        self.head = None

    # -- request ----------------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        headers = head.headers
        ctype = headers.get(b"content-type")
        if ctype not in REQUEST_TYPES or not head.path:
            return FilterHeadersStatus.CONTINUE
        self.web = True
        headers.remove(b"content-length")  # (the HTTP/1.1 body's size, not the HTTP/2 DATA's)
        self._setup_stats(head)
        if ctype in TEXT_TYPES:
            self.text_in = TextRequestDecoder()
        headers.set(b"content-type", b"application/grpc")
        if headers.get(b"accept") in TEXT_TYPES:
            self.text_out = TextResponseEncoder()
        headers.set(b"te", b"trailers")
        if not headers.has(b"grpc-accept-encoding"):
            headers.add(b"grpc-accept-encoding", b"identity")
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool):
        decoder = self.text_in
        if decoder is None:
            return FilterDataStatus.CONTINUE
        try:
            decoded = decoder.feed(data, end_stream)
        except BadBase64 as e:
            self.cb.send_local_reply(400, BAD_REQUEST_BODY, None, e.details)
            return _NO_BUFFER
        if decoded is None:
            return _NO_BUFFER
        return decoded

    # -- response ---------------------------------------------------------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        if not self.web:
            return FilterHeadersStatus.CONTINUE
        headers = head.headers
        self._charge(headers.get(b"grpc-status"))
        self.transform = not _is_grpc_response(head, end_stream) and not _is_proto_grpc_web_response(head)
        headers.remove(b"content-length")
        headers.set(b"content-type", GRPC_WEB_TEXT_PROTO if self.text_out is not None else GRPC_WEB_PROTO)
        if end_stream or not self.transform:
            return FilterHeadersStatus.CONTINUE
        self.head = head
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool):
        if not self.web:
            return FilterDataStatus.CONTINUE
        if self.transform:
            if not end_stream:
                held = self.cb.encoding_buffer()
                if held is not None and len(held) >= MAX_BUFFERED_PLAINTEXT:
                    return _NO_BUFFER  # (what is past the limit would be cut anyway)
                return _BUFFER
            self.transform = False
            self._set_status_headers(data)
            return b""
        encoder = self.text_out
        if encoder is None:
            return FilterDataStatus.CONTINUE
        out = encoder.feed(data)
        if out is None:
            return b"" if end_stream else _NO_BUFFER
        return out

    def encode_trailers(self, trailers):
        if not self.web:
            return 0
        for name, value in trailers:
            if name == b"grpc-status":
                self._charge(value)
                break
        if self.transform:
            self.transform = False
            self._set_status_headers(None)
            return 0
        frame = trailer_frame(trailers)
        del trailers[:]  # (they go in the body; none go out as trailers)
        if self.text_out is not None:
            return binascii.b2a_base64(frame, newline=False)
        return frame

    def _set_status_headers(self, last: bytes | None) -> None:
        """The held non-gRPC answer's headers: grpc-message from its body (the buffered part
        capped at 16 KiB; a last chunk alone whole), grpc-status from its HTTP status."""
        held = self.cb.encoding_buffer()
        if held:
            body = bytes(held) + (last or b"")
            body = body[:MAX_BUFFERED_PLAINTEXT]
            del held[:]
        else:
            body = last or b""
        head = self.head
        headers = head.headers
        headers.set(b"grpc-message", percent_encode(body))
        headers.set(b"grpc-status", b"%d" % http_to_grpc_status(head.status))
        headers.set(b"content-length", b"0")

    # -- stats ------------------------------------------------------------------------------------
    def _setup_stats(self, head) -> None:
        route = self.cb.route()
        action = route.action if route is not None else None
        cluster = getattr(action, "cluster", None) if action is not None else None
        names = request_names(head.path)
        if cluster and names is not None:
            self.stat_prefix = f"cluster.{cluster}.grpc-web.{names[0]}.{names[1]}."

    def _charge(self, status: bytes | None) -> None:
        prefix = self.stat_prefix
        if prefix is None or status is None:
            return
        wf = self.wf
        wf.add(prefix + status.decode("latin-1"))
        wf.add(prefix + ("success" if status == b"0" else "failure"))
        wf.add(prefix + "total")


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_grpc_web,
    factory=GrpcWebFactory,
    empty_config_ok=True,
))
