"""The Lua filter (`envoy.filters.http.lua`) through the running proxy, for what the differential
case (tests/differential/cases/filter_lua.yaml) does not reach: trailers, response chunks
rewritten as they pass, a response body rewritten whole, an httpCall that waits while the
worker serves others, its timeout, the buffer limit, a script error's log and counter, the Lua
states per worker, and the config errors that name the field (a syntax error, an error in the
top-level code, lupa missing)."""

from __future__ import annotations

import http.client
import logging
import sys
import threading
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.lua_support import LUA_IN_PROCESS_SKIP

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, raw_request, static_cluster

pytestmark = pytest.mark.skipif(LUA_IN_PROCESS_SKIP is not None, reason=LUA_IN_PROCESS_SKIP or "")

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _lua(code: str, **extra) -> dict:
    return {"name": "envoy.filters.http.lua",
            "typed_config": {"@type": LUA, "default_source_code": {"inline_string": code}, **extra}}


@pytest.fixture
def upstream():
    up = EchoUpstream("app")
    yield up
    up.close()


def _proxy(code: str, upstream: EchoUpstream, routes: list | None = None, concurrency: int = 1,
           hcm: dict | None = None, **listener) -> ProxyUnderTest:
    config = front_proxy_config(routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                                [static_cluster("app", upstream.port)],
                                http_filters=[_lua(code), ROUTER], **(hcm or {}))
    config["static_resources"]["listeners"][0].update(listener)
    return ProxyUnderTest(config, concurrency=concurrency)


