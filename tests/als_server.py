"""An AccessLogService (ALS) server for the tests: a grpclib server (h2c, its own thread and
event loop; pure Python, both interpreters) serving the client-streaming
`/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`, decoding each
StreamAccessLogsMessage with the `xds-protos` package's generated classes (an independent
protobuf implementation of what ftproxy encodes by hand).

`streams`: one list per stream opened, of the messages received on it (proto3 JSON dicts,
`preserving_proto_field_name`); `times`: when each came (time.monotonic(), the same shape);
`metadata`: each stream's request metadata;
`http_entries()` / `tcp_entries()`: every entry received, in order.
`stop()` drops the open streams and stops serving; `start()` serves again on the same port.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import proxy.xds.proto  # noqa: F401  first: selects protobuf's pure-Python backend on 3.14t
from google.protobuf import json_format
from grpclib.const import Cardinality, Handler

from envoy.service.accesslog.v3 import als_pb2

from tests.grpclib_thread import ThreadedGrpcServer

__all__ = ["AlsServer", "OtlpLogsCollector", "PATH"]

PATH = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


class AlsServer(ThreadedGrpcServer):
    def __init__(self, port: int = 0, ssl=None) -> None:
        self.streams: list[list[dict[str, Any]]] = []
        self.times: list[list[float]] = []
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()     # guards streams and metadata (loop thread appends)
        super().__init__("als", port, ssl=ssl)

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for s in self.streams for m in s]

    def http_entries(self) -> list[dict[str, Any]]:
        return [e for m in self.messages() for e in m.get("http_logs", {}).get("log_entry", [])]

    def tcp_entries(self) -> list[dict[str, Any]]:
        return [e for m in self.messages() for e in m.get("tcp_logs", {}).get("log_entry", [])]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # -- grpclib service ------------------------------------------------------------------
    def __mapping__(self):
        return {PATH: Handler(self._serve, Cardinality.STREAM_UNARY,
                              als_pb2.StreamAccessLogsMessage, als_pb2.StreamAccessLogsResponse)}

    async def _serve(self, stream) -> None:
        transport = stream._stream._transport   # grpclib internals: to drop it in stop()
        self._transports.add(transport)
        received: list[dict[str, Any]] = []
        times: list[float] = []
        with self._lock:
            self.streams.append(received)
            self.times.append(times)
            self.metadata.append({k: v for k, v in stream.metadata.items()})
        try:
            async for msg in stream:
                d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                with self._lock:
                    received.append(d)
                    times.append(time.monotonic())
            await stream.send_message(als_pb2.StreamAccessLogsResponse())
        finally:
            self._transports.discard(transport)


class OtlpLogsCollector(ThreadedGrpcServer):
    """An OTLP/gRPC logs collector: `/opentelemetry.proto.collector.logs.v1.LogsService/Export`
    (unary), each ExportLogsServiceRequest recorded as a proto3 JSON dict (`requests`) with
    its metadata (`metadata`)."""

    EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        self._pb = logs_service_pb2
        self.requests: list[dict[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()     # guards requests, metadata (loop thread appends)
        super().__init__("otlp-logs")

    def __mapping__(self):
        return {self.EXPORT: Handler(self._export, Cardinality.UNARY_UNARY,
                                     self._pb.ExportLogsServiceRequest,
                                     self._pb.ExportLogsServiceResponse)}

    async def _export(self, stream) -> None:
        msg = await stream.recv_message()
        with self._lock:
            self.requests.append(json_format.MessageToDict(msg, preserving_proto_field_name=True))
            self.metadata.append({k: v for k, v in stream.metadata.items()})
        await stream.send_message(self._pb.ExportLogsServiceResponse())

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            reqs = list(self.requests)
        return [r for req in reqs for rl in req["resource_logs"] for sl in rl["scope_logs"]
                for r in sl.get("log_records", [])]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        return AlsServer.wait(self, predicate, timeout)
