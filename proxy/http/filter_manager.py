"""FilterManager: runs one stream's HTTP filter chain (Envoy's FilterManager semantics).

Decoder filters see the request in `http_filters` order; the last one (the router) is the
terminal filter, whose statuses are ignored. Encoder filters see the response in the reverse
order, then the wire (`_write_headers/_write_data/_write_trailers`, which the stream that
inherits this class implements). Each direction stops at most at one filter at a time; what
arrives meanwhile waits there (`_Held`) until that filter says CONTINUE or calls
`continue_decoding()` / `continue_encoding()`. The statuses' meanings are in filter.py.

Local replies (`send_local_reply`) stop the decoder chain and go through every encoder
filter, so a filter that adds response headers (CORS) sees them too; once the response has
reached the wire a local reply becomes a stream reset instead.

Buffer limits (the connection's buffer limit, as Envoy's stream buffer limit): request data a
filter buffers beyond it gets 413 (or, for a ..._AND_WATERMARK status, pauses the downstream
instead); response data gets 500 while nothing went out yet, else a reset (or pauses the
upstream through the router's downstream-watermark callback).

The stream (stream.py) inherits this class: one object per request carries the stream, its
StreamInfo and its filter chain. This module keeps to the chain and knows nothing of codecs or
sockets. Thread affinity: the worker that owns the stream; filters call back on that thread.
"""

from __future__ import annotations

from typing import Any

from .filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus
from .filter_chain_plan import ChainPlans
from .async_client import AsyncRequest
from .local_reply import grpc_local_reply_head, is_grpc_request, local_reply_head
from .local_reply_config import FLAG_AFTER_REPLY
from .headers import Headers
from ..router.header_mutation import ResponseInfo, apply_mutations
from .stream_state import CLOSED, REQUEST_COMPLETE, RESPONSE_STARTED

__all__ = ["FilterManager"]

_STOP_ALL = FilterHeadersStatus.STOP_ALL_ITERATION_AND_BUFFER
_HEADERS_WATERMARK = FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK
_DATA_WATERMARK = FilterDataStatus.STOP_ITERATION_AND_WATERMARK
_NO_BUFFER = FilterDataStatus.STOP_ITERATION_NO_BUFFER
assert FilterTrailersStatus.CONTINUE == FilterDataStatus.CONTINUE == FilterHeadersStatus.CONTINUE == 0

_DECODE, _ENCODE = 0, 1
_FLOWING = (None, None)  # nothing held in either direction
_UNRESOLVED = object()   # the route cache is empty
_NAMES = (("decode_headers", "decode_data", "decode_trailers"),
          ("encode_headers", "encode_data", "encode_trailers"))


class _Held:
    """Where one direction's iteration stopped, and what waits at that filter."""

    __slots__ = ("at", "headers_pending", "headers_end", "stop_all", "watermark", "buffer",
                 "end_stream", "trailers", "paused")

    def __init__(self, at: int, headers_pending: bool, headers_end: bool, status: int) -> None:
        self.at = at
        self.headers_pending = headers_pending   # the headers have not passed this filter
        self.headers_end = headers_end           # ... and they ended the stream
        self.stop_all = headers_pending and status >= _STOP_ALL  # data/trailers wait, unseen
        self.watermark = status == (_HEADERS_WATERMARK if headers_pending else _DATA_WATERMARK)
        self.buffer: bytearray | None = None
        self.end_stream = False                  # the end of the stream waits here too
        self.trailers = None
        self.paused = False                      # we paused the peer (watermark)


