"""The rate limit service's messages (envoy.service.ratelimit.v3) in protobuf's wire format,
without protobuf: the RateLimitRequest written as Envoy's GrpcClientImpl::createRequest builds
it (`rate_limit_request`), the RateLimitResponse read into an `Answer` (`read_answer`), and the
DRAFT_VERSION_03 `x-ratelimit-*` headers made from its statuses (`x_ratelimit_headers`, Envoy's
XRateLimitHeaderUtils::create).

RateLimitRequest: `domain` = 1, `descriptors` = 2 (RateLimitDescriptor: `entries` = 1, each
Entry `key` = 1, `value` = 2), `hits_addend` = 3 (0 here, as Envoy without the
envoy.ratelimit.hits_addend filter state: not written). Descriptor keys and values are bytes
and go as they are (Envoy's C++ sends header bytes unchecked).

RateLimitResponse: `overall_code` = 1 (OVER_LIMIT = 2; anything else is OK, as Envoy's
onSuccess), `statuses` = 2 (DescriptorStatus: `code` = 1, `current_limit` = 2 {requests_per_unit
= 1, unit = 2, name = 3}, `limit_remaining` = 3, `duration_until_reset` = 4 {seconds = 1}),
`response_headers_to_add` = 3 and `request_headers_to_add` = 4 (HeaderValue `key` = 1, `value`
= 2; keys lower-cased, added in order), `raw_body` = 5. dynamic_metadata and quota are not read
(no filter here reads dynamic metadata). A header the service sends that no header can carry
(a name that is not a token, a value with CR, LF or NUL) is dropped: it would split the
message on the wire.

Why by hand: see ext_authz_wire.py (protobuf's pure-Python backend on 3.14t costs several times
the bytecodes). tests/unit/test_ratelimit_wire.py checks both directions against protobuf's
own classes. Thread affinity: none (pure functions over bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...grpc.protobuf_wire import read_fields, varint
from ...grpc.unary import GrpcFailure

__all__ = ["Answer", "rate_limit_request", "read_answer", "x_ratelimit_headers", "OK", "OVER_LIMIT"]

OK, OVER_LIMIT = 1, 2
_DOMAIN, _DESCRIPTOR, _ENTRY, _KEY, _VALUE = b"\x0a", b"\x12", b"\x0a", b"\x0a", b"\x12"
# Window of each RateLimitResponse.RateLimit.Unit, in seconds (Envoy's convertRateLimitUnit).
_WINDOWS = {1: 1, 2: 60, 3: 3600, 4: 86400, 7: 7 * 86400, 5: 30 * 86400, 6: 365 * 86400}
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _ld(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else varint(n)) + payload


def rate_limit_request(domain: bytes, descriptors: list) -> bytes:
    """The serialized RateLimitRequest: `descriptors` is a list of tuples of (key, value) bytes."""
    out = [_ld(_DOMAIN, domain)] if domain else []
    for d in descriptors:
        entries = b"".join(_ld(_ENTRY, (_ld(_KEY, k) if k else b"") + (_ld(_VALUE, v) if v else b""))
                           for k, v in d)
        out.append(_ld(_DESCRIPTOR, entries))
    return b"".join(out)


@dataclass(slots=True)
class Answer:
    over_limit: bool
    response_headers: tuple = ()     # (name, value), lower-case names
    request_headers: tuple = ()
    body: bytes = b""
    statuses: tuple = ()             # (requests_per_unit, unit, name, limit_remaining, reset_s) with a limit


def _one(fields: dict, number: int, default=b""):
    v = fields.get(number)
    return v[-1] if v else default


def _headers(raw: list) -> tuple:
    out = []
    for item in raw:
        h = read_fields(item)
        name = _one(h, 1).lower()
        value = _one(h, 2)
        if not name or not _TOKEN.issuperset(name) or b"\r" in value or b"\n" in value or b"\0" in value:
            continue
        out.append((name, value))
    return tuple(out)


def _statuses(raw: list) -> tuple:
    out = []
    for item in raw:
        s = read_fields(item)
        if 2 not in s:
            continue   # no current_limit: not in the headers (Envoy's rule)
        limit = read_fields(b"".join(s[2]))
        reset = read_fields(b"".join(s[4])) if 4 in s else {}
        out.append((_one(limit, 1, 0), _one(limit, 2, 0), _one(limit, 3).decode("utf-8", "replace"),
                    _one(s, 3, 0), _one(reset, 1, 0)))
    return tuple(out)


def read_answer(data: bytes, with_statuses: bool) -> Answer:
    """A RateLimitResponse's bytes as an Answer (statuses only when `with_statuses`). Raises
    GrpcFailure (INTERNAL) when the bytes are not a RateLimitResponse."""
    try:
        r = read_fields(data)
        return Answer(over_limit=_one(r, 1, 0) == OVER_LIMIT,
                      response_headers=_headers(r[3]) if 3 in r else (),
                      request_headers=_headers(r[4]) if 4 in r else (),
                      body=_one(r, 5),
                      statuses=_statuses(r[2]) if with_statuses and 2 in r else ())
    except (ValueError, IndexError, TypeError, AttributeError) as e:
        raise GrpcFailure(13, f"not a RateLimitResponse: {e}") from None


def x_ratelimit_headers(statuses: tuple) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-limit / -remaining / -reset from the statuses with a limit (Envoy 1.40's
    DRAFT_VERSION_03): the one with the fewest remaining gives the limit, the remaining count
    and the seconds to reset; the limit is followed by each status's quota policy
    (`, <limit>;w=<window s>` and `;name="<name>"` when named; a status of unknown unit has
    none). No status with a limit: no headers."""
    if not statuses:
        return []
    least = None
    policy = []
    for s in statuses:
        if least is None or s[3] < least[3]:
            least = s
        window = _WINDOWS.get(s[1], 0)
        if window:
            policy.append(f", {s[0]};w={window}" + (f';name="{s[2]}"' if s[2] else ""))
    return [(b"x-ratelimit-limit", (f"{least[0]}" + "".join(policy)).encode("utf-8")),
            (b"x-ratelimit-remaining", b"%d" % least[3]),
            (b"x-ratelimit-reset", b"%d" % least[4])]
