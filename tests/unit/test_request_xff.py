"""x-forwarded-for under use_remote_address (Envoy's mutateRequestHeaders): the peer's address,
or this host's own for a loopback peer; and the address helpers behind it."""

from __future__ import annotations

import subprocess

import pytest

from proxy.http.hcm_config import parse_hcm
from proxy.http.hcm_factory import HcmFactory
from proxy.http.headers import Headers
from proxy.http.request_headers import mutate_request_headers
from proxy.network.address import is_loopback, node_address


def _factory(**extra) -> HcmFactory:
    raw = {"stat_prefix": "t", "use_remote_address": True, "generate_request_id": False,
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}, **extra}
    return HcmFactory(parse_hcm(raw, "hcm"))


def _xff(ctx, peer: str, sent: bytes | None = None) -> bytes | None:
    headers = Headers([(b"host", b"h")] + ([(b"x-forwarded-for", sent)] if sent else []))
    mutate_request_headers(ctx, headers, peer, None)
    return headers.get(b"x-forwarded-for")


def test_a_remote_peer_is_appended_as_is():
    ctx = _factory()
    assert _xff(ctx, "10.1.2.3") == b"10.1.2.3"
    assert _xff(ctx, "10.1.2.3", b"192.168.0.9") == b"192.168.0.9,10.1.2.3"  # Envoy: "," alone
    assert _xff(ctx, "2001:db8::7") == b"2001:db8::7"


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_a_loopback_peer_is_replaced_by_this_hosts_address(peer):
    ctx = _factory()
    assert _xff(ctx, peer) == node_address().encode()


def test_skip_xff_append_leaves_it_alone():
    ctx = _factory(skip_xff_append=True)
    assert _xff(ctx, "127.0.0.1", b"1.2.3.4") == b"1.2.3.4"
    assert ctx.local_address == b""  # not looked up when it cannot be used


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.1", "::1", "::ffff:127.0.0.2"]))
    assert not any(map(is_loopback, ["10.0.0.1", "128.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1"]))


def test_node_address_is_an_address_of_this_host():
    """Checked against `hostname -I` (all addresses of the host's up interfaces, loopback left
    out): the first IPv4 one of them, or 127.0.0.1 on a host that has none."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    v4 = [a for a in out if ":" not in a]
    addr = node_address()
    assert addr in v4 if v4 else addr == "127.0.0.1"
    assert not is_loopback(addr) or not v4
