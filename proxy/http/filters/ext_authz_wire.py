"""ext_authz's gRPC messages in protobuf's wire format, without protobuf: the CheckRequest
written as Envoy builds it (`check_request`), the CheckResponse read into an `Answer`
(`read_answer`), and what the filter does with an answer's headers (`apply_mutations`,
`invalid_header`) and query parameters (`rewrite_query`).

The CheckRequest (Envoy's CheckRequestUtils::createHttpCheck): `attributes.source.address` (the
connection's peer; `service` from x-envoy-downstream-service-cluster), `destination.address`
(the local address), `request.time`, `request.http`: `id` (a random stream id), `method`,
`path`, `host`, `scheme`, `protocol`, `size` (body bytes received so far: more than the body
sent when it was cut), `headers` (lower-case names, the pseudo-headers among them, duplicates
joined with ","; only those `allowed_headers` matches when it is set), the body when
`with_request_body` (as `body`, or `raw_body` with `pack_as_bytes`;
`x-envoy-auth-partial-body` says whether it was cut), and `context_extensions` (the route
levels' merged). Bytes go as they are, as Envoy's C++ sends them.

The CheckResponse (Envoy's GrpcClientImpl::onSuccess): status OK -> allowed with
`ok_response` (`headers`, `headers_to_remove`, `response_headers_to_add`,
`query_parameters_to_set/remove`); `error_response` -> an error (its status, body, headers);
else denied (`denied_response`: status, default 403, headers, body). The request's headers
(ok_response.headers): `append` true -> joined to an existing header with "," (nothing when
absent), else overwritten; append_action is not read there (as Envoy 1.40, found by the
differential case). Response and denial headers: `append` true -> added, false -> overwritten,
unset -> `append_action`.

Why not protobuf's objects: on a free-threaded build protobuf runs its pure-Python backend
(the upb one turns the GIL on), where the same two messages cost ~6x the bytecodes (~16.8k
per check against ~2.6k, four times a whole proxied request's: perf/RESULTS.md).
ext_authz_proto.py builds and reads them with protobuf's objects: the reference
tests/unit/test_ext_authz_grpc_wire.py compares these with, field by field.

Thread affinity: none (pure functions over bytes; the filter calls them on its worker).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...grpc.protobuf_wire import read_fields, varint
from ...grpc.unary import GrpcFailure

__all__ = ["Answer", "apply_mutations", "check_request", "invalid_header", "read_answer",
           "rewrite_query", "ALLOW", "DENY", "ERROR"]

ALLOW, DENY, ERROR = 0, 1, 2
# How one header is applied (HeaderValueOption): Envoy's HeaderAppendAction, plus the
# deprecated `append: true` on a request header (append to the existing value, comma-separated).
ADD, ADD_IF_ABSENT, SET, SET_IF_EXISTS, APPEND = 0, 1, 2, 3, 4


# -- the request -------------------------------------------------------------------------------
_PROTOCOLS = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0", b"2": b"HTTP/2", b"2.0": b"HTTP/2", b"3": b"HTTP/3"}

# Field numbers (envoy/service/auth/v3/*.proto, envoy/config/core/v3/address.proto; wire-stable,
# and test_ext_authz_grpc_wire.py checks them against the descriptors), as length-delimited tags.
_ATTRIBUTES = b"\x0a"                                   # CheckRequest.attributes = 1
_SOURCE, _DESTINATION, _REQUEST, _CONTEXT = b"\x0a", b"\x12", b"\x22", b"\x52"   # 1, 2, 4, 10
_PEER_ADDRESS, _PEER_SERVICE = b"\x0a", b"\x12"          # Peer.address = 1, service = 2
_SOCKET_ADDRESS, _SA_ADDRESS, _SA_PORT = b"\x0a", b"\x12", b"\x18"  # 1; address = 2; port_value = 3 (varint)
_TIME, _HTTP = b"\x0a", b"\x12"                          # Request.time = 1, http = 2
_SECONDS, _NANOS = b"\x08", b"\x10"                      # Timestamp (varints)
_ID, _METHOD, _HEADERS, _PATH, _HOST, _SCHEME = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32"
_SIZE, _PROTOCOL, _BODY, _RAW_BODY = b"\x48", b"\x52", b"\x5a", b"\x62"  # 9 (varint), 10, 11, 12
_KEY, _VALUE = b"\x0a", b"\x12"                          # a map entry's key = 1, value = 2


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else varint(n)) + payload


def _entry(key: bytes, value: bytes) -> bytes:
    """A map<string, string> entry's payload."""
    return _ld(_KEY, key) + _ld(_VALUE, value) if value else _ld(_KEY, key)


def _peer(text: str | None, service: bytes = b"") -> bytes:
    out = b""
    if text:
        host, _, port = text.rpartition(":")
        if host.startswith("["):
            host = host[1:-1]
        sa = _ld(_SA_ADDRESS, host.encode("latin-1")) if host else b""
        if port.isdigit() and int(port):
            sa += _SA_PORT + varint(int(port))
        out = _ld(_PEER_ADDRESS, _ld(_SOCKET_ADDRESS, sa))
    if service:
        out += _ld(_PEER_SERVICE, service)
    return out


