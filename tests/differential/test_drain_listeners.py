"""Admin `POST /drain_listeners` against real Envoy 1.40: the same bootstrap (an inbound and
an outbound listener, drain time 1 s) and the same script of connections and admin calls
through both; what each observable step shows must agree.

What Envoy does (and ftproxy now does): without `graceful` the chosen listeners stop
accepting at once (`listener_manager.listener_stopped`), their open connections keep being
served and drain; with `graceful` they keep accepting for the drain time, then stop;
`inboundonly` leaves OUTBOUND listeners alone; the server stays up and LIVE; GET is 405.
(Envoy closes drained connections gradually over the drain time, ftproxy on their next
response: `connection: close` is not compared.)"""

from __future__ import annotations

import socket
import time

import pytest

from .proxies import BootstrapProcess, PortReservation


def _bootstrap(admin: int, inbound: int, outbound: int) -> dict:
    def listener(name: str, port: int, direction: str) -> dict:
        return {"name": name, "traffic_direction": direction,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": name,
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"},
                             "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [listener("in", inbound, "INBOUND"),
                                               listener("out", outbound, "OUTBOUND")]}}


class Proc(BootstrapProcess):
    def __init__(self, kind: str, tmp_path) -> None:
        ports = PortReservation()
        admin_port, self.inbound, self.outbound = ports.take(), ports.take(), ports.take()
        ports.release()
        super().__init__(kind, _bootstrap(admin_port, self.inbound, self.outbound), admin_port,
                         tmp_path / f"{kind}.json", concurrency=2,
                         extra_args=("--drain-time-s", "1"))

    def counter(self, name: str) -> int:
        for line in self.admin("/stats")[1].splitlines():
            if line.startswith(name + ": "):
                return int(line.split(": ", 1)[1])
        return -1


def _get(s: socket.socket) -> str:
    """One keep-alive GET on `s`: the status and body of the answer, or what went wrong."""
    try:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith((b"in", b"out")):
            chunk = s.recv(4096)
            if not chunk:
                return f"closed after {data[:12]!r}"
            data += chunk
        return data.split(b"\r\n", 1)[0].decode() + " " + data.rsplit(b"\r\n\r\n", 1)[1].decode()
    except OSError as e:
        return f"error {type(e).__name__}"


def _new(port: int) -> str:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
    except ConnectionRefusedError:
        return "refused"
    with s:
        return _get(s)


def _script(p: Proc) -> list:
    seen = []
    a = socket.create_connection(("127.0.0.1", p.inbound), timeout=3)
    b = socket.create_connection(("127.0.0.1", p.outbound), timeout=3)
    try:
        seen += [("before", _get(a), _get(b))]
        seen += [("GET", p.admin("/drain_listeners")[0])]
        seen += [("POST inboundonly", p.admin("/drain_listeners?inboundonly", "POST"))]
        time.sleep(0.3)
        seen += [("new in", _new(p.inbound)), ("new out", _new(p.outbound))]
        seen += [("kept in", _get(a).split(" ")[:2]), ("kept out", _get(b).split(" ")[:2])]
        seen += [("stopped", p.counter("listener_manager.listener_stopped"))]
        seen += [("ready", p.admin("/ready"))]
        seen += [("POST graceful", p.admin("/drain_listeners?graceful", "POST"))]
        time.sleep(0.3)
        seen += [("graceful: new out", _new(p.outbound)),
                 ("graceful: stopped", p.counter("listener_manager.listener_stopped"))]
        time.sleep(1.5)  # past the drain time
        seen += [("after: new out", _new(p.outbound)), ("after: new in", _new(p.inbound)),
                 ("after: stopped", p.counter("listener_manager.listener_stopped")),
                 ("after: ready", p.admin("/ready")), ("alive", p.proc.poll() is None)]
    finally:
        a.close()
        b.close()
    return seen


@pytest.mark.timeout(90)
def test_drain_listeners_steps_agree_with_real_envoy(tmp_path):
    observed = {}
    for kind in ("envoy", "ftproxy"):
        p = Proc(kind, tmp_path)
        try:
            observed[kind] = _script(p)
        finally:
            p.stop()
    for step_envoy, step_ftproxy in zip(observed["envoy"], observed["ftproxy"]):
        assert step_ftproxy == step_envoy
    # The script observes what it names (not two proxies that both failed the same way).
    steps = dict((s[0], s[1:]) for s in observed["envoy"])
    assert steps["new in"] == ("refused",) and steps["new out"] == ("HTTP/1.1 200 OK out",)
    assert steps["graceful: new out"] == ("HTTP/1.1 200 OK out",)
    assert steps["after: new out"] == ("refused",) and steps["after: stopped"] == (2,)


@pytest.mark.timeout(60)
def test_reset_counters_agrees_with_real_envoy(tmp_path):
    """POST /reset_counters zeroes what /stats shows for counters (gauges stay); GET is 405;
    counting goes on from zero."""
    observed = {}
    names = ("http.in.downstream_rq_2xx", "http.in.downstream_cx_total",
             "listener_manager.total_listeners_active")
    for kind in ("envoy", "ftproxy"):
        p = Proc(kind, tmp_path)
        try:
            for _ in range(3):
                _new(p.inbound)
            seen = [("before", [p.counter(n) for n in names])]
            seen += [("GET", p.admin("/reset_counters")[0]),
                     ("POST", p.admin("/reset_counters", "POST"))]
            seen += [("after", [p.counter(n) for n in names])]
            _new(p.inbound)
            seen += [("one more", [p.counter(n) for n in names])]
            observed[kind] = seen
        finally:
            p.stop()
    assert observed["ftproxy"] == observed["envoy"]
    assert observed["envoy"][0] == ("before", [3, 3, 2])
    assert observed["envoy"][3] == ("after", [0, 0, 2])
