"""The rate limit service's messages written and read by hand (proxy/http/filters/ratelimit_wire.py)
against protobuf's own classes (xds-protos, an independent implementation): the RateLimitRequest
parses back to the same message (and serializes to the same bytes), RateLimitResponses protobuf
writes are read field by field, bytes that are no RateLimitResponse are a gRPC INTERNAL failure,
and the DRAFT_VERSION_03 x-ratelimit-* headers are Envoy 1.40's."""

from __future__ import annotations

import pytest

import proxy.grpc.protobuf_env  # noqa: F401  before protobuf: the pure-Python backend on 3.14t
from envoy.service.ratelimit.v3 import rls_pb2 as pb  # noqa: E402

from proxy.grpc.unary import GrpcFailure  # noqa: E402
from proxy.http.filters import ratelimit_wire as wire  # noqa: E402


def _reference(domain: str, descriptors) -> bytes:
    m = pb.RateLimitRequest(domain=domain)
    for d in descriptors:
        rd = m.descriptors.add()
        for k, v in d:
            e = rd.entries.add()
            e.key = k.decode("utf-8")
            e.value = v.decode("utf-8")
    return m.SerializeToString()


@pytest.mark.parametrize("descriptors", [
    [((b"user", b"alice"),)],
    [((b"generic_key", b"a"), (b"remote_address", b"10.0.0.1")), ((b"header_match", b"x"),)],
    [()],                                                   # every entry skipped: an empty descriptor
    [((b"user", b""),)],                                    # an empty value (a present, empty header)
    [((b"k", b"v" * 300),)] * 3,                            # lengths over one varint byte
    [((b"k", "ünïcode".encode()),)],
])
def test_request_is_the_message_protobuf_writes(descriptors):
    got = wire.rate_limit_request(b"edge", descriptors)
    assert got == _reference("edge", descriptors)
    back = pb.RateLimitRequest.FromString(got)
    assert back.domain == "edge"
    assert [[(e.key, e.value) for e in d.entries] for d in back.descriptors] == [
        [(k.decode(), v.decode()) for k, v in d] for d in descriptors]


def test_request_header_bytes_go_as_they_are():
    got = wire.rate_limit_request(b"d", [((b"user", b"\xff\xfe"),)])
    assert b"\xff\xfe" in got


def _response(**kw) -> pb.RateLimitResponse:
    r = pb.RateLimitResponse(overall_code=kw.pop("code", 1))
    for k, v in kw.pop("resp", ()):
        h = r.response_headers_to_add.add()
        h.key, h.value = k, v
    for k, v in kw.pop("req", ()):
        h = r.request_headers_to_add.add()
        h.key, h.value = k, v
    for code, limit, unit, name, remaining, reset in kw.pop("statuses", ()):
        s = r.statuses.add(code=code, limit_remaining=remaining)
        if limit:
            s.current_limit.requests_per_unit = limit
            s.current_limit.unit = unit
            s.current_limit.name = name
        s.duration_until_reset.seconds = reset
    r.raw_body = kw.pop("body", b"")
    return r


def test_over_limit_answer_with_headers_body_and_statuses():
    r = _response(code=2, resp=[("X-Why", "over"), ("content-type", "application/json")],
                  req=[("x-a", "1"), ("x-a", "2")], body=b"slow down",
                  statuses=[(2, 10, 2, "per-user", 0, 30), (1, 0, 0, "", 5, 0)])
    a = wire.read_answer(r.SerializeToString(), True)
    assert a.over_limit
    assert a.response_headers == ((b"x-why", b"over"), (b"content-type", b"application/json"))
    assert a.request_headers == ((b"x-a", b"1"), (b"x-a", b"2"))
    assert a.body == b"slow down"
    assert a.statuses == ((10, 2, "per-user", 0, 30),)   # the one without a limit is left out


@pytest.mark.parametrize("code", [0, 1])
def test_any_code_but_over_limit_is_ok(code):
    a = wire.read_answer(_response(code=code).SerializeToString(), False)
    assert not a.over_limit and a.response_headers == () and a.body == b""


def test_statuses_are_read_only_when_asked():
    r = _response(statuses=[(1, 5, 3, "h", 3, 100)])
    assert wire.read_answer(r.SerializeToString(), False).statuses == ()


def test_headers_no_header_can_carry_are_dropped():
    r = _response(resp=[("x-bad", "a\r\nx-injected: yes"), ("bad name", "v"), ("x-good", "fine")])
    assert wire.read_answer(r.SerializeToString(), False).response_headers == ((b"x-good", b"fine"),)


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x1a\x03\x0a\x05x"])
def test_garbage_is_an_internal_failure(data):
    with pytest.raises(GrpcFailure) as e:
        wire.read_answer(data, True)
    assert e.value.status == 13


def test_x_ratelimit_headers_as_envoy_1_40():
    # Case filter_ratelimit's strict_limits, as real Envoy answered it.
    got = wire.x_ratelimit_headers(((5, 3, "hourly", 3, 100), (10, 1, "", 7, 1)))
    assert got == [(b"x-ratelimit-limit", b'5, 5;w=3600;name="hourly", 10;w=1'),
                   (b"x-ratelimit-remaining", b"3"), (b"x-ratelimit-reset", b"100")]
    assert wire.x_ratelimit_headers(()) == []
    # Every unit's window; an unknown unit gives no quota policy.
    for unit, window in ((1, 1), (2, 60), (3, 3600), (4, 86400), (7, 604800), (5, 2592000), (6, 31536000)):
        assert wire.x_ratelimit_headers(((2, unit, "", 1, 0),))[0][1] == b"2, 2;w=%d" % window
    assert wire.x_ratelimit_headers(((2, 0, "n", 1, 0),))[0][1] == b"2"