def check_request(head, info, stream_id: int, allowed: tuple, body: bytes | None, partial: bool,
                  pack_as_bytes: bool, context_extensions: dict[str, str]) -> bytes:
    """The serialized CheckRequest for `head` (RequestHead) on the stream `info` (StreamInfo),
    written directly in protobuf's wire format: on a free-threaded build protobuf runs its
    pure-Python backend, where building the same message as objects costs ~20x the bytecodes
    (perf/RESULTS.md). Bytes go as they are, as Envoy's C++ sends them (no UTF-8 check).
    `check_request_message` builds the same request as protobuf objects (the reference)."""
    merged: dict[bytes, bytes] = {}
    pseudo = ((b":authority", head.authority), (b":path", head.path), (b":method", head.method),
              (b":scheme", head.scheme))
    service = b""
    for name, value in (*pseudo, *head.headers.fields):
        if name == b"host" or name == b"x-envoy-auth-partial-body":
            continue
        if allowed and not any(m.match(name.decode("latin-1")) for m in allowed):
            continue
        if name == b"x-envoy-downstream-service-cluster":
            service = value
        old = merged.get(name)
        merged[name] = value if old is None else old + b"," + value
    if body is not None:
        merged[b"x-envoy-auth-partial-body"] = b"true" if partial else b"false"
    http = [_ld(_ID, b"%d" % stream_id), _ld(_METHOD, head.method)]
    http.extend(_ld(_HEADERS, _entry(k, v)) for k, v in merged.items())
    if head.path:
        http.append(_ld(_PATH, head.path))
    if head.authority:
        http.append(_ld(_HOST, head.authority))
    if head.scheme:
        http.append(_ld(_SCHEME, head.scheme))
    if info.bytes_received:   # the body bytes received so far (Envoy's bytesReceived)
        http.append(_SIZE + varint(info.bytes_received))
    protocol = _PROTOCOLS.get(head.http_version)
    if protocol:
        http.append(_ld(_PROTOCOL, protocol))
    if body:
        http.append(_ld(_RAW_BODY if pack_as_bytes else _BODY, body))
    request = b""
    if info.start_time:
        ns = int(info.start_time * 1e9)
        seconds, nanos = divmod(ns, 1_000_000_000)
        request = _ld(_TIME, _SECONDS + varint(seconds) + (_NANOS + varint(nanos) if nanos else b""))
    request += _ld(_HTTP, b"".join(http))
    attrs = [_ld(_SOURCE, _peer(info.downstream_direct_remote_address, service)),
             _ld(_DESTINATION, _peer(info.downstream_local_address)), _ld(_REQUEST, request)]
    attrs.extend(_ld(_CONTEXT, _entry(k.encode("utf-8"), v.encode("utf-8")))
                 for k, v in context_extensions.items())
    return _ld(_ATTRIBUTES, b"".join(attrs))


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


def _one(fields: dict, number: int, default=b""):
    """A singular field: the last occurrence of a scalar (protobuf's rule)."""
    v = fields.get(number)
    return v[-1] if v else default


def _message(fields: dict, number: int) -> dict:
    """A singular message field: its occurrences merged (concatenated, protobuf's rule)."""
    v = fields.get(number)
    return read_fields(b"".join(v)) if v else {}


def _options(raw: list, request: bool) -> tuple:
    """HeaderValueOptions (header = 1 {key = 1, value = 2, raw_value = 3}, append = 2
    BoolValue {value = 1}, append_action = 3). Request headers (ok_response.headers), as Envoy
    1.40 reads them: `append` true -> APPEND (to an existing header only), anything else ->
    SET. Response and denial headers: `append` true -> ADD, false -> SET; unset ->
    append_action."""
    out = []
    for item in raw:
        o = read_fields(item)
        h = _message(o, 1)
        value = _one(h, 3) or _one(h, 2)
        append = read_fields(b"".join(o[2])) if 2 in o else None
        if request:
            action = APPEND if append is not None and _one(append, 1, 0) else SET
        elif append is not None:
            action = ADD if _one(append, 1, 0) else SET
        else:
            action = _one(o, 3, 0)
            if action > 3:
                action = SET
        out.append((_one(h, 1).lower(), value, action))
    return tuple(out)


def read_answer(data: bytes) -> Answer:
    """A CheckResponse's bytes (status = 1 google.rpc.Status {code = 1}, denied_response = 2,
    ok_response = 3, error_response = 5) as an Answer, read straight from the wire format
    (`read_answer_message` reads it with protobuf's objects: the reference). Raises
    GrpcFailure (INTERNAL) when the bytes are not a CheckResponse."""
    try:
        r = read_fields(data)
        code = _one(_message(r, 1), 1, 0)
        if code == 0:
            if 3 not in r:
                return Answer(ALLOW)
            ok = _message(r, 3)
            query = tuple((p.get(1, [b""])[-1].decode("latin-1"), p.get(2, [b""])[-1].decode("latin-1"))
                          for p in map(read_fields, ok.get(7, ())))
            return Answer(ALLOW, headers=_options(ok.get(2, ()), True),
                          remove=tuple(n.lower() for n in ok.get(5, ())),
                          response_headers=_options(ok.get(6, ()), False), query_set=query,
                          query_remove=tuple(q.decode("latin-1") for q in ok.get(8, ())))
        for number, kind in ((5, ERROR), (2, DENY)):
            if number in r:
                d = _message(r, number)
                status = _one(_message(d, 1), 1, 0) or (403 if kind == DENY else 0)
                return Answer(kind, status, _one(d, 3), _options(d.get(2, ()), False))
        return Answer(DENY, 403)
    except (ValueError, IndexError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise GrpcFailure(13, f"not a CheckResponse: {e}") from None


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def invalid_header(mutations) -> str | None:
    """Envoy's check of the request headers after a filter changed them
    (HeaderUtility::checkValidRequestHeaders): the message for the first mutation whose name is
    not a token or whose value holds CR, LF or NUL, else None."""
    for name, value, _ in mutations:
        if not name or not _TOKEN.issuperset(name):
            return "invalid header name: " + name.decode("latin-1")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            return "invalid header value for: " + name.decode("latin-1")
    return None


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
