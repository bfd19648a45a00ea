"""A gRPC authorization server (envoy.service.auth.v3.Authorization/Check) for the tests, on
grpclib (asyncio, pure Python: both interpreters) with xds-protos' CheckRequest/CheckResponse.

It decides by the checked request's `authorization: Bearer <token>` (scripted):
- a token of the ext_authz example's users.json (token1..3): OK with `x-current-user: userN`
  (append false), as the example's Go server (auth/grpc-service/pkg/auth/v3/auth.go);
- `allow-<user>`: OK with request headers `x-current-user: <user>` (append false, so a forged one
  is replaced), `x-append-me: from-authz` (append true: joined to an existing one),
  `x-added` (append_action ADD_IF_ABSENT), headers_to_remove `x-remove-me`, a query parameter
  `authz=yes` set and `drop` removed, response_headers_to_add `x-authz-extra: 1`;
- `allow-actions`: OK with each HeaderValueOption append_action on request headers (`x-a<n>`,
  `x-p<n>`) and response headers (`x-r<n>`, `x-r-append`, `content-type`);
- `allow-bad`: OK with header mutations no header can carry (CR LF in a value, a space in a
  name) beside a good one; `allow-bad-resp`: the same in response_headers_to_add only;
- `deny`: PERMISSION_DENIED with denied_response 401, `x-reason: bad token`, body `denied by authz`;
- `deny-bad`: the same with a header value holding CR LF;
- `error`: a gRPC error (UNAVAILABLE); `slow`: OK after 1 s; `garbage`: an answer that is not a
  CheckResponse; `errresp`: an error_response (status 418, body `teapot`);
- no token (or another): PERMISSION_DENIED with no denied_response (Envoy's default 403).
`mode="opa"` stands in for the example's OPA policy (policy.rego): GET is allowed with
`x-current-user: OPA`, anything else denied.

`checks` holds every CheckRequest received; `requests` the same seen as the differential
runner's upstream records (method, path, headers, body): the checked request's method and path,
its headers under their names, the gRPC call's own metadata as `grpc:<name>` and the other
attributes as `attr.<name>`.
"""

from __future__ import annotations

import asyncio
import threading

import proxy.grpc.protobuf_env  # noqa: F401  before protobuf: the pure-Python backend on 3.14t

from envoy.service.auth.v3 import external_auth_pb2 as pb  # noqa: E402
from grpclib.const import Cardinality, Handler, Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from grpclib.server import Server  # noqa: E402

__all__ = ["GrpcAuthzServer"]

USERS = {"token1": "user1", "token2": "user2", "token3": "user3"}


def _hvo(resp_list, key: str, value: str, append: bool | None = None, action: int | None = None) -> None:
    o = resp_list.add()
    o.header.key = key
    o.header.value = value
    if append is not None:
        o.append.value = append
    if action is not None:
        o.append_action = action


