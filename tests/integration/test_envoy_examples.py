"""Envoy's own example configs (tests/envoy_examples, from envoyproxy/examples) run through
ftproxy, serving the traffic their docs and verify.sh describe.

The configs are loaded as published; only what points outside this machine is moved onto
loopback, as docker-compose would have wired it: listeners bind 127.0.0.1 on a free port
instead of 0.0.0.0, and each cluster endpoint's host name (`service-https`, ...) becomes
127.0.0.1 with the port of the local test service playing it. The services answer as the
examples' do: JSON with their host name and the request headers they got.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from proxy.config.load import parse_bootstrap
from proxy.http.filters.compression_libraries import ZSTD_MISSING, zstd_api
from proxy.server.instance import Server, ServerOptions
from tests.lua_support import LUA_IN_PROCESS_SKIP
from tests.tls_certs import CertAuthority

EXAMPLES = Path(__file__).resolve().parents[1] / "envoy_examples"


class ExampleService:
    """An HTTP(S) service like the examples' (shared/echo): JSON with `hostname` and the
    request's headers; over TLS when given a server context."""

    def __init__(self, hostname: str, tls: ssl.SSLContext | None = None) -> None:
        self.hostname = hostname
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self, head: bool = False):
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(headers)
                body = json.dumps({"hostname": outer.hostname, "path": self.path,
                                   "headers": headers}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET(head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebSocketService:
    """websocat's `literalreply:'[wss] HELO'` (the websocket example's service-wss): every
    message is answered with that literal; over TLS when given a context."""

    def __init__(self, reply: str, tls: ssl.SSLContext | None = None) -> None:
        from websockets.sync.server import serve

        def handler(ws) -> None:
            for _msg in ws:
                ws.send(reply)

        self.server = serve(handler, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _tls_server_ctx(tmp_path: Path, name: str) -> ssl.SSLContext:
    cert, key = CertAuthority().issue_files(tmp_path, name, [name], kind="rsa")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _on_loopback(config: dict, hosts: dict[str, int]) -> dict:
    """The example's bootstrap with listeners on 127.0.0.1:0 and each endpoint host name
    replaced by 127.0.0.1 and its local service's port."""
    res = config["static_resources"]
    for lis in res.get("listeners", []):
        sa = lis["address"]["socket_address"]
        sa["address"], sa["port_value"] = "127.0.0.1", 0
    admin_port = hosts.get("admin", 0)
    for cluster in res.get("clusters", []):
        for group in cluster["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                sa = ep["endpoint"]["address"]["socket_address"]
                # A host name plays a local service; 127.0.0.1:<admin port> is the proxy's admin.
                sa["port_value"] = admin_port if sa["address"] == "127.0.0.1" else hosts[sa["address"]]
                sa["address"] = "127.0.0.1"
    if "admin" in config:
        config["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    return config


class RunningExample:
    def __init__(self, example: str, hosts: dict[str, int]) -> None:
        raw = yaml.safe_load((EXAMPLES / example).read_text())
        self.server = Server(parse_bootstrap(_on_loopback(raw, hosts)),
                             ServerOptions("<example>", 1, 5.0, "fast", disable_hot_restart=True))
        self.thread = threading.Thread(target=self.server.run, kwargs={"install_signals": False}, daemon=True)
        self.thread.start()
        assert self.server.wait_ready(10)

    def port(self, index: int = 0) -> int:
        return list(self.server.listener_addresses.values())[index][1]

    def stop(self) -> None:
        self.server.request_shutdown()
        self.thread.join(15)


def _curl_json(url: str, *args: str) -> dict:
    r = subprocess.run(["curl", "-sS", "--max-time", "5", *args, url], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def services(tmp_path):
    made = []

    def make(kind, *args):
        s = kind(*args)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


# -- tls: https -> http, https -> https, http -> https, https passthrough ----------------------

@pytest.mark.parametrize("config,service,scheme,xfp", [
    ("tls/envoy-https-http.yaml", "service-http", "https", "https"),
    ("tls/envoy-https-https.yaml", "service-https", "https", "https"),
    ("tls/envoy-http-https.yaml", "service-https", "http", "http"),
    ("tls/envoy-https-passthrough.yaml", "service-https", "https", None),
])
def test_tls_example(config, service, scheme, xfp, services, tmp_path):
    tls = _tls_server_ctx(tmp_path, service) if service == "service-https" else None
    if tls is not None:
        tls.minimum_version = ssl.TLSVersion.TLSv1_3  # as the example's service-https
    svc = services(ExampleService, service, tls)
    ex = RunningExample(config, {service: svc.port})
    try:
        answer = _curl_json(f"{scheme}://localhost:{ex.port()}/", "-k")
        assert answer["hostname"] == service
        if xfp is None:  # passthrough: the proxy never saw HTTP
            assert "x-forwarded-proto" not in answer["headers"]
        else:
            assert answer["headers"]["x-forwarded-proto"] == xfp
    finally:
        ex.stop()


# -- front-proxy: both listeners ----------------------------------------------------------------

def test_front_proxy_example_serves_http_and_https(services):
    s1 = services(ExampleService, "service1")
    s2 = services(ExampleService, "service2")
    ex = RunningExample("front-proxy/envoy.yaml", {"service-envoy-1": s1.port, "service-envoy-2": s2.port})
    try:
        assert _curl_json(f"http://localhost:{ex.port(0)}/service/1")["hostname"] == "service1"
        answer = _curl_json(f"https://localhost:{ex.port(1)}/service/2", "-k")
        assert answer["hostname"] == "service2" and answer["headers"]["x-forwarded-proto"] == "https"
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{ex.port(1)}"], input="",
                             capture_output=True, text=True, timeout=10).stdout
        assert "subject=CN = front-envoy" in out or "subject=CN=front-envoy" in out
    finally:
        ex.stop()


# -- websocket: wss -> wss, and wss passthrough -------------------------------------------------

@pytest.mark.parametrize("config", ["websocket/envoy-wss.yaml", "websocket/envoy-wss-passthrough.yaml"])
def test_websocket_wss_examples(config, services, tmp_path):
    from websockets.sync.client import connect
    svc = services(WebSocketService, "[wss] HELO", _tls_server_ctx(tmp_path, "service-wss"))
    ex = RunningExample(config, {"service-wss": svc.port})
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with connect(f"wss://localhost:{ex.port()}/", ssl=ctx, open_timeout=5) as ws:
            for msg in ("HELO", "again"):
                ws.send(msg)
                assert ws.recv(timeout=5) == "[wss] HELO"
    finally:
        ex.stop()


# -- tls-sni: chains chosen by SNI (two terminated, one passed through), and its client ---------

def test_tls_sni_example_and_its_sni_client(services, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example names its certificates as certs/<domain>.*.pem
    (tmp_path / "certs").mkdir()
    for domain in ("domain1", "domain2"):  # as its verify.sh makes them: self-signed, per domain
        cert, key = CertAuthority().issue([f"{domain}.example.com"], kind="rsa", self_signed=True)
        from tests.tls_certs import key_pem, pem
        (tmp_path / "certs" / f"{domain}.crt.pem").write_bytes(pem(cert))
        (tmp_path / "certs" / f"{domain}.key.pem").write_bytes(key_pem(key))
    http0 = services(ExampleService, "service-http0")
    http1 = services(ExampleService, "service-http1")
    https = services(ExampleService, "service-https", _tls_server_ctx(tmp_path, "service-https"))
    proxy = RunningExample("tls-sni/envoy.yaml", {"service-http0": http0.port, "service-http1": http1.port,
                                                 "service-https": https.port})
    client = None
    try:
        port = proxy.port()
        for domain, service in (("domain1", "service-http0"), ("domain2", "service-http1"),
                                ("domain3", "service-https")):
            answer = _curl_json(f"https://{domain}.example.com:{port}/", "-k", "--resolve",
                                f"{domain}.example.com:{port}:127.0.0.1")
            assert answer["hostname"] == service, domain
        # The example's client proxy: plain HTTP in, TLS out with each route's SNI.
        client = RunningExample("tls-sni/envoy-client.yaml", {"proxy": port})
        for domain, service in (("domain1", "service-http0"), ("domain2", "service-http1"),
                                ("domain3", "service-https")):
            assert _curl_json(f"http://localhost:{client.port()}/{domain}")["hostname"] == service
    finally:
        if client is not None:
            client.stop()
        proxy.stop()


# -- tls-inspector: chains chosen by transport protocol and ALPN --------------------------------

def test_tls_inspector_example(services, tmp_path):
    https0 = services(ExampleService, "service-https0", _tls_server_ctx(tmp_path, "service-https0"))
    https1 = services(ExampleService, "service-https1", _tls_server_ctx(tmp_path, "service-https1"))
    http = services(ExampleService, "service-http")
    ex = RunningExample("tls-inspector/envoy.yaml", {"service-https0": https0.port,
                                                     "service-https1": https1.port, "service-http": http.port})
    try:
        port = ex.port()
        assert _curl_json(f"https://localhost:{port}/", "-k", "--http1.1")["hostname"] == "service-https0"
        assert _curl_json(f"https://localhost:{port}/", "-k", "--http2")["hostname"] == "service-https1"
        assert _curl_json(f"http://localhost:{port}/")["hostname"] == "service-http"
        c = dict(ex.server.stats.snapshot().counters)
        assert (c["tls_inspector.alpn_found"], c["tls_inspector.sni_found"], c["tls_inspector.tls_found"],
                c["tls_inspector.tls_not_found"]) == (2, 2, 2, 1)
    finally:
        ex.stop()


# -- local_ratelimit: the service's listener limits to 2 per 5 s, the admin's stays usable ------

def test_local_ratelimit_example(services):
    from tests.ports import free_port
    svc = services(ExampleService, "service")
    ex = RunningExample("local_ratelimit/envoy.yaml", {"service": svc.port, "admin": free_port()})
    try:
        stats_port, service_port = ex.port(0), ex.port(1)

        def head(port: int, path: str = "/") -> tuple[int, str]:
            r = subprocess.run(["curl", "-s", "-I", f"http://localhost:{port}{path}"],
                               capture_output=True, text=True, timeout=10)
            return int(r.stdout.split()[1]), r.stdout.lower()
        for _ in range(2):
            code, text = head(service_port)
            assert code == 200 and "x-local-rate-limit" not in text
        for _ in range(3):
            code, text = head(service_port)
            assert code == 429 and "x-local-rate-limit: true" in text
        code, _ = head(stats_port, "/stats/prometheus")  # through the proxy to its own admin
        assert code == 200
    finally:
        ex.stop()


@pytest.mark.parametrize("config", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml")
                                           if "configs" not in p.parts))  # xDS resource files
def test_every_vendored_example_loads_unchanged(config, tmp_path, monkeypatch):
    """`proxyctl validate` on the file exactly as published (tls-sni names its certificates
    relative to the working directory, as its verify.sh makes them)."""
    from click.testing import CliRunner

    from cli.main import main
    text = (EXAMPLES / config).read_text()
    if ("filters.http.lua.v3" in text or "cluster_specifiers.lua.v3" in text) and LUA_IN_PROCESS_SKIP:
        pytest.skip(LUA_IN_PROCESS_SKIP)
    zstd_refused = "compression.zstd." in (EXAMPLES / config).read_text() and zstd_api() is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "certs").mkdir()
    for domain in ("domain1", "domain2"):
        cert, key = CertAuthority().issue([f"{domain}.example.com"], self_signed=True)
        from tests.tls_certs import key_pem, pem
        (tmp_path / "certs" / f"{domain}.crt.pem").write_bytes(pem(cert))
        (tmp_path / "certs" / f"{domain}.key.pem").write_bytes(key_pem(key))
    lib = (EXAMPLES / config).parent / "lib"
    if lib.is_dir():  # the lua example's require("lib.mylibrary"), found from the working directory
        shutil.copytree(lib, tmp_path / "lib")
    result = CliRunner().invoke(main, ["validate", "-c", str(EXAMPLES / config)])
    if zstd_refused:  # no zstd binding on this interpreter (3.14t): refused at load, saying why
        assert result.exit_code != 0 and "no zstd binding" in result.output, result.output
        return
    assert result.exit_code == 0, result.output


# -- gzip: responses compressed by content type, uploads decompressed ----------------------------

class GzipService:
    """The gzip example's service: /file.json (10 MiB of JSON), /file.txt, and /upload, which
    answers with the size of the (decompressed) body it received."""

    def __init__(self) -> None:
        outer = self
        self.json = b'{"k": "' + b"v" * (10 * 1024 * 1024 - 9) + b'"}'  # exactly 10 MiB

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, ctype: str, body: bytes, extra=()) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/file.json":
                    self._send(200, "application/json", outer.json)
                else:
                    self._send(200, "text/plain", b"plain text " * 100)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(n)
                self._send(200, "text/plain", b"ok", [("decompressed-size", str(len(body)))])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_gzip_example(services, tmp_path):
    from tests.ports import free_port
    svc = services(GzipService)
    ex = RunningExample("gzip/envoy.yaml", {"service": svc.port, "admin": free_port()})
    try:
        port = ex.port(0)

        def headers_of(*args: str) -> str:
            r = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", *args], capture_output=True,
                               text=True, timeout=30)
            return r.stdout.lower()
        assert "content-encoding: gzip" in headers_of("-H", "Accept-Encoding: gzip",
                                                     f"http://localhost:{port}/file.json")
        assert "content-encoding: gzip" not in headers_of("-H", "Accept-Encoding: gzip",
                                                         f"http://localhost:{port}/file.txt")
        gz = tmp_path / "file.gz"
        subprocess.run(["curl", "-s", "-H", "Accept-Encoding: gzip", "-o", str(gz),
                        f"http://localhost:{port}/file.json"], check=True, timeout=30)
        assert 0 < gz.stat().st_size < 1024 * 1024
        out = headers_of("-X", "POST", "-H", "Content-Encoding: gzip", "--data-binary", f"@{gz}",
                         f"http://localhost:{port}/upload")
        assert "decompressed-size: 10485760" in out
        stats_port = ex.port(1)  # the admin through the proxy: compressed there
        assert "content-encoding: gzip" in headers_of("-H", "Accept-Encoding: gzip",
                                                     f"http://localhost:{stats_port}/stats/prometheus")
    finally:
        ex.stop()


# -- brotli and zstd: HTTPS responses compressed by content type, Envoy's stats compressed too ---

@pytest.mark.parametrize("example,encoding", [
    ("brotli", "br"),
    pytest.param("zstd", "zstd", marks=pytest.mark.skipif(zstd_api() is None, reason=ZSTD_MISSING))])
def test_brotli_and_zstd_examples(example, encoding, services, tmp_path):
    """As the examples' docs (example.rst) and verify.sh: over TLS on the first listener,
    /file.json (application/json) comes back encoded and decodes to the service's body,
    /file.txt does not; the admin's /stats/prometheus is plain on the admin port and encoded
    through the second TLS listener."""
    from tests.ports import free_port
    svc = services(GzipService)  # the same aiohttp-data-service: /file.json, /file.txt
    admin = free_port()
    ex = RunningExample(f"{example}/envoy.yaml", {"service": svc.port, "admin": admin})
    try:
        def get(url: str, *extra: str) -> tuple[str, bytes]:
            out = tmp_path / "body"
            r = subprocess.run(["curl", "-sk", "-D", "-", "-o", str(out), "-H", f"Accept-Encoding: {encoding}",
                                *extra, url], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            return r.stdout.lower(), out.read_bytes()

        port, stats_port = ex.port(0), ex.port(1)
        head, body = get(f"https://localhost:{port}/file.json")
        assert f"content-encoding: {encoding}" in head and len(body) < 1024 * 1024
        _, plain = get(f"https://localhost:{port}/file.json", "--compressed")  # curl decodes br / zstd
        assert plain == svc.json
        head, body = get(f"https://localhost:{port}/file.txt")
        assert "content-encoding" not in head and body == b"plain text " * 100
        head, _ = get(f"http://localhost:{admin}/stats/prometheus")
        assert "content-encoding" not in head
        head, body = get(f"https://localhost:{stats_port}/stats/prometheus")
        assert f"content-encoding: {encoding}" in head
        _, stats = get(f"https://localhost:{stats_port}/stats/prometheus", "--compressed")
        assert b"# TYPE envoy_" in stats  # decoded: the Prometheus text itself
    finally:
        ex.stop()


# -- rbac: the matcher tree denying requests without a docs Referer ------------------------------

def test_rbac_example(services):
    from tests.ports import free_port
    svc = services(ExampleService, "service")
    hosts = {"backend": svc.port}
    hosts["admin"] = free_port()
    ex = RunningExample("rbac/envoy.yaml", hosts)
    try:
        port = ex.port()

        def get(*args: str) -> str:
            return subprocess.run(["curl", "-s", *args, f"http://localhost:{port}/"], capture_output=True,
                                  text=True, timeout=10).stdout
        assert get() == "RBAC: access denied"
        assert json.loads(get("-H", "Referer: https://www.envoyproxy.io/docs/envoy"))["hostname"] == "service"
        stats = subprocess.run(["curl", "-s", f"http://127.0.0.1:{hosts['admin']}/stats?filter=rbac"],
                               capture_output=True, text=True, timeout=10).stdout
        assert "http.ingress_http.rbac.denied: 1" in stats and "http.ingress_http.rbac.allowed: 1" in stats
    finally:
        ex.stop()


# -- dynamic-config-fs: LDS and CDS from files, the upstream swapped by sed -i -------------------

def _dynamic_fs_on_loopback(text: str, hosts: dict[str, int]) -> str:
    """configs/*.yaml as docker-compose would serve them here: the listener on 127.0.0.1 (its
    port from `hosts["listener"]`), each service host name as 127.0.0.1 with its port."""
    doc = yaml.safe_load(text)
    for res in doc["resources"]:
        if "address" in res:  # the listener
            sa = res["address"]["socket_address"]
            sa["address"], sa["port_value"] = "127.0.0.1", hosts["listener"]
        for group in res.get("load_assignment", {}).get("endpoints", []):
            for ep in group["lb_endpoints"]:
                sa = ep["endpoint"]["address"]["socket_address"]
                sa["address"], sa["port_value"] = "127.0.0.1", hosts[sa["address"]]
    return yaml.safe_dump(doc)


def test_dynamic_config_fs_example(services, tmp_path):
    """verify.sh: the response comes from service1 and the config dump's
    dynamic_active_clusters (configs[1]) points at it; then cds.yaml gets
    `sed -i s/service1/service2/` (a rename onto the path) and, within 10 s, responses come
    from service2 and the dump points there."""
    s1 = services(ExampleService, "service1")
    s2 = services(ExampleService, "service2")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listener_port = probe.getsockname()[1]
    hosts = {"service1": s1.port, "service2": s2.port, "listener": listener_port}
    src = EXAMPLES / "dynamic-config-fs"
    lib = tmp_path / "var-lib-envoy"
    lib.mkdir()
    for name in ("lds.yaml", "cds.yaml"):
        (lib / name).write_text(_dynamic_fs_on_loopback((src / "configs" / name).read_text(), hosts))
    raw = yaml.safe_load((src / "envoy.yaml").read_text().replace("/var/lib/envoy", str(lib)))
    raw["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    server = Server(parse_bootstrap(raw), ServerOptions("<example>", 1, 5.0, "fast", disable_hot_restart=True))
    thread = threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    assert server.wait_ready(10)
    admin = f"http://127.0.0.1:{server.admin.port}"
    try:
        assert _curl_json(f"http://localhost:{listener_port}")["hostname"] == "service1"
        active = _curl_json(f"{admin}/config_dump")["configs"][1]["dynamic_active_clusters"]
        assert f'"port_value": {s1.port}' in json.dumps(active)
        # verify.sh: sed -i s/service1/service2/ /var/lib/envoy/cds.yaml (sed -i renames).
        swapped = (src / "configs" / "cds.yaml").read_text().replace("service1", "service2")
        (lib / "cds.yaml.sed").write_text(_dynamic_fs_on_loopback(swapped, hosts))
        (lib / "cds.yaml.sed").rename(lib / "cds.yaml")
        deadline = time.monotonic() + 10
        while _curl_json(f"http://localhost:{listener_port}")["hostname"] != "service2":
            assert time.monotonic() < deadline, "cds.yaml swap not applied within 10 s"
            time.sleep(0.2)
        active = _curl_json(f"{admin}/config_dump")["configs"][1]["dynamic_active_clusters"]
        assert f'"port_value": {s2.port}' in json.dumps(active)
    finally:
        server.request_shutdown()
        thread.join(15)


# -- ext_authz: an HTTP authorization service decides; x-current-user reaches the service ------

def token_auth_service():
    """The ext_authz example's HTTP authorization service (auth/http-service/server.js):
    `Authorization: Bearer <token>` for a token of users.json gets 200 with x-current-user,
    anything else 403."""
    from tests.integration.servers import DecidingService
    users = {"token1": "user1", "token2": "user2", "token3": "user3"}

    def decide(path, headers):
        kind, _, token = headers.get("authorization", "").partition(" ")
        user = users.get(token) if kind == "Bearer" else None
        return (200, [("x-current-user", user)], b"") if user else (403, [], b"")
    return DecidingService(decide)


def test_ext_authz_http_service_example(services):
    """verify.sh's http-service steps: 403 without a token, 200 with `Bearer token1`; the
    service then sees the x-current-user the authorization service named."""
    svc = services(ExampleService, "upstream-service")
    auth = services(token_auth_service)
    ex = RunningExample("ext_authz/http-service.yaml",
                        {"upstream-service": svc.port, "ext_authz-http-service": auth.port})
    try:
        url = f"http://localhost:{ex.port()}/service"
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                           capture_output=True, text=True, timeout=10)
        assert r.stdout == "403"
        assert not svc.requests
        got = _curl_json(url, "-H", "Authorization: Bearer token1")
        assert got["hostname"] == "upstream-service"
        assert got["headers"]["x-current-user"] == "user1"
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                            "Authorization: Bearer nope", url], capture_output=True, text=True, timeout=10)
        assert r.stdout == "403"
    finally:
        ex.stop()


def _status(url: str, *args: str) -> str:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, url],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def test_ext_authz_grpc_service_example(services):
    """The README's gRPC-service steps (config/grpc-service/v3.yaml, the default front-envoy):
    403 without a token, 200 with `Bearer token1` and the service sees x-current-user: user1,
    which the example's Go authorization server (auth/grpc-service, here
    tests/grpc_authz_server.py with the same users.json) sets; a check goes over gRPC (HTTP/2)
    to the ext_authz-grpc-service cluster."""
    from tests.grpc_authz_server import GrpcAuthzServer
    svc = services(ExampleService, "upstream-service")
    auth = services(GrpcAuthzServer)
    ex = RunningExample("ext_authz/grpc-service/v3.yaml",
                        {"upstream-service": svc.port, "ext_authz-grpc-service": auth.port})
    try:
        url = f"http://localhost:{ex.port()}/service"
        assert _status(url) == "403"
        assert not svc.requests
        got = _curl_json(url, "-H", "Authorization: Bearer token1")
        assert got["hostname"] == "upstream-service"
        assert got["headers"]["x-current-user"] == "user1"
        assert _status(url, "-H", "Authorization: Bearer nope") == "403"
        assert len(auth.checks) == 3
        assert auth.checks[1].attributes.request.http.headers["authorization"] == "Bearer token1"
        assert auth.requests[1][2]["grpc:x-envoy-expected-rq-timeout-ms"] == "250"   # timeout: 0.250s
    finally:
        ex.stop()


