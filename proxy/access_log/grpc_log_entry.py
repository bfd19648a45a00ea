"""One request's (or connection's) access-log entry as protobuf bytes: an
`envoy.data.accesslog.v3.HTTPAccessLogEntry` or `TCPAccessLogEntry`, filled from a StreamInfo as
Envoy 1.40's gRPC access loggers fill them (grpc_access_log_utils.cc,
http_grpc_access_log_impl.cc, tcp_grpc_access_log_impl.cc), encoded by hand
(proxy/grpc/protobuf_wire.py): the worker that finished the request encodes it, without the
`protobuf` package (its upb backend takes the GIL on 3.14t).

What is filled (each only when the StreamInfo knows it, as Envoy leaves a field unset):
- common_properties: downstream remote / local / direct remote addresses, start_time,
  time_to_last_rx_byte, time_to_first/last_upstream_tx_byte, time_to_first/last_upstream_rx_byte,
  time_to_first/last_downstream_tx_byte, duration, upstream remote / local address and cluster,
  response_flags (the ResponseFlags message), metadata (the dynamic metadata as
  `filter_metadata` Structs), upstream_transport_failure_reason, route_name,
  upstream_request_attempt_count, stream_id (the request's x-request-id; a UUID of the
  connection for TCP), tls_properties on a TLS connection (version, SNI, the certificates'
  subjects and URI SANs), access_log_type (DownstreamEnd /
  TcpConnectionEnd); for TCP the downstream_wire_bytes and upstream_wire_bytes (the
  connection's bytes: what tcp_proxy relays is what crosses the wire).
- HTTP: protocol_version, request (method, scheme, authority, path, user_agent, referer,
  forwarded_for, request_id, original_path, request_headers_bytes, request_body_bytes, the
  `additional_request_headers_to_log`), response (response_code, response_headers_bytes,
  response_body_bytes, response_code_details, the additional response headers / trailers).
- TCP: connection_properties (received_bytes, sent_bytes).
Not filled (ftproxy does not measure them): HTTP's wire byte counts (downstream/upstream
`*_wire_bytes_*`, `*_header_bytes_*`), TLS cipher suite id and session id, sample_rate,
filter_state_objects, custom_tags.

Times: the last-upstream-byte times are approximations from what the StreamInfo records
(last tx: the later of the first upstream byte and the request's end; last rx: the response's
end). Must not: do I/O or read clocks (the StreamInfo carries the times).
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ..grpc.protobuf_wire import varint as _slow_varint


# -- the wire format, specialised (an entry is ~40 fields: protobuf_wire's general functions
# cost a third of its time) ----------------------------------------------------------------------
_SMALL = [bytes([i]) for i in range(128)]


def varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    return _slow_varint(n)


_TAG2 = [_slow_varint(f << 3 | 2) for f in range(64)]
_TAG0 = [_slow_varint(f << 3) for f in range(64)]


def length_delimited(field: int, data: bytes) -> bytes:
    n = len(data)
    return _TAG2[field] + (_SMALL[n] if n < 128 else varint(n)) + data


def string(field: int, text: str) -> bytes:
    if not text:
        return b""
    return length_delimited(field, text.encode("utf-8", "replace"))


def uint(field: int, n: int) -> bytes:
    return _TAG0[field] + varint(n) if n else b""

__all__ = ["encode_http_entry", "encode_tcp_entry", "address_message", "RESPONSE_FLAG_FIELDS",
           "HTTP_PROTOCOLS", "REQUEST_METHODS", "ACCESS_LOG_TYPE_DOWNSTREAM_END",
           "ACCESS_LOG_TYPE_TCP_CONNECTION_END", "struct_message"]

ACCESS_LOG_TYPE_TCP_CONNECTION_END = 3
ACCESS_LOG_TYPE_DOWNSTREAM_END = 6

# Envoy's short response flags -> envoy.data.accesslog.v3.ResponseFlags field numbers (bools).
RESPONSE_FLAG_FIELDS = {
    "LH": 1, "UH": 2, "UT": 3, "LR": 4, "UR": 5, "UF": 6, "UC": 7, "UO": 8, "NR": 9, "DI": 10,
    "FI": 11, "RL": 12, "RLSE": 14, "DC": 15, "URX": 16, "SI": 17, "IH": 18, "DPE": 19,
    "UMSDR": 20, "RFCF": 21, "NFCF": 22, "DT": 23, "UPE": 24, "NC": 25, "OM": 26, "DF": 27,
    "DR": 28,
}
_UNAUTHORIZED = length_delimited(13, uint(1, 1))   # UAEX: unauthorized_details {EXTERNAL_SERVICE}

HTTP_PROTOCOLS = {"HTTP/1.0": 1, "HTTP/1.1": 2, "HTTP/2": 3, "HTTP/3": 4}
REQUEST_METHODS = {"GET": 1, "HEAD": 2, "POST": 3, "PUT": 4, "DELETE": 5, "CONNECT": 6,
                   "OPTIONS": 7, "TRACE": 8, "PATCH": 9}
_TLS_VERSIONS = {"TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}
_DOUBLE = struct.Struct("<d").pack
# ftproxy keeps a connect failure's reason as Envoy's formatter prints it; Envoy's entries
# carry the reason itself ("delayed connect error: Connection refused").
_DELAYED = re.compile(r"^delayed_connect_error: ")


# -- small messages -----------------------------------------------------------------------------
def address_message(addr: str | None) -> bytes:
    """`config.core.v3.Address` of "ip:port" / "[v6]:port" (a SocketAddress), or a pipe path."""
    if not addr:
        return b""
    if addr.startswith("["):
        end = addr.find("]")
        host, port = addr[1:end], addr[end + 2:]
    elif addr.count(":") == 1:
        host, port = addr.rsplit(":", 1)
    else:
        return length_delimited(2, string(1, addr))     # Pipe {path}
    sock = string(2, host) + uint(3, int(port) if port.isdigit() else 0)
    return length_delimited(1, sock)


def _timestamp(epoch: float) -> bytes:
    """A Timestamp to the microsecond (Envoy's clock's resolution; a float's nanoseconds past
    1e9 seconds are noise)."""
    seconds = int(epoch)
    micros = round((epoch - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return uint(1, seconds) + uint(2, micros * 1000)


def _duration(start: float | None, end: float | None) -> bytes | None:
    if start is None or end is None:
        return None
    nanos = round((end - start) * 1e9)
    if nanos <= 0:
        return b""
    if nanos < 1_000_000_000:
        return b"\x10" + varint(nanos)
    seconds, nanos = divmod(nanos, 1_000_000_000)
    return uint(1, seconds) + uint(2, nanos)


def _timed(tag: bytes, d: bytes) -> bytes:
    """A Duration field (`tag`: its one-byte tag) of a Duration's encoding."""
    return tag + _SMALL[len(d)] + d if len(d) < 128 else tag + varint(len(d)) + d


