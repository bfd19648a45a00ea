"""CONNECT's other faces, as Envoy 1.40 does them (probed against it; case
tests/differential/cases/connect_extras.yaml compares them): `connect_config.allow_post` (a POST
terminated like a CONNECT: its body bytes go raw to a TCP connection to the host),
`connect_config.proxy_protocol_config` (a PROXY header first on that connection), and WebSocket
to an HTTP/2 upstream as extended CONNECT (RFC 8441) both ways.
Real clients (raw sockets, curl, the `h2` library) and real upstreams on 127.0.0.1: a TCP
recorder, and an HTTP/2 server built on `h2` that takes extended CONNECT."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (DataReceived, RemoteSettingsChanged, RequestReceived, StreamEnded,
                       StreamReset)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from proxy.network.listener_filters.proxy_protocol_header import DONE, parse_proxy_header

from .harness import front_proxy_config, static_cluster
from .servers import AcceptLoop
from .test_connect import H2_OPTIONS, ConnectClient, open_tunnel, recv_exactly, recv_until_eof


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class TcpRecorder(AcceptLoop):
    """Echoes each read back as `ECHO:<bytes>`, half-closes on the client's FIN, and records
    per connection everything it read (`received[n]`) once that FIN came."""

    def __init__(self) -> None:
        self.received: dict[int, bytes] = {}
        super().__init__("tcp-recorder")

    def handle(self, s: socket.socket, n: int) -> None:
        got = b""
        try:
            s.settimeout(10)
            while True:
                d = s.recv(65536)
                if not d:
                    s.shutdown(socket.SHUT_WR)
                    break
                got += d
                s.sendall(b"ECHO:" + d)
        except OSError:
            pass
        finally:
            self.received[n] = got
            s.close()


@pytest.fixture
def recorder():
    u = TcpRecorder()
    yield u
    u.close()


def _terminating_route(prefix: str, connect_config: dict, cluster: str = "raw") -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "upgrade_configs": [
        {"upgrade_type": "CONNECT", "connect_config": connect_config}]}}


def _read_http1(s: socket.socket) -> tuple[bytes, bytes]:
    """A response head and its chunked body, decoded (up to the last chunk)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    body = b""
    while True:
        while b"\r\n" not in rest:
            d = s.recv(65536)
            assert d, (head, rest)
            rest += d
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            d = s.recv(65536)
            assert d, (head, rest)
            rest += d
        body += rest[:size]
        rest = rest[size + 2:]
        if size == 0:
            return head, body


# -- allow_post -------------------------------------------------------------------------------

def test_allow_post_terminates_a_post_and_streams_its_body_raw(proxy_factory, recorder):
    routes = [_terminating_route("/post", {"allow_post": True}),
              _terminating_route("/nopost", {})]
    p = proxy_factory(front_proxy_config(routes, [static_cluster("raw", recorder.port)]))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        head, body = _read_http1(s)
        # Envoy's answer: a synthesized 200, chunked; the upstream's bytes; its FIN ends it
        # (the request's end was a half-close upstream). The connection goes on.
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 200 ok"
        assert b"transfer-encoding: chunked" in lines and b"connection: close" not in lines
        assert body == b"ECHO:hello"
        s.sendall(b"POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        head, body = _read_http1(s)
        assert head.startswith(b"HTTP/1.1 200 OK") and body.startswith(b"ECHO:")
    finally:
        s.close()
    assert wait_until(lambda: len(recorder.received) == 2)
    # Only the body's bytes went upstream, de-chunked: no request head.
    assert recorder.received[1] == b"hello" and recorder.received[2] == b"abcde"
    # A POST on a route whose connect_config does not allow it, and a GET on one that does,
    # are proxied as HTTP requests (the recorder's echo is no HTTP answer: 502).
    for request in (b"POST /nopost HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
                    b"GET /post HTTP/1.1\r\nHost: a\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            s.sendall(request)
            assert s.recv(65536).startswith(b"HTTP/1.1 502")
        finally:
            s.close()
    assert wait_until(lambda: len(recorder.received) == 4)
    assert recorder.received[3].startswith(b"POST /nopost HTTP/1.1\r\n")
    assert recorder.received[4].startswith(b"GET /post HTTP/1.1\r\n")
    c = p.counters()
    assert c["cluster.raw.upstream_rq_200"] == 2 and c["cluster.raw.upstream_cx_total"] == 4


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_allow_post_over_http2_with_curl(proxy_factory, recorder):
    p = proxy_factory(front_proxy_config([_terminating_route("/", {"allow_post": True})],
                                         [static_cluster("raw", recorder.port)]))
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--data-binary", "raw bytes",
                          f"http://127.0.0.1:{p.port}/tunnel"], capture_output=True, timeout=10)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), out.stdout[:200]
    assert body == b"ECHO:raw bytes"
    assert wait_until(lambda: recorder.received.get(1) == b"raw bytes")


