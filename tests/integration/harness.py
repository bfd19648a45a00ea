"""Integration harness: the real server in-process on 127.0.0.1 port 0, real upstream servers.

`ProxyUnderTest` runs `proxy.server.instance.Server` on a background thread (its main loop)
with listeners and admin bound to port 0; `EchoUpstream` is a real HTTP/1.1 server
(stdlib ThreadingHTTPServer) that answers with what it received. No mocks anywhere.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from proxy.config.load import parse_bootstrap
from proxy.server.instance import Server, ServerOptions


class _EchoHandler(BaseHTTPRequestHandler):
    # TCP_NODELAY: the head and the body are two writes; with Nagle the body waits for the
    # proxy's delayed ACK (~40 ms a response on a keep-alive connection).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "upstream"

    def log_message(self, *a):  # keep test output quiet
        pass

    def _body(self) -> bytes:
        """The request body; a chunked body's trailers go to self.trailers (name -> value)."""
        self.trailers = {}
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        self.trailers[name.strip().lower()] = value.strip()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        srv = self.server
        body = self._body()
        # Request trailers are recorded among the headers as "trailer:<name>".
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        headers.update((f"trailer:{k}", v) for k, v in self.trailers.items())
        srv.requests.append((self.command, self.path, headers, body))
        path = self.path.split("?")[0]
        if path == "/reset":
            # Close without answering: the proxy sees its upstream connection terminated.
            self.close_connection = True
            return
        if path.startswith("/flaky/"):
            # /flaky/<n>/<code>: of each n+1 requests to this path, the first n get <code>,
            # the next the echo answer (a cycle, so two proxies taking turns see the same).
            _, _, n, code = path.split("/")[:4]
            with srv.lock:
                seen = srv.counts[path] = srv.counts.get(path, 0) + 1
            if (seen - 1) % (int(n) + 1) < int(n):
                self.send_response(int(code))
                self.send_header("content-length", "0")
                self.end_headers()
                return
        if path.startswith("/authz"):
            self._authz()
            return
        if path.startswith("/cache/"):
            self._cacheable()
            return
        if path.startswith("/redirect/"):
            self._redirect(path)
            return
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if path.startswith("/delay/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        if path.startswith("/bytes/"):
            n = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            left = n
            while left:
                k = min(left, len(chunk))
                self.wfile.write(chunk[:k])
                left -= k
            return
        if path == "/immediate-hc-fail":   # what a host says to take itself out of rotation
            self.send_response(200)
            self.send_header("x-envoy-immediate-health-check-fail", "true")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if path == "/trailers":   # a chunked answer with trailers
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("trailer", "x-resp-trailer")
            self.send_header("proxy-authenticate", 'Basic realm="up"')
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\nx-resp-trailer: yes\r\ngrpc-status: 0\r\n\r\n")
            return
        if path == "/close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"closed-body")
            self.close_connection = True
            return
        payload = json.dumps({"server": srv.name, "method": self.command, "path": self.path,
                              "headers": headers,
                              "body_len": len(body)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-upstream", srv.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _cacheable(self) -> None:
        """/cache/<name>?cc=..&etag=..&lm=..&vary=..&expires=..&status=..: a response carrying
        those caching headers (cache-control, etag "<etag>", last-modified, vary, expires) and
        the body `cacheable <path>` (the same for every request, so two proxies compare);
        If-None-Match with the etag, or If-Modified-Since not before `lm`: 304 with the
        caching headers and no body (RFC 7232 4.1)."""
        from email.utils import parsedate_to_datetime
        from urllib.parse import parse_qs, urlsplit
        q = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        etag = f'"{q["etag"]}"' if "etag" in q else None
        headers = [(name, q[key]) for key, name in (("cc", "cache-control"), ("lm", "last-modified"),
                                                     ("vary", "vary"), ("expires", "expires"))
                   if key in q]
        if etag:
            headers.append(("etag", etag))
        inm = self.headers.get("if-none-match")
        ims = self.headers.get("if-modified-since")
        not_modified = False
        if inm is not None and etag is not None:
            not_modified = etag in [t.strip().removeprefix("W/") for t in inm.split(",")]
        elif ims is not None and "lm" in q:
            try:
                not_modified = parsedate_to_datetime(q["lm"]) <= parsedate_to_datetime(ims)
            except (TypeError, ValueError):
                not_modified = False
        if not_modified:
            self.send_response(304)
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            return
        body = b"" if self.command == "HEAD" else f"cacheable {self.path}\n".encode()
        self.send_response(int(q.get("status", "200")))
        self.send_header("content-type", "text/plain")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(f"cacheable {self.path}\n")))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, path: str) -> None:
        """/redirect/<code>?to=<location>[&hdr=<name>:<value>...]: a <code> answer with that
        Location (absent without `to`), the extra headers, and the body `redirecting`."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.send_response(int(path.split("/")[2]))
        for to in query.get("to", ()):
            self.send_header("location", to)
        for h in query.get("hdr", ()):
            name, _, value = h.partition(":")
            self.send_header(name, value)
        self.send_header("content-length", "11")
        self.end_headers()
        self.wfile.write(b"redirecting")

    def _authz(self) -> None:
        """An ext_authz HTTP service: `authorization: Bearer <token>` decides. allow-<user>:
        200 with x-current-user and x-authz-extra; slow: 200 after 1 s; error: 500; none:
        401; anything else: 403 with www-authenticate, x-reason and a body."""
        token = self.headers.get("authorization", "").removeprefix("Bearer ").strip()
        extra: list[tuple[str, str]] = []
        body = b""
        if token.startswith("allow"):
            code = 200
            extra = [("x-current-user", token.removeprefix("allow-")), ("x-authz-extra", "1"),
                     ("x-append-me", "from-authz")]
        elif token == "slow":
            time.sleep(1.0)
            code = 200
        elif token == "error":
            code = 500
        elif not token:
            code, body = 401, b"who are you?"
        else:
            code, body = 403, b"denied by authz"
            extra = [("www-authenticate", 'Bearer realm="test"'), ("x-reason", "bad-token")]
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the stdlib default of 5 resets connections under load
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client (the proxy) that gives up mid-request is expected in timeout tests


class EchoUpstream:
    def __init__(self, name: str = "upstream") -> None:
        self.httpd = _Server(("127.0.0.1", 0), _EchoHandler)
        self.httpd.daemon_threads = True
        self.httpd.name = name
        self.httpd.requests = []
        self.httpd.counts = {}                 # /flaky/: requests seen per path
        self.httpd.lock = threading.Lock()     # guards counts (handler threads)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True, name=f"upstream-{name}")
        self.thread.start()

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def front_proxy_config(routes: list[dict], clusters: list[dict], **hcm_extra) -> dict:
    """A bootstrap with one HCM listener on 127.0.0.1:0 and admin on 127.0.0.1:0."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {"name": "local_route", "virtual_hosts": [
            {"name": "backend", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    hcm.update(hcm_extra)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "listener_0",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": clusters,
        },
    }


