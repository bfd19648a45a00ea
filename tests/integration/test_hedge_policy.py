"""Route `hedge_policy` (hedge_on_per_try_timeout) through the real proxy: an attempt whose
per-try timeout fires keeps running while another starts; the first answer the retry policy
would not retry wins and the other attempt is reset. The upstream is a real HTTP/1.1 server
scripted per attempt: it answers at once, after a pause, or holds the request until the proxy
closes the connection (which it records). Envoy's semantics: proxy/http/router_hedge.py; the
differential case tests/differential/cases/internal_steering.yaml compares a hedged request
with real Envoy."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from proxy.config.reader import ConfigError
from proxy.router.config import parse_route_configuration
from tests.h2_backend import H2Backend

from .clients import request
from .harness import front_proxy_config, static_cluster
from .test_retries import Scripted

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


class Attempts(Scripted):
    """One request per connection (answers close it), by the next step of the script:
    ("ok",) 200 with JSON of the request (its connection, body length, headers), ("sleep", s)
    the same after s seconds, ("status", code) an empty answer, or ("hold",) no answer until
    the peer closes the connection (recorded in `closed`)."""

    def __init__(self, *script) -> None:
        self.closed: list[int] = []
        self.closed_event = threading.Event()
        super().__init__(*script)

    def handle(self, conn: socket.socket, n: int) -> None:
        with conn:
            try:
                req = self._read(conn)
            except OSError:
                return
            if req is None:
                return
            with self.lock:
                step = self.script.popleft() if self.script else ("ok",)
                self.requests.append((n, *req))
            try:
                if step[0] == "hold":
                    conn.settimeout(30)
                    while conn.recv(65536):
                        pass
                    raise OSError("closed")
                if step[0] == "status":
                    conn.sendall(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                 % step[1])
                    return
                if step[0] == "sleep":
                    time.sleep(step[1])
                payload = json.dumps({"conn": n, "body_len": len(req[3]), "headers": req[2]}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n" % len(payload) + payload)
            except OSError:
                with self.lock:
                    self.closed.append(n)
                self.closed_event.set()


@pytest.fixture
def attempts():
    made = []

    def make(*script):
        s = Attempts(*script)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _config(port: int, hedge=True, policy=None, timeout="5s", log_path=None):
    action = {"cluster": "backend", "timeout": timeout,
              "retry_policy": policy or {"retry_on": "5xx", "num_retries": 1,
                                         "per_try_timeout": "0.15s",
                                         "retry_back_off": {"base_interval": "0.01s"}}}
    if hedge is not None:
        action["hedge_policy"] = {"hedge_on_per_try_timeout": hedge}
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": action}],
                             [static_cluster("backend", port)])
    if log_path is not None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log_path), "log_format": {"text_format_source": {
                "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% "
                                 "%RESPONSE_CODE_DETAILS%\n"}}}}]
    return cfg


def _c(p, name: str) -> int:
    return p.counters().get(f"cluster.backend.{name}", 0)


def _log(p, path) -> list[str]:
    assert p.wait_for(lambda: path.exists() and path.read_text().strip())
    return path.read_text().strip().splitlines()


def test_the_hedged_attempt_answers_first_and_the_first_attempt_is_reset(attempts, proxy_factory,
                                                                         tmp_path):
    up = attempts(("hold",), ("ok",))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, log_path=log))
    r = request(p.port, "/x", method="POST", body=b"hello")
    assert r.status == 200
    assert r.json()["conn"] == up.requests[1][0] and r.json()["body_len"] == 5  # replayed body
    assert up.closed_event.wait(10) and up.closed == [up.requests[0][0]]       # the first reset
    assert up.count == 2
    # The upstream may use the whole route timeout (Envoy's setTimeoutHeaders with hedging).
    assert up.requests[0][3]["x-envoy-expected-rq-timeout-ms"] == "5000"
    # A hedge is a retry; its per-try timeout is not counted as one (Envoy's soft timeout).
    assert _c(p, "upstream_rq_retry") == 1 and _c(p, "upstream_rq_per_try_timeout") == 0
    assert _c(p, "upstream_rq_total") == 2
    assert p.wait_for(lambda: _c(p, "upstream_rq_active") == 0)
    assert _log(p, log) == ["200 - 2 via_upstream"]


def test_the_first_attempt_answering_first_wins_and_the_hedge_is_reset(attempts, proxy_factory):
    up = attempts(("sleep", 0.6), ("hold",))
    p = proxy_factory(_config(up.port))
    r = request(p.port, "/x")
    assert r.status == 200 and r.json()["conn"] == up.requests[0][0]
    assert up.closed_event.wait(10) and up.closed == [up.requests[1][0]]
    assert _c(p, "upstream_rq_retry") == 1
    assert p.wait_for(lambda: _c(p, "upstream_rq_active") == 0)


def test_a_retriable_answer_while_another_attempt_is_out_is_dropped(attempts, proxy_factory,
                                                                    tmp_path):
    # The hedge answers 503 at once (retries exhausted: URX), and the first attempt's 200,
    # still to come, is waited for.
    up = attempts(("sleep", 0.6), ("status", 503))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, log_path=log))
    r = request(p.port, "/x")
    assert r.status == 200 and r.json()["conn"] == up.requests[0][0]
    assert _c(p, "upstream_rq_retry_limit_exceeded") == 1
    assert _log(p, log) == ["200 URX 2 via_upstream"]


def test_the_route_timeout_ends_every_attempt(attempts, proxy_factory, tmp_path):
    up = attempts(("hold",), ("hold",))
    log = tmp_path / "access.log"
    p = proxy_factory(_config(up.port, timeout="0.8s", log_path=log))
    r = request(p.port, "/x")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert p.wait_for(lambda: len(up.closed) == 2, timeout=10)
    assert _c(p, "upstream_rq_timeout") == 1 and _c(p, "upstream_rq_per_try_timeout") == 0
    assert _c(p, "upstream_rq_retry") == 1 and _c(p, "upstream_rq_retry_limit_exceeded") == 1
    assert p.wait_for(lambda: _c(p, "upstream_rq_active") == 0)
    assert _log(p, log) == ["504 URX,UT 2 response_timeout"]


def test_without_retry_on_a_hedged_per_try_timeout_lets_the_attempt_finish(attempts, proxy_factory):
    # Envoy: no retry state, so the soft timeout starts nothing and ends nothing.
    up = attempts(("sleep", 0.5))
    p = proxy_factory(_config(up.port, policy={"per_try_timeout": "0.15s"}))
    r = request(p.port, "/x")
    assert r.status == 200 and up.count == 1
    assert _c(p, "upstream_rq_per_try_timeout") == 0 and _c(p, "upstream_rq_retry") == 0


def test_without_hedging_a_per_try_timeout_ends_the_attempt(attempts, proxy_factory):
    up = attempts(("hold",), ("ok",))
    p = proxy_factory(_config(up.port, hedge=False))
    r = request(p.port, "/x")
    assert r.status == 200 and r.json()["conn"] == up.requests[1][0]
    assert up.closed_event.wait(10) and up.closed == [up.requests[0][0]]
    assert _c(p, "upstream_rq_per_try_timeout") == 1


def test_an_internal_request_turns_hedging_on_and_off(attempts, proxy_factory):
    up = attempts(("hold",), ("ok",), ("hold",), ("ok",))
    cfg = _config(up.port, hedge=False)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.update(use_remote_address=True, internal_address_config={"cidr_ranges": [
        {"address_prefix": "127.0.0.1", "prefix_len": 32}]})
    p = proxy_factory(cfg)
    r = request(p.port, "/x", headers={"x-envoy-hedge-on-per-try-timeout": "true"})
    assert r.status == 200 and "x-envoy-hedge-on-per-try-timeout" not in up.requests[0][3]
    assert _c(p, "upstream_rq_per_try_timeout") == 0
    r = request(p.port, "/y", headers={"x-envoy-hedge-on-per-try-timeout": "maybe"})  # ignored
    assert r.status == 200 and _c(p, "upstream_rq_per_try_timeout") == 1


@pytest.mark.parametrize("policy, error", [
    ({"initial_requests": 2}, "rc.virtual_hosts[0].routes[0].route.hedge_policy.initial_requests: "
                              "not supported yet"),
    ({"initial_requests": 0}, "rc.virtual_hosts[0].routes[0].route.hedge_policy.initial_requests"),
    ({"additional_request_chance": {"numerator": 30}},
     "rc.virtual_hosts[0].routes[0].route.hedge_policy.additional_request_chance: not supported yet"),
])
def test_hedge_policy_fields_envoy_does_not_implement_are_refused(policy, error):
    raw = {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c", "hedge_policy": policy}}]}]}
    with pytest.raises(ConfigError) as e:
        parse_route_configuration(raw, "rc")
    assert str(e.value).startswith(error)


def test_a_virtual_hosts_hedge_policy_applies_to_routes_without_their_own():
    raw = {"virtual_hosts": [{"name": "v", "domains": ["*"], "hedge_policy": {
        "initial_requests": 1, "additional_request_chance": {"numerator": 0},
        "hedge_on_per_try_timeout": True}, "routes": [
            {"match": {"prefix": "/a"}, "route": {"cluster": "c"}},
            {"match": {"prefix": "/b"}, "route": {"cluster": "c", "hedge_policy": {}}}]}]}
    routes = parse_route_configuration(raw, "rc").virtual_hosts[0].routes
    assert [r.action.hedge_on_per_try_timeout for r in routes] == [True, False]


def test_hedging_over_http2_resets_only_the_losing_stream(proxy_factory):
    backend = H2Backend()
    try:
        cfg = _config(backend.port)
        cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        p = proxy_factory(cfg)
        r = request(p.port, "/slow?ms=600")
        assert r.status == 200 and r.json()["stream_id"] == 1   # the first attempt won
        assert len(backend.requests) == 2                         # the hedge was sent too
        assert _c(p, "upstream_rq_retry") == 1
        # One connection carried both; the hedge's stream alone was reset: it serves on.
        r = request(p.port, "/after")
        assert r.status == 200 and _c(p, "upstream_cx_total") == 1
        assert p.wait_for(lambda: _c(p, "upstream_rq_active") == 0)
    finally:
        backend.close()
