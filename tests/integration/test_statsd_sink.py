"""The statsd stats sink through the running proxy: a real UDP receiver on 127.0.0.1 gets
`<prefix>.<name>:<delta>|c` and `<prefix>.<name>:<value>|g`, one metric per datagram, every
stats_flush_interval, as Envoy's sink sends them."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

STATSD = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"


class Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[str] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.datagrams.append(self.sock.recv(65535).decode())
            except socket.timeout:
                pass


def _config(upstream_port: int, receiver_port: int, **sink) -> dict:
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", upstream_port)])
    cfg["stats_flush_interval"] = "0.2s"
    cfg["stats_sinks"] = [{"name": "envoy.stat_sinks.statsd", "typed_config": {
        "@type": STATSD, "address": {"socket_address": {"address": "127.0.0.1", "port_value": receiver_port}},
        **sink}}]
    return cfg


def test_counters_go_as_deltas_and_gauges_as_values(upstream):
    r = Receiver()
    p = ProxyUnderTest(_config(upstream.port, r.port, prefix="edge"))
    try:
        for _ in range(3):
            urllib.request.urlopen(p.url("/x"), timeout=5).read()
        r.collect(1.0)
        assert all("\n" not in d for d in r.datagrams)  # one metric per datagram
        total = [d for d in r.datagrams if d.startswith("edge.http.ingress_http.downstream_rq_total:")]
        assert total and total[0] == "edge.http.ingress_http.downstream_rq_total:3|c"
        assert set(total[1:]) == {"edge.http.ingress_http.downstream_rq_total:0|c"}  # no new requests
        assert "edge.cluster.c1.upstream_cx_active:1|g" in r.datagrams  # the kept-alive connection
        assert not any(d.startswith("edge.http.ingress_http.downstream_rq_5xx") for d in r.datagrams)  # unused
        urllib.request.urlopen(p.url("/y"), timeout=5).read()
        before = len(r.datagrams)
        r.collect(0.6)
        later = [d for d in r.datagrams[before:] if d.startswith("edge.http.ingress_http.downstream_rq_total:")]
        assert "edge.http.ingress_http.downstream_rq_total:1|c" in later
    finally:
        p.stop()


@pytest.mark.parametrize("sink,where", [
    ({"tcp_cluster_name": "stats"}, "tcp_cluster_name: not supported yet"),
    ({"address": {"socket_address": {"address": "stats.local", "port_value": 8125}}}, "is not an IP address"),
])
def test_what_the_statsd_sink_refuses(upstream, sink, where):
    cfg = _config(upstream.port, 1)
    cfg["stats_sinks"][0]["typed_config"].update(sink)
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(cfg)
