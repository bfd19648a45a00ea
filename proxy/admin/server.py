"""The admin HTTP/1.1 server: a thin socket shell around `endpoints.handle`.

Job: bind `admin.address` (port 0 allowed), accept on a daemon thread named "admin", serve
each connection on its own daemon thread "admin-request" (keep-alive, Content-Length always
set), and write whatever `endpoints.handle` answers. `stop()` stops accepting and closes the
listen socket (hot restart frees the admin port this way); connections already open finish
their current request and close at their idle timeout.

Thread affinity: `start()`/`stop()` from main (or any one thread; `stop()` is also safe from
an admin request thread, e.g. inside `quit()`). Request threads only call `handle()`.
Must not: contain endpoint logic, or block main.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .endpoints import AdminContext, AdminResponse, handle

__all__ = ["AdminServer"]

_log = logging.getLogger("proxy.admin")

# An idle keep-alive admin connection is dropped after this long, so slow or stuck clients
# cannot pin request threads forever.
IDLE_TIMEOUT_S = 30.0
# Admin POSTs carry no meaningful body; refuse big ones rather than buffer them.
MAX_BODY_BYTES = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The stdlib's default ("HTTP/0.9") would send an error met before the version was read
    # (or any answer to a version-less request line) without a status line.
    default_request_version = "HTTP/1.1"
    server_version = "envoy"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    server: _HTTPServer

    def parse_request(self) -> bool:
        """The stdlib's parse plus the rules Envoy's HTTP/1 codec applies to every request
        (the admin is an HTTP listener like any other): HTTP/1.0 or 1.1 only, one Host in an
        HTTP/1.1 request, at most one Content-Length and only digits in it (RFC 9112 §3.2,
        §6.3); anything else is a 400 and the connection closes."""
        if not super().parse_request():
            return False
        if len(self.requestline.split()) != 3 or self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(400, "Bad request line")
            return False
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or (self.request_version == "HTTP/1.1" and not hosts):
            self.send_error(400, "Missing or repeated Host")
            return False
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            self.send_error(400, "Bad Content-Length")
            return False
        return True

    def _dispatch(self, send_body: bool = True) -> None:
        if not self._drain_body():
            return
        method = "GET" if self.command == "HEAD" else self.command
        resp = handle(self.server.context, method, self.path)
        if resp.after is not None:
            self.close_connection = True
        self._write(resp, send_body)
        if resp.after is not None:
            try:
                resp.after()
            except Exception:  # noqa: BLE001 - never kill the request thread
                _log.exception("admin post-response action failed for %s", self.path)

    def _drain_body(self) -> bool:
        """Read (and drop) the request body; False after refusing it (the connection closes).
        `parse_request` already checked Content-Length's syntax."""
        send_body = self.command != "HEAD"
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._write(AdminResponse(411, "text/plain; charset=UTF-8", b"Content-Length required\n"), send_body)
            return False
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._write(AdminResponse(413, "text/plain; charset=UTF-8", b"request body too large\n"), send_body)
            return False
        if length:
            self.rfile.read(length)
        return True

    def _write(self, resp: AdminResponse, send_body: bool = True) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-cache, max-age=0")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(resp.body)
        self.wfile.flush()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        _log.debug("admin %s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: AdminContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name="admin-request", daemon=True)
        t.start()

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        _log.exception("admin connection from %s failed", client_address)


class AdminServer:
    """Envoy's admin endpoint on `host:port`. `.port` is the bound port after `start()`."""

    def __init__(self, context: AdminContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self._context = context
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        # AdminServer._lock guards _httpd/_thread against concurrent start()/stop()
        # (stop() may come from an admin request thread via quit()).
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        httpd = self._httpd
        return httpd.server_address[1] if httpd is not None else self._port

    @property
    def host(self) -> str:
        return self._host

    def start(self) -> None:
        with self._lock:
            if self._httpd is not None:
                raise RuntimeError("admin server already started")
            try:
                httpd = _HTTPServer((self._host, self._port), self._context)
            except OSError as e:  # name the address: the errno text alone does not say which
                host = f"[{self._host}]" if ":" in self._host else self._host
                raise OSError(e.errno, f"unable to bind the admin address {host}:{self._port}: "
                                       f"{e.strerror}") from None
            thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                      name="admin", daemon=True)
            self._httpd, self._thread = httpd, thread
            thread.start()
        _log.info("admin listening on %s:%d", self._host, self.port)

    def stop(self) -> None:
        """Stop accepting and close the listen socket. Idempotent."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None:
            return
        self._port = httpd.server_address[1]
        httpd.shutdown()
        httpd.server_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