def _get(port: int, path: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def test_trailers_after_the_whole_body(upstream):
    """body() holds the headers; trailers() then has the request's trailers; a fresh headers()
    after the yields may still change the request (its headers have not gone on). (Over
    HTTP/1.1 with http_protocol_options.enable_trailers: without it the codec drops request
    trailers, as Envoy's does.)"""
    proxy = _proxy("""
        function envoy_on_request(h)
          local b = h:body()
          local t = h:trailers()
          h:headers():add("x-trailer", t and t:get("x-check") or "none")
          h:headers():add("x-body", b:getBytes(0, b:length()))
        end""", upstream, hcm={"http_protocol_options": {"enable_trailers": True}})
    try:
        raw = (b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n3\r\nabc\r\n0\r\nx-check: sum-1\r\n\r\n")
        answer = raw_request(proxy.port, raw, read_until_close=False)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        method, path, headers, body = upstream.requests[-1]
        assert headers["x-trailer"] == "sum-1" and headers["x-body"] == "helloabc"
        assert body == b"helloabc"
    finally:
        proxy.stop()


def test_response_chunks_rewritten_as_they_pass(upstream):
    """bodyChunks() on the response: each chunk changed in place (same size) goes on; the
    headers went on first (streaming, nothing buffered)."""
    proxy = _proxy("""
        function envoy_on_response(h)
          local n = 0
          for chunk in h:bodyChunks() do
            n = n + 1
            chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length())))
          end
          h:logInfo("chunks: " .. n)
        end""", upstream)
    try:
        status, headers, body = _get(proxy.port, "/bytes/300000")
        assert status == 200 and headers["content-length"] == "300000"
        assert body == b"X" * 300000
    finally:
        proxy.stop()


def test_response_body_rewritten_whole(upstream):
    proxy = _proxy("""
        function envoy_on_response(h)
          local b = h:body()
          h:headers():replace("x-was", tostring(b:length()))
          b:setBytes("short")
        end""", upstream)
    try:
        status, headers, body = _get(proxy.port, "/anything")
        assert status == 200 and body == b"short"
        assert headers["content-length"] == "5" and int(headers["x-was"]) > 5
    finally:
        proxy.stop()


def test_http_call_waits_without_blocking_the_worker(upstream):
    """One worker: while a script waits 2 s for its call's answer, another request through the
    same worker is answered at once; then the first resumes with the answer."""
    proxy = _proxy("""
        function envoy_on_request(h)
          if h:headers():get(":path") == "/slow" then
            local rh, rb = h:httpCall("app", {[":method"] = "GET", [":path"] = "/delay/2",
                                               [":authority"] = "app"}, nil, 5000)
            h:respond({[":status"] = "200", ["x-call"] = rh[":status"]}, "after call")
          end
        end""", upstream)
    try:
        slow: dict = {}

        def call_slow() -> None:
            started = time.monotonic()
            slow["answer"] = _get(proxy.port, "/slow")
            slow["took"] = time.monotonic() - started
        t = threading.Thread(target=call_slow)
        t.start()
        # The slow request is waiting for its call once the upstream has the call.
        assert proxy.wait_for(lambda: any(r[1] == "/delay/2" for r in upstream.requests))
        status, _, _ = _get(proxy.port, "/fast")
        assert status == 200 and "answer" not in slow   # answered while the call still waits
        t.join(10)
        status, headers, body = slow["answer"]
        assert (status, headers["x-call"], body) == (200, "200", b"after call")
        assert slow["took"] >= 1.9
    finally:
        proxy.stop()


def test_http_call_timeout_answers_504(upstream):
    proxy = _proxy("""
        function envoy_on_request(h)
          local rh, rb = h:httpCall("app", {[":method"] = "GET", [":path"] = "/delay/2",
                                             [":authority"] = "app"}, nil, 100)
          h:respond({[":status"] = "200"}, rh[":status"] .. " " .. tostring(rb))
        end""", upstream)
    try:
        status, _, body = _get(proxy.port, "/x")
        # The call's 100 ms timeout answered it (the upstream would have answered 200 after 2 s).
        assert (status, body) == (200, b"504 upstream request timeout")
    finally:
        proxy.stop()


def test_whole_body_beyond_the_buffer_limit_is_413(upstream):
    proxy = _proxy("""
        function envoy_on_request(h)
          h:body()
        end""", upstream, per_connection_buffer_limit_bytes=4096)
    try:
        status, _, body = _get(proxy.port, "/upload", "POST", b"a" * 20000)
        assert (status, body) == (413, b"Payload Too Large")
        status, _, _ = _get(proxy.port, "/upload", "POST", b"a" * 1000)
        assert status == 200 and upstream.requests[-1][3] == b"a" * 1000
    finally:
        proxy.stop()


def test_script_error_is_logged_counted_and_the_stream_goes_on(upstream, caplog):
    proxy = _proxy("""
        function envoy_on_request(h)
          if h:headers():get(":path") == "/bad" then
            local t = nil
            return t.field
          end
        end""", upstream)
    try:
        with caplog.at_level(logging.ERROR, logger="ftproxy.lua"):
            status, _, _ = _get(proxy.port, "/bad")
            assert status == 200  # the request went on to the upstream
            assert upstream.requests[-1][1] == "/bad"
        assert any("script log:" in r.getMessage() and "attempt to index" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        counters = proxy.counters()
        assert counters["http.ingress_http.lua.errors"] == 1
        assert counters["http.ingress_http.lua.executions"] == 1
        assert _get(proxy.port, "/good")[0] == 200
        assert proxy.counters()["http.ingress_http.lua.errors"] == 1
    finally:
        proxy.stop()


def test_each_worker_has_its_own_lua_state(upstream):
    """Globals are per worker (Envoy: no truly global data): the script's counter, read on
    each worker, counts that worker's requests only."""
    proxy = _proxy("""
        count = 0
        function envoy_on_request(h)
          count = count + 1
          h:respond({[":status"] = "200"}, tostring(count))
        end""", upstream, concurrency=2)
    try:
        states = [w for w in proxy.server.workers]
        assert len(states) == 2
        seen = [int(_get(proxy.port, "/")[2]) for _ in range(30)]
        # Each worker's counter runs 1, 2, 3...: a value shows up at most once per worker.
        assert all(seen.count(v) <= 2 for v in set(seen)), seen
        assert sum(1 for v in seen if v == 1) >= 1
    finally:
        proxy.stop()


def _lua_states(proxy: ProxyUnderTest) -> list:
    """The Lua states of the proxy's workers (their WorkerLua's default state; tests only)."""
    return [w.default for w in _worker_luas(proxy) if w.default is not None]


def _worker_luas(proxy: ProxyUnderTest) -> list:
    """The proxy's WorkerLua objects, found by walking what the workers reference (tests
    only)."""
    import gc

    from proxy.http.filters.lua import WorkerLua
    found, seen, frontier = [], set(), list(proxy.server.workers)
    for _ in range(16):
        nxt = []
        for o in frontier:
            if id(o) in seen or isinstance(o, (str, bytes, int, float)):
                continue
            seen.add(id(o))
            if isinstance(o, WorkerLua):
                found.append(o)
                continue
            nxt.extend(gc.get_referents(o))
        frontier = nxt
    return found


def _bootstrap(filter_config: dict, routes: list | None = None) -> dict:
    return front_proxy_config(routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                              [static_cluster("app", 1)],
                              http_filters=[{"name": "envoy.filters.http.lua", "typed_config": filter_config},
                                            ROUTER])


def test_syntax_error_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_bootstrap({"@type": LUA, "default_source_code": {
            "inline_string": "function envoy_on_request(h"}}))
    assert "http_filters[0].typed_config.default_source_code" in str(e.value)
    assert "script load error" in str(e.value)


def test_error_in_top_level_code_and_bad_per_route_script_are_config_errors():
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_bootstrap({"@type": LUA, "source_codes": {"a.lua": {"inline_string": "error('at load')"}}}))
    assert "source_codes.a.lua" in str(e.value) and "at load" in str(e.value)
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}, "typed_per_filter_config": {
        "envoy.filters.http.lua": {"@type": PER_ROUTE, "source_code": {"inline_string": "x = = 1"}}}}]
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_bootstrap({"@type": LUA}, routes))
    assert "typed_per_filter_config.envoy.filters.http.lua.source_code" in str(e.value)
    with pytest.raises(ConfigError) as e:
        routes[0]["typed_per_filter_config"]["envoy.filters.http.lua"] = {
            "@type": PER_ROUTE, "filter_context": {"k": "v"}}
        parse_bootstrap(_bootstrap({"@type": LUA}, routes))
    assert "filter_context" in str(e.value) and "not supported yet" in str(e.value)


