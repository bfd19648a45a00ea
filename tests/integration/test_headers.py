"""Request/response header handling through the real proxy: x-forwarded-*, x-request-id,
x-envoy-upstream-service-time, server, hop-by-hop removal, and header add/remove at the
route, virtual host and route-configuration levels.

Two proxies are shared by the module: `edge` (use_remote_address: true, default server name)
and `inner` (use_remote_address: false, server_name "my-proxy").
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .clients import RawUpstream, echo, read_request_head, request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, raw_request, static_cluster

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _add(key: str, value: str, action: str | None = None) -> dict:
    opt: dict = {"header": {"key": key, "value": value}}
    if action:
        opt["append_action"] = action
    return opt


OVERWRITE = "OVERWRITE_IF_EXISTS_OR_ADD"

ROUTES = [
    {"match": {"prefix": "/mut"}, "route": {"cluster": "c1"},
     "request_headers_to_add": [_add("x-route-req", "route"), _add("x-level", "route", OVERWRITE),
                                _add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")],
     "request_headers_to_remove": ["x-remove-route"],
     "response_headers_to_add": [_add("x-route-resp", "route"), _add("x-level", "route", OVERWRITE)],
     "response_headers_to_remove": ["x-upstream"]},
    {"match": {"prefix": "/respmut"}, "route": {"cluster": "fixed"}, "response_headers_to_remove": ["x-rm-route"]},
    {"match": {"prefix": "/respplain"}, "route": {"cluster": "fixed"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "c1"}},
]

VHOST_MUTATIONS = {
    "request_headers_to_add": [_add("x-vh-req", "vhost"), _add("x-level", "vhost", OVERWRITE)],
    "request_headers_to_remove": ["x-remove-vh"],
    "response_headers_to_add": [_add("x-vh-resp", "vhost"), _add("x-level", "vhost", OVERWRITE)],
    "response_headers_to_remove": ["x-rm-vh"],
}

ROUTE_CONFIG_MUTATIONS = {
    "request_headers_to_add": [_add("x-rc-req", "rc"), _add("x-level", "rc", OVERWRITE)],
    "request_headers_to_remove": ["x-remove-rc"],
    "response_headers_to_add": [_add("x-rc-resp", "rc"), _add("x-level", "rc", OVERWRITE)],
    "response_headers_to_remove": ["x-rm-rc"],
}


FIXED_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-rm-route: 1\r\nx-rm-vh: 1\r\nx-rm-rc: 1\r\n"
                  b"x-keep: 1\r\n\r\nok")


def _fixed_responder(sock) -> None:
    """Keep-alive upstream answering every request with FIXED_RESPONSE."""
    while read_request_head(sock):
        sock.sendall(FIXED_RESPONSE)


def _proxy(upstream_port: int, fixed_port: int, **hcm) -> ProxyUnderTest:
    cfg = front_proxy_config(ROUTES, [static_cluster("c1", upstream_port),
                                      static_cluster("fixed", fixed_port)], **hcm)
    rc = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    rc["virtual_hosts"][0].update(VHOST_MUTATIONS)
    rc.update(ROUTE_CONFIG_MUTATIONS)
    return ProxyUnderTest(cfg)


@pytest.fixture(scope="module")
def up():
    u = EchoUpstream("service1")
    yield u
    u.close()


@pytest.fixture(scope="module")
def fixed():
    u = RawUpstream(_fixed_responder)
    yield u
    u.close()


@pytest.fixture(scope="module")
def edge(up, fixed):
    p = _proxy(up.port, fixed.port, use_remote_address=True)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def inner(up, fixed):
    p = _proxy(up.port, fixed.port, use_remote_address=False, server_name="my-proxy")
    yield p
    p.stop()


# -- x-forwarded-* ------------------------------------------------------------------------------
def _host_ipv4s() -> set[str]:
    """This host's IPv4 addresses by `hostname -I` (an independent source), or {127.0.0.1} on a
    host that has none but loopback."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return {a for a in out if ":" not in a and not a.startswith("127.")} or {"127.0.0.1"}


def test_xff_gets_this_hosts_address_for_a_loopback_peer(edge):
    # Envoy appends its own (local_info) address, not 127.0.0.1, when the peer is on loopback;
    # every test client is. x-envoy-external-address still names the real peer.
    seen = echo(edge.port, "/")["headers"]
    assert seen["x-forwarded-for"] in _host_ipv4s()
    assert seen["x-envoy-external-address"] == "127.0.0.1"


