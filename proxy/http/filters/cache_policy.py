"""The HTTP caching rules of `envoy.filters.http.cache` (RFC 7234 as Envoy 1.40 applies them):
which requests may be answered from the cache, which responses may be stored, how old a stored
response is and whether it must be validated first, its vary key, and byte ranges.

Envoy's cacheability_utils.cc, cache_headers_utils.cc, http_cache.cc (LookupRequest) and
range_utils.cc, in Python. Protocol logic only: no I/O, no clock (every function that needs
the time takes `now`, seconds since the epoch), nothing mutable at module level.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

__all__ = ["RequestCacheControl", "ResponseCacheControl", "request_cache_control", "lookup_fields",
           "directives_from", "storable", "Freshness", "freshness_of", "current_age",
           "must_validate",
           "response_cache_control", "request_bypasses_cache", "is_cacheable_response",
           "http_time", "age_of", "requires_validation", "vary_names", "vary_allowed",
           "vary_identifier", "byte_ranges", "CACHEABLE_STATUSES"]

# RFC 7231 6.1, RFC 7538 3, RFC 7725 3 (Envoy's cacheableStatusCodes).
CACHEABLE_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 451, 501})
# A request carrying one of these bypasses the cache (Envoy: conditional requests are not
# answered from the cache; if-match / if-unmodified-since may be ignored by caches).
_CONDITIONAL = (b"if-none-match", b"if-modified-since", b"if-range")
_MAX_STALE_ANY = float("inf")


@dataclass(frozen=True, slots=True)
class RequestCacheControl:
    must_validate: bool = False     # no-cache (or Pragma: no-cache without Cache-Control)
    no_store: bool = False
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: float | None = None  # inf: max-stale without a value


@dataclass(frozen=True, slots=True)
class ResponseCacheControl:
    must_validate: bool = False     # no-cache
    no_store: bool = False          # no-store or private
    no_stale: bool = False          # must-revalidate / proxy-revalidate
    max_age: int | None = None      # s-maxage, else max-age


_NO_REQUEST_DIRECTIVES = RequestCacheControl()


_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def _number(digits: str | bytes, limit: int) -> int | None:
    """ASCII digits as a number no greater than `limit` (Envoy's SimpleAtoi into an int64 or a
    uint64: an overflow is no number), else None. The length is checked first: a field of
    thousands of digits must not reach int() (which refuses them with an error)."""
    if not digits or len(digits) > 20 or not digits.isascii() or not digits.isdigit():
        return None
    n = int(digits)
    return n if n <= limit else None


def _duration(arg: str) -> int | None:
    """delta-seconds, optionally quoted; anything else is ignored (RFC 7234 1.2.1)."""
    if len(arg) > 1 and arg[0] == '"' and arg[-1] == '"':
        arg = arg[1:-1]
    return _number(arg, _INT64_MAX)


def _directives(value: bytes):
    for item in value.decode("latin-1").split(","):
        name, _, arg = item.strip().partition("=")
        yield name, arg


def request_cache_control(headers, ignore_header: bool = False) -> RequestCacheControl:
    """A request's directives (Envoy's LookupRequest: Cache-Control, or `Pragma: no-cache`
    when there is no Cache-Control; none at all with ignore_request_cache_control_header)."""
    if ignore_header:
        return _NO_REQUEST_DIRECTIVES
    cc = headers.get(b"cache-control")
    if not cc:
        pragma = headers.get(b"pragma")
        if pragma and any(n == "no-cache" for n, _ in _directives(pragma)):
            return RequestCacheControl(must_validate=True)
        return _NO_REQUEST_DIRECTIVES
    must_validate = no_store = False
    max_age = min_fresh = max_stale = None
    for name, arg in _directives(cc):
        if name == "no-cache":
            must_validate = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            max_age = _duration(arg)
        elif name == "min-fresh":
            min_fresh = _duration(arg)
        elif name == "max-stale":
            max_stale = _MAX_STALE_ANY if not arg else _duration(arg)
    return RequestCacheControl(must_validate, no_store, max_age, min_fresh, max_stale)


def response_cache_control(value: bytes | None) -> ResponseCacheControl:
    if not value:
        return ResponseCacheControl()
    must_validate = no_store = no_stale = False
    max_age = None
    s_maxage = False
    for name, arg in _directives(value):
        if name == "no-cache":
            must_validate = True
        elif name in ("must-revalidate", "proxy-revalidate"):
            no_stale = True
        elif name in ("no-store", "private"):
            no_store = True
        elif name == "s-maxage":
            max_age, s_maxage = _duration(arg), True
        elif name == "max-age" and not s_maxage and max_age is None:
            max_age = _duration(arg)
    return ResponseCacheControl(must_validate, no_store, no_stale, max_age)


# The request fields a lookup reads, by what they mean (one pass over the request's fields).
_BYPASS, _CC, _PRAGMA = 1, 2, 3
_REQUEST_FIELDS = {b"if-none-match": _BYPASS, b"if-modified-since": _BYPASS, b"if-range": _BYPASS,
                   b"authorization": _BYPASS, b"cache-control": _CC, b"pragma": _PRAGMA}


def lookup_fields(head) -> tuple[bool, bytes | None, bytes | None]:
    """One pass over a request's fields: (whether it bypasses the cache, its first
    Cache-Control, its first Pragma). The same answer as request_bypasses_cache and the fields
    request_cache_control reads, for the filter's hot path."""
    cc = pragma = None
    get = _REQUEST_FIELDS.get
    for name, value in head.headers.fields:
        kind = get(name)
        if kind is None:
            continue
        if kind == _BYPASS:
            return True, None, None
        if kind == _CC:
            if cc is None:
                cc = value
        elif pragma is None:
            pragma = value
    if (head.method not in (b"GET", b"HEAD") or not head.path
            or not (head.authority or head.headers.get(b"host"))
            or head.scheme not in (b"http", b"https", b"")):
        return True, None, None
    return False, cc, pragma


