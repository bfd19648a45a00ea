"""A rate limit service (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) for the
tests, on grpclib (asyncio, pure Python: both interpreters) with xds-protos' messages.

It answers by the values of the descriptors' entries (scripted, so Envoy and ftproxy fed the
same requests get the same answers):
- a value `over`: OVER_LIMIT, with a status per descriptor (the over one: limit 10 per MINUTE
  named `per-user`, 0 remaining, 30 s to reset; the others OK, limit 100 per SECOND, 99 left)
  and response_headers_to_add `x-rl-why: over`; `over-body`: the same with raw_body
  `slow down` and a response content-type `application/json`;
- `error`: a gRPC error (UNAVAILABLE); `slow`: OK after 1 s; `garbage`: an answer that is not
  a RateLimitResponse; `unknown`: overall_code UNKNOWN;
- `headers`: OK with request_headers_to_add `x-rl-req: added` (twice: `x-rl-req: again`) and
  response_headers_to_add `x-rl-resp: ok`;
- `limits`: OK with statuses carrying limits (5 per HOUR named `hourly`, 3 left, 100 s; 10 per
  SECOND, 7 left, 1 s), for the x-ratelimit-* headers;
- anything else: OK with no statuses.
`counting`: when true, a descriptor `{counted: X}` is OVER_LIMIT after `limit` calls for X.

`calls` holds every RateLimitRequest received; `requests` the same seen as the differential
runner's upstream records (method, path, headers, body): method `POST`, path
`/<domain>/<descriptors>` (each descriptor's entries `key=value` joined by `,`, descriptors by
`;`), the call's metadata as `grpc:<name>` headers and `hits_addend`, and the request's bytes
as the body (its length is compared).
"""

from __future__ import annotations

import asyncio
import threading

import proxy.grpc.protobuf_env  # noqa: F401  before protobuf: the pure-Python backend on 3.14t

from envoy.service.ratelimit.v3 import rls_pb2 as pb  # noqa: E402
from grpclib.const import Cardinality, Handler, Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from grpclib.server import Server  # noqa: E402

__all__ = ["RateLimitServer", "describe"]

OK, OVER_LIMIT = 1, 2
SECOND, MINUTE, HOUR = 1, 2, 3


def describe(request) -> str:
    """`/<domain>/<descriptors>` for a RateLimitRequest."""
    ds = ";".join(",".join(f"{e.key}={e.value}" for e in d.entries) for d in request.descriptors)
    return f"/{request.domain}/{ds}"


def _header(lst, key: str, value: str) -> None:
    h = lst.add()
    h.key = key
    h.value = value


def _status(resp, code: int, limit: int = 0, unit: int = 0, name: str = "", remaining: int = 0,
            reset: int = 0) -> None:
    s = resp.statuses.add()
    s.code = code
    if limit:
        s.current_limit.requests_per_unit = limit
        s.current_limit.unit = unit
        s.current_limit.name = name
    s.limit_remaining = remaining
    if reset:
        s.duration_until_reset.seconds = reset


class _Service:
    def __init__(self, owner: RateLimitServer) -> None:
        self.owner = owner

    def __mapping__(self):
        return {"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit":
                Handler(self.should_rate_limit, Cardinality.UNARY_UNARY, pb.RateLimitRequest,
                        pb.RateLimitResponse)}

    async def should_rate_limit(self, stream) -> None:
        request = await stream.recv_message()
        self.owner._record(request, stream.metadata)
        values = [e.value for d in request.descriptors for e in d.entries]
        resp = pb.RateLimitResponse(overall_code=OK)
        if self.owner.counting:
            counted = [e.value for d in request.descriptors for e in d.entries if e.key == "counted"]
            for v in counted:
                n = self.owner.counts[v] = self.owner.counts.get(v, 0) + 1
                if n > self.owner.limit:
                    resp.overall_code = OVER_LIMIT
            await stream.send_message(resp)
            return
        if "error" in values:
            raise GRPCError(Status.UNAVAILABLE, "ratelimit is down")
        if "garbage" in values:
            await stream.send_message(b"\xff\xff\xff")
            return
        if "slow" in values:
            await asyncio.sleep(1.0)
        if "unknown" in values:
            resp.overall_code = 0
        if "over" in values or "over-body" in values:
            resp.overall_code = OVER_LIMIT
            for d in request.descriptors:
                if any(e.value.startswith("over") for e in d.entries):
                    _status(resp, OVER_LIMIT, 10, MINUTE, "per-user", 0, 30)
                else:
                    _status(resp, OK, 100, SECOND, "", 99, 1)
            _header(resp.response_headers_to_add, "x-rl-why", "over")
            if "over-body" in values:
                resp.raw_body = b"slow down"
                _header(resp.response_headers_to_add, "content-type", "application/json")
        if "headers" in values:
            _header(resp.request_headers_to_add, "x-rl-req", "added")
            _header(resp.request_headers_to_add, "x-rl-req", "again")
            _header(resp.response_headers_to_add, "x-rl-resp", "ok")
        if "limits" in values:
            _status(resp, OK, 5, HOUR, "hourly", 3, 100)
            _status(resp, OK, 10, SECOND, "", 7, 1)
        await stream.send_message(resp)


class _Codec:
    """grpclib's protobuf codec, passing raw bytes through (the `garbage` answer)."""
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    def decode(self, data: bytes, message_type):
        return message_type.FromString(data)


class RateLimitServer:
    """The server (h2c) on 127.0.0.1 in its own thread and event loop: `port`, `calls`,
    `requests`, `close()`."""

    def __init__(self, name: str = "ratelimit", port: int = 0, record: bool = True,
                 counting: bool = False, limit: int = 2) -> None:
        self.name = name
        self.record = record   # False for benchmarks: nothing kept
        self.counting = counting
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.calls: list = []
        self.requests: list = []
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready, port), daemon=True, name="ratelimit")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("rate limit server did not start")
        self.port = self.server._server.sockets[0].getsockname()[1]

    def _run(self, ready: threading.Event, port: int) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([_Service(self)], codec=_Codec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", port))
        ready.set()
        self.loop.run_forever()

    def _record(self, request, metadata) -> None:
        if not self.record:
            return
        headers = {f"grpc:{k}": v for k, v in metadata.items()}
        headers["hits_addend"] = str(request.hits_addend)
        self.calls.append(request)
        self.requests.append(("POST", describe(request), headers, request.SerializeToString()))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