MAX_CACHED = 4096        # encodings a worker's cache keeps; past it the cache starts over


def _address_field(field: int, addr: str, cache: dict | None) -> bytes:
    """The whole `field` (an Address) of `addr`, from the worker's cache when it has it
    (the listener's address, the upstream hosts and the peers repeat)."""
    if cache is None:
        return length_delimited(field, address_message(addr))
    key = (field, addr)
    out = cache.get(key)
    if out is None:
        if len(cache) >= MAX_CACHED:
            cache.clear()
        out = cache[key] = length_delimited(field, address_message(addr))
    return out


def _value(v: Any) -> bytes:
    """`google.protobuf.Value`."""
    if v is None:
        return b"\x08\x00"                               # null_value NULL_VALUE
    if v is True or v is False:
        return b"\x20" + (b"\x01" if v else b"\x00")     # bool_value
    if isinstance(v, (int, float)):
        return b"\x11" + _DOUBLE(float(v))               # number_value
    if isinstance(v, str):
        return length_delimited(3, v.encode("utf-8", "replace"))
    if isinstance(v, Mapping):
        return length_delimited(5, struct_message(v))
    if isinstance(v, (list, tuple)):
        return length_delimited(6, b"".join(length_delimited(1, _value(x)) for x in v))
    return length_delimited(3, str(v).encode("utf-8", "replace"))


def struct_message(d: Mapping[str, Any]) -> bytes:
    """`google.protobuf.Struct` (fields: map<string, Value>)."""
    return b"".join(length_delimited(1, string(1, str(k)) + length_delimited(2, _value(v)))
                    for k, v in d.items())


def _map_entry(field: int, key: str, value: str) -> bytes:
    return length_delimited(field, string(1, key) + string(2, value))


