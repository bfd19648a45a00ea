"""A route `hash_policy` cookie with a `ttl` (sticky sessions), against real Envoy 1.40: when
the request has no such cookie and the cluster is a hashing one, the proxy generates the
value, hashes it to pick the host and sets it on the response.

Both proxies run the same bootstrap; for each, the test sends from a client port it knows and
checks the exact `set-cookie` header against Envoy's rule (value: xxHash64 of the connection's
remote then local address, 16 hex digits; `Max-Age` unless the ttl is 0, `Path`, the
attributes, `HttpOnly`, in that order), then that a request carrying the cookie lands on the
host the first one did. A ROUND_ROBIN cluster never computes the hash: no cookie."""

from __future__ import annotations

import socket

import pytest
import xxhash

from tests.integration.harness import EchoUpstream

from .proxies import BootstrapProcess, PortReservation

ROUTES = [
    ("/ring/p", "ring", {"name": "sticky", "ttl": "3600s", "path": "/p"}),
    ("/ring/zero", "ring", {"name": "sticky", "ttl": "0s"}),
    ("/ring/attr", "ring", {"name": "sticky", "ttl": "10s", "attributes": [
        {"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}),
    ("/maglev", "maglev", {"name": "s2", "ttl": "60s"}),
    ("/rr", "rr", {"name": "sticky", "ttl": "60s"}),
]
EXPECTED_SUFFIX = {
    "/ring/p": "; Max-Age=3600; Path=/p; HttpOnly",
    "/ring/zero": "; HttpOnly",
    "/ring/attr": "; Max-Age=10; SameSite=Strict; Secure; HttpOnly",
    "/maglev": "; Max-Age=60; HttpOnly",
    "/rr": None,
}


def _bootstrap(admin: int, listener: int, upstreams: list[int]) -> dict:
    def cluster(name: str, lb: str) -> dict:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": lb,
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                 "port_value": p}}}}
                    for p in upstreams]}]}}
    routes = [{"match": {"prefix": prefix},
               "route": {"cluster": c, "hash_policy": [{"cookie": cookie}]}}
              for prefix, c, cookie in ROUTES]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                    "http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "sticky",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "main", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": listener}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm}]}]}],
                "clusters": [cluster("ring", "RING_HASH"), cluster("maglev", "MAGLEV"),
                             cluster("rr", "ROUND_ROBIN")]}}


class _Proxy(BootstrapProcess):
    def __init__(self, kind: str, tmp_path, upstreams: list[int]) -> None:
        ports = PortReservation()
        admin_port, self.port = ports.take(), ports.take()
        ports.release()
        super().__init__(kind, _bootstrap(admin_port, self.port, upstreams), admin_port,
                         tmp_path / f"{kind}.json")

    def get(self, path: str, cookie: str | None = None) -> tuple[int, list[str], str]:
        """One request on a new connection: (status, set-cookie values, client address)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            client = "%s:%d" % s.getsockname()[:2]
            extra = f"cookie: {cookie}\r\n" if cookie else ""
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: example.com\r\n{extra}"
                      f"connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        cookies = [line.split(":", 1)[1].strip() for line in head[1:]
                   if line.lower().startswith("set-cookie:")]
        return int(head[0].split()[1]), cookies, client


@pytest.fixture(scope="module")
def upstreams():
    ups = [EchoUpstream(f"u{i}") for i in range(4)]
    yield ups
    for u in ups:
        u.close()


@pytest.fixture(scope="module", params=["envoy", "ftproxy"])
def proxy(request, upstreams, tmp_path_factory):
    p = _Proxy(request.param, tmp_path_factory.mktemp(request.param), [u.port for u in upstreams])
    yield p
    p.stop()


def _answered(upstreams, before: list[int]) -> int:
    got = [i for i, u in enumerate(upstreams) if len(u.requests) > before[i]]
    assert len(got) == 1, got
    return got[0]


@pytest.mark.parametrize("prefix", [r[0] for r in ROUTES])
def test_generated_cookie_is_envoys_and_sticks(proxy, upstreams, prefix):
    before = [len(u.requests) for u in upstreams]
    status, cookies, client = proxy.get(prefix)
    assert status == 200
    name = next(c["name"] for p, _, c in ROUTES if p == prefix)
    suffix = EXPECTED_SUFFIX[prefix]
    if suffix is None:     # not a hashing cluster: no hash computed, no cookie
        assert cookies == []
        return
    value = "%016x" % xxhash.xxh64_intdigest(f"{client}127.0.0.1:{proxy.port}".encode())
    assert cookies == [f'{name}="{value}"{suffix}']
    first = _answered(upstreams, before)
    for _ in range(3):   # the cookie sent back keeps the host; none is set again
        before = [len(u.requests) for u in upstreams]
        status, cookies, _ = proxy.get(prefix, f'other=1; {name}="{value}"')
        assert (status, cookies) == (200, [])
        assert _answered(upstreams, before) == first
