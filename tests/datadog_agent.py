"""A Datadog agent stand-in for the tests: an HTTP/1.1 server on 127.0.0.1 taking what a
tracer sends to the trace agent's port (8126) and recording it, decoded.

- `PUT`/`POST /v0.4/traces`: the body is decoded with the `msgpack` package (a test-only
  use: an array of traces, each an array of span maps) and recorded in `reports` with the
  method, path and headers; each span is appended to `spans`. The answer is 200 with
  `{"rate_by_service": ...}` (`rates`, settable), as the agent answers.
- Any other request (telemetry, remote configuration, /info) is recorded in `others` and
  answered 404, as an agent without that endpoint answers.

Thread affinity: the server's threads append; the test reads after waiting (`wait_spans`).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgpack

__all__ = ["DatadogAgent"]


class DatadogAgent:
    def __init__(self, rates: dict | None = None, status: int = 200) -> None:
        self.reports: list[dict] = []
        self.spans: list[dict] = []
        self.others: list[tuple[str, str, dict]] = []
        self.rates = {"service:,env:": 1.0} if rates is None else rates
        self.status = status
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = bytearray()
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path == "/v0.4/traces":
                    traces = msgpack.unpackb(body, raw=False, strict_map_key=False)
                    with outer.lock:
                        outer.reports.append({"method": self.command, "path": self.path,
                                              "headers": headers, "traces": traces})
                        for trace in traces:
                            outer.spans.extend(trace)
                    self._answer(outer.status, json.dumps({"rate_by_service": outer.rates}).encode())
                    return
                with outer.lock:
                    outer.others.append((self.command, self.path, headers))
                self._answer(404, b"{}")

            do_PUT = do_POST = do_GET = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_spans(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