class _Authorization:
    def __init__(self, owner: GrpcAuthzServer) -> None:
        self.owner = owner

    def __mapping__(self):
        return {"/envoy.service.auth.v3.Authorization/Check":
                Handler(self.check, Cardinality.UNARY_UNARY, pb.CheckRequest, pb.CheckResponse)}

    async def check(self, stream) -> None:
        request = await stream.recv_message()
        self.owner._record(request, stream.metadata)
        http = request.attributes.request.http
        if self.owner.mode == "opa":
            resp = pb.CheckResponse()
            if http.method == "GET":
                _hvo(resp.ok_response.headers, "x-current-user", "OPA", append=False)
            else:
                resp.status.code = 7
            await stream.send_message(resp)
            return
        kind, _, token = http.headers.get("authorization", "").partition(" ")
        token = token if kind == "Bearer" else ""
        resp = pb.CheckResponse()
        if token in USERS:
            _hvo(resp.ok_response.headers, "x-current-user", USERS[token], append=False)
        elif token.startswith("allow-") and token not in ("allow-actions", "allow-bad", "allow-bad-resp"):
            ok = resp.ok_response
            _hvo(ok.headers, "x-current-user", token.removeprefix("allow-"), append=False)
            _hvo(ok.headers, "x-append-me", "from-authz", append=True)
            _hvo(ok.headers, "x-added", "by-authz", action=1)
            ok.headers_to_remove.append("x-remove-me")
            q = ok.query_parameters_to_set.add()
            q.key, q.value = "authz", "yes"
            ok.query_parameters_to_remove.append("drop")
            _hvo(ok.response_headers_to_add, "x-authz-extra", "1", append=False)
        elif token == "allow-actions":
            # Each append_action on request headers (x-a*: absent, x-p*: present) and on
            # response headers (x-r*: absent; content-type: present).
            ok = resp.ok_response
            for n in range(4):
                _hvo(ok.headers, f"x-a{n}", "authz", action=n)
                _hvo(ok.headers, f"x-p{n}", "authz", action=n)
                _hvo(ok.response_headers_to_add, f"x-r{n}", "authz", action=n)
            _hvo(ok.response_headers_to_add, "x-r-append", "authz", append=True)
            _hvo(ok.response_headers_to_add, "content-type", "authz/1", action=1)
            _hvo(ok.response_headers_to_add, "x-r3", "authz", action=3)
        elif token == "allow-bad":
            # Header mutations a header cannot carry (CR LF in a value, a space in a name).
            ok = resp.ok_response
            _hvo(ok.headers, "x-bad", "a\r\nx-injected: yes", append=False)
            _hvo(ok.headers, "x bad name", "v", append=False)
            _hvo(ok.headers, "x-good", "fine", append=False)
            _hvo(ok.response_headers_to_add, "x-bad-resp", "b\r\nx-injected-resp: yes", append=False)
        elif token == "allow-bad-resp":
            _hvo(resp.ok_response.response_headers_to_add, "x-bad-resp", "b\r\nx-injected-resp: yes", append=False)
            _hvo(resp.ok_response.response_headers_to_add, "x-good-resp", "fine", append=False)
        elif token == "deny":
            resp.status.code = 7
            d = resp.denied_response
            d.status.code = 401
            d.body = "denied by authz"
            _hvo(d.headers, "x-reason", "bad token", append=False)
        elif token == "deny-bad":
            resp.status.code = 7
            _hvo(resp.denied_response.headers, "x-reason", "bad\r\nx-injected: yes", append=False)
        elif token == "error":
            raise GRPCError(Status.UNAVAILABLE, "authz is down")
        elif token == "slow":
            await asyncio.sleep(1.0)
        elif token == "garbage":
            await stream.send_message(b"\xff\xff\xff")   # goes through the raw-bytes path below
            return
        elif token == "errresp":
            resp.status.code = 13
            e = resp.error_response
            e.status.code = 418
            e.body = "teapot"
        else:
            resp.status.code = 7
        await stream.send_message(resp)


class _Codec:
    """grpclib's protobuf codec, passing raw bytes through (the `garbage` answer)."""
    __content_subtype__ = "proto"

    def encode(self, message, message_type) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    def decode(self, data: bytes, message_type):
        return message_type.FromString(data)


class GrpcAuthzServer:
    """The server (h2c) on 127.0.0.1 in its own thread and event loop: `port`, `checks`,
    `requests`, `close()`."""

    def __init__(self, name: str = "authz", mode: str = "script", port: int = 0, record: bool = True) -> None:
        self.name = name
        self.mode = mode
        self.record = record   # False for benchmarks (perf/grpc_authz_server.py): nothing kept
        self.checks: list = []
        self.requests: list = []
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready, port), daemon=True, name="grpc-authz")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("gRPC authorization server did not start")
        self.port = self.server._server.sockets[0].getsockname()[1]

    def _run(self, ready: threading.Event, port: int) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server([_Authorization(self)], codec=_Codec())
        self.loop.run_until_complete(self.server.start("127.0.0.1", port))
        ready.set()
        self.loop.run_forever()

    def _record(self, request, metadata) -> None:
        if not self.record:
            return
        a = request.attributes
        http = a.request.http
        headers = dict(http.headers)
        for k, v in metadata.items():
            headers[f"grpc:{k}"] = v
        sa, da = a.source.address.socket_address, a.destination.address.socket_address
        headers.update({
            "attr.id": "set" if http.id else "unset",
            "attr.time": "set" if a.request.HasField("time") else "unset",
            "attr.host": http.host, "attr.scheme": http.scheme, "attr.protocol": http.protocol,
            "attr.size": str(http.size), "attr.query": http.query, "attr.fragment": http.fragment,
            "attr.source": sa.address, "attr.source.port": "set" if sa.port_value else "unset",
            "attr.source.service": a.source.service,
            "attr.destination": f"{da.address}:{da.port_value}",
            "attr.principal": a.source.principal + "|" + a.destination.principal,
            "attr.raw_body": str(len(http.raw_body)),
        })
        for k, v in a.context_extensions.items():
            headers[f"attr.context.{k}"] = v
        body = http.body.encode("utf-8", "surrogateescape") if http.body else http.raw_body
        self.checks.append(request)
        self.requests.append((http.method, http.path, headers, body))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