def test_without_lupa_the_config_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "proxy.http.filters.lua_runtime", None)  # as if lupa were absent
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(_bootstrap({"@type": LUA, "default_source_code": {"inline_string": "x = 1"}}))
    assert "http_filters[0].typed_config" in str(e.value)
    assert "pip install 'ftproxy[lua]'" in str(e.value)


def test_thousands_of_hooks_with_yields_stay_correct(upstream):
    """Many streams through one Lua state, each yielding (body) and resuming, reading and
    writing headers and the body: every answer is this request's own. (lupa's proxies of
    Python objects called from such coroutines went wrong after a few hundred calls; the
    prelude's objects call plain functions with strings only.)"""
    proxy = _proxy("""
        function envoy_on_request(h)
          local n = h:headers():get("x-n")
          local b = h:body()
          local hd = h:headers()
          hd:add("x-seen", n)
          h:respond({[":status"] = "200", ["x-n"] = hd:get("x-seen")}, b:getBytes(0, b:length()) .. ":" .. n)
        end""", upstream)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        for i in range(1500):
            conn.request("POST", "/", body=b"b%d" % i, headers={"x-n": str(i)})
            r = conn.getresponse()
            assert (r.status, r.getheader("x-n"), r.read()) == (200, str(i), b"b%d:%d" % (i, i))
        conn.close()
        assert proxy.counters().get("http.ingress_http.lua.errors", 0) == 0
        # Every stream's handle was released (respond() ends the stream during the hook).
        states = _lua_states(proxy)
        assert states
        # (the last stream ends on the worker just after its answer went out)
        assert proxy.wait_for(lambda: all(not s.handles for s in states)), [len(s.handles) for s in states]
    finally:
        proxy.stop()