# -- proxy_protocol_config -------------------------------------------------------------------

@pytest.mark.parametrize("version", ["V1", "V2"])
def test_proxy_protocol_header_comes_first_on_the_tunnel(proxy_factory, recorder, version):
    cc = {"allow_post": True, "proxy_protocol_config": {
        "version": version, "pass_through_tlvs": {"match_type": "INCLUDE_ALL"}}}
    routes = [{"match": {"connect_matcher": {}}, "route": {"cluster": "raw", "upgrade_configs": [
        {"upgrade_type": "CONNECT", "connect_config": cc}]}}, _terminating_route("/", cc)]
    p = proxy_factory(front_proxy_config(routes, [static_cluster("raw", recorder.port)],
                                         upgrade_configs=[{"upgrade_type": "CONNECT"}]))
    s, head = open_tunnel(p.port, b"example.com:443")
    client = s.getsockname()
    assert head.startswith(b"HTTP/1.1 200 OK")
    s.sendall(b"tunnelled")
    got = b""
    while b"tunnelled" not in got:
        got += s.recv(65536)
    s.shutdown(socket.SHUT_WR)
    recv_until_eof(s)
    s.close()
    t = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    t.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\npost")
    _read_http1(t)
    post_client = t.getsockname()
    t.close()
    assert wait_until(lambda: len(recorder.received) == 2)
    want = 1 if version == "V1" else 2
    for n, (src, payload) in ((1, (client, b"tunnelled")), (2, (post_client, b"post"))):
        r = parse_proxy_header(recorder.received[n])
        # The downstream connection's addresses (the client, the listener), no TLVs; then the
        # stream's own bytes.
        assert (r.state, r.version, r.tlvs) == (DONE, want, ())
        assert r.remote == src and r.local == ("127.0.0.1", p.port)
        assert recorder.received[n][r.length:] == payload


