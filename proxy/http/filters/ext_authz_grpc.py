"""ext_authz's gRPC authorization service (`envoy.service.auth.v3.Authorization/Check`): its
config, the CheckRequest built as Envoy builds it, and the CheckResponse read into an `Answer`.
The filter (ext_authz.py) sends the request over the worker's AsyncClient and applies the
answer.

Config `grpc_service` (envoy.config.core.v3.GrpcService): `envoy_grpc.cluster_name`,
`envoy_grpc.authority` (default the cluster's name), `timeout` (ext_authz's default 200 ms),
`initial_metadata` (values with Envoy's header value syntax, formatted per call).

The CheckRequest (Envoy's CheckRequestUtils::createHttpCheck): `attributes.source.address` (the
connection's peer; `service` from x-envoy-downstream-service-cluster), `destination.address`
(the local address), `request.time`, `request.http`: `id` (a random stream id), `method`,
`path`, `host`, `scheme`, `protocol`, `size` (body bytes received so far, more than the body sent when cut), `headers` (lower-case
names, the pseudo-headers among them, duplicates joined with ","; only those `allowed_headers`
matches when it is set), the body when `with_request_body` (as `body`, or `raw_body` with
`pack_as_bytes`; `x-envoy-auth-partial-body` says whether it was cut), and
`context_extensions` (the route levels' merged). The body is appended to the serialized message
as one more occurrence of the nested fields (protobuf merges them): bytes are sent as they are,
as Envoy's C++ does, without a UTF-8 check or a copy into the message.

The CheckResponse (Envoy's GrpcClientImpl::onSuccess): status OK -> allowed with
`ok_response` (`headers`, `headers_to_remove`, `response_headers_to_add`,
`query_parameters_to_set/remove`); `error_response` -> an error (its status, body, headers);
else denied (`denied_response`: status, default 403, headers, body). The request's headers
(ok_response.headers): `append` true -> joined to an existing header with "," (nothing when
absent), else overwritten; append_action is not read there (as Envoy 1.40, found by the
differential case). Response and denial headers: `append` true -> added, false -> overwritten,
unset -> `append_action`.

Thread affinity: config on the main thread (which imports protobuf: proxy/grpc/protobuf_env.py
first); `check_request` and `read_answer` on the worker that owns the stream (each message is
built and dropped there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...grpc.unary import GrpcFailure
from ...config.reader import ConfigError, Fields, header_bytes
from ...router.header_mutation import ValueFormat, compile_value_format

__all__ = ["Answer", "GrpcAuthzService", "check_request", "load_protos", "parse_grpc_service",
           "read_answer", "ALLOW", "DENY", "ERROR"]

SERVICE_PATH = b"/envoy.service.auth.v3.Authorization/Check"
ALLOW, DENY, ERROR = 0, 1, 2
# How one header is applied (HeaderValueOption): Envoy's HeaderAppendAction, plus the
# deprecated `append: true` (append to the existing value, comma-separated).
ADD, ADD_IF_ABSENT, SET, SET_IF_EXISTS, APPEND = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class GrpcAuthzService:
    cluster: str
    authority: bytes
    timeout: float
    initial_metadata: tuple[tuple[bytes, ValueFormat], ...] = ()


GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (ext_authz)", model=GrpcAuthzService, fields=(
    used("envoy_grpc", attr="cluster", why="its own table"),
    refused("google_grpc", "the Google C++ gRPC client (envoy_grpc is the one built)"),
    used("timeout", why="default 200 ms, as ext_authz's"),
    used("initial_metadata"),
    refused("retry_policy", "retries of the check call"),
))
ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (ext_authz)", fields=(
    used("cluster_name", attr="cluster"),
    used("authority", why="default: the cluster's name"),
    refused("retry_policy", "retries of the check call"),
    refused("max_receive_message_length", "a limit on the CheckResponse's size"),
    refused("skip_envoy_headers", "the x-envoy-* headers are always sent"),
))
METADATA_VALUE = Message("envoy.config.core.v3.HeaderValue (ext_authz initial_metadata)", fields=(
    used("key", attr="initial_metadata"),
    used("value", attr="initial_metadata"),
    refused("raw_value"),
))


def parse_grpc_service(f: Fields, key: str) -> GrpcAuthzService:
    g = GRPC_SERVICE.read(f.value(key), f.at(key))
    if not g.has("envoy_grpc"):
        raise ConfigError(g.at("envoy_grpc"), "is required (google_grpc is not supported yet)")
    e = ENVOY_GRPC.read(g.value("envoy_grpc"), g.at("envoy_grpc"))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    metadata = []
    for item, p in g.list("initial_metadata"):
        h = METADATA_VALUE.read(item, p)
        name = h.str("key", required=True).lower()
        metadata.append((header_bytes(name, h.at("key")), compile_value_format(h.str("value", ""), h.at("value"))))
    authority = e.str("authority", "") or cluster
    load_protos()
    return GrpcAuthzService(cluster=cluster, authority=authority.encode("latin-1"),
                            timeout=g.duration("timeout", 0.2) if g.has("timeout") else 0.2,
                            initial_metadata=tuple(metadata))


# -- protobuf (imported at config load, on the main thread) ------------------------------------
_pb: Any = None


class _Protos:
    """The message classes and the field tags the body is appended with."""

    def __init__(self) -> None:
        from ...grpc import protobuf_env  # noqa: F401  before protobuf: the backend on 3.14t
        from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
        self.CheckRequest = external_auth_pb2.CheckRequest
        self.CheckResponse = external_auth_pb2.CheckResponse
        ac = attribute_context_pb2.AttributeContext.DESCRIPTOR
        req = external_auth_pb2.CheckRequest.DESCRIPTOR
        http = ac.nested_types_by_name["HttpRequest"]
        # CheckRequest.attributes -> AttributeContext.request -> Request.http -> HttpRequest.body
        self.body_path = (req.fields_by_name["attributes"].number, ac.fields_by_name["request"].number,
                          ac.nested_types_by_name["Request"].fields_by_name["http"].number)
        self.body_field = http.fields_by_name["body"].number
        self.raw_body_field = http.fields_by_name["raw_body"].number


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
        _pb = p  # noqa: PLW0603  written once on the main thread before any worker reads it
    return _pb


# -- the request -------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _set_address(peer, text: str | None) -> None:
    if not text:
        return
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    sa = peer.address.socket_address
    sa.address = host
    try:
        sa.port_value = int(port)
    except ValueError:
        pass


_PROTOCOLS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0", b"2": "HTTP/2", b"2.0": "HTTP/2", b"3": "HTTP/3"}


def check_request(head, info, stream_id: int, allowed: tuple, body: bytes | None, partial: bool,
                  pack_as_bytes: bool, context_extensions: dict[str, str]) -> bytes:
    """The serialized CheckRequest for `head` (RequestHead) on the stream `info` (StreamInfo)."""
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
    http.size = info.bytes_received   # the body bytes received so far (Envoy's bytesReceived)
    protocol = _PROTOCOLS.get(head.http_version)
    if protocol:
        http.protocol = protocol
    merged: dict[str, str] = {}
    pseudo = ((":authority", head.authority), (":path", head.path), (":method", head.method),
              (":scheme", head.scheme))
    service = None
    for name, value in (*pseudo, *head.headers.fields):
        if name == b"host" or name == b"x-envoy-auth-partial-body":
            continue
        key = name if isinstance(name, str) else name.decode("latin-1")
        if allowed and not any(m.match(key) for m in allowed):
            continue
        text = value.decode("latin-1")
        if key == "x-envoy-downstream-service-cluster":
            service = text
        if key in merged:
            merged[key] += "," + text
        else:
            merged[key] = text
    if body is not None:
        merged["x-envoy-auth-partial-body"] = "true" if partial else "false"
    http.headers.update(merged)
    if service:
        attrs.source.service = service
    if context_extensions:
        attrs.context_extensions.update(context_extensions)
    data = msg.SerializeToString()
    if body:
        a, r, h = pb.body_path
        data += _field(a, _field(r, _field(h, _field(pb.raw_body_field if pack_as_bytes else pb.body_field, body))))
    return data


# -- the answer --------------------------------------------------------------------------------
@dataclass(slots=True)
class Answer:
    kind: int                                          # ALLOW, DENY, ERROR
    status: int = 0                                    # the local reply's (0: the default)
    body: bytes = b""
    headers: tuple = ()                                # (name, value, action): request (ALLOW) or reply
    remove: tuple = ()                                 # header names (ALLOW)
    response_headers: tuple = ()                       # (name, value, action) for the client (ALLOW)
    query_set: tuple = ()                              # (key, value) (ALLOW)
    query_remove: tuple = ()


def _request_mutations(options) -> tuple:
    """ok_response.headers, as Envoy 1.40 reads them: `append` true -> APPEND (to an existing
    header only), anything else -> SET (append_action is not read here)."""
    return tuple((o.header.key.lower().encode("latin-1"),
                  o.header.raw_value or o.header.value.encode("utf-8"),
                  APPEND if o.append.value else SET) for o in options)


def _mutations(options) -> tuple:
    """response_headers_to_add and a denial's headers: `append` true -> ADD, false -> SET;
    unset -> append_action."""
    out = []
    for o in options:
        if o.HasField("append"):
            action = ADD if o.append.value else SET
        else:
            action = o.append_action if 0 <= o.append_action <= 3 else SET
        out.append((o.header.key.lower().encode("latin-1"),
                    (o.header.raw_value or o.header.value.encode("utf-8")), action))
    return tuple(out)


def read_answer(data: bytes) -> Answer:
    """A CheckResponse's bytes as an Answer (raises DecodeError when they are not one)."""
    try:
        r = _pb.CheckResponse.FromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise GrpcFailure(13, f"not a CheckResponse: {e}") from None
    if r.status.code == 0:
        if not r.HasField("ok_response"):
            return Answer(ALLOW)
        ok = r.ok_response
        return Answer(ALLOW, headers=_request_mutations(ok.headers),
                      remove=tuple(n.lower().encode("latin-1") for n in ok.headers_to_remove),
                      response_headers=_mutations(ok.response_headers_to_add),
                      query_set=tuple((q.key, q.value) for q in ok.query_parameters_to_set),
                      query_remove=tuple(ok.query_parameters_to_remove))
    if r.HasField("error_response"):
        e = r.error_response
        return Answer(ERROR, e.status.code, e.body.encode("utf-8"), _mutations(e.headers))
    if r.HasField("denied_response"):
        d = r.denied_response
        return Answer(DENY, d.status.code or 403, d.body.encode("utf-8"), _mutations(d.headers))
    return Answer(DENY, 403)