def test_http_call_on_the_response_path(upstream):
    """envoy_on_response may call a cluster too: the response waits (its headers held), then
    goes on with what the script added from the answer."""
    proxy = _proxy("""
        function envoy_on_response(h)
          local rh, rb = h:httpCall("app", {[":method"] = "GET", [":path"] = "/status/204",
                                             [":authority"] = "app"}, nil, 2000)
          h:headers():add("x-side-call", rh[":status"])
        end""", upstream)
    try:
        status, headers, body = _get(proxy.port, "/main")
        assert status == 200 and headers["x-side-call"] == "204"
        assert b'"path": "/main"' in body
        assert [r[1] for r in upstream.requests[-2:]] == ["/main", "/status/204"]
    finally:
        proxy.stop()


def test_request_chunks_changed_in_place_reach_the_upstream(upstream):
    proxy = _proxy("""
        function envoy_on_request(h)
          for chunk in h:bodyChunks() do
            chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length())))
          end
        end""", upstream)
    try:
        status, _, _ = _get(proxy.port, "/up", "POST", b"abc" * 1000)
        assert status == 200 and upstream.requests[-1][3] == b"ABC" * 1000
    finally:
        proxy.stop()


def test_header_writes_of_a_first_run_keep_their_order_and_their_errors(upstream):
    """The prelude queues a first run's header writes (lua_runtime.py): a read sees the writes
    before it, the upstream gets them in the script's order, writes before a script error
    still happen (as each write was made when called), and a write with a bad argument still
    fails at its line."""
    proxy = _proxy("""
        function envoy_on_request(h)
          local hd = h:headers()
          hd:add("x-one", "1")
          hd:replace("x-two", "a")
          hd:add("x-two", "b")
          hd:add("x-seen", hd:get("x-two") or "none")
          hd:remove("x-drop")
          hd:replace("x-num", 7)
          if hd:get(":path") == "/err" then
            hd:add("x-before-error", "yes")
            error("boom")
          end
          if hd:get(":path") == "/badarg" then
            hd:add("x-before-bad", "yes")
            hd:add("x-bad", nil)
          end
        end""", upstream)
    try:
        for path in ("/ok", "/err", "/badarg"):
            assert _get(proxy.port, path, headers={"x-drop": "d", "x-two": "0"})[0] == 200
            values = upstream.requests[-1][2]   # (the echo upstream's dict: the last value of each)
            names = list(values)
            assert values["x-one"] == "1" and values["x-seen"] == "a,b" and values["x-num"] == "7"
            assert values["x-two"] == "b", path
            assert "x-drop" not in names and names.index("x-one") < names.index("x-seen")
            assert ("x-before-error" in values) == (path == "/err")
            assert ("x-before-bad" in values) == (path == "/badarg") and "x-bad" not in values
        assert proxy.counters()["http.ingress_http.lua.errors"] == 2
    finally:
        proxy.stop()


def test_a_waiting_hook_keeps_its_runner_while_others_end_and_fail(upstream):
    """The prelude reuses a runner coroutine once its hook ended (lua_runtime.py): a hook
    waiting for its body keeps its own while other streams' hooks run, end and fail on the
    same Lua state, and resumes as itself."""
    proxy = _proxy("""
        function envoy_on_request(h)
          local n = h:headers():get("x-n")
          if n == "fail" then error("boom") end
          if h:headers():get(":method") == "POST" then
            local b = h:body()
            h:headers():add("x-got", n .. ":" .. b:getBytes(0, b:length()))
          else
            h:headers():add("x-got", n)
          end
        end""", upstream)
    try:
        import socket
        waiting = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        waiting.sendall(b"POST /w HTTP/1.1\r\nhost: x\r\nx-n: first\r\ncontent-length: 4\r\n\r\n")
        assert proxy.wait_for(lambda: any(s.handles for s in _lua_states(proxy)))  # it waits
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        for i in range(60):
            n = "fail" if i % 7 == 3 else str(i)
            conn.request("GET", "/g", headers={"x-n": n})
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            assert upstream.requests[-1][2].get("x-got") == (None if n == "fail" else n)
        conn.close()
        waiting.sendall(b"body")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += waiting.recv(65536)
        waiting.close()
        assert reply.startswith(b"HTTP/1.1 200")
        assert upstream.requests[-1][1] == "/w" and upstream.requests[-1][2]["x-got"] == "first:body"
        assert proxy.counters()["http.ingress_http.lua.errors"] == 9
    finally:
        proxy.stop()


