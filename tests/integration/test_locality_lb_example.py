"""Envoy's locality-load-balancing example (tests/envoy_examples/locality-load-balancing, from
envoyproxy/examples) through ftproxy, as its example.rst and verify.sh describe.

The bootstrap is loaded as published (but for its timers: the health checks run every 0.2 s
instead of 2 s, DNS is re-read every 0.2 s); only what docker-compose wires is moved onto loopback:
the listener and admin bind 127.0.0.1 on free ports, each backend container is a loopback
service on its own 127.0.0.x address at one shared port (the published 8080 becomes that
port), and the backends' DNS names resolve to those addresses (getaddrinfo answers from a
table, so the STRICT_DNS cluster, its health checks on `health_check_config.port_value` and
`--scale backend-local-1=5` work as in compose). The services answer as the example's
service.py: `/` says "Hello from <name>!" (503 once `/unhealthy` was called), `/healthy` and
`/unhealthy` flip it.

Cluster `backend`: local-1 at priority 0, local-2 and remote-1 (two localities) at priority 1,
remote-2 at priority 2; locality_weighted_lb_config, HTTP health checks every 2 s."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from proxy.config.load import parse_bootstrap
from proxy.server.instance import Server, ServerOptions

from .clients import request

EXAMPLE = Path(__file__).resolve().parents[1] / "envoy_examples" / "locality-load-balancing" / "envoy.yaml"


class ExampleBackend:
    """service.py on `address`:`port`."""

    def __init__(self, name: str, address: str, port: int) -> None:
        self.name = name
        self.healthy = True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # no delayed-ACK wait between head and body
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/healthy":
                    outer.healthy = True
                    status, body = 201, f"[{outer.name}] Set to healthy\n"
                elif self.path == "/unhealthy":
                    outer.healthy = False
                    status, body = 201, f"[{outer.name}] Set to unhealthy\n"
                elif outer.healthy:
                    status, body = 200, f"Hello from {outer.name}!\n"
                else:
                    status, body = 503, "Unhealthy"
                data = body.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port_on(addresses: list[str]) -> int:
    """A port free on every one of `addresses` (each backend binds its own 127.0.0.x)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((addresses[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            for a in addresses:
                s = socket.socket()
                s.bind((a, port))
                s.close()
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class Compose:
    """The example's containers on loopback: `dns` maps each service name to its replicas'
    addresses (what compose's DNS answers), `backends` holds the running replicas."""

    SERVICES = {"backend-local-1": "127.0.0.11", "backend-local-2": "127.0.0.21",
                "backend-remote-1": "127.0.0.31", "backend-remote-2": "127.0.0.41"}

    def __init__(self) -> None:
        spare = [f"127.0.0.1{i}" for i in range(2, 6)]   # backend-local-1's extra replicas
        self.port = _free_port_on(list(self.SERVICES.values()) + spare)
        self.dns: dict[str, list[str]] = {}
        self.backends: dict[str, ExampleBackend] = {}
        for name, address in self.SERVICES.items():
            self.add_replica(name, address)

    def add_replica(self, service: str, address: str) -> ExampleBackend:
        """`docker compose up --scale`: one more container of `service` (named as compose
        names its containers: <service>-<n>)."""
        replicas = self.dns.setdefault(service, [])
        replicas.append(address)
        b = self.backends[f"{service}-{len(replicas)}"] = ExampleBackend(service, address, self.port)
        return b

    def close(self) -> None:
        for b in self.backends.values():
            b.close()


@pytest.fixture
def compose(monkeypatch):
    c = Compose()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *rest, **kw):
        if host in c.dns:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port))
                    for a in list(c.dns[host])]
        return real(host, port, *rest, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield c
    c.close()


class RunningProxy:
    def __init__(self, compose: Compose) -> None:
        raw = yaml.safe_load(EXAMPLE.read_text())
        raw["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
        for lis in raw["static_resources"]["listeners"]:
            lis["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
        for c in raw["static_resources"]["clusters"]:
            for group in c["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    e = ep["endpoint"]
                    assert e["address"]["socket_address"]["port_value"] == 8080
                    e["address"]["socket_address"]["port_value"] = compose.port
                    e["health_check_config"]["port_value"] = compose.port
            # Compose's DNS changes when a service is scaled; Envoy sees it at its next
            # refresh (5 s by default), and the checks run every 2 s (4 s without traffic):
            # shorter here, so the test does not wait (thresholds and paths as published).
            c["dns_refresh_rate"] = "0.2s"
            for hc in c["health_checks"]:
                assert (hc["interval"], hc["no_traffic_interval"]) == ("2s", "4s")
                hc.update(interval="0.2s", no_traffic_interval="0.2s", no_traffic_healthy_interval="0.2s")
        self.server = Server(parse_bootstrap(raw), ServerOptions("<example>", 1, 5.0, "fast",
                                                                 disable_hot_restart=True))
        self.thread = threading.Thread(target=self.server.run, kwargs={"install_signals": False}, daemon=True)
        self.thread.start()
        assert self.server.wait_ready(15)
        self.port = list(self.server.listener_addresses.values())[0][1]

    def admin(self, path: str) -> str:
        return request(self.server.admin.port, path).body.decode()

    def health(self) -> dict[str, str]:
        """address -> health_flags, from /clusters (what verify.sh greps)."""
        out = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if parts[0] == "backend" and len(parts) == 4 and parts[2] == "health_flags":
                out[parts[1].rsplit(":", 1)[0]] = parts[3]
        return out

    def wait_health(self, address: str, flags: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health().get(address) == flags:
                return
            time.sleep(0.05)
        raise AssertionError(f"{address} not {flags}: {self.health()}")

    def client(self, n: int = 100) -> Counter:
        """client.py: n requests to the listener, counted by answer."""
        got: Counter = Counter()
        for _ in range(n):
            r = request(self.port, "/")
            got[r.body.decode().strip() if r.status == 200 else "Failed"] += 1
        return got

    def stop(self) -> None:
        self.server.request_shutdown()
        self.thread.join(15)


def _toggle(compose: Compose, replica: str, state: str) -> None:
    """`curl <replica>:8080/<state>` (healthy / unhealthy)."""
    b = compose.backends[replica]
    conn = http.client.HTTPConnection(b.server.server_address[0], compose.port, timeout=5)
    conn.request("GET", f"/{state}")
    assert conn.getresponse().status == 201
    conn.close()


def test_locality_load_balancing_example(compose):
    proxy = RunningProxy(compose)
    try:
        addr = {name: compose.SERVICES[name.rsplit("-", 1)[0]] for name in
                ("backend-local-1-1", "backend-local-2-1", "backend-remote-1-1", "backend-remote-2-1")}

        def unhealthy(replica: str) -> None:
            _toggle(compose, replica, "unhealthy")
            proxy.wait_health(addr[replica], "/failed_active_hc")

        def healthy(replica: str) -> None:
            _toggle(compose, replica, "healthy")
            proxy.wait_health(addr[replica], "healthy")

        for a in addr.values():
            proxy.wait_health(a, "healthy")
        text = proxy.admin("/clusters")
        assert f"backend::{addr['backend-local-1-1']}:{compose.port}::priority::0" in text
        assert f"backend::{addr['backend-remote-2-1']}:{compose.port}::priority::2" in text
        assert f"backend::{addr['backend-remote-1-1']}:{compose.port}::region::remote" in text
        assert f"backend::{addr['backend-local-2-1']}:{compose.port}::zone::zone-2" in text

        # Scenario 1: every locality healthy: priority 0 (local-1) takes everything.
        assert proxy.client() == {"Hello from backend-local-1!": 100}
        # local-1 fails its checks: priority 1's two localities (weight 1 each) split 50:50.
        unhealthy("backend-local-1-1")
        assert proxy.client() == {"Hello from backend-local-2!": 50, "Hello from backend-remote-1!": 50}
        # local-2 down too: priority 1 is 50 % healthy (70 % with the factor 1.4): remote-1
        # keeps 70 %, priority 2 (remote-2) gets 30 %.
        unhealthy("backend-local-2-1")
        got = proxy.client()
        assert set(got) == {"Hello from backend-remote-1!", "Hello from backend-remote-2!"}
        assert 55 <= got["Hello from backend-remote-1!"] <= 85

        # Scenario 2: recover, scale local-1 to 5 replicas, bring 4 of them down: priority 0 is
        # 20 % healthy (28 % with the factor): the rest goes to priority 1, split by locality.
        healthy("backend-local-1-1")
        healthy("backend-local-2-1")
        for i in range(2, 6):
            b = compose.add_replica("backend-local-1", f"127.0.0.1{i}")
            addr[f"backend-local-1-{i}"] = b.server.server_address[0]
        for i in range(2, 6):
            proxy.wait_health(addr[f"backend-local-1-{i}"], "healthy")
        for i in range(2, 6):
            unhealthy(f"backend-local-1-{i}")
        got = proxy.client()
        assert set(got) == {"Hello from backend-local-1!", "Hello from backend-local-2!",
                            "Hello from backend-remote-1!"}
        assert 13 <= got["Hello from backend-local-1!"] <= 43          # ~28 %
        assert abs(got["Hello from backend-local-2!"] - got["Hello from backend-remote-1!"]) <= 2
        # Priority 1 all down: priority 0 keeps its 28 %, priority 2 takes the rest.
        unhealthy("backend-local-2-1")
        unhealthy("backend-remote-1-1")
        got = proxy.client()
        assert set(got) == {"Hello from backend-local-1!", "Hello from backend-remote-2!"}
        assert 13 <= got["Hello from backend-local-1!"] <= 43
        assert "Failed" not in got
    finally:
        proxy.stop()
