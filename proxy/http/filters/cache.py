"""`envoy.filters.http.cache` with `SimpleHttpCacheConfig`: responses stored in memory and served
again while fresh, as Envoy 1.40's cache filter does (RFC 7234 rules: cache_policy.py; the store
shared by the workers: cache_store.py).

Config `envoy.extensions.filters.http.cache.v3.CacheConfig`: `typed_config` (only
`envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig`, which has no fields
here), `allowed_vary_headers` (StringMatchers: a response may vary on these only),
`ignore_request_cache_control_header`. Every other field is refused by its path.

Per request (Envoy's CacheFilter, decode side): a GET or HEAD without a body, conditional
headers (if-none-match, if-modified-since, if-range) or authorization is looked up by scheme,
host and path (and, for a response that varies, the request's values of the varied headers).
- Fresh: answered from the cache with `age`, flag RFCF and details
  `cache.response_from_cache_filter`; a single satisfiable `Range: bytes=...` gets 206 with
  content-range, an unsatisfiable one 416 (`content-range: bytes */<len>`); HEAD gets the
  headers only. Nothing goes upstream.
- Stale (or no-cache, request no-cache / max-age / min-fresh...): the request goes upstream with
  `if-none-match` (the stored etag) and `if-modified-since` (last-modified, else date). A 304 is
  turned into the stored response: its status, the 304's headers plus the stored ones it lacks,
  no `age`, the stored body (RFCF, the same details); the stored headers are refreshed when the
  304 carries no etag or the same one. Any other answer goes to the client, and is stored if
  cacheable.
- Missing: the request goes upstream; a cacheable response (cache_policy.is_cacheable_response)
  to a GET whose request has no `no-store` is stored once it ended, as it passed.

Deliberate differences: Envoy shares one SimpleHttpCache across every cache filter of the
process; here each configured filter has its own store (shared by the workers). The store is
bounded (cache_store.py); Envoy's simple cache is not. A 304 answer to a stored response with
trailers serves the body without the trailers.

Thread affinity: the config and store are made on the main thread; the filter belongs to its
stream's worker and touches the store only through its locked get/put.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...router.matchers import StringMatcher, parse_string_matcher
from ..filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter
from ..headers import Headers, ResponseHead
from . import cache_policy as policy
from .cache_store import CachedResponse, CacheStore, VaryIndex

__all__ = ["CacheConfig", "parse_cache_config", "CacheFactory"]

NAME = "envoy.filters.http.cache"
PROTO = "envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE_PROTO = "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
DETAILS = "cache.response_from_cache_filter"
FLAG = "RFCF"

# What a CacheFilter is doing (one field, Envoy's FilterState).
INITIAL = 0          # decode_headers not seen yet
NOT_SERVING = 1      # passes the response through (nothing looked up, or the lookup is over)
MISS = 2             # looked up, nothing usable: the response may be stored
VALIDATING = 3       # a stored response is being validated upstream
DECODE_SERVING = 4   # answering from the cache, on the decode path
ENCODE_SERVING = 5   # a 304 became the stored response: its body is being added
DESTROYED = 6

# Headers a 304 never changes in the stored response (Envoy's headersNotToUpdate).
_NOT_UPDATED = frozenset({b"content-range", b"content-length", b"etag", b"vary"})


@dataclass(frozen=True, slots=True)
class CacheConfig:
    allowed_vary_headers: tuple[StringMatcher, ...] = ()
    ignore_request_cache_control_header: bool = False


CACHE = Message(PROTO, title="HTTP filter cache", model=CacheConfig, fields=(
    used("typed_config", attr="", why=f"must be {SIMPLE_PROTO}: the in-memory store"),
    used("allowed_vary_headers"),
    used("ignore_request_cache_control_header", False),
    refused("disabled", "turning the filter off per config"),
    refused("key_creator_params", "keys other than scheme, host and path"),
    refused("max_body_bytes", "a body limit other than the store's own"),
))
SIMPLE = Message(SIMPLE_PROTO, title="HTTP cache simple_http_cache", fields=())


def parse_cache_config(raw: Mapping[str, Any], path: str) -> CacheConfig:
    f = CACHE.read(raw, path)
    typed = f.raw_obj("typed_config", required=True)
    tpath = f.at("typed_config")
    url = typed.get("@type")
    if url is None:
        raise ConfigError(f"{tpath}.@type", "required field is missing")
    if not isinstance(url, str) or url.rsplit("/", 1)[-1] != SIMPLE_PROTO:
        raise ConfigError(f"{tpath}.@type", f"unsupported cache {url!r}; supported: "
                          f"type.googleapis.com/{SIMPLE_PROTO}")
    SIMPLE.read({k: v for k, v in typed.items() if k != "@type"}, tpath)
    return CacheConfig(
        allowed_vary_headers=tuple(parse_string_matcher(m, p)
                                   for m, p in f.list("allowed_vary_headers")),
        ignore_request_cache_control_header=f.bool("ignore_request_cache_control_header", False),
    )


class CacheFactory:
    """Made on the main thread per configured filter: it owns the store every worker shares."""

    def __init__(self, config: CacheConfig, name: str, store: CacheStore | None = None,
                 clock=time.time) -> None:
        self.config = config
        self.name = name
        self.store = store if store is not None else CacheStore()
        self.clock = clock

    def for_worker(self, ctx) -> WorkerCacheFactory:
        return WorkerCacheFactory(self)


class WorkerCacheFactory:
    decoder = True
    encoder = True

    def __init__(self, factory: CacheFactory) -> None:
        self.name = factory.name
        self.config = factory.config
        self.allowed_vary = factory.config.allowed_vary_headers
        self.store = factory.store
        self.clock = factory.clock

    def create(self, callbacks) -> CacheFilter:
        return CacheFilter(callbacks, self)


def _cache_key(head) -> bytes:
    return b"%s://%s%s" % (head.scheme or b"http", head.authority or head.headers.get(b"host") or b"",
                           head.path)


class CacheFilter(PassThroughFilter):
    __slots__ = ("cb", "wf", "state", "key", "entry", "allows_insert", "is_head", "insert")

    def __init__(self, callbacks, wf: WorkerCacheFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.state = INITIAL
        self.key = b""
        self.entry: CachedResponse | None = None   # the stored response being validated
        self.allows_insert = False
        self.is_head = False
        self.insert: _Insert | None = None

    # -- decode: look up -------------------------------------------------------------------------
    def decode_headers(self, head, end_stream: bool) -> int:
        if not end_stream:
            self.state = NOT_SERVING
            return FilterHeadersStatus.CONTINUE
        bypass, cc, pragma = policy.lookup_fields(head)
        if bypass:
            self.state = NOT_SERVING
            return FilterHeadersStatus.CONTINUE
        wf = self.wf
        request_cc = policy.directives_from(cc, pragma, wf.config.ignore_request_cache_control_header)
        self.allows_insert = not request_cc.no_store
        self.is_head = head.method == b"HEAD"
        self.key = key = _cache_key(head)
        entry = wf.store.get(key)
        if isinstance(entry, VaryIndex):
            vary_id = policy.vary_identifier(entry.names, wf.allowed_vary, head.headers)
            entry = wf.store.get(key + vary_id) if vary_id is not None else None
        if entry is None or isinstance(entry, VaryIndex):
            self.state = MISS
            return FilterHeadersStatus.CONTINUE
        headers = Headers(entry.headers)
        age = policy.current_age(entry.freshness, entry.response_time, wf.clock())
        if policy.must_validate(entry.freshness, age, request_cc):
            self.state = VALIDATING
            self.entry = entry
            _add_validators(head.headers, headers)
            return FilterHeadersStatus.CONTINUE
        headers.set(b"age", b"%d" % age)
        self._serve(head, entry, headers)
        return FilterHeadersStatus.STOP_ITERATION

    def _serve(self, head, entry: CachedResponse, headers: Headers) -> None:
        """A fresh hit: the stored response (or the asked range of it) to the client."""
        self.state = DECODE_SERVING
        status, body = entry.status, entry.body
        ranges = head.headers.get_all(b"range")
        if len(ranges) == 1:
            asked = policy.byte_ranges(ranges[0], len(body))
            if asked is not None:
                satisfiable, spans = asked
                if not satisfiable:
                    status = 416
                    headers.add(b"content-range", b"bytes */%d" % len(body))
                    body = b""
                else:
                    begin, end = spans[0]
                    status = 206
                    headers.add(b"content-range", b"bytes %d-%d/%d" % (begin, end - 1, len(body)))
                    body = body[begin:end]
                headers.set(b"content-length", b"%d" % len(body))
        cb = self.cb
        cb.stream_info.set_response_flag(FLAG)
        cb.stream_info.response_code_details = DETAILS
        response = ResponseHead(status, headers)
        if self.is_head or (not body and entry.trailers is None):
            cb.encode_headers(response, True)
        elif entry.trailers is None:
            cb.encode_headers(response, True, body)
        else:
            cb.encode_headers(response, False)
            if self.state == DECODE_SERVING and body:
                cb.encode_data(body, False)
            if self.state == DECODE_SERVING:
                cb.encode_trailers(list(entry.trailers))

    # -- encode: validate, store -----------------------------------------------------------------
    def encode_headers(self, head, end_stream: bool) -> int:
        state = self.state
        if state == DECODE_SERVING or state == NOT_SERVING or state == INITIAL:
            return FilterHeadersStatus.CONTINUE
        if state == VALIDATING and head.status == 304:
            return self._validated(head, end_stream)
        self.state = NOT_SERVING
        wf = self.wf
        if (self.allows_insert and not self.is_head
                and policy.storable(head.status, head.headers, wf.allowed_vary)):
            self.insert = _Insert(head.status, tuple(head.headers.fields), wf.clock())
            if end_stream:
                self._commit()
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if self.state == ENCODE_SERVING:  # a 304's own body (none expected): the stored one instead
            if not end_stream:
                return FilterDataStatus.STOP_ITERATION_NO_BUFFER
            self.state = NOT_SERVING
            return self.entry.body if self.entry is not None else b""
        ins = self.insert
        if ins is not None:
            ins.body += data
            if len(ins.body) > self.wf.store.max_entry_bytes:
                self.insert = None  # too big to store: it only passes through
            elif end_stream:
                self._commit()
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers) -> int:
        ins = self.insert
        if ins is not None:
            ins.trailers = tuple(trailers)
            self._commit()
        return 0

    def _validated(self, head, end_stream: bool) -> int:
        """The upstream said 304 to our validators: the client gets the stored response with
        the 304's headers (Envoy's processSuccessfulValidation)."""
        entry = self.entry
        assert entry is not None
        headers = head.headers
        etag = headers.get(b"etag")
        stored = Headers(entry.headers)
        update = etag is None or stored.get(b"etag") == etag
        head.status = entry.status
        head.reason = b""
        headers.remove(b"content-length")
        stored.remove(b"age")   # a validated response is as fresh as the origin's
        for name, value in stored.fields:
            if not headers.has(name):
                headers.add(name, value)
        if update:
            refreshed = Headers(entry.headers)
            seen: set[bytes] = set()
            for name, value in headers.fields:
                if name in _NOT_UPDATED:
                    continue
                if name in seen:
                    refreshed.add(name, value)
                else:
                    refreshed.set(name, value)
                    seen.add(name)
            self.wf.store.replace_if_same(self._entry_key(), entry, _stored(
                entry.status, refreshed, entry.body, entry.trailers, self.wf.clock()))
        cb = self.cb
        cb.stream_info.set_response_flag(FLAG)
        cb.stream_info.response_code_details = DETAILS
        if self.is_head or not entry.body:
            self.state = NOT_SERVING
            return FilterHeadersStatus.CONTINUE
        if not end_stream:
            self.state = ENCODE_SERVING
            return FilterHeadersStatus.CONTINUE  # (encode_data drops the 304's body, then ends)
        # The 304 ended the stream: the stored body follows its headers (added from inside
        # this call, the headers go on without the end of the stream: Envoy's addEncodedData).
        self.state = NOT_SERVING
        cb.add_encoded_data(entry.body)
        return FilterHeadersStatus.CONTINUE

    def _entry_key(self) -> bytes:
        """Where the entry being validated is stored (its variant's key when it varies)."""
        entry = self.entry
        names = policy.vary_names(Headers(entry.headers)) if entry is not None else []
        if not names:
            return self.key
        vary_id = policy.vary_identifier(names, self.wf.allowed_vary, self.cb.request_head.headers)
        return self.key + (vary_id or b"")

    def _commit(self) -> None:
        ins, self.insert = self.insert, None
        if ins is None:
            return
        wf = self.wf
        entry = _stored(ins.status, Headers(ins.headers), bytes(ins.body), ins.trailers,
                        ins.response_time)
        names = policy.vary_names(Headers(ins.headers))
        if not names:
            wf.store.put(self.key, entry)
            return
        vary_id = policy.vary_identifier(names, wf.allowed_vary, self.cb.request_head.headers)
        if vary_id is None:
            return
        if wf.store.put(self.key + vary_id, entry):
            wf.store.put(self.key, VaryIndex(tuple(names)))

    def on_destroy(self) -> None:
        self.state = DESTROYED
        self.insert = None   # a response cut short is not stored
        self.entry = None


def _stored(status: int, headers: Headers, body: bytes, trailers, response_time: float) -> CachedResponse:
    return CachedResponse(status, tuple(headers.fields), body, trailers, response_time,
                          policy.freshness_of(headers))


class _Insert:
    """A response being stored as it passes (thread-confined to its stream's worker)."""

    __slots__ = ("status", "headers", "response_time", "body", "trailers")

    def __init__(self, status: int, headers: tuple, response_time: float) -> None:
        self.status = status
        self.headers = headers
        self.response_time = response_time
        self.body = bytearray()
        self.trailers: tuple | None = None


def _add_validators(request_headers: Headers, stored: Headers) -> None:
    """Envoy's injectValidationHeaders: if-none-match from the stored etag; if-modified-since
    from its last-modified when that parses, else from its date."""
    etag = stored.get(b"etag")
    if etag is not None:
        request_headers.set(b"if-none-match", etag)
    last_modified = stored.get(b"last-modified")
    if policy.http_time(last_modified) is not None:
        request_headers.set(b"if-modified-since", last_modified)
    else:
        date = stored.get(b"date")
        if date is not None:
            request_headers.set(b"if-modified-since", date)


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_cache_config,
    factory=CacheFactory,
))