def directives_from(cc: bytes | None, pragma: bytes | None,
                    ignore_header: bool = False) -> RequestCacheControl:
    """request_cache_control over the two fields lookup_fields found."""
    if ignore_header or (not cc and not pragma):
        return _NO_REQUEST_DIRECTIVES
    return request_cache_control(_Fields(cc, pragma))


class _Fields:
    __slots__ = ("cc", "pragma")

    def __init__(self, cc: bytes | None, pragma: bytes | None) -> None:
        self.cc, self.pragma = cc, pragma

    def get(self, name: bytes) -> bytes | None:
        return self.cc if name == b"cache-control" else self.pragma


# The response fields is_cacheable_response reads (one pass).
_RESPONSE_FIELDS = frozenset({b"cache-control", b"date", b"expires", b"vary"})


def storable(status: int, headers, allowed_vary) -> bool:
    """is_cacheable_response in one pass over the response's fields (the filter's hot path:
    most responses are not storable, and say so early)."""
    if status not in CACHEABLE_STATUSES:
        return False
    found: dict[bytes, bytes] = {}
    wanted = _RESPONSE_FIELDS
    for name, value in headers.fields:
        if name in wanted and name not in found:
            found[name] = value
    cc = found.get(b"cache-control")
    if cc is None and (b"expires" not in found or b"date" not in found):
        return False
    return is_cacheable_response(status, headers, allowed_vary)


def request_bypasses_cache(head) -> str | None:
    """Why this request is neither answered from nor stored in the cache (Envoy's
    canServeRequestFromCache), or None. The request's body is checked by the caller."""
    headers = head.headers
    for name in _CONDITIONAL:
        if headers.has(name):
            return name.decode()
    if not head.path:
        return "no path"
    if not (head.authority or headers.get(b"host")):
        return "no host"
    if headers.has(b"authorization"):
        return "authorization"
    if head.method not in (b"GET", b"HEAD"):
        return head.method.decode("latin-1")
    if head.scheme not in (b"http", b"https", b""):
        return "scheme"
    return None


def http_time(value: bytes | None) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850, asctime: RFC 7231 7.1.1.1) in seconds since the
    epoch; None when absent or unparsable."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    for fmt in ("%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT", "%a %b %d %H:%M:%S %Y"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    return None


def is_cacheable_response(status: int, headers, allowed_vary) -> bool:
    """Envoy's isCacheableResponse: storable (no no-store/private), a cacheable status, enough
    to compute freshness (no-cache, max-age/s-maxage, or Expires with Date), and a Vary the
    allow list covers."""
    cc = response_cache_control(headers.get(b"cache-control"))
    has_validation_data = (cc.must_validate or cc.max_age is not None
                           or (headers.has(b"date") and headers.has(b"expires")))
    return (not cc.no_store and status in CACHEABLE_STATUSES and has_validation_data
            and vary_allowed(headers, allowed_vary))


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a stored response's age and freshness are computed from, parsed once when it is
    stored (a hit then parses no date)."""
    cc: ResponseCacheControl
    date: float          # Date, or the epoch when absent or unparsable (as Envoy's)
    age_value: int       # its own Age field, 0 when absent
    lifetime: float      # s-maxage / max-age, else Expires - Date


def freshness_of(headers) -> Freshness:
    cc = response_cache_control(headers.get(b"cache-control"))
    date = http_time(headers.get(b"date")) or 0.0
    age_value = _number(headers.get(b"age") or b"", _INT64_MAX) or 0
    if cc.max_age is not None:
        lifetime = float(cc.max_age)
    else:
        lifetime = (http_time(headers.get(b"expires")) or 0.0) - date
    return Freshness(cc, date, age_value, lifetime)


def age_of(headers, response_time: float, now: float) -> int:
    """RFC 7234 4.2.3 as Envoy's calculateAge (response delay taken as zero): whole seconds.
    A missing Date counts from the epoch, as Envoy's default time point does."""
    return current_age(freshness_of(headers), response_time, now)


