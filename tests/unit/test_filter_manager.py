"""The HTTP filter chain's iteration rules (filter_manager.py), driven without sockets: a
`FakeStream` is a FilterManager whose wire is a list, and `Recording*` filters return scripted
statuses. Envoy's semantics: decoders in order, encoders in reverse, StopIteration holds the
headers but not the data, StopAll* holds everything, buffered data is released by CONTINUE or
continue_*, the buffer limit gives 413 / 500, a local reply runs the encoders and stops the
decoders.
"""

from __future__ import annotations

from types import SimpleNamespace

from proxy.http.filter import (FilterDataStatus as D, FilterHeadersStatus as H,
                               FilterTrailersStatus as T, PassThroughFilter)
from proxy.http.filter_manager import FilterManager
from proxy.http.headers import Headers, RequestHead, ResponseHead
from proxy.http.stream_state import CLOSED, REQUEST_COMPLETE, RESPONSE_STARTED


class FakeStream(FilterManager):
    """A stream whose wire is `wire` (a list of events) and whose peer pause is recorded."""

    __slots__ = ("head", "ctx", "state", "abandoned", "closing",
                 "wire", "flags", "response_code_details", "limit", "read_disabled", "log")

    def __init__(self, limit: int = 1 << 20) -> None:
        self.head = RequestHead(b"GET", b"/", b"x", b"http", Headers([(b"host", b"x")]))
        stats = SimpleNamespace(downstream_rq_too_large=SimpleNamespace(value=0),
                                rs_too_large=SimpleNamespace(value=0))
        self.ctx = SimpleNamespace(stats=stats, route_table=SimpleNamespace(route=lambda h: None),
                                   config=SimpleNamespace(local_reply=None))
        self.state = REQUEST_COMPLETE
        self.abandoned = False
        self.closing = False  # a 400 local reply asked for the connection to close
        self.wire: list = []
        self.flags: list = []
        self.response_code_details = None
        self.limit = limit
        self.read_disabled: list = []
        self.log: list = []  # every filter call, in order
        self.init_filters()

    def abandon_request(self):
        self.abandoned = True

    def close_after_bad_request(self):
        self.closing = True

    def set_response_flag(self, flag):
        self.flags.append(flag)

    def buffer_limit(self):
        return self.limit

    def read_disable_downstream(self, disable):
        self.read_disabled.append(disable)

    def reset(self, details=""):
        self.wire.append(("reset", details))
        self.state |= CLOSED

    def _write_headers(self, head, end_stream, body=None):
        self.state |= RESPONSE_STARTED
        self.wire.append(("headers", head.status, end_stream, body))
        if end_stream:
            self.state |= CLOSED

    def _write_data(self, data, end_stream):
        self.wire.append(("data", bytes(data), end_stream))
        if end_stream:
            self.state |= CLOSED

    def _write_trailers(self, trailers):
        self.wire.append(("trailers", trailers))
        self.state |= CLOSED


class Recording(PassThroughFilter):
    """Logs each call as (name, call, arg) and returns the next scripted status for it."""

    __slots__ = ("name", "stream", "script")

    def __init__(self, name, stream, **script):
        self.name = name
        self.stream = stream
        self.script = {k: list(v) for k, v in script.items()}

    def _call(self, call, arg):
        self.stream.log.append((self.name, call, arg))
        statuses = self.script.get(call)
        return statuses.pop(0) if statuses else 0

    def decode_headers(self, head, end_stream):
        return self._call("decode_headers", end_stream)

    def decode_data(self, data, end_stream):
        return self._call("decode_data", (bytes(data), end_stream))

    def decode_trailers(self, trailers):
        return self._call("decode_trailers", trailers)

    def encode_headers(self, head, end_stream):
        return self._call("encode_headers", (head.status, end_stream))

    def encode_data(self, data, end_stream):
        return self._call("encode_data", (bytes(data), end_stream))

    def encode_trailers(self, trailers):
        return self._call("encode_trailers", trailers)


