"""A state-of-the-world xDS control plane for the tests, on a real gRPC server (grpclib: asyncio,
pure Python, both interpreters), serving ADS (StreamAggregatedResources) and the per-type
services from a snapshot the test sets step by step (go-control-plane's snapshot cache, in
small).

- `set(type_url, version, resources)`: the resources (dicts as in a YAML file, each with
  `@type`) become the current version of that type; every open stream subscribed to it gets
  a response unless it was already sent that version. LDS/CDS responses hold every resource;
  RDS/EDS responses only the names the stream asked for (and are sent when it asks for new
  names).
- Requests are recorded (`requests`: type_url, version_info, response_nonce, resource_names,
  error_detail, node) so tests can check ACKs, NACKs and what a reconnecting client sends.
  A request whose nonce is not the last one sent on its stream for its type is stale and
  ignored (as go-control-plane does).
- `stop()` kills the server (open streams end); `start()` serves again on the same port
  (tests/grpclib_thread.py `ThreadedGrpcServer`: its own thread and event loop).
- `ControlPlane(ssl=context)`: served over TLS with that `ssl.SSLContext` (a server context;
  mTLS when it requires client certificates).
- `set(..., node="id")` sets a snapshot for that node id only (a stream's node is the one of
  its first request); other nodes get the snapshot set without a node.
- Delta (incremental) xDS on the Delta* services from the same snapshots: each resource's
  version is a hash of its bytes; a stream is sent the resources whose version it does not
  have (from its `initial_resource_versions` and what was sent) and, in `removed_resources`,
  those it has that left the snapshot. A delta ACK is recorded with `version_info` set to
  the system version of the response it answers (a delta request has none).
- TTL: `set(..., ttl=seconds)` sends that type's resources with a TTL (SotW: each in a
  `Resource` wrapper with `ttl`; delta: `Resource.ttl`); `heartbeat(type_url)` sends every
  stream holding the current version a heartbeat for each of its resources (a wrapper or delta
  entry with the name and TTL and no resource), as a control plane keeps TTL'd resources alive.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import itertools
import threading
import time
from typing import Any

import proxy.xds.proto as xproto  # first: selects protobuf's pure-Python backend on 3.14t
from google.protobuf import any_pb2, json_format, symbol_database
from grpclib.const import Cardinality, Handler

from envoy.service.discovery.v3 import discovery_pb2
from tests.grpclib_thread import ThreadedGrpcServer

__all__ = ["ControlPlane", "pack"]

T = "type.googleapis.com/"
LISTENER = T + "envoy.config.listener.v3.Listener"
CLUSTER = T + "envoy.config.cluster.v3.Cluster"
ROUTE = T + "envoy.config.route.v3.RouteConfiguration"
CLA = T + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = T + "envoy.extensions.transport_sockets.tls.v3.Secret"
_WILDCARD = (LISTENER, CLUSTER)
_DELTA_PATHS = {
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources": None,
    "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners": LISTENER,
    "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters": CLUSTER,
    "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes": ROUTE,
    "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints": CLA,
    "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets": SECRET,
}
_PATHS = {
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": None,
    "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners": LISTENER,
    "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters": CLUSTER,
    "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes": ROUTE,
    "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints": CLA,
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets": SECRET,
}


def _load_types(d: Any) -> None:
    if isinstance(d, dict):
        t = d.get("@type")
        if isinstance(t, str):
            xproto._load_package_of(t)
        for v in d.values():
            _load_types(v)
    elif isinstance(d, list):
        for v in d:
            _load_types(v)


def pack(resource: dict) -> any_pb2.Any:
    """A resource dict (with `@type`) as a protobuf Any."""
    _load_types(resource)
    type_url = resource["@type"]
    cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    msg = json_format.ParseDict({k: v for k, v in resource.items() if k != "@type"}, cls())
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def _name(resource: dict, type_url: str) -> str:
    return resource.get("cluster_name" if type_url == CLA else "name", "")


class _TypeState:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.sent_version: str | None = None
        self.last_nonce = ""
        # delta
        self.client_versions: dict[str, str] = {}
        self.subscribed: set[str] | None = None     # None: wildcard
        self.nonce_versions: dict[str, str] = {}    # nonce -> system version sent with it


class _Raw:
    """Bytes sent as they are (a malformed message): serialized by grpclib's codec as is."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name, what the codec calls)
        return self.data


