"""`proxyctl demo`: the front-proxy example running against local demo upstreams.

Job: start small upstream servers on 127.0.0.1 — two HTTP/1.1 services (service1 on :18081,
service2 on :18082) that answer any method and path with a JSON echo of what they received
(so a user sees the x-forwarded-for / x-request-id the proxy added), and a TCP echo server on
:18083 (the upstream of examples/tcp-proxy.yaml) — print what to try, then run the proxy in
the foreground on examples/front-proxy.yaml (or the given config) until Ctrl-C.

Must not: listen on anything but 127.0.0.1, or be imported by `proxy` (dependencies point
from cli down). Thread affinity: `run_demo` runs on the main thread (the server installs its
signal handlers there); each demo server runs `serve_forever` on its own daemon thread and
hands each accepted connection to its own daemon thread (socketserver's ThreadingMixIn).
The servers share nothing mutable: a handler reads only its connection and the server's
immutable name.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click

__all__ = ["run_demo", "start_demo_upstreams", "stop_demo_upstreams", "default_config_path",
           "describe_config", "DEMO_HOST", "HTTP_SERVICES", "TCP_ECHO_PORT"]

log = logging.getLogger("ftproxy.demo")

DEMO_HOST = "127.0.0.1"
HTTP_SERVICES: tuple[tuple[str, int], ...] = (("service1", 18081), ("service2", 18082))
TCP_ECHO_PORT = 18083
DEMO_DRAIN_TIME_S = 5.0        # Ctrl-C should end a demo quickly
_BODY_CHUNK = 64 * 1024        # request bodies are read (and counted, not kept) in these steps
_EXAMPLE = Path("examples") / "front-proxy.yaml"


# -- demo upstreams ---------------------------------------------------------------------------

class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with 200 and a JSON description of the request it received."""

    protocol_version = "HTTP/1.1"      # keep-alive; every response carries Content-Length
    server_version = "ftproxy-demo"
    # One write per response, and no Nagle. The stdlib writes the head and the body with two
    # send()s on an unbuffered socket; on a keep-alive connection Nagle holds the body until
    # the head is ACKed, and the client (the proxy) delays that ACK by up to 40 ms: half the
    # requests through the proxy took 42-46 ms. Buffered, the head and the body leave in the
    # flush BaseHTTPRequestHandler does after each request; TCP_NODELAY covers a response
    # bigger than the buffer.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: answer every method the same way.
        if name.startswith("do_"):
            return self._reply
        raise AttributeError(name)

    def _reply(self) -> None:
        body_bytes = self._drain_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        server: _DemoHTTPServer = self.server  # type: ignore[assignment]
        payload = {
            "service": server.service_name,
            "upstream": f"{server.server_address[0]}:{server.server_address[1]}",
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_bytes": body_bytes,
        }
        body = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # A header the front-proxy example strips on /service/1 (response_headers_to_remove).
        self.send_header("X-Internal-Debug", f"served-by={server.service_name}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self) -> int:
        """Read the request body off the connection (so keep-alive stays in step); its size."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._drain_chunked()
        try:
            remaining = int(self.headers.get("Content-Length", "0") or "0")
        except ValueError:
            self.close_connection = True
            return 0
        total = 0
        while remaining > 0:
            data = self.rfile.read(min(remaining, _BODY_CHUNK))
            if not data:
                self.close_connection = True
                break
            total += len(data)
            remaining -= len(data)
        return total

    def _drain_chunked(self) -> int:
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                return total
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass   # trailers
                return total
            remaining = size
            while remaining > 0:
                data = self.rfile.read(min(remaining, _BODY_CHUNK))
                if not data:
                    self.close_connection = True
                    return total
                total += len(data)
                remaining -= len(data)
            self.rfile.readline(1024)   # CRLF after the chunk

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s: " + format, self.server.service_name, *args)  # type: ignore[attr-defined]


class _DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service_name: str) -> None:
        self.service_name = service_name
        super().__init__(address, _EchoHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("%s: error on the connection from %s", self.service_name, client_address,
                  exc_info=True)


class _EchoTCPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        while data := sock.recv(_BODY_CHUNK):
            sock.sendall(data)


class _DemoTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    service_name = "tcp_echo"

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("tcp_echo: error on the connection from %s", client_address, exc_info=True)


def start_demo_upstreams(host: str = DEMO_HOST,
                         http_services: Sequence[tuple[str, int]] = HTTP_SERVICES,
                         tcp_echo_port: int | None = TCP_ECHO_PORT) -> list[socketserver.TCPServer]:
    """Bind and start the demo servers (port 0 = any free port; `tcp_echo_port=None` skips the
    echo server). Each serves on its own daemon thread; `server.server_address` has the real
    port and `server.service_name` its name. Raises OSError (nothing left running) if a port
    is taken."""
    servers: list[socketserver.TCPServer] = []
    try:
        for name, port in http_services:
            servers.append(_DemoHTTPServer((host, port), name))
        if tcp_echo_port is not None:
            servers.append(_DemoTCPServer((host, tcp_echo_port), _EchoTCPHandler))
    except OSError:
        for s in servers:
            s.server_close()
        raise
    for s in servers:
        name = getattr(s, "service_name", "upstream")
        threading.Thread(target=s.serve_forever, name=f"demo-{name}", daemon=True).start()
    return servers


def stop_demo_upstreams(servers: Iterable[socketserver.BaseServer]) -> None:
    """Stop serving and close the listen sockets (connections in flight end with the process)."""
    for s in servers:
        s.shutdown()
        s.server_close()


# -- what to try ------------------------------------------------------------------------------

def default_config_path() -> Path | None:
    """examples/front-proxy.yaml next to the `cli` package (source tree or editable install),
    else under the current directory (a checkout of the repo)."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = base / _EXAMPLE
        if candidate.is_file():
            return candidate
    return None


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _sample_path(match: Any) -> str | None:
    if match is None or match.kind not in ("prefix", "path", "path_separated_prefix"):
        return None
    if match.kind == "path":
        return match.value
    return match.value + ("hello" if match.value.endswith("/") else "/hello")


def _route_note(route: Any) -> str:
    if route.direct_response is not None:
        return f"direct response {route.direct_response.status} from the proxy"
    if route.redirect is not None:
        return f"{route.redirect.response_code} redirect (add -L to follow it)"
    action = route.action
    if action is None:
        return ""
    if action.weighted_clusters:
        return "split " + " / ".join(f"{name} {w}" for name, w in action.weighted_clusters)
    target = action.cluster or f"cluster named by header {action.cluster_header!r}"
    rewrite = f", path rewritten to {action.prefix_rewrite}..." if action.prefix_rewrite else ""
    return f"-> {target}{rewrite}"


def describe_config(bootstrap: Any, ports: Mapping[str, int] | None = None,
                    admin_port: int | None = None) -> list[str]:
    """Lines telling a user what to try against `bootstrap`: a curl line per route with a
    literal path, a `curl telnet://` line per TCP proxy listener, and the admin URLs.
    `ports` overrides listener ports by name (the real ports of `port_value: 0` listeners)."""
    from proxy.http.hcm_config import HcmConfig
    from proxy.network.tcp_proxy_config import TcpProxyConfig

    ports = ports or {}
    lines: list[str] = []
    for lis in bootstrap.listeners:
        port = ports.get(lis.name, lis.port)
        base = f"{_url_host(lis.address)}:{port}"
        terminal = lis.filter_chains[0].filters[-1].config
        if isinstance(terminal, TcpProxyConfig):
            target = terminal.cluster or "weighted clusters"
            lines.append(f"  printf 'hello\\n' | curl -s --max-time 1 telnet://{base}"
                         f"    # tcp_proxy -> {target}")
            continue
        if not isinstance(terminal, HcmConfig):
            continue
        for vh in terminal.route_config.virtual_hosts:
            host = next((d for d in vh.domains if "*" not in d), None)
            host_flag = f" -H 'host: {host}'" if host and "*" not in vh.domains else ""
            for route in vh.routes:
                path = _sample_path(route.match)
                if path is None:
                    continue
                lines.append(f"  curl -i{host_flag} http://{base}{path}    # {_route_note(route)}")
    admin = bootstrap.admin
    if admin is not None:
        aport = admin_port if admin_port is not None else admin.port
        url = f"http://{_url_host(admin.address)}:{aport}"
        lines.append(f"  admin: {url}/   ({url}/stats, {url}/stats/prometheus, {url}/clusters, "
                     f"{url}/server_info)")
    return lines


def _announce(server: Any, bootstrap: Any, upstreams: Sequence[socketserver.TCPServer]) -> None:
    """Print the banner once the server is LIVE (runs on a daemon thread)."""
    if not server.wait_ready(30.0):
        return
    ports = {lis.name: server.listener_port(lis.name) for lis in bootstrap.listeners}
    admin = getattr(server, "admin", None)
    out = ["", "ftproxy demo is running. Demo upstreams:"]
    for s in upstreams:
        host, port = s.server_address[:2]
        kind = "tcp echo" if isinstance(s, _DemoTCPServer) else "http"
        out.append(f"  {s.service_name:<9} {kind} on {host}:{port}")  # type: ignore[attr-defined]
    out += ["", "Try:"]
    out += describe_config(bootstrap, ports, getattr(admin, "port", None))
    out += ["  (the TCP echo upstream is for examples/tcp-proxy.yaml: "
            "proxyctl start -c examples/tcp-proxy.yaml)", "", "Ctrl-C to stop.", ""]
    click.echo("\n".join(out))


# -- entry point ------------------------------------------------------------------------------

def run_demo(config_path: str | None, concurrency: int | None, log_level: str) -> int:
    """Start the demo upstreams, then run the proxy on `config_path` (default: the bundled
    examples/front-proxy.yaml) in the foreground until SIGINT/SIGTERM. Returns the exit code."""
    from proxy.config.load import load_bootstrap
    from proxy.config.reader import ConfigError
    from proxy.server.instance import Server, ServerOptions

    path = Path(config_path) if config_path else default_config_path()
    if path is None:
        click.echo(f"error: cannot find {_EXAMPLE}; run from the repository or pass -c FILE",
                   err=True)
        return 1
    try:
        bootstrap = load_bootstrap(str(path))
    except ConfigError as e:
        click.echo(f"error initializing configuration '{path}': {e}", err=True)
        return 1
    try:
        upstreams = start_demo_upstreams()
    except OSError as e:
        ports = ", ".join(str(p) for _, p in HTTP_SERVICES) + f", {TCP_ECHO_PORT}"
        click.echo(f"error starting the demo upstreams on {DEMO_HOST} ports {ports}: {e} "
                   "(is another demo running?)", err=True)
        return 1
    try:
        # No hot restart for a demo: its restart socket would collide with any other ftproxy
        # running on this machine under the default base id.
        server = Server(bootstrap, ServerOptions(str(path), concurrency, DEMO_DRAIN_TIME_S,
                                                 "fast", log_level, disable_hot_restart=True))
        threading.Thread(target=_announce, args=(server, bootstrap, upstreams),
                         name="demo-announce", daemon=True).start()
        return server.run()
    except OSError as e:
        click.echo(f"error starting the proxy: {e}", err=True)
        return 1
    finally:
        stop_demo_upstreams(upstreams)
