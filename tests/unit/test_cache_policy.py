"""The cache filter's RFC 7234 rules (proxy/http/filters/cache_policy.py, Envoy 1.40's
cacheability_utils / cache_headers_utils / range_utils) without sockets, and its store
(cache_store.py): the LRU byte bound and the lock under threads."""

from __future__ import annotations

import threading

import pytest

from proxy.http.filters import cache_policy as p
from proxy.http.filters.cache_store import CachedResponse, CacheStore, VaryIndex
from proxy.http.headers import Headers, RequestHead
from proxy.router.matchers import parse_string_matcher

DATE = b"Wed, 21 Oct 2015 07:28:00 GMT"
T = 1445412480.0  # DATE in seconds


def _h(**fields) -> Headers:
    return Headers((k.replace("_", "-").encode(), v.encode() if isinstance(v, str) else v)
                   for k, v in fields.items())


def _req(method=b"GET", path=b"/x", **fields) -> RequestHead:
    return RequestHead(method, path, b"example.com", b"http", _h(**fields))


def test_response_directives_as_envoy_reads_them():
    cc = p.response_cache_control(b"public, max-age=10, s-maxage=20")
    assert cc.max_age == 20 and not cc.no_store
    assert p.response_cache_control(b"s-maxage=5, max-age=60").max_age == 5
    assert p.response_cache_control(b'max-age="7"').max_age == 7
    assert p.response_cache_control(b"max-age=-1").max_age is None
    assert p.response_cache_control(b"private").no_store
    assert p.response_cache_control(b"no-cache, must-revalidate").must_validate
    assert p.response_cache_control(b"proxy-revalidate").no_stale


def test_request_directives_and_pragma():
    assert p.request_cache_control(_h(cache_control="no-cache")).must_validate
    assert p.request_cache_control(_h(pragma="no-cache")).must_validate
    assert not p.request_cache_control(_h(cache_control="max-age=5", pragma="no-cache")).must_validate
    assert p.request_cache_control(_h(cache_control="max-stale")).max_stale == float("inf")
    assert p.request_cache_control(_h(cache_control="no-store"), ignore_header=True).no_store is False


@pytest.mark.parametrize("head,why", [
    (_req(), None),
    (_req(b"HEAD"), None),
    (_req(b"POST"), "POST"),
    (_req(authorization="x"), "authorization"),
    (_req(if_none_match='"a"'), "if-none-match"),
    (_req(if_modified_since="x"), "if-modified-since"),
    (_req(if_range="x"), "if-range"),
    (_req(if_match='"a"'), None),   # caches may ignore it (RFC 7232)
])
def test_which_requests_bypass_the_cache(head, why):
    assert p.request_bypasses_cache(head) == why
    assert p.lookup_fields(head)[0] is (why is not None)   # the filter's one-pass version


def test_the_one_pass_readers_agree_with_the_plain_ones():
    head = _req(cache_control="max-age=5, no-store", pragma="no-cache")
    bypass, cc, pragma = p.lookup_fields(head)
    assert not bypass and p.directives_from(cc, pragma) == p.request_cache_control(head.headers)
    assert p.directives_from(cc, pragma, ignore_header=True) == p.RequestCacheControl()
    assert p.directives_from(None, b"no-cache").must_validate
    allowed = (parse_string_matcher({"exact": "accept"}, "m"),)
    for status, fields in ((200, {"cache_control": "max-age=1"}), (200, {"date": DATE}),
                           (200, {"date": DATE, "expires": DATE}), (500, {"cache_control": "max-age=1"}),
                           (200, {"cache_control": "max-age=1", "vary": "x"})):
        assert p.storable(status, _h(**fields), allowed) is p.is_cacheable_response(status, _h(**fields), allowed)


@pytest.mark.parametrize("status,fields,ok", [
    (200, {"cache_control": "max-age=1"}, True),
    (200, {"cache_control": "no-cache"}, True),
    (200, {"date": DATE, "expires": DATE}, True),
    (200, {"expires": DATE}, False),            # expires without date
    (200, {}, False),                           # nothing to compute freshness from
    (200, {"cache_control": "max-age=1, no-store"}, False),
    (200, {"cache_control": "private, max-age=1"}, False),
    (500, {"cache_control": "max-age=1"}, False),
    (404, {"cache_control": "max-age=1"}, True),
    (200, {"cache_control": "max-age=1", "vary": "*"}, False),
    (200, {"cache_control": "max-age=1", "vary": "accept"}, True),
    (200, {"cache_control": "max-age=1", "vary": "accept, cookie"}, False),
])
def test_which_responses_are_stored(status, fields, ok):
    allowed = (parse_string_matcher({"exact": "accept"}, "m"),)
    assert p.is_cacheable_response(status, _h(**fields), allowed) is ok


def test_age_counts_from_the_date_and_the_time_in_the_cache():
    h = _h(date=DATE)
    assert p.age_of(h, T + 0.5, T + 0.5) == 0
    assert p.age_of(h, T + 0.5, T + 3.0) == 3
    assert p.age_of(_h(date=DATE, age="100"), T, T + 1) == 101
    assert p.age_of(_h(), T, T) == int(T)      # no date: from the epoch, as Envoy