class _WireSink:
    """The end of the encoder chain: the stream's wire writes, shaped as a filter. For a whole
    response handed over in one call (`encode_headers(head, True, body)`), the head waits here
    for its body so that both go out in one write, as they do without encoder filters."""

    __slots__ = ("stream", "whole", "head")

    def __init__(self, stream) -> None:
        self.stream = stream
        self.whole = False   # the response's body follows its head within the same call
        self.head = None

    def encode_headers(self, head, end_stream: bool) -> int:
        if self.whole and not end_stream:
            self.head = head
            return 0
        self.stream._write_headers(head, end_stream, None)
        return 0

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        head = self.head
        if head is not None:
            self.head = None
            if end_stream:
                self.stream._write_headers(head, True, data)
                return 0
            self.stream._write_headers(head, False, None)
        self.stream._write_data(data, end_stream)
        return 0

    def encode_trailers(self, trailers) -> int:
        self.stream._write_trailers(trailers)
        return 0


class FilterManager:
    """Mixin for the stream: the filter chain and the callbacks filters get (FilterCallbacks).

    The subclass provides `head`, `ctx` (route table, worker, `config.local_reply`), `state`
    (stream_state.py's flags), `abandon_request()`, `close_after_bad_request()`, `set_response_flag`,
    `response_code_details`, `buffer_limit()`, `read_disable_downstream(bool)`, `reset()` and
    the three `_write_*` methods."""

    __slots__ = ("chains", "held", "decoder_aborted", "encoding_started", "cached_route",
                 "picked_cluster", "filters", "response_head_pending", "grpc_request",
                 "headers_end_call", "body_added", "plan", "encode_body_left")

    def init_filters(self) -> None:
        self.chains = None            # (decoders, encoders + wire sink) once created
        self.held = _FLOWING          # _Held per direction, or None while flowing
        self.decoder_aborted = False  # a local reply ended the decode side
        self.encoding_started = False
        self.cached_route = _UNRESOLVED
        self.picked_cluster = None    # route_cluster()'s choice for the cached route
        self.filters = ()             # every filter instance, for on_destroy
        # Whether the request was gRPC as it arrived (Envoy's state_.is_grpc_request_, which
        # shapes local replies): None until filters that may change it see it (grpc_web
        # makes a gRPC-Web request application/grpc; its local replies stay plain HTTP).
        self.grpc_request = None
        # A filter adding a body while it sees a headers-only message (the gRPC-JSON
        # transcoder's GET turned into a gRPC call): the direction whose end-of-stream headers
        # are being passed, and the bytes added meanwhile.
        self.headers_end_call = None
        self.body_added = None
        self.plan = None              # the chain's ChainPlan (filter_chain_plan.py), if any

    def create_filter_chain(self, factories, plans: ChainPlans | None = None) -> None:
        """One filter per factory (HcmContext.filter_factories: (factory, disabled by default,
        switchable per route)) but those the route disables; a filter may decode, encode or
        both. As in Envoy the route is resolved first when a route may switch a filter.
        `plans` (the HcmContext's, per worker) keeps what the chain's shape is between
        streams; without it the shape is worked out for this stream alone."""
        if plans is None:
            plans = ChainPlans(factories)
        lone = plans.lone
        if lone is not None:
            # The usual chain, the router alone (decoder-only, never disabled): no lists.
            self.filters = (lone(self),)
            self.chains = (self.filters, ())
            return
        if not plans.switchable:
            filters = [create(self) for create in plans.creates]
            plan = plans.static
            if plan is None:
                plan = plans.static = plans.learn(plans.plain_factories, filters)
            elif plan.decoders_only:  # (decoder filters alone: no lists to build)
                self.plan = plan
                self.filters = filters
                self.chains = (filters, ())
                return
        else:
            made = []
            filters = []
            for factory, disabled, switchable in factories:
                if switchable and self._disabled_for_route(factory.name, disabled):
                    continue
                made.append(factory)
                filters.append(factory.create(self))
            made = tuple(made)
            plan = plans.plans.get(made)
            if plan is None:
                plan = plans.learn_switched(made, filters)
        self.plan = plan
        # Encoder filters yet to say this response's body is not theirs (pass_encoded_body).
        self.encode_body_left = plan.encode_body_filters
        decoders = filters if plan.all_decode else [filters[i] for i in plan.decode_idx]
        one = plan.encode_one
        if one is not None:  # (the usual: one encoder filter)
            encoders = [filters[one], _WireSink(self)]
        elif plan.encode_idx:
            encoders = [filters[i] for i in plan.encode_idx]
            encoders.append(_WireSink(self))
        else:
            encoders = ()
        self.filters = filters
        self.chains = (decoders, encoders)

    def note_request_grpc(self) -> None:
        """From a filter about to change the request's headers (a content-type among them,
        perhaps) that does not snapshot them otherwise (`keeps_request_content_type`): whether
        the request arrived as gRPC is noted now, for the shape of a later local reply."""
        if self.grpc_request is None:
            self.grpc_request = is_grpc_request(self.head.headers)

    def pass_encoded_body(self) -> None:
        """From an encoder filter, at most once per stream (at its encode_headers): its
        encode_data and encode_trailers would only CONTINUE this response unchanged. Once
        every encoder filter with such calls of its own said so, the body and trailers skip
        them (the filter may still be called, e.g. when another filter holds the response)."""
        self.encode_body_left -= 1

    def _disabled_for_route(self, name: str, default: bool) -> bool:
        route = self.route()
        entry = route.per_filter_config.get(name) if route is not None else None
        if entry is None or entry.disabled is None:
            return default
        return entry.disabled

    # -- FilterCallbacks: the stream as filters see it -----------------------------------------
    @property
    def stream_info(self):
        return self

    @property
    def request_head(self):
        return self.head

    @property
    def dispatcher(self):
        return self.ctx.worker.dispatcher

    def route(self):
        """The route for the request as it is now (cached until `clear_route_cache`)."""
        route = self.cached_route
        if route is _UNRESOLVED:
            route = self.cached_route = self.ctx.route_table.route(self.head)
        return route

    def clear_route_cache(self) -> None:
        self.cached_route = _UNRESOLVED
        self.picked_cluster = None

    def route_cluster(self, action) -> str | None:
        """The cluster of the cached route's `action` for this request. A weighted or
        header-named cluster is chosen once per route resolution, as Envoy picks it when it
        resolves the route, so every filter (the ratelimit filter's stats and
        destination_cluster) and the router see the same one."""
        name = action.cluster
        if name is None:
            name = self.picked_cluster
            if name is None:
                name = self.picked_cluster = action.choose_cluster(self.head, self.ctx.worker.rand_bits())
        return name

    def per_filter_config(self, name: str) -> Any:
        """The most specific `typed_per_filter_config` for filter `name` (route, then virtual
        host, then route configuration: merged at config load), or None."""
        route = self.route()
        if route is None:
            return None
        entry = route.per_filter_config.get(name)
        return None if entry is None else entry.config

    def all_per_filter_configs(self, name: str) -> tuple:
        """Every level's `typed_per_filter_config` for filter `name`, most specific first."""
        route = self.route()
        if route is None:
            return ()
        entry = route.per_filter_config.get(name)
        return () if entry is None else entry.all_configs

    def on_downstream_watermark(self, above: bool) -> None:
        """The downstream's write buffer crossed its high (True) or low (False) watermark, or
        an encoder buffer over the limit pauses: every decoder filter with an
        `on_downstream_watermark(above)` method (the router, which pauses its upstream) hears
        it (Envoy's DownstreamWatermarkCallbacks, found by the method instead of registered)."""
        chains = self.chains
        if chains is not None:
            for flt in chains[_DECODE]:
                watch = getattr(flt, "on_downstream_watermark", None)
                if watch is not None:
                    watch(above)

    def http_call(self, cluster: str, method: bytes, path: bytes, headers, body: bytes,
                  timeout: float, on_response, authority: bytes | None = None):
        """Send a whole request to `cluster` from this stream's worker (async_client.py);
        `on_response(AsyncResponse)` runs later on this worker. Returns the request: the
        filter cancels it (`cancel()`) if it goes away first."""
        req = AsyncRequest(self.ctx.worker, cluster, method, path,
                           authority if authority is not None else cluster.encode(),
                           headers, body, timeout, on_response)
        req.send()
        return req

    def decoding_buffer(self) -> bytearray | None:
        held = self.held[_DECODE]
        return None if held is None else held.buffer

    def add_decoded_data(self, data: bytes) -> None:
        """From a stopped decoder filter: add to what waits at it (Envoy's addDecodedData).
        From decode_headers of a headers-only request: the request gets this body (the
        headers go on without the end of the stream, the body follows with it)."""
        if self.headers_end_call == _DECODE:
            self.body_added = (self.body_added or b"") + bytes(data)
            return
        self._buffer(_DECODE, self._held_or_new(_DECODE), data)

    def encoding_buffer(self) -> bytearray | None:
        held = self.held[_ENCODE]
        return None if held is None else held.buffer

    def add_encoded_data(self, data: bytes) -> None:
        """As add_decoded_data, for the response."""
        if self.headers_end_call == _ENCODE:
            self.body_added = (self.body_added or b"") + bytes(data)
            return
        self._buffer(_ENCODE, self._held_or_new(_ENCODE), data)

    def _set_held(self, d: int, held: _Held | None) -> _Held | None:
        """(The pair is a shared tuple until something is held: no list per request.)"""
        pair = self.held
        if pair is _FLOWING:
            pair = self.held = [None, None]
        pair[d] = held
        return held

    def _held_or_new(self, d: int) -> _Held:
        held = self.held[d]
        if held is None:
            held = self._set_held(d, _Held(0, False, False, FilterDataStatus.STOP_ITERATION_AND_BUFFER))
        return held

    # -- decode path (the connection manager calls these) --------------------------------------
    def decode_headers(self, end_stream: bool) -> None:
        decoders = self.chains[_DECODE]
        if len(decoders) == 1:  # the terminal filter alone: nothing can stop before it
            decoders[0].decode_headers(self.head, end_stream)
            return
        if self.plan.grpc_snapshot:  # (a filter may change the content-type: note it now)
            self.grpc_request = is_grpc_request(self.head.headers)
        self._decode_headers_at(0, self.head, end_stream)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        decoders = self.chains[_DECODE]
        if len(decoders) == 1:
            decoders[0].decode_data(data, end_stream)
            return
        if self.plan.decode_data_passes and self.held[_DECODE] is None:
            # Every filter before the terminal one would CONTINUE and do nothing.
            if self.state < CLOSED and not self.decoder_aborted:
                decoders[-1].decode_data(data, end_stream)
            return
        self._data(_DECODE, 0, data, end_stream)

    def decode_trailers(self, trailers) -> None:
        decoders = self.chains[_DECODE]
        if len(decoders) > 1 and self.plan.decode_trailers_passes and self.held[_DECODE] is None:
            if self.state < CLOSED and not self.decoder_aborted:
                decoders[-1].decode_trailers(trailers)
            return
        self._trailers(_DECODE, 0, trailers)

    def continue_decoding(self) -> None:
        self._resume(_DECODE)

    # -- encode path (the router, or any decoder filter that answers, calls these) -------------
    def encode_headers(self, head, end_stream: bool, body: bytes | None = None) -> None:
        """A response head; with `body` (then `end_stream` is True) the whole response."""
        chains = self.chains
        if chains is None or not chains[_ENCODE]:
            if self.state < CLOSED:
                self._write_headers(head, end_stream, body)
            return
        if self.state >= CLOSED:
            return
        self.encoding_started = True  # (only encoder filters can hold a response back)
        self.response_head_pending = head
        if body:  # the whole response: its head, then its body with the end, in one write
            if self.held[_ENCODE] is None:
                self._encode_whole(chains[_ENCODE], head, body)
                return
            sink = chains[_ENCODE][-1]
            sink.whole = True
            if self.plan.encode_headers_passes and self.held[_ENCODE] is None:
                sink.encode_headers(head, False)  # (every encoder filter would CONTINUE)
            else:
                self._encode_headers_at(0, head, False)
            sink.whole = False
            if self.state < CLOSED:
                self.encode_data(body, True)
            if sink.head is not None and self.held[_ENCODE] is None and self.state < CLOSED:
                self._write_headers(sink.head, False, None)  # (the body went another way)
                sink.head = None
        elif self.plan.encode_headers_passes and self.held[_ENCODE] is None:
            self._write_headers(head, end_stream, None)  # (what the wire sink does here)
        else:
            self._encode_headers_at(0, head, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.state >= CLOSED:
            return
        chains = self.chains
        if chains is None or not chains[_ENCODE]:
            self._write_data(data, end_stream)
            return
        if (not self.encode_body_left or self.plan.encode_data_passes) and self.held[_ENCODE] is None:
            sink = chains[_ENCODE][-1]
            if sink.head is None:
                self._write_data(data, end_stream)  # (what the wire sink does then)
            else:
                sink.encode_data(data, end_stream)
            return
        self._data(_ENCODE, 0, data, end_stream)

    def encode_trailers(self, trailers) -> None:
        if self.state >= CLOSED:
            return
        chains = self.chains
        if chains is None or not chains[_ENCODE]:
            self._write_trailers(trailers)
            return
        if (not self.encode_body_left or self.plan.encode_trailers_passes) and self.held[_ENCODE] is None:
            chains[_ENCODE][-1].encode_trailers(trailers)
            return
        self._trailers(_ENCODE, 0, trailers)

    def continue_encoding(self) -> None:
        self._resume(_ENCODE)

    def encode_local(self, head, body: bytes) -> None:
        """A response the proxy made itself (local reply, direct response, redirect): its head,
        then its body unless the request was HEAD (Envoy sends the headers only, with the
        content-length of the body it would have sent). Without a body, headers only."""
        if not body:
            self.encode_headers(head, True)
        else:
            self.encode_headers(head, True, b"" if self.head.method == b"HEAD" else body)

    def send_local_reply(self, status: int, body: bytes, flag: str | None, details: str,
                         extra: list[tuple[bytes, bytes]] | None = None,
                         grpc_status: int | None = None) -> None:
        """Envoy's local reply (text/plain body; to a gRPC request a 200 carrying grpc-status,
        `grpc_status` or one mapped from `status`) through the encoder filters; a reset once
        the response reached the wire. The decoder chain stops here. With the HCM's
        local_reply_config its mappers and body format rewrite the reply
        (local_reply_config.py). The route's response header mutations (route, virtual host
        and route configuration levels) apply first, as Envoy 1.40 applies them to every
        local reply of a stream that has a route (a filter's denial, the router's 503/504)."""
        rewrite = self.ctx.config.local_reply
        if flag and (rewrite is None or details not in FLAG_AFTER_REPLY):
            self.set_response_flag(flag)
        self.response_code_details = details
        self.decoder_aborted = True
        if self.state & RESPONSE_STARTED:
            if flag:
                self.set_response_flag(flag)
            self.reset(details)
            return
        if not self.state & REQUEST_COMPLETE:
            # The rest of the request body will not be read (HTTP/1.1: the connection closes).
            self.abandon_request()
        if status == 400:
            self.close_after_bad_request()
        grpc = self.grpc_request
        if grpc is None:
            grpc = is_grpc_request(self.head.headers)
        route = self.cached_route
        if route is _UNRESOLVED and self.chains is not None:
            route = self.route()   # (Envoy resolved it before the filters ran)
        mutations = route.response_mutations if route is not None and route is not _UNRESOLVED else ()
        if mutations and (rewrite is not None or grpc):
            headers = Headers(list(extra) if extra else [])
            apply_mutations(mutations, headers, ResponseInfo(self, headers))
            extra = headers.items()
        if rewrite is not None:
            head, body = rewrite.prepare(self, status, body, extra, grpc, grpc_status,
                                         self.head.method == b"HEAD")
            if flag:
                self.set_response_flag(flag)
        elif grpc:
            head = grpc_local_reply_head(status, body, grpc_status, extra,
                                         self.head.method == b"HEAD")
            body = b""
        else:
            head = local_reply_head(status, body, extra)
            if mutations:
                apply_mutations(mutations, head.headers, ResponseInfo(self, head.headers))
        if self.encoding_started:
            # A response is inside the encoder chain (held by a filter) but not on the wire:
            # the local reply replaces it and goes straight out, as Envoy's direct reply.
            self._set_held(_ENCODE, None)
            self.chains = (self.chains[_DECODE], [])
        self.encode_local(head, body)

    # -- iteration ------------------------------------------------------------------------------
    def _headers(self, d: int, i: int, head, end_stream: bool) -> None:
        """The headers go through the filters of direction `d` from filter `i`. (One loop per
        direction: a method call by name costs less than `getattr` per filter.)"""
        if d == _DECODE:
            self._decode_headers_at(i, head, end_stream)
        else:
            self._encode_headers_at(i, head, end_stream)

    def _decode_headers_at(self, i: int, head, end_stream: bool) -> None:
        filters = self.chains[_DECODE]
        last = len(filters) - 1
        while i < last:
            if end_stream:
                self.headers_end_call = _DECODE
                status = filters[i].decode_headers(head, True)
                self.headers_end_call = None
                if self.body_added is not None:
                    self._headers_with_body(_DECODE, i, head, status)
                    return
            else:
                status = filters[i].decode_headers(head, False)
            if status or self.decoder_aborted or self.state >= CLOSED:
                if status and not self.decoder_aborted and self.state < CLOSED:
                    self._set_held(_DECODE, _Held(i, True, end_stream, status))
                return
            i += 1
        filters[last].decode_headers(head, end_stream)

    def _encode_headers_at(self, i: int, head, end_stream: bool) -> None:
        filters = self.chains[_ENCODE]
        last = len(filters) - 1
        while i < last:
            if end_stream:
                self.headers_end_call = _ENCODE
                status = filters[i].encode_headers(head, True)
                self.headers_end_call = None
                if self.body_added is not None:
                    self._headers_with_body(_ENCODE, i, head, status)
                    return
            else:
                status = filters[i].encode_headers(head, False)
            if status or self.state >= CLOSED:
                if status and self.state < CLOSED:
                    self._set_held(_ENCODE, _Held(i, True, end_stream, status))
                return
            i += 1
        sink = filters[last]  # (the wire sink's encode_headers, inline)
        if sink.whole and not end_stream:
            sink.head = head
        else:
            self._write_headers(head, end_stream, None)

    def _encode_whole(self, filters, head, body: bytes) -> None:
        """A whole response, nothing held: the head through the encoder filters (as not
        ending the stream), then, when every one of them would only CONTINUE the body, head
        and body in one write; otherwise the head waits at the wire sink while the body goes
        through them. The outcome of the general path, in fewer steps; a filter that stops the
        head gets the body as there."""
        last = len(filters) - 1
        i = 0
        while i < last:
            status = filters[i].encode_headers(head, False)
            if status or self.state >= CLOSED:
                if status and self.state < CLOSED:
                    self._set_held(_ENCODE, _Held(i, True, False, status))
                    self.encode_data(body, True)
                return
            i += 1
        if ((not self.encode_body_left or self.plan.encode_data_passes) and self.held[_ENCODE] is None
                and self.chains[_ENCODE] is filters):
            self._write_headers(head, True, body)
            return
        # The body goes through the encoder filters: the head waits at the wire sink for it,
        # as on the general path (encode_data, then _data from the first filter).
        sink = filters[last]
        sink.head = head
        if self.held[_ENCODE] is None and self.chains[_ENCODE] is filters and self.state < CLOSED:
            i = 0
            while i < last:
                status = filters[i].encode_data(body, True)
                if self.state >= CLOSED:
                    return
                if type(status) is not int:  # bytes: CONTINUE with these in place of `body`
                    body, status = status, 0
                if status:
                    self._data_stopped(_ENCODE, i, body, True, status)
                    return
                if self.held[_ENCODE] is not None or self.chains[_ENCODE] is not filters:
                    self._data(_ENCODE, i + 1, body, True)  # (a filter did more: as _data goes on)
                    break
                i += 1
            else:
                sink.head = None
                self._write_headers(head, True, body)
                return
        else:  # (a filter did more than CONTINUE the head)
            self.encode_data(body, True)
        if sink.head is not None and self.held[_ENCODE] is None and self.state < CLOSED:
            self._write_headers(sink.head, False, None)
            sink.head = None

    def _headers_with_body(self, d: int, i: int, head, status: int) -> None:
        """Filter `i` gave a headers-only message a body: the headers go on from the next
        filter without the end of the stream, then the body with it (or both wait at `i`)."""
        body = self.body_added
        self.body_added = None
        if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
            return
        if status:
            held = self._set_held(d, _Held(i, True, False, status))
            held.end_stream = True
            self._buffer(d, held, body)
            return
        self._headers(d, i + 1, head, False)
        if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
            return
        self._data(d, i + 1, body, True)

    def _data(self, d: int, i: int, data: bytes, end_stream: bool) -> None:
        filters = self.chains[d]
        last = len(filters) - 1
        name = _NAMES[d][1]
        while i < last:
            held = self.held[d]
            if held is not None and held.at == i:
                if held.stop_all:
                    held.end_stream = held.end_stream or end_stream
                    self._buffer(d, held, data)
                    return
                status = getattr(filters[i], name)(data, end_stream)
                if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                    return
                if type(status) is not int:  # bytes: CONTINUE with these in place of `data`
                    data, status = status, 0
                if status == 0:  # this filter lets what waits at it go on, this data last
                    self._set_held(d, None)
                    if held.buffer:
                        data = bytes(held.buffer) + data
                    self._unpause(d, held)
                    if held.headers_pending:
                        self._headers(d, i + 1, self._head(d), False)
                        if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                            return
                    again = self.held[d]
                    i = again.at if again is not None else i + 1
                    continue
                held.end_stream = held.end_stream or end_stream
                if status != _NO_BUFFER:
                    self._buffer(d, held, data)
                return
            status = getattr(filters[i], name)(data, end_stream)
            if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                return
            if type(status) is not int:  # bytes: CONTINUE with these in place of `data`
                data, status = status, 0
            if status:
                self._data_stopped(d, i, data, end_stream, status)
                return
            i += 1
        getattr(filters[last], name)(data, end_stream)

    def _data_stopped(self, d: int, i: int, data: bytes, end_stream: bool, status: int) -> None:
        """Filter `i`, which held nothing, stopped `data`."""
        later = self.held[d]
        if later is not None:  # a later filter holds: one stop per direction
            if status != _NO_BUFFER:  # (so what this one would keep waits there)
                later.end_stream = later.end_stream or end_stream
                self._buffer(d, later, data)
            elif end_stream:
                later.end_stream = True
            return
        held = self._set_held(d, _Held(i, False, False, status))
        held.end_stream = end_stream
        if status != _NO_BUFFER:
            self._buffer(d, held, data)

    def _trailers(self, d: int, i: int, trailers) -> None:
        filters = self.chains[d]
        last = len(filters) - 1
        name = _NAMES[d][2]
        while i < last:
            held = self.held[d]
            if held is not None and held.at == i:
                if held.stop_all:
                    held.trailers = trailers
                    return
                status = getattr(filters[i], name)(trailers)
                if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                    return
                if type(status) is not int:  # bytes it emits go after what waits here
                    if status:
                        if held.buffer is None:
                            held.buffer = bytearray()
                        held.buffer += status
                    status = 0
                if status:
                    held.trailers = trailers
                    return
                # CONTINUE from the filter holding things: release them, trailers last.
                held.trailers = trailers
                self._set_held(d, None)
                self._release(d, held, i + 1)
                return
            status = getattr(filters[i], name)(trailers)
            if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                return
            if type(status) is not int:  # bytes: data this filter emits ahead of the trailers
                self._data(d, i + 1, status, False)
                if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                    return
                status = 0
            if status:
                held = self.held[d]  # (a later filter holding keeps its place: they wait there)
                if held is None:
                    held = self._set_held(d, _Held(i, False, False, status))
                held.trailers = trailers
                return
            i += 1
        getattr(filters[last], name)(trailers)

    def _resume(self, d: int) -> None:
        """`continue_decoding` / `continue_encoding`: what waits at the stopped filter goes on
        from the next one."""
        held = self.held[d]
        if held is None or self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
            return
        self._set_held(d, None)
        self._release(d, held, held.at + 1)

    def _release(self, d: int, held: _Held, i: int) -> None:
        self._unpause(d, held)
        data = bytes(held.buffer) if held.buffer else b""
        trailers = held.trailers
        data_end = held.end_stream and trailers is None
        if held.headers_pending:
            end = held.headers_end
            self._headers(d, i, self._head(d), end)
            if end or self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                return
            again = self.held[d]
            if again is not None:
                i = again.at
        if data or data_end:
            self._data(d, i, data, data_end)
            if self.state >= CLOSED or (d == _DECODE and self.decoder_aborted):
                return
            again = self.held[d]
            if again is not None:
                i = again.at
        if trailers is not None:
            self._trailers(d, i, trailers)

    def _head(self, d: int):
        return self.head if d == _DECODE else self.response_head_pending

    # -- buffering and limits --------------------------------------------------------------------
    def _buffer(self, d: int, held: _Held, data: bytes) -> None:
        if not data:
            return
        if held.buffer is None:
            held.buffer = bytearray()
        held.buffer += data
        if len(held.buffer) <= self.buffer_limit():
            return
        if held.watermark:
            if not held.paused:
                held.paused = True
                self._pause_peer(d, True)
            return
        if d == _DECODE:
            # Envoy: a request a filter buffers beyond the limit gets 413.
            self.ctx.stats.downstream_rq_too_large.value += 1
            self.send_local_reply(413, b"Payload Too Large", None, "request_payload_too_large")
        else:
            self.ctx.stats.rs_too_large.value += 1
            held.buffer = None
            self.send_local_reply(500, b"Internal Server Error", None, "response_payload_too_large")

    def _unpause(self, d: int, held: _Held) -> None:
        if held.paused:
            held.paused = False
            self._pause_peer(d, False)

    def _pause_peer(self, d: int, pause: bool) -> None:
        if d == _DECODE:
            self.read_disable_downstream(pause)
        else:
            self.on_downstream_watermark(pause)  # the router pauses the upstream

    # -- teardown -------------------------------------------------------------------------------
    def destroy_filters(self) -> None:
        """The stream is over: every filter's on_destroy, once; the chain is dropped (which
        breaks the stream <-> filter cycles, so a stream is freed by refcount)."""
        filters = self.filters
        self.filters = ()
        self.chains = None
        plan = self.plan
        if plan is None or not filters:  # (not filters: destroyed already)
            for flt in filters:
                flt.on_destroy()
        else:  # (a filter whose on_destroy is PassThroughFilter's is not called)
            for i in plan.destroy_idx:
                filters[i].on_destroy()
