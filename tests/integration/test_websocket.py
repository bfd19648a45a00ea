"""WebSocket through the HCM: upgrade_configs [{upgrade_type: websocket}] lets a real
`websockets` client talk to a real `websockets` echo server through the proxy; without the
upgrade config the proxy refuses the upgrade with 403 (Envoy's behaviour)."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .harness import front_proxy_config, static_cluster
from .servers import WebSocketEchoUpstream


@pytest.fixture
def ws_upstream():
    u = WebSocketEchoUpstream()
    yield u
    u.close()


def _config(port: int, **hcm_extra) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "ws"}}],
                              [static_cluster("ws", port)], **hcm_extra)


@pytest.mark.parametrize("codec", ["fast", "h11"])
def test_websocket_echoes_text_and_binary_through_proxy(proxy_factory, ws_upstream, codec):
    p = proxy_factory(_config(ws_upstream.port, upgrade_configs=[{"upgrade_type": "websocket"}]), codec=codec)
    big = bytes(range(256)) * 1024  # 256 KiB frame
    with connect(f"ws://127.0.0.1:{p.port}/chat", open_timeout=5, close_timeout=5) as ws:
        # The 101 answer keeps its Upgrade/Connection fields; its server is ours, once.
        assert ws.response.headers.get_all("Server") == ["envoy"]
        assert ws.response.headers["Upgrade"].lower() == "websocket"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xffbin")
        assert ws.recv(timeout=5) == b"\x00\x01\xffbin"
        ws.send(big)
        assert ws.recv(timeout=5) == big
        for i in range(20):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(20)] == [f"m{i}" for i in range(20)]
    c = p.counters()
    assert c["http.ingress_http.downstream_cx_upgrades_total"] == 1
    assert p.wait_for(lambda: p.gauges().get("http.ingress_http.downstream_cx_upgrades_active") == 0)


def test_websocket_upgrade_refused_with_403_without_upgrade_configs(proxy_factory, ws_upstream):
    p = proxy_factory(_config(ws_upstream.port))
    with pytest.raises(InvalidStatus) as exc:
        connect(f"ws://127.0.0.1:{p.port}/chat", open_timeout=5)
    assert exc.value.response.status_code == 403
    assert p.counters().get("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1
