"""The JWT authentication filter through the running proxy, with tokens signed here (tests/
jwt_tokens.py) and, for remote keys, a real JWKS server on 127.0.0.1: every algorithm Envoy
verifies passes with its key and fails with another's, exp/nbf honour the clock skew, remote
keys are fetched once per cache_duration and again after it (key rotation), a JWKS server that
is down or answers garbage gives Envoy's answer, a client leaving while the keys are fetched
cancels the fetch, garbage tokens are answered and the proxy serves on, and what the filter does
not do is refused by name. Agreement with real Envoy: tests/differential/cases/
filter_jwt_authn*.yaml."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from ..jwt_tokens import b64url, jwks, make_key
from ..lua_support import lua_in_process_skip_reason
from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .servers import DecidingService

URL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
LUA_IN_PROCESS_SKIP = lua_in_process_skip_reason()
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
ISS = "https://issuer.test"
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
        "EdDSA", "HS256", "HS384", "HS512"]


def _claims(**kw) -> dict:
    c = {"iss": ISS, "sub": "alice", "aud": "api", "exp": int(time.time()) + 3600}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def _config(app_port: int, providers: dict, rules=None, clusters=(), **extra) -> dict:
    flt = {"@type": URL, "providers": providers,
           "rules": rules or [{"match": {"prefix": "/"}, "requires": {"provider_name": next(iter(providers))}}],
           **extra}
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                              [static_cluster("app", app_port), *clusters],
                              http_filters=[{"name": "envoy.filters.http.jwt_authn", "typed_config": flt}, ROUTER])


def _local(keys, **extra) -> dict:
    return {"issuer": ISS, "audiences": ["api"], "local_jwks": {"inline_string": jwks(*keys)}, **extra}


def _get(port: int, path: str = "/x", token: str | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = dict(headers or {})
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    conn.request("GET", path, headers=h)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body


@pytest.fixture(scope="module")
def keys():
    return {alg: make_key(alg) for alg in ALGS}


def test_every_algorithm_verifies_with_its_key_and_only_its_key(upstream, keys):
    # One JWKS holding every key, each with its kid and alg, as an issuer publishes them.
    p = ProxyUnderTest(_config(upstream.port, {"main": _local(keys.values(), forward_payload_header="x-payload")}))
    try:
        for alg, key in keys.items():
            token = key.sign(_claims(alg_used=alg))
            status, _, body = _get(p.port, f"/{alg}", token)
            assert (status, alg) == (200, alg), body
            seen = upstream.requests[-1][2]
            assert "authorization" not in seen          # not forwarded by default
            payload = json.loads(__import__("base64").urlsafe_b64decode(seen["x-payload"] + "=="))
            assert payload["alg_used"] == alg
            # The same token signed by another key of the same family, under this kid: fails.
            other = make_key(alg, key.kid)
            forged = other.sign(_claims())
            assert _get(p.port, "/x", forged)[2] == b"Jwt verification fails", alg
        c = p.counters()
        assert c["http.ingress_http.jwt_authn.allowed"] == len(ALGS)
        assert c["http.ingress_http.jwt_authn.denied"] == len(ALGS)
    finally:
        p.stop()


def test_expiry_and_not_before_honour_the_clock_skew(upstream, keys):
    key = keys["ES256"]
    now = int(time.time())
    p = ProxyUnderTest(_config(upstream.port, {"main": _local([key]), "strict": _local([key], clock_skew_seconds=5)},
                               rules=[{"match": {"prefix": "/strict"}, "requires": {"provider_name": "strict"}},
                                      {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]))
    try:
        assert _get(p.port, "/x", key.sign(_claims(exp=now - 30)))[0] == 200     # within 60 s
        status, headers, body = _get(p.port, "/x", key.sign(_claims(exp=now - 120)))
        assert (status, body) == (401, b"Jwt is expired")
        assert headers["www-authenticate"] == 'Bearer realm="http://127.0.0.1:%d/x", error="invalid_token"' % p.port
        assert _get(p.port, "/strict", key.sign(_claims(exp=now - 30)))[2] == b"Jwt is expired"
        assert _get(p.port, "/x", key.sign(_claims(nbf=now + 30)))[0] == 200
        assert _get(p.port, "/x", key.sign(_claims(nbf=now + 120)))[2] == b"Jwt not yet valid"
        assert _get(p.port, "/strict", key.sign(_claims(nbf=now + 30)))[2] == b"Jwt not yet valid"
        status, headers, body = _get(p.port, "/x")
        assert (status, body) == (401, b"Jwt is missing")
        assert headers["www-authenticate"] == 'Bearer realm="http://127.0.0.1:%d/x"' % p.port
        status, _, body = _get(p.port, "/x", key.sign(_claims(aud="elsewhere")))
        assert (status, body) == (403, b"Audiences in Jwt are not allowed")
    finally:
        p.stop()


class _JwksServer:
    """A JWKS endpoint whose keys (or answer) the test changes."""

    def __init__(self, *keys) -> None:
        self.lock = threading.Lock()   # guards body/status (handler threads read them)
        self.body = jwks(*keys).encode()
        self.status = 200
        self.service = DecidingService(self._decide)
        self.port = self.service.port

    def _decide(self, path, headers):
        with self.lock:
            return self.status, [("content-type", "application/json")], self.body

    def serve(self, body: bytes, status: int = 200) -> None:
        with self.lock:
            self.body, self.status = body, status

    @property
    def fetches(self) -> int:
        return len(self.service.requests)

    def close(self) -> None:
        self.service.close()


def _remote(port: int, cache: str = "300s", timeout: str = "2s") -> tuple[dict, dict]:
    provider = {"issuer": ISS, "audiences": ["api"], "remote_jwks": {
        "http_uri": {"uri": "http://keys.test/.well-known/jwks.json", "cluster": "keys", "timeout": timeout},
        "cache_duration": cache}}
    return provider, static_cluster("keys", port)


def test_remote_keys_are_fetched_once_then_cached_until_cache_duration(upstream, keys):
    old, new = make_key("RS256", "k1"), make_key("RS256", "k2")
    server = _JwksServer(old)
    provider, cluster = _remote(server.port, cache="3s")
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}, clusters=[cluster]))
    try:
        for _ in range(5):
            assert _get(p.port, "/x", old.sign(_claims()))[0] == 200
        assert server.fetches == 1
        path, headers = server.service.requests[0]
        assert path == "/.well-known/jwks.json" and headers["host"] == "keys.test"
        # The issuer rotates its key: tokens of the new key fail until the cache expires.
        server.serve(jwks(new).encode())
        no_key = b"Jwks doesn't have key to match kid or alg from Jwt"
        assert _get(p.port, "/x", new.sign(_claims()))[2] == no_key
        assert p.wait_for(lambda: _get(p.port, "/x", new.sign(_claims()))[0] == 200, timeout=10)
        assert server.fetches == 2
        assert _get(p.port, "/x", old.sign(_claims()))[2] == no_key
        c = p.counters()
        assert c["http.ingress_http.jwt_authn.jwks_fetch_success"] == 2
        assert c["http.ingress_http.jwt_authn.jwks_fetch_failed"] == 0
    finally:
        p.stop()
        server.close()


def test_a_failed_fetch_is_answered_and_the_next_request_tries_again(upstream):
    key = make_key("ES256")
    server = _JwksServer(key)
    server.serve(b"not json")
    provider, cluster = _remote(server.port)
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}, clusters=[cluster]))
    try:
        token = key.sign(_claims())
        assert _get(p.port, "/x", token)[:3:2] == (401, b"Jwks remote fetch is failed")
        server.serve(b"{}", status=503)
        assert _get(p.port, "/x", token)[2] == b"Jwks remote fetch is failed"
        server.serve(jwks(key).encode())
        assert _get(p.port, "/x", token)[0] == 200
        c = p.counters()
        assert c["http.ingress_http.jwt_authn.jwks_fetch_failed"] == 2
        assert c["http.ingress_http.jwt_authn.jwks_fetch_success"] == 1
        server.close()
    finally:
        p.stop()


def test_a_client_leaving_during_the_key_fetch_cancels_it(upstream):
    key = make_key("RS256")
    release = threading.Event()
    asked = threading.Event()

    def slow(path, headers):
        asked.set()
        release.wait(5)
        return 200, [], jwks(key).encode()

    service = DecidingService(slow)
    provider, cluster = _remote(service.port, timeout="10s")
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}, clusters=[cluster]))
    try:
        s = socket.create_connection(("127.0.0.1", p.port))
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer %s\r\n\r\n" % key.sign(_claims()).encode())
        assert asked.wait(5)
        s.close()
        assert p.wait_for(lambda: p.gauges().get("cluster.keys.upstream_rq_active") == 0)
        release.set()
        # The proxy serves on, and the next request fetches the keys itself.
        assert _get(p.port, "/x", key.sign(_claims()))[0] == 200
        assert len(upstream.requests) == 1
    finally:
        release.set()
        p.stop()
        service.close()


def test_garbage_tokens_are_answered_and_the_proxy_serves_on(upstream, keys):
    key = keys["RS256"]
    good = key.sign(_claims())
    h, pl, sig = good.split(".")
    garbage = ["", ".", "..", "a.b", "a.b.c.d", "!!!.###.$$$", h + "." + pl, h + ".." + sig,
               b64url(b"[]") + "." + pl + "." + sig, b64url(b'{"alg":5}') + "." + pl + "." + sig,
               b64url(b'{"alg":"none"}') + "." + pl + "." + sig, h + "." + b64url(b"null") + "." + sig,
               h + "." + b64url(b'{"exp":-1}') + "." + sig, h + "." + b64url(b'{"exp":1e30}') + "." + sig,
               h + "." + pl + ".%%%", "\u00e9.\u00e9.\u00e9", "x" * 20000]
    garbage += [os.urandom(30).hex()[:n] + "." + os.urandom(30).hex() + "." + os.urandom(8).hex()
                for n in range(1, 20)]
    p = ProxyUnderTest(_config(upstream.port, {"main": _local([key])}))
    try:
        for token in garbage:
            status, _, body = _get(p.port, "/x", token)
            assert status == 401 and body.startswith(b"Jwt"), (token[:40], body)
        assert _get(p.port, "/x", good)[0] == 200
    finally:
        p.stop()


def test_a_local_jwks_file_is_read_at_load(upstream, tmp_path):
    key = make_key("EdDSA")
    path = tmp_path / "jwks.json"
    path.write_text(jwks(key))
    provider = {"issuer": ISS, "local_jwks": {"filename": str(path)}}
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}))
    try:
        assert _get(p.port, "/x", key.sign(_claims()))[0] == 200
    finally:
        p.stop()


def test_an_empty_local_jwks_leaves_the_provider_without_keys(upstream):
    # As Envoy 1.40: an empty key set loads, and each token of that provider fails at request
    # time (one that does not parse is refused at load: test_what_it_refuses_is_named).
    key = make_key("RS256")
    p = ProxyUnderTest(_config(upstream.port, {"main": {"issuer": ISS, "local_jwks": {"inline_string": ""}}}))
    try:
        assert _get(p.port, "/x", key.sign(_claims()))[2] == b"Jwks doesn't have any valid public key"
    finally:
        p.stop()


@pytest.mark.parametrize("provider_extra,filter_extra,where", [
    ({}, {"rules": [{"match": {"prefix": "/"}, "requires": {"extract_only_without_validation": {}}}]},
     "extract_only_without_validation"),
    ({"jwt_cache_config": {"jwt_cache_size": -1}}, {}, "jwt_cache_size"),
    ({"claim_to_headers": [{"header_name": "x", "claim_name": "a", "claim_path": [{"key": "a"}]}]}, {},
     "which does not set exactly one of claim_name and claim_path"),
    ({}, {"filter_state_rules": {"name": "sel", "requires": {}}}, "filter_state_rules"),
    ({}, {"rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "nope"}}]},
     "Required provider ['nope'] is not configured."),
    ({}, {"rules": [{"match": {"prefix": "/"}, "requirement_name": "nope"}]}, "Wrong requirement_name: nope"),
    ({}, {"rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
        {"provider_name": "main"}]}}}]}, "at least 2"),
    ({"bogus": 1}, {}, "bogus"),
    ({"local_jwks": {"inline_string": "{oops"}}, {}, "has invalid local jwks: Jwks is an invalid JSON"),
    ({"local_jwks": {"inline_string": '{"keys": []}'}}, {}, "Jwks doesn't have any valid public key"),
])
def test_what_it_refuses_is_named(provider_extra, filter_extra, where):
    provider = {"issuer": ISS, "local_jwks": {"inline_string": jwks(make_key("HS256"))}, **provider_extra}
    cfg = _config(1, {"main": provider}, **filter_extra)
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(cfg)


def test_remote_jwks_async_fetch_is_refused_by_name():
    provider, cluster = _remote(1)
    provider["remote_jwks"]["async_fetch"] = {"fast_listener": True}
    with pytest.raises(ConfigError, match="async_fetch"):
        parse_bootstrap(_config(1, {"main": provider}, clusters=[cluster]))


def test_a_request_body_waits_for_the_key_fetch_and_reaches_the_upstream_whole(upstream):
    key = make_key("PS256")
    release = threading.Event()

    def slow(path, headers):
        release.wait(5)
        return 200, [], jwks(key).encode()

    service = DecidingService(slow)
    provider, cluster = _remote(service.port, timeout="10s")
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}, clusters=[cluster]))
    try:
        body = os.urandom(300_000)
        result = {}

        def post():
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("POST", "/upload", body=body, headers={"authorization": "Bearer " + key.sign(_claims())})
            r = conn.getresponse()
            result["status"] = r.status
            r.read()
            conn.close()

        t = threading.Thread(target=post)
        t.start()
        assert p.wait_for(lambda: len(service.requests) == 1)
        time.sleep(0.2)   # the body arrives while the keys are being fetched
        assert len(upstream.requests) == 0
        release.set()
        t.join(10)
        assert result["status"] == 200
        assert upstream.requests[-1][3] == body
    finally:
        release.set()
        p.stop()
        service.close()


def test_concurrent_requests_on_two_workers_each_get_their_own_answer(upstream, keys):
    from concurrent.futures import ThreadPoolExecutor
    rs, es = keys["RS256"], keys["ES256"]
    p = ProxyUnderTest(_config(upstream.port, {"main": _local([rs, es], claim_to_headers=[
        {"header_name": "x-user", "claim_name": "sub"}])}), concurrency=2)
    try:
        def one(i):
            key = rs if i % 2 else es
            if i % 3 == 0:
                return i, _get(p.port, f"/u{i}", key.sign(_claims(exp=1)))
            return i, _get(p.port, f"/u{i}", key.sign(_claims(sub=f"user{i}")))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(60)))
        seen = {r[1]: r[2]["x-user"] for r in upstream.requests}
        for i, (status, _, body) in results:
            if i % 3 == 0:
                assert (status, body) == (401, b"Jwt is expired")
            else:
                assert status == 200 and seen[f"/u{i}"] == f"user{i}"
        c = p.counters()
        assert c["http.ingress_http.jwt_authn.allowed"] == 40 and c["http.ingress_http.jwt_authn.denied"] == 20
    finally:
        p.stop()


def test_jwt_cache_config_keeps_verified_tokens_per_worker_lru(upstream, keys):
    key = keys["RS256"]
    provider = _local([key], jwt_cache_config={"jwt_cache_size": 2})
    p = ProxyUnderTest(_config(upstream.port, {"main": provider}, rules=[
        {"match": {"prefix": "/narrow"}, "requires": {"provider_and_audiences": {
            "provider_name": "main", "audiences": ["narrow"]}}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]))
    try:
        a, b, c = (key.sign(_claims(sub=s)) for s in "abc")
        for token, path in ((a, "/"), (a, "/"), (b, "/"), (a, "/"), (c, "/"), (b, "/"), (a, "/")):
            assert _get(p.port, path, token)[0] == 200
        counters = p.counters()
        # a miss, a hit, b miss, a hit, c miss (b goes), b miss (a goes), a miss
        assert counters["http.ingress_http.jwt_authn.jwt_cache_hit"] == 2
        assert counters["http.ingress_http.jwt_authn.jwt_cache_miss"] == 5
        # A cached token is still held to the requirement's audiences.
        assert _get(p.port, "/narrow", a)[:3:2] == (403, b"Audiences in Jwt are not allowed")
        assert p.counters()["http.ingress_http.jwt_authn.jwt_cache_hit"] == 3
    finally:
        p.stop()


@pytest.mark.skipif(LUA_IN_PROCESS_SKIP is not None, reason=str(LUA_IN_PROCESS_SKIP))
def test_payload_and_header_in_metadata_reach_a_lua_filter(upstream, keys):
    key = keys["ES384"]
    provider = _local([key], payload_in_metadata="p", header_in_metadata="h",
                      normalize_payload_in_metadata={"space_delimited_claims": ["scope"]})
    lua = {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": """
