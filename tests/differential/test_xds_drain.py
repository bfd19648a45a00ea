"""Draining LDS listeners against real Envoy 1.40 (`--drain-time-s 2 --drain-strategy
immediate`, one control plane): after a full replacement of a listener, a keep-alive
connection of the old one is answered with `connection: close` and an idle one is closed by
the end of the drain time; after a filter-chain-only update (Envoy's in-place update) only
the changed chain's connection drains, the unchanged chain's one is still served after the
drain time; both count the same listener stats. (The gradual strategy is random in both, so
it is compared only through tests/integration/test_xds_drain.py.)"""

from __future__ import annotations

import socket
import time

from tests.integration.harness import EchoUpstream
from tests.integration.xds_control_plane import CLUSTER, LISTENER, ControlPlane

from .proxies import PortReservation
from .test_xds_grpc import HCM, ROUTER, Proxy, static

DRAIN = 2.0
STATS = ["listener_manager.listener_modified", "listener_manager.listener_in_place_updated",
         "listener_manager.total_listeners_draining", "listener_manager.total_filter_chains_draining"]


def chain(prefix: str, match: dict | None = None) -> dict:
    c = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": prefix, "http_filters": [ROUTER],
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "dyn"}}]}]}}}]}
    if match:
        c["filter_chain_match"] = match
    return c


def listener(port: int, chains: list, **extra) -> dict:
    return {"@type": LISTENER, "name": "l1",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": chains, **extra}


def connect(port: int, source_port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", source_port))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def get(s: socket.socket) -> str:
    """'200', '200 close' or 'closed'."""
    try:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return "closed"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().lower().split("\r\n")
        length = next(int(x.split(":")[1]) for x in lines if x.startswith("content-length"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                return "closed"
            body += chunk
        return lines[0].split()[1] + (" close" if "connection: close" in lines else "")
    except OSError:
        return "closed"


def closed_by_peer(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except OSError as e:
        return not isinstance(e, TimeoutError)


def test_lds_drains_agree_with_real_envoy(tmp_path):
    s1 = EchoUpstream("service1")
    cp = ControlPlane()
    ports = PortReservation()
    proxies = [Proxy("envoy", tmp_path, ports, cp.port, "GRPC"),
               Proxy("ftproxy", tmp_path, ports, cp.port, "GRPC")]
    kept_ports = {p.kind: ports.take() for p in proxies}
    ports.release()
    for p in proxies:
        i = p.cmd.index("--drain-time-s")
        p.cmd[i + 1] = str(int(DRAIN))   # Envoy takes whole seconds
        p.cmd += ["--drain-strategy", "immediate"]
    problems = []
    socks: list[socket.socket] = []

    def push(version: str, make) -> None:
        for p in proxies:
            cp.set(LISTENER, version, [make(p)], node=p.kind)
        for p in proxies:
            if not cp.wait(lambda: cp.acked(LISTENER, version, p.kind), 20):
                problems.append(f"{p.kind} did not ACK {version}")
        time.sleep(0.5)

    ours: dict = {}

    def compare(step: str, seen: dict) -> None:
        ours[step] = seen["ftproxy"]
        if seen["envoy"] != seen["ftproxy"]:
            problems.append(f"{step}: envoy {seen['envoy']} ftproxy {seen['ftproxy']}")

    try:
        cp.set(CLUSTER, "c1", [static("dyn", s1.port)])
        plain = lambda p: listener(p.listener_ports["l1"], [chain("ingress_http")])  # noqa: E731
        for p in proxies:
            cp.set(LISTENER, "v1", [plain(p)], node=p.kind)
        for p in proxies:
            p.start()
        conns = {}
        for p in proxies:
            busy, idle = connect(p.listener_ports["l1"]), connect(p.listener_ports["l1"])
            socks += [busy, idle]
            conns[p.kind] = (busy, idle, get(busy), get(idle))
        # A full replacement (the listener's buffer limit changes too).
        push("v2", lambda p: listener(p.listener_ports["l1"], [chain("ingress_http")],
                                      per_connection_buffer_limit_bytes=65536))
        compare("full replacement: stats", {p.kind: p.stats_of(STATS) for p in proxies})
        compare("full replacement: the busy connection's next answer",
                {k: get(v[0]) for k, v in conns.items()})
        compare("full replacement: the idle connection is closed by the end of the drain time",
                {k: closed_by_peer(v[1], DRAIN + 1.5) for k, v in conns.items()})
        compare("full replacement: a new connection", {p.kind: get(connect(p.listener_ports["l1"]))
                                                       for p in proxies})
        time.sleep(1.0)
        # Two chains: one for the source port kept_ports[kind], one for the rest.
        two = lambda p, rest: listener(p.listener_ports["l1"], [  # noqa: E731
            chain("kept", {"source_ports": [kept_ports[p.kind]]}), chain(rest)],
            per_connection_buffer_limit_bytes=65536)
        push("v3", lambda p: two(p, "rest"))
        time.sleep(DRAIN + 0.5)   # that replacement's drain is over
        pair = {}
        for p in proxies:
            kept, other = connect(p.listener_ports["l1"], kept_ports[p.kind]), connect(p.listener_ports["l1"])
            socks += [kept, other]
            pair[p.kind] = (kept, other, get(kept), get(other))
        push("v4", lambda p: two(p, "rest_v2"))   # only the second chain changes
        compare("in place: stats", {p.kind: p.stats_of(STATS) for p in proxies})
        compare("in place: the changed chain's connection", {k: get(v[1]) for k, v in pair.items()})
        compare("in place: the kept chain's connection", {k: get(v[0]) for k, v in pair.items()})
        time.sleep(DRAIN + 0.5)
        compare("in place: the kept chain's connection after the drain time",
                {k: get(v[0]) for k, v in pair.items()})
        compare("after the drain time: stats", {p.kind: p.stats_of(STATS) for p in proxies})
    finally:
        for s in socks:
            s.close()
        for p in proxies:
            p.stop()
        cp.close()
        s1.close()
    assert not problems, "\n".join(problems)
    answers = [v for v in ours.values() if not isinstance(v, dict)]
    assert answers == ["200 close", True, "200", "200 close", "200", "200"], ours