def current_age(f: Freshness, response_time: float, now: float) -> int:
    apparent = max(0.0, response_time - f.date)
    return int(max(apparent, float(f.age_value)) + (now - response_time))


def requires_validation(headers, age: int, request: RequestCacheControl) -> bool:
    """Whether a stored response must be validated before it is served (Envoy's
    LookupRequest::requiresValidation)."""
    return must_validate(freshness_of(headers), age, request)


def must_validate(f: Freshness, age: int, request: RequestCacheControl) -> bool:
    cc = f.cc
    if cc.must_validate or request.must_validate or (
            request.max_age is not None and request.max_age < age):
        return True
    lifetime = f.lifetime
    if age > lifetime:
        allowed_by_max_stale = request.max_stale is not None and request.max_stale > age - lifetime
        return cc.no_stale or not allowed_by_max_stale
    return request.min_fresh is not None and request.min_fresh > lifetime - age


def vary_names(headers) -> list[str]:
    """The Vary field's names, every Vary line, comma-separated, as sent (not lower-cased:
    Envoy compares them as they are)."""
    out: list[str] = []
    for value in headers.get_all(b"vary"):
        for token in value.decode("latin-1").split(","):
            token = token.strip()
            if token:
                out.append(token)
    return out


def vary_allowed(headers, allowed_vary) -> bool:
    """Envoy's VaryAllowList::allowsHeaders: no Vary (or an empty first one), or every name
    matched by `allowed_vary` (StringMatchers); `Vary: *` never."""
    first = headers.get(b"vary")
    if not first:
        return True
    for name in vary_names(headers):
        if name == "*" or not any(m.match(name) for m in allowed_vary):
            return False
    return True


def vary_identifier(names, allowed_vary, request_headers) -> bytes | None:
    """Envoy's createVaryIdentifier: the request's values of the varied headers (sorted
    names, multiple values joined by CR, names separated by LF); None when a name is not
    allowed any more."""
    out = [b"vary-id\n"]
    for name in sorted(set(names)):
        if not name:
            continue
        if not any(m.match(name) for m in allowed_vary):
            return None
        key = name.encode("latin-1")
        values = request_headers.get_all(key.lower())
        out.append(key + b"\r" + b"\r".join(values) + b"\n")
    return b"".join(out)


def byte_ranges(range_header: bytes, length: int) -> tuple[bool, tuple[tuple[int, int], ...]] | None:
    """Envoy's RangeUtils for one `Range` value and a body of `length` bytes: None when the
    header does not apply (not `bytes=`, malformed, more than one range, or the whole body
    asked for: a 200); else (satisfiable, ranges as [begin, end) pairs)."""
    if not range_header.startswith(b"bytes="):
        return None
    specs = range_header[6:].split(b",", 1)
    if len(specs) > 1:
        return None  # Envoy serves one range at most (no multipart responses)
    raw = specs[0]
    first_s, dash, last_s = raw.partition(b"-")
    if not dash or (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s and not last_s:
        return None
    first = _number(first_s, _UINT64_MAX) if first_s else None
    last = _number(last_s, _UINT64_MAX) if last_s else None
    if (first_s and first is None) or (last_s and last is None):
        return None  # a number past uint64 (Envoy: not a range header it can read)
    if first is not None and last is not None and first > last:
        return None
    if length == 0:
        return False, ()
    ranges: list[tuple[int, int]] = []
    if first is None:  # a suffix: the last `last` bytes
        assert last is not None
        if last == 0:
            pass  # unsatisfiable, skipped
        elif last >= length:
            return None
        else:
            ranges.append((length - last, length))
    elif first < length:
        if last is None or last >= length - 1:
            if first == 0:
                return None
            ranges.append((first, length))
        else:
            ranges.append((first, last + 1))
    return bool(ranges), tuple(ranges)
