"""SkyWalking's cross-process propagation header `sw8` (protocol v3), as Envoy's SkyWalking
tracer reads and writes it (its cpp2sky library: propagation_impl.cc, tracing_context_impl.cc).

`sw8: <sample>-<trace id>-<parent segment id>-<parent span id>-<parent service>-
<parent instance>-<parent endpoint>-<target address>`, every string field base64 (standard
alphabet, padded).

- Extraction (`extract`): exactly eight `-`-separated fields, the first `0` or `1`, the span id
  an integer (int32); else `InvalidContext` (Envoy then starts a new trace when the request is
  traced, a null span when not). Each base64 field decodes as cpp2sky decodes it: up to two
  `=` stripped, a character outside the alphabet or stray low bits make that field empty (not
  an error). The sample flag is not honoured: "sampling is always true".
- Injection (`encode`): `1-` (always reported), the segment's trace and segment ids, the exit
  span's id (1), this tracer's service and instance, the endpoint (the segment's entry span
  operation name: the downstream request's path) and the address the upstream was reached
  at (`ip:port`).

Must not: do I/O or keep state.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64encode
from typing import NamedTuple

from .span import InvalidContext

__all__ = ["SW8", "Reference", "extract", "encode", "b64"]

SW8 = b"sw8"
_INT = re.compile(rb"[+-]?[0-9]+")
_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class Reference(NamedTuple):
    """The caller's context, as the entry span's SegmentReference carries it (bytes as they
    decoded: strings on the wire)."""
    trace_id: bytes
    segment_id: bytes
    span_id: int
    service: bytes
    instance: bytes
    endpoint: bytes
    target: bytes


def _decode(field: bytes) -> bytes:
    """cpp2sky's Base64::decodeWithoutPadding: b"" for anything it cannot decode."""
    n = len(field)
    if field.endswith(b"="):
        n -= 2 if field.endswith(b"==") else 1
    body = field[:n]
    if not body or n % 4 == 1 or not _ALPHABET.issuperset(body):
        return b""
    try:
        out = binascii.a2b_base64(body + b"=" * (-n % 4), strict_mode=True)
    except binascii.Error:
        return b""
    # Stray bits in the last character (cpp2sky's decodeLast): not a canonical encoding.
    if binascii.b2a_base64(out, newline=False).rstrip(b"=") != body:
        return b""
    return out


def extract(value: bytes) -> Reference:
    fields = value.split(b"-")
    if len(fields) != 8:
        raise InvalidContext("sw8: it must have 8 fields")
    if fields[0] not in (b"0", b"1"):
        raise InvalidContext("sw8: the sample field must be 0 or 1")
    raw_id = fields[3].strip(b" \t\r\n\v\f")
    if not _INT.fullmatch(raw_id):
        raise InvalidContext("sw8: the span id must be an integer")
    span_id = int(raw_id)
    if not -2**31 <= span_id < 2**31:
        raise InvalidContext("sw8: the span id is out of range")
    d = _decode
    return Reference(d(fields[1]), d(fields[2]), span_id, d(fields[4]), d(fields[5]),
                     d(fields[6]), d(fields[7]))


def b64(data: bytes) -> bytes:
    return b64encode(data)


def encode(trace_id: bytes, segment_id: bytes, service_b64: bytes, instance_b64: bytes,
           endpoint: bytes, target: bytes) -> bytes:
    """The sw8 value an exit span (span id 1) sends upstream; service and instance come
    encoded (they are the tracer's, encoded once)."""
    return b"-".join((b"1", b64encode(trace_id), b64encode(segment_id), b"1", service_b64,
                      instance_b64, b64encode(endpoint), b64encode(target)))
