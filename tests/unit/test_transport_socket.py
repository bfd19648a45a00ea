"""Choosing a transport socket factory from config (cluster and listener filter chain)."""

import pytest

from proxy.network import transport_socket as ts
from proxy.network.transport_socket import (RAW_BUFFER, downstream_transport_factory, transport_socket_factory,
                                            upstream_transport_factory)
from proxy.upstream.cluster_config import parse_cluster


def test_absent_transport_socket_is_raw_buffer_as_in_envoy():
    assert transport_socket_factory(None) is RAW_BUFFER
    assert transport_socket_factory({}) is RAW_BUFFER


def test_raw_buffer_is_found_by_name_or_by_type_url():
    assert transport_socket_factory({"name": "envoy.transport_sockets.raw_buffer"}) is RAW_BUFFER
    assert transport_socket_factory({"name": "raw", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}) is RAW_BUFFER


def test_an_unregistered_transport_is_our_bug_and_raises():
    with pytest.raises(ValueError, match="not registered"):
        transport_socket_factory({"name": "envoy.transport_sockets.tls"})


def test_registering_a_transport_is_all_a_new_one_needs(monkeypatch):
    class FakeFactory:
        name = "test.fake"
        implements_secure_transport = True
        key = ("test.fake", "opts")

        def __init__(self, typed):
            self.typed = typed

        def create(self, sock, server_name=None):
            raise AssertionError("not used here")
    monkeypatch.setattr(ts, "_REGISTRY", dict(ts._REGISTRY))
    monkeypatch.setattr(ts, "_TYPE_URLS", dict(ts._TYPE_URLS))
    ts.register_transport_socket("test.fake", "test.v3.Fake", FakeFactory)
    f = transport_socket_factory({"name": "test.fake", "typed_config": {"@type": "x/test.v3.Fake", "a": 1}})
    assert isinstance(f, FakeFactory) and f.typed["a"] == 1
    cluster = parse_cluster({"name": "c", "connect_timeout": "1s", "hosts": [
        {"socket_address": {"address": "127.0.0.1", "port_value": 1}}]}, "c")
    cluster = type("C", (), {"transport_socket": {"name": "test.fake"}, "raw": cluster.raw})()
    assert isinstance(upstream_transport_factory(cluster), FakeFactory)


def test_cluster_transport_socket_raw_buffer_and_absent_choose_raw_buffer():
    base = {"name": "c", "connect_timeout": "1s",
            "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": 1}}]}
    assert upstream_transport_factory(parse_cluster(base, "c")) is RAW_BUFFER
    raw = dict(base, transport_socket={"name": "envoy.transport_sockets.raw_buffer"})
    assert upstream_transport_factory(parse_cluster(raw, "c")) is RAW_BUFFER


def test_filter_chain_without_transport_socket_is_raw_buffer():
    class Chain:
        filters = ()
    assert downstream_transport_factory(Chain()) is RAW_BUFFER


def test_raw_buffer_factory_key_is_hashable_and_stable():
    assert {RAW_BUFFER.key: 1}[ts.RawBufferSocketFactory().key] == 1
    assert RAW_BUFFER.implements_secure_transport is False
