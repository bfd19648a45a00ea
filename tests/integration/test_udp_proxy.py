"""udp_proxy listener filter (envoy.filters.udp_listener.udp_proxy) in front of a real UDP
echo server on 127.0.0.1, driven by real UDP clients: one session (and one upstream socket)
per source address, datagrams both ways, the idle timeout ending a session, an unreachable
upstream, and Envoy's stats for each."""

from __future__ import annotations

import socket

import pytest

from tests.udp_peers import UdpEchoServer, free_udp_port, udp_client

from .harness import static_cluster

PROXY_URL = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"


def udp_proxy_config(cluster_port: int, idle_timeout: str | None = None, legacy: bool = False,
                     **cluster_extra) -> dict:
    proxy = {"@type": PROXY_URL, "stat_prefix": "service"}
    if legacy:
        proxy["cluster"] = "service_udp"
    else:
        proxy["matcher"] = {"on_no_match": {"action": {"name": "route", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
            "cluster": "service_udp"}}}}
    if idle_timeout is not None:
        proxy["idle_timeout"] = idle_timeout
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "udp_listener",
                "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1",
                                               "port_value": 0}},
                "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy",
                                      "typed_config": proxy}],
            }],
            "clusters": [static_cluster("service_udp", cluster_port, **cluster_extra)],
        },
    }


@pytest.fixture
def echo():
    u = UdpEchoServer(prefix=b"echo:")
    yield u
    u.close()


def _exchange(client: socket.socket, port: int, payload: bytes) -> bytes:
    client.sendto(payload, ("127.0.0.1", port))
    data, peer = client.recvfrom(65535)
    assert peer == ("127.0.0.1", port)    # the answer comes from the listener's address
    return data


