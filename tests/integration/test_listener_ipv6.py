"""An IPv6 listener takes IPv6 only (IPV6_V6ONLY), as Envoy's default (`ipv4_compat: false`);
`ipv4_compat: true` is refused rather than silently different."""

from __future__ import annotations

import socket

import pytest

from proxy.config.reader import ConfigError
from proxy.network.listener import bind_listen_sockets

has_ipv6 = socket.has_ipv6
try:
    socket.socket(socket.AF_INET6).close()
except OSError:
    has_ipv6 = False


@pytest.mark.skipif(not has_ipv6, reason="this machine has no IPv6 sockets")
def test_a_wildcard_ipv6_listener_does_not_take_ipv4():
    (sock,) = bind_listen_sockets("::", 0, 1, False)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        socket.create_connection(("::1", port), timeout=2).close()
    finally:
        sock.close()


def test_ipv4_compat_true_is_refused():
    import proxy.extensions  # noqa: F401
    from proxy.config.bootstrap import parse_bootstrap
    raw = {"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "::", "port_value": 0,
                                                    "ipv4_compat": True}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "c"}}]}]}],
        "clusters": [{"name": "c", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}]}}
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(raw)
    assert "static_resources.listeners[0].address.socket_address.ipv4_compat: not supported yet" in str(e.value)
