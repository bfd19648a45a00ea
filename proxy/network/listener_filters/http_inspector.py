"""`envoy.filters.listener.http_inspector`: is a plaintext connection HTTP, and which version?

Envoy's filter: skipped (CONTINUE at once) when an earlier listener filter found a transport
protocol other than raw_buffer (TLS); else it peeks at the first bytes (8 KiB, doubling up to
64 KiB): the HTTP/2 connection preface gives application protocol "h2c" (http2_found); a
complete, well-formed HTTP/1 request line gives "http/1.1" for HTTP/1.1 (http11_found) and
"http/1.0" for any other version (http10_found); anything else is http_not_found and the
connection goes on with no application protocol. 64 KiB without a verdict (a request line
that long) closes the connection (read_error). Stats `http_inspector.*`, rooted at the
server's scope as Envoy's are.

Config `envoy.extensions.filters.listener.http_inspector.v3.HttpInspector`: no fields.
`inspect_http(data)` is the pure part (no I/O).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...config.fields_table import Message
from ...config.registry import Extension, register
from . import ListenerFilterStatus

__all__ = ["inspect_http", "HTTP2", "HTTP11", "HTTP10", "NOT_HTTP", "NEED_MORE",
           "HttpInspectorFactory"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2, HTTP11, HTTP10, NOT_HTTP, NEED_MORE = "h2c", "http/1.1", "http/1.0", "", None
INITIAL_READ = 8 * 1024
MAX_INSPECT = 64 * 1024

# A request line as an HTTP/1 parser with custom methods accepts it (Envoy uses BalsaParser
# with allow_custom_methods): token SP request-target SP HTTP/d.d, then CRLF or LF.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])\r?\n")
# What a line that is still arriving may look like so far.
_PARTIAL = re.compile(rb"(" + _TCHAR + rb"+( ([\x21-\x7e\x80-\xff]+( (H(T(T(P(/([0-9](\.([0-9](\r)?)?)?)?)?)?)?)?)?)?)?)?)?")


def inspect_http(data: bytes) -> str | None:
    """HTTP2, HTTP11, HTTP10, NOT_HTTP, or NEED_MORE (None) for the first bytes `data`."""
    k = min(len(data), len(PREFACE))
    if data[:k] == PREFACE[:k]:
        return HTTP2 if len(data) >= len(PREFACE) else NEED_MORE
    if not data or data[0] in b"\r\n":
        return NOT_HTTP
    nl = data.find(b"\n")
    if nl < 0:
        return NEED_MORE if _PARTIAL.fullmatch(data) else NOT_HTTP
    m = _LINE.fullmatch(data[:nl + 1])
    if m is None:
        return NOT_HTTP
    return HTTP11 if m.group(3, 4) == (b"1", b"1") else HTTP10


HTTP_INSPECTOR = Message("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
                         title="Listener filter http_inspector", fields=())


def parse_http_inspector(raw: Mapping[str, Any], path: str) -> None:
    HTTP_INSPECTOR.read(raw, path)
    return None


_STATS = ("read_error", "http10_found", "http11_found", "http2_found", "http_not_found")


class HttpInspectorFactory:
    def __init__(self, config: Any, name: str) -> None:
        self.name = name

    def for_worker(self, worker) -> WorkerHttpInspector:
        return WorkerHttpInspector(worker)


class WorkerHttpInspector:
    def __init__(self, worker) -> None:
        scope = worker.stats.scope("http_inspector")
        self.stats = {n: scope.counter(n) for n in _STATS}

    def create(self, callbacks) -> HttpInspectorFilter:
        return HttpInspectorFilter(self, callbacks)


class HttpInspectorFilter:
    __slots__ = ("w", "cb", "max_read_bytes")

    def __init__(self, w: WorkerHttpInspector, callbacks) -> None:
        self.w = w
        self.cb = callbacks
        self.max_read_bytes = INITIAL_READ

    def on_accept(self, callbacks) -> int:
        if callbacks.transport_protocol not in ("", "raw_buffer"):
            self.max_read_bytes = 0
            return ListenerFilterStatus.CONTINUE
        return ListenerFilterStatus.STOP_ITERATION

    def on_data(self, data: bytes) -> int:
        verdict = inspect_http(data)
        stats = self.w.stats
        if verdict is NEED_MORE:
            if len(data) >= MAX_INSPECT:
                stats["read_error"].value += 1
                self.cb.close()
                return ListenerFilterStatus.STOP_ITERATION
            if len(data) >= self.max_read_bytes:
                self.max_read_bytes = min(2 * self.max_read_bytes, MAX_INSPECT)
            return ListenerFilterStatus.STOP_ITERATION
        if verdict == NOT_HTTP:
            stats["http_not_found"].value += 1
        else:
            stats[{HTTP2: "http2_found", HTTP11: "http11_found", HTTP10: "http10_found"}[verdict]].value += 1
            self.cb.set_application_protocols((verdict,))
        return ListenerFilterStatus.CONTINUE

    def on_close(self) -> None:
        pass


register(Extension(
    category="listener_filter",
    name="envoy.filters.listener.http_inspector",
    proto="envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    parse=parse_http_inspector,
    empty_config_ok=True,
    factory=HttpInspectorFactory,
))