def _response_flags(flags: Iterable[str]) -> bytes:
    out = []
    for f in flags:
        n = RESPONSE_FLAG_FIELDS.get(f)
        if n is not None:
            out.append(varint(n << 3) + b"\x01")
        elif f == "UAEX":
            out.append(_UNAUTHORIZED)
    return length_delimited(16, b"".join(out)) if out else b""


def _tls_properties(ssl: Any, sni: str | None) -> bytes:
    """TLSProperties of the downstream connection (proxy.tls.info.TlsInfo): version, SNI, the
    certificates' subjects and URI SANs (no cipher suite id, no session id: TlsInfo has
    neither)."""
    parts = [uint(1, _TLS_VERSIONS.get(getattr(ssl, "tls_version", "") or "", 0))]
    if sni:
        parts.append(string(3, sni))
    parts.append(length_delimited(4, _cert_properties(ssl.local_uri_sans, ssl.local_subject)))
    parts.append(length_delimited(5, _cert_properties(ssl.peer_uri_sans, ssl.peer_subject)))
    return length_delimited(4, b"".join(parts))


def _cert_properties(uri_sans: Iterable[str], subject: str | None) -> bytes:
    sans = b"".join(length_delimited(1, string(1, u)) for u in uri_sans or ())
    return sans + string(2, subject or "")


def _attempt_count(info: Any) -> int:
    """As the %UPSTREAM_REQUEST_ATTEMPT_COUNT% operator: set once the router had a host."""
    n = info.upstream_request_attempt_count
    if n:
        return n
    return 1 if info.upstream_cluster is not None and "UH" not in info.response_flags else 0


# -- common properties --------------------------------------------------------------------------
def _common(info: Any, log_type: int, stream_id: str, wire: tuple[int, int] | None,
            cache: dict | None) -> bytes:
    parts = []
    add = parts.append
    if info.downstream_remote_address:
        add(_address_field(2, info.downstream_remote_address, cache))
    if info.downstream_local_address:
        add(_address_field(3, info.downstream_local_address, cache))
    ssl = getattr(info, "downstream_ssl", None)
    if ssl is not None:
        add(_tls_properties(ssl, info.requested_server_name))
    if info.start_time is not None:
        add(length_delimited(5, _timestamp(info.start_time)))
    start = info.start_monotonic
    first_tx = info.first_upstream_tx_monotonic
    first_rx = info.first_upstream_rx_monotonic
    end = info.end_monotonic
    last_tx = None
    if first_tx is not None:
        done = info.request_complete_monotonic
        last_tx = first_tx if done is None or done < first_tx else done
    for tag, at in ((b"\x32", info.request_complete_monotonic), (b"\x3a", first_tx),
                    (b"\x42", last_tx), (b"\x4a", first_rx),
                    (b"\x52", end if first_rx is not None else None),
                    (b"\x5a", info.response_start_monotonic),
                    (b"\x62", end if info.response_start_monotonic is not None else None)):
        if at is not None and start is not None:
            add(_timed(tag, _duration(start, at)))
    if info.upstream_host:
        add(_address_field(13, info.upstream_host, cache))
    if info.upstream_local_address:
        add(_address_field(14, info.upstream_local_address, cache))
    if info.upstream_host and info.upstream_cluster:
        add(string(15, info.upstream_cluster))
    add(_response_flags(info.response_flags))
    metadata = getattr(info, "dynamic_metadata", None)
    if metadata:
        add(length_delimited(17, b"".join(
            length_delimited(1, string(1, ns) + length_delimited(2, struct_message(values)))
            for ns, values in metadata.items() if isinstance(values, Mapping))))
    reason = info.upstream_transport_failure_reason
    if reason:
        add(string(18, _DELAYED.sub("delayed connect error: ", reason)))
    if info.route_name:
        add(string(19, info.route_name))
    if info.downstream_direct_remote_address:
        add(_address_field(20, info.downstream_direct_remote_address, cache))
    d = _duration(start, end)
    if d is not None:
        add(_timed(b"\xba\x01", d))
    add(uint(24, _attempt_count(info)))
    add(string(26, stream_id))
    if wire is not None:
        received, sent = wire
        add(uint(29, sent) + uint(30, received))
        if info.upstream_host and info.upstream_local_address:
            add(uint(31, received) + uint(32, sent))
    # A listener's log says NotSet (0, not written), as Envoy's emitLogs (StreamInfo.access_log_type).
    override = info.access_log_type if hasattr(info, "access_log_type") else None
    add(uint(33, log_type if override is None else override))
    return length_delimited(1, b"".join(parts))


