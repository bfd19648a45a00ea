"""The cache filter (`envoy.filters.http.cache`, SimpleHttpCacheConfig) through the running proxy,
for what the differential case (tests/differential/cases/filter_cache.yaml) cannot show: an
origin whose answer changes (a 304 that refreshes the stored headers, a 200 that replaces the
stored response), a Vary the allow list admits (Envoy 1.40 crashes on it), the store shared by
two workers, its per-response bound, a response cut short, and the config errors."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError, ConfigErrors
from proxy.http.filters import cache as cache_module
from proxy.http.filters.cache_store import CacheStore

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

CACHE = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE = "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


class Origin:
    """An origin whose resources the test changes: path -> (etag, body, extra headers). It
    answers If-None-Match with the current etag by 304 (carrying `x-version`), records every
    request's headers; `/cut` promises 100 bytes and closes after 10, `/chunked` answers in
    chunks (no content-length)."""

    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, bytes, dict[str, str]]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.seen.append((self.path, headers))
                    etag, body, extra = outer.resources.get(self.path, ('"none"', b"", {}))
                if self.path == "/cut":
                    self.send_response(200)
                    self.send_header("cache-control", "max-age=60")
                    self.send_header("content-length", "100")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.path == "/chunked":
                    self.send_response(200)
                    self.send_header("cache-control", "max-age=60")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                    return
                if headers.get("if-none-match") == etag:
                    self.send_response(304)
                    self.send_header("etag", etag)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("etag", etag)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.seen if p == path)

    def last(self, path: str) -> dict[str, str]:
        with self.lock:
            return [h for p, h in self.seen if p == path][-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin():
    o = Origin()
    yield o
    o.close()


def _cache_filter(**extra) -> dict:
    return {"name": "envoy.filters.http.cache",
            "typed_config": {"@type": CACHE, "typed_config": {"@type": SIMPLE}, **extra}}


def _proxy(origin: Origin, concurrency: int = 1, **extra) -> ProxyUnderTest:
    return ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}],
                                             [static_cluster("origin", origin.port)],
                                             http_filters=[_cache_filter(**extra), ROUTER]),
                          concurrency=concurrency)


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_a_fresh_response_is_answered_from_the_cache_with_its_age(origin):
    origin.resources["/a"] = ('"v1"', b"first", {"cache-control": "max-age=60"})
    proxy = _proxy(origin)
    try:
        status, headers, body = _get(proxy.port, "/a")
        assert (status, body) == (200, b"first") and "age" not in headers
        origin.resources["/a"] = ('"v2"', b"second", {"cache-control": "max-age=60"})
        status, headers, body = _get(proxy.port, "/a")
        assert (status, body) == (200, b"first") and headers["age"].isdigit()
        assert origin.count("/a") == 1
    finally:
        proxy.stop()


def test_a_304_serves_the_stored_body_and_refreshes_the_stored_headers(origin):
    """Stale after 1 s: validated with the stored etag; the origin's 304 carries a new header,
    the client gets the stored body with it and no age, and the refreshed entry is fresh again:
    the next request is a hit that carries the new header too."""
    origin.resources["/r"] = ('"e1"', b"stored body", {"cache-control": "max-age=1", "x-version": "1"})
    proxy = _proxy(origin)
    try:
        assert _get(proxy.port, "/r")[2] == b"stored body"
        time.sleep(2.2)
        origin.resources["/r"] = ('"e1"', b"never sent", {"cache-control": "max-age=60", "x-version": "2"})
        status, headers, body = _get(proxy.port, "/r")
        assert origin.last("/r")["if-none-match"] == '"e1"'
        assert (status, body) == (200, b"stored body")
        assert headers["x-version"] == "2" and headers["cache-control"] == "max-age=60"
        assert "age" not in headers and headers["content-length"] == str(len(b"stored body"))
        status, headers, body = _get(proxy.port, "/r")
        assert (status, body, headers["x-version"]) == (200, b"stored body", "2")
        assert "age" in headers and origin.count("/r") == 2
    finally:
        proxy.stop()


def test_a_changed_resource_replaces_the_stored_response_on_validation(origin):
    origin.resources["/c"] = ('"c1"', b"version one", {"cache-control": "no-cache"})
    proxy = _proxy(origin)
    try:
        assert _get(proxy.port, "/c")[2] == b"version one"
        assert _get(proxy.port, "/c")[2] == b"version one"     # validated: 304
        origin.resources["/c"] = ('"c2"', b"version two", {"cache-control": "no-cache"})
        status, headers, body = _get(proxy.port, "/c")         # validated: 200, stored anew
        assert (status, body, headers["etag"]) == (200, b"version two", '"c2"')
        _get(proxy.port, "/c")
        assert origin.last("/c")["if-none-match"] == '"c2"'
        assert origin.count("/c") == 4
    finally:
        proxy.stop()


def test_an_allowed_vary_stores_one_response_per_value(origin):
    """(Envoy 1.40 crashes on this response: a deliberate difference.)"""
    origin.resources["/v"] = ('"v"', b"varied", {"cache-control": "max-age=60", "vary": "accept"})
    proxy = _proxy(origin, allowed_vary_headers=[{"exact": "accept"}])
    try:
        for accept, upstream_count in (("a", 1), ("a", 1), ("b", 2), ("b", 2), ("a", 2)):
            status, headers, _ = _get(proxy.port, "/v", {"accept": accept})
            assert status == 200 and origin.count("/v") == upstream_count, accept
        assert "age" in headers
    finally:
        proxy.stop()


def test_a_vary_the_allow_list_lacks_is_never_stored(origin):
    origin.resources["/nv"] = ('"v"', b"varied", {"cache-control": "max-age=60", "vary": "x-other"})
    proxy = _proxy(origin, allowed_vary_headers=[{"exact": "accept"}])
    try:
        _get(proxy.port, "/nv", {"x-other": "1"})
        _get(proxy.port, "/nv", {"x-other": "1"})
        assert origin.count("/nv") == 2
    finally:
        proxy.stop()


def test_two_workers_share_one_store(origin):
    """The store is the process's: once one worker stored the response, requests on 24 fresh
    connections (spread by the kernel over both workers) are all hits."""
    origin.resources["/s"] = ('"s"', b"shared" * 100, {"cache-control": "max-age=60"})
    proxy = _proxy(origin, concurrency=2)
    try:
        _get(proxy.port, "/s")
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _get(proxy.port, "/s"), range(24)))
        assert all(s == 200 and b == b"shared" * 100 and "age" in h for s, h, b in results)
        assert origin.count("/s") == 1
    finally:
        proxy.stop()


def test_a_response_over_the_entry_limit_passes_through_uncached(origin, monkeypatch):
    monkeypatch.setattr(cache_module, "CacheStore", lambda: CacheStore(max_entry_bytes=1024))
    origin.resources["/big"] = ('"b"', b"y" * 4096, {"cache-control": "max-age=60"})
    origin.resources["/small"] = ('"s"', b"z" * 100, {"cache-control": "max-age=60"})
    proxy = _proxy(origin)
    try:
        for _ in range(2):
            assert _get(proxy.port, "/big")[2] == b"y" * 4096
            assert _get(proxy.port, "/small")[2] == b"z" * 100
        assert origin.count("/big") == 2 and origin.count("/small") == 1
    finally:
        proxy.stop()


def test_a_response_cut_short_is_not_stored(origin):
    proxy = _proxy(origin)
    try:
        for _ in range(2):
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                _get(proxy.port, "/cut")
        assert origin.count("/cut") == 2
    finally:
        proxy.stop()


def _bootstrap(filter_config: dict) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}],
                              [static_cluster("origin", 1)],
                              http_filters=[{"name": "envoy.filters.http.cache",
                                             "typed_config": {"@type": CACHE, **filter_config}},
                                            ROUTER])


@pytest.mark.parametrize("config,where", [
    ({}, "typed_config"),
    ({"typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig"}},
     'typed_config.@type'),
    ({"typed_config": {"@type": SIMPLE}, "max_body_bytes": 10}, "max_body_bytes"),
    ({"typed_config": {"@type": SIMPLE}, "key_creator_params": {"exclude_scheme": True}}, "key_creator_params"),
    ({"typed_config": {"@type": SIMPLE}, "disabled": True}, "disabled"),
])
def test_config_errors_name_the_field(config, where):
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_bootstrap(_bootstrap(config))
    assert where in str(e.value)


def test_hits_and_validations_over_http2(origin):
    """The same over h2c on one connection, two streams at a time: a stored response, hits,
    and 304s turned into the stored body (the body added after the held 304 headers)."""
    from tests.integration.test_h2_downstream import H2Client
    origin.resources["/h2"] = ('"h"', b"over h2", {"cache-control": "max-age=60"})
    origin.resources["/h2v"] = ('"hv"', b"validated over h2", {"cache-control": "no-cache"})
    proxy = _proxy(origin)
    client = H2Client(proxy.port)
    try:
        first = [client.request(b"GET", b"/h2"), client.request(b"GET", b"/h2v")]
        client.wait(lambda: set(first) <= client.ended)
        again = [client.request(b"GET", b"/h2"), client.request(b"GET", b"/h2v")]
        client.wait(lambda: set(again) <= client.ended)
        assert [client.body[s] for s in first + again] == [b"over h2", b"validated over h2"] * 2
        assert all(client.status[s] == 200 for s in first + again)
        assert b"age" in client.headers[again[0]] and b"age" not in client.headers[again[1]]
        assert origin.count("/h2") == 1 and origin.count("/h2v") == 2
        assert origin.last("/h2v")["if-none-match"] == '"hv"'
    finally:
        client.close()
        proxy.stop()


def test_hostile_numbers_in_fields_are_ignored_and_the_proxy_keeps_serving(origin):
    huge = "9" * 3000
    origin.resources["/n"] = ('"n"', b"numbers", {"cache-control": f"max-age={huge}", "age": huge})
    origin.resources["/ok"] = ('"o"', b"fine", {"cache-control": "max-age=60"})
    proxy = _proxy(origin)
    try:
        for _ in range(2):   # no max-age it can read: nothing to compute freshness from
            assert _get(proxy.port, "/n")[:3:2] == (200, b"numbers")
        assert origin.count("/n") == 2
        _get(proxy.port, "/ok")
        status, headers, body = _get(proxy.port, "/ok", {"range": f"bytes={huge}-"})
        assert (status, body) == (200, b"fine") and "age" in headers   # a hit, the whole body
        assert _get(proxy.port, "/ok", {"cache-control": f"max-age={huge}"})[0] == 200
    finally:
        proxy.stop()


def test_a_chunked_response_is_stored_and_served_whole(origin):
    proxy = _proxy(origin)
    try:
        status, headers, body = _get(proxy.port, "/chunked")
        assert (status, body) == (200, b"hello world")
        status, headers, body = _get(proxy.port, "/chunked")
        assert (status, body) == (200, b"hello world") and "age" in headers
        assert origin.count("/chunked") == 1
        # HEAD from the stored response: its headers, no body.
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("HEAD", "/chunked")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"" and r.getheader("age") is not None
        conn.close()
        assert origin.count("/chunked") == 1
    finally:
        proxy.stop()
