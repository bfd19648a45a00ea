"""Retries (route and virtual host `retry_policy`) through the real proxy, against real upstreams
that misbehave on purpose: a scripted HTTP/1.1 upstream (answers 5xx, closes without answering,
stalls), EchoUpstreams, a closed port, the h2c backend (REFUSED_STREAM, gRPC statuses).
Envoy's semantics are in proxy/http/router_retry.py's docstring; the differential case
tests/differential/cases/retries.yaml compares the same behaviours with real Envoy."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque

import pytest

from tests.h2_backend import H2Backend

from .clients import closed_port, read_request_head, request
from .harness import EchoUpstream, front_proxy_config, static_cluster
from .servers import AcceptLoop

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


class Scripted(AcceptLoop):
    """A keep-alive HTTP/1.1 upstream that answers each request by the next step of `script`
    (then 200 with JSON of what it got): ("status", code, [(name, value)...]), ("close",)
    (reads the request, closes without answering), ("sleep", s) (then 200), ("stall", s)
    (sends a head and one body byte, then stalls). Records (connection, method, path,
    headers, body) per request."""

    def __init__(self, *script) -> None:
        self.script = deque(script)
        self.requests: list[tuple] = []
        self.lock = threading.Lock()
        super().__init__("scripted-upstream")

    def _read(self, conn: socket.socket):
        head = read_request_head(conn)
        if b"\r\n\r\n" not in head:
            return None
        raw_head, rest = head.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = rest
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(body) < n:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                body += chunk
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while not body.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                body += chunk
            out, data = b"", body
            while True:
                size_line, data = data.split(b"\r\n", 1)
                size = int(size_line, 16)
                if size == 0:
                    break
                out, data = out + data[:size], data[size + 2:]
            body = out
        return method, path, headers, body

    def handle(self, conn: socket.socket, n: int) -> None:
        with conn:
            while True:
                try:
                    req = self._read(conn)
                except OSError:
                    return
                if req is None:
                    return
                method, path, headers, body = req
                with self.lock:
                    self.requests.append((n, method, path, headers, body))
                    step = self.script.popleft() if self.script else ("ok",)
                kind = step[0]
                try:
                    if kind == "close":
                        return
                    if kind == "status":
                        extra = "".join(f"{k}: {v}\r\n" for k, v in (step[2] if len(step) > 2 else ()))
                        conn.sendall(f"HTTP/1.1 {step[1]} X\r\ncontent-length: 0\r\n{extra}\r\n".encode())
                        continue
                    if kind == "stall":
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\na")
                        time.sleep(step[1])
                        return
                    if kind == "sleep":
                        time.sleep(step[1])
                    payload = json.dumps({"conn": n, "path": path, "body_len": len(body),
                                          "attempt": headers.get("x-envoy-attempt-count"),
                                          "headers": headers}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n" % len(payload) + payload)
                except OSError:
                    return

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@pytest.fixture
def scripted():
    made = []

    def make(*script):
        s = Scripted(*script)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _config(port_or_ports, policy=None, vhost=None, cluster_extra=None, route_extra=None,
            listener_extra=None, log_path=None, routes=None):
    ports = port_or_ports if isinstance(port_or_ports, (list, tuple)) else [port_or_ports]
    action = {"cluster": "backend", "timeout": "5s"}
    if policy is not None:
        action["retry_policy"] = policy
    route = {"match": {"prefix": "/"}, "route": action}
    route.update(route_extra or {})
    cfg = front_proxy_config(routes or [route], [static_cluster("backend", *ports, **(cluster_extra or {}))])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    if vhost:
        hcm["route_config"]["virtual_hosts"][0].update(vhost)
    if log_path is not None:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log_path), "log_format": {"text_format_source": {
                "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% "
                                 "%RESPONSE_CODE_DETAILS%\n"}}}}]
    if listener_extra:
        cfg["static_resources"]["listeners"][0].update(listener_extra)
    return cfg


def _log(p, path) -> list[str]:
    assert p.wait_for(lambda: path.exists() and path.read_text().strip())
    return path.read_text().strip().splitlines()


def _c(p, name: str) -> int:
    return p.counters().get(f"cluster.backend.{name}", 0)


# -- retry_on conditions --------------------------------------------------------------------

def test_5xx_is_retried_until_success_with_attempt_counts(scripted, proxy_factory, tmp_path):
    up = scripted(("status", 503), ("status", 500))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "num_retries": 2},
                              vhost={"include_request_attempt_count": True,
                                     "include_attempt_count_in_response": True},
                              log_path=log))
    r = request(p.port, "/x")
    assert r.status == 200
    assert r.json()["attempt"] == "3"
    assert r.headers["x-envoy-attempt-count"] == "3"
    assert [req[3]["x-envoy-attempt-count"] for req in up.requests] == ["1", "2", "3"]
    assert _c(p, "upstream_rq_retry") == 2
    assert _c(p, "upstream_rq_retry_success") == 1
    assert _c(p, "upstream_rq_retry_backoff_exponential") == 2
    assert _c(p, "upstream_rq_total") == 3
    assert _c(p, "retry.upstream_rq_503") == 1 and _c(p, "retry.upstream_rq_500") == 1
    assert _c(p, "upstream_rq_503") == 0 and _c(p, "upstream_rq_200") == 1  # only the final one
    assert _log(p, log) == ["200 - 3 via_upstream"]


def test_exhausted_retries_forward_the_last_response_with_urx(scripted, proxy_factory, tmp_path):
    up = scripted(("status", 503), ("status", 503), ("status", 503))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"}, log_path=log,
                              vhost={"include_attempt_count_in_response": True}))
    r = request(p.port, "/x")
    assert r.status == 503 and r.headers["x-envoy-attempt-count"] == "2"
    assert up.count == 2  # num_retries defaults to 1
    assert _c(p, "upstream_rq_retry") == 1
    assert _c(p, "upstream_rq_retry_limit_exceeded") == 1
    assert _c(p, "upstream_rq_retry_success") == 0
    assert _log(p, log) == ["503 URX 2 via_upstream"]


@pytest.mark.parametrize("retry_on, status, retried", [
    ("gateway-error", 502, True), ("gateway-error", 504, True), ("gateway-error", 500, False),
    ("retriable-4xx", 409, True), ("retriable-4xx", 404, False), ("5xx", 404, False),
    ("reset", 503, False), ("connect-failure", 503, False),
])
def test_which_statuses_each_condition_retries(scripted, proxy_factory, retry_on, status, retried):
    up = scripted(("status", status))
    p = proxy_factory(_config(up.port, {"retry_on": retry_on}))
    r = request(p.port, "/x")
    assert r.status == (200 if retried else status)
    assert up.count == (2 if retried else 1)
    assert _c(p, "upstream_rq_retry") == (1 if retried else 0)


def test_retriable_status_codes_and_headers(scripted, proxy_factory):
    up = scripted(("status", 418), ("status", 200, [("x-try-again", "yes")]))
    p = proxy_factory(_config(up.port, {
        "retry_on": "retriable-status-codes,retriable-headers", "num_retries": 3,
        "retriable_status_codes": [418],
        "retriable_headers": [{"name": "x-try-again", "string_match": {"exact": "yes"}}]}))
    r = request(p.port, "/x")
    assert r.status == 200 and up.count == 3
    assert _c(p, "upstream_rq_retry") == 2


def test_envoy_ratelimited_is_retried_only_under_its_own_condition(scripted, proxy_factory):
    up = scripted(("status", 503, [("x-envoy-ratelimited", "true")]))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"}))
    assert request(p.port, "/x").status == 503 and up.count == 1  # 5xx never retries it
    up2 = scripted(("status", 429, [("x-envoy-ratelimited", "true")]))
    p2 = proxy_factory(_config(up2.port, {"retry_on": "envoy-ratelimited"}))
    assert request(p2.port, "/x").status == 200 and up2.count == 2


def test_reset_is_retried(scripted, proxy_factory):
    up = scripted(("close",))
    p = proxy_factory(_config(up.port, {"retry_on": "reset"}))
    r = request(p.port, "/x")
    assert r.status == 200 and up.count == 2
    assert _c(p, "upstream_rq_retry") == 1 and _c(p, "upstream_rq_rx_reset") == 1


def test_reset_before_request_does_not_retry_a_request_already_written(scripted, proxy_factory,
                                                                       tmp_path):
    up = scripted(("close",))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, {"retry_on": "reset-before-request"}, log_path=log))
    r = request(p.port, "/x")
    assert r.status == 503 and up.count == 1
    assert r.body.endswith(b"reset reason: connection termination")
    assert _c(p, "upstream_rq_retry") == 0
    assert _log(p, log)[0].startswith("503 UC 1 upstream_reset_before_response_started")


def test_connect_failure_is_retried_on_another_host(upstream, proxy_factory):
    # Two hosts, one refusing connections: every request ends on the live one.
    p = proxy_factory(_config([closed_port(), upstream.port], {"retry_on": "connect-failure"}))
    for i in range(4):
        assert request(p.port, f"/{i}").status == 200
    assert _c(p, "upstream_cx_connect_fail") == _c(p, "upstream_rq_retry") >= 1


def test_reset_before_request_retries_a_connect_failure(proxy_factory, tmp_path):
    log = tmp_path / "access.log"
    p = proxy_factory(_config(closed_port(), {"retry_on": "reset-before-request", "num_retries": 2},
                              log_path=log))
    r = request(p.port, "/x")
    assert r.status == 503
    assert r.body.startswith(b"upstream connect error or disconnect/reset before headers. "
                             b"retried and the latest reset reason: remote connection failure")
    assert _c(p, "upstream_rq_retry") == 2 and _c(p, "upstream_cx_connect_fail") == 3
    assert _c(p, "upstream_rq_retry_limit_exceeded") == 1
    assert _log(p, log)[0].startswith("503 URX,UF 3 upstream_reset_before_response_started")


class ClosesSecondRequest(AcceptLoop):
    """Its first connection answers one request, then reads the next and closes without an
    answer (a keep-alive connection the upstream timed out as it was reused)."""

    def __init__(self) -> None:
        super().__init__("closes-second")

    def handle(self, conn, n: int) -> None:
        with conn:
            served = 0
            while b"\r\n\r\n" in read_request_head(conn):
                if n == 1 and served == 1:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                served += 1


@pytest.mark.parametrize("retry_on, status", [(None, 503), ("reset", 200),
                                              ("reset-before-request", 503), ("5xx", 200)])
def test_a_reused_connection_closed_by_the_upstream_is_retried_only_as_the_policy_says(
        proxy_factory, retry_on, status):
    """Envoy's behaviour: the request was written before the close was seen, so it is a
    connection termination (503 UC), retried under `reset` or 5xx, not reset-before-request."""
    up = ClosesSecondRequest()
    try:
        policy = {"retry_on": retry_on} if retry_on else None
        p = proxy_factory(_config(up.port, policy))
        assert request(p.port, "/first").status == 200
        r = request(p.port, "/second")
        assert r.status == status
        assert _c(p, "upstream_rq_retry") == (1 if status == 200 else 0)
    finally:
        up.close()


def test_refused_stream_is_retried_only_under_refused_stream(proxy_factory):
    backend = H2Backend()
    try:
        h2 = {"typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}
        p = proxy_factory(_config(backend.port, {"retry_on": "refused-stream", "num_retries": 2},
                                  cluster_extra=h2))
        assert request(p.port, "/rst?code=refused").status == 503
        assert _c(p, "upstream_rq_retry") == 2  # refused three times
        assert request(p.port, "/rst").status == 503  # INTERNAL_ERROR: not a refused stream
        assert _c(p, "upstream_rq_retry") == 2
    finally:
        backend.close()


@pytest.mark.parametrize("retry_on, where, retried", [
    ("unavailable", "headers", True), ("cancelled,internal", "headers", False),
    ("unavailable", "trailers", False),  # the response started: never retried (Envoy)
])
def test_grpc_conditions_read_grpc_status_from_the_response_headers(proxy_factory, retry_on,
                                                                    where, retried):
    backend = H2Backend()
    try:
        h2 = {"typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}
        p = proxy_factory(_config(backend.port, {"retry_on": retry_on}, cluster_extra=h2))
        r = request(p.port, f"/grpc?status=14&where={where}&fail=1",
                    headers={"content-type": "application/grpc", "te": "trailers"})
        assert r.status == 200
        assert _c(p, "upstream_rq_retry") == (1 if retried else 0)
        assert len(backend.requests) == (2 if retried else 1)
        if where == "headers":
            assert r.headers["grpc-status"] == ("0" if retried else "14")
    finally:
        backend.close()


# -- timeouts and back-off ------------------------------------------------------------------

def test_per_try_timeout_retries_a_slow_attempt(scripted, proxy_factory):
    up = scripted(("sleep", 2.0))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "per_try_timeout": "0.2s"}))
    t0 = time.monotonic()
    r = request(p.port, "/x")
    assert r.status == 200 and time.monotonic() - t0 < 1.9   # not the slow attempt's 2 s
    assert _c(p, "upstream_rq_per_try_timeout") == 1 and _c(p, "upstream_rq_retry") == 1
    # The upstream is told the per-try timeout, the shorter one.
    assert up.requests[0][3]["x-envoy-expected-rq-timeout-ms"] == "200"


def test_per_try_timeout_exhausted_is_504_ut(scripted, proxy_factory, tmp_path):
    up = scripted(("sleep", 2.0), ("sleep", 2.0))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "per_try_timeout": "0.2s"},
                              log_path=log))
    r = request(p.port, "/x")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert _c(p, "upstream_rq_per_try_timeout") == 2
    assert _log(p, log) == ["504 URX,UT 2 upstream_per_try_timeout"]


def test_per_try_idle_timeout(scripted, proxy_factory):
    up = scripted(("sleep", 2.0))
    p = proxy_factory(_config(up.port, {"retry_on": "reset", "per_try_idle_timeout": "0.2s"}))
    r = request(p.port, "/x")
    assert r.status == 200
    assert _c(p, "upstream_rq_per_try_idle_timeout") == 1 and _c(p, "upstream_rq_retry") == 1


def test_timeout_retry_header(scripted, proxy_factory):
    up = scripted(("sleep", 2.0), ("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "per_try_timeout": "0.2s",
                                        "num_retries": 2},
                              vhost={"include_is_timeout_retry_header": True}))
    assert request(p.port, "/x").status == 200
    seen = [req[3].get("x-envoy-is-timeout-retry") for req in up.requests]
    assert seen == [None, "true", "false"]


def test_backoff_is_bounded_by_max_interval(scripted, proxy_factory):
    up = scripted(("status", 503), ("status", 503), ("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "num_retries": 3, "retry_back_off": {
        "base_interval": "0.05s", "max_interval": "0.1s"}}))
    t0 = time.monotonic()
    assert request(p.port, "/x").status == 200
    # Three back-offs, each drawn from [0, 50 ms), [0, 100 ms), [0, 100 ms).
    assert time.monotonic() - t0 < 3
    assert _c(p, "upstream_rq_retry_backoff_exponential") == 3


def test_rate_limited_back_off_waits_what_the_reset_header_says(scripted, proxy_factory):
    up = scripted(("status", 503, [("retry-after", "1")]))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "rate_limited_retry_back_off": {
        "reset_headers": [{"name": "retry-after", "format": "SECONDS"}], "max_interval": "5s"}}))
    t0 = time.monotonic()
    assert request(p.port, "/x").status == 200
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 4.5  # [1 s, 1.5 s): Envoy's jittered lower bound (not the 5 s max)
    assert _c(p, "upstream_rq_retry_backoff_ratelimited") == 1
    assert _c(p, "upstream_rq_retry_backoff_exponential") == 0


def test_global_timeout_during_back_off(scripted, proxy_factory, tmp_path):
    up = scripted(("status", 503))
    log = tmp_path / "access.log"
    cfg = _config(up.port, {"retry_on": "5xx", "retry_back_off": {"base_interval": "10s"}},
                  log_path=log)
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = "0.3s"
    p = proxy_factory(cfg)
    # A back-off drawn from [0, 10 s): most often longer than the route's 0.3 s.
    statuses = {request(p.port, f"/{i}").status for i in range(3)}
    assert statuses <= {200, 504}
    if 504 in statuses:
        assert any(line.startswith("504 UT") for line in _log(p, log))


# -- hosts, bodies, limits ------------------------------------------------------------------

def test_previous_hosts_avoids_the_failed_host(scripted, proxy_factory):
    bad = scripted(*[("status", 503)] * 50)
    good = scripted()
    policy = {"retry_on": "5xx", "retry_host_predicate": [
        {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/"
                     "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 30}
    p = proxy_factory(_config([bad.port, good.port], policy, cluster_extra={"lb_policy": "RANDOM"}))
    for i in range(8):
        assert request(p.port, f"/{i}").status == 200
    assert good.count == 8


def test_the_request_body_is_replayed(scripted, proxy_factory):
    up = scripted(("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"}))
    body = bytes(range(256)) * 40
    r = request(p.port, "/x", method="POST", body=body)
    assert r.status == 200
    assert [req[4] for req in up.requests] == [body, body]


def test_a_chunked_body_is_replayed(scripted, proxy_factory):
    up = scripted(("close",))
    p = proxy_factory(_config(up.port, {"retry_on": "reset"}))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert [req[4] for req in up.requests] == [b"hello world", b"hello world"]


def test_a_body_over_the_buffer_limit_is_not_retried(scripted, proxy_factory):
    up = scripted(("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"},
                              listener_extra={"per_connection_buffer_limit_bytes": 4096}))
    r = request(p.port, "/x", method="POST", body=b"x" * 20000)
    assert r.status == 503 and up.count == 1
    assert _c(p, "retry_or_shadow_abandoned") == 1 and _c(p, "upstream_rq_retry") == 0


def test_max_retries_circuit_breaker_overflow(scripted, proxy_factory, tmp_path):
    up = scripted(("status", 503))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"}, log_path=log, cluster_extra={
        "circuit_breakers": {"thresholds": [{"max_retries": 0}]}}))
    assert request(p.port, "/x").status == 503
    assert _c(p, "upstream_rq_retry_overflow") == 1 and _c(p, "upstream_rq_retry") == 0
    assert _log(p, log) == ["503 UO 1 via_upstream"]


def test_retry_budget_replaces_max_retries(scripted, proxy_factory):
    up = scripted(("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx"}, cluster_extra={
        "circuit_breakers": {"thresholds": [{"max_retries": 0, "retry_budget": {
            "budget_percent": {"value": 0.0}, "min_retry_concurrency": 1}}]}}))
    assert request(p.port, "/x").status == 200  # min_retry_concurrency 1 allows one
    p2 = proxy_factory(_config(up.port, {"retry_on": "5xx"}, cluster_extra={
        "circuit_breakers": {"thresholds": [{"retry_budget": {
            "budget_percent": {"value": 0.0}, "min_retry_concurrency": 0}}]}}))
    up.script.extend([("status", 503)])
    assert request(p2.port, "/x").status == 503
    assert p2.counters()["cluster.backend.upstream_rq_retry_overflow"] == 1


# -- headers, policies ------------------------------------------------------------------------

def test_client_retry_headers_are_not_honoured(scripted, proxy_factory):
    """Every request is external (no internal_address_config): the HCM removes them."""
    up = scripted(("status", 503))
    p = proxy_factory(_config(up.port))
    r = request(p.port, "/x", headers={"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3",
                                       "x-envoy-retriable-status-codes": "503"})
    assert r.status == 503 and up.count == 1
    assert "x-envoy-retriable-status-codes" not in up.requests[0][3]


def test_retry_headers_the_route_adds_are_honoured_and_consumed(scripted, proxy_factory):
    up = scripted(("status", 503), ("status", 503))
    p = proxy_factory(_config(up.port, route_extra={"request_headers_to_add": [
        {"header": {"key": "x-envoy-retry-on", "value": "5xx"}},
        {"header": {"key": "x-envoy-max-retries", "value": "2"}}]}))
    r = request(p.port, "/x")
    assert r.status == 200 and up.count == 3
    assert all("x-envoy-retry-on" not in req[3] and "x-envoy-max-retries" not in req[3]
               for req in up.requests)


def test_route_policy_replaces_the_virtual_hosts(scripted, proxy_factory):
    up = scripted(("status", 503), ("status", 503))
    routes = [{"match": {"prefix": "/own"}, "route": {"cluster": "backend",
                                                      "retry_policy": {"retry_on": "retriable-4xx"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    p = proxy_factory(_config(up.port, routes=routes,
                              vhost={"retry_policy": {"retry_on": "5xx", "num_retries": 3}}))
    assert request(p.port, "/own").status == 503  # the route's policy: 4xx only
    assert request(p.port, "/inherits").status == 200  # the virtual host's
    assert up.count == 3


def test_retriable_request_headers_limit_which_requests_retry(scripted, proxy_factory):
    up = scripted(("status", 503), ("status", 503))
    p = proxy_factory(_config(up.port, {"retry_on": "5xx", "retriable_request_headers": [
        {"name": ":method", "string_match": {"exact": "GET"}}]}))
    assert request(p.port, "/x", method="POST", body=b"a").status == 503
    assert request(p.port, "/x").status == 200


def test_a_started_response_is_never_retried(scripted, proxy_factory):
    up = scripted(("stall", 0.3))
    p = proxy_factory(_config(up.port, {"retry_on": "reset,5xx"}))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert up.count == 1 and _c(p, "upstream_rq_retry") == 0


def test_attempt_count_in_access_log_without_retries(upstream, proxy_factory, tmp_path):
    log = tmp_path / "access.log"
    p = proxy_factory(_config(upstream.port, log_path=log))
    assert request(p.port, "/x").status == 200
    assert _log(p, log) == ["200 - 1 via_upstream"]
