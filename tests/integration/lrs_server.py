"""A LoadReportingService (LRS) server for the tests, on a real gRPC server (grpclib: asyncio,
pure Python, both interpreters), as tests/integration/xds_control_plane.py serves xDS.

- Every LoadStatsRequest is recorded (`requests`: when it came, the node id, its client
  features and its cluster_stats as proto3 JSON dicts).
- `answer(clusters, interval, send_all=False, endpoints=False)`: the LoadStatsResponse sent on each stream
  after its first request (as Envoy's LRS servers wait for the node), and sent at once on the
  streams already open.
- `stop()` drops the open streams and stops serving; `start()` serves again on the same port.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import proxy.xds.proto  # noqa: F401  first: selects protobuf's pure-Python backend on 3.14t
from google.protobuf import json_format
from grpclib.const import Cardinality, Handler

from envoy.service.load_stats.v3 import lrs_pb2

from tests.grpclib_thread import ThreadedGrpcServer

__all__ = ["LrsServer"]

PATH = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"


class LrsServer(ThreadedGrpcServer):
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.streams_opened = 0
        self._lock = threading.Lock()     # guards requests (loop thread appends, tests read)
        self._response: lrs_pb2.LoadStatsResponse | None = None
        self._queues: set[asyncio.Queue] = set()
        super().__init__("lrs")

    def answer(self, clusters: list[str], interval: float, send_all: bool = False,
               endpoints: bool = False) -> None:
        msg = lrs_pb2.LoadStatsResponse()
        msg.report_endpoint_granularity = endpoints
        msg.clusters.extend(clusters)
        msg.send_all_clusters = send_all
        msg.load_reporting_interval.FromNanoseconds(int(interval * 1e9))

        def go() -> None:
            self._response = msg
            for q in self._queues:
                q.put_nowait(msg)
        self.loop.call_soon_threadsafe(go)

    def recorded(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def reports(self, cluster: str) -> list[dict[str, Any]]:
        """The ClusterStats of `cluster` in the requests so far, in order."""
        return [cs for r in self.recorded() for cs in r["cluster_stats"]
                if cs.get("cluster_name") == cluster]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # -- grpclib service ------------------------------------------------------------------
    def __mapping__(self):
        return {PATH: Handler(self._serve, Cardinality.STREAM_STREAM,
                              lrs_pb2.LoadStatsRequest, lrs_pb2.LoadStatsResponse)}

    async def _serve(self, stream) -> None:
        transport = stream._stream._transport   # grpclib internals: to drop it in stop()
        self._transports.add(transport)
        self.streams_opened += 1
        q: asyncio.Queue = asyncio.Queue()

        async def reader() -> None:
            first = True
            async for req in stream:
                d = json_format.MessageToDict(req, preserving_proto_field_name=True)
                with self._lock:
                    self.requests.append({
                        "at": time.monotonic(), "node": req.node.id,
                        "client_features": list(req.node.client_features),
                        "cluster_stats": d.get("cluster_stats", [])})
                if first:
                    first = False
                    self._queues.add(q)
                    if self._response is not None:
                        q.put_nowait(self._response)
            await q.put(None)

        task = asyncio.ensure_future(reader())
        try:
            while True:
                msg = await q.get()
                if msg is None:
                    break
                await stream.send_message(msg)
        finally:
            self._queues.discard(q)
            self._transports.discard(transport)
            task.cancel()
