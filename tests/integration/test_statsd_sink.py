"""The statsd stats sink through the running proxy: a real UDP receiver on 127.0.0.1 gets
`<prefix>.<name>:<delta>|c`, `<prefix>.<name>:<value>|g` and each histogram sample as
`<prefix>.<name>:<ms>|ms`, one metric per datagram, every stats_flush_interval, as Envoy's sink
sends them (its histogram names compared with real Envoy's)."""

from __future__ import annotations

import re

import socket
import time
import urllib.request

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

STATSD = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"


class Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[str] = []

    def collect(self, seconds: float, until=None) -> None:
        """Datagrams for `seconds`, or until `until(datagrams)` holds (checked as they come)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until(self.datagrams)):
            try:
                self.datagrams.append(self.sock.recv(65535).decode())
            except socket.timeout:
                pass


def _config(upstream_port: int, receiver_port: int, **sink) -> dict:
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", upstream_port)])
    cfg["stats_flush_interval"] = "0.2s"
    cfg["stats_sinks"] = [{"name": "envoy.stat_sinks.statsd", "typed_config": {
        "@type": STATSD, "address": {"socket_address": {"address": "127.0.0.1", "port_value": receiver_port}},
        **sink}}]
    return cfg


def test_counters_go_as_deltas_and_gauges_as_values(upstream):
    r = Receiver()
    p = ProxyUnderTest(_config(upstream.port, r.port, prefix="edge"))
    try:
        for _ in range(3):
            urllib.request.urlopen(p.url("/x"), timeout=5).read()
        r.collect(1.0)
        assert all("\n" not in d for d in r.datagrams)  # one metric per datagram
        total = [d for d in r.datagrams if d.startswith("edge.http.ingress_http.downstream_rq_total:")]
        # The three requests' deltas (a flush may fall between two of them), then zeros.
        deltas = [int(d.split(":")[1].split("|")[0]) for d in total]
        assert total and all(d.endswith("|c") for d in total) and sum(deltas) == 3
        assert deltas[-1] == 0 and deltas[-2] == 0  # no new requests
        assert "edge.cluster.c1.upstream_cx_active:1|g" in r.datagrams  # the kept-alive connection
        assert not any(d.startswith("edge.http.ingress_http.downstream_rq_5xx") for d in r.datagrams)  # unused
        urllib.request.urlopen(p.url("/y"), timeout=5).read()
        before = len(r.datagrams)
        r.collect(0.6)
        later = [d for d in r.datagrams[before:] if d.startswith("edge.http.ingress_http.downstream_rq_total:")]
        assert "edge.http.ingress_http.downstream_rq_total:1|c" in later
    finally:
        p.stop()


@pytest.mark.parametrize("sink,where", [
    ({"tcp_cluster_name": "stats"}, "tcp_cluster_name: not supported yet"),
    ({"address": {"socket_address": {"address": "stats.local", "port_value": 8125}}}, "is not an IP address"),
])
def test_what_the_statsd_sink_refuses(upstream, sink, where):
    cfg = _config(upstream.port, 1)
    cfg["stats_sinks"][0]["typed_config"].update(sink)
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(cfg)


DOG = "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink"


def _dog_config(upstream_port: int, receiver_port: int, **sink) -> dict:
    cfg = _config(upstream_port, receiver_port)
    cfg["stats_sinks"] = [{"name": "envoy.stat_sinks.dog_statsd", "typed_config": {
        "@type": DOG, "address": {"socket_address": {"address": "127.0.0.1", "port_value": receiver_port}},
        **sink}}]
    return cfg


DS_TAGS = "#dc:eu,envoy.http_conn_manager_prefix:ingress_http"


def _counter_total(datagrams: list[str], name: str, tags: str) -> int:
    """The sum of the deltas sent for one DogStatsD counter (`name:delta|c|tags`)."""
    total = 0
    for d in datagrams:
        metric, _, rest = d.partition(":")
        value, _, suffix = rest.partition("|")
        if metric == name and suffix == "c|" + tags:
            total += int(value)
    return total


def test_dog_statsd_sends_tag_extracted_names_with_tags(upstream):
    r = Receiver()
    cfg = _dog_config(upstream.port, r.port)
    cfg["stats_config"] = {"stats_tags": [{"tag_name": "dc", "fixed_value": "eu"}]}
    p = ProxyUnderTest(cfg)
    try:
        for _ in range(2):
            urllib.request.urlopen(p.url("/x"), timeout=5).read()
        r.collect(1.0)
        r.collect(5.0, until=lambda got: _counter_total(got, "envoy.http.downstream_rq_total", DS_TAGS) >= 2)
        assert all("\n" not in d for d in r.datagrams)  # no max_bytes_per_datagram: one each
        lines = r.datagrams
        # Envoy's DogStatsD form: prefix, tag-extracted name, value, type, then |#name:value,...
        # Counters go as deltas: a flush may fall between the two requests.
        assert _counter_total(lines, "envoy.cluster.upstream_rq",
                              "#envoy.response_code:200,dc:eu,envoy.cluster_name:c1") == 2
        assert "envoy.cluster.upstream_cx_active:1|g|#dc:eu,envoy.cluster_name:c1" in lines
        assert _counter_total(lines, "envoy.http.downstream_rq_total", DS_TAGS) == 2
        assert not any(d.startswith("envoy.cluster.c1.") for d in lines)  # no flat names
    finally:
        p.stop()


def test_dog_statsd_batches_up_to_max_bytes_per_datagram(upstream):
    r = Receiver()
    p = ProxyUnderTest(_dog_config(upstream.port, r.port, prefix="dd", max_bytes_per_datagram=300))
    try:
        urllib.request.urlopen(p.url("/x"), timeout=5).read()
        r.collect(0.7)
        assert r.datagrams and all(len(d.encode()) <= 300 for d in r.datagrams)
        assert any("\n" in d for d in r.datagrams)
        lines = [line for d in r.datagrams for line in d.split("\n")]
        assert all(line.startswith("dd.") for line in lines)
        assert "dd.http.downstream_rq_total:1|c|#envoy.http_conn_manager_prefix:ingress_http" in lines
    finally:
        p.stop()


@pytest.mark.parametrize("sink,where", [
    ({"max_bytes_per_datagram": 0}, "max_bytes_per_datagram: value must be greater than 0"),
    ({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1, "protocol": "TCP"}}},
     "protocol: not supported yet (statsd over TCP: only UDP)"),
    ({"tags": ["a"]}, 'unknown field "tags"'),
])
def test_what_the_dog_statsd_sink_refuses(upstream, sink, where):
    cfg = _dog_config(upstream.port, 1)
    cfg["stats_sinks"][0]["typed_config"].update(sink)
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(cfg)


def _ms_lines(datagrams: list[str]) -> list[tuple[str, str]]:
    """(name, value) of each histogram sample line (`<name>:<value>|ms`)."""
    out = []
    for d in datagrams:
        for line in d.split("\n"):
            if line.endswith("|ms"):
                name, _, value = line[:-3].rpartition(":")
                out.append((name, value))
    return out


def test_histogram_samples_go_as_whole_milliseconds_named_as_envoy_names_them(upstream, tmp_path):
    """The same bootstrap through real Envoy 1.40 and ftproxy, three requests each: every sample
    ftproxy sends is named as one of Envoy's, and the request histograms have one sample per
    request in both."""
    import os
    import signal
    import subprocess

    import yaml

    from tests.differential.proxies import PortReservation, envoy_binary

    got = {}
    ports = PortReservation()
    e_port, e_admin = ports.take(), ports.take()
    ports.release()
    for kind in ("envoy", "ftproxy"):
        r = Receiver()
        cfg = _config(upstream.port, r.port)
        if kind == "envoy":
            cfg["admin"]["address"]["socket_address"]["port_value"] = e_admin
            cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = e_port
            (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(cfg))
            with open(tmp_path / "envoy.log", "wb") as log:
                proc = subprocess.Popen([envoy_binary(), "-c", str(tmp_path / "envoy.yaml"), "--concurrency", "1",
                                         "--disable-hot-restart", "-l", "error"], stdout=subprocess.DEVNULL,
                                        stderr=log, start_new_session=True)
            try:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{e_admin}/ready", timeout=1) as resp:
                            if resp.status == 200:
                                break
                    except OSError:
                        pass
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.05)
                for _ in range(3):
                    urllib.request.urlopen(f"http://127.0.0.1:{e_port}/x", timeout=5).read()
                r.collect(0.8)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
        else:
            p = ProxyUnderTest(cfg)
            try:
                for _ in range(3):
                    urllib.request.urlopen(p.url("/x"), timeout=5).read()
                r.collect(0.8)
            finally:
                p.stop()
        r.sock.close()
        got[kind] = _ms_lines(r.datagrams)
    # The listener's stats carry its port (Envoy's fixed one, ftproxy's bootstrap 0).
    envoy_names = {re.sub(r"^(envoy\.listener\.127\.0\.0\.1_)\d+\.", r"\1PORT.", n)
                   for n, _ in got["envoy"]}
    ftproxy_names = {re.sub(r"^(envoy\.listener\.127\.0\.0\.1_)\d+\.", r"\1PORT.", n)
                     for n, _ in got["ftproxy"]}
    # Envoy's listener histograms, recorded by both.
    assert {"envoy.listener.127.0.0.1_PORT.downstream_cx_length_ms",
            "envoy.listener.127.0.0.1_PORT.connections_accepted_per_socket_event"} <= ftproxy_names
    assert ftproxy_names and ftproxy_names <= envoy_names, ftproxy_names - envoy_names
    assert all(v.isdigit() for _, v in got["ftproxy"])
    for name in ("envoy.http.ingress_http.downstream_rq_time", "envoy.cluster.c1.upstream_rq_time",
                 "envoy.cluster.c1.external.upstream_rq_time"):
        for kind in ("envoy", "ftproxy"):
            assert sum(1 for n, _ in got[kind] if n == name) == 3, (kind, name)


def test_dog_statsd_sends_histogram_samples_with_tags(upstream):
    r = Receiver()
    p = ProxyUnderTest(_dog_config(upstream.port, r.port))
    try:
        urllib.request.urlopen(p.url("/x"), timeout=5).read()
        r.collect(0.6)
        lines = [line for d in r.datagrams for line in d.split("\n")]
        rq = [line for line in lines if line.startswith("envoy.cluster.upstream_rq_time:")]
        assert len(rq) == 1 and rq[0].endswith("|ms|#envoy.cluster_name:c1"), rq
    finally:
        p.stop()