def test_xff_appends_after_existing_entries(edge):
    seen = echo(edge.port, "/", headers={"x-forwarded-for": "10.0.0.1, 10.0.0.2"})
    # Envoy appends with "," and no space (the sender's own ", " stays as it was).
    sent, ours = seen["headers"]["x-forwarded-for"].rsplit(",", 1)
    assert sent == "10.0.0.1, 10.0.0.2" and ours in _host_ipv4s()


def test_xff_not_appended_without_use_remote_address(inner):
    seen = echo(inner.port, "/", headers={"x-forwarded-for": "10.0.0.1"})
    assert seen["headers"]["x-forwarded-for"] == "10.0.0.1"


def test_x_forwarded_proto_set_to_http(edge, inner):
    assert echo(edge.port, "/", headers={"x-forwarded-proto": "https"})["headers"]["x-forwarded-proto"] == "http"
    assert echo(inner.port, "/")["headers"]["x-forwarded-proto"] == "http"


# -- Envoy's x-envoy-* sanitising -----------------------------------------------------------------
# Fields that would steer an Envoy's router, sent by a client: every request is external (no
# internal_address_config), so Envoy drops them; x-envoy-internal always.
STEERING = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "9", "x-envoy-force-trace": "1",
            "x-envoy-upstream-rq-timeout-ms": "1", "x-envoy-expected-rq-timeout-ms": "1",
            "x-envoy-internal": "true", "x-envoy-ip-tags": "a"}
# Fields naming the caller: dropped at the edge (use_remote_address) only.
CALLER = {"x-envoy-decorator-operation": "op", "x-envoy-downstream-service-cluster": "svc",
          "x-envoy-downstream-service-node": "node"}


def test_edge_drops_envoy_steering_and_caller_fields_and_sets_external_address(edge):
    seen = echo(edge.port, "/", headers={**STEERING, **CALLER, "x-envoy-external-address": "6.6.6.6",
                                         "x-envoy-custom": "kept"})["headers"]
    # The router sets its own x-envoy-expected-rq-timeout-ms (the route's 15 s), after.
    assert seen.pop("x-envoy-expected-rq-timeout-ms") == "15000"
    assert not set(STEERING) & set(seen), seen
    assert not set(CALLER) & set(seen), seen
    assert seen["x-envoy-external-address"] == "127.0.0.1"  # ours, not the client's
    assert seen["x-envoy-custom"] == "kept"  # only Envoy's own fields are sanitised


def test_inner_hop_drops_steering_fields_keeps_caller_fields_and_adds_no_external_address(inner):
    seen = echo(inner.port, "/", headers={**STEERING, **CALLER})["headers"]
    assert seen.pop("x-envoy-expected-rq-timeout-ms") == "15000"
    assert not set(STEERING) & set(seen), seen
    assert {k: seen.get(k) for k in CALLER} == CALLER
    assert "x-envoy-external-address" not in seen


def test_route_config_internal_only_headers_are_removed(proxy_factory, up):
    """route_config.internal_only_headers: Envoy removes them from external requests, and with
    no internal_address_config every request is external."""
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", up.port)])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["internal_only_headers"] = ["X-Internal-Secret"]
    p = proxy_factory(cfg)
    seen = echo(p.port, "/", headers={"x-internal-secret": "s3", "x-other": "o"})["headers"]
    assert "x-internal-secret" not in seen
    assert seen["x-other"] == "o"


def test_upgrade_requests_are_sanitised_too(proxy_factory):
    """An upgrade request keeps Connection and Upgrade but loses Envoy's steering fields, and at
    the edge gets x-envoy-external-address, as any other request."""
    heads: list[bytes] = []

    def switch(sock) -> None:  # records the head it got, answers 101, closes
        heads.append(read_request_head(sock))
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")

    raw_up = RawUpstream(switch)
    try:
        p = proxy_factory(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                                             [static_cluster("c1", raw_up.port)],
                                             use_remote_address=True,
                                             upgrade_configs=[{"upgrade_type": "websocket"}]))
        reply = raw_request(p.port, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                                    b"Upgrade: websocket\r\nx-envoy-retry-on: 5xx\r\n"
                                    b"x-envoy-internal: true\r\nx-envoy-external-address: 6.6.6.6\r\n\r\n")
    finally:
        raw_up.close()
    assert reply.startswith(b"HTTP/1.1 101 "), reply[:80]
    fields = [line.split(b":", 1)[0].lower() for line in heads[0].split(b"\r\n")[1:] if line]
    assert b"connection" in fields and b"upgrade" in fields
    assert b"x-envoy-retry-on" not in fields and b"x-envoy-internal" not in fields
    assert b"x-envoy-external-address: 127.0.0.1" in heads[0].lower()
    assert fields.count(b"x-envoy-external-address") == 1


