"""HTTP CONNECT as Envoy does it (its tcp_tunneling integration tests are the spec): a route
matched by `connect_matcher` whose CONNECT upgrade config has `connect_config` terminates the
CONNECT (200 once a TCP connection to the host is up, then the raw bytes both ways); without
`connect_config` the CONNECT goes to an upstream that handles it (HTTP/1.1 or HTTP/2).
Real clients (curl --proxytunnel, raw sockets, the `h2` library for HTTP/2 CONNECT) and real
upstreams on 127.0.0.1; Envoy's own configs (proxy_connect.yaml, terminate_http1_connect.yaml)
load and serve, moved onto loopback ports."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from h2.errors import ErrorCodes

from tests.ports import free_port

from .harness import EchoUpstream, front_proxy_config, static_cluster
from .servers import AcceptLoop, TcpEchoUpstream, read_response
from .test_h2_downstream import H2Client

CONFIGS = Path(__file__).parent.parent / "differential" / "configs"
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
CONNECT_TERMINATE = [{"upgrade_type": "CONNECT", "connect_config": {}}]


class CloserUpstream(AcceptLoop):
    """Says `bye` and half-closes at once; records what it then reads until the peer's FIN."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done = threading.Event()
        super().__init__("closer")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            s.sendall(b"bye")
            s.shutdown(socket.SHUT_WR)
            got = b""
            s.settimeout(5)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
            self.received.append(got)
        except OSError:
            pass
        finally:
            s.close()
            self.done.set()


class RecordingEcho(AcceptLoop):
    """A TCP echo that records, per connection, whether it saw the client's FIN."""

    def __init__(self) -> None:
        self.fins = 0
        self.lock = threading.Lock()  # guards fins (handler threads)
        super().__init__("recording-echo")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            while True:
                d = s.recv(262144)
                if not d:
                    with self.lock:
                        self.fins += 1
                    s.shutdown(socket.SHUT_WR)
                    return
                s.sendall(d)
        except OSError:
            pass
        finally:
            s.close()


@pytest.fixture
def echo():
    u = RecordingEcho()
    yield u
    u.close()


def connect_route(cluster: str, terminate: bool = True, **match) -> dict:
    route = {"cluster": cluster}
    if terminate:
        route["upgrade_configs"] = CONNECT_TERMINATE
    return {"match": {"connect_matcher": {}, **match}, "route": route}


def terminating_proxy(proxy_factory, port: int, **hcm):
    hcm.setdefault("http2_protocol_options", {"allow_connect": True})
    return proxy_factory(front_proxy_config([connect_route("tcp")], [static_cluster("tcp", port)], **hcm))


