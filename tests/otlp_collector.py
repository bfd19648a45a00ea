"""An OTLP/gRPC trace collector for the tests: a grpclib server (h2c, its own thread and event
loop) serving /opentelemetry.proto.collector.trace.v1.TraceService/Export, decoding each
request with the `opentelemetry-proto` package's classes (an independent protobuf
implementation of what ftproxy encodes by hand). Works on 3.13 and 3.14t.

`reports`: every ExportTraceServiceRequest received (decoded), with the request's metadata;
`spans`: the spans of all of them, each a dict of what the tests compare (ids as hex).
`status`: a grpclib Status to answer with instead of OK (a collector that refuses)."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

__all__ = ["OtlpCollector", "OtlpHttpCollector", "EXPORT_PATH", "KINDS"]

EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class _RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type):
        return bytes(data)


def _value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def span_dict(span, resource: dict, scope) -> dict:
    return {
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(), "trace_state": span.trace_state,
        "name": span.name, "kind": KINDS.get(span.kind, span.kind),
        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
        "attributes": {a.key: _value(a.value) for a in span.attributes},
        "status": span.status.code, "flags": span.flags,
        "resource": resource, "scope": (scope.scope.name, scope.scope.version),
    }


class OtlpCollector:
    def __init__(self, status: Status | None = None, delay: float = 0.0, ssl=None) -> None:
        self.ssl = ssl          # an ssl.SSLContext: served over TLS
        self.status = status
        self.delay = delay      # seconds before answering (a slow collector)
        self.reports: list[tuple[dict, ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()  # guards reports (the server's thread writes)
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                       name="otlp-collector")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("OTLP collector did not start")
        self.port = self.server._server.sockets[0].getsockname()[1]

    def __mapping__(self):
        return {EXPORT_PATH: Handler(self._export, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def _export(self, stream) -> None:
        data = await stream.recv_message()
        request = ExportTraceServiceRequest()
        request.ParseFromString(data)
        metadata = {k: v for k, v in stream.metadata.items()}
        if stream.deadline is not None:  # the caller's grpc-timeout, as seconds left
            metadata["deadline"] = stream.deadline.time_remaining()
        metadata["peer"] = stream.peer.addr()
        with self.lock:
            self.reports.append((metadata, request))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            raise GRPCError(self.status, "refused by the test collector")
        await stream.send_message(ExportTraceServiceResponse().SerializeToString())

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([self], codec=_RawCodec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0, ssl=self.ssl))
        ready.set()
        self.loop.run_forever()

    @property
    def spans(self) -> list[dict]:
        return _spans(self)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _spans(collector) -> list[dict]:
    out = []
    with collector.lock:
        reports = list(collector.reports)
    for _, request in reports:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                out.extend(span_dict(s, resource, ss) for s in ss.spans)
    return out


class OtlpHttpCollector:
    """An OTLP/HTTP collector (protobuf POSTs, any path): records (path, headers, request) and
    answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.reports: list[tuple[dict, ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()  # guards reports (handler threads)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # no delayed-ACK wait between head and body
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers[":path"] = self.path
                with outer.lock:
                    outer.reports.append((headers, request))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def spans(self) -> list[dict]:
        return _spans(self)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
