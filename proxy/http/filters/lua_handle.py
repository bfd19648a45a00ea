"""A Lua hook's run over one direction of a stream (Envoy's StreamHandleWrapper): the driver of
its coroutine across the filter's stops, and the operations the script's handle objects call
(the prelude in lua_runtime.py reaches them as `OPS` by name, with strings and numbers).

States: RUNNING, then one of WAIT_BODY / WAIT_CHUNK / WAIT_TRAILERS / HTTP_CALL (the filter
stopped iteration; what is awaited resumes the coroutine), RESPONDED (respond() made a local
reply), DONE (returned or failed). A script error is logged as `script log: <message>`, counted
in `errors`, and the stream goes on (Envoy's Filter::scriptError).

Thread affinity: the stream's worker; the async client's answer arrives on it too.
Must not: import lupa (lua_runtime.py does; the handle reaches it through its LuaState).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..async_client import AsyncRequest, AsyncResponse
from .lua_values import HeaderView, LuaApiError, to_bytes, to_int

__all__ = ["StreamHandle", "OPS", "DONE"]

log = logging.getLogger("ftproxy.lua")

NAME = "envoy.filters.http.lua"  # route metadata is looked up under the filter's name, then this

# Stream handle states (Envoy's StreamHandleWrapper::State), and DONE: the coroutine ended.
RUNNING, WAIT_BODY, WAIT_CHUNK, WAIT_TRAILERS, HTTP_CALL, RESPONDED, DONE = range(7)
# Request header names a queued write cannot just make (StreamHandle._writes).
_REQUEST_NAMES_NOTED = frozenset((b"host", b"content-type"))
_LOG_LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
               logging.CRITICAL)
# The body of the local reply Envoy's router makes when a call gets no answer.
_LOCAL_BODIES = {"no_healthy_upstream": b"no healthy upstream", "cluster_not_found": b"",
                 "response_timeout": b"upstream request timeout", "overflow": b"upstream overflow"}


class StreamHandle:
    """One hook's run over one direction of a stream: the coroutine's driver, and the
    operations the prelude's objects call (`OPS`, through LuaState._api)."""

    # No __slots__: what most hooks never change keeps its class default below, and a handle
    # is made with five stores (one per hook run, on the request path of every stream).
    status = RUNNING
    step = None          # the function that resumes the hook (lua_runtime.py), while it waits
    hid = 0
    headers_continued = False
    saw_body = False
    buffered_body = False
    trailers_list = None
    request: AsyncRequest | None = None
    answer: tuple = ()
    chunk: bytearray | None = None
    view = None

    def __init__(self, flt, lua, decoding: bool, head, end_stream: bool) -> None:
        self.f = flt
        self.lua = lua
        self.decoding = decoding
        self.head = head
        self.end_stream = end_stream

    # -- driving the coroutine -------------------------------------------------------------------
    def start(self, fn) -> int:
        """The hook's first run (the filter counted it in `executions`)."""
        lua = self.lua
        hid = self.hid = lua.next_id = lua.next_id + 1
        handles = lua.handles
        handles[hid] = self  # (LuaState.register, inline)
        try:
            answer = lua.start(fn, hid)
        except Exception as e:  # (lupa's own failure: treated as the script's)
            answer = (False, e)
        if len(answer) > 4:  # header writes the run queued (lua_runtime.py's prelude)
            self._writes(answer, 4)
        ok, result = answer[0], answer[1]
        if ok is True and result is True:  # it returned (the usual): over, nothing to drive
            self.status = DONE
            handles.pop(hid, None)  # (LuaState.release, inline)
            self.headers_continued = True
            return 0
        if len(answer) >= 3 and answer[2] is not None and hid in handles:
            self.step = answer[2]  # it waits (unless its stream ended meanwhile: respond())
        self._after(ok, result)
        if self.status in (WAIT_BODY, HTTP_CALL, RESPONDED):
            return 1  # StopIteration
        self.headers_continued = True
        return 0

    def _resume(self) -> None:
        self.status = RUNNING
        try:
            ok, result = self.step()
        except Exception as e:  # (lupa's own failure: treated as the script's)
            ok, result = False, e
        self._after(ok, result)

    def _after(self, ok: bool, result) -> None:
        """What a run of the coroutine answered: it ended, failed, or waits (status says for
        what; RUNNING means the script yielded by itself)."""
        if not ok:
            self._error(result)
        elif result:  # the hook returned
            self._end(DONE)
        elif self.status == RUNNING:
            self._error("script performed an unexpected yield")

    def _error(self, e) -> None:
        wf = self.f.wf
        wf.errors.value += 1
        log.error("script log: %s", wf.rt.error_text(e))
        self._end(DONE)

    def _end(self, status: int) -> None:
        self.status = status
        self.abandon()

    def abandon(self) -> None:
        """The hook is over, or its stream is: no answer wanted, the handle's objects dead."""
        req, self.request = self.request, None
        if req is not None:
            req.cancel()
        self.step = None
        self.lua.release(self.hid)

    def _buffer(self) -> bytearray | None:
        cb = self.f.cb
        return cb.decoding_buffer() if self.decoding else cb.encoding_buffer()

    def on_data(self, data: bytes, end_stream: bool):
        self.end_stream = end_stream
        self.saw_body = True
        st = self.status
        added = False
        out = None
        if st == WAIT_CHUNK:
            chunk = self.chunk = bytearray(data)
            self._resume()
            self.chunk = None
            if chunk != data:
                out = bytes(chunk)
        elif st == WAIT_BODY and end_stream:
            cb = self.f.cb
            (cb.add_decoded_data if self.decoding else cb.add_encoded_data)(data)
            added = True
            self._resume()
        elif st == WAIT_TRAILERS and end_stream:
            self._resume()
        st = self.status
        if st == HTTP_CALL or st == WAIT_BODY:
            self.buffered_body = True
            return 3 if added else 1  # StopIterationNoBuffer (it is buffered) / AndBuffer
        if st == RESPONDED:
            return 3
        self.headers_continued = True
        if added:
            return b""  # the buffered body (changed in place) goes on
        return 0 if out is None else out

    def on_trailers(self, trailers) -> int:
        self.end_stream = True
        self.trailers_list = trailers
        st = self.status
        if st == WAIT_CHUNK or st == WAIT_BODY:
            self._resume()
        if self.status == WAIT_TRAILERS:
            self._resume()
        if self.status == HTTP_CALL or self.status == RESPONDED:
            return 1
        self.headers_continued = True
        return 0

    # -- operations: headers ---------------------------------------------------------------------
    def _map(self, kind):
        if kind:  # the trailers
            if self.trailers_list is None:
                raise LuaApiError("object used outside of proper scope")
            return HeaderView(None, self.trailers_list)
        view = self.view
        if view is None:
            view = self.view = HeaderView(self.head, None)
        return view

    def _modifiable(self, kind, name: bytes = b"") -> HeaderView:
        view = self._map(kind)
        if not kind:
            if self.headers_continued:
                raise LuaApiError("header map can no longer be modified")
            if self.decoding:
                cb = self.f.cb
                if name == b"content-type":  # (LuaFilter.keeps_request_content_type)
                    cb.note_request_grpc()
                if self.f.wf.config.clear_route_cache:
                    cb.clear_route_cache()
        return view

    def op_hget(self, kind, key):
        values = self._map(kind).values(to_bytes(key, "get", 2).lower())
        return b",".join(values) if values else ()  # (no value at all, as Envoy's)

    def op_hgetat(self, kind, key, index):
        values = self._map(kind).values(to_bytes(key, "getAtIndex", 2).lower())
        i = to_int(index, "getAtIndex", 3)
        if i < 0:
            raise LuaApiError("bad argument #3 to 'getAtIndex' (index must be >= 0)")
        return values[i] if i < len(values) else ()

    def op_hnum(self, kind, key):
        return len(self._map(kind).values(to_bytes(key, "getNumValues", 2).lower()))

    def op_hadd(self, kind, key, value):
        name, val = to_bytes(key, "add", 2).lower(), to_bytes(value, "add", 3)
        self._modifiable(kind, name).add(name, val)

    def op_hreplace(self, kind, key, value):
        name, val = to_bytes(key, "replace", 2).lower(), to_bytes(value, "replace", 3)
        self._modifiable(kind, name).replace(name, val)

    def op_hremove(self, kind, key):
        name = to_bytes(key, "remove", 2).lower()
        self._modifiable(kind, name).remove(name)

    def op_hbatch(self, *flat):
        """Header writes the prelude queued: (1 add | 2 replace | 3 remove, key, value)..."""
        self._writes(flat, 0)

    def _writes(self, flat, i: int) -> None:
        """Made in order: what the prelude queued in the hook's first run (before its headers
        went on), each a (1 add | 2 replace | 3 remove, name, value) of the stream's own
        headers with strings, the name lower-case, no pseudo-header: the checks of op_hadd &
        co. cannot fail."""
        headers = self.head.headers
        noted = ()
        if self.decoding:
            noted = _REQUEST_NAMES_NOTED
            if self.f.wf.config.clear_route_cache:
                self.f.cb.clear_route_cache()
        n = len(flat)
        while i < n:
            code, name = flat[i], flat[i + 1]
            if name in noted:  # (a request's host or content-type)
                if name == b"host":  # (the request's :authority)
                    view = self._map(0)
                    if code == 3:
                        view.remove(name)
                    else:
                        view.add(name, flat[i + 2])  # (add or replace: HeaderView's, the same)
                    i += 3
                    continue
                self.f.cb.note_request_grpc()  # (LuaFilter.keeps_request_content_type)
            if code == 1:
                headers.add(name, flat[i + 2])
            elif code == 2:
                headers.set(name, flat[i + 2])
            else:
                headers.remove(name)
            i += 3

    def op_hreason(self, kind, reason):
        val = to_bytes(reason, "setHttp1ReasonPhrase", 2)
        self._modifiable(kind)
        if not self.decoding and not kind:
            self.head.reason = val

    def op_hpairs(self, kind):
        return tuple(x for kv in self._map(kind).fields() for x in kv)

    # -- operations: bodies ----------------------------------------------------------------------
    def op_body_wait(self, always_wrap=None) -> bool:
        if self.end_stream:
            if not self.buffered_body and self.saw_body:
                raise LuaApiError("cannot call body() after body has been streamed")
            return False
        if self.saw_body and not self.buffered_body:
            raise LuaApiError("cannot call body() after body streaming has started")
        self.status = WAIT_BODY
        self.buffered_body = True
        return True

    def op_body_has(self, always_wrap=None) -> bool:
        if always_wrap:
            return True
        return self.saw_body and self._buffer() is not None

    def _data(self, kind) -> bytearray:
        if kind:
            if self.chunk is None:
                raise LuaApiError("object used outside of proper scope")
            return self.chunk
        buf = self._buffer()
        if buf is None:  # always_wrap_body with no body: an empty one, added if set
            cb = self.f.cb
            (cb.add_decoded_data if self.decoding else cb.add_encoded_data)(b"")
            buf = self._buffer()
        return buf if buf is not None else bytearray()

    def op_blen(self, kind):
        return len(self._data(kind))

    def op_bget(self, kind, index, length):
        data = self._data(kind)
        i, n = to_int(index, "getBytes", 2), to_int(length, "getBytes", 3)
        if i < 0 or n < 0 or i + n > len(data):
            raise LuaApiError("index/length must be >= 0 and (index + length) must be <= buffer size")
        return bytes(data[i:i + n])

    def op_bset(self, kind, value):
        val = to_bytes(value, "setBytes", 2)
        data = self._data(kind)
        data[:] = val
        if not kind:  # Envoy: the whole body's new length, and no chunked framing
            headers = self.head.headers
            headers.set(b"content-length", b"%d" % len(val))
            headers.remove(b"transfer-encoding")
        return len(val)

    def op_chunks_start(self):
        if self.saw_body:
            raise LuaApiError("cannot call bodyChunks after body processing has begun")

    def op_chunk_wait(self) -> bool:
        if self.end_stream:
            return False
        self.status = WAIT_CHUNK
        return True

    def op_chunk_has(self) -> bool:
        return self.chunk is not None

    def op_trailers_wait(self) -> bool:
        if self.end_stream or self.trailers_list is not None:
            return False
        self.status = WAIT_TRAILERS
        return True

    def op_trailers_has(self) -> bool:
        return self.trailers_list is not None

    # -- operations: httpCall, respond -------------------------------------------------------------
    def op_http_call(self, cluster, body, timeout_ms, asynchronous, send_xff, *flat) -> bool:
        name = to_bytes(cluster, "httpCall", 2).decode("utf-8", "replace")
        payload = None if body is None else to_bytes(body, "httpCall", 4)
        if asynchronous is not None and not isinstance(asynchronous, bool):
            raise LuaApiError("http call asynchronous flag must be 'true', 'false', or empty")
        timeout = to_int(timeout_ms, "httpCall", 5)
        if timeout < 0:
            raise LuaApiError("http call timeout must be >= 0")
        worker = self.f.wf.worker
        if worker.clusters.get(name) is None:
            raise LuaApiError("http call cluster invalid. Must be configured")
        fields: list[tuple[bytes, bytes]] = []
        pseudo: dict[bytes, bytes] = {}
        for i in range(0, len(flat) - 1, 2):
            k, v = to_bytes(flat[i], "httpCall", 3).lower(), to_bytes(flat[i + 1], "httpCall", 3)
            if k[:1] == b":":
                pseudo.setdefault(k, v)
            elif k == b"host":
                pseudo.setdefault(b":authority", v)
            else:
                fields.append((k, v))
        if not (b":path" in pseudo and b":method" in pseudo and b":authority" in pseudo):
            raise LuaApiError("http call headers must include ':path', ':method', and ':authority'")
        if payload is not None:
            fields = [kv for kv in fields if kv[0] != b"content-length"]
            fields.append((b"content-length", b"%d" % len(payload)))
        args = (worker, name, pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"], fields,
                payload or b"", timeout / 1000.0)
        if asynchronous:
            AsyncRequest(*args, _ignore, bool(send_xff)).send()
            return False
        self.status = HTTP_CALL
        self.request = AsyncRequest(*args, self._on_answer, bool(send_xff))
        self.request.send()
        return True

    def _on_answer(self, answer: AsyncResponse) -> None:
        self.request = None
        if self.step is None:
            return
        if answer.local:
            body = _LOCAL_BODIES.get(answer.details, b"")
            if answer.details.startswith("upstream_reset_before_response_started"):
                reason = answer.details[len("upstream_reset_before_response_started{"):-1]
                body = (b"upstream connect error or disconnect/reset before headers. reset reason: "
                        + reason.replace("_", " ").encode())
            items = [(b":status", b"%d" % answer.status)]
            if body:
                items += [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
        else:
            body = answer.body
            items = [(b":status", b"%d" % answer.status), *answer.headers]
        # (a later value of a name replaces an earlier one in the script's table, as Envoy's)
        self.answer = (body if body else None, *(x for k, v in items for x in (k.lower(), v)))
        self._resume()
        self.answer = ()
        if self.status in (RUNNING, DONE):
            self.headers_continued = True
            cb = self.f.cb
            (cb.continue_decoding if self.decoding else cb.continue_encoding)()

    def op_http_answer(self):
        return self.answer

    def op_respond(self, body, *flat) -> None:
        if not self.decoding:
            raise LuaApiError("respond not currently supported in the response path")
        if self.headers_continued:
            raise LuaApiError("respond() cannot be called if headers have been continued")
        payload = b"" if body is None else to_bytes(body, "respond", 3)
        fields: list[tuple[bytes, bytes]] = []
        status_text = b""
        for i in range(0, len(flat) - 1, 2):
            k, v = to_bytes(flat[i], "respond", 2).lower(), to_bytes(flat[i + 1], "respond", 2)
            if k == b":status":
                status_text = v
            elif k[:1] != b":":
                fields.append((k, v))
        try:
            status = int(status_text)
        except ValueError:
            status = 0
        if not 200 <= status < 600:
            raise LuaApiError(":status must be between 200-599")
        self.status = RESPONDED
        self.f.cb.send_local_reply(status, payload, None, "lua_response", fields)

    # -- operations: metadata, stream info, connection, logs ---------------------------------------
    def _route_metadata(self) -> Mapping[str, Any]:
        route = self.f.cb.route()
        if route is None:
            return {}
        meta = route.metadata
        return meta.get(self.f.wf.name) or meta.get(NAME) or {}

    def op_mdget(self, key):
        name = to_bytes(key, "get", 2).decode("utf-8", "replace")
        values = self._route_metadata()
        return self.lua.to_lua(values[name]) if name in values else ()

    def op_mdpairs(self):
        return tuple(x for k, v in self._route_metadata().items() for x in (k.encode(), self.lua.to_lua(v)))

    def _dynamic(self) -> dict:
        info = self.f.cb.stream_info
        md = getattr(info, "dynamic_metadata", None)
        if md is None:
            md = info.dynamic_metadata = {}
        return md

    def op_dmget(self, ns):
        name = to_bytes(ns, "get", 2).decode("utf-8", "replace")
        md = self._dynamic()
        return self.lua.to_lua(md[name]) if name in md else ()

    def op_dmset(self, ns, key, is_table, *value):
        name = to_bytes(ns, "set", 2).decode("utf-8", "replace")
        k = to_bytes(key, "set", 3).decode("utf-8", "replace")
        if is_table:
            val: Any = {_plain(value[i]): _plain(value[i + 1]) for i in range(0, len(value) - 1, 2)}
        else:
            val = _plain(value[0]) if value else None
        self._dynamic().setdefault(name, {})[k] = val

    def op_dmpairs(self):
        return tuple(x for k, v in self._dynamic().items() for x in (k.encode(), self.lua.to_lua(v)))

    def op_si(self, what):
        info = self.f.cb.stream_info
        value = {b"protocol": info.protocol, b"local": info.downstream_local_address,
                 b"direct_remote": info.downstream_direct_remote_address,
                 b"remote": info.downstream_remote_address, b"sni": info.requested_server_name,
                 b"route": info.route_name}.get(what)
        return (value or "").encode()

    def op_ssl(self, what):
        tls = self.f.cb.stream_info.downstream_ssl
        if what == b"present":
            return tls is not None
        if tls is None:
            raise LuaApiError("object used outside of proper scope")
        if what == b"peer":
            return bool(getattr(tls, "peer_certificate", None))
        attr = {b"version": "tls_version", b"cipher": "cipher", b"sni": "sni"}.get(what, "")
        return (getattr(tls, attr, "") or "").encode()

    def op_log(self, level, message) -> None:
        text = to_bytes(message, "log", 2).decode("utf-8", "replace")
        log.log(_LOG_LEVELS[int(level)], "script log: %s", text)

    def op_clear_route_cache(self) -> None:
        if self.decoding:
            self.f.cb.clear_route_cache()

    def op_base64(self, value) -> bytes:
        return base64.b64encode(to_bytes(value, "base64Escape", 2))

    def op_timestamp(self) -> int:
        return int(time.time() * 1000)


def _plain(v: Any) -> Any:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


OPS = {name[3:].encode(): fn for name, fn in vars(StreamHandle).items() if name.startswith("op_")}


def _ignore(_answer: AsyncResponse) -> None:
    pass
