"""ext_authz's gRPC messages built and read with protobuf's own objects (Envoy's v3 classes
from xds-protos): the reference the wire writer and reader (ext_authz_wire.py) are tested
against, field by field (tests/unit/test_ext_authz_grpc_wire.py). The proxy does not use it on
the request path.

Thread affinity: load_protos() on one thread before the others use the classes (the tests'
main thread). proxy/grpc/protobuf_env.py is imported first: the pure-Python backend on 3.14t.
"""

from __future__ import annotations

from typing import Any

from .ext_authz_wire import _PROTOCOLS, ADD, ALLOW, APPEND, DENY, ERROR, SET, Answer
from ...grpc.unary import GrpcFailure

__all__ = ["check_request_message", "load_protos", "read_answer_message"]

_pb: Any = None


class _Protos:
    """Envoy's auth message classes (CheckResponse is read with them; CheckRequest is the
    reference for the wire writer)."""

    def __init__(self) -> None:
        from ...grpc import protobuf_env  # noqa: F401  before protobuf: the backend on 3.14t
        from envoy.service.auth.v3 import external_auth_pb2
        self.CheckRequest = external_auth_pb2.CheckRequest
        self.CheckResponse = external_auth_pb2.CheckResponse


def load_protos() -> _Protos:
    """Import Envoy's auth messages once (main thread, at config load) and use each class once
    there, so nothing the pure-Python backend builds lazily is first built on a worker."""
    global _pb
    if _pb is None:
        p = _Protos()
        warm = p.CheckRequest()
        warm.attributes.request.http.headers["a"] = "b"
        warm.attributes.context_extensions["a"] = "b"
        warm.attributes.source.address.socket_address.port_value = 1
        warm.attributes.request.time.FromNanoseconds(1)
        p.CheckRequest.FromString(warm.SerializeToString())
        answer = p.CheckResponse()
        answer.ok_response.headers.add().header.key = "a"
        answer.denied_response.status.code = 403
        p.CheckResponse.FromString(answer.SerializeToString())
        _pb = p  # written once, before another thread reads it
    return _pb


def _set_address(peer, text: str | None) -> None:
    if not text:
        return
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    sa = peer.address.socket_address
    sa.address = host
    if port.isdigit():
        sa.port_value = int(port)


def check_request_message(head, info, stream_id: int, allowed: tuple, body: bytes | None, partial: bool,
                          pack_as_bytes: bool, context_extensions: dict[str, str]):
    """The same CheckRequest as `check_request`, built as protobuf objects: the reference the
    wire writer is tested against (values decoded as latin-1, so ASCII only compares)."""
    pb = _pb
    msg = pb.CheckRequest()
    attrs = msg.attributes
    _set_address(attrs.source, info.downstream_direct_remote_address)
    _set_address(attrs.destination, info.downstream_local_address)
    request = attrs.request
    if info.start_time:
        request.time.FromNanoseconds(int(info.start_time * 1e9))
    http = request.http
    http.id = str(stream_id)
    http.method = head.method.decode("latin-1")
    http.path = head.path.decode("latin-1")
    http.host = head.authority.decode("latin-1")
    http.scheme = head.scheme.decode("latin-1")
    http.size = info.bytes_received
    protocol = _PROTOCOLS.get(head.http_version)
    if protocol:
        http.protocol = protocol.decode()
    pseudo = ((b":authority", head.authority), (b":path", head.path), (b":method", head.method),
              (b":scheme", head.scheme))
    for name, value in (*pseudo, *head.headers.fields):
        key = name.decode("latin-1")
        if name in (b"host", b"x-envoy-auth-partial-body") or (allowed and not any(m.match(key) for m in allowed)):
            continue
        if key == "x-envoy-downstream-service-cluster":
            attrs.source.service = value.decode("latin-1")
        text = value.decode("latin-1")
        http.headers[key] = http.headers[key] + "," + text if key in http.headers else text
    if body is not None:
        http.headers["x-envoy-auth-partial-body"] = "true" if partial else "false"
        if pack_as_bytes:
            http.raw_body = body
        elif body:
            http.body = body.decode("latin-1")
    attrs.context_extensions.update(context_extensions)
    return msg


def _request_mutations_pb(options) -> tuple:
    return tuple((o.header.key.lower().encode("latin-1"),
                  o.header.raw_value or o.header.value.encode("utf-8"),
                  APPEND if o.append.value else SET) for o in options)


def _mutations_pb(options) -> tuple:
    out = []
    for o in options:
        if o.HasField("append"):
            action = ADD if o.append.value else SET
        else:
            action = o.append_action if 0 <= o.append_action <= 3 else SET
        out.append((o.header.key.lower().encode("latin-1"),
                    (o.header.raw_value or o.header.value.encode("utf-8")), action))
    return tuple(out)


def read_answer_message(data: bytes) -> Answer:
    """The same as `read_answer`, read with protobuf's objects: the reference it is tested
    against."""
    try:
        r = _pb.CheckResponse.FromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise GrpcFailure(13, f"not a CheckResponse: {e}") from None
    if r.status.code == 0:
        if not r.HasField("ok_response"):
            return Answer(ALLOW)
        ok = r.ok_response
        return Answer(ALLOW, headers=_request_mutations_pb(ok.headers),
                      remove=tuple(n.lower().encode("latin-1") for n in ok.headers_to_remove),
                      response_headers=_mutations_pb(ok.response_headers_to_add),
                      query_set=tuple((q.key.encode().decode("latin-1"), q.value.encode().decode("latin-1"))
                                      for q in ok.query_parameters_to_set),
                      query_remove=tuple(q.encode().decode("latin-1") for q in ok.query_parameters_to_remove))
    if r.HasField("error_response"):
        e = r.error_response
        return Answer(ERROR, e.status.code, e.body.encode("utf-8"), _mutations_pb(e.headers))
    if r.HasField("denied_response"):
        d = r.denied_response
        return Answer(DENY, d.status.code or 403, d.body.encode("utf-8"), _mutations_pb(d.headers))
    return Answer(DENY, 403)