def test_ext_authz_opa_service_example(services):
    """The README's OPA steps (config/opa-service/v3.yaml): the check goes over gRPC to the
    ext_authz-opa-service cluster; with the example's policy (policy.rego: GET allowed with
    x-current-user: OPA), played by the test gRPC server, GET /service gets 200 and the service
    sees x-current-user: OPA, POST gets 403."""
    from tests.grpc_authz_server import GrpcAuthzServer
    svc = services(ExampleService, "upstream-service")
    opa = services(GrpcAuthzServer, "opa", "opa")
    ex = RunningExample("ext_authz/opa-service/v3.yaml",
                        {"upstream-service": svc.port, "ext_authz-opa-service": opa.port})
    try:
        url = f"http://localhost:{ex.port()}/service"
        got = _curl_json(url)
        assert got["headers"]["x-current-user"] == "OPA"
        assert _status(url, "-X", "POST") == "403"
        assert [c.attributes.request.http.method for c in opa.checks] == ["GET", "POST"]
    finally:
        ex.stop()


# -- grpc-bridge: an HTTP/1.1 gRPC client, the client proxy's bridge, the server proxy, gRPC ----

def test_grpc_bridge_example():
    """The grpc-bridge example's two proxies as published: an HTTP/1.1 client posts a gRPC
    message to the client proxy (grpc_http1_bridge, add_user_agent, an HTTP/1.1 upstream),
    which reaches the server proxy (route match `grpc: {}`, HTTP/2 upstream), which reaches a
    real gRPC server. As with real Envoy 1.40 (checked with both example bootstraps run by
    Envoy): a successful call's trailers are dropped by the server proxy's HTTP/1.1 codec (no
    enable_trailers), so the client gets 200 and the message, chunked, without grpc-status; a
    failed call's trailers-only answer reaches it as it is (200, grpc-status and grpc-message
    in the headers, content-length 0)."""
    import struct
    import urllib.request
    from tests.integration.grpc_peers import EchoBackend

    backend = EchoBackend()
    server = RunningExample("grpc-bridge/server-envoy-proxy.yaml", {"grpc-server": backend.port})
    client = RunningExample("grpc-bridge/client-envoy-proxy.yaml", {"grpc-server-proxy": server.port()})
    try:
        def call(message: bytes) -> tuple[int, dict, bytes]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{client.port()}/test.Echo/Unary", method="POST",
                data=b"\0" + struct.pack(">I", len(message)) + message,
                # The example's client sends no `te: trailers`: its Go server does not ask for
                # it, grpclib (standing in here) does; both proxies pass it on.
                headers={"host": "grpc", "content-type": "application/grpc", "te": "trailers"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
            except urllib.error.HTTPError as e:
                return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
        status, headers, body = call(b"hello")
        assert status == 200 and "grpc-status" not in headers
        assert body == b"\0" + struct.pack(">I", 5) + b"olleh"
        assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
        status, headers, body = call(b"missing")
        assert (status, body, headers["content-length"]) == (200, b"", "0")
        assert (headers["grpc-status"], headers["grpc-message"]) == ("5", "no such thing")
    finally:
        client.stop()
        server.stop()
        backend.close()


# -- route-mirror: requests copied to a mirror cluster with a -shadow host -----------------------

def test_route_mirror_example(services):
    """verify.sh: /service/1 answers from service1 and is mirrored to service1-mirror with
    Host localhost-shadow:<port>; /service/2 is mirrored where x-mirror-cluster says, and
    nowhere when the header is missing or names no cluster."""
    import time
    svc = {name: services(ExampleService, name) for name in
           ("service1", "service1-mirror", "service2", "service2-mirror")}
    ex = RunningExample("route-mirror/envoy.yaml", {name: s.port for name, s in svc.items()})
    try:
        port = ex.port()
        assert _curl_json(f"http://localhost:{port}/service/1")["hostname"] == "service1"
        got = _curl_json(f"http://localhost:{port}/service/2", "-H", "x-mirror-cluster: service2-mirror")
        assert got["hostname"] == "service2"
        assert _curl_json(f"http://localhost:{port}/service/2")["hostname"] == "service2"
        assert _curl_json(f"http://localhost:{port}/service/2", "-H",
                          "x-mirror-cluster: service2-mirror-non-existent")["hostname"] == "service2"
        deadline = time.monotonic() + 5  # the copies go beside the answers
        while time.monotonic() < deadline and not (svc["service1-mirror"].requests and svc["service2-mirror"].requests):
            time.sleep(0.02)
        time.sleep(0.2)
        assert [r["host"] for r in svc["service1"].requests] == [f"localhost:{port}"]
        assert [r["host"] for r in svc["service1-mirror"].requests] == [f"localhost-shadow:{port}"]
        assert len(svc["service2"].requests) == 3
        assert [r["host"] for r in svc["service2-mirror"].requests] == [f"localhost-shadow:{port}"]
    finally:
        ex.stop()


# -- lua: a common script with require(), and a route-only script on a second Lua filter ------------

def test_lua_example(services, monkeypatch):
    """verify.sh: every response's service saw `foo: bar` (the first filter's script, from
    lib/mylibrary.lua by require, which the example's image puts where Envoy starts); on
    /multiple/lua/scripts the second filter (no default script) runs its route's script and the
    response carries `header_key_1: header_value_1`."""
    if LUA_IN_PROCESS_SKIP:
        pytest.skip(LUA_IN_PROCESS_SKIP)
    monkeypatch.chdir(EXAMPLES / "lua")  # require() looks in ./lib, as from the image's /
    svc = services(ExampleService, "web_service")
    ex = RunningExample("lua/envoy.yaml", {"web_service": svc.port})
    try:
        port = ex.port()
        assert _curl_json(f"http://localhost:{port}")["headers"]["foo"] == "bar"
        r = subprocess.run(["curl", "-s", "-i", f"http://localhost:{port}/multiple/lua/scripts"],
                           capture_output=True, text=True, timeout=10)
        head, _, body = r.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
        assert "header_key_1: header_value_1" in head.lower()
        assert json.loads(body)["headers"]["foo"] == "bar"
        r = subprocess.run(["curl", "-s", "-i", f"http://localhost:{port}/other"],
                           capture_output=True, text=True, timeout=10)
        assert "header_key_1" not in r.stdout.split("\n\n")[0]
    finally:
        ex.stop()


# -- dynamic-config-cp: CDS/LDS over ADS and RDS over its own stream from a control plane --------

def _example_snapshot(upstream: str, version: str, hosts: dict[str, int]) -> dict:
    """The example's resource.go snapshot, on loopback as docker-compose would wire it: the
    listener on 127.0.0.1 (its port from `hosts["listener"]`), the service host name as
    127.0.0.1 with its port."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("dynamic_config_cp_resource",
                                                  EXAMPLES / "dynamic-config-cp" / "resource.py")
    resource = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(resource)
    snap = resource.generate_snapshot(upstream, version)
    for _, items in snap.values():
        for res in items:
            if "filter_chains" in res:
                sa = res["address"]["socket_address"]
                sa["address"], sa["port_value"] = "127.0.0.1", hosts["listener"]
            for group in res.get("load_assignment", {}).get("endpoints", []):
                for ep in group["lb_endpoints"]:
                    sa = ep["endpoint"]["address"]["socket_address"]
                    sa["address"], sa["port_value"] = "127.0.0.1", hosts[sa["address"]]
    return snap


def test_dynamic_config_cp_example(services):
    """verify.sh with our control plane (tests/integration/xds_control_plane.py) standing in
    for go-control-plane: with the control plane down the listener port is closed and only the
    static xds_cluster is in the config dump; once it is up, responses come from service1 and
    dynamic_active_clusters has version "1"; the control plane goes down and everything stays;
    it comes back serving service2 as version "2" and responses follow."""
    from tests.integration.xds_control_plane import ControlPlane
    s1 = services(ExampleService, "service1")
    s2 = services(ExampleService, "service2")
    cp = ControlPlane()
    cp.stop()                       # down, its port known: the proxy starts without it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listener_port = probe.getsockname()[1]
    hosts = {"service1": s1.port, "service2": s2.port, "listener": listener_port,
             "go-control-plane": cp.port}
    raw = yaml.safe_load((EXAMPLES / "dynamic-config-cp" / "envoy.yaml").read_text())
    raw = _on_loopback(raw, hosts)
    server = Server(parse_bootstrap(raw), ServerOptions("<example>", 1, 5.0, "fast", disable_hot_restart=True))
    thread = threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    assert server.wait_ready(20)
    admin = f"http://127.0.0.1:{server.admin.port}"

    def hostname() -> str | None:
        try:
            return _curl_json(f"http://localhost:{listener_port}")["hostname"]
        except (AssertionError, json.JSONDecodeError):
            return None

    def wait_for(expected: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while hostname() != expected:
            assert time.monotonic() < deadline, f"no response from {expected} within {seconds} s"
            time.sleep(0.2)

    def active_clusters() -> str:
        dump = _curl_json(f"{admin}/config_dump")["configs"][1]
        return json.dumps(dump.get("dynamic_active_clusters", "NO_CLUSTERS"))

    try:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", listener_port)) != 0   # nothing listens yet
        static = json.dumps(_curl_json(f"{admin}/config_dump")["configs"][1]["static_clusters"])
        assert '"xds_cluster"' in static and f'"port_value": {cp.port}' in static
        assert active_clusters() == '"NO_CLUSTERS"'
        # Bring up the control plane.
        for type_url, (version, items) in _example_snapshot("service1", "1", hosts).items():
            cp.set(type_url, version, items)
        cp.start()
        wait_for("service1", 30)
        assert '"version_info": "1"' in active_clusters()
        assert f'"port_value": {s1.port}' in active_clusters()
        # Bring down the control plane: the config stays.
        cp.stop()
        time.sleep(1.0)
        assert hostname() == "service1"
        assert '"version_info": "1"' in active_clusters()
        # resource.go edited (service1 -> service2, "1" -> "2"), the control plane back up.
        for type_url, (version, items) in _example_snapshot("service2", "2", hosts).items():
            cp.set(type_url, version, items)
        cp.start()
        wait_for("service2", 40)
        assert '"version_info": "2"' in active_clusters()
        assert f'"port_value": {s2.port}' in active_clusters()
    finally:
        server.request_shutdown()
        thread.join(15)
        cp.close()


# -- cache: responses stored, served with age, validated when stale or no-cache ------------------

# The example's ci-responses.yaml (what verify.sh runs against): response id -> body, headers.
CACHE_RESPONSES = {
    "valid-for-minute": ("This response will stay fresh for one minute",
                         {"cache-control": "max-age=4", "custom-header": "any value"}),
    "private": ("This is a private response, it will not be cached by Envoy",
                {"cache-control": "private"}),
    "no-cache": ("This response can be cached, but it has to be validated on each request",
                 {"cache-control": "max-age=0, no-cache"}),
}


class CacheExampleService:
    """The cache example's service.py: GET /service/<n>/<id> answers the stored response's body
    with `Response generated at: <date>` appended (the date header is that same time), its
    headers, and an etag of the stored body alone; If-None-Match with that etag gets 304."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            now = ""

            def log_message(self, *a):
                pass

            def date_time_string(self, timestamp=None):
                return self.now or super().date_time_string(timestamp)

            def do_GET(self):
                import hashlib
                import re
                self.now = super().date_time_string()
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                parts = self.path.split("/")
                stored = CACHE_RESPONSES.get(parts[-1]) if len(parts) == 4 else None
                if stored is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                text, headers = stored
                etag = f'"{hashlib.sha1(text.encode()).hexdigest()}"'
                asked = re.findall(r'\*|(?:W/)?"[^"]*"', self.headers.get("if-none-match", ""))
                if any(t == "*" or t.removeprefix("W/") == etag for t in asked):
                    self.send_response(304)
                    self.send_header("etag", etag)
                    self.end_headers()
                    return
                body = f"{text}\nResponse generated at: {self.now}\n".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; charset=utf-8")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("etag", etag)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _cache_response(port: int, path: str) -> tuple[int, dict, list[str]]:
    """(status, headers, the HH:MM:SS times in the date header then the body), as verify.sh's
    `grep -oP '\\d\\d:\\d\\d:\\d\\d'` sees them."""
    import re
    r = subprocess.run(["curl", "-s", "-i", "--max-time", "5", f"http://localhost:{port}{path}"],
                       capture_output=True, text=True, timeout=15)
    head, _, body = r.stdout.partition("\n\n")
    lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, re.findall(r"\d\d:\d\d:\d\d", r.stdout)


def test_cache_example(services):
    """verify.sh with ci-responses.yaml: valid-for-minute (max-age=4) comes from the origin, is
    served from the cache 2 s later (age), and is validated 3 s after that (a date after its
    generation time, no age); private always comes from the origin; no-cache comes from the
    origin, then is validated on each request."""
    svc = services(CacheExampleService)
    ex = RunningExample("cache/envoy.yaml", {"service1": svc.port, "service2": svc.port})
    port = ex.port()

    def from_origin(path):
        status, headers, times = _cache_response(port, path)
        assert status == 200 and "age" not in headers and times[0] == times[1], (headers, times)

    def cached(path):  # (the stored date too: "the same exact response", example.rst)
        status, headers, times = _cache_response(port, path)
        assert status == 200 and "age" in headers and times[0] == times[1], (headers, times)

    def validated(path):
        status, headers, times = _cache_response(port, path)
        assert status == 200 and "age" not in headers and times[0] != times[1], (headers, times)

    try:
        from_origin("/service/1/valid-for-minute")
        time.sleep(2)
        cached("/service/1/valid-for-minute")
        time.sleep(3)
        validated("/service/1/valid-for-minute")
        assert svc.requests[-1][1].get("if-none-match", "").startswith('"')
        for _ in range(4):
            from_origin("/service/1/private")
        from_origin("/service/1/no-cache")
        for _ in range(4):
            time.sleep(1)
            validated("/service/1/no-cache")
        # The two services' entries are apart (their paths differ): service 2 starts empty.
        from_origin("/service/2/valid-for-minute")
    finally:
        ex.stop()


# -- lua-cluster-specifier: a route's cluster chosen by envoy_on_route ------------------------------

def test_lua_cluster_specifier_example():
    """verify.sh: a plain request reaches example_cluster (the proxy's own second listener, a
    direct response `Helo!`); with `header_key: fake` the script names fake_cluster, which does
    not exist: 503."""
    if LUA_IN_PROCESS_SKIP:
        pytest.skip(LUA_IN_PROCESS_SKIP)
    from tests.ports import free_port
    raw = yaml.safe_load((EXAMPLES / "lua-cluster-specifier/envoy.yaml").read_text())
    front, back = free_port(), free_port()
    res = raw["static_resources"]
    for lis, port in zip(res["listeners"], (front, back)):
        lis["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]["port_value"] = back
    server = Server(parse_bootstrap(raw), ServerOptions("<example>", 1, 5.0, "fast",
                                                        disable_hot_restart=True))
    thread = threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    assert server.wait_ready(10)
    try:
        r = subprocess.run(["curl", "-s", "-i", f"http://localhost:{front}/"],
                           capture_output=True, text=True, timeout=10)
        assert r.stdout.startswith("HTTP/1.1 200 OK") and r.stdout.endswith("Helo!\n"), r.stdout
        r = subprocess.run(["curl", "-s", "-i", f"http://localhost:{front}/", "-H", "header_key: fake"],
                           capture_output=True, text=True, timeout=10)
        assert r.stdout.startswith("HTTP/1.1 503 Service Unavailable"), r.stdout
    finally:
        server.request_shutdown()
        thread.join(15)


# -- redis: the redis_proxy filter in front of a real redis-server ------------------------------

def test_redis_example():
    """verify.sh: SET and GET through the proxy with redis-cli, then the
    `redis.egress_redis.command.*` stats on the admin."""
    from tests.ports import free_port
    from tests.redis_peers import REDIS_SERVER, RedisServer
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    redis = RedisServer()
    admin = free_port()
    ex = RunningExample("redis/envoy.yaml", {"redis": redis.port, "admin": admin})
    try:
        def cli(*args: str) -> str:
            r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(ex.port()), *args],
                               capture_output=True, text=True, timeout=10)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()
        assert cli("set", "foo", "FOO") == "OK" and cli("set", "bar", "BAR") == "OK"
        assert (cli("get", "foo"), cli("get", "bar")) == ("FOO", "BAR")
        assert redis.keys() == [b"bar", b"foo"]   # they reached the real server
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?usedonly&filter=redis.egress_redis.command",
                                    timeout=5) as r:
            stats = dict(line.split(": ") for line in r.read().decode().splitlines())
        assert stats["redis.egress_redis.command.set.success"] == "2"
        assert stats["redis.egress_redis.command.get.total"] == "2"
    finally:
        ex.stop()
        redis.close()