def test_proxy_protocol_header_carries_what_the_listener_filter_restored(proxy_factory, recorder):
    config = front_proxy_config([_terminating_route("/", {"allow_post": True, "proxy_protocol_config": {}})],
                                [static_cluster("raw", recorder.port)])
    config["static_resources"]["listeners"][0]["listener_filters"] = [{
        "name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}}]
    p = proxy_factory(config)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 8443\r\n"
              b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    _read_http1(s)
    s.close()
    assert wait_until(lambda: 1 in recorder.received)
    assert recorder.received[1] == b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 8443\r\nhi"


# -- WebSocket to an HTTP/2 upstream: extended CONNECT -----------------------------------------

class ExtendedConnectUpstream(AcceptLoop):
    """An HTTP/2 (h2c) server on `h2` that takes extended CONNECT: SETTINGS_ENABLE_CONNECT_PROTOCOL
    is announced when `announce`; each request is answered `status` (200: then DATA is echoed as
    `ECHO:<bytes>` and END_STREAM answered with END_STREAM; else the answer ends the stream).
    Records the client's SETTINGS (`settings`), each request's header list (`requests`), the
    DATA it got (`data`), and the streams the client ended (`ended`) or reset (`resets`)."""

    def __init__(self, announce: bool = True, status: int = 200) -> None:
        self.announce = announce
        self.status = status
        self.settings: dict[int, int] = {}
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.data: list[bytes] = []
        self.ended: list[int] = []
        self.resets: list[int] = []
        super().__init__("h2-extended-connect")

    def handle(self, s: socket.socket, n: int) -> None:
        c = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        c.initiate_connection()
        if self.announce:
            c.update_settings({SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        try:
            s.sendall(c.data_to_send())
            while True:
                d = s.recv(65536)
                if not d:
                    return
                for ev in c.receive_data(d):
                    self._event(c, ev)
                s.sendall(c.data_to_send())
        except (OSError, H2Error):
            pass
        finally:
            s.close()

    def _event(self, c: H2Connection, ev) -> None:
        if isinstance(ev, RemoteSettingsChanged):
            self.settings.update({int(k): v.new_value for k, v in ev.changed_settings.items()})
        elif isinstance(ev, RequestReceived):
            self.requests.append(list(ev.headers))
            c.send_headers(ev.stream_id, [(b":status", b"%d" % self.status), (b"x-up", b"1")],
                           end_stream=self.status != 200)
        elif isinstance(ev, DataReceived):
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.data:
                self.data.append(ev.data)
                c.send_data(ev.stream_id, b"ECHO:" + ev.data)
        elif isinstance(ev, StreamEnded):
            self.ended.append(ev.stream_id)
            c.end_stream(ev.stream_id)
        elif isinstance(ev, StreamReset):
            self.resets.append(ev.error_code)


def _ws_proxy(proxy_factory, port: int, allow_connect: bool = True):
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        **H2_OPTIONS["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
        "explicit_http_config": {"http2_protocol_options": {"allow_connect": allow_connect}}}}
    return proxy_factory(front_proxy_config(
        [{"match": {"prefix": "/"}, "route": {"cluster": "h2ws"}}],
        [static_cluster("h2ws", port, typed_extension_protocol_options=h2)],
        upgrade_configs=[{"upgrade_type": "websocket"}],
        http2_protocol_options={"allow_connect": True}))


_WS_HEAD = (b"GET /chat?room=1 HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.parametrize("announce", [True, False], ids=["announced", "not-announced"])
def test_http1_websocket_goes_to_an_http2_upstream_as_extended_connect(proxy_factory, announce):
    up = ExtendedConnectUpstream(announce=announce)
    try:
        p = _ws_proxy(proxy_factory, up.port)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(_WS_HEAD)
        head, rest = _read_head(s)
        lines = head.lower().split(b"\r\n")
        # The upstream's 200 is the client's 101, with the upgrade's own headers back.
        assert lines[0] == b"http/1.1 101 switching protocols", head
        assert b"upgrade: websocket" in lines and b"connection: upgrade" in lines
        assert b"x-up: 1" in lines
        s.sendall(b"frame-bytes")
        got = rest
        while len(got) < len(b"ECHO:frame-bytes"):
            got += s.recv(65536)
        assert got == b"ECHO:frame-bytes"
        s.shutdown(socket.SHUT_WR)         # the client's FIN: END_STREAM upstream
        assert recv_until_eof(s) == b""    # ... answered by the upstream's END_STREAM
        s.close()
        assert wait_until(lambda: up.ended == [1])
        fields = dict(up.requests[0])
        # Envoy's translation (transformUpgradeRequestFromH1toH2), whether or not the host
        # announced SETTINGS_ENABLE_CONNECT_PROTOCOL (Envoy 1.40 sends it either way).
        assert (fields[b":method"], fields[b":protocol"]) == (b"CONNECT", b"websocket")
        assert (fields[b":path"], fields[b":scheme"], fields[b":authority"]) == (
            b"/chat?room=1", b"http", b"ws.test")
        assert fields[b"sec-websocket-key"] == b"dGhlIHNhbXBsZSBub25jZQ=="
        for gone in (b"upgrade", b"connection", b"content-length", b"host"):
            assert gone not in fields
        assert up.data == [b"frame-bytes"]
        # The cluster's allow_connect is announced in our SETTINGS, as Envoy's client does.
        assert up.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1
        c = p.counters()
        assert c["cluster.h2ws.upstream_cx_http2_total"] == 1
        assert c["http.ingress_http.downstream_cx_upgrades_total"] == 1
    finally:
        up.close()


def test_http2_extended_connect_goes_on_as_extended_connect(proxy_factory):
    up = ExtendedConnectUpstream()
    try:
        p = _ws_proxy(proxy_factory, up.port, allow_connect=False)
        c = ConnectClient(p.port)
        try:
            c.wait(lambda: c.conn.remote_settings.enable_connect_protocol == 1)
            sid = c.connect(b"ws.test", extra=[(b":protocol", b"websocket"), (b":scheme", b"http"),
                                               (b":path", b"/chat")])
            c.wait(lambda: sid in c.status)
            assert c.status[sid] == 200   # 200 -> 101 (upstream side) -> 200 (RFC 8441 again)
            assert c.headers[sid][b"x-up"] == b"1"
            assert b"upgrade" not in c.headers[sid] and b"connection" not in c.headers[sid]
            c.data(sid, b"over-h2")
            c.wait(lambda: bytes(c.body.get(sid, b"")) == b"ECHO:over-h2")
            c.data(sid, b"", end=True)
            c.wait(lambda: sid in c.ended)
        finally:
            c.close()
        fields = dict(up.requests[0])
        assert (fields[b":method"], fields[b":protocol"], fields[b":path"]) == (
            b"CONNECT", b"websocket", b"/chat")
        # Without the cluster's allow_connect, no SETTINGS_ENABLE_CONNECT_PROTOCOL from us.
        assert up.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
    finally:
        up.close()


def test_an_http2_upstream_refusing_the_upgrade_answers_the_client(proxy_factory):
    up = ExtendedConnectUpstream(status=403)
    try:
        p = _ws_proxy(proxy_factory, up.port)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(_WS_HEAD)
        head, _ = _read_head(s)
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 403 forbidden" and b"x-up: 1" in lines
        assert b"upgrade: websocket" not in lines
        s.close()
        # The upgrade request never ended on its own: its stream is reset, not ended.
        assert wait_until(lambda: len(up.resets) == 1)
        assert up.ended == []
        assert p.wait_for(lambda: p.counters().get("cluster.h2ws.upstream_rq_403") == 1)
    finally:
        up.close()
