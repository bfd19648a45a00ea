"""Access logs written by the running proxy: a file logger with Envoy's default format and one
with json_format, read back from real files."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest

from .clients import request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

DEFAULT_LINE = re.compile(
    r'^\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] '
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<code>\d+) (?P<flags>\S+) '
    r'(?P<rx>\d+) (?P<tx>\d+) (?P<duration>\d+) (?P<ust>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" '
    r'"(?P<rid>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream>[^"]*)"$')

JSON_FORMAT = {"method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%",
               "flags": "%RESPONSE_FLAGS%", "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
               "upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%", "agent": "%REQ(USER-AGENT)%"}

# The connection-level facts of a request (the stream reads them off its connection).
CONN_FORMAT = ("%RESPONSE_CODE% %PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS% "
               "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %CONNECTION_ID% "
               "%REQ(X-REQUEST-ID)% %RESP(SERVER)%\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    up = EchoUpstream("service1")
    d = tmp_path_factory.mktemp("alog")
    text_path, json_path = str(d / "default.log"), str(d / "json.log")
    conn_path = str(d / "conn.log")
    routes = [{"match": {"prefix": "/api/"}, "route": {"cluster": "c1", "prefix_rewrite": "/v2/"}},
              {"match": {"prefix": "/echo"}, "route": {"cluster": "c1"}}]
    cfg = front_proxy_config(routes, [static_cluster("c1", up.port)], access_log=[
        {"name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOG, "path": text_path}},
        {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": json_path, "log_format": {"json_format": JSON_FORMAT}}},
        {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": conn_path, "log_format": {"text_format_source": {
                "inline_string": CONN_FORMAT}}}},
    ])
    p = ProxyUnderTest(cfg)
    p.conn_log = conn_path
    yield p, up, text_path, json_path
    p.stop()
    up.close()


def _wait_line(p, path: str, needle: str) -> str:
    found: list[str] = []

    def check():
        if os.path.exists(path):
            found[:] = [line for line in open(path).read().splitlines() if needle in line]
        return bool(found)
    assert p.wait_for(check), f"no line with {needle!r} in {path}"
    assert len(found) == 1, found
    return found[0]


def test_default_format_line_for_proxied_request(env):
    p, up, text_path, _ = env
    r = request(p.port, "/echo/one", method="POST", body=b"hello",
                headers={"user-agent": "itest/1.0", "x-request-id": "rid-default-1"}, host="svc.local")
    assert r.status == 200
    line = _wait_line(p, text_path, "rid-default-1")
    m = DEFAULT_LINE.match(line)
    assert m, line
    assert (m["method"], m["path"], m["protocol"]) == ("POST", "/echo/one", "HTTP/1.1")
    assert (m["code"], m["flags"]) == ("200", "-")
    assert int(m["rx"]) == 5
    assert int(m["tx"]) == len(r.body)
    assert m["ust"] == r.headers["x-envoy-upstream-service-time"]
    assert (m["ua"], m["authority"]) == ("itest/1.0", "svc.local")
    assert m["xff"] == "-"  # no use_remote_address and none sent: %REQ(X-FORWARDED-FOR)% is unset
    assert m["upstream"] == f"127.0.0.1:{up.port}"


def test_default_format_logs_original_path_after_prefix_rewrite(env):
    p, _, text_path, _ = env
    assert request(p.port, "/api/items", headers={"x-request-id": "rid-rewrite"}).status == 200
    m = DEFAULT_LINE.match(_wait_line(p, text_path, "rid-rewrite"))
    assert m and m["path"] == "/api/items"


def test_no_route_logged_with_nr_flag(env):
    p, _, text_path, json_path = env
    assert request(p.port, "/missing", headers={"x-request-id": "rid-nr"}).status == 404
    m = DEFAULT_LINE.match(_wait_line(p, text_path, "rid-nr"))
    assert m and (m["code"], m["flags"], m["upstream"]) == ("404", "NR", "-")
    entry = json.loads(_wait_line(p, json_path, '"/missing"'))
    assert entry["code"] == 404 and entry["flags"] == "NR"


def test_json_format_logger_writes_typed_json(env):
    p, up, _, json_path = env
    r = request(p.port, "/echo/json", headers={"user-agent": "json-agent"})
    assert r.status == 200
    entry = json.loads(_wait_line(p, json_path, '"/echo/json"'))
    assert entry["method"] == "GET" and entry["path"] == "/echo/json"
    assert entry["code"] == 200 and isinstance(entry["code"], int)
    assert entry["bytes_sent"] == len(r.body) and isinstance(entry["bytes_sent"], int)
    assert isinstance(entry["duration"], int)
    assert entry["upstream"] == f"127.0.0.1:{up.port}"
    assert entry["cluster"] == "c1" and entry["agent"] == "json-agent"


def test_json_format_response_flags_without_flags_is_dash(env):
    p, _, _, json_path = env
    assert request(p.port, "/echo/noflags").status == 200
    entry = json.loads(_wait_line(p, json_path, '"/echo/noflags"'))
    assert entry["flags"] == "-"


def test_reopen_logs_after_rotation_writes_to_a_new_file(tmp_path):
    """Log rotation as logrotate does it: rename the file, then POST /reopen_logs (what
    SIGUSR1 also does). Lines before the reopen stay in the renamed file; later ones go to a
    new file at the configured path. GET is refused (Envoy: mutating endpoints need POST)."""
    up = EchoUpstream("service1")
    path = str(tmp_path / "access.log")
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", up.port)], access_log=[
        {"name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOG, "path": path}}])
    p = ProxyUnderTest(cfg)
    try:
        assert request(p.port, "/", headers={"x-request-id": "before-rotation"}).status == 200
        _wait_line(p, path, "before-rotation")
        os.rename(path, path + ".1")
        assert p.admin("/reopen_logs")[0] == 405
        assert p.admin("/reopen_logs", "POST") == (200, "OK\n")
        assert os.path.exists(path)  # reopened (created) at once, before any new line
        assert request(p.port, "/", headers={"x-request-id": "after-rotation"}).status == 200
        _wait_line(p, path, "after-rotation")
        rotated = open(path + ".1").read()
        assert "before-rotation" in rotated and "after-rotation" not in rotated
        assert "before-rotation" not in open(path).read()
    finally:
        p.stop()
        up.close()


def _conn_facts(p, needle: str, head: bytes) -> tuple[list[str], tuple, tuple]:
    """Send `head` on a fresh client socket; the conn.log line with `needle`, and the
    client's own and the proxy's address of that socket."""
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(head)
        s.settimeout(5)
        while s.recv(65536):
            pass
        mine, theirs = s.getsockname(), s.getpeername()
    return _wait_line(p, p.conn_log, needle).split(" "), mine, theirs


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_connection_facts_of_a_proxied_request(env, version):
    p = env[0]
    rid = f"rid-conn-{version}"
    line, mine, theirs = _conn_facts(p, rid, (
        f"GET /echo/c HTTP/{version}\r\nHost: a\r\nx-request-id: {rid}\r\n"
        "Connection: close\r\n\r\n").encode())
    code, protocol, remote, direct, local, conn_id, logged_rid, server = line
    assert server == "envoy"  # written by the codec in place of the upstream's, and logged
    # HTTP/1.0 is refused unless accept_http_10 (Envoy's default): logged all the same.
    expected = "200" if version == "1.1" else "426"
    assert (code, protocol, logged_rid) == (expected, f"HTTP/{version}", rid)
    assert remote == direct == f"{mine[0]}:{mine[1]}"
    assert local == f"{theirs[0]}:{theirs[1]}"
    assert int(conn_id) > 0


def test_connection_facts_of_a_bad_request_and_ids_differ(env):
    p = env[0]
    first, _, _ = _conn_facts(p, "rid-conn-ok", (
        b"GET /echo/d HTTP/1.1\r\nHost: a\r\nx-request-id: rid-conn-ok\r\n"
        b"Connection: close\r\n\r\n"))
    before = open(p.conn_log).read().count("\n400 ")
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 400 ")
        mine = s.getsockname()
    assert p.wait_for(lambda: open(p.conn_log).read().count("\n400 ") == before + 1)
    bad = [ln for ln in open(p.conn_log).read().splitlines() if ln.startswith("400 ")][-1].split(" ")
    assert bad[1] == "HTTP/1.1"
    assert bad[2] == bad[3] == f"{mine[0]}:{mine[1]}"
    assert bad[5] != first[5]
    assert bad[7] == first[7] == "envoy"
