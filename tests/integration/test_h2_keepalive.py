"""HTTP/2 connection keepalive (`connection_keepalive`) through the running proxy, both ways:
a downstream client that never answers the proxy's PINGs is closed after `timeout` and
counted in http2.keepalive_timeout while one that answers stays; an upstream that goes silent
is closed the same way (its request fails 503, cluster.<name>.http2.keepalive_timeout); and
the config's bounds are checked."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .test_h2_downstream import H2Client
from .test_h2_floods import _raw_client

# Every test runs on both downstream HTTP/2 engines (ours and h2, the reference).
pytestmark = pytest.mark.usefixtures("h2_engine")

KEEPALIVE = {"interval": "0.2s", "timeout": "0.3s", "interval_jitter": {"value": 0}}


def _frames(data: bytes) -> list[int]:
    """The frame types in `data` (whole frames only)."""
    kinds, i = [], 0
    while i + 9 <= len(data):
        kinds.append(data[i + 3])
        i += 9 + int.from_bytes(data[i:i + 3], "big")
    return kinds


def test_a_client_that_never_answers_pings_is_closed(upstream):
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                          [static_cluster("c1", upstream.port)], codec_type="HTTP2",
                                          http2_protocol_options={"connection_keepalive": KEEPALIVE}))
    try:
        s, _ = _raw_client(p.port)   # past the preface; it reads nothing and acks nothing
        good = H2Client(p.port)      # answers PINGs (h2 acks them as it reads)
        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # the good client reads (and acks) meanwhile
            sid = good.request(b"GET", b"/still-here")
            good.wait(lambda: sid in good.ended)
            assert good.status[sid] == 200
            time.sleep(0.1)
        s.settimeout(3)
        data, ended = b"", False
        try:
            while chunk := s.recv(65536):
                data += chunk
            ended = True
        except ConnectionResetError:
            ended = True
        except socket.timeout:
            pass
        assert 6 in _frames(data)              # a PING came
        assert ended                           # and, unanswered, the connection was closed
        assert p.counters()["http2.keepalive_timeout"] == 1
        good.sock.close()
    finally:
        p.stop()


class SilentH2Upstream:
    """Accepts, answers the preface with SETTINGS and its ACK, then never says anything."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            c.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_silent_upstream_connection_is_closed():
    up = SilentH2Upstream()
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {"connection_keepalive": KEEPALIVE}}}}
    p = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1", "timeout": "5s"}}],
                                          [static_cluster("c1", up.port, typed_extension_protocol_options=h2)]))
    try:
        import http.client
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/hangs")
        r = conn.getresponse()
        r.read()
        assert r.status == 503 and time.monotonic() - start < 3  # not the 5 s route timeout
        assert p.counters()["cluster.c1.http2.keepalive_timeout"] == 1
    finally:
        p.stop()
        up.close()


@pytest.mark.parametrize("ka,where", [
    ({"interval": "1s"}, "connection_keepalive.timeout"),
    ({"interval": "0s", "timeout": "1s"}, "connection_keepalive.interval: must be at least 1ms"),
    ({"timeout": "1s", "interval_jitter": {"value": 150}}, "interval_jitter.value"),
    ({"timeout": "1s", "connection_idle_interval": "1s"}, "connection_idle_interval"),
])
def test_downstream_keepalive_config_errors(ka, where):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}], [static_cluster("c1", 1)],
                             http2_protocol_options={"connection_keepalive": ka})
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(cfg)