def open_tunnel(port: int, target: bytes, extra: bytes = b"") -> tuple[socket.socket, bytes]:
    """An HTTP/1.1 CONNECT; returns the socket and the response head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n" + extra + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        assert d, head
        head += d
    return s, head


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        assert d, out
        out += d
    return out


def recv_until_eof(s: socket.socket) -> bytes:
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            return out
        out += d


class ConnectClient(H2Client):
    def connect(self, authority: bytes, end: bool = False, extra=()) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority), *extra],
                               end_stream=end)
        self.flush()
        return sid


# -- HTTP/1.1 CONNECT, terminated ------------------------------------------------------------

def test_http1_connect_is_answered_200_and_tunnels_bytes_both_ways(proxy_factory, echo):
    p = terminating_proxy(proxy_factory, echo.port)
    s, head = open_tunnel(p.port, b"127.0.0.1:%d" % echo.port, b"x-early: 1\r\n")
    # Envoy's answer: a bare 200 (date and server only: no length, no service time).
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    names = sorted(line.split(b":")[0].lower() for line in lines[1:] if line)
    assert names == [b"date", b"server"]
    big = os.urandom(3 * 1024 * 1024)   # past every buffer limit: flow control both ways
    sender = threading.Thread(target=s.sendall, args=(big,))
    sender.start()
    assert recv_exactly(s, len(big)) == big
    sender.join()
    s.sendall(b"more")
    assert recv_exactly(s, 4) == b"more"
    s.shutdown(socket.SHUT_WR)          # the client's FIN goes on as the upstream's half-close
    assert recv_until_eof(s) == b""
    s.close()
    assert p.wait_for(lambda: echo.fins == 1)
    c = p.counters()
    assert c["http.ingress_http.downstream_cx_upgrades_total"] == 1
    assert c["cluster.tcp.upstream_cx_total"] == 1
    assert c["cluster.tcp.upstream_rq_200"] == 1
    assert c["cluster.tcp.upstream_cx_tx_bytes_total"] == len(big) + 4
    assert c["cluster.tcp.upstream_cx_rx_bytes_total"] == len(big) + 4
    assert c.get("cluster.tcp.upstream_cx_http1_total", 0) == 0
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_upgrades_active") == 0
                      and p.gauges().get("cluster.tcp.upstream_cx_active") == 0)


def test_bytes_sent_with_the_connect_head_reach_the_upstream(proxy_factory, echo):
    p = terminating_proxy(proxy_factory, echo.port)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\nearly-bytes" % echo.port)
    got = recv_until_eof_after(s, b"early-bytes")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nearly-bytes")
    s.close()


def recv_until_eof_after(s: socket.socket, tail: bytes) -> bytes:
    out = b""
    while not out.endswith(tail):
        d = s.recv(65536)
        assert d, out
        out += d
    return out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_proxytunnel_through_terminated_connect(proxy_factory):
    up = EchoUpstream()
    try:
        p = proxy_factory(front_proxy_config([connect_route("tcp")], [static_cluster("tcp", up.port)],
                                             upgrade_configs=[{"upgrade_type": "CONNECT"}]))
        out = subprocess.run(["curl", "-sS", "-p", "-x", f"http://127.0.0.1:{p.port}",
                              f"http://127.0.0.1:{up.port}/through/the/tunnel?x=1"],
                             capture_output=True, timeout=15)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        # The request inside the tunnel reached the upstream as curl wrote it.
        assert seen["path"] == "/through/the/tunnel?x=1"
        assert seen["headers"]["host"] == f"127.0.0.1:{up.port}"
        assert "x-forwarded-for" not in seen["headers"]  # the proxy did not touch it
        assert p.counters()["cluster.tcp.upstream_rq_200"] == 1
    finally:
        up.close()


def test_upstream_fin_ends_an_http1_tunnel_after_its_bytes(proxy_factory):
    closer = CloserUpstream()
    try:
        p = terminating_proxy(proxy_factory, closer.port)
        s, head = open_tunnel(p.port, b"127.0.0.1:%d" % closer.port)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert recv_until_eof(s) == b"bye"
        s.close()
        assert closer.done.wait(5)
        assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_active") == 0)
    finally:
        closer.close()


# -- refusals, as Envoy answers them ---------------------------------------------------------

def _status(port: int, target: bytes, extra: bytes = b"") -> tuple[int, bytes, bool]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n" + extra + b"\r\n")
    r = read_response(s, "CONNECT")
    closed = s.recv(1) == b""
    s.close()
    return r.status, r.body, closed and r.header("connection") == "close"


def test_connect_without_a_route_or_upgrade_config_is_refused_and_the_connection_closes(proxy_factory, echo):
    plain = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    target = b"127.0.0.1:%d" % echo.port
    # The HCM allows CONNECT but no route matches it (a prefix route never matches a CONNECT).
    p = proxy_factory(front_proxy_config([plain], [static_cluster("tcp", echo.port)],
                                         upgrade_configs=[{"upgrade_type": "CONNECT"}]))
    assert _status(p.port, target) == (404, b"", True)
    # Neither the HCM nor the route enables CONNECT: 403 (Envoy's upgrade_failed).
    p2 = proxy_factory(front_proxy_config([connect_route("tcp", terminate=False), plain],
                                          [static_cluster("tcp", echo.port)]))
    assert _status(p2.port, target) == (403, b"", True)
    # The route disables what the HCM enables.
    off = {"match": {"connect_matcher": {}}, "route": {"cluster": "tcp", "upgrade_configs": [
        {"upgrade_type": "CONNECT", "enabled": False}]}}
    p3 = proxy_factory(front_proxy_config([off], [static_cluster("tcp", echo.port)],
                                          upgrade_configs=[{"upgrade_type": "CONNECT"}]))
    assert _status(p3.port, target) == (403, b"", True)
    c, c2, c3 = p.counters(), p2.counters(), p3.counters()
    assert c["http.ingress_http.no_route"] == 1 and c["http.ingress_http.downstream_cx_upgrades_total"] == 1
    for cc in (c2, c3):  # refused before the router: not in rq_total, not an upgrade
        assert cc["http.ingress_http.downstream_rq_ws_on_non_ws_route"] == 1
        assert cc.get("http.ingress_http.rq_total", 0) == 0
        assert cc.get("http.ingress_http.downstream_cx_upgrades_total", 0) == 0
    assert echo.connections == 0


def test_connect_to_a_closed_port_is_503_uf(proxy_factory, tmp_path):
    closed_port = free_port()  # nothing listens there
    log = tmp_path / "access.log"
    p = terminating_proxy(proxy_factory, closed_port, access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(log), "log_format": {"text_format_source": {"inline_string":
                "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                "%UPSTREAM_HOST%\n"}}}}])
    status, body, closed = _status(p.port, b"127.0.0.1:%d" % closed_port)
    assert (status, closed) == (503, True)
    assert body == (b"upstream connect error or disconnect/reset before headers. reset reason: "
                    b"remote connection failure")
    assert p.counters()["cluster.tcp.upstream_cx_connect_fail"] == 1
    # As Envoy 1.40 logs it: no path, and the host the connect failed to.
    assert p.wait_for(lambda: log.exists() and log.read_text().strip())
    assert log.read_text().split() == ["CONNECT", "127.0.0.1:%d" % closed_port, "-", "503", "UF",
                                       "127.0.0.1:%d" % closed_port]


# -- ORIGINAL_DST: the CONNECT names its host --------------------------------------------------

def _original_dst_proxy(proxy_factory, header: str | None):
    od = {"name": "od", "connect_timeout": "1s", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
          "original_dst_lb_config": {"use_http_header": True}}
    if header:
        od["original_dst_lb_config"]["http_header_name"] = header
    return proxy_factory(front_proxy_config([connect_route("od")], [od],
                                            upgrade_configs=[{"upgrade_type": "CONNECT"}]))


def test_original_dst_cluster_connects_where_the_authority_says(proxy_factory, echo):
    other = TcpEchoUpstream()
    try:
        p = _original_dst_proxy(proxy_factory, ":authority")
        for port in (echo.port, other.port, echo.port):
            s, head = open_tunnel(p.port, b"127.0.0.1:%d" % port)
            assert head.startswith(b"HTTP/1.1 200")
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
            s.close()
        assert p.wait_for(lambda: echo.connections == 2 and other.connections == 1)
        # Not an IP and port: no host (Envoy: original_dst_host_invalid, 503 UH).
        assert _status(p.port, b"localhost:%d" % echo.port)[:2] == (503, b"no healthy upstream")
        c = p.counters()
        assert c["cluster.od.original_dst_host_invalid"] == 1
        assert c["cluster.od.upstream_cx_none_healthy"] == 1
    finally:
        other.close()


def test_original_dst_default_header_names_the_host(proxy_factory, echo):
    p = _original_dst_proxy(proxy_factory, None)   # x-envoy-original-dst-host
    s, head = open_tunnel(p.port, b"elsewhere.example:443",
                          b"x-envoy-original-dst-host: 127.0.0.1:%d\r\n" % echo.port)
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"hi")
    assert recv_exactly(s, 2) == b"hi"
    s.close()


# -- HTTP/2 CONNECT ------------------------------------------------------------------------

def test_http2_connect_streams_data_and_half_closes_each_way(proxy_factory, echo):
    p = terminating_proxy(proxy_factory, echo.port)
    c = ConnectClient(p.port)
    try:
        sid = c.connect(b"127.0.0.1:%d" % echo.port)
        c.wait(lambda: sid in c.status)
        assert c.status[sid] == 200
        assert set(c.headers[sid]) == {b":status", b"date", b"server"}
        payload = os.urandom(256 * 1024)
        for i in range(0, len(payload), 16384):  # (DATA frames of the default max size)
            c.data(sid, payload[i:i + 16384])
        c.wait(lambda: len(c.body.get(sid, b"")) == len(payload))
        assert c.body[sid] == payload
        c.data(sid, b"", end=True)          # END_STREAM: the upstream's half-close...
        c.wait(lambda: sid in c.ended)      # ... its FIN back: END_STREAM, no reset
        assert sid not in c.reset
        assert p.wait_for(lambda: echo.fins == 1)
        # The connection goes on: a second tunnel on it.
        sid2 = c.connect(b"127.0.0.1:%d" % echo.port)
        c.data(sid2, b"again")
        c.wait(lambda: c.body.get(sid2) == b"again")
        c.conn.reset_stream(sid2)           # a client reset ends that tunnel: upstream closed
        c.flush()
        assert p.wait_for(lambda: echo.fins == 2)
    finally:
        c.close()
    counters = p.counters()
    assert counters["http.ingress_http.downstream_cx_upgrades_total"] == 2
    assert counters["http.ingress_http.downstream_cx_http2_total"] == 1
    assert p.wait_for(lambda: p.gauges().get("cluster.tcp.upstream_cx_active") == 0)


def test_http2_upstream_fin_first_ends_the_stream_then_resets_the_open_request(proxy_factory):
    closer = CloserUpstream()
    try:
        p = terminating_proxy(proxy_factory, closer.port)
        c = ConnectClient(p.port)
        sid = c.connect(b"127.0.0.1:%d" % closer.port)
        c.wait(lambda: sid in c.reset)
        # Envoy's order: the bytes, END_STREAM, then RST_STREAM(NO_ERROR) for the request
        # side the client had not ended.
        assert c.status[sid] == 200 and c.body[sid] == b"bye" and sid in c.ended
        assert c.reset[sid] == ErrorCodes.NO_ERROR
        c.close()
    finally:
        closer.close()


def test_http2_headers_only_connect_is_a_half_close(proxy_factory):
    closer = CloserUpstream()
    try:
        p = terminating_proxy(proxy_factory, closer.port)
        c = ConnectClient(p.port)
        sid = c.connect(b"127.0.0.1:%d" % closer.port, end=True)
        c.wait(lambda: sid in c.ended)
        assert c.status[sid] == 200 and c.body[sid] == b"bye" and sid not in c.reset
        assert closer.done.wait(5) and closer.received == [b""]  # its FIN came, nothing else
        c.close()
    finally:
        closer.close()


def test_http2_plain_connect_needs_no_allow_connect_extended_connect_does(proxy_factory, echo):
    # As Envoy 1.40: allow_connect is about extended CONNECT (RFC 8441); a plain CONNECT is
    # taken without it. An extended one is then a stream error; the connection goes on.
    routes = [connect_route("tcp"), {"match": {"prefix": "/"}, "direct_response": {"status": 204}}]
    p = proxy_factory(front_proxy_config(routes, [static_cluster("tcp", echo.port)]))
    c = ConnectClient(p.port)
    try:
        assert c.conn.remote_settings.enable_connect_protocol == 0
        sid = c.connect(b"127.0.0.1:%d" % echo.port)
        c.data(sid, b"plain")
        c.wait(lambda: c.body.get(sid) == b"plain")
        c.conn.remote_settings[8] = 1  # pretend it was offered, to send one anyway
        sid2 = c.connect(b"h", extra=[(b":protocol", b"websocket"), (b":scheme", b"http"),
                                      (b":path", b"/chat")])
        c.wait(lambda: sid2 in c.reset)
        assert c.reset[sid2] == ErrorCodes.PROTOCOL_ERROR
        sid3 = c.request(b"GET", b"/")
        c.wait(lambda: sid3 in c.ended)
        assert c.status[sid3] == 204
    finally:
        c.close()


class UpgradeEcho(AcceptLoop):
    """An HTTP/1.1 server that switches any Upgrade request (101) and then echoes; records
    each request head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__("upgrade-echo")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(4096)
                if not d:
                    return
                head += d
            head, _, rest = head.partition(b"\r\n\r\n")
            self.heads.append(head)
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                      b"upgrade: websocket\r\n\r\n" + rest)
            while True:
                d = s.recv(65536)
                if not d:
                    s.shutdown(socket.SHUT_WR)
                    return
                s.sendall(d)
        except OSError:
            pass
        finally:
            s.close()


