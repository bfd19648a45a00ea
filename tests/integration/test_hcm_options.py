"""HCM options through the running proxy: stream_idle_timeout, request_timeout, via,
always_set_request_id_in_response, HTTP/1.0 handling, and refusal of options not built yet."""

import select
import socket
import time

import pytest

from proxy.config.reader import ConfigError
from proxy.http.hcm_config import parse_hcm

from .clients import echo, request
from .harness import front_proxy_config, raw_request, static_cluster


def routes(timeout="15s"):
    return [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": timeout}}]


def test_stream_idle_timeout_answers_408_when_the_request_body_stalls(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         stream_idle_timeout="0.3s"))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        # Promise 10 bytes, send 3, then stall.
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        reply = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        elapsed = time.monotonic() - started
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert reply.endswith(b"stream timeout")
    assert elapsed < 5
    assert p.counters()["http.ingress_http.downstream_rq_idle_timeout"] == 1


def test_stream_idle_timeout_does_not_cut_a_request_that_keeps_moving(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         stream_idle_timeout="1s"))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for byte in b"abcdefgh":  # 8 x 0.2 s = 1.6 s in all, never 1 s idle
            time.sleep(0.2)
            s.sendall(bytes([byte]))
        reply = s.recv(65536)
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert p.counters().get("http.ingress_http.downstream_rq_idle_timeout", 0) == 0


def test_route_idle_timeout_overrides_the_hcm_stream_idle_timeout(upstream, proxy_factory):
    """Route `idle_timeout` replaces stream_idle_timeout for its route, as in Envoy; 0 disables
    it. The upstream answers after 1 s, with no byte moving meanwhile."""
    def config(hcm_timeout):
        rts = [{"match": {"prefix": "/short/"}, "route": {"cluster": "backend", "prefix_rewrite": "/",
                                                          "idle_timeout": "0.3s"}},
               {"match": {"prefix": "/off/"}, "route": {"cluster": "backend", "prefix_rewrite": "/",
                                                        "idle_timeout": "0s"}},
               {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
        return front_proxy_config(rts, [static_cluster("backend", upstream.port)],
                                  stream_idle_timeout=hcm_timeout)

    p = proxy_factory(config("3s"))  # longer than the upstream's 1 s: only the route's can fire
    r = request(p.port, "/short/delay/1")
    assert r.status == 408 and r.body == b"stream timeout"
    assert request(p.port, "/delay/1").status == 200
    assert p.counters()["http.ingress_http.downstream_rq_idle_timeout"] == 1

    p = proxy_factory(config("0.3s"))  # shorter than the upstream's 1 s
    assert request(p.port, "/off/delay/1").status == 200   # disabled on this route
    assert request(p.port, "/delay/1").status == 408
    assert p.counters()["http.ingress_http.downstream_rq_idle_timeout"] == 1


def test_request_timeout_answers_408_request_timeout(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         request_timeout="0.3s"))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        # Keep trickling (never idle) until the proxy answers: the whole request takes too long.
        reply = b""
        deadline = time.monotonic() + 5
        while not reply and time.monotonic() < deadline:
            if select.select([s], [], [], 0.1)[0]:
                reply = s.recv(65536)
                break
            try:
                s.sendall(b"x")
            except OSError:  # the proxy answered and closed while we were sending
                pass
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert reply.endswith(b"request timeout")
    assert p.counters()["http.ingress_http.downstream_rq_timeout"] == 1


def test_via_is_appended_to_request_and_response(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         via="1.1 ftproxy"))
    r = request(p.port, "/v", headers={"via": "1.0 client-proxy"})
    assert r.status == 200
    assert r.json()["headers"]["via"] == "1.0 client-proxy, 1.1 ftproxy"
    assert r.headers["via"] == "1.1 ftproxy"


def test_always_set_request_id_in_response(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         always_set_request_id_in_response=True))
    r = request(p.port, "/rid")
    assert r.headers["x-request-id"] == r.json()["headers"]["x-request-id"]
    # The option is what puts it there: by default the response has no x-request-id.
    plain = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)]))
    r = request(plain.port, "/rid")
    assert r.status == 200 and r.json()["headers"]["x-request-id"]
    assert "x-request-id" not in r.headers


def test_http10_request_is_refused_with_426_by_default(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)]))
    reply = raw_request(p.port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 426 ")
    assert upstream.requests == []


def test_http10_accepted_with_accept_http_10_and_default_host(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)],
                                         http_protocol_options={"accept_http_10": True,
                                                                "default_host_for_http_10": "legacy.example"}))
    reply = raw_request(p.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in reply.lower()
    assert upstream.requests[-1][2]["host"] == "legacy.example"


@pytest.mark.parametrize("field,value,path", [
    ("proxy_100_continue", True, "hcm.proxy_100_continue"),
    ("common_http_protocol_options", {"max_connection_duration": "10s"},
     "hcm.common_http_protocol_options.max_connection_duration"),
])
def test_options_not_built_yet_are_refused_naming_the_field(field, value, path):
    raw = {"stat_prefix": "x", "route_config": {"virtual_hosts": []}, field: value}
    with pytest.raises(ConfigError) as e:
        parse_hcm(raw, "hcm")
    assert str(e.value).startswith(path + ": not supported yet")


def test_x_forwarded_client_cert_is_sanitized(upstream, proxy_factory):
    p = proxy_factory(front_proxy_config(routes(), [static_cluster("backend", upstream.port)]))
    assert "x-forwarded-client-cert" not in echo(p.port, "/", headers={"x-forwarded-client-cert": "forged"})["headers"]


def test_headers_with_underscores_rejected_or_dropped(upstream, proxy_factory):
    reject = proxy_factory(front_proxy_config(
        routes(), [static_cluster("backend", upstream.port)],
        common_http_protocol_options={"headers_with_underscores_action": "REJECT_REQUEST"}))
    assert request(reject.port, "/", headers={"x_bad": "1"}).status == 400
    # Envoy's name: the HTTP/1 codec's stat, not the connection manager's.
    assert reject.counters()["http1.requests_rejected_with_underscores_in_headers"] == 1
    assert "http.ingress_http.requests_rejected_with_underscores_in_headers" not in reject.counters()
    drop = proxy_factory(front_proxy_config(
        routes(), [static_cluster("backend", upstream.port)],
        common_http_protocol_options={"headers_with_underscores_action": "DROP_HEADER"}))
    seen = echo(drop.port, "/", headers={"x_bad": "1", "x-good": "2"})["headers"]
    assert "x_bad" not in seen and seen["x-good"] == "2"
    assert drop.counters()["http1.dropped_headers_with_underscores"] == 1


def test_an_answer_before_the_request_ends_reaches_a_client_still_sending(upstream, proxy_factory):
    """A local answer (here a direct response) while the client is still sending a large body:
    the proxy closes lingering (FIN after the answer, the rest of the body read and dropped), so
    the client's sends neither fail nor reset the connection, and it reads the whole answer and
    the end. Closed with the body unread, the socket sent a reset instead."""
    import threading
    rts = [{"match": {"prefix": "/early"},
            "direct_response": {"status": 403, "body": {"inline_string": "not you"}}}] + routes()
    p = proxy_factory(front_proxy_config(rts, [static_cluster("backend", upstream.port)]))
    body = b"x" * (4 << 20)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    errors = []

    def send():
        try:
            s.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.sendall(body)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
        sender.join(5)
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 403 ") and reply.endswith(b"not you")
    assert errors == []
