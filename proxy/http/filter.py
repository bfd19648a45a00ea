"""The HTTP filter seam: what an HTTP filter is, what it returns, and what it may call.

Envoy's `Http::StreamDecoderFilter` / `StreamEncoderFilter` in Python's idiom:
- A *decoder* filter sees the request (`decode_headers`, `decode_data`, `decode_trailers`),
  in the order of `http_filters`; an *encoder* filter sees the response (`encode_1xx_headers`,
  `encode_headers`, `encode_data`, `encode_trailers`) in the reverse order; a *dual* filter
  is both. The router is the terminal decoder filter: the last one, whose statuses are ignored.
- Each call returns a status saying whether the chain goes on (`CONTINUE`) or stops at this
  filter until it calls `continue_decoding()` / `continue_encoding()` (from a timer or
  another event on the same worker). The meanings are Envoy's (filter.h):
    * headers: STOP_ITERATION stops the headers here but data and trailers still reach this
      filter (a CONTINUE from its `decode_data` resumes everything); STOP_ALL_ITERATION_AND_BUFFER
      holds the headers, data and trailers (the manager buffers them, up to the buffer limit:
      413 for a request, 500 for a response); ..._AND_WATERMARK buffers and pauses the peer
      above the limit instead.
    * data: STOP_ITERATION_AND_BUFFER keeps the data for the next filter (released on CONTINUE
      or `continue_*`), ..._AND_WATERMARK the same under flow control, STOP_ITERATION_NO_BUFFER
      means the filter took the data.
    * trailers: STOP_ITERATION holds them until `continue_*`.
- `create(callbacks)` on a filter's per-worker factory makes one filter per stream; the
  callbacks object (`FilterCallbacks`) is the stream's filter manager.

Thread affinity: a filter and its callbacks belong to the worker that owns the stream; a
filter never blocks and never touches another worker's objects. Re-entrancy: a filter may call
`send_local_reply` or `encode_*` from inside `decode_*`; after a local reply the decoder
chain stops (no later decoder filter sees the request).
Must not: do socket I/O (filters reach the network only through the router).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["FilterHeadersStatus", "FilterDataStatus", "FilterTrailersStatus",
           "DecoderFilter", "EncoderFilter", "FilterCallbacks", "FilterFactory",
           "WorkerFilterFactory", "PassThroughFilter"]


class FilterHeadersStatus:
    """Return values of `decode_headers` / `encode_headers` (plain ints: compared per call)."""
    CONTINUE = 0
    STOP_ITERATION = 1
    STOP_ALL_ITERATION_AND_BUFFER = 2
    STOP_ALL_ITERATION_AND_WATERMARK = 3


class FilterDataStatus:
    """What decode_data/encode_data return. A transforming filter (a compressor) may return
    bytes instead: CONTINUE, with those bytes in place of the data it was given. And
    decode_trailers/encode_trailers may return bytes: data the filter emits ahead of the
    trailers (a compressor's last block), then the trailers CONTINUE."""
    CONTINUE = 0
    STOP_ITERATION_AND_BUFFER = 1
    STOP_ITERATION_AND_WATERMARK = 2
    STOP_ITERATION_NO_BUFFER = 3


class FilterTrailersStatus:
    CONTINUE = 0
    STOP_ITERATION = 1


class DecoderFilter(Protocol):
    """Sees the request. `head` is the stream's RequestHead (mutable: a filter may change it,
    then call `clear_route_cache()` if routing should see the change)."""

    def decode_headers(self, head: Any, end_stream: bool) -> int: ...
    def decode_data(self, data: bytes, end_stream: bool) -> int: ...
    def decode_trailers(self, trailers: list[tuple[bytes, bytes]]) -> int: ...
    def on_destroy(self) -> None: ...


class EncoderFilter(Protocol):
    """Sees the response (local replies too). `head` is a ResponseHead."""

    def encode_headers(self, head: Any, end_stream: bool) -> int: ...
    def encode_data(self, data: bytes, end_stream: bool) -> int: ...
    def encode_trailers(self, trailers: list[tuple[bytes, bytes]]) -> int: ...
    def on_destroy(self) -> None: ...


class FilterCallbacks(Protocol):
    """What a filter may ask of its stream (Envoy's StreamDecoderFilterCallbacks and
    StreamEncoderFilterCallbacks in one: the stream's filter manager implements it)."""

    stream_info: Any          # the stream's StreamInfo (response flags, timings, addresses)
    request_head: Any         # RequestHead
    dispatcher: Any           # the worker's Dispatcher (timers: create_timer, call_later)

    def continue_decoding(self) -> None: ...
    def continue_encoding(self) -> None: ...
    def send_local_reply(self, status: int, body: bytes, flag: str | None, details: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None: ...
    def route(self) -> Any: ...                       # the cached Route, or None
    def clear_route_cache(self) -> None: ...
    def route_cluster(self, action: Any) -> str | None: ...  # the route's cluster, picked once
    def note_request_grpc(self) -> None: ...          # before changing request headers (below)
    def per_filter_config(self, name: str) -> Any: ...  # most specific typed_per_filter_config
    def all_per_filter_configs(self, name: str) -> tuple: ...  # every level's, most specific first
    def http_call(self, cluster: str, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                  body: bytes, timeout: float, on_response: Any,
                  authority: bytes | None = None) -> Any: ...  # an AsyncRequest (cancel())
    def decoding_buffer(self) -> bytearray | None: ...
    def set_decoder_buffer_limit(self, limit: int) -> None: ...  # the stream's buffer limit
    def add_decoded_data(self, data: bytes) -> None: ...
    def encoding_buffer(self) -> bytearray | None: ...
    def add_encoded_data(self, data: bytes) -> None: ...
    def pass_encoded_body(self) -> None: ...         # this response's body is not this filter's
    # For a decoder filter that answers (the router): the response goes through the encoders.
    def encode_headers(self, head: Any, end_stream: bool, body: bytes | None = None) -> None: ...
    def encode_data(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None: ...


class WorkerFilterFactory(Protocol):
    """Per worker: makes one filter per stream, always of the same class (the filter manager
    learns from the first which calls the filters leave to PassThroughFilter, and skips those:
    filter_chain_plan.py). `decoder`/`encoder` say which sides the filters take part in."""

    name: str                 # the name in http_filters (typed_per_filter_config's key)
    decoder: bool
    encoder: bool

    def create(self, callbacks: FilterCallbacks) -> Any: ...


class FilterFactory(Protocol):
    """Made once per HCM config on the main thread from the filter's parsed config
    (immutable, shared by workers); `for_worker` resolves per-worker state (stats)."""

    def for_worker(self, hcm_context: Any) -> WorkerFilterFactory: ...


class PassThroughFilter:
    """A base for filters that act on some calls only: every call CONTINUEs, and
    `on_destroy` does nothing. (Statuses are all 0 for CONTINUE.)

    A decoder filter class that never changes the request's content-type says so with
    `keeps_request_content_type = True`: in a chain of such filters the stream does not note
    per request whether the request arrived as gRPC (filter_chain_plan.py). Without it (a
    filter that may rewrite request headers: Lua, ext_authz, grpc_web, ...) it does. A filter
    that says so but adds configured or learnt request headers on a rare path (local ratelimit
    not enforced, the ratelimit service's headers) calls `note_request_grpc()` first."""

    __slots__ = ()

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        return 0

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        return 0

    def decode_trailers(self, trailers: list[tuple[bytes, bytes]]) -> int:
        return 0

    def encode_headers(self, head: Any, end_stream: bool) -> int:
        return 0

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        return 0

    def encode_trailers(self, trailers: list[tuple[bytes, bytes]]) -> int:
        return 0

    def on_destroy(self) -> None:
        pass
