"""The I/O-free parts of xDS over gRPC: gRPC message framing, DiscoveryRequest/Response
encoding, resources as the same plain data a file gives (proto3 JSON), and the reconnect
backoff's bounds."""

from __future__ import annotations

import pytest

from proxy.xds import proto
from proxy.xds.grpc_stream import GrpcFramer, frame
from proxy.xds.subscription import CLUSTER_TYPE

from google.protobuf import any_pb2, json_format  # noqa: E402  (after proxy.xds.proto)
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402


def test_framer_splits_and_joins_messages_across_reads():
    data = frame(b"abc") + frame(b"") + frame(b"x" * 70000)
    f = GrpcFramer()
    out = []
    for i in range(0, len(data), 7):
        out += f.feed(data[i:i + 7])
    assert out == [b"abc", b"", b"x" * 70000]


def test_framer_refuses_a_compressed_message():
    with pytest.raises(ValueError, match="compressed"):
        GrpcFramer().feed(b"\x01\x00\x00\x00\x01a")


def test_request_carries_node_version_nonce_names_and_nack_detail():
    class Node:
        id, cluster, zone, metadata = "n1", "c1", "z", {"k": "v"}
    node = proto.node_message(Node, "ftproxy", (1, 2, 3))
    data = proto.encode_request(CLUSTER_TYPE, "v1", "7", ["a", "b"], node, "resources[0].name: bad")
    req = discovery_pb2.DiscoveryRequest()
    req.ParseFromString(data)
    assert (req.type_url, req.version_info, req.response_nonce) == (CLUSTER_TYPE, "v1", "7")
    assert list(req.resource_names) == ["a", "b"]
    assert (req.node.id, req.node.cluster, req.node.locality.zone) == ("n1", "c1", "z")
    assert req.node.user_agent_name == "ftproxy"
    v = req.node.user_agent_build_version.version
    assert (v.major_number, v.minor_number, v.patch) == (1, 2, 3)
    assert req.node.metadata["k"] == "v"
    assert (req.error_detail.code, req.error_detail.message) == (13, "resources[0].name: bad")
    ack = discovery_pb2.DiscoveryRequest()
    ack.ParseFromString(proto.encode_request(CLUSTER_TYPE, "v1", "7", [], None, None))
    assert not ack.HasField("error_detail") and not ack.HasField("node")


def test_resources_become_proto3_json_data_as_a_file_gives():
    c = json_format.ParseDict({"name": "c", "connect_timeout": "1.5s", "type": "STATIC",
                               "per_connection_buffer_limit_bytes": 1024,
                               "circuit_breakers": {"thresholds": [{"max_connections": 5}]}},
                              cluster_pb2.Cluster())
    resp = discovery_pb2.DiscoveryResponse(version_info="3", type_url=CLUSTER_TYPE, nonce="n")
    a = any_pb2.Any()
    a.Pack(c)
    resp.resources.append(a)
    got = proto.decode_response(resp.SerializeToString())
    assert (got.version_info, got.type_url, got.nonce) == ("3", CLUSTER_TYPE, "n")
    d = proto.resource_to_dict(got.resources[0])
    assert d == {"@type": CLUSTER_TYPE, "name": "c", "connect_timeout": "1.500s", "type": "STATIC",
                 "per_connection_buffer_limit_bytes": 1024,
                 "circuit_breakers": {"thresholds": [{"max_connections": 5}]}}
    assert type(d) is dict and type(d["circuit_breakers"]) is dict   # plain data, not OrderedDict
    from proxy.upstream.cluster_config import parse_cluster
    d.pop("@type")
    cfg = parse_cluster(d, "resources[0]")   # the same validator as a file's cluster
    assert (cfg.connect_timeout, cfg.type, cfg.per_connection_buffer_limit_bytes) == (1.5, "STATIC", 1024)


def test_an_unknown_any_type_is_a_value_error():
    a = any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b"")
    with pytest.raises(ValueError, match="cannot decode"):
        proto.resource_to_dict(a)


def test_backoff_is_jittered_exponential_capped_at_30s():
    from proxy.xds import grpc_mux

    class Timer:
        enabled = False

        def enable(self, d):
            delays.append(d)

    class Dispatcher:
        def create_timer(self, cb):
            return Timer()

    class Store:
        def gauge(self, name):
            class G:
                def set(self, v):
                    pass
            return G()

        def counter(self, name):   # control_plane.rate_limit_enforced
            return self.gauge(name)

        def scope(self, prefix):   # cluster.<xds cluster> (the stream's gRPC client stats)
            return self

    delays: list[float] = []
    mux = grpc_mux.GrpcMux(Dispatcher(), "xds", grpc_mux.ADS_PATH, lambda: [], None, Store(),
                           rand=lambda: 0.999999)
    for _ in range(10):
        mux._schedule_retry()
    caps = [min(30.0, 0.5 * 2 ** i) for i in range(10)]
    assert all(abs(d - c) < 1e-3 for d, c in zip(delays, caps)), delays
    mux.attempt = 0
    mux._rand = lambda: 0.0
    mux._schedule_retry()
    assert delays[-1] <= 0.001


def test_a_resource_wrapper_is_opened_and_a_heartbeat_recognised():
    c = json_format.ParseDict({"name": "c", "type": "STATIC"}, cluster_pb2.Cluster())
    wrapper = discovery_pb2.Resource(name="c", version="1")
    wrapper.resource.Pack(c)
    a = any_pb2.Any()
    a.Pack(wrapper)
    assert not proto.is_heartbeat(a)
    assert proto.resource_to_dict(a) == {"@type": CLUSTER_TYPE, "name": "c", "type": "STATIC"}
    beat = any_pb2.Any()
    beat.Pack(discovery_pb2.Resource(name="c", version="1"))
    assert proto.is_heartbeat(beat)


def test_connect_timeout_ends_a_stream_whose_connect_hangs():
    """A peer whose accept queue is full drops our SYN: the xDS cluster's connect_timeout
    ends the attempt (on_close, no gRPC status) instead of the kernel's minutes."""
    import socket
    import time
    from proxy.threads.dispatcher import Dispatcher
    from proxy.xds.grpc_stream import GrpcStream
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fill = []
    for _ in range(4):   # fill the accept queue: later SYNs are dropped
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)
    time.sleep(0.1)
    d = Dispatcher("t")
    closed = []
    t0 = time.monotonic()
    s = GrpcStream(d, ("127.0.0.1", port), "xds", "/x/y", lambda: closed.append("open"),
                   lambda m: None, lambda st, msg: closed.append((st, msg)), connect_timeout=0.3)
    assert d.run_until(lambda: bool(closed), 5)
    assert closed == [(None, "connect timeout (the xDS cluster's connect_timeout)")]
    assert 0.25 < time.monotonic() - t0 < 2
    s.close()
    d.close()
    for c in fill:
        c.close()
    srv.close()