def test_freshness_and_what_forces_validation():
    none = p.RequestCacheControl()
    fresh = _h(date=DATE, cache_control="max-age=10")
    assert not p.requires_validation(fresh, 5, none)
    assert p.requires_validation(fresh, 11, none)
    assert not p.requires_validation(fresh, 11, p.RequestCacheControl(max_stale=5))
    assert p.requires_validation(_h(cache_control="max-age=10, must-revalidate"), 11,
                                 p.RequestCacheControl(max_stale=5))
    assert p.requires_validation(fresh, 5, p.RequestCacheControl(max_age=4))
    assert p.requires_validation(fresh, 5, p.RequestCacheControl(min_fresh=6))
    assert p.requires_validation(fresh, 0, p.RequestCacheControl(must_validate=True))
    assert p.requires_validation(_h(cache_control="no-cache, max-age=60"), 0, none)
    expires = _h(date=DATE, expires=b"Wed, 21 Oct 2015 07:29:00 GMT")
    assert not p.requires_validation(expires, 59, none) and p.requires_validation(expires, 61, none)


def test_http_dates_in_the_three_formats():
    assert p.http_time(DATE) == T
    assert p.http_time(b"Wednesday, 21-Oct-15 07:28:00 GMT") == T
    assert p.http_time(b"Wed Oct 21 07:28:00 2015") == T
    assert p.http_time(b"yesterday") is None


def test_vary_identifier_sorts_names_and_joins_values():
    allowed = (parse_string_matcher({"exact": "accept"}, "m"),
               parse_string_matcher({"exact": "accept-language"}, "m"))
    req = _h(accept="a")
    req.add(b"accept", b"b")
    assert p.vary_identifier(["accept-language", "accept"], allowed, req) == \
        b"vary-id\naccept\ra\rb\naccept-language\r\n"
    assert p.vary_identifier(["cookie"], allowed, req) is None


@pytest.mark.parametrize("header,length,expected", [
    (b"bytes=0-4", 10, (True, ((0, 5),))),
    (b"bytes=2-", 10, (True, ((2, 10),))),
    (b"bytes=-3", 10, (True, ((7, 10),))),
    (b"bytes=0-", 10, None),              # the whole body: a 200
    (b"bytes=-10", 10, None),
    (b"bytes=0-99", 10, None),
    (b"bytes=20-", 10, (False, ())),      # 416
    (b"bytes=-0", 10, (False, ())),
    (b"bytes=0-1,3-4", 10, None),         # more than one range: a 200
    (b"bytes=5-2", 10, None),
    (b"bytes=a-b", 10, None),
    (b"items=0-1", 10, None),
    (b"bytes=0-1", 0, (False, ())),
])
def test_byte_ranges(header, length, expected):
    assert p.byte_ranges(header, length) == expected


def _entry(n: int) -> CachedResponse:
    return CachedResponse(200, ((b"cache-control", b"max-age=1"),), b"x" * n, None, 0.0)


def test_the_store_evicts_least_recently_used_entries_past_its_bound():
    store = CacheStore(max_bytes=3 * _entry(1000).size(), max_entry_bytes=10_000)
    for key in (b"a", b"b", b"c"):
        assert store.put(key, _entry(1000))
    assert store.get(b"a") is not None     # a is now the most recently used
    store.put(b"d", _entry(1000))
    assert store.get(b"b") is None and store.get(b"a") is not None
    assert store.stats() == (3, 3 * _entry(1000).size())
    assert store.put(b"big", _entry(20_000)) is False and store.get(b"big") is None


def test_replace_if_same_keeps_a_newer_entry():
    store = CacheStore()
    old, newer, refreshed = _entry(1), _entry(2), _entry(3)
    store.put(b"k", old)
    store.put(b"k", newer)
    store.replace_if_same(b"k", old, refreshed)
    assert store.get(b"k") is newer
    store.replace_if_same(b"k", newer, refreshed)
    assert store.get(b"k") is refreshed
    store.put(b"v", VaryIndex(("accept",)))
    assert isinstance(store.get(b"v"), VaryIndex)


def test_the_store_stays_consistent_under_threads():
    """Eight threads put and get at once (on 3.14t, really in parallel): the byte count always
    equals what the entries hold and never passes the bound."""
    entry_size = _entry(100).size()
    store = CacheStore(max_bytes=50 * entry_size, max_entry_bytes=10_000)

    def work(t: int) -> None:
        for i in range(2000):
            store.put(b"%d" % ((i * 7 + t) % 120), _entry(100))
            store.get(b"%d" % (i % 120))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    entries, size = store.stats()
    assert size == entries * entry_size <= 50 * entry_size


def test_hostile_numbers_are_ignored_as_envoy_ignores_overflows():
    """Thousands of digits (a header may hold them) must not reach int(): an overflowing
    max-age or Age is no value, an overflowing range no range."""
    huge = "9" * 5000
    assert p.response_cache_control(f"max-age={huge}".encode()).max_age is None
    assert p.response_cache_control(b"max-age=9223372036854775808").max_age is None
    assert p.response_cache_control(b"max-age=9223372036854775807").max_age == 2**63 - 1
    assert p.request_cache_control(_h(cache_control=f"max-stale={huge}")).max_stale is None
    assert p.age_of(_h(date=DATE, age=huge), T, T) == 0
    assert p.byte_ranges(f"bytes={huge}-".encode(), 10) is None
    assert p.byte_ranges(b"bytes=0-18446744073709551616", 10) is None
    assert p.byte_ranges(b"bytes=-18446744073709551615", 10) is None   # all of it: a 200