def test_http2_extended_connect_becomes_an_http1_upgrade_upstream(proxy_factory):
    up = UpgradeEcho()
    try:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "ws"}}]
        p = proxy_factory(front_proxy_config(routes, [static_cluster("ws", up.port)],
                                             upgrade_configs=[{"upgrade_type": "websocket"}],
                                             http2_protocol_options={"allow_connect": True}))
        c = ConnectClient(p.port)
        try:
            c.wait(lambda: c.conn.remote_settings.enable_connect_protocol == 1)
            sid = c.connect(b"ws.test", extra=[(b":protocol", b"websocket"), (b":scheme", b"http"),
                                               (b":path", b"/chat?room=1")])
            c.wait(lambda: sid in c.status)
            assert c.status[sid] == 200   # the upstream's 101, as RFC 8441 answers it
            assert b"upgrade" not in c.headers[sid] and b"connection" not in c.headers[sid]
            c.data(sid, b"frame-bytes")
            c.wait(lambda: c.body.get(sid) == b"frame-bytes")
            c.data(sid, b"", end=True)
            c.wait(lambda: sid in c.ended)
        finally:
            c.close()
        lines = up.heads[0].lower().split(b"\r\n")
        assert lines[0] == b"get /chat?room=1 http/1.1"
        assert b"upgrade: websocket" in lines and b"connection: upgrade" in lines
        assert b"host: ws.test" in lines
        assert p.counters()["http.ingress_http.downstream_cx_upgrades_total"] == 1
    finally:
        up.close()