class _Stream:
    def __init__(self, only_type: str | None, transport) -> None:
        self.only_type = only_type
        self.types: dict[str, _TypeState] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = transport   # its connection (tests read its TLS peer)
        self.node: str | None = None
        self.delta = False


class ControlPlane(ThreadedGrpcServer):
    def __init__(self, ssl=None) -> None:
        """`ssl`: an ssl.SSLContext to serve over TLS. Serving from here on."""
        self.snapshots: dict[str | None, dict[str, tuple[str, list]]] = {None: {}}
        self.ttls: dict[str, float] = {}     # type_url -> TTL of its resources (seconds)
        self.requests: list[dict] = []
        self.streams_opened = 0
        self._lock = threading.Lock()     # guards requests (loop thread appends, tests read)
        self._nonces = itertools.count(1)
        self._streams: set[_Stream] = set()
        super().__init__("xds-cp", ssl=ssl)

    # -- test API (any thread): start(), stop(), close() as ThreadedGrpcServer's -----------
    def set(self, type_url: str, version: str, resources: list[dict], node: str | None = None,
            ttl: float | None = None) -> None:
        packed = [pack(r) for r in resources]   # on the caller's thread: a bad dict raises here

        def apply() -> None:
            if ttl is None:
                self.ttls.pop(type_url, None)
            else:
                self.ttls[type_url] = ttl
            self.snapshots.setdefault(node, {})[type_url] = (version, list(zip(resources, packed)))
            for s in list(self._streams):
                st = s.types.get(type_url)
                snap = self._snapshot(s, type_url)
                if st is None or snap is None:
                    continue
                if s.delta:
                    self._respond_delta(s, type_url, st, force=False)
                elif st.sent_version != snap[0]:
                    self._respond(s, type_url, st)
        self.loop.call_soon_threadsafe(apply)

    def _snapshot(self, s: "_Stream", type_url: str):
        own = self.snapshots.get(s.node, {})
        return own.get(type_url) or self.snapshots[None].get(type_url)

    def heartbeat(self, type_url: str) -> None:
        """A TTL heartbeat of `type_url` on every stream that holds its current version."""
        def go() -> None:
            ttl = self.ttls.get(type_url)
            for s in list(self._streams):
                st = s.types.get(type_url)
                snap = self._snapshot(s, type_url)
                if st is None or snap is None:
                    continue
                version, items = snap
                names = [_name(r, type_url) for r, _ in items
                         if type_url in _WILDCARD or _name(r, type_url) in st.names
                         or (s.delta and (st.subscribed is None or _name(r, type_url) in st.subscribed))]
                nonce = str(next(self._nonces))
                if s.delta:
                    resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version,
                                                                type_url=type_url, nonce=nonce)
                    for n in names:
                        res = resp.resources.add()
                        res.name, res.version = n, st.client_versions.get(n, "")
                        if ttl is not None:
                            res.ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
                    st.nonce_versions[nonce] = version
                else:
                    if st.sent_version != version:
                        continue
                    resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                                           nonce=nonce)
                    for n in names:
                        w = discovery_pb2.Resource(name=n, version=version)
                        if ttl is not None:
                            w.ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
                        a = any_pb2.Any()
                        a.Pack(w)
                        resp.resources.append(a)
                st.last_nonce = nonce
                s.queue.put_nowait(resp)
        self.loop.call_soon_threadsafe(go)

    def _wrap(self, type_url: str, resource: dict, packed, version: str):
        """A resource as sent: wrapped in a `Resource` with the type's TTL, if it has one."""
        ttl = self.ttls.get(type_url)
        if ttl is None:
            return packed
        w = discovery_pb2.Resource(name=_name(resource, type_url), version=version)
        w.ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
        w.resource.CopyFrom(packed)
        a = any_pb2.Any()
        a.Pack(w)
        return a

    def send_raw(self, data: bytes) -> None:
        """Send `data` as one gRPC message on every open stream (a malformed response)."""
        def go() -> None:
            for s in list(self._streams):
                s.queue.put_nowait(_Raw(data))
        self.loop.call_soon_threadsafe(go)

    def requests_for(self, type_url: str, node: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["type_url"] == type_url
                    and (node is None or r["stream_node"] == node)]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def acked(self, type_url: str, version: str, node: str | None = None) -> bool:
        """The client ACKed `version` of `type_url`."""
        return any(r["version_info"] == version and r["error_detail"] is None and r["response_nonce"]
                   for r in self.requests_for(type_url, node))

    def nacks(self, type_url: str, node: str | None = None) -> list[dict]:
        return [r for r in self.requests_for(type_url, node) if r["error_detail"] is not None]

    # -- grpclib service ------------------------------------------------------------------
    def __mapping__(self):
        out = {path: Handler(lambda stream, t=t: self._serve(stream, t), Cardinality.STREAM_STREAM,
                             discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse)
               for path, t in _PATHS.items()}
        out.update({path: Handler(lambda stream, t=t: self._serve(stream, t, delta=True),
                                  Cardinality.STREAM_STREAM, discovery_pb2.DeltaDiscoveryRequest,
                                  discovery_pb2.DeltaDiscoveryResponse)
                    for path, t in _DELTA_PATHS.items()})
        return out

    async def _serve(self, stream, only_type: str | None, delta: bool = False) -> None:
        s = _Stream(only_type, stream._stream._transport)   # grpclib internals: to drop it in stop()
        s.delta = delta
        self._transports.add(s.transport)
        self._streams.add(s)
        self.streams_opened += 1

        async def reader() -> None:
            async for req in stream:
                if delta:
                    self._on_delta_request(s, req)
                else:
                    self._on_request(s, req)
            await s.queue.put(None)

        task = asyncio.ensure_future(reader())
        try:
            while True:
                msg = await s.queue.get()
                if msg is None:
                    break
                await stream.send_message(msg)
        finally:
            self._streams.discard(s)
            self._transports.discard(s.transport)
            task.cancel()

    def _on_request(self, s: _Stream, req) -> None:
        err = None
        if s.node is None and req.HasField("node"):
            s.node = req.node.id
        if req.HasField("error_detail"):
            err = {"code": req.error_detail.code, "message": req.error_detail.message}
        record = {"type_url": req.type_url, "version_info": req.version_info,
                  "response_nonce": req.response_nonce, "resource_names": list(req.resource_names),
                  "error_detail": err, "node": req.node.id if req.HasField("node") else None,
                  "user_agent_name": req.node.user_agent_name if req.HasField("node") else None,
                  "stream_node": s.node, "at": time.monotonic()}
        with self._lock:
            self.requests.append(record)
        t = req.type_url
        st = s.types.get(t)
        first = st is None
        if first:
            st = s.types[t] = _TypeState()
        if req.response_nonce and req.response_nonce != st.last_nonce:
            return   # stale: an answer to an older response
        names_changed = list(req.resource_names) != st.names
        st.names = list(req.resource_names)
        snap = self._snapshot(s, t)
        if snap is None:
            return
        if st.sent_version is None and first and req.version_info == snap[0] and t in _WILDCARD:
            st.sent_version = snap[0]    # it has this version already (a reconnect)
            return
        if st.sent_version != snap[0] or (names_changed and t not in _WILDCARD):
            self._respond(s, t, st)

    def _respond(self, s: _Stream, type_url: str, st: _TypeState) -> None:
        version, items = self._snapshot(s, type_url)
        if type_url not in _WILDCARD:
            items = [(r, p) for r, p in items if _name(r, type_url) in st.names]
        nonce = str(next(self._nonces))
        resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        resp.resources.extend(self._wrap(type_url, r, p, version) for r, p in items)
        st.sent_version = version
        st.last_nonce = nonce
        s.queue.put_nowait(resp)

    # -- delta ------------------------------------------------------------------------------
    def _on_delta_request(self, s: _Stream, req) -> None:
        if s.node is None and req.HasField("node"):
            s.node = req.node.id
        t = req.type_url
        st = s.types.get(t)
        first = st is None
        if first:
            st = s.types[t] = _TypeState()
        err = None
        if req.HasField("error_detail"):
            err = {"code": req.error_detail.code, "message": req.error_detail.message}
        record = {"type_url": t, "version_info": st.nonce_versions.get(req.response_nonce, "")
                  if err is None else "", "response_nonce": req.response_nonce,
                  "resource_names": list(req.resource_names_subscribe),
                  "unsubscribe": list(req.resource_names_unsubscribe),
                  "initial_resource_versions": dict(req.initial_resource_versions),
                  "error_detail": err, "node": req.node.id if req.HasField("node") else None,
                  "user_agent_name": req.node.user_agent_name if req.HasField("node") else None,
                  "stream_node": s.node, "at": time.monotonic()}
        with self._lock:
            self.requests.append(record)
        changed = first
        if first:
            st.client_versions = dict(req.initial_resource_versions)
            wild = t in _WILDCARD and not req.resource_names_subscribe
            st.subscribed = None if wild else set(req.resource_names_subscribe)
        elif req.resource_names_subscribe or req.resource_names_unsubscribe:
            changed = True
            if st.subscribed is not None:
                st.subscribed |= set(req.resource_names_subscribe)
                st.subscribed -= set(req.resource_names_unsubscribe)
            for n in req.resource_names_unsubscribe:
                st.client_versions.pop(n, None)
        if changed and self._snapshot(s, t) is not None:
            self._respond_delta(s, t, st, force=first)

    def _respond_delta(self, s: _Stream, type_url: str, st: _TypeState, force: bool) -> None:
        version, items = self._snapshot(s, type_url)
        wanted = {}
        for r, p in items:
            name = _name(r, type_url)
            if st.subscribed is None or name in st.subscribed:
                wanted[name] = (p, hashlib.sha256(p.value).hexdigest()[:16])
        changed = [n for n, (_, v) in wanted.items() if st.client_versions.get(n) != v]
        removed = [n for n in st.client_versions if n not in wanted
                   and (st.subscribed is None or n in st.subscribed)]
        if not changed and not removed and not force:
            return
        nonce = str(next(self._nonces))
        resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url,
                                                    nonce=nonce, removed_resources=removed)
        for n in changed:
            p, v = wanted[n]
            res = resp.resources.add()
            res.name, res.version = n, v
            res.resource.CopyFrom(p)
            if self.ttls.get(type_url) is not None:
                res.ttl.FromTimedelta(datetime.timedelta(seconds=self.ttls[type_url]))
            st.client_versions[n] = v
        for n in removed:
            st.client_versions.pop(n, None)
        st.nonce_versions[nonce] = version
        st.last_nonce = nonce
        s.queue.put_nowait(resp)