# -- x-request-id -------------------------------------------------------------------------------
def test_request_id_generated_as_uuid4(edge, inner):
    for p in (edge, inner):
        rid = echo(p.port, "/")["headers"]["x-request-id"]
        assert UUID4.match(rid), rid


def test_request_ids_are_unique_per_request(inner):
    ids = {echo(inner.port, "/")["headers"]["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_request_id_preserved_without_use_remote_address(inner):
    seen = echo(inner.port, "/", headers={"x-request-id": "client-given-id"})
    assert seen["headers"]["x-request-id"] == "client-given-id"


def test_external_request_id_replaced_at_the_edge(edge):
    rid = echo(edge.port, "/", headers={"x-request-id": "client-given-id"})["headers"]["x-request-id"]
    assert rid != "client-given-id" and UUID4.match(rid)


# -- response headers added by the proxy ----------------------------------------------------------
def test_upstream_service_time_header_in_response(edge):
    r = request(edge.port, "/")
    assert r.status == 200
    assert r.headers["x-envoy-upstream-service-time"].isdigit()


def test_server_header_overwritten_with_envoy(edge):
    r = request(edge.port, "/")
    assert [v for k, v in r.all_headers if k == "server"] == ["envoy"]


def test_server_name_override(inner):
    r = request(inner.port, "/")
    assert [v for k, v in r.all_headers if k == "server"] == ["my-proxy"]


# -- hop-by-hop --------------------------------------------------------------------------------
def test_hop_by_hop_headers_not_forwarded(edge):
    raw = raw_request(edge.port, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, x-secret\r\n"
                                 b"x-secret: s\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\n"
                                 b"x-kept: k\r\nconnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    seen = json.loads(body)["headers"]
    assert seen["x-kept"] == "k"
    for name in ("x-secret", "keep-alive", "proxy-connection"):
        assert name not in seen, name


def test_bodiless_get_forwarded_without_transfer_encoding(edge, up):
    before = len(up.requests)
    assert echo(edge.port, "/")["body_len"] == 0
    _, _, headers, body = up.requests[before]
    assert "transfer-encoding" not in headers and body == b""


# -- header mutations at three levels ---------------------------------------------------------------
def test_request_headers_added_at_route_vhost_and_route_config(edge):
    h = echo(edge.port, "/mut")["headers"]
    assert (h["x-route-req"], h["x-vh-req"], h["x-rc-req"]) == ("route", "vhost", "rc")
    assert h["x-client"] == "127.0.0.1"


def test_request_headers_removed_at_route_vhost_and_route_config(edge):
    h = echo(edge.port, "/mut", headers={"x-remove-route": "1", "x-remove-vh": "1",
                                         "x-remove-rc": "1", "x-stays": "1"})["headers"]
    assert h["x-stays"] == "1"
    assert not {"x-remove-route", "x-remove-vh", "x-remove-rc"} & set(h)


def test_vhost_and_route_config_request_mutations_apply_to_every_route(edge):
    h = echo(edge.port, "/other", headers={"x-remove-vh": "1", "x-remove-rc": "1"})["headers"]
    assert h["x-vh-req"] == "vhost" and h["x-rc-req"] == "rc"
    assert "x-route-req" not in h
    assert not {"x-remove-vh", "x-remove-rc"} & set(h)


def test_response_headers_added_at_route_vhost_and_route_config(edge):
    r = request(edge.port, "/mut")
    assert (r.headers["x-route-resp"], r.headers["x-vh-resp"], r.headers["x-rc-resp"]) == ("route", "vhost", "rc")


def test_response_headers_removed_at_route_vhost_and_route_config(edge):
    plain = request(edge.port, "/respplain")      # vhost and route config removals only
    assert plain.body == b"ok"
    assert {"x-keep", "x-rm-route"} <= set(plain.headers)
    assert not {"x-rm-vh", "x-rm-rc"} & set(plain.headers)
    r = request(edge.port, "/respmut")            # plus the route's removal
    assert "x-keep" in r.headers
    assert not {"x-rm-route", "x-rm-vh", "x-rm-rc"} & set(r.headers)


def test_outer_level_wins_header_conflicts_by_default(edge):
    assert echo(edge.port, "/mut")["headers"]["x-level"] == "rc"
    assert [v for k, v in request(edge.port, "/mut").all_headers if k == "x-level"] == ["rc"]
