"""Listener access logs (`Listener.access_log`) end to end, compared with real Envoy 1.40.

One bootstrap, run by real Envoy and by ftproxy in turn against the same real upstreams: an
HTTP listener (direct responses, a named filter chain), a listener whose only chain matches
10.0.0.0/8 (a loopback client finds no chain: NR), a tcp_proxy listener to an echo upstream,
one to a port nobody listens on (UF,URX), and one with a tls_inspector and a 0.2 s
listener_filters_timeout (a silent client times out; a client that closes at once is a listener
filter remote close). Each listener logs every connection as a JSON line (file logger); the tcp
listeners also log through a filtered file logger (response_flag_filter UF: one line) and the
gRPC TCP logger (envoy.access_loggers.tcp_grpc) to a real AccessLogService. The lines are keyed
by the client's own port (each action's socket), so each is compared with Envoy's line for
the same action; durations and start times are checked for shape, not value.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port

from ..als_server import AlsServer
from ..differential.proxies import PortReservation, envoy_binary
from .harness import ProxyUnderTest, static_cluster
from .test_grpc_access_log import _h2_cluster, _wait_ready, entries, masked

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
LISTENERS = ("http", "nomatch", "tcp", "dead", "slow")
# Every operator a listener log can fill, one JSON key each.
FORMAT = {
    "remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "local": "%DOWNSTREAM_LOCAL_ADDRESS%", "direct": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%", "code": "%RESPONSE_CODE%",
    "chain": "%FILTER_CHAIN_NAME%", "duration": "%DURATION%", "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%", "protocol": "%PROTOCOL%", "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%", "failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "sni": "%REQUESTED_SERVER_NAME%", "route": "%ROUTE_NAME%", "start": "%START_TIME%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "user_agent": "%REQ(USER-AGENT)%",
}


def _file_log(path: Path, log_filter: dict | None = None) -> dict:
    out = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path), "log_format": {"json_format": FORMAT}}}
    if log_filter:
        out["filter"] = log_filter
    return out


def _tcp_grpc(log_name: str) -> dict:
    return {"name": "envoy.access_loggers.tcp_grpc", "typed_config": {
        "@type": TCP_GRPC, "common_config": {
            "log_name": log_name, "transport_api_version": "V3",
            "buffer_flush_interval": "0.05s",
            "grpc_service": {"envoy_grpc": {"cluster_name": "als"}}}}}


def _tcp_proxy(cluster: str, access_log: list | None = None) -> dict:
    cfg = {"@type": TCP_TYPE, "stat_prefix": cluster, "cluster": cluster}
    if access_log:
        cfg["access_log"] = access_log
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}


def _text_log(path: Path, text: str) -> dict:
    return {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path), "log_format": {"text_format_source": {
            "inline_string": text}}}}


def bootstrap(ports: dict[str, int], upstream: int, dead: int, als: int, logs: Path) -> dict:
    main_log, uf_log = logs / "listeners.log", logs / "uf.log"
    uf_filter = {"response_flag_filter": {"flags": ["UF"]}}
    # The HCM's own log: its streams' %FILTER_CHAIN_NAME% is the connection's chain too.
    hcm_log = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(logs / "hcm.log"), "log_format": {"json_format": {
            "path": "%REQ(:PATH)%", "chain": "%FILTER_CHAIN_NAME%"}}}}
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": "ingress", "access_log": [hcm_log],
        "route_config": {"virtual_hosts": [{
            "name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
                "status": 200, "body": {"inline_string": "hello"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}

    def listener(name: str, chains: list, loggers: list, **extra) -> dict:
        return {"name": name, "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": ports.get(name, 0)}},
                "filter_chains": chains, "access_log": loggers, **extra}

    listeners = [
        listener("http", [{"name": "chain_a", "filters": [hcm]}], [_file_log(main_log)]),
        listener("nomatch", [{"name": "only_ten", "filter_chain_match": {"source_prefix_ranges": [
            {"address_prefix": "10.0.0.0", "prefix_len": 8}]}, "filters": [_tcp_proxy("echo")]}],
            [_file_log(main_log)]),
        # order.log: the listener's line and tcp_proxy's own, in the order they are logged.
        listener("tcp", [{"name": "tcp_chain", "filters": [_tcp_proxy("echo", [
                     _text_log(logs / "order.log", "tcp_proxy %FILTER_CHAIN_NAME% %BYTES_SENT%\n")])]}],
                 [_file_log(main_log), _file_log(uf_log, uf_filter), _tcp_grpc("tcp_listener"),
                  _text_log(logs / "order.log", "listener %FILTER_CHAIN_NAME% %BYTES_SENT%\n")]),
        listener("dead", [{"filters": [_tcp_proxy("dead")]}],
                 [_file_log(main_log), _file_log(uf_log, uf_filter), _tcp_grpc("tcp_listener")]),
        listener("slow", [{"name": "never", "filters": [_tcp_proxy("echo")]}],
                 [_file_log(main_log)], listener_filters_timeout="0.2s", listener_filters=[{
                     "name": "envoy.filters.listener.tls_inspector", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                                  "tls_inspector.v3.TlsInspector"}}]),
    ]
    cfg = {"static_resources": {"listeners": listeners, "clusters": [
        static_cluster("echo", upstream), static_cluster("dead", dead), _h2_cluster("als", als)]}}
    if "admin" in ports:
        cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": ports["admin"]}}}
    return cfg


# -- the actions, each on its own client socket -------------------------------------------------
def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def drive(ports: dict[str, int]) -> dict[int, str]:
    """client port -> action name, for every connection made."""
    actions: dict[int, str] = {}
    # HTTP/1.1: two requests on one connection, then the client closes.
    conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=5)
    for path in ("/a", "/b"):
        conn.request("GET", path, headers={"host": "h", "user-agent": "t"})
        r = conn.getresponse()
        assert r.read() == b"hello"
    actions[conn.sock.getsockname()[1]] = "http"
    conn.close()
    # No filter chain matches a loopback client: closed unread.
    s = _connect(ports["nomatch"])
    actions[s.getsockname()[1]] = "nomatch"
    assert _read_all(s) == b""
    s.close()
    # tcp_proxy to the echo upstream: 5 bytes each way.
    s = _connect(ports["tcp"])
    actions[s.getsockname()[1]] = "tcp"
    s.sendall(b"hello")
    got = b""
    while len(got) < 5:
        got += s.recv(16)
    assert got == b"HELLO"
    s.close()
    # tcp_proxy to a port nobody listens on.
    s = _connect(ports["dead"])
    actions[s.getsockname()[1]] = "dead"
    assert _read_all(s) == b""
    s.close()
    # The tls_inspector waits for a ClientHello: a silent client is closed at the timeout; one
    # that closes first is a listener filter remote close.
    s = _connect(ports["slow"])
    actions[s.getsockname()[1]] = "slow_timeout"
    t0 = time.monotonic()
    assert _read_all(s) == b""
    assert time.monotonic() - t0 >= 0.15
    s.close()
    s = _connect(ports["slow"])
    actions[s.getsockname()[1]] = "slow_close"
    s.close()
    return actions


def _lines(path: Path, n: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines() if x.strip()]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _text_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _by_action(lines: list[dict], actions: dict[int, str], ports: dict[str, int]) -> dict:
    """Each line keyed by its action; ports of this run's listeners and clients masked."""
    names = {port: f"<{name}>" for name, port in ports.items()}
    out = {}
    for line in lines:
        port = int(line["remote"].rsplit(":", 1)[1])
        action = actions[port]
        for key in ("remote", "direct"):
            line[key] = line[key].rsplit(":", 1)[0] + ":<client>"
        host, _, lport = line["local"].rpartition(":")
        line["local"] = f"{host}:{names.get(int(lport), lport)}"
        assert action not in out, (action, line)
        out[action] = line
    return out


