"""Envoy's `udp` example (tests/envoy_examples/udp, from envoyproxy/examples) through ftproxy,
with its verify.sh's traffic: `HELO` and `OLEH` each sent from a fresh UDP client (as
`nc -4u -w1` does) reach the backend, and the admin's /stats shows non-zero udp stats.

The bootstrap is loaded as published, moved onto loopback as docker-compose would wire it
(test_envoy_examples._on_loopback): the listener on 127.0.0.1, `service-udp` as a local UDP
server. The example's backend (mendhak/udp-listener) only logs what it gets; ours also echoes.
"""

from __future__ import annotations

import re
import urllib.request

from tests.udp_peers import UdpEchoServer, udp_client

from .test_envoy_examples import RunningExample


def test_udp_example_forwards_datagrams_and_reports_udp_stats():
    backend = UdpEchoServer()
    ex = RunningExample("udp/envoy.yaml", {"service-udp": backend.port})
    try:
        port = ex.port()
        for payload in (b"HELO", b"OLEH"):
            client = udp_client()
            try:
                client.sendto(payload, ("127.0.0.1", port))
                assert client.recvfrom(100) == (payload, ("127.0.0.1", port))
            finally:
                client.close()
        # "Check backend log": both datagrams reached service-udp, from two sessions.
        got = backend.got()
        assert sorted(d for _p, d in got) == [b"HELO", b"OLEH"]
        assert len({p for p, _d in got}) == 2
        # "Check admin stats": curl /stats | grep udp | grep -v ": 0" finds lines.
        admin = ex.server.admin.port
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
            text = r.read().decode()
        nonzero = [ln for ln in text.splitlines() if "udp" in ln and not re.search(r": 0$", ln)]
        assert "udp.service.downstream_sess_total: 2" in nonzero
        assert "udp.service.downstream_sess_rx_datagrams: 2" in nonzero
        assert "cluster.service_udp.udp.sess_tx_datagrams: 2" in nonzero
    finally:
        ex.stop()
        backend.close()