# -- CONNECT forwarded (no connect_config): proxy_connect.yaml ----------------------------------

@pytest.mark.parametrize("upstream_h2", [False, True], ids=["h1-upstream", "h2-upstream"])
@pytest.mark.parametrize("downstream_h2", [False, True], ids=["h1-client", "h2-client"])
def test_connect_forwarded_to_an_upstream_that_terminates_it(proxy_factory, echo, upstream_h2,
                                                              downstream_h2):
    terminator = terminating_proxy(proxy_factory, echo.port)
    cluster = static_cluster("next", terminator.port)
    if upstream_h2:
        cluster["typed_extension_protocol_options"] = H2_OPTIONS
    p = proxy_factory(front_proxy_config([connect_route("next", terminate=False)], [cluster],
                                         upgrade_configs=[{"upgrade_type": "CONNECT"}],
                                         http2_protocol_options={"allow_connect": True}))
    target = b"127.0.0.1:%d" % echo.port
    if downstream_h2:
        c = ConnectClient(p.port)
        sid = c.connect(target)
        c.wait(lambda: sid in c.status)
        assert c.status[sid] == 200
        c.data(sid, b"hello")
        c.wait(lambda: c.body.get(sid) == b"hello")
        c.data(sid, b"", end=True)
        c.wait(lambda: sid in c.ended)
        c.close()
    else:
        s, head = open_tunnel(p.port, target)
        assert head.startswith(b"HTTP/1.1 200 OK")
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b""
        s.close()
    assert p.wait_for(lambda: echo.fins == 1)
    c = p.counters()
    assert c["cluster.next.upstream_rq_200"] == 1
    assert c["cluster.next.upstream_cx_http2_total" if upstream_h2 else
             "cluster.next.upstream_cx_http1_total"] == 1
    assert terminator.counters()["cluster.tcp.upstream_rq_200"] == 1