function envoy_on_request(h)
  local md = h:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  h:headers():add("x-md", md["p"]["sub"] .. "|" .. md["h"]["alg"] .. "|" .. table.concat(md["p"]["scope"], ","))
end"""}}}
    cfg = _config(upstream.port, {"main": provider})
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(1, lua)
    p = ProxyUnderTest(cfg)
    try:
        assert _get(p.port, "/x", key.sign(_claims(scope="read write")))[0] == 200
        assert upstream.requests[-1][2]["x-md"] == "alice|ES384|read,write"
    finally:
        p.stop()


@pytest.mark.skipif(__import__("shutil").which("curl") is None, reason="curl not installed")
def test_over_http2_tokens_from_a_header_and_split_cookies(upstream, keys):
    import subprocess
    key = keys["EdDSA"]
    p = ProxyUnderTest(_config(upstream.port, {"main": _local([key]), "c": _local([key], from_cookies=["s"])},
                               rules=[{"match": {"prefix": "/c"}, "requires": {"provider_name": "c"}},
                                      {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]))

    def curl(path, *args):
        out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", *args,
                              f"http://127.0.0.1:{p.port}{path}"], capture_output=True, timeout=10)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        return head, body

    try:
        token = key.sign(_claims())
        head, _ = curl("/x", "-H", f"authorization: Bearer {token}")
        assert head.startswith(b"HTTP/2 200")
        head, body = curl("/x")
        assert head.startswith(b"HTTP/2 401") and body == b"Jwt is missing"
        assert b'www-authenticate: Bearer realm="http://127.0.0.1:%d/x"' % p.port in head
        # HTTP/2 clients may send each cookie as its own header field: all of them are read.
        head, _ = curl("/c", "-H", "cookie: a=1", "-H", f"cookie: s={token}")
        assert head.startswith(b"HTTP/2 200"), head
    finally:
        p.stop()


def test_a_cached_token_is_refused_once_expired_and_passes_with_its_headers(upstream, keys):
    """A cached token (jwt_cache_config) passes without its signature check, yet with every
    effect of a good token (payload and claim headers, the token header taken out); a request
    that might carry another token (a query) or a forged payload header still gets the whole
    check; and the time checks still hold it: expired past the cache's 60 s it is dropped (a
    miss), expired past a provider's own skew (1 s) it stays cached and is refused (a hit)."""
    key = keys["ES256"]
    cached = {"jwt_cache_config": {}, "forward_payload_header": "x-payload",
              "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}
    p = ProxyUnderTest(_config(upstream.port, {"main": _local([key], **cached),
                                               "strict": _local([key], clock_skew_seconds=1, **cached)},
                               rules=[{"match": {"prefix": "/strict"}, "requires": {"provider_name": "strict"}},
                                      {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]))
    try:
        now = int(time.time())
        if time.time() - now > 0.5:   # start early in a second: both tokens expire at now + 2
            while int(time.time()) == now:
                time.sleep(0.01)
            now += 1
        a = key.sign(_claims(sub="a", exp=now - 59))   # good while int(t) <= exp + 60
        b = key.sign(_claims(sub="b", exp=now))        # good for "strict" while int(t) <= exp + 1
        for path, token, sub in (("/x", a, "a"), ("/x", a, "a"), ("/strict", b, "b"), ("/strict", b, "b")):
            status, _, body = _get(p.port, path, token)
            assert status == 200, body
            seen = upstream.requests[-1][2]
            assert seen["x-sub"] == sub and "authorization" not in seen
            assert json.loads(__import__("base64").urlsafe_b64decode(seen["x-payload"] + "=="))["sub"] == sub
        # A forged payload header is taken out, the cached token's put in.
        assert _get(p.port, "/x", a, {"x-payload": "forged", "x-sub": "mallory"})[0] == 200
        seen = upstream.requests[-1][2]
        assert seen["x-sub"] == "a" and seen["x-payload"] != "forged"
        # A query may hold another token (access_token, the default location): it must verify too.
        assert _get(p.port, "/x?access_token=garbage", a)[2] == (
            b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
        assert time.time() < now + 2, "too slow a machine for this test's window"
        c = p.counters()
        assert (c["http.ingress_http.jwt_authn.jwt_cache_hit"], c["http.ingress_http.jwt_authn.jwt_cache_miss"]) == (3, 3)
        while int(time.time()) < now + 2:
            time.sleep(0.02)
        for path, token in (("/x", a), ("/strict", b)):
            status, headers, body = _get(p.port, path, token)
            assert (status, body) == (401, b"Jwt is expired")
            assert headers["www-authenticate"].endswith(', error="invalid_token"')
        c = p.counters()
        # a: dropped from the cache (a miss); b: still cached (a hit), refused by its provider's skew.
        assert (c["http.ingress_http.jwt_authn.jwt_cache_hit"], c["http.ingress_http.jwt_authn.jwt_cache_miss"]) == (4, 4)
        assert (c["http.ingress_http.jwt_authn.allowed"], c["http.ingress_http.jwt_authn.denied"]) == (5, 3)
    finally:
        p.stop()