@pytest.mark.parametrize("legacy", [False, True], ids=["matcher", "legacy_cluster"])
def test_each_source_port_gets_its_own_session_and_upstream_socket(echo, proxy_factory, legacy):
    proxy = proxy_factory(udp_proxy_config(echo.port, legacy=legacy), concurrency=2)
    port = proxy.port
    clients = [udp_client() for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            assert _exchange(c, port, b"HELO %d" % i) == b"echo:HELO %d" % i
            assert _exchange(c, port, b"OLEH %d" % i) == b"echo:OLEH %d" % i
    finally:
        for c in clients:
            c.close()
    got = echo.got()
    assert sorted(d for _p, d in got) == sorted([b"HELO %d" % i for i in range(3)]
                                                + [b"OLEH %d" % i for i in range(3)])
    # One upstream socket per session: the two datagrams of a client share a source port,
    # the three clients have three.
    sources = {}
    for peer, data in got:
        sources.setdefault(data.split()[1], set()).add(peer)
    assert all(len(s) == 1 for s in sources.values())
    assert len(set().union(*sources.values())) == 3
    assert proxy.wait_for(lambda: proxy.counters().get("udp.service.downstream_sess_tx_datagrams") == 6)
    c, g = proxy.counters(), proxy.gauges()
    assert c["udp.service.downstream_sess_total"] == 3
    assert g["udp.service.downstream_sess_active"] == 3
    assert c["udp.service.downstream_sess_rx_datagrams"] == 6
    assert c["udp.service.downstream_sess_rx_bytes"] == 6 * 6
    assert c["udp.service.downstream_sess_tx_bytes"] == 6 * 11
    assert c["udp.service.downstream_sess_no_route"] == 0
    # As Envoy 1.40: a session is not counted as an upstream connection.
    assert c["cluster.service_udp.upstream_cx_total"] == 0
    assert g["cluster.service_udp.upstream_cx_active"] == 0
    assert c["cluster.service_udp.udp.sess_tx_datagrams"] == 6
    assert c["cluster.service_udp.udp.sess_rx_datagrams"] == 6
    assert c["cluster.service_udp.upstream_cx_tx_bytes_total"] == 6 * 6
    assert c["cluster.service_udp.upstream_cx_rx_bytes_total"] == 6 * 11
    status, text = proxy.admin("/stats")
    assert status == 200 and "udp.service.downstream_sess_total: 3" in text


def test_idle_timeout_ends_the_session_and_the_next_datagram_starts_another(echo, proxy_factory):
    proxy = proxy_factory(udp_proxy_config(echo.port, idle_timeout="0.3s"))
    client = udp_client()
    try:
        assert _exchange(client, proxy.port, b"one") == b"echo:one"
        assert proxy.wait_for(lambda: proxy.counters().get("udp.service.idle_timeout") == 1)
        assert proxy.wait_for(lambda: proxy.gauges().get("udp.service.downstream_sess_active") == 0)
        assert _exchange(client, proxy.port, b"two") == b"echo:two"
    finally:
        client.close()
    (first, _), (second, _) = echo.got()
    assert first != second            # the new session has a new upstream socket
    c = proxy.counters()
    assert c["udp.service.downstream_sess_total"] == 2


def test_datagrams_keep_a_session_alive_past_its_idle_timeout(echo, proxy_factory):
    proxy = proxy_factory(udp_proxy_config(echo.port, idle_timeout="0.5s"))
    client = udp_client()
    try:
        for i in range(6):   # 6 x 0.15 s: longer than the idle timeout, never idle that long
            assert _exchange(client, proxy.port, b"%d" % i) == b"echo:%d" % i
            client.settimeout(0.15)
            with pytest.raises(TimeoutError):
                client.recvfrom(10)
            client.settimeout(3)
    finally:
        client.close()
    c = proxy.counters()
    assert c["udp.service.downstream_sess_total"] == 1
    assert c["udp.service.idle_timeout"] == 0


def test_unreachable_upstream_counts_errors_and_the_proxy_keeps_serving(echo, proxy_factory):
    dead = free_udp_port()
    config = udp_proxy_config(dead)
    live = udp_proxy_config(echo.port)["static_resources"]["listeners"][0]
    live["name"] = "live"
    live["listener_filters"][0]["typed_config"]["stat_prefix"] = "live"
    live["listener_filters"][0]["typed_config"]["matcher"]["on_no_match"]["action"][
        "typed_config"]["cluster"] = "live_udp"
    config["static_resources"]["listeners"].append(live)
    config["static_resources"]["clusters"].append(static_cluster("live_udp", echo.port))
    proxy = proxy_factory(config)
    client = udp_client()
    try:
        client.sendto(b"nobody", ("127.0.0.1", proxy.port))
        # The upstream's ICMP port unreachable comes back as a receive error on the session's socket.
        assert proxy.wait_for(lambda: proxy.counters().get("cluster.service_udp.udp.sess_rx_errors", 0) >= 1)
        client.sendto(b"nobody again", ("127.0.0.1", proxy.port))
        assert proxy.wait_for(lambda: proxy.counters().get("cluster.service_udp.udp.sess_rx_errors", 0) >= 2)
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recvfrom(100)
        client.settimeout(3)
        live_port = proxy.server.listener_addresses["live"][1]
        assert _exchange(client, live_port, b"still here") == b"echo:still here"
    finally:
        client.close()
    c = proxy.counters()
    assert c["udp.service.downstream_sess_total"] == 1      # one session, kept until idle
    assert c["udp.service.downstream_sess_rx_datagrams"] == 2
    assert c["udp.service.downstream_sess_tx_datagrams"] == 0


def test_a_cluster_without_hosts_drops_datagrams_as_none_healthy(proxy_factory):
    config = udp_proxy_config(1)
    config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = []
    proxy = proxy_factory(config)
    client = udp_client()
    try:
        client.sendto(b"x", ("127.0.0.1", proxy.port))
        assert proxy.wait_for(lambda: proxy.counters().get("cluster.service_udp.upstream_cx_none_healthy") == 1)
    finally:
        client.close()
    c = proxy.counters()
    assert c["udp.service.downstream_sess_total"] == 0
    assert c["udp.service.downstream_sess_rx_datagrams"] == 0


def test_a_datagram_over_1500_bytes_is_dropped_at_the_listener_but_not_from_upstream(echo, proxy_factory):
    """Envoy's default max_rx_datagram_size (1,500) on the listener; none on the session."""
    proxy = proxy_factory(udp_proxy_config(echo.port))
    client = udp_client()
    try:
        assert _exchange(client, proxy.port, b"x" * 1500) == b"echo:" + b"x" * 1500
        client.sendto(b"y" * 1501, ("127.0.0.1", proxy.port))
        # Named by the listener's stat prefix (127.0.0.1_0 here: its configured port is 0).
        assert proxy.wait_for(lambda: proxy.counters().get(
            "listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped") == 1)
        assert _exchange(client, proxy.port, b"after") == b"echo:after"   # still served
    finally:
        client.close()
    assert [len(d) for _p, d in echo.got()] == [1500, 5]
    c = proxy.counters()
    assert c["udp.service.downstream_sess_rx_datagrams"] == 2
    assert c["cluster.service_udp.udp.sess_rx_datagrams_dropped"] == 0


def test_the_clusters_max_connections_bounds_its_sessions(echo, proxy_factory):
    """As Envoy: each session holds one of the cluster's connections (circuit breaker); a new
    source past the limit is dropped as upstream_cx_overflow, and gets in once one ends."""
    proxy = proxy_factory(udp_proxy_config(echo.port, idle_timeout="0.5s", circuit_breakers={
        "thresholds": [{"max_connections": 1}]}))
    first, second = udp_client(), udp_client()
    try:
        assert _exchange(first, proxy.port, b"1") == b"echo:1"
        second.sendto(b"2", ("127.0.0.1", proxy.port))
        assert proxy.wait_for(lambda: proxy.counters().get("cluster.service_udp.upstream_cx_overflow") == 1)
        assert proxy.wait_for(lambda: proxy.counters().get("udp.service.idle_timeout") == 1)
        assert _exchange(second, proxy.port, b"3") == b"echo:3"
    finally:
        first.close()
        second.close()
    assert [d for _p, d in echo.got()] == [b"1", b"3"]
    # As Envoy 1.40: the refused session counts in downstream_sess_total.
    assert proxy.counters()["udp.service.downstream_sess_total"] == 3


def test_without_reuse_port_one_worker_reads_the_socket_and_keeps_each_session(echo, proxy_factory):
    config = udp_proxy_config(echo.port)
    config["static_resources"]["listeners"][0]["enable_reuse_port"] = False
    proxy = proxy_factory(config, concurrency=2)
    clients = [udp_client() for _ in range(4)]
    try:
        for _ in range(3):
            for i, c in enumerate(clients):
                assert _exchange(c, proxy.port, b"%d" % i) == b"echo:%d" % i
    finally:
        for c in clients:
            c.close()
    assert len({p for p, _d in echo.got()}) == 4
    assert proxy.counters()["udp.service.downstream_sess_total"] == 4