class RestControlPlane:
    """REST-JSON xDS (Envoy's `api_type: REST`): POST /v3/discovery:<type> with a JSON
    DiscoveryRequest; answers 304 when the request's version_info is the current one, else 200
    with the current DiscoveryResponse (named types: only the names asked for). Requests are
    recorded (parsed JSON). A stdlib HTTP/1.1 server in its own thread."""

    _TYPES = {"listeners": LISTENER, "clusters": CLUSTER, "routes": ROUTE, "endpoints": CLA}

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.snapshot: dict[str, tuple[str, list[dict]]] = {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()   # guards snapshot and requests (handler threads, tests)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # no delayed-ACK wait between head and body
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                kind = self.path.rsplit(":", 1)[-1]
                type_url = outer._TYPES.get(kind)
                with outer._lock:
                    outer.requests.append({"path": self.path, **body})
                    snap = outer.snapshot.get(type_url)
                if type_url is None or body.get("type_url") != type_url:
                    self._send(400, b"bad type")
                    return
                if snap is None or body.get("version_info") == snap[0]:
                    self._send(304, b"")
                    return
                items = snap[1]
                if type_url not in _WILDCARD:
                    items = [r for r in items if _name(r, type_url) in body.get("resource_names", [])]
                self._send(200, json.dumps({"version_info": snap[0], "type_url": type_url,
                                            "resources": items}).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def set(self, type_url: str, version: str, resources: list[dict]) -> None:
        with self._lock:
            self.snapshot[type_url] = (version, resources)

    def requests_for(self, type_url: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r.get("type_url") == type_url]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class GrpcioControlPlane:
    """The same SotW ADS control plane on grpcio (gRPC's C core: another HTTP/2 stack than
    grpclib's h2; CPython 3.13 only, it has no free-threaded wheel). ADS only. Same test API:
    set, requests_for, acked, nacks, wait, streams_opened, close."""

    def __init__(self) -> None:
        import queue
        from concurrent import futures

        import grpc
        self._queue_mod = queue
        self.snapshot: dict[str, tuple[str, list]] = {}
        self.requests: list[dict] = []
        self.streams_opened = 0
        self._lock = threading.Lock()   # guards snapshot, requests, streams (gRPC threads, tests)
        self._streams: list = []
        self._nonces = itertools.count(1)
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._serve, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, type_url: str, version: str, resources: list[dict]) -> None:
        packed = [(r, pack(r)) for r in resources]
        with self._lock:
            self.snapshot[type_url] = (version, packed)
            streams = list(self._streams)
        for s in streams:
            s["queue"].put(("push", type_url))

    def _serve(self, request_iterator, context):
        s = {"queue": self._queue_mod.Queue(), "types": {}}
        with self._lock:
            self._streams.append(s)
            self.streams_opened += 1

        def reader() -> None:
            try:
                for req in request_iterator:
                    s["queue"].put(("req", req))
            except Exception:
                pass
            s["queue"].put(("end", None))
        threading.Thread(target=reader, daemon=True).start()
        try:
            while context.is_active():
                try:
                    kind, item = s["queue"].get(timeout=0.2)
                except self._queue_mod.Empty:
                    continue
                if kind == "end":
                    return
                resp = self._on_request(s, item) if kind == "req" else self._on_push(s, item)
                if resp is not None:
                    yield resp
        finally:
            with self._lock:
                self._streams.remove(s)

    def _on_request(self, s: dict, req):
        err = None
        if req.HasField("error_detail"):
            err = {"code": req.error_detail.code, "message": req.error_detail.message}
        with self._lock:
            self.requests.append({"type_url": req.type_url, "version_info": req.version_info,
                                  "response_nonce": req.response_nonce,
                                  "resource_names": list(req.resource_names), "error_detail": err,
                                  "node": req.node.id if req.HasField("node") else None})
            snap = self.snapshot.get(req.type_url)
        st = s["types"].setdefault(req.type_url, {"names": [], "sent": None, "nonce": ""})
        if req.response_nonce and req.response_nonce != st["nonce"]:
            return None
        changed = list(req.resource_names) != st["names"]
        st["names"] = list(req.resource_names)
        if snap is None:
            return None
        if st["sent"] != snap[0] or (changed and req.type_url not in _WILDCARD):
            return self._response(req.type_url, st, snap)
        return None

    def _on_push(self, s: dict, type_url: str):
        st = s["types"].get(type_url)
        with self._lock:
            snap = self.snapshot.get(type_url)
        if st is None or snap is None or st["sent"] == snap[0]:
            return None
        return self._response(type_url, st, snap)

    def _response(self, type_url: str, st: dict, snap):
        version, items = snap
        if type_url not in _WILDCARD:
            items = [(r, p) for r, p in items if _name(r, type_url) in st["names"]]
        nonce = str(next(self._nonces))
        resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        resp.resources.extend(p for _, p in items)
        st["sent"], st["nonce"] = version, nonce
        return resp

    def requests_for(self, type_url: str, node: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["type_url"] == type_url]

    def acked(self, type_url: str, version: str, node: str | None = None) -> bool:
        return any(r["version_info"] == version and r["error_detail"] is None and r["response_nonce"]
                   for r in self.requests_for(type_url))

    def nacks(self, type_url: str, node: str | None = None) -> list[dict]:
        return [r for r in self.requests_for(type_url) if r["error_detail"] is not None]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self) -> None:
        self.server.stop(0)