def apply_mutations(headers, mutations) -> bool:
    """Apply (name, value, action) to a Headers: True if anything changed."""
    changed = False
    for name, value, action in mutations:
        if action == SET:
            headers.set(name, value)
        elif action == ADD:
            headers.add(name, value)
        elif action == APPEND:   # only to an existing header (Envoy's headers_to_append)
            old = headers.get(name)
            if old is None:
                continue
            headers.set(name, old + b"," + value)
        elif action == ADD_IF_ABSENT:
            if headers.has(name):
                continue
            headers.add(name, value)
        elif action == SET_IF_EXISTS:
            if not headers.has(name):
                continue
            headers.set(name, value)
        changed = True
    return changed


def rewrite_query(path: bytes, to_set: tuple, to_remove: tuple) -> bytes:
    """`path` with query parameters set and removed, as Envoy's QueryParamsMulti: parameters are
    taken as they are (not decoded), a set one replaces every value of its key, and the query is
    written back with its keys sorted (each key's values in their order)."""
    base, _, query = path.partition(b"?")
    params: dict[str, list[str]] = {}
    for part in query.decode("latin-1").split("&") if query else ():
        if part:
            k, _, v = part.partition("=")
            params.setdefault(k, []).append(v)
    for key, value in to_set:
        params[key] = [value]
    for key in to_remove:
        params.pop(key, None)
    if not params:
        return base
    return base + b"?" + "&".join(f"{k}={v}" for k in sorted(params) for v in params[k]).encode("latin-1")