def static_cluster(name: str, *ports: int, **extra) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
             for p in ports]}]}}
    c.update(extra)
    return c


class ProxyUnderTest:
    def __init__(self, config: dict, concurrency: int = 1, codec: str = "fast", drain_time_s: float = 10.0) -> None:
        self.config = config
        bootstrap = parse_bootstrap(yaml.safe_load(yaml.safe_dump(config)))
        self.server = Server(bootstrap, ServerOptions("<test>", concurrency, drain_time_s, codec,
                                                     disable_hot_restart=True))
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="proxy-main")
        self.thread.start()
        if not self.server.wait_ready(10):
            raise RuntimeError("proxy did not start")

    def _run(self) -> None:
        self.exit_code = self.server.run(install_signals=False)

    @property
    def port(self) -> int:
        return self.server.listener_port()

    @property
    def admin_port(self) -> int:
        return self.server.admin.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def counters(self) -> dict[str, int]:
        return dict(self.server.stats.snapshot().counters)

    def gauges(self) -> dict[str, int]:
        return dict(self.server.stats.snapshot().gauges)

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        """Poll `predicate` until it holds (True) or `timeout` passes (its last value). The
        default is long: it only costs a test that fails, and a loaded machine (CI's two cores
        under three test processes) can be seconds late with a flush or a timer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def stop(self) -> None:
        self.server.request_shutdown()
        self.thread.join(15)


def raw_request(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes, read the reply until the proxy closes (or timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = bytearray()
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if not read_until_close and b"\r\n\r\n" in out:
                    break
        except socket.timeout:
            pass
        return bytes(out)
    finally:
        s.close()