def _run_envoy(cfg: dict, tmp_path: Path, reservation: PortReservation) -> subprocess.Popen:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reservation.release()
    return subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1",
                             "--disable-hot-restart", "-l", "error", "--drain-time-s", "0",
                             "--file-flush-interval-msec", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def dead_port():
    port = free_port()  # nothing listens there
    return port


@pytest.fixture
def echo_upstream():
    """A TCP upstream answering each read in upper case."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(65536):
                c.sendall(data.upper())

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_listener_logs_match_envoys(tmp_path, dead_port, echo_upstream):
    """Each connection's listener log line (HTTP/1.1 connection, no matching chain, tcp_proxy,
    a dead upstream, a listener filter timeout and remote close) has the same fields under
    real Envoy 1.40 and ftproxy; the UF filter passes one line; the tcp_grpc entries match."""
    results = {}
    for kind in ("envoy", "ftproxy"):
        logs = tmp_path / kind
        logs.mkdir()
        als = AlsServer()
        try:
            if kind == "envoy":
                reservation = PortReservation()
                ports = {n: reservation.take() for n in (*LISTENERS, "admin")}
                proc = _run_envoy(bootstrap(ports, echo_upstream, dead_port, als.port, logs),
                                  tmp_path, reservation)
                try:
                    _wait_ready(ports["admin"], proc)
                    actions = drive(ports)
                    lines = _lines(logs / "listeners.log", len(actions))
                    uf = _lines(logs / "uf.log", 1)
                    hcm_lines = _lines(logs / "hcm.log", 2)
                    order = _text_lines(logs / "order.log", 2)
                    assert als.wait(lambda: len(als.tcp_entries()) >= 2)
                finally:
                    proc.terminate()
                    proc.wait(10)
            else:
                p = ProxyUnderTest(bootstrap({}, echo_upstream, dead_port, als.port, logs))
                try:
                    ports = {n: p.server.listener_port(n) for n in LISTENERS}
                    actions = drive(ports)
                    lines = _lines(logs / "listeners.log", len(actions))
                    uf = _lines(logs / "uf.log", 1)
                    hcm_lines = _lines(logs / "hcm.log", 2)
                    order = _text_lines(logs / "order.log", 2)
                    assert als.wait(lambda: len(als.tcp_entries()) >= 2)
                finally:
                    p.stop()
            results[kind] = (_by_action(lines, actions, ports), _by_action(uf, actions, ports),
                             entries(als), hcm_lines, order)
        finally:
            als.close()

    theirs, ours = results["envoy"], results["ftproxy"]
    assert set(ours[0]) == set(theirs[0]) == {"http", "nomatch", "tcp", "dead", "slow_timeout",
                                               "slow_close"}
    for action, t in theirs[0].items():
        o = ours[0][action]
        for line in (o, t):
            assert isinstance(line.pop("duration"), int)
            assert line.pop("start").endswith("Z")
        assert o == t, (action, o, t)
    # What the comparison covers, spelled out on ftproxy's lines.
    lines = ours[0]
    assert lines["http"]["protocol"] == "HTTP/1.1" and lines["http"]["chain"] == "chain_a"
    assert lines["http"]["code"] == 0 and lines["http"]["user_agent"] is None
    assert (lines["nomatch"]["flags"], lines["nomatch"]["details"]) == ("NR", "filter_chain_not_found")
    assert (lines["tcp"]["rx"], lines["tcp"]["tx"], lines["tcp"]["cluster"]) == (5, 5, "echo")
    assert lines["dead"]["flags"] == "UF,URX" and lines["dead"]["chain"] is None
    assert lines["slow_timeout"]["chain"] is None and lines["slow_timeout"]["flags"] == "-"
    assert ours[3] == theirs[3] == [{"path": "/a", "chain": "chain_a"},
                                    {"path": "/b", "chain": "chain_a"}]
    # The listener logs a tcp_proxy connection before tcp_proxy's own logger does.
    assert ours[4] == theirs[4] == ["listener tcp_chain 5", "tcp_proxy tcp_chain 5"]
    # The filtered logger: only the UF line.
    assert list(ours[1]) == list(theirs[1]) == ["dead"]
    # gRPC TCP entries: the same, times and ports masked.
    te, oe = theirs[2]["tcp_listener"], ours[2]["tcp_listener"]
    assert len(oe) == len(te) == 2
    key = lambda e: e[1]["common_properties"].get("upstream_cluster", "")  # noqa: E731
    for (tk, t), (ok, o) in zip(sorted(te, key=key), sorted(oe, key=key)):
        assert ok == tk == "tcp_logs"
        mo, mt = masked(o), masked(t)
        for part in ("common_properties", "connection_properties"):
            differ = {k: (mo[part].get(k), mt[part].get(k)) for k in set(mo[part]) | set(mt[part])
                      if mo[part].get(k) != mt[part].get(k)}
            assert not differ, (part, differ)
        assert mo == mt


def test_http_grpc_and_opentelemetry_loggers_log_a_listeners_connections(tmp_path):
    """The HTTP gRPC logger and the OpenTelemetry logger on a listener: one entry per
    connection (no request in it), the OTLP body rendered from the connection's facts."""
    from ..als_server import OtlpLogsCollector
    from .test_grpc_access_log import HTTP_GRPC, OTEL_TYPE
    als, otel = AlsServer(), OtlpLogsCollector()
    loggers = [
        {"name": "envoy.access_loggers.http_grpc", "typed_config": {"@type": HTTP_GRPC, "common_config": {
            "log_name": "listener_http", "transport_api_version": "V3", "buffer_flush_interval": "0.05s",
            "grpc_service": {"envoy_grpc": {"cluster_name": "als"}}}}},
        {"name": "envoy.access_loggers.open_telemetry", "typed_config": {
            "@type": OTEL_TYPE, "common_config": {
                "log_name": "listener_otel", "transport_api_version": "V3",
                "buffer_flush_interval": "0.05s", "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}}},
            "body": {"string_value": "%FILTER_CHAIN_NAME% %PROTOCOL% %BYTES_RECEIVED%"}}},
    ]
    cfg = bootstrap({}, 1, 1, als.port, tmp_path)
    listener = cfg["static_resources"]["listeners"][0]
    listener["access_log"] = loggers
    cfg["static_resources"]["listeners"] = [listener]
    cfg["static_resources"]["clusters"].append(_h2_cluster("otel", otel.port))
    p = ProxyUnderTest(cfg)
    try:
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", p.server.listener_port("http"), timeout=5)
            conn.request("GET", "/", headers={"host": "h"})
            assert conn.getresponse().read() == b"hello"
            conn.close()
        assert als.wait(lambda: len(als.http_entries()) >= 2)
        assert otel.wait(lambda: len(otel.records()) >= 2)
        for entry in als.http_entries():
            assert entry["protocol_version"] == "HTTP11"
            assert "request_headers" not in entry.get("request", {})
            assert "access_log_type" not in entry["common_properties"]   # NotSet
        bodies = sorted(r["body"]["string_value"] for r in otel.records())
        assert bodies == ["chain_a HTTP/1.1 54"] * 2, bodies   # the GET as http.client sends it
    finally:
        p.stop()
        als.close()
        otel.close()
