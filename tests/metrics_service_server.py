"""A MetricsService server for the tests: a grpclib server (h2c, its own thread and event loop)
serving `envoy.service.metrics.v3.MetricsService/StreamMetrics`, decoding each
StreamMetricsMessage with protobuf classes built here from descriptors (the xds-protos package
has neither `envoy.service.metrics.v3` nor `io.prometheus.client`): an independent decoder of
what ftproxy encodes by hand. Works on 3.13 and 3.14t.

`messages`: every message received, in order, as (stream number, decoded message);
`stop()` drops the open streams and stops serving; `start()` serves again on the same port.
"""

from __future__ import annotations

import threading
import time

import proxy.xds.proto  # noqa: F401  first: selects protobuf's pure-Python backend on 3.14t
from envoy.config.core.v3 import base_pb2  # noqa: F401  (the Node type, in the default pool)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase

from tests.grpclib_thread import ThreadedGrpcServer

__all__ = ["MetricsServiceServer", "PATH", "MetricFamily", "StreamMetricsMessage", "families"]

PATH = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
F = descriptor_pb2.FieldDescriptorProto


class _RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type):
        return bytes(data)


def _field(msg, name: str, number: int, kind: int, label: int = F.LABEL_OPTIONAL,
           type_name: str = "") -> None:
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        f.type_name = type_name


def _prometheus_file() -> descriptor_pb2.FileDescriptorProto:
    """io/prometheus/client/metrics.proto (proto2), the fields Envoy writes."""
    fd = descriptor_pb2.FileDescriptorProto(name="test/io/prometheus/client/metrics.proto",
                                            package="io.prometheus.client", syntax="proto2")
    enum = fd.enum_type.add(name="MetricType")
    for i, n in enumerate(("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM")):
        enum.value.add(name=n, number=i)
    P = ".io.prometheus.client."
    lp = fd.message_type.add(name="LabelPair")
    _field(lp, "name", 1, F.TYPE_STRING)
    _field(lp, "value", 2, F.TYPE_STRING)
    for name in ("Gauge", "Counter", "Untyped"):
        _field(fd.message_type.add(name=name), "value", 1, F.TYPE_DOUBLE)
    q = fd.message_type.add(name="Quantile")
    _field(q, "quantile", 1, F.TYPE_DOUBLE)
    _field(q, "value", 2, F.TYPE_DOUBLE)
    s = fd.message_type.add(name="Summary")
    _field(s, "sample_count", 1, F.TYPE_UINT64)
    _field(s, "sample_sum", 2, F.TYPE_DOUBLE)
    _field(s, "quantile", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, P + "Quantile")
    b = fd.message_type.add(name="Bucket")
    _field(b, "cumulative_count", 1, F.TYPE_UINT64)
    _field(b, "upper_bound", 2, F.TYPE_DOUBLE)
    h = fd.message_type.add(name="Histogram")
    _field(h, "sample_count", 1, F.TYPE_UINT64)
    _field(h, "sample_sum", 2, F.TYPE_DOUBLE)
    _field(h, "bucket", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, P + "Bucket")
    m = fd.message_type.add(name="Metric")
    _field(m, "label", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, P + "LabelPair")
    _field(m, "gauge", 2, F.TYPE_MESSAGE, type_name=P + "Gauge")
    _field(m, "counter", 3, F.TYPE_MESSAGE, type_name=P + "Counter")
    _field(m, "summary", 4, F.TYPE_MESSAGE, type_name=P + "Summary")
    _field(m, "untyped", 5, F.TYPE_MESSAGE, type_name=P + "Untyped")
    _field(m, "histogram", 7, F.TYPE_MESSAGE, type_name=P + "Histogram")
    _field(m, "timestamp_ms", 6, F.TYPE_INT64)
    mf = fd.message_type.add(name="MetricFamily")
    _field(mf, "name", 1, F.TYPE_STRING)
    _field(mf, "help", 2, F.TYPE_STRING)
    _field(mf, "type", 3, F.TYPE_ENUM, type_name=P + "MetricType")
    _field(mf, "metric", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED, P + "Metric")
    return fd


def _service_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="test/envoy/service/metrics/v3/metrics_service.proto", package="envoy.service.metrics.v3",
        syntax="proto3", dependency=["envoy/config/core/v3/base.proto",
                                     "test/io/prometheus/client/metrics.proto"])
    fd.message_type.add(name="StreamMetricsResponse")
    msg = fd.message_type.add(name="StreamMetricsMessage")
    ident = msg.nested_type.add(name="Identifier")
    _field(ident, "node", 1, F.TYPE_MESSAGE, type_name=".envoy.config.core.v3.Node")
    _field(msg, "identifier", 1, F.TYPE_MESSAGE,
           type_name=".envoy.service.metrics.v3.StreamMetricsMessage.Identifier")
    _field(msg, "envoy_metrics", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".io.prometheus.client.MetricFamily")
    return fd


def _classes():
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("io.prometheus.client.MetricFamily")
    except KeyError:
        pool.Add(_prometheus_file())
    try:
        pool.FindMessageTypeByName("envoy.service.metrics.v3.StreamMetricsMessage")
    except KeyError:
        pool.Add(_service_file())
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("envoy.service.metrics.v3.StreamMetricsMessage")),
            get(pool.FindMessageTypeByName("io.prometheus.client.MetricFamily")))


StreamMetricsMessage, MetricFamily = _classes()
TYPES = {0: "COUNTER", 1: "GAUGE", 2: "SUMMARY", 3: "UNTYPED", 4: "HISTOGRAM"}


def families(message) -> dict[tuple[str, str, tuple], object]:
    """A message's metrics by (type, family name, labels): the Metric."""
    out = {}
    for fam in message.envoy_metrics:
        for m in fam.metric:
            labels = tuple((lp.name, lp.value) for lp in m.label)
            out[(TYPES[fam.type], fam.name, labels)] = m
    return out


class MetricsServiceServer(ThreadedGrpcServer):
    def __init__(self, ssl=None) -> None:
        self.messages: list[tuple[int, object]] = []
        self.streams_opened = 0
        self.metadata: list[dict] = []
        self._lock = threading.Lock()     # guards messages, metadata (loop thread appends)
        super().__init__("metrics-service", codec=_RawCodec(), ssl=ssl)

    def received(self) -> list[tuple[int, object]]:
        with self._lock:
            return list(self.messages)

    def of_node(self, node_id: str) -> list[object]:
        """The messages of the streams whose first message named this node, in order."""
        streams: dict[int, str] = {}
        out = []
        for n, m in self.received():
            if m.HasField("identifier"):
                streams[n] = m.identifier.node.id
            if streams.get(n) == node_id:
                out.append(m)
        return out

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def __mapping__(self):
        return {PATH: Handler(self._serve, Cardinality.STREAM_UNARY, bytes, bytes)}

    async def _serve(self, stream) -> None:
        transport = stream._stream._transport   # grpclib internals: to drop it in stop()
        self._transports.add(transport)
        with self._lock:
            self.streams_opened += 1
            number = self.streams_opened
            self.metadata.append(dict(stream.metadata.items()))
        try:
            async for data in stream:
                msg = StreamMetricsMessage()
                msg.ParseFromString(data)
                with self._lock:
                    self.messages.append((number, msg))
            await stream.send_message(b"")
        finally:
            self._transports.discard(transport)
