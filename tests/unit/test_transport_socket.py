"""Choosing a transport socket factory from config (cluster and listener filter chain)."""

import pytest

from proxy.config.reader import ConfigError
from proxy.config.listener import parse_listener
import proxy.extensions  # noqa: F401  registers the TLS transport socket
from proxy.network import transport_socket as ts
from proxy.network.transport_socket import (DOWNSTREAM, RAW_BUFFER, UPSTREAM, downstream_transport_factory,
                                            parse_transport_socket, upstream_transport_factory)
from proxy.tls.transport_socket import DownstreamTlsFactory, UpstreamTlsFactory
from proxy.upstream.cluster_config import parse_cluster

RAW_URL = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
BASE_CLUSTER = {"name": "c", "connect_timeout": "1s",
                "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": 1}}]}


def test_absent_transport_socket_is_raw_buffer_as_in_envoy():
    assert parse_transport_socket(None, "ts", UPSTREAM) is RAW_BUFFER
    assert parse_transport_socket(None, "ts", DOWNSTREAM) is RAW_BUFFER


def test_raw_buffer_is_found_by_name_or_by_type_url():
    for side in (UPSTREAM, DOWNSTREAM):
        assert parse_transport_socket({"name": "envoy.transport_sockets.raw_buffer"}, "ts", side) is RAW_BUFFER
        assert parse_transport_socket({"name": "raw", "typed_config": {"@type": RAW_URL}}, "ts", side) is RAW_BUFFER


def test_raw_buffer_has_no_fields():
    with pytest.raises(ConfigError, match='unknown field "x"'):
        parse_transport_socket({"name": "raw", "typed_config": {"@type": RAW_URL, "x": 1}}, "ts", UPSTREAM)


def test_tls_needs_its_typed_config_and_the_side_decides_the_message():
    with pytest.raises(ConfigError, match="needs a typed_config"):
        parse_transport_socket({"name": "envoy.transport_sockets.tls"}, "ts", UPSTREAM)
    down = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
    with pytest.raises(ConfigError, match="unsupported upstream transport socket type"):
        parse_transport_socket({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": down}},
                               "ts", UPSTREAM)
    up = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    f = parse_transport_socket({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": up, "sni": "a"}},
                               "ts", UPSTREAM)
    assert isinstance(f, UpstreamTlsFactory) and f.implements_secure_transport and f.config.sni == "a"


def test_unknown_transport_socket_name_is_a_config_error():
    with pytest.raises(ConfigError, match='unsupported upstream transport socket "envoy.transport_sockets.alts"'):
        parse_transport_socket({"name": "envoy.transport_sockets.alts"}, "ts", UPSTREAM)


def test_cluster_transport_socket_is_built_at_load():
    assert upstream_transport_factory(parse_cluster(BASE_CLUSTER, "c")) is RAW_BUFFER
    raw = dict(BASE_CLUSTER, transport_socket={"name": "envoy.transport_sockets.raw_buffer"})
    assert upstream_transport_factory(parse_cluster(raw, "c")) is RAW_BUFFER
    raw = dict(BASE_CLUSTER, transport_socket={"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}})
    assert isinstance(upstream_transport_factory(parse_cluster(raw, "c")), UpstreamTlsFactory)


def test_filter_chain_transport_socket_and_its_connect_timeout(tmp_path):
    from tests.tls_certs import CertAuthority
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", ["localhost"])
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{
                    "transport_socket_connect_timeout": "2.5s",
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {"tls_certificates": [{
                            "certificate_chain": {"filename": str(cert)},
                            "private_key": {"filename": str(key)}}]}}},
                    "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "t", "cluster": "c"}}]}]}
    chain = parse_listener(listener, "listeners[0]").filter_chains[0]
    factory = downstream_transport_factory(chain)
    assert isinstance(factory, DownstreamTlsFactory) and factory.connect_timeout == 2.5


def test_raw_buffer_factory_key_is_hashable_and_stable():
    assert {RAW_BUFFER.key: 1}[ts.RawBufferSocketFactory().key] == 1
    assert RAW_BUFFER.implements_secure_transport is False
    assert RAW_BUFFER.for_worker(None) is RAW_BUFFER
