"""The metrics_service stats sink through the running proxy: real requests to a real upstream on
127.0.0.1, the stats streamed to a real gRPC MetricsService server (tests/metrics_service_server.py,
grpclib, decoding with protobuf classes of its own) every 0.2 s; and the same bootstrap through
real Envoy 1.40 and ftproxy to one server, compared (names, types, labels, driven counters).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.differential.proxies import PortReservation, envoy_binary
from tests.metrics_service_server import MetricsServiceServer, families

from .harness import EchoUpstream, ProxyUnderTest

T = "type.googleapis.com/"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
QUANTILES = [0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1]


def _ep(port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}


def bootstrap(node: str, ms_port: int, svc_port: int, port: int = 0, admin_port: int = 0,
              **sink) -> dict:
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "ing",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/404"}, "direct_response": {"status": 404}},
               {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}
    config = {"@type": T + "envoy.config.metrics.v3.MetricsServiceConfig", "transport_api_version": "V3",
              "grpc_service": {"envoy_grpc": {"cluster_name": "ms"},
                               "initial_metadata": [{"key": "x-test", "value": "yes"}]}}
    config.update(sink)
    return {
        "node": {"id": node, "cluster": "test"},
        "stats_flush_interval": "0.2s",
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_sinks": [{"name": "envoy.stat_sinks.metrics_service", "typed_config": config}],
        "static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [
                {"name": "svc", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [_ep(svc_port)]}]}},
                {"name": "ms", "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": H2,
                 "load_assignment": {"cluster_name": "ms", "endpoints": [{"lb_endpoints": [_ep(ms_port)]}]}}]}}


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def drive(port: int) -> None:
    """4 requests to the upstream (200) and 1 direct 404."""
    assert [get(port, p) for p in ("/a", "/b", "/c", "/d", "/404")] == [200, 200, 200, 200, 404]


def total(messages, kind: str, name: str, labels: tuple = ()) -> float:
    """The sum over messages of a COUNTER's value or a histogram's sample_count."""
    out = 0.0
    for m in messages:
        metric = families(m).get((kind, name, labels))
        if metric is None:
            continue
        out += (metric.counter.value if kind == "COUNTER" else
                metric.histogram.sample_count if kind == "HISTOGRAM" else metric.summary.sample_count)
    return out


def _world(**sink):
    server, upstream = MetricsServiceServer(), EchoUpstream("svc")
    proxy = ProxyUnderTest(bootstrap("ftproxy", server.port, upstream.port, **sink))
    return server, upstream, proxy


def _close(server, upstream, proxy) -> None:
    proxy.stop()
    server.close()
    upstream.close()


def test_the_identifier_then_used_stats_with_counter_deltas_and_interval_histograms():
    server, upstream, p = _world(report_counters_as_deltas=True)
    try:
        assert server.wait(lambda: server.received())
        drive(p.port)
        rq = "http.ing.downstream_rq_total"
        assert server.wait(lambda: total([m for _, m in server.received()], "COUNTER", rq) == 5)
        n = len(server.received())
        assert server.wait(lambda: len(server.received()) >= n + 2)   # later flushes: no new requests
        received = server.received()
        messages = [m for _, m in received]
        # One stream; its first message carries the node, no later one does.
        assert {s for s, _ in received} == {1}
        assert messages[0].identifier.node.id == "ftproxy"
        assert messages[0].identifier.node.cluster == "test"
        assert not any(m.HasField("identifier") for m in messages[1:])
        assert server.metadata[0]["x-test"] == "yes"
        assert server.metadata[0]["x-envoy-internal"] == "true"
        # Deltas: the sum is the total, and a flush without requests reports 0.
        assert total(messages, "COUNTER", "http.ing.downstream_rq_2xx") == 4
        assert total(messages, "COUNTER", "http.ing.downstream_rq_4xx") == 1
        assert total(messages, "COUNTER", "cluster.svc.upstream_rq_total") == 4
        last = families(messages[-1])
        assert last[("COUNTER", rq, ())].counter.value == 0
        assert last[("COUNTER", rq, ())].HasField("counter")
        assert last[("GAUGE", "cluster.svc.membership_total", ())].gauge.value == 1
        # Histograms: both families by default, interval numbers (their sum: every sample once).
        assert total(messages, "HISTOGRAM", "http.ing.downstream_rq_time") == 5
        assert total(messages, "SUMMARY", "http.ing.downstream_rq_time") == 5
        assert total(messages, "HISTOGRAM", "cluster.svc.upstream_rq_time") == 4
        h = last[("HISTOGRAM", "http.ing.downstream_rq_time", ())].histogram
        assert h.sample_count == 0 and [b.cumulative_count for b in h.bucket] == [0] * len(h.bucket)
        assert [b.upper_bound for b in h.bucket][:4] == [0.5, 1, 5, 10] and len(h.bucket) == 19
        s = last[("SUMMARY", "http.ing.downstream_rq_time", ())].summary
        assert [q.quantile for q in s.quantile] == QUANTILES
        assert all(math.isnan(q.value) for q in s.quantile)   # an interval without samples
        with_samples = [families(m)[("HISTOGRAM", "http.ing.downstream_rq_time", ())].histogram
                        for m in messages if ("HISTOGRAM", "http.ing.downstream_rq_time", ()) in families(m)]
        busy = [x for x in with_samples if x.sample_count]
        assert all(x.bucket[-1].cumulative_count == x.sample_count for x in busy)   # all < 3600 s
        # Every metric of a message has the flush's time; flushes go forward.
        stamps = [{mt.timestamp_ms for fam in m.envoy_metrics for mt in fam.metric} for m in messages]
        assert all(len(s) == 1 for s in stamps)
        times = [s.pop() for s in stamps]
        assert times == sorted(times) and abs(times[-1] / 1000 - time.time()) < 5
    finally:
        _close(server, upstream, p)


def test_tags_as_labels_histogram_mode_and_counter_totals():
    server, upstream, p = _world(emit_tags_as_labels=True, histogram_emit_mode="HISTOGRAM")
    try:
        drive(p.port)
        prefix = (("envoy.http_conn_manager_prefix", "ing"),)
        key = ("COUNTER", "http.downstream_rq_total", prefix)
        assert server.wait(lambda: any(families(m).get(key) and families(m)[key].counter.value == 5
                                       for _, m in server.received()))
        n = len(server.received())
        assert server.wait(lambda: len(server.received()) >= n + 1)
        last = families(server.received()[-1][1])
        assert last[key].counter.value == 5               # the total, not a delta
        assert last[("COUNTER", "cluster.upstream_rq_total", (("envoy.cluster_name", "svc"),))].counter.value == 4
        assert last[("COUNTER", "http.downstream_rq_xx", (("envoy.response_code_class", "2"),) + prefix)
                    ].counter.value == 4
        assert ("HISTOGRAM", "http.downstream_rq_time", prefix) in last
        assert not any(k[0] == "SUMMARY" for m in server.received() for k in families(m[1]))
        assert not any(k[1].startswith("http.ing.") for k in last)
    finally:
        _close(server, upstream, p)


def test_the_proxy_keeps_serving_while_the_server_is_down_and_streams_again():
    server, upstream, p = _world()
    try:
        assert server.wait(lambda: server.received())
        server.stop()
        fails = "cluster.ms.upstream_cx_connect_fail"
        assert p.wait_for(lambda: p.counters().get(fails, 0) >= 2)   # a new try at each flush
        drive(p.port)
        server.start()
        assert server.wait(lambda: server.streams_opened >= 2)
        assert server.wait(lambda: any(s == server.streams_opened for s, _ in server.received()))
        again = [m for s, m in server.received() if s == server.streams_opened]
        assert again[0].identifier.node.id == "ftproxy"   # a new stream introduces itself
        assert server.wait(lambda: total([m for s, m in server.received() if s == server.streams_opened],
                                         "COUNTER", "http.ing.downstream_rq_total") >= 5)
        c = p.counters()
        failed = c["cluster.ms.upstream_cx_connect_fail"]
        assert failed == c["cluster.ms.upstream_rq_pending_failure_eject"] == c["cluster.ms.upstream_rq_503"]
        assert c["cluster.ms.upstream_rq_total"] == 2          # the streams that had a connection
        assert c["cluster.ms.upstream_cx_total"] == failed + 2
    finally:
        _close(server, upstream, p)


class _Envoy:
    def __init__(self, workdir: Path, config: dict) -> None:
        path = workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "envoy.log", "wb")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
             "-l", "error", "--drain-time-s", "0"], stdout=subprocess.DEVNULL, stderr=self.log,
            start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


# Stats the requests drive in both proxies: each must come with the same type, name and labels,
# and the counters with the same total.
DRIVEN = [
    ("COUNTER", "http.downstream_rq_total", (("envoy.http_conn_manager_prefix", "ing"),), 5),
    ("COUNTER", "http.downstream_rq_xx", (("envoy.response_code_class", "2"),
                                          ("envoy.http_conn_manager_prefix", "ing")), 4),
    ("COUNTER", "http.downstream_rq_xx", (("envoy.response_code_class", "4"),
                                          ("envoy.http_conn_manager_prefix", "ing")), 1),
    ("COUNTER", "http.downstream_cx_total", (("envoy.http_conn_manager_prefix", "ing"),), 5),
    ("COUNTER", "http.rq_direct_response", (("envoy.http_conn_manager_prefix", "ing"),), 1),
    ("COUNTER", "cluster.upstream_rq_total", (("envoy.cluster_name", "svc"),), 4),
    ("COUNTER", "cluster.upstream_rq_xx", (("envoy.response_code_class", "2"),
                                           ("envoy.cluster_name", "svc")), 4),
    ("COUNTER", "cluster.upstream_rq", (("envoy.response_code", "200"), ("envoy.cluster_name", "svc")), 4),
    ("COUNTER", "listener.downstream_cx_total", (("envoy.listener_address", "L"),), 5),
    ("HISTOGRAM", "http.downstream_rq_time", (("envoy.http_conn_manager_prefix", "ing"),), 5),
    ("SUMMARY", "http.downstream_rq_time", (("envoy.http_conn_manager_prefix", "ing"),), 5),
    ("HISTOGRAM", "cluster.upstream_rq_time", (("envoy.cluster_name", "svc"),), 4),
]


def test_same_metric_families_as_envoy(tmp_path):
    """One server, real Envoy and ftproxy with the same bootstrap (node ids apart), the same
    requests; tags as labels and counter deltas."""
    server, upstream = MetricsServiceServer(), EchoUpstream("svc")
    ports = PortReservation()
    e_port, e_admin, f_port = ports.take(), ports.take(), ports.take()
    ports.release()
    sink = {"emit_tags_as_labels": True, "report_counters_as_deltas": True}
    envoy = _Envoy(tmp_path, bootstrap("envoy", server.port, upstream.port, e_port, e_admin, **sink))
    ftproxy = ProxyUnderTest(bootstrap("ftproxy", server.port, upstream.port, f_port, **sink))
    try:
        assert server.wait(lambda: _ready(e_admin))
        for node, port in (("envoy", e_port), ("ftproxy", f_port)):
            assert server.wait(lambda: server.of_node(node)), node
            drive(port)
        seen = {}
        for node, port in (("envoy", e_port), ("ftproxy", f_port)):
            def settled(node=node, port=port) -> bool:
                msgs = server.of_node(node)
                return all(total(msgs, kind, name, _at(labels, port)) == want
                           for kind, name, labels, want in DRIVEN if kind == "COUNTER")
            assert server.wait(settled), (node, _report(server.of_node(node), port))
            seen[node] = server.of_node(node)
            assert seen[node][0].HasField("identifier")
            assert not any(m.HasField("identifier") for m in seen[node][1:])
        for kind, name, labels, want in DRIVEN:
            for node, port in (("envoy", e_port), ("ftproxy", f_port)):
                assert total(seen[node], kind, name, _at(labels, port)) == want, (node, kind, name)
        # The families both send for the HTTP connection manager and the upstream cluster:
        # ftproxy's are a subset of Envoy's, with the same types and label sets.
        def keys(node, port):
            out = set()
            for m in seen[node]:
                for kind, name, labels in families(m):
                    if name.startswith(("http.", "cluster.")) and ("envoy.cluster_name", "ms") not in labels:
                        out.add((kind, name, tuple((k, "L" if v == f"127.0.0.1_{port}" else v)
                                                   for k, v in labels)))
            return out
        envoy_keys, ftproxy_keys = keys("envoy", e_port), keys("ftproxy", f_port)
        assert ftproxy_keys - envoy_keys == set()
    finally:
        ftproxy.stop()
        envoy.stop()
        server.close()
        upstream.close()


def _ready(admin_port: int) -> bool:
    try:
        return get(admin_port, "/ready") == 200
    except OSError:
        return False


def _at(labels: tuple, port: int) -> tuple:
    return tuple((k, f"127.0.0.1_{port}" if v == "L" else v) for k, v in labels)


def _report(messages, port: int) -> dict:
    return {(kind, name, labels): total(messages, kind, name, _at(labels, port))
            for kind, name, labels, _ in DRIVEN}


def _envoy_counters(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def test_a_server_down_is_counted_as_envoy_counts_it(tmp_path):
    """The metrics service's cluster names a port nobody listens on: both proxies keep serving
    and count each flush's failed stream on the cluster the same way."""
    upstream = EchoUpstream("svc")
    ports = PortReservation()
    e_port, e_admin, dead = ports.take(), ports.take(), ports.take()
    ports.release()
    envoy = _Envoy(tmp_path, bootstrap("envoy", dead, upstream.port, e_port, e_admin))
    ftproxy = ProxyUnderTest(bootstrap("ftproxy", dead, upstream.port))
    try:
        assert ftproxy.wait_for(lambda: _ready(e_admin), 20)
        counters = {"envoy": lambda: _envoy_counters(e_admin), "ftproxy": ftproxy.counters}
        for kind, port in (("envoy", e_port), ("ftproxy", ftproxy.port)):
            assert ftproxy.wait_for(lambda: counters[kind]().get("cluster.ms.upstream_cx_connect_fail", 0) >= 2), kind
            drive(port)
        nonzero = {}
        for kind, read in counters.items():
            c = {k: v for k, v in read().items() if k.startswith("cluster.ms.") and v}
            failed = c["cluster.ms.upstream_cx_connect_fail"]
            for name in ("upstream_cx_total", "upstream_rq_pending_total", "upstream_rq_pending_failure_eject",
                         "upstream_rq_503", "upstream_rq_5xx"):
                # A flush may be between its connect and its failure: one apart at most.
                assert failed <= c[f"cluster.ms.{name}"] <= failed + 1, (kind, name, c)
            assert "cluster.ms.upstream_rq_total" not in c, kind
            nonzero[kind] = set(c)
        assert nonzero["ftproxy"] <= nonzero["envoy"], nonzero["ftproxy"] - nonzero["envoy"]
    finally:
        ftproxy.stop()
        envoy.stop()
        upstream.close()