def test_response_path_only_when_a_script_it_may_run_has_envoy_on_response(upstream):
    """A filter whose scripts (default, named, every route's own in a static table) define no
    envoy_on_response is not in the response path, and runs its default script without
    resolving the route when no route configures it; a named script or a route's own that
    defines one puts it there, and that hook runs."""
    request_only = """
        function envoy_on_request(h)
          h:headers():add("x-req", "1")
        end"""
    own = {"@type": PER_ROUTE, "source_code": {"inline_string": """
        function envoy_on_response(h)
          h:headers():add("x-own", "yes")
        end"""}}
    for routes, encoder, routed in (
            (None, False, False),
            ([{"match": {"prefix": "/own"}, "route": {"cluster": "app"},
               "typed_per_filter_config": {"envoy.filters.http.lua": own}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}}], True, True)):
        proxy = _proxy(request_only, upstream, routes)
        try:
            assert [(w.encoder, w.routed) for w in _worker_luas(proxy)] == [(encoder, routed)]
            status, headers, _ = _get(proxy.port, "/")
            assert status == 200 and upstream.requests[-1][2]["x-req"] == "1"
            assert "x-own" not in headers
            if routes:
                status, headers, _ = _get(proxy.port, "/own")
                assert status == 200 and headers["x-own"] == "yes"
                assert "x-req" not in upstream.requests[-1][2]  # (the route's script only)
        finally:
            proxy.stop()
    # A named script with a response hook, picked by a route.
    config = front_proxy_config(
        [{"match": {"prefix": "/named"}, "route": {"cluster": "app"},
          "typed_per_filter_config": {"envoy.filters.http.lua": {"@type": PER_ROUTE, "name": "resp.lua"}}},
         {"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
        [static_cluster("app", upstream.port)],
        http_filters=[_lua(request_only, source_codes={"resp.lua": {"inline_string": """
            function envoy_on_response(h)
              h:headers():add("x-named", "yes")
            end"""}}), ROUTER])
    proxy = ProxyUnderTest(config)
    try:
        assert [(w.encoder, w.routed) for w in _worker_luas(proxy)] == [(True, True)]
        assert "x-named" not in _get(proxy.port, "/")[1]
        assert _get(proxy.port, "/named")[1]["x-named"] == "yes"
    finally:
        proxy.stop()


def test_local_reply_to_a_grpc_request_stays_grpc_after_the_script_changes_its_content_type(upstream):
    """The filter takes no gRPC snapshot per request (keeps_request_content_type): a script's
    write of the request's content-type notes first that it arrived as gRPC, so respond()
    afterwards is still answered as to a gRPC request (HTTP 200, grpc-status), as Envoy's
    local reply follows how the request arrived."""
    proxy = _proxy("""
        function envoy_on_request(h)
          h:headers():replace("content-type", "text/plain")
          if h:headers():get(":path") == "/deny" then
            h:respond({[":status"] = "403"}, "denied")
          end
        end""", upstream)
    try:
        status, headers, _ = _get(proxy.port, "/deny", "POST", b"x",
                                  headers={"content-type": "application/grpc"})
        assert status == 200 and headers["grpc-status"] == "7", headers
        assert headers["content-type"] == "application/grpc"
        status, headers, _ = _get(proxy.port, "/deny", "POST", b"x",
                                  headers={"content-type": "application/json"})
        assert status == 403 and "grpc-status" not in headers
        assert _get(proxy.port, "/pass", "POST", b"x", headers={"content-type": "application/grpc"})[0] == 200
        assert upstream.requests[-1][2]["content-type"] == "text/plain"
    finally:
        proxy.stop()
