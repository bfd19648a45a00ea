"""A SkyWalking trace collector for the tests: a grpclib server (h2c, its own thread and event
loop) serving `skywalking.v3.TraceSegmentReportService/collect` (client streaming: a stream of
SegmentObject messages, one Commands answer), decoding each segment with protobuf's own parser.
Works on 3.13 and 3.14t.

The message classes are built here from a descriptor written out field by field from
SkyWalking's data-collect-protocol (language-agent/Tracing.proto, common/Common.proto): an
independent decoder of what ftproxy encodes by hand (proxy/tracing/skywalking.py), not a copy
of its tables.

`segments`: every SegmentObject received, as a dict (`segment_dict`); `streams`: the metadata
of each collect call; `status`: a grpclib Status to end each call with instead of OK."""

from __future__ import annotations

import asyncio
import threading

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server

__all__ = ["SkyWalkingCollector", "COLLECT_PATH", "SegmentObject", "segment_dict"]

COLLECT_PATH = "/skywalking.v3.TraceSegmentReportService/collect"
_F = descriptor_pb2.FieldDescriptorProto


def _messages():
    f = descriptor_pb2.FileDescriptorProto(name="ftproxy_test_skywalking.proto",
                                           package="skywalking.v3", syntax="proto3")

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for number, fname, kind, extra in fields:
            field = m.field.add(name=fname, number=number, type=kind,
                                label=_F.LABEL_REPEATED if extra.get("repeated") else _F.LABEL_OPTIONAL)
            if "type_name" in extra:
                field.type_name = extra["type_name"]

    def enum(name, *values):
        e = f.enum_type.add(name=name)
        for number, vname in enumerate(values):
            e.value.add(name=vname, number=number)

    S, I32, I64, B = _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_BOOL
    M, E = _F.TYPE_MESSAGE, _F.TYPE_ENUM
    enum("SpanType", "Entry", "Exit", "Local")
    enum("RefType", "CrossProcess", "CrossThread")
    enum("SpanLayer", "Unknown", "Database", "RPCFramework", "Http", "MQ", "Cache", "FAAS")
    message("KeyStringValuePair", (1, "key", S, {}), (2, "value", S, {}))
    message("Log", (1, "time", I64, {}),
            (2, "data", M, {"repeated": 1, "type_name": ".skywalking.v3.KeyStringValuePair"}))
    message("SegmentReference", (1, "refType", E, {"type_name": ".skywalking.v3.RefType"}),
            (2, "traceId", S, {}), (3, "parentTraceSegmentId", S, {}), (4, "parentSpanId", I32, {}),
            (5, "parentService", S, {}), (6, "parentServiceInstance", S, {}),
            (7, "parentEndpoint", S, {}), (8, "networkAddressUsedAtPeer", S, {}))
    message("SpanObject", (1, "spanId", I32, {}), (2, "parentSpanId", I32, {}),
            (3, "startTime", I64, {}), (4, "endTime", I64, {}),
            (5, "refs", M, {"repeated": 1, "type_name": ".skywalking.v3.SegmentReference"}),
            (6, "operationName", S, {}), (7, "peer", S, {}),
            (8, "spanType", E, {"type_name": ".skywalking.v3.SpanType"}),
            (9, "spanLayer", E, {"type_name": ".skywalking.v3.SpanLayer"}),
            (10, "componentId", I32, {}), (11, "isError", B, {}),
            (12, "tags", M, {"repeated": 1, "type_name": ".skywalking.v3.KeyStringValuePair"}),
            (13, "logs", M, {"repeated": 1, "type_name": ".skywalking.v3.Log"}),
            (14, "skipAnalysis", B, {}))
    message("SegmentObject", (1, "traceId", S, {}), (2, "traceSegmentId", S, {}),
            (3, "spans", M, {"repeated": 1, "type_name": ".skywalking.v3.SpanObject"}),
            (4, "service", S, {}), (5, "serviceInstance", S, {}), (6, "isSizeLimited", B, {}))
    message("Commands")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("skywalking.v3.SegmentObject")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("skywalking.v3.Commands")))


SegmentObject, Commands = _messages()
SPAN_TYPES = ("Entry", "Exit", "Local")
LAYERS = ("Unknown", "Database", "RPCFramework", "Http", "MQ", "Cache", "FAAS")


def segment_dict(seg) -> dict:
    """A SegmentObject as plain data (what the tests compare)."""
    return {
        "traceId": seg.traceId, "traceSegmentId": seg.traceSegmentId, "service": seg.service,
        "serviceInstance": seg.serviceInstance, "isSizeLimited": seg.isSizeLimited,
        "spans": [{
            "spanId": s.spanId, "parentSpanId": s.parentSpanId, "startTime": s.startTime,
            "endTime": s.endTime, "operationName": s.operationName, "peer": s.peer,
            "spanType": SPAN_TYPES[s.spanType], "spanLayer": LAYERS[s.spanLayer],
            "componentId": s.componentId, "isError": s.isError, "skipAnalysis": s.skipAnalysis,
            "tags": [(t.key, t.value) for t in s.tags],
            "logs": [(lg.time, [(d.key, d.value) for d in lg.data]) for lg in s.logs],
            "refs": [{"refType": r.refType, "traceId": r.traceId,
                      "parentTraceSegmentId": r.parentTraceSegmentId,
                      "parentSpanId": r.parentSpanId, "parentService": r.parentService,
                      "parentServiceInstance": r.parentServiceInstance,
                      "parentEndpoint": r.parentEndpoint,
                      "networkAddressUsedAtPeer": r.networkAddressUsedAtPeer} for r in s.refs],
        } for s in seg.spans],
    }


class _RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type):
        return bytes(data)


class SkyWalkingCollector:
    def __init__(self, status: Status | None = None, port: int = 0) -> None:
        self.status = status
        self.want_port = port
        self.raw: list[bytes] = []          # each SegmentObject's bytes, as received
        self.streams: list[dict] = []       # each collect call's metadata
        self.ended = 0                      # collect calls the client ended
        self.lock = threading.Lock()  # guards raw, streams, ended (the server's thread writes)
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                       name="skywalking-collector")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("SkyWalking collector did not start")
        self.port = self.server._server.sockets[0].getsockname()[1]

    def __mapping__(self):
        return {COLLECT_PATH: Handler(self._collect, Cardinality.STREAM_UNARY, bytes, bytes)}

    async def _collect(self, stream) -> None:
        metadata = dict(stream.metadata.items())
        metadata["peer"] = stream.peer.addr()
        if stream.deadline is not None:  # the caller's grpc-timeout, as seconds left
            metadata["deadline"] = stream.deadline.time_remaining()
        with self.lock:
            self.streams.append(metadata)
        if self.status is not None:
            raise GRPCError(self.status, "refused by the test collector")
        async for data in stream:
            with self.lock:
                self.raw.append(data)
        with self.lock:
            self.ended += 1
        await stream.send_message(Commands().SerializeToString())

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([self], codec=_RawCodec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", self.want_port))
        ready.set()
        self.loop.run_forever()

    @property
    def segments(self) -> list[dict]:
        with self.lock:
            raw = list(self.raw)
        out = []
        for data in raw:
            seg = SegmentObject()
            seg.ParseFromString(data)
            out.append(segment_dict(seg))
        return out

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