# -- entries -------------------------------------------------------------------------------------
def _logged_headers(field: int, source: Any, names: tuple[str, ...]) -> bytes:
    """A map<string, string> of the named headers present (several values joined by ",")."""
    if source is None or not names:
        return b""
    headers = getattr(source, "headers", None)
    out = []
    for name in names:
        if headers is not None and name[:1] != ":" and name != "host":
            values = headers.get_all(name.encode("latin-1"))
            if values:
                out.append(_map_entry(field, name, b",".join(values).decode("latin-1")))
            continue
        v = source.get_str(name)
        if v is not None:
            out.append(_map_entry(field, name, v))
    return b"".join(out)


def _header_bytes(head: Any, pseudo: tuple[bytes, ...]) -> int:
    """Envoy's HeaderMap::byteSize(): every key and value's length, pseudo-headers included."""
    if head is None:
        return 0
    headers = getattr(head, "headers", None)
    n = sum(len(k) + len(v) for k, v in headers if k != b"host") if headers is not None else 0
    return n + sum(len(p) for p in pseudo)    # (host is the :authority, counted once)


def _request_pseudo(req: Any) -> tuple[bytes, ...]:
    return (b":authority", req.authority, b":path", req.path, b":method", req.method,
            b":scheme", req.scheme)


def encode_http_entry(info: Any, request_headers: tuple[str, ...] = (),
                      response_headers: tuple[str, ...] = (),
                      response_trailers: tuple[str, ...] = (), cache: dict | None = None) -> bytes:
    """An HTTPAccessLogEntry of one finished request. `cache`: the worker's dict of encodings
    that repeat (addresses), or None."""
    req = info.request_headers
    get = req.get_str if req is not None else (lambda _name: None)
    request_id = get("x-request-id") or ""
    parts = [_common(info, ACCESS_LOG_TYPE_DOWNSTREAM_END, request_id, None, cache)]
    parts.append(uint(2, HTTP_PROTOCOLS.get(info.protocol or "", 0)))
    r = []
    if req is not None:
        method = get(":method") or ""
        r.append(uint(1, REQUEST_METHODS.get(method, 0)))
        for field, name in ((2, ":scheme"), (3, ":authority"), (5, ":path"), (6, "user-agent"),
                            (7, "referer"), (8, "x-forwarded-for"), (9, "x-request-id"),
                            (10, "x-envoy-original-path")):
            v = get(name)
            if v is not None:
                r.append(length_delimited(field, v.encode("utf-8", "replace")))
        r.append(uint(11, _header_bytes(req, _request_pseudo(req) if hasattr(req, "method") else ())))
    r.append(uint(12, info.bytes_received))
    r.append(_logged_headers(13, req, request_headers))
    parts.append(length_delimited(3, b"".join(r)))
    resp = info.response_headers
    s = []
    if info.response_code:
        s.append(length_delimited(1, uint(1, info.response_code)))
    if resp is not None:
        n = _header_bytes(resp, (b":status", str(info.response_code or 0).encode()))
        if info.response_code_details != "via_upstream" and not info.bytes_sent:
            # Envoy's local reply without a body has no content-length in its header map
            # (its codec writes the "0"): ftproxy's has one.
            n -= sum(14 + len(v) for k, v in resp.headers if k == b"content-length")
        s.append(uint(2, n))
    s.append(uint(3, info.bytes_sent))
    s.append(_logged_headers(4, resp, response_headers))
    s.append(_logged_headers(5, info.response_trailers, response_trailers))
    if info.response_code_details:
        s.append(string(6, info.response_code_details))
    parts.append(length_delimited(4, b"".join(s)))
    return b"".join(parts)


def encode_tcp_entry(info: Any, cache: dict | None = None) -> bytes:
    """A TCPAccessLogEntry of one finished tcp_proxy connection."""
    wire = (info.bytes_received, info.bytes_sent)
    common = _common(info, ACCESS_LOG_TYPE_TCP_CONNECTION_END, str(uuid.uuid4()), wire, cache)
    return common + length_delimited(2, uint(1, info.bytes_received) + uint(2, info.bytes_sent))
