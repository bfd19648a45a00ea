"""`envoy.filters.http.buffer`: the whole request body is held before the request goes
upstream, as Envoy's buffer filter does.

Config `envoy.extensions.filters.http.buffer.v3.Buffer`: `max_request_bytes` (required, > 0).
Per route (`typed_per_filter_config`) `BufferPerRoute`: `disabled: true` (the filter passes
the request on as it comes), or `buffer` (another `Buffer`, whose limit applies there).

What Envoy 1.40 does, kept here:
- a headers-only request passes untouched (the per-route config is not even looked up);
- otherwise the filter sets the stream's buffer limit to `max_request_bytes` (Envoy's
  setDecoderBufferLimit: the stream's one limit, which the response side and the router's
  retry buffer then use too) and holds the headers and the data until the request ends;
  the filter manager answers a body past the limit with 413 `Payload Too Large`, details
  `request_payload_too_large`, no response flag, `http.<prefix>.downstream_rq_too_large`;
  a body of exactly the limit passes;
- a request without content-length (chunked) gets one: the length of the body it buffered,
  set when the body ends (its last data, or its trailers).
The filter has no stats of its own (Envoy 1.40 has none).

Must not: read from sockets or keep per-stream state beyond its filter object. Thread
affinity: config and factory are immutable and shared; a filter belongs to its stream's worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter

__all__ = ["BufferConfig", "BufferPerRoute", "parse_buffer", "parse_buffer_per_route"]

NAME = "envoy.filters.http.buffer"
PROTO = "envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class BufferConfig:
    max_request_bytes: int


@dataclass(frozen=True, slots=True)
class BufferPerRoute:
    disabled: bool = False
    buffer: BufferConfig | None = None


BUFFER = Message(PROTO, title="HTTP filter buffer", model=BufferConfig, fields=(
    used("max_request_bytes", why="required, > 0: the stream's buffer limit while it buffers"),
))

BUFFER_PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter buffer, per route", model=BufferPerRoute,
                           fields=(
    used("disabled", False, why="only true (the oneof's other choice is `buffer`)"),
    used("buffer", why="a Buffer whose max_request_bytes applies on this route"),
))


def parse_buffer(raw: Mapping[str, Any], path: str) -> BufferConfig:
    f = BUFFER.read(raw, path)
    limit = f.int("max_request_bytes", required=True, max=_UINT32_MAX)
    if limit <= 0:
        raise ConfigError(f.at("max_request_bytes"), f"value must be greater than 0, got {limit}")
    return BufferConfig(max_request_bytes=limit)


def parse_buffer_per_route(raw: Mapping[str, Any], path: str) -> BufferPerRoute:
    f = BUFFER_PER_ROUTE.read(raw, path)
    which = f.oneof("disabled", "buffer")
    if which is None:
        raise ConfigError(path, "one of disabled or buffer is required (the override oneof)")
    if which == "disabled":
        if f.bool("disabled") is not True:
            raise ConfigError(f.at("disabled"), "value must equal true")
        return BufferPerRoute(disabled=True)
    return BufferPerRoute(buffer=parse_buffer(f.raw_obj("buffer"), f.at("buffer")))


class BufferFactory:
    def __init__(self, config: BufferConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerBufferFactory:
        return WorkerBufferFactory(self)


class WorkerBufferFactory:
    decoder = True
    encoder = False

    def __init__(self, factory: BufferFactory) -> None:
        self.name = factory.name
        self.config = factory.config

    def create(self, callbacks) -> BufferFilter:
        return BufferFilter(callbacks, self)


class BufferFilter(PassThroughFilter):
    """Holds the request until its end. `head` is set while this filter buffers (Envoy's
    request_headers_: only then may a content-length be added)."""

    __slots__ = ("cb", "wf", "head", "length")

    def __init__(self, callbacks, wf: WorkerBufferFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.head = None
        self.length = 0

    def decode_headers(self, head, end_stream: bool) -> int:
        if end_stream:
            return FilterHeadersStatus.CONTINUE
        per_route = self.cb.per_filter_config(self.wf.name)
        config = self.wf.config
        if per_route is not None:
            if per_route.disabled:
                return FilterHeadersStatus.CONTINUE
            config = per_route.buffer
        self.cb.set_decoder_buffer_limit(config.max_request_bytes)
        self.head = head
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        self.length += len(data)
        if end_stream or self.head is None:
            self._add_content_length()
            return FilterDataStatus.CONTINUE
        # Held until the request ends, or the filter manager answers 413 past the limit.
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def decode_trailers(self, trailers) -> int:
        self._add_content_length()
        return 0

    def _add_content_length(self) -> None:
        head = self.head
        if head is not None and not head.headers.get(b"content-length"):
            head.headers.set(b"content-length", str(self.length).encode())


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_buffer,
    factory=BufferFactory,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_buffer_per_route,
))
