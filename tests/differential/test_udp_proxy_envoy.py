"""The udp_proxy listener filter against real Envoy 1.40: the same bootstrap (four UDP
listeners: to a real UDP echo server, to a port nothing listens on, to a cluster without
hosts, to a cluster allowing one connection; idle timeout 2 s) and the same datagrams from real UDP clients through both. The
answers each client gets and every udp_proxy stat Envoy names (the listener's
`udp.<prefix>.*`, the clusters' `upstream_cx_*` and `udp.sess_*`) must agree, before and after
the sessions time out."""

from __future__ import annotations

import time

import pytest

from tests.udp_peers import UdpEchoServer, free_udp_port, udp_client

from .proxies import BootstrapProcess, PortReservation

PREFIXES = ("echo", "dead", "nohost", "limited")
UDP_STATS = ("downstream_sess_no_route", "downstream_sess_rx_bytes", "downstream_sess_rx_datagrams",
             "downstream_sess_rx_errors", "downstream_sess_total", "downstream_sess_tx_bytes",
             "downstream_sess_tx_datagrams", "downstream_sess_tx_errors", "idle_timeout",
             "downstream_sess_active")
CLUSTER_STATS = ("upstream_cx_total", "upstream_cx_active", "upstream_cx_none_healthy",
                 "upstream_cx_overflow", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
                 "udp.sess_rx_datagrams", "udp.sess_tx_datagrams", "udp.sess_rx_errors",
                 "udp.sess_tx_errors", "udp.sess_rx_datagrams_dropped")


def _bootstrap(admin: int, ports: dict[str, int], echo: int, dead: int) -> dict:
    def listener(name: str) -> dict:
        return {"name": name,
                "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1",
                                               "port_value": ports[name]}},
                "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
                    "stat_prefix": name, "idle_timeout": "2s",
                    "matcher": {"on_no_match": {"action": {"name": "route", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
                        "cluster": name}}}}}}]}

    def cluster(name: str, port: int | None) -> dict:
        eps = [] if port is None else [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": eps}}

    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [listener(n) for n in PREFIXES],
                                 "clusters": [cluster("echo", echo), cluster("dead", dead),
                                              cluster("nohost", None),
                                              {**cluster("limited", echo), "circuit_breakers": {
                                                  "thresholds": [{"max_connections": 1}]}}]}}


class Proc(BootstrapProcess):
    def __init__(self, kind: str, tmp_path, echo: int, dead: int) -> None:
        reserve = PortReservation()
        admin_port = reserve.take()
        reserve.release()
        self.ports = {n: free_udp_port() for n in PREFIXES}
        super().__init__(kind, _bootstrap(admin_port, self.ports, echo, dead), admin_port,
                         tmp_path / f"{kind}.json")

    def stats(self) -> dict[str, str]:
        wanted = {f"udp.{p}.{s}" for p in PREFIXES for s in UDP_STATS}
        wanted |= {f"cluster.{c}.{s}" for c in PREFIXES for s in CLUSTER_STATS}
        wanted |= {f"listener.127.0.0.1_{port}.udp.downstream_rx_datagram_dropped"
                   for port in self.ports.values()}
        out = {k: v for k, v in self.stat_values().items() if k in wanted}
        for name, port in self.ports.items():   # the listener's port differs between the two
            wanted = {w.replace(f"_{port}.", f"_<{name}>.") for w in wanted}
            out = {k.replace(f"_{port}.", f"_<{name}>."): v for k, v in out.items()}
        return {n: out.get(n, "<absent>") for n in sorted(wanted)}


def _script(p: Proc) -> dict:
    """The datagrams, and what each client got back."""
    seen: dict[str, object] = {}
    clients = [udp_client() for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            for word in (b"HELO", b"OLEH!"):
                c.sendto(word + b"%d" % i, ("127.0.0.1", p.ports["echo"]))
                seen[f"echo.{i}.{word.decode()}"] = c.recvfrom(100)[0]
        # 1,500 bytes pass the listener (Envoy's default max_rx_datagram_size) and their 1,505-byte
        # echo comes back (no limit upstream); 1,501 bytes are dropped at the listener.
        clients[1].sendto(b"x" * 1500, ("127.0.0.1", p.ports["echo"]))
        seen["big"] = len(clients[1].recvfrom(65535)[0])
        clients[1].sendto(b"y" * 1501, ("127.0.0.1", p.ports["echo"]))
        for i in range(2):
            clients[0].sendto(b"nobody home", ("127.0.0.1", p.ports["dead"]))
            time.sleep(0.2)      # the ICMP answer of one datagram before the next one
        clients[0].sendto(b"no host", ("127.0.0.1", p.ports["nohost"]))
        # max_connections 1: the first source's session holds it, the second's is refused.
        clients[0].sendto(b"limited", ("127.0.0.1", p.ports["limited"]))
        seen["limited.0"] = clients[0].recvfrom(100)[0]
        clients[1].sendto(b"over", ("127.0.0.1", p.ports["limited"]))
        for i, c in enumerate(clients):
            c.settimeout(0.1)
            try:
                seen[f"stray.{i}"] = c.recvfrom(65535)[0]
            except TimeoutError:
                pass
    finally:
        for c in clients:
            c.close()
    time.sleep(0.2)
    return seen


@pytest.fixture
def echo():
    u = UdpEchoServer(prefix=b"echo:")
    yield u
    u.close()


def test_udp_proxy_datagrams_and_stats_match_envoy(echo, tmp_path):
    dead = free_udp_port()
    results = {}
    for kind in ("envoy", "ftproxy"):
        p = Proc(kind, tmp_path, echo.port, dead)
        try:
            answers = _script(p)
            during = p.stats()
            time.sleep(2.6)      # every session is idle for longer than its 2 s timeout
            after = p.stats()
        finally:
            p.stop()
        results[kind] = (answers, during, after)
    (ea, ed, ef), (fa, fd, ff) = results["envoy"], results["ftproxy"]
    assert fa == ea
    diffs = [f"{when} {n}: envoy {e[n]} ftproxy {f[n]}"
             for when, e, f in (("during", ed, fd), ("after", ef, ff)) for n in e if e[n] != f[n]]
    assert not diffs, "\n".join(diffs)
    # What Envoy showed, so the comparison above is known to cover each path.
    assert ea["echo.2.OLEH!"] == b"echo:OLEH!2" and not any(k.startswith("stray") for k in ea)
    assert (ed["udp.echo.downstream_sess_total"], ed["udp.echo.downstream_sess_active"]) == ("3", "3")
    assert ed["cluster.dead.udp.sess_rx_errors"] != "0"
    assert ed["cluster.echo.udp.sess_tx_datagrams"] == "7"
    assert ea["big"] == 1505
    assert ed["listener.127.0.0.1_<echo>.udp.downstream_rx_datagram_dropped"] == "1"
    assert ed["cluster.nohost.upstream_cx_none_healthy"] == "1"
    assert ed["cluster.limited.upstream_cx_overflow"] == "1" and ea["limited.0"] == b"echo:limited"
    assert (ed["udp.limited.downstream_sess_total"], ed["udp.limited.downstream_sess_active"]) == ("2", "1")
    assert (ef["udp.echo.idle_timeout"], ef["udp.echo.downstream_sess_active"]) == ("3", "0")
