"""Draining a replaced or removed LDS listener through the running proxy (Envoy's listener
drain over --drain-time-s, --drain-strategy gradual/immediate), with real keep-alive clients:
no request is lost; with `gradual` the connections are told `connection: close` progressively
over the drain time, with `immediate` at once; what is still open when it ends is closed; a
filter-chain-only update (Envoy's in-place update) drains only the changed chain's connections.
"""

from __future__ import annotations

import socket
import threading
import time

from .harness import ProxyUnderTest
from .test_xds_grpc import CLUSTER, HCM, LISTENER, ROUTER, bootstrap, free_port, world  # noqa: F401
from .harness import static_cluster

DRAIN = 2.0


def _listener(port: int, chains: list[dict], **extra) -> dict:
    return {"@type": LISTENER, "name": "l1",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": chains, **extra}


def _chain(prefix: str, match: dict | None = None) -> dict:
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": prefix, "http_filters": [ROUTER],
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]}}}]}
    if match:
        chain["filter_chain_match"] = match
    return chain


class KeepAlive:
    """One HTTP/1.1 keep-alive client connection (optionally from a given source port)."""

    def __init__(self, port: int, source_port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", source_port))
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.closed_told_at: float | None = None

    def get(self) -> tuple[int, bool]:
        """(status, whether the response said `connection: close`); (0, True) when the
        connection was closed by the proxy with no response."""
        try:
            self.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return 0, True
                data += chunk
        except OSError:
            return 0, True
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().lower().split("\r\n")
        length = next(int(x.split(":")[1]) for x in lines if x.startswith("content-length"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return 0, True
            body += chunk
        return int(lines[0].split()[1]), "connection: close" in lines

    def close(self) -> None:
        self.sock.close()


def _start(cp, ups, proxies, strategy: str, chains: list[dict]) -> tuple[ProxyUnderTest, int]:
    lport = free_port()
    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **static_cluster("svc", ups["one"].port)}])
    cp.set(LISTENER, "l1", [_listener(lport, chains)])
    cfg = bootstrap(cp.port)
    del cfg["dynamic_resources"]["cds_config"]
    cfg["static_resources"]["clusters"].append(static_cluster("svc", ups["one"].port))
    p = ProxyUnderTest(cfg, drain_time_s=DRAIN)
    p.server.options.drain_strategy = strategy
    proxies.append(p)
    return p, lport


def _drive(clients: list[KeepAlive], seconds: float) -> list[tuple[float, int, bool]]:
    """Requests on every client, one every 50 ms each, until told to close or `seconds` pass:
    [(time since start, status, told to close)] of the last request of each."""
    t0 = time.monotonic()
    out: list = [None] * len(clients)

    def run(i: int, c: KeepAlive) -> None:
        while time.monotonic() - t0 < seconds:
            status, close = c.get()
            out[i] = (time.monotonic() - t0, status, close)
            if close:
                return
            time.sleep(0.05)
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_a_replaced_listener_drains_gradually_over_the_drain_time(world):
    cp, ups, proxies = world
    p, lport = _start(cp, ups, proxies, "gradual", [_chain("ingress_http")])
    clients = [KeepAlive(lport) for _ in range(16)]
    try:
        assert all(c.get() == (200, False) for c in clients)
        # More than the filter chains changes (the listener's buffer limit): a full replacement.
        cp.set(LISTENER, "l2", [_listener(lport, [_chain("ingress_v2")],
                                          per_connection_buffer_limit_bytes=65536)])
        assert p.wait_for(lambda: p.counters().get("listener_manager.listener_modified", 0) == 1, 5)
        assert p.wait_for(lambda: p.gauges().get("listener_manager.total_listeners_draining") == 1, 2)
        last = _drive(clients, DRAIN + 1.0)
        # No request lost: every one answered 200 until the connection was told to close.
        assert all(status == 200 and close for _, status, close in last), last
        told = sorted(t for t, _, _ in last)
        # Progressive: spread over the drain time, not all at once and none after it.
        assert told[0] < DRAIN / 2 < told[-1] <= 0.9 * DRAIN + 0.3, told
        assert sum(1 for t in told if t < DRAIN / 4) < len(told) - 2, told
        assert p.wait_for(lambda: p.gauges()["listener_manager.total_listeners_draining"] == 0)
        # New connections get the new listener meanwhile.
        fresh = KeepAlive(lport)
        assert fresh.get() == (200, False)
        fresh.close()
        assert p.counters()["http.ingress_v2.downstream_rq_completed"] >= 1
    finally:
        for c in clients:
            c.close()


def test_immediate_strategy_closes_at_the_next_response_and_idle_ones_at_the_end(world):
    cp, ups, proxies = world
    p, lport = _start(cp, ups, proxies, "immediate", [_chain("ingress_http")])
    busy, idle = KeepAlive(lport), KeepAlive(lport)
    try:
        assert busy.get() == (200, False) and idle.get() == (200, False)
        cp.set(LISTENER, "l2", [])   # removed
        assert p.wait_for(lambda: p.counters().get("listener_manager.listener_removed", 0) == 1, 5)
        time.sleep(0.2)
        assert busy.get() == (200, True)
        # The idle one is closed by the proxy by the end of the drain time (it sends nothing).
        idle.sock.settimeout(DRAIN + 2)
        t0 = time.monotonic()
        assert idle.sock.recv(1) == b""
        assert time.monotonic() - t0 <= DRAIN + 1
    finally:
        busy.close()
        idle.close()


def test_a_filter_chain_only_update_drains_only_the_changed_chains_connections(world):
    cp, ups, proxies = world
    kept_port = free_port()
    chains = [_chain("kept", {"source_ports": [kept_port]}), _chain("changed")]
    p, lport = _start(cp, ups, proxies, "gradual", chains)
    kept, changed = KeepAlive(lport, kept_port), KeepAlive(lport)
    try:
        assert kept.get() == (200, False) and changed.get() == (200, False)
        cp.set(LISTENER, "l2", [_listener(lport, [chains[0], _chain("changed_v2")])])
        assert p.wait_for(lambda: p.counters().get("listener_manager.listener_in_place_updated", 0) == 1, 5)
        assert p.wait_for(lambda: p.gauges()["listener_manager.total_filter_chains_draining"] == 1, 2)
        last = _drive([kept, changed], DRAIN + 1.0)
        assert last[1][1:] == (200, True), last      # the changed chain's connection drained
        assert last[0][1:] == (200, False), last     # the unchanged chain's never was
        assert kept.get() == (200, False)            # and is still open after the drain time
        assert p.counters()["http.kept.downstream_rq_completed"] >= 3
    finally:
        kept.close()
        changed.close()