class Factory:
    def __init__(self, name, decoder=True, encoder=True, **script):
        self.name, self.decoder, self.encoder, self.script = name, decoder, encoder, script
        self.made = None

    def create(self, callbacks):
        self.made = Recording(self.name, callbacks, **self.script)
        return self.made


def chain(stream, *factories):
    stream.create_filter_chain([(f, False, False) for f in factories])
    return [f.made for f in factories]


def decode_log(stream):
    return [(n, c, a) for n, c, a in stream.log if c.startswith("decode")]


def test_decoders_run_in_order_and_encoders_in_reverse():
    s = FakeStream()
    chain(s, Factory("a"), Factory("b"), Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"x", True)
    assert [(n, c) for n, c, _ in s.log] == [("a", "decode_headers"), ("b", "decode_headers"),
                                             ("router", "decode_headers"), ("a", "decode_data"),
                                             ("b", "decode_data"), ("router", "decode_data")]
    s.log.clear()
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"body", True)
    assert [(n, c) for n, c, _ in s.log] == [("b", "encode_headers"), ("a", "encode_headers"),
                                             ("b", "encode_data"), ("a", "encode_data")]
    assert s.wire == [("headers", 200, False, None), ("data", b"body", True)]


def test_stop_iteration_holds_headers_but_data_still_reaches_the_stopped_filter():
    s = FakeStream()
    chain(s, Factory("a", decode_headers=[H.STOP_ITERATION],
                     decode_data=[D.STOP_ITERATION_AND_BUFFER, D.CONTINUE]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"one", False)
    assert decode_log(s) == [("a", "decode_headers", False), ("a", "decode_data", (b"one", False))]
    # CONTINUE from decode_data: the headers go on, then what was buffered with this data.
    s.decode_data(b"two", True)
    assert decode_log(s)[2:] == [("a", "decode_data", (b"two", True)),
                                 ("router", "decode_headers", False),
                                 ("router", "decode_data", (b"onetwo", True))]


def test_stop_all_buffers_everything_until_continue_decoding():
    s = FakeStream()
    a, _ = chain(s, Factory("a", decode_headers=[H.STOP_ALL_ITERATION_AND_BUFFER]),
                 Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"x" * 3, False)
    s.decode_data(b"y", False)
    s.decode_trailers([(b"t", b"1")])
    assert decode_log(s) == [("a", "decode_headers", False)]  # nothing else reached "a"
    assert bytes(s.decoding_buffer()) == b"xxxy"
    s.continue_decoding()
    assert decode_log(s)[1:] == [("router", "decode_headers", False),
                                 ("router", "decode_data", (b"xxxy", False)),
                                 ("router", "decode_trailers", [(b"t", b"1")])]


def test_a_second_filter_can_stop_what_the_first_released():
    s = FakeStream()
    chain(s, Factory("a", decode_headers=[H.STOP_ALL_ITERATION_AND_BUFFER]),
          Factory("b", decode_headers=[H.STOP_ALL_ITERATION_AND_BUFFER]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"body", True)
    s.continue_decoding()              # "a" lets go; "b" stops all: the data waits at "b"
    assert [n for n, *_ in decode_log(s)] == ["a", "b"]
    s.continue_decoding()
    assert decode_log(s)[2:] == [("router", "decode_headers", False),
                                 ("router", "decode_data", (b"body", True))]


def test_headers_only_request_continued_later_keeps_end_stream():
    s = FakeStream()
    chain(s, Factory("a", decode_headers=[H.STOP_ITERATION]), Factory("router", encoder=False))
    s.decode_headers(True)
    s.continue_decoding()
    assert decode_log(s) == [("a", "decode_headers", True), ("router", "decode_headers", True)]


def test_buffering_past_the_limit_answers_413_through_the_encoders():
    s = FakeStream(limit=4)
    chain(s, Factory("enc", decoder=False),
          Factory("a", encoder=False, decode_headers=[H.STOP_ALL_ITERATION_AND_BUFFER]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"abc", False)
    assert s.wire == []
    s.decode_data(b"de", False)
    # The encoders saw the local reply (its head, then its body); the wire got it in one write.
    assert ("enc", "encode_headers", (413, False)) in s.log
    assert ("enc", "encode_data", (b"Payload Too Large", True)) in s.log
    assert s.wire == [("headers", 413, True, b"Payload Too Large")]
    assert s.response_code_details == "request_payload_too_large"
    assert s.ctx.stats.downstream_rq_too_large.value == 1


def test_watermark_status_pauses_the_downstream_instead_of_413():
    s = FakeStream(limit=4)
    chain(s, Factory("a", decode_headers=[H.STOP_ALL_ITERATION_AND_WATERMARK]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"abcdef", False)
    assert s.read_disabled == [True] and s.wire == []
    s.continue_decoding()
    assert s.read_disabled == [True, False]
    assert decode_log(s)[-1] == ("router", "decode_data", (b"abcdef", False))


def test_response_buffered_past_the_limit_is_a_500_before_the_head_went_out():
    s = FakeStream(limit=4)
    chain(s, Factory("a", decoder=False, encode_headers=[H.STOP_ALL_ITERATION_AND_BUFFER]),
          Factory("router", encoder=False))
    s.decode_headers(True)
    s.encode_headers(ResponseHead(200, Headers([(b"content-length", b"10")])), False)
    s.encode_data(b"0123456789", True)
    # Straight to the wire (the encoder holding the response is bypassed), in one write.
    assert s.wire == [("headers", 500, True, b"Internal Server Error")]
    assert s.response_code_details == "response_payload_too_large"
    assert s.ctx.stats.rs_too_large.value == 1


def test_local_reply_from_a_decoder_stops_the_decoders_and_runs_every_encoder():
    s = FakeStream()

    class Answering(Recording):
        def decode_headers(self, head, end_stream):
            self.stream.send_local_reply(403, b"no", "UAEX", "denied")
            return H.STOP_ITERATION

    s.create_filter_chain([(Factory("enc", decoder=False), False, False),
                           (SimpleNamespace(name="auth", decoder=True, encoder=False,
                                            create=lambda cb: Answering("auth", cb)), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.decode_headers(True)
    assert [n for n, c, _ in s.log if c == "decode_headers"] == []  # Answering logs nothing
    assert ("enc", "encode_headers", (403, False)) in s.log
    assert s.wire[0][:2] == ("headers", 403) and s.flags == ["UAEX"]
    assert not any(n == "router" for n, *_ in s.log)


def test_encoder_stop_and_continue_encoding():
    s = FakeStream()
    b, a, _ = chain(s, Factory("b", decoder=False), Factory("a", decoder=False,
                                                           encode_headers=[H.STOP_ITERATION],
                                                           encode_data=[D.STOP_ITERATION_AND_BUFFER]),
                    Factory("router", encoder=False))
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"x", True)
    assert s.wire == []
    s.continue_encoding()
    assert s.wire == [("headers", 200, False, None), ("data", b"x", True)]
    assert [n for n, c, _ in s.log if c == "encode_headers"] == ["a", "b"]


def test_a_local_reply_while_an_encoder_holds_the_response_replaces_it():
    s = FakeStream()
    chain(s, Factory("a", decoder=False, encode_headers=[H.STOP_ITERATION]),
          Factory("router", encoder=False))
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.send_local_reply(504, b"upstream request timeout", "UT", "response_timeout")
    assert s.wire == [("headers", 504, True, b"upstream request timeout")]


def test_trailers_stop_and_release():
    s = FakeStream()
    chain(s, Factory("a", decode_trailers=[T.STOP_ITERATION]), Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"d", False)
    s.decode_trailers([(b"k", b"v")])
    assert decode_log(s)[-1] == ("a", "decode_trailers", [(b"k", b"v")])
    s.continue_decoding()
    assert decode_log(s)[-1] == ("router", "decode_trailers", [(b"k", b"v")])


def test_destroy_calls_every_filter_once_and_drops_the_chain():
    s = FakeStream()
    destroyed = []

    class Counting(Recording):
        def on_destroy(self):
            destroyed.append(self.name)

    facts = [SimpleNamespace(name=n, decoder=True, encoder=True,
                             create=lambda cb, n=n: Counting(n, cb)) for n in ("a", "b")]
    s.create_filter_chain([(f, False, False) for f in facts])
    s.destroy_filters()
    s.destroy_filters()
    assert destroyed == ["a", "b"] and s.chains is None


def test_data_arriving_while_a_later_filter_holds_the_headers_passes_the_earlier_filters_first():
    """Envoy's decodeData starts at the chain's first filter: a filter ahead of one that holds
    the headers (grpc_web ahead of ext_authz or a fault delay) sees every chunk."""
    s = FakeStream()
    chain(s, Factory("a"), Factory("b", decode_headers=[H.STOP_ITERATION],
                                   decode_data=[D.STOP_ITERATION_AND_BUFFER, D.CONTINUE]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"one", False)
    s.decode_data(b"two", True)
    assert [(n, c, a) for n, c, a in decode_log(s) if c == "decode_data"] == [
        ("a", "decode_data", (b"one", False)), ("b", "decode_data", (b"one", False)),
        ("a", "decode_data", (b"two", True)), ("b", "decode_data", (b"two", True)),
        ("router", "decode_data", (b"onetwo", True))]


def test_an_earlier_filter_taking_data_keeps_the_later_filters_hold():
    """A filter that takes a chunk (STOP_ITERATION_NO_BUFFER: grpc_web waiting for a whole
    base64 group) while a later one holds the headers: the hold stays where it was."""
    s = FakeStream()
    chain(s, Factory("a", decode_data=[D.STOP_ITERATION_NO_BUFFER]),
          Factory("b", decode_headers=[H.STOP_ITERATION], decode_data=[D.STOP_ITERATION_AND_BUFFER]),
          Factory("router", encoder=False))
    s.decode_headers(False)
    s.decode_data(b"AA", False)   # "a" takes it
    s.decode_data(b"AAAA", True)  # "a" passes it on; "b" still holds the headers
    assert not any(n == "router" for n, *_ in s.log)
    s.continue_decoding()
    assert decode_log(s)[-2:] == [("router", "decode_headers", False),
                                  ("router", "decode_data", (b"AAAA", True))]


def test_trailers_of_a_held_encoder_may_emit_data_ahead_of_them():
    """grpc_web holds a partial message (NO_BUFFER) when the trailers come: the bytes its
    encode_trailers returns go out before the trailers."""
    s = FakeStream()

    class Framing(Recording):
        def encode_trailers(self, trailers):
            super().encode_trailers(trailers)
            del trailers[:]
            return b"trailer-frame"

    s.create_filter_chain([(SimpleNamespace(name="w", decoder=False, encoder=True,
                                            create=lambda cb: Framing("w", cb, encode_data=[D.STOP_ITERATION_NO_BUFFER])),
                            False, False),
                           (Factory("router", encoder=False), False, False)])
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"partial", False)
    s.encode_trailers([(b"grpc-status", b"0")])
    assert s.wire == [("headers", 200, False, None), ("data", b"trailer-frame", False), ("trailers", [])]


def test_a_400_local_reply_asks_the_connection_to_close():
    """Envoy's onLocalReply: a 400 is a messaging error (HTTP/1.x closes after it)."""
    s = FakeStream()
    chain(s, Factory("a"), Factory("router", encoder=False))
    s.decode_headers(False)
    s.send_local_reply(400, b"bad", None, "bad")
    assert s.closing
    t = FakeStream()
    chain(t, Factory("a"), Factory("router", encoder=False))
    t.decode_headers(False)
    t.send_local_reply(403, b"no", None, "no")
    assert not t.closing


def test_a_local_reply_is_grpc_when_the_request_arrived_as_grpc():
    """Envoy decides once, as the request arrives (state_.is_grpc_request_): a filter that
    makes a gRPC-Web request application/grpc does not make its local replies gRPC ones."""
    s = FakeStream()

    class Converting(Recording):
        def decode_headers(self, head, end_stream):
            head.headers.set(b"content-type", b"application/grpc")
            return 0

    s.head.headers.set(b"content-type", b"application/grpc-web")
    s.create_filter_chain([(SimpleNamespace(name="c", decoder=True, encoder=False,
                                            create=lambda cb: Converting("c", cb)), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.decode_headers(False)
    s.send_local_reply(503, b"down", "UF", "down")
    assert s.wire == [("headers", 503, True, b"down")]  # plain HTTP, not a grpc-status 200


def test_a_filter_may_give_a_headers_only_message_a_body():
    """Envoy's addDecodedData/addEncodedData from decodeHeaders/encodeHeaders with end_stream
    (the gRPC-JSON transcoder turning a GET into a gRPC call with one message): the later
    filters see the headers without the end of the stream, then the body with it."""
    s = FakeStream()

    class Adding(Recording):
        def decode_headers(self, head, end_stream):
            self.stream.add_decoded_data(b"message")
            return 0

        def encode_headers(self, head, end_stream):
            self.stream.add_encoded_data(b"[]")
            return 0

    s.create_filter_chain([(SimpleNamespace(name="t", decoder=True, encoder=True,
                                            create=lambda cb: Adding("t", cb)), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.decode_headers(True)
    assert decode_log(s) == [("router", "decode_headers", False), ("router", "decode_data", (b"message", True))]
    s.encode_headers(ResponseHead(403, Headers()), True)
    assert s.wire == [("headers", 403, False, None), ("data", b"[]", True)]


# -- the chain's plan (filter_chain_plan.py): calls every filter would only CONTINUE skip them --

class HeadersOnly(PassThroughFilter):
    """Acts on the headers only: data, trailers and on_destroy are PassThroughFilter's."""

    __slots__ = ("name", "stream", "status")

    def __init__(self, name, stream, status=0):
        self.name, self.stream, self.status = name, stream, status

    def decode_headers(self, head, end_stream):
        self.stream.log.append((self.name, "decode_headers", end_stream))
        return self.status

    def encode_headers(self, head, end_stream):
        self.stream.log.append((self.name, "encode_headers", (head.status, end_stream)))
        return self.status


def headers_only(name, status=0):
    return SimpleNamespace(name=name, decoder=True, encoder=True,
                           create=lambda cb: HeadersOnly(name, cb, status))


def test_body_and_trailers_pass_headers_only_filters_unchanged():
    """The response body and trailers go straight to the wire past filters that act on the
    headers only, and the request body straight to the terminal filter: what the filters see
    and the wire gets is what the filter-by-filter iteration gives."""
    s = FakeStream()
    router = Factory("router", encoder=False)
    s.create_filter_chain([(headers_only("a"), False, False), (headers_only("b"), False, False),
                           (router, False, False)])
    assert s.plan.decode_data_passes and s.plan.encode_data_passes
    s.decode_headers(False)
    s.decode_data(b"x", False)
    s.decode_trailers([(b"t", b"1")])
    assert s.log == [("a", "decode_headers", False), ("b", "decode_headers", False),
                     ("router", "decode_headers", False), ("router", "decode_data", (b"x", False)),
                     ("router", "decode_trailers", [(b"t", b"1")])]
    s.log.clear()
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"body", False)
    s.encode_trailers([(b"grpc-status", b"0")])
    assert s.log == [("b", "encode_headers", (200, False)), ("a", "encode_headers", (200, False))]
    assert s.wire == [("headers", 200, False, None), ("data", b"body", False),
                      ("trailers", [(b"grpc-status", b"0")])]


def test_whole_response_past_headers_only_filters_is_one_write():
    s = FakeStream()
    s.create_filter_chain([(headers_only("a"), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.encode_headers(ResponseHead(200, Headers()), True, b"whole")
    assert s.wire == [("headers", 200, True, b"whole")]


def test_data_reaching_a_headers_only_filter_that_holds_the_headers_releases_them():
    """A filter that stopped the headers (STOP_ITERATION) and passes data through: the first
    data resumes the direction (Envoy), so that data is not sent past it on a shortcut."""
    s = FakeStream()
    s.create_filter_chain([(headers_only("a", H.STOP_ITERATION), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.decode_headers(False)
    assert [c for _, c, _ in s.log] == ["decode_headers"]
    s.decode_data(b"x", True)
    assert s.log[1:] == [("router", "decode_headers", False), ("router", "decode_data", (b"x", True))]
    s.log.clear()
    s.encode_headers(ResponseHead(200, Headers()), False)
    assert s.wire == []  # held at "a"
    s.encode_data(b"body", True)
    assert s.wire == [("headers", 200, False, None), ("data", b"body", True)]


def test_after_a_local_reply_request_data_past_headers_only_filters_is_dropped():
    s = FakeStream()
    router = Factory("router", encoder=False)
    s.create_filter_chain([(headers_only("a"), False, False), (router, False, False)])
    s.decode_headers(False)
    s.send_local_reply(403, b"no", None, "denied")
    s.log.clear()
    s.decode_data(b"x", True)
    s.decode_trailers([(b"t", b"1")])
    assert s.log == []


def test_a_plan_is_learnt_once_per_hcm_and_per_switched_chain():
    """The plan of an HCM's chain is learnt from its first stream and shared by the next; a
    chain a route switched (a filter left out) has its own."""
    from proxy.http.filter_chain_plan import ChainPlans
    factories = ((headers_only("a"), False, False), (Factory("router", encoder=False), False, False))
    plans = ChainPlans(factories)
    first, second = FakeStream(), FakeStream()
    first.create_filter_chain(factories, plans)
    second.create_filter_chain(factories, plans)
    assert first.plan is second.plan is plans.static and first.plan.encode_data_passes
    routed = ((headers_only("a"), True, True), (Factory("b"), False, True),
              (Factory("router", encoder=False), False, True))
    switched = ChainPlans(routed)
    s = FakeStream()
    s.create_filter_chain(routed, switched)  # "a" is disabled by default: "b" and the router
    assert [f.name for f in s.chains[0]] == ["b", "router"]
    assert not s.plan.encode_data_passes and len(switched.plans) == 1
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"body", True)
    assert ("b", "encode_data", (b"body", True)) in s.log


def test_a_chain_that_keeps_the_content_type_reads_it_at_the_local_reply():
    """A chain whose filters all say keeps_request_content_type takes no snapshot per request
    (filter_chain_plan.py): a local reply reads the request's content-type as it is, which no
    filter changed; one that notes first (note_request_grpc) keeps the shape it arrived with."""
    class Keeping(Recording):
        keeps_request_content_type = True

        def decode_headers(self, head, end_stream):
            if self.name == "noting":
                self.stream.note_request_grpc()
                head.headers.set(b"content-type", b"text/plain")
            return 0

    for name, status in (("keeping", 200), ("noting", 200)):
        s = FakeStream()
        s.head.headers.set(b"content-type", b"application/grpc")
        s.create_filter_chain([(SimpleNamespace(name=name, decoder=True, encoder=False,
                                                create=lambda cb, n=name: Keeping(n, cb)), False, False),
                               (Factory("router", encoder=False), False, False)])
        s.decode_headers(False)
        assert s.plan.grpc_snapshot is False
        s.send_local_reply(503, b"down", "UF", "down")
        assert s.wire[0][:2] == ("headers", status), name   # gRPC-shaped: HTTP 200, grpc-status


def test_a_whole_response_through_a_body_filter_is_still_one_write():
    """_encode_whole: the head passes the filters, the body goes through each encoder filter's
    encode_data (a transforming one replaces it), then head and body go out together."""
    class Upper(Recording):
        def encode_data(self, data, end_stream):
            self._call("encode_data", (bytes(data), end_stream))
            return bytes(data).upper()

    s = FakeStream()
    s.create_filter_chain([(SimpleNamespace(name="u", decoder=True, encoder=True,
                                            create=lambda cb: Upper("u", cb)), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.encode_headers(ResponseHead(200, Headers()), True, b"whole")
    assert s.log == [("u", "encode_headers", (200, False)), ("u", "encode_data", (b"whole", True))]
    assert s.wire == [("headers", 200, True, b"WHOLE")]


def test_a_whole_response_whose_head_a_filter_holds_waits_with_its_body():
    """The filter that stops the head gets the body (it buffers it here), and both go on when
    it continues."""
    s = FakeStream()
    chain(s, Factory("a", encode_headers=[H.STOP_ITERATION], encode_data=[D.STOP_ITERATION_AND_BUFFER]),
          Factory("router", encoder=False))
    s.encode_headers(ResponseHead(200, Headers()), True, b"whole")
    assert s.wire == []
    assert s.log == [("a", "encode_headers", (200, False)), ("a", "encode_data", (b"whole", True))]
    s.continue_encoding()
    assert s.wire == [("headers", 200, False, None), ("data", b"whole", True)]


def test_filters_without_an_on_destroy_of_their_own_are_not_called_at_the_end():
    destroyed = []

    class Counting(Recording):
        def on_destroy(self):
            destroyed.append(self.name)

    s = FakeStream()
    s.create_filter_chain([(headers_only("quiet"), False, False),
                           (SimpleNamespace(name="r", decoder=True, encoder=False,
                                            create=lambda cb: Counting("r", cb)), False, False)])
    s.decode_headers(False)
    s.destroy_filters()
    assert destroyed == ["r"] and s.chains is None and s.filters == ()


def test_a_whole_response_whose_body_a_filter_holds_goes_on_when_it_continues():
    """_encode_whole's body loop: a filter that passed the head and stops the body keeps it
    (with the head waiting at the wire sink) until it continues; a filter before it saw it."""
    s = FakeStream()
    chain(s, Factory("a", encode_data=[D.STOP_ITERATION_AND_BUFFER]), Factory("b"),
          Factory("router", encoder=False))
    s.encode_headers(ResponseHead(200, Headers()), True, b"whole")
    assert s.wire == []
    assert [(n, c) for n, c, _ in s.log] == [("b", "encode_headers"), ("a", "encode_headers"),
                                             ("b", "encode_data"), ("a", "encode_data")]
    s.continue_encoding()
    assert s.wire == [("headers", 200, True, b"whole")]  # (one write, as before _encode_whole)


def test_a_body_every_body_filter_passed_on_skips_them():
    """pass_encoded_body: once each encoder filter with a body call of its own said this
    response's body is not its (a compressor that chose not to compress), the body and the
    trailers go straight to the wire; until the last of them said so, they still run."""
    class Passing(Recording):
        def encode_headers(self, head, end_stream):
            if self.name in passing:
                self.stream.pass_encoded_body()
            return self._call("encode_headers", (head.status, end_stream))

    def passing_factory(name):
        return SimpleNamespace(name=name, decoder=True, encoder=True,
                               create=lambda cb: Passing(name, cb))

    passing = {"a", "b"}
    s = FakeStream()
    s.create_filter_chain([(passing_factory("a"), False, False), (passing_factory("b"), False, False),
                           (Factory("router", encoder=False), False, False)])
    assert s.plan.encode_body_filters == 2 and not s.plan.encode_data_passes
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"body", False)
    s.encode_trailers([(b"t", b"1")])
    assert [call for _, call, _ in s.log] == ["encode_headers", "encode_headers"]
    assert s.wire == [("headers", 200, False, None), ("data", b"body", False), ("trailers", [(b"t", b"1")])]
    whole = FakeStream()
    whole.create_filter_chain([(passing_factory("a"), False, False), (passing_factory("b"), False, False),
                               (Factory("router", encoder=False), False, False)])
    whole.encode_headers(ResponseHead(200, Headers()), True, b"whole")
    assert whole.wire == [("headers", 200, True, b"whole")] and len(whole.log) == 2

    passing = {"a"}  # "b" keeps the body: both still see it
    s = FakeStream()
    s.create_filter_chain([(passing_factory("a"), False, False), (passing_factory("b"), False, False),
                           (Factory("router", encoder=False), False, False)])
    s.encode_headers(ResponseHead(200, Headers()), False)
    s.encode_data(b"body", True)
    assert ("a", "encode_data", (b"body", True)) in s.log and ("b", "encode_data", (b"body", True)) in s.log
