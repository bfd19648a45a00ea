"""ext_authz's CheckRequest wire writer (proxy/http/filters/ext_authz_wire.check_request) writes
what protobuf's own objects serialize (ext_authz_proto.check_request_message, the reference): parsed back, the
two are the same message, for requests with and without bodies, raw bodies, allowed_headers,
duplicate headers, a downstream service cluster, IPv6 peers and context extensions; its field
numbers are the descriptors'. And the CheckResponse reader and the query rewrite."""

from __future__ import annotations

import pytest

from proxy.http.filters import ext_authz_proto as ref
from proxy.http.filters import ext_authz_wire as g
from proxy.http.headers import Headers, RequestHead
from proxy.router.matchers import parse_string_matcher

ref.load_protos()


class Info:
    def __init__(self, remote="127.0.0.1:5000", local="127.0.0.1:10000", start=1733549123.25, received=0):
        self.downstream_direct_remote_address = remote
        self.downstream_local_address = local
        self.start_time = start
        self.bytes_received = received


def _head(*extra, method=b"GET", path=b"/a/b?q=1", version=b"1.1"):
    return RequestHead(method, path, b"example.com", b"http",
                       Headers([(b"host", b"example.com"), (b"authorization", b"Bearer t"), *extra]),
                       version)


CASES = [
    ("plain", _head(), Info(), (), None, False, False, {}),
    ("duplicates and service", _head((b"x-dup", b"a"), (b"x-dup", b"b"),
                                     (b"x-envoy-downstream-service-cluster", b"front")), Info(), (), None, False, False, {}),
    ("body", _head(method=b"POST"), Info(received=5), (), b"hello", False, False, {"k": "v", "t": "gold"}),
    ("partial raw body", _head(method=b"PUT"), Info(received=100), (), b"\x00\xffbin", True, True, {}),
    ("empty body", _head(method=b"POST"), Info(), (), b"", False, False, {}),
    ("allowed headers", _head((b"x-tenant-id", b"t9"), (b"x-other", b"no")), Info(),
     (parse_string_matcher({"prefix": "x-tenant"}, "p"), parse_string_matcher({"exact": ":path"}, "p")),
     None, False, False, {}),
    ("ipv6 http2", _head(version=b"2"), Info("[::1]:4000", "[::1]:443", start=0.0), (), None, False, False, {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_wire_writer_matches_protobuf_objects(case):
    _, head, info, allowed, body, partial, raw, ext = case
    wire = ref._pb.CheckRequest.FromString(g.check_request(head, info, 2**63 + 5, allowed, body, partial, raw, ext))
    expected = ref.check_request_message(head, info, 2**63 + 5, allowed, body, partial, raw, ext)
    if body and not raw:  # the reference decodes as latin-1: compare the bytes the writer sent
        assert wire.attributes.request.http.body.encode() == body
        expected.attributes.request.http.body = wire.attributes.request.http.body
    assert wire == expected


def test_field_numbers_are_the_descriptors():
    from envoy.config.core.v3 import address_pb2
    from envoy.service.auth.v3 import attribute_context_pb2 as a

    def tag(msg, name):
        f = msg.DESCRIPTOR.fields_by_name[name]
        return bytes([f.number << 3 | (0 if f.type in (3, 13) else 2)])
    ac = a.AttributeContext
    assert (g._SOURCE, g._DESTINATION, g._REQUEST, g._CONTEXT) == tuple(
        tag(ac, n) for n in ("source", "destination", "request", "context_extensions"))
    assert (g._PEER_ADDRESS, g._PEER_SERVICE) == (tag(ac.Peer, "address"), tag(ac.Peer, "service"))
    assert (g._SOCKET_ADDRESS, g._SA_ADDRESS, g._SA_PORT) == (
        tag(address_pb2.Address, "socket_address"), tag(address_pb2.SocketAddress, "address"),
        tag(address_pb2.SocketAddress, "port_value"))
    assert (g._TIME, g._HTTP) == (tag(ac.Request, "time"), tag(ac.Request, "http"))
    h = ac.HttpRequest
    assert (g._ID, g._METHOD, g._HEADERS, g._PATH, g._HOST, g._SCHEME, g._SIZE, g._PROTOCOL, g._BODY, g._RAW_BODY) == \
        tuple(tag(h, n) for n in ("id", "method", "headers", "path", "host", "scheme", "size", "protocol",
                                  "body", "raw_body"))


def test_read_answer_kinds():
    r = ref._pb.CheckResponse()
    o = r.ok_response.headers.add()
    o.header.key, o.header.value = "X-User", "u"
    o.append.value = True
    r.ok_response.headers_to_remove.append("x-gone")
    a = g.read_answer(r.SerializeToString())
    assert (a.kind, a.headers, a.remove) == (g.ALLOW, ((b"x-user", b"u", g.APPEND),), (b"x-gone",))
    d = ref._pb.CheckResponse()
    d.status.code = 7
    assert (g.read_answer(d.SerializeToString()).kind, g.read_answer(d.SerializeToString()).status) == (g.DENY, 403)
    with pytest.raises(g.GrpcFailure):
        g.read_answer(b"\xff\xff")


@pytest.mark.parametrize("path,to_set,to_remove,want", [
    (b"/p?b=2&a=1&drop=x", (("c", "3"),), ("drop",), b"/p?a=1&b=2&c=3"),
    (b"/p?a=1&a=2", (("a", "9"),), (), b"/p?a=9"),
    (b"/p?a=1", (), ("a",), b"/p"),
    (b"/p", (("x", "y z"),), (), b"/p?x=y z"),
])
def test_rewrite_query_as_envoy(path, to_set, to_remove, want):
    assert g.rewrite_query(path, to_set, to_remove) == want


def _responses():
    pb = ref._pb.CheckResponse
    out = [("empty", pb())]
    r = pb()
    ok = r.ok_response
    for key, append, action in (("X-A", True, None), ("x-b", False, None), ("x-c", None, 1), ("x-d", None, 3)):
        for target in (ok.headers, ok.response_headers_to_add):
            o = target.add()
            o.header.key, o.header.value = key, "v-" + key
            if append is not None:
                o.append.value = append
            if action is not None:
                o.append_action = action
    raw = ok.headers.add()
    raw.header.key, raw.header.raw_value = "x-raw", b"\x01bytes"
    ok.headers_to_remove.extend(["X-Gone", "x-also"])
    q = ok.query_parameters_to_set.add()
    q.key, q.value = "authz", "yes"
    ok.query_parameters_to_remove.append("drop")
    out.append(("ok with everything", r))
    out.append(("ok without ok_response", pb(status={"code": 0})))
    d = pb(status={"code": 7})
    d.denied_response.status.code = 401
    d.denied_response.body = "no"
    h = d.denied_response.headers.add()
    h.header.key, h.header.value = "x-reason", "bad"
    out.append(("denied", d))
    out.append(("denied without denied_response", pb(status={"code": 16})))
    e = pb(status={"code": 13})
    e.error_response.status.code = 418
    e.error_response.body = "teapot"
    out.append(("error_response", e))
    e2 = pb(status={"code": -1})
    e2.error_response.body = "no status"
    out.append(("negative code, error_response without status", e2))
    return out


@pytest.mark.parametrize("resp", [r for _, r in _responses()], ids=[n for n, _ in _responses()])
def test_wire_reader_matches_protobuf_objects(resp):
    data = resp.SerializeToString()
    assert g.read_answer(data) == ref.read_answer_message(data)


def test_wire_reader_merges_repeated_singular_messages_as_protobuf():
    # Two occurrences of ok_response (a peer may send a message in pieces): merged.
    a = ref._pb.CheckResponse()
    a.ok_response.headers_to_remove.append("x-1")
    b = ref._pb.CheckResponse()
    b.ok_response.headers_to_remove.append("x-2")
    data = a.SerializeToString() + b.SerializeToString()
    assert g.read_answer(data) == ref.read_answer_message(data)
    assert g.read_answer(data).remove == (b"x-1", b"x-2")


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x1a\x05ab", b"\x0f", b"\x1a"])
def test_wire_reader_refuses_what_is_not_a_check_response(data):
    with pytest.raises(g.GrpcFailure):
        g.read_answer(data)