# -- Envoy's own configs ----------------------------------------------------------------------

def _envoy_config(name: str) -> dict:
    """A published Envoy config moved onto this machine: listeners and admin on port 0."""
    raw = yaml.safe_load((CONFIGS / name).read_text())
    raw = copy.deepcopy(raw)
    raw["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in raw["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
    return raw


def _endpoint(cluster: dict) -> dict:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]


def test_envoy_terminate_http1_connect_config_serves(proxy_factory, echo):
    # Its service_google (LOGICAL_DNS www.google.com:443) is moved to localhost and this
    # machine's echo; local_original_dst is used as published.
    term = _envoy_config("envoy_terminate_http1_connect.yaml")
    google = term["static_resources"]["clusters"][0]
    assert google["name"] == "service_google" and google["type"] == "LOGICAL_DNS"
    _endpoint(google).update(address="localhost", port_value=echo.port)
    t = proxy_factory(term)
    other = TcpEchoUpstream()
    try:
        # foo: bar picks local_original_dst, which connects to the CONNECT's authority...
        s, head = open_tunnel(t.port, b"127.0.0.1:%d" % other.port, b"foo: bar\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        s.sendall(b"to-authority")
        assert recv_exactly(s, 12) == b"to-authority"
        s.close()
        # ... any other CONNECT goes to service_google (here the echo).
        s, head = open_tunnel(t.port, b"www.google.com:443")
        assert head.startswith(b"HTTP/1.1 200")
        s.sendall(b"to-google")
        assert recv_exactly(s, 9) == b"to-google"
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b""
        s.close()
        assert t.wait_for(lambda: other.connections == 1 and echo.fins == 1)
        tc = t.counters()
        assert tc["cluster.local_original_dst.upstream_rq_200"] == 1
        assert tc["cluster.service_google.upstream_rq_200"] == 1
    finally:
        other.close()


def test_envoy_proxy_connect_config_forwards_to_a_terminate_http2_connect_proxy(proxy_factory, echo):
    # terminate_http2_connect.yaml as Envoy 1.40 loads it: the router with its typed_config
    # (1.40 refuses it without), no admin access log; service_google moved onto the echo.
    term = _envoy_config("envoy_terminate_http2_connect.yaml")
    del term["admin"]["access_log_path"]
    hcm = term["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    _endpoint(term["static_resources"]["clusters"][0]).update(address="localhost", port_value=echo.port)
    t = proxy_factory(term)
    # proxy_connect.yaml: cluster_0 (HTTP/2) points at the terminating proxy.
    front = _envoy_config("envoy_proxy_connect.yaml")
    _endpoint(front["static_resources"]["clusters"][0])["port_value"] = t.port
    f = proxy_factory(front)
    s, head = open_tunnel(f.port, b"www.google.com:443")    # an HTTP/1.1 client...
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"from-h1")
    assert recv_exactly(s, 7) == b"from-h1"
    s.close()
    c = ConnectClient(f.port)                               # ... and an HTTP/2 one
    sid = c.connect(b"www.google.com:443")
    c.data(sid, b"from-h2")
    c.wait(lambda: c.body.get(sid) == b"from-h2")
    c.data(sid, b"", end=True)
    c.wait(lambda: sid in c.ended)
    c.close()
    assert t.wait_for(lambda: echo.connections == 2)
    fc, tc = f.counters(), t.counters()
    assert fc["cluster.cluster_0.upstream_cx_http2_total"] == 1   # one connection, two streams
    assert fc["cluster.cluster_0.upstream_rq_200"] == 2
    assert tc["cluster.service_google.upstream_rq_200"] == 2
    assert tc["http.ingress_http.downstream_cx_http2_total"] == 1


# -- no leak ----------------------------------------------------------------------------------

def test_many_tunnels_leave_no_connection_or_fd_behind(proxy_factory, echo):
    p = terminating_proxy(proxy_factory, echo.port)
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        s, head = open_tunnel(p.port, b"127.0.0.1:%d" % echo.port)
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        if i % 3 == 0:
            s.shutdown(socket.SHUT_WR)
            recv_until_eof(s)
        s.close()               # (the others: closed with the tunnel open)
    c = ConnectClient(p.port)
    for _ in range(10):
        sid = c.connect(b"127.0.0.1:%d" % echo.port)
        c.data(sid, b"y", end=True)
        c.wait(lambda: sid in c.ended)
    c.close()
    gauges = ("http.ingress_http.downstream_cx_active", "cluster.tcp.upstream_cx_active",
              "http.ingress_http.downstream_cx_upgrades_active", "cluster.tcp.upstream_rq_active")
    assert p.wait_for(lambda: all(p.gauges().get(g) == 0 for g in gauges)), \
        {g: p.gauges().get(g) for g in gauges}
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_an_idle_tunnel_ends_at_stream_idle_timeout(proxy_factory, echo):
    # Envoy's TestTimeout: the stream is reset downstream and the upstream connection closed.
    p = terminating_proxy(proxy_factory, echo.port, stream_idle_timeout="0.3s")
    c = ConnectClient(p.port)
    sid = c.connect(b"127.0.0.1:%d" % echo.port)
    c.data(sid, b"once")
    c.wait(lambda: c.body.get(sid) == b"once")
    started = time.monotonic()
    c.wait(lambda: sid in c.reset, timeout=5)
    assert 0.2 < time.monotonic() - started < 3
    c.close()
    s, head = open_tunnel(p.port, b"127.0.0.1:%d" % echo.port)   # HTTP/1.1: the connection closes
    assert head.startswith(b"HTTP/1.1 200")
    assert recv_until_eof(s) == b""
    s.close()
    assert p.wait_for(lambda: echo.fins == 2)
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_idle_timeout") == 2)


# -- tcp_proxy tunneling_config: TCP encapsulated in CONNECT -------------------------------------

class ConnectHeadCapture(AcceptLoop):
    """An HTTP/1.1 upstream answering a CONNECT with `status` (then echoing if 2xx); records
    each request head."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.heads: list[bytes] = []
        self.status = status
        self.delay = delay   # before answering
        super().__init__("connect-capture")

    def handle(self, s: socket.socket, n: int) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(4096)
                if not d:
                    return
                head += d
            head, _, early = head.partition(b"\r\n\r\n")
            self.heads.append(head)
            time.sleep(self.delay)
            if self.status >= 300:
                s.sendall(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % self.status)
                s.recv(1)
                return
            s.sendall(b"HTTP/1.1 %d OK\r\n\r\n" % self.status + early)
            while True:
                d = s.recv(65536)
                if not d:
                    s.shutdown(socket.SHUT_WR)
                    return
                s.sendall(d)
        except OSError:
            pass
        finally:
            s.close()


def _tcp_roundtrip(port: int, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    out = recv_until_eof(s)
    s.close()
    return out


def _listener_port(proxy, name: str) -> int:
    return proxy.server.listener_port(name)


def test_envoy_encapsulate_in_http1_connect_config_chains_into_terminate_http1_connect(proxy_factory, echo):
    other = TcpEchoUpstream()
    try:
        term = _envoy_config("envoy_terminate_http1_connect.yaml")
        _endpoint(term["static_resources"]["clusters"][0]).update(address="localhost", port_value=echo.port)
        t = proxy_factory(term)
        encap = _envoy_config("envoy_encapsulate_in_http1_connect.yaml")
        _endpoint(encap["static_resources"]["clusters"][0])["port_value"] = t.port
        # listener_1's CONNECT names 127.0.0.1:10003 (with foo: bar: local_original_dst there).
        tcp = encap["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
        tcp["tunneling_config"]["hostname"] = f"127.0.0.1:{other.port}"
        e = proxy_factory(encap)
        payload = os.urandom(512 * 1024)
        assert _tcp_roundtrip(_listener_port(e, "listener_0"), payload) == payload  # -> service_google
        assert _tcp_roundtrip(_listener_port(e, "listener_1"), b"via foo: bar") == b"via foo: bar"
        assert t.wait_for(lambda: echo.fins == 1 and other.connections == 1)
        tc, ec = t.counters(), e.counters()
        assert tc["cluster.service_google.upstream_rq_200"] == 1
        assert tc["cluster.local_original_dst.upstream_rq_200"] == 1
        assert ec["cluster.cluster_0.upstream_cx_http1_total"] == 2
        assert ec["cluster.cluster_0.upstream_rq_total"] == 2
    finally:
        other.close()


def test_envoy_encapsulate_in_http2_connect_config_sends_its_headers_over_one_connection(proxy_factory):
    capture = ConnectHeadCapture()
    try:
        # Where its CONNECTs go: a proxy forwarding them (no connect_config) to the capture.
        fwd = proxy_factory(front_proxy_config([connect_route("cap", terminate=False)],
                                               [static_cluster("cap", capture.port)],
                                               upgrade_configs=[{"upgrade_type": "CONNECT"}]))
        encap = _envoy_config("envoy_encapsulate_in_http2_connect.yaml")
        _endpoint(encap["static_resources"]["clusters"][0])["port_value"] = fwd.port
        e = proxy_factory(encap)
        port = _listener_port(e, "listener_0")
        assert _tcp_roundtrip(port, b"one") == b"one"
        assert _tcp_roundtrip(port, b"two") == b"two"
        lines = capture.heads[0].lower().split(b"\r\n")
        assert lines[0] == b"connect host.com:443 http/1.1"
        assert b"original_dst_port: %d" % port in lines      # %DOWNSTREAM_LOCAL_PORT%
        ec = e.counters()
        assert ec["cluster.cluster_0.upstream_cx_http2_total"] == 1    # two streams, one connection
        assert fwd.counters()["http.ingress_http.downstream_rq_http2_total"] == 2
    finally:
        capture.close()


def _tunneling_proxy(proxy_factory, port: int, h2: bool = False):
    cluster = static_cluster("up", port)
    if h2:
        cluster["typed_extension_protocol_options"] = H2_OPTIONS
    cfg = front_proxy_config([], [cluster])
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"] = [{
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "up", "tunneling_config": {"hostname": "target:443"}}}]
    return proxy_factory(cfg)


def test_tunneling_refused_by_the_upstream_closes_the_client(proxy_factory):
    capture = ConnectHeadCapture(status=503)
    try:
        p = _tunneling_proxy(proxy_factory, capture.port)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        assert recv_until_eof(s) == b""   # (Envoy's InvalidResponseHeaders: the client is closed)
        s.close()
        assert capture.heads and capture.heads[0].startswith(b"CONNECT target:443 HTTP/1.1")
        assert p.wait_for(lambda: p.gauges().get("tcp.tcp.downstream_cx_active") == 0)
    finally:
        capture.close()


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
def test_tunneling_upstream_fin_reaches_the_client_after_its_bytes(proxy_factory, h2):
    closer = CloserUpstream()
    try:
        term = terminating_proxy(proxy_factory, closer.port)
        p = _tunneling_proxy(proxy_factory, term.port, h2=h2)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        assert recv_until_eof(s) == b"bye"
        s.close()
        assert closer.done.wait(5)
        gauges = ("tcp.tcp.downstream_cx_active", "cluster.up.upstream_rq_active")
        assert p.wait_for(lambda: all(p.gauges().get(g) == 0 for g in gauges)), \
            {g: p.gauges().get(g) for g in gauges}
    finally:
        closer.close()


def test_an_http2_client_closing_its_connection_ends_all_its_tunnels(proxy_factory, echo):
    p = terminating_proxy(proxy_factory, echo.port)
    c = ConnectClient(p.port)
    sids = [c.connect(b"127.0.0.1:%d" % echo.port) for _ in range(3)]
    for sid in sids:
        c.data(sid, b"x%d" % sid)
    c.wait(lambda: all(c.body.get(sid) == b"x%d" % sid for sid in sids))
    c.close()                       # no END_STREAM, no RST_STREAM: the connection goes
    assert p.wait_for(lambda: echo.fins == 3)
    gauges = ("http.ingress_http.downstream_cx_active", "cluster.tcp.upstream_cx_active",
              "http.ingress_http.downstream_cx_upgrades_active")
    assert p.wait_for(lambda: all(p.gauges().get(g) == 0 for g in gauges))
    assert p.wait_for(lambda: p.counters().get("http.ingress_http.downstream_rq_rx_reset") == 3)


def test_a_fin_sent_before_the_tunnel_is_up_is_passed_on_after_its_bytes(proxy_factory):
    # The client writes its CONNECT, its bytes and its FIN at once; the upstream answers late.
    # The bytes, then the half-close, go through once the tunnel is up (Envoy closes at the FIN:
    # whether its 200 went out first is a race; README CONNECT, deliberate difference).
    capture = ConnectHeadCapture(delay=0.3)
    try:
        p = proxy_factory(front_proxy_config([connect_route("cap", terminate=False)],
                                             [static_cluster("cap", capture.port)],
                                             upgrade_configs=[{"upgrade_type": "CONNECT"}]))
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(b"CONNECT t:1 HTTP/1.1\r\nHost: t:1\r\n\r\nearly bytes")
        s.shutdown(socket.SHUT_WR)
        got = recv_until_eof(s)
        s.close()
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nearly bytes")
    finally:
        capture.close()
