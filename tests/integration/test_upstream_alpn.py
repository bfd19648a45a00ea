"""The upstream protocol chosen at run time, as Envoy's HttpProtocolOptions do it:
`auto_config` (HTTP/2 or HTTP/1.1 by ALPN over TLS, each connection deciding once its
handshake is done: Envoy's mixed pool) and `use_downstream_protocol_config` (each request
goes up in its downstream protocol). Also the ALPN fallback every HTTP pool offers over TLS
when the UpstreamTlsContext configures no `alpn_protocols` ("http/1.1", "h2", or both).

Real sockets on 127.0.0.1: HTTP/1.1 clients (http.client, curl) -> ftproxy -> Python `ssl`
upstreams speaking HTTP/2 (tests/h2_backend.py over TLS) or HTTP/1.1
(tests/tls_upstream.TlsHttpUpstream), with ALPN as each test sets it."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading

import pytest

from tests.h2_backend import H2Backend
from tests.tls_upstream import TlsHttpUpstream, server_context

from .harness import front_proxy_config, static_cluster
from .tls_config import upstream_tls

TYPED = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "c1", "timeout": "10s"}}]


def _options(**upstream_protocol_options) -> dict:
    return {"typed_extension_protocol_options": {TYPED: {
        "@type": "type.googleapis.com/" + TYPED, **upstream_protocol_options}}}


def auto_cluster(port: int, transport: dict | None = None, **auto) -> dict:
    return static_cluster("c1", port, transport_socket=transport or upstream_tls(),
                          **_options(auto_config=auto))


def _get(port: int, path: str, timeout: float = 10.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _parallel(port: int, paths: list[str]) -> list:
    out: list = [None] * len(paths)

    def run(i: int) -> None:
        out[i] = _get(port, paths[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return out


@pytest.fixture
def h2_tls():
    """HTTP/2 over TLS, choosing ALPN h2 only."""
    b = H2Backend(ssl_context=server_context("h2.upstream", alpn=("h2",)), name="h2-tls")
    yield b
    b.close()


def test_auto_config_speaks_http2_when_alpn_chooses_h2_many_streams_on_one_connection(
        proxy_factory, h2_tls):
    p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(h2_tls.port)]))
    # Six requests at once: they wait on the one connecting connection (counted as offering
    # HTTP/2's streams) and are all served on it once ALPN said h2.
    results = _parallel(p.port, [f"/slow?ms=300&i={i}" for i in range(6)])
    assert [r[0] for r in results] == [200] * 6
    seen = [json.loads(r[2]) for r in results]
    assert {s["protocol"] for s in seen} == {"h2"}
    assert h2_tls.connections == 1 and h2_tls.alpns == ["h2"]
    assert h2_tls.max_active >= 2  # streams open at once on it
    assert len({s["stream_id"] for s in seen}) == 6
    c = p.counters()
    assert c["cluster.c1.upstream_cx_total"] == 1
    assert c["cluster.c1.upstream_cx_http2_total"] == 1
    assert c["cluster.c1.upstream_cx_http1_total"] == 0
    assert c["cluster.c1.upstream_rq_2xx"] == 6
    assert c["cluster.c1.ssl.handshake"] == 1
    # The connection stays: the next request reuses it.
    status, _, body = _get(p.port, "/again")
    assert status == 200 and json.loads(body)["conn"] == 1
    assert p.counters()["cluster.c1.upstream_cx_total"] == 1


def test_auto_config_falls_back_to_http1_when_the_upstream_chooses_http1(proxy_factory):
    up = TlsHttpUpstream("h1-only", alpn=("http/1.1",))
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(up.port)]))
        # Requests pending on the first (connecting) connection: once it is HTTP/1.1 it takes
        # one, and the pool opens connections for the others.
        results = _parallel(p.port, [f"/p{i}" for i in range(4)])
        assert [r[0] for r in results] == [200] * 4
        assert {json.loads(r[2])["server"] for r in results} == {"h1-only"}
        assert up.alpns and set(up.alpns) == {"http/1.1"}  # (we offered it)
        # (Connections opened for requests another one served may still be handshaking.)
        assert p.wait_for(lambda: p.counters()["cluster.c1.upstream_cx_http1_total"]
                          == p.counters()["cluster.c1.upstream_cx_total"] == up.connections)
        c = p.counters()
        assert c["cluster.c1.upstream_cx_http2_total"] == 0
        assert up.connections >= 1
        assert c["cluster.c1.upstream_rq_2xx"] == 4
        # Keep-alive on what ALPN chose.
        before = up.connections
        assert _get(p.port, "/more")[0] == 200
        assert up.connections == before
    finally:
        up.close()


def test_auto_config_speaks_http1_when_the_upstream_negotiates_no_alpn(proxy_factory):
    up = TlsHttpUpstream("no-alpn", alpn=None)
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(up.port)]))
        status, headers, body = _get(p.port, "/old-stack")
        assert status == 200 and json.loads(body)["path"] == "/old-stack"
        assert up.alpns == [None]
        c = p.counters()
        assert c["cluster.c1.upstream_cx_http1_total"] == 1
        assert c["cluster.c1.upstream_cx_http2_total"] == 0
    finally:
        up.close()


def test_auto_config_offers_the_tls_contexts_own_alpn_protocols_when_configured(proxy_factory):
    # The upstream would pick h2 if offered (and then fail: it speaks HTTP/1.1). The context's
    # alpn_protocols win over auto_config's "h2,http/1.1", as in Envoy (a fallback).
    up = TlsHttpUpstream("prefers-h2", alpn=("h2", "http/1.1"))
    try:
        transport = upstream_tls(common={"alpn_protocols": ["http/1.1"]})
        p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(up.port, transport)]))
        assert _get(p.port, "/configured")[0] == 200
        assert up.alpns == ["http/1.1"]
        assert p.counters()["cluster.c1.upstream_cx_http1_total"] == 1
    finally:
        up.close()


def test_auto_config_offers_h2_and_http1(proxy_factory):
    # An upstream preferring http/1.1 gets it from our offer; one preferring h2 gets h2 (the
    # first test): both were offered.
    up = TlsHttpUpstream("prefers-h1", alpn=("http/1.1", "h2"))
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(up.port)]))
        assert _get(p.port, "/x")[0] == 200
        assert up.alpns == ["http/1.1"]
    finally:
        up.close()


def test_auto_config_h2_options_apply_to_its_http2_connections(proxy_factory, h2_tls):
    # max_concurrent_streams 2: four requests at once need two HTTP/2 connections.
    p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(
        h2_tls.port, http2_protocol_options={"max_concurrent_streams": 2})]))
    results = _parallel(p.port, [f"/slow?ms=400&i={i}" for i in range(4)])
    assert [r[0] for r in results] == [200] * 4
    assert max(h2_tls.max_active_by_conn.values()) <= 2
    assert h2_tls.connections >= 2
    assert p.wait_for(lambda: p.counters()["cluster.c1.upstream_cx_http2_total"] == h2_tls.connections)


def test_auto_config_connect_failure_fails_the_pending_request(proxy_factory, h2_tls):
    # A handshake the upstream refuses (it verifies nothing; we require a CA it is not
    # signed by) fails the request with 503 UF, as any connect failure.
    from tests.tls_certs import CertAuthority
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        ca_file = CertAuthority().pem_file(Path(d))
        transport = upstream_tls(common={"validation_context": {"trusted_ca": {"filename": str(ca_file)}}})
        p = proxy_factory(front_proxy_config(ROUTES, [auto_cluster(h2_tls.port, transport)]))
        status, _, body = _get(p.port, "/never")
    assert status == 503
    c = p.counters()
    assert c["cluster.c1.upstream_cx_connect_fail"] == 1
    assert c["cluster.c1.upstream_cx_http2_total"] == 0 and c["cluster.c1.upstream_cx_http1_total"] == 0


# -- the ALPN fallback of fixed pools ---------------------------------------------------------

def test_fixed_http1_and_http2_pools_offer_their_protocol_over_tls(proxy_factory, h2_tls):
    up = TlsHttpUpstream("h1", alpn=("h2", "http/1.1"))
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [static_cluster(
            "c1", up.port, transport_socket=upstream_tls())]))
        assert _get(p.port, "/h1")[0] == 200
        assert up.alpns == ["http/1.1"]  # an HTTP/1.1 pool offers only http/1.1
    finally:
        up.close()
    p = proxy_factory(front_proxy_config(ROUTES, [static_cluster(
        "c1", h2_tls.port, transport_socket=upstream_tls(),
        **_options(explicit_http_config={"http2_protocol_options": {}}))]))
    status, _, body = _get(p.port, "/h2")
    assert status == 200 and json.loads(body)["protocol"] == "h2"
    assert h2_tls.alpns == ["h2"]
    assert p.counters()["cluster.c1.upstream_cx_http2_total"] == 1


# -- use_downstream_protocol_config -----------------------------------------------------------

@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_use_downstream_protocol_config_follows_the_clients_protocol(proxy_factory):
    # A plaintext upstream speaking both HTTP/1.1 and h2c (prior knowledge).
    both = H2Backend(http1_too=True, name="both")
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [static_cluster(
            "c1", both.port, **_options(use_downstream_protocol_config={}))]))

        def curl(*args: str) -> dict:
            r = subprocess.run(["curl", "-sS", "--max-time", "5", *args,
                                f"http://127.0.0.1:{p.port}/via"],
                               capture_output=True, text=True, timeout=15)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        assert curl("--http2-prior-knowledge")["protocol"] == "h2"
        assert curl("--http1.1")["protocol"] == "http/1.1"
        assert curl("--http2-prior-knowledge")["protocol"] == "h2"  # (its pool's connection)
        assert [r["protocol"] for r in both.requests] == ["h2", "http/1.1", "h2"]
        c = p.counters()
        assert c["cluster.c1.upstream_cx_http2_total"] == 1
        assert c["cluster.c1.upstream_cx_http1_total"] == 1
        assert c["cluster.c1.upstream_rq_2xx"] == 3
        # /clusters: the host's stats sum its two pools.
        status, body = p.admin("/clusters?format=json")
        assert status == 200
        host = json.loads(body)["cluster_statuses"][0]["host_statuses"][0]
        stats = {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
        assert stats["rq_total"] == 3 and stats["rq_success"] == 3
        assert stats["cx_total"] == 2 and stats["cx_active"] == 2
    finally:
        both.close()


def test_use_downstream_protocol_config_over_tls_offers_each_pools_protocol(proxy_factory):
    both = H2Backend(http1_too=True, name="both-tls",
                     ssl_context=server_context("both", alpn=("h2", "http/1.1")))
    try:
        p = proxy_factory(front_proxy_config(ROUTES, [static_cluster(
            "c1", both.port, transport_socket=upstream_tls(),
            **_options(use_downstream_protocol_config={
                "http2_protocol_options": {"max_concurrent_streams": 10}}))]))
        status, _, body = _get(p.port, "/one")  # an HTTP/1.1 client: HTTP/1.1 upstream
        assert status == 200 and json.loads(body)["protocol"] == "http/1.1"
        assert both.alpns == ["http/1.1"]
        assert p.counters()["cluster.c1.upstream_cx_http1_total"] == 1
    finally:
        both.close()
