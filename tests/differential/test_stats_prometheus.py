"""`/stats/prometheus` against real Envoy 1.40: one bootstrap with a `stats_config` (custom tag
regexes and a fixed tag beside Envoy's default extractors, a `stats_matcher` exclusion list,
`histogram_bucket_settings`), the same requests through both to the same real upstream, then
the admin pages of both compared.

- With `usedonly` and a filter over the counters both proxies implement, the two Prometheus
  texts are equal byte for byte (listener ports replaced by a placeholder): metric names with
  the tags cut out, labels in Envoy's order and escaping, `# TYPE` lines, family and sample order.
- Over the whole page, every family both print has the same samples: the same label sets in
  the same order, and the same values, but for what legitimately differs (MASKED below: timing
  inside histograms, gauges of ftproxy's own process). Samples or families only one side
  prints are allowed only where listed with the reason (stats one proxy does not have at all,
  which is not about tags).
- `/stats` and `/stats?format=json` keep Envoy's flat names (tags change neither).
- The statsd sinks of both, each to its own real UDP receiver: `envoy.stat_sinks.dog_statsd`
  (tag-extracted names, `|#tag:value,...`, batched to `max_bytes_per_datagram`) and
  `envoy.stat_sinks.statsd` (flat names) send the same counters with the same tags.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.integration.harness import EchoUpstream

from .proxies import BootstrapProcess, PortReservation

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

STATS_CONFIG = {
    "stats_tags": [
        # A fixed tag (no prefix token: it comes after the default prefix-less extractors).
        {"tag_name": "service", "fixed_value": "front"},
        # A regex whose cut overlaps a default one (the HCM prefix): both tags, one cut.
        {"tag_name": "edge", "regex": r"^http\.((ingress)_http\.)"},
        # Group 1 cut, group 2 the value; only the vhost's routes.
        {"tag_name": "route_target", "regex": r"^cluster\.\w+\.(upstream_rq_(pending)_)"},
    ],
    "stats_matcher": {"exclusion_list": {"patterns": [
        {"suffix": "_bytes_total"},               # rx/tx byte counts differ (request headers)
        {"prefix": "cluster.backend.upstream_cx_connect_ms"},
    ]}},
    "histogram_bucket_settings": [
        {"match": {"suffix": "upstream_rq_time"}, "buckets": [100, 1, 10, 2.5, 1000]},
    ],
}


DOG_STATSD = "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink"
STATSD = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"
MAX_DATAGRAM = 512


def _bootstrap(admin: int, listener: int, upstream: int, udp: int) -> dict:
    udp_address = {"socket_address": {"address": "127.0.0.1", "port_value": udp}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_flush_interval": "0.2s",   # Envoy merges histograms at a flush
        "stats_config": STATS_CONFIG,
        "stats_sinks": [
            {"name": "envoy.stat_sinks.dog_statsd", "typed_config": {
                "@type": DOG_STATSD, "address": udp_address, "prefix": "dog",
                "max_bytes_per_datagram": MAX_DATAGRAM}},
            {"name": "envoy.stat_sinks.statsd", "typed_config": {
                "@type": STATSD, "address": udp_address, "prefix": "flat"}},
        ],
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM, "stat_prefix": "ingress_http",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [
                                {"match": {"prefix": "/direct"},
                                 "direct_response": {"status": 404, "body": {"inline_string": "no"}}},
                                {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
                            ]}]},
                        "http_filters": [{"name": "envoy.filters.http.router",
                                          "typed_config": {"@type": ROUTER}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "backend", "connect_timeout": "1s", "type": "STATIC",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                "port_value": upstream}}}}]}]},
            }],
        },
    }


# The requests, on fresh connections (Envoy and ftproxy then count the same connections).
REQUESTS = ["/a", "/b", "/c", "/status/404", "/status/404", "/status/503", "/direct"]


class Proc(BootstrapProcess):
    def __init__(self, kind: str, upstream: int, tmp_path) -> None:
        ports = PortReservation()
        admin_port, self.port = ports.take(), ports.take()
        ports.release()
        # The sinks' receiver, drained by its own thread: Envoy sends every counter each
        # flush (hundreds of datagrams), more than a socket buffer holds for long.
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.1)
        self.datagrams: list[bytes] = []   # appended by the receiver thread only
        self._receiving = True
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True, name=f"udp-{kind}")
        self._receiver.start()
        super().__init__(kind, _bootstrap(admin_port, self.port, upstream, self.udp.getsockname()[1]),
                         admin_port, tmp_path / f"{kind}.json", ready_timeout=30)

    def get(self, path: str) -> int:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path, headers={"host": "example.com", "connection": "close"})
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def prometheus(self, query: str = "") -> str:
        status, body = self.admin("/stats/prometheus" + (f"?{query}" if query else ""))
        assert status == 200, (self.kind, status, body)
        return re.sub(rf"(?<![0-9])({self.port}|{self.admin_port})(?![0-9])", "PORT", body)

    def _receive_loop(self) -> None:
        while self._receiving:
            try:
                self.datagrams.append(self.udp.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def receive(self) -> list[bytes]:
        """Every datagram the sinks sent so far."""
        return list(self.datagrams)

    def stop(self) -> None:
        self._receiving = False
        self._receiver.join(2)
        self.udp.close()
        super().stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    upstream = EchoUpstream("backend")
    tmp = tmp_path_factory.mktemp("prom")
    procs = []
    try:
        procs = [Proc("envoy", upstream.port, tmp), Proc("ftproxy", upstream.port, tmp)]
        for p in procs:
            assert [p.get(path) for path in REQUESTS] == [200, 200, 200, 404, 404, 503, 404]
            # One HTTP/2 (h2c) request: Envoy then has its HTTP/2 codec's stats too.
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                                  "--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/h2"],
                                 capture_output=True, text=True, timeout=10).stdout
            assert out == "200 2", (p.kind, out)
        # Every connection closed on both sides, and Envoy's histograms merged (a flush).
        deadline = time.monotonic() + 10
        for p in procs:
            while "envoy_http_downstream_cx_active" in p.prometheus("filter=downstream_cx_active&usedonly") \
                    and re.search(r'cx_active\{[^}]*ingress_http[^}]*\} [1-9]', p.prometheus("filter=downstream_cx_active")):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(0.6)
        yield procs[0], procs[1]
    finally:
        for p in procs:
            p.stop()
        upstream.close()


# The counters both proxies implement, each already compared by name elsewhere: here what
# tags make of them. No histogram (timing) and no gauge (Envoy's "used" flag sees every write).
COUNTERS = (r"^(cluster\.backend\.(external\.)?upstream_rq_([0-9]+|[0-9]xx|completed|total|pending_total)$"
            r"|cluster\.backend\.upstream_cx_(total|http1_total|destroy)$"
            r"|http\.ingress_http\.(downstream_rq_([0-9]xx|total|completed|http1_total)|downstream_cx_(total|http1_total|destroy)|rq_direct_response|rq_total)$"
            r"|listener\.127\.0\.0\.1_[0-9]+\.(downstream_cx_total|worker_0\.downstream_cx_total|http\.ingress_http\.downstream_rq_([0-9]xx|completed))$)")


def test_prometheus_counters_with_tags_match_envoy_byte_for_byte(pair):
    envoy, ftproxy = pair
    query = "usedonly&filter=" + urllib.request.quote(COUNTERS)
    expected = envoy.prometheus(query)
    assert ftproxy.prometheus(query) == expected
    # Not vacuous: the tags of the stats_config above, in Envoy's order.
    assert ('envoy_cluster_upstream_rq{envoy_response_code="200",service="front",'
            'envoy_cluster_name="backend"} 4\n') in expected
    # The default tokenized HCM prefix runs before the configured regex of the same prefix token.
    assert ('envoy_http_downstream_rq_xx{envoy_response_code_class="4",service="front",'
            'envoy_http_conn_manager_prefix="ingress_http",edge="ingress"} 3\n') in expected
    # The configured regex cuts its group 1 (`upstream_rq_pending_`), its group 2 is the value.
    assert ('envoy_cluster_total{service="front",envoy_cluster_name="backend",'
            'route_target="pending"} 1\n') in expected
    assert 'envoy_cluster_upstream_rq_total{service="front",envoy_cluster_name="backend"} 7\n' in expected
    assert ('envoy_listener_worker_downstream_cx_total{envoy_worker_id="0",service="front",'
            'envoy_listener_address="127.0.0.1_PORT"} 8\n') in expected


def _families(text: str) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            current = (name, kind)
            assert current not in out, f"family {current} printed twice"
            out[current] = []
        else:
            assert current is not None, line
            out[current].append(line)
    return out


def _sample_key(line: str) -> str:
    return line.rsplit(" ", 1)[0]


# Values that legitimately differ, by family (the label sets and order are still compared).
MASKED = {
    # Timing: latencies and connection lengths land in other buckets; Envoy's sums are its
    # log-linear histogram's approximations. Counts are compared.
    "histogram": "bucket and _sum values (timing); _count and every label set compared",
    "envoy_server_uptime": "seconds since each process started (they start one after the other)",
    "envoy_server_memory_allocated": "each process's own memory (tcmalloc's / glibc malloc's)",
    "envoy_server_memory_heap_size": "each process's own memory (tcmalloc's / glibc malloc's)",
    "envoy_server_memory_physical_size": "each process's own memory (resident)",
    # Behaviour, not names: of the requests sent with `connection: close`, Envoy counts one
    # connection closed by the client (it read the client's close first), ftproxy none.
    "envoy_http_downstream_cx_destroy_local": "which side closed one `connection: close` request first",
    "envoy_http_downstream_cx_destroy_remote": "which side closed one `connection: close` request first",
}

# Families only one side prints (a stat the other does not have: not about tags).
ENVOY_ONLY_OK = "stats ftproxy does not implement (Envoy's admin listener, watchdogs, runtime, ...)"
FTPROXY_ONLY = {
    "envoy_server_worker_unhandled_exceptions": "ftproxy's own: exceptions a worker's loop caught",
}
# Samples only one side prints inside a family both print.
ENVOY_ONLY_SAMPLES = {
    'envoy_http_conn_manager_prefix="admin"': "Envoy's admin is an HTTP connection manager with stats",
    'envoy_http_conn_manager_prefix="async-client"': "Envoy's async HTTP client's stats",
}
FTPROXY_ONLY_SAMPLES = {
    # ftproxy creates every status class of the router's counters at start; Envoy on first use.
    r'envoy_response_code_class="[1-5]"': "upstream_rq_<class>xx made at start (0 until used)",
}


def test_every_family_both_print_has_the_same_samples(pair):
    envoy, ftproxy = pair
    e, f = _families(envoy.prometheus()), _families(ftproxy.prometheus())
    problems = []
    for key in f:
        if key not in e:
            if not any(key[0].startswith(p) for p in FTPROXY_ONLY):
                problems.append(f"only ftproxy prints {key}")
            continue
        name, kind = key
        el, fl = e[key], f[key]
        if kind == "histogram" or name in MASKED:
            def mask(lines):
                return [line if line.split("{", 1)[0].endswith("_count") else _sample_key(line)
                        for line in lines]
            el, fl = mask(el), mask(fl)
        only_e = [x for x in el if _sample_key(x) not in {_sample_key(y) for y in fl}]
        only_f = [x for x in fl if _sample_key(x) not in {_sample_key(y) for y in el}]
        only_e = [x for x in only_e if not any(s in x for s in ENVOY_ONLY_SAMPLES)]
        only_f = [x for x in only_f if not (x.endswith(" 0") and any(re.search(p, x) for p in FTPROXY_ONLY_SAMPLES))]
        if only_e or only_f:
            problems.append(f"{key}: only envoy {only_e[:3]}, only ftproxy {only_f[:3]}")
            continue
        common_e = [x for x in el if _sample_key(x) in {_sample_key(y) for y in fl}]
        common_f = [x for x in fl if _sample_key(x) in {_sample_key(y) for y in el}]
        if common_e != common_f:
            problems.append(f"{key}: {[(a, b) for a, b in zip(common_e, common_f) if a != b][:3] or (common_e, common_f)}")
    assert not problems, "\n".join(problems)
    # The families both print come in the same order.
    assert [k for k in e if k in f] == [k for k in f if k in e]


# The listener and server stats of Envoy 1.40 that ftproxy does not have, for this plain HTTP
# bootstrap, each with why (names with the listener's port as PORT). Envoy's admin listener:
# ftproxy's admin is a small threaded HTTP server, not a listener with an HCM. Watchdogs:
# refused in the bootstrap (no watchdog runs). server.version: Envoy's build SHA as a number;
# server.stats_recent_lookups: Envoy's symbol table's recent lookups.
LISTENER_SERVER_NOT_IN_FTPROXY = {
    *(f"listener.admin.{n}" for n in (
        "connections_accepted_per_socket_event", "downstream_cx_active", "downstream_cx_destroy",
        "downstream_cx_length_ms", "downstream_cx_overflow", "downstream_cx_overload_reject",
        "downstream_cx_total", "downstream_cx_transport_socket_connect_timeout",
        "downstream_global_cx_overflow", "downstream_listener_filter_error",
        "downstream_listener_filter_remote_close", "downstream_pre_cx_active",
        "downstream_pre_cx_timeout", "no_filter_chain_match", "main_thread.downstream_cx_active",
        "main_thread.downstream_cx_total", *(f"http.admin.downstream_rq_{c}" for c in (
            "1xx", "2xx", "3xx", "4xx", "5xx", "completed")))),
    "server.main_thread.watchdog_mega_miss", "server.main_thread.watchdog_miss",
    "server.worker_0.watchdog_mega_miss", "server.worker_0.watchdog_miss",
    "server.version", "server.stats_recent_lookups",
}


def _listener_server_names(p) -> set[str]:
    status, text = p.admin("/stats")
    assert status == 200
    names = {line.split(": ", 1)[0] for line in text.splitlines()}
    return {re.sub(rf"_{p.port}\.", "_PORT.", n) for n in names
            if n.startswith(("listener.", "server."))}


def test_listener_and_server_stat_names_as_envoys(pair):
    """Every listener.* and server.* stat Envoy 1.40 shows for this bootstrap, ftproxy shows
    too, but for LISTENER_SERVER_NOT_IN_FTPROXY (each with its reason); the histograms added
    for Envoy's names are recorded as Envoy records them."""
    envoy, ftproxy = pair
    theirs, ours = _listener_server_names(envoy), _listener_server_names(ftproxy)
    assert theirs - ours == LISTENER_SERVER_NOT_IN_FTPROXY
    assert ours - theirs == {"server.worker_0.unhandled_exceptions"}
    for name in ("listener.127.0.0.1_PORT.downstream_cx_length_ms",
                 "listener.127.0.0.1_PORT.connections_accepted_per_socket_event",
                 "server.initialization_time_ms"):
        assert name in ours
    text = ftproxy.admin("/stats?filter=" + urllib.request.quote(
        r"connections_accepted_per_socket_event|downstream_cx_length_ms|initialization_time_ms|"
        r"days_until_first_cert_expiring"))[1]
    assert "No recorded values" not in text
    assert "server.days_until_first_cert_expiring: 4294967295" in text


def test_histogram_bucket_settings_and_counts_as_envoy(pair):
    envoy, ftproxy = pair
    for p in pair:
        text = p.prometheus("filter=" + urllib.request.quote(r"^cluster\.backend\.upstream_rq_time$"))
        les = re.findall(r'le="([^"]+)"', text)
        assert les == ["1", "2.5", "10", "100", "1000", "+Inf"], (p.kind, text)
        assert 'envoy_cluster_upstream_rq_time_count{service="front",envoy_cluster_name="backend"} 7' in text
    # Another histogram keeps Envoy's default buckets.
    for p in pair:
        text = p.prometheus("filter=" + urllib.request.quote(r"^http\.ingress_http\.downstream_rq_time$"))
        assert re.findall(r'le="([^"]+)"', text)[:3] == ["0.5", "1", "5"], (p.kind, text)
        assert text.count("_bucket{") == 20


def test_stats_matcher_leaves_out_the_same_stats(pair):
    for p in pair:
        assert "_bytes_total" not in p.admin("/stats")[1], p.kind
        assert "_bytes_total" not in p.prometheus(), p.kind
        assert "upstream_cx_connect_ms" not in p.admin("/stats?format=json")[1], p.kind
        assert "cluster.backend.upstream_cx_total: 7" not in p.admin("/stats")[1]  # one per request...
    envoy, ftproxy = pair
    assert (envoy.admin("/stats?filter=upstream_cx_total$")[1]
            == ftproxy.admin("/stats?filter=upstream_cx_total$")[1])


def test_stats_and_json_keep_flat_names(pair):
    envoy, ftproxy = pair
    flt = urllib.request.quote(r"^(cluster\.backend\.upstream_rq_(200|404|503|2xx)|http\.ingress_http\.downstream_rq_4xx)$")
    texts = [p.admin(f"/stats?filter={flt}")[1] for p in pair]
    assert texts[0] == texts[1]
    assert "cluster.backend.upstream_rq_200: 4\n" in texts[0]
    docs = [json.loads(p.admin(f"/stats?format=json&filter={flt}")[1]) for p in pair]
    assert docs[0] == docs[1]
    assert {"name": "http.ingress_http.downstream_rq_4xx", "value": 3} in docs[0]["stats"]


def _statsd_counters(datagrams: list[bytes], prefix: str) -> dict[str, int]:
    """Counter lines of one sink, `name:delta|c[|#tags]`, summed over the flushes (the deltas
    fall into different flushes on each side); keyed by name and tags, ports replaced."""
    out: dict[str, int] = {}
    for d in datagrams:
        for line in d.decode().split("\n"):
            if not line.startswith(prefix + "."):
                continue
            head, _, rest = line.partition(":")
            value, kind, *tags = rest.split("|")
            if kind != "c":
                continue
            key = head + ("|" + tags[0] if tags else "")
            out[key] = out.get(key, 0) + int(value)
    return out


def test_dog_statsd_and_statsd_sinks_send_what_envoy_sends(pair):
    envoy, ftproxy = pair
    deadline = time.monotonic() + 5
    while not all(any(b"dog." in d for d in p.receive()) for p in pair):
        assert time.monotonic() < deadline, "no flush reached a receiver"
        time.sleep(0.1)
    time.sleep(0.5)   # a flush after the totals settled
    received = {p.kind: p.receive() for p in pair}
    for kind, datagrams in received.items():
        assert all(len(d) <= MAX_DATAGRAM for d in datagrams if d.startswith(b"dog.")), kind
        assert any(b"\n" in d for d in datagrams if d.startswith(b"dog.")), kind  # batched
        assert not any(b"\n" in d for d in datagrams if d.startswith(b"flat.")), kind  # one each

    def norm(p, counters):
        return {re.sub(rf"(?<![0-9])({p.port}|{p.admin_port})(?![0-9])", "PORT", k): v
                for k, v in counters.items()}

    wanted = re.compile(COUNTERS)
    flat = [norm(p, {k: v for k, v in _statsd_counters(received[p.kind], "flat").items()
                     if wanted.search(k[len("flat."):])}) for p in pair]
    assert flat[0] == flat[1]
    assert flat[0]["flat.cluster.backend.upstream_rq_200"] == 4
    dog = [norm(p, _statsd_counters(received[p.kind], "dog")) for p in pair]
    tagged = re.compile(r"^dog\.(cluster\.(external\.)?upstream_rq(_xx|_completed|_total)?"
                        r"|http\.downstream_rq(_xx|_total|_completed)|listener\.worker_downstream_cx_total"
                        r"|listener\.http\.downstream_rq_xx)\|")
    # Envoy's admin is an HTTP connection manager with stats (ftproxy's admin has none).
    dog = [{k: v for k, v in d.items() if tagged.search(k) and "_prefix:admin" not in k} for d in dog]
    assert dog[0] == dog[1]
    assert dog[0]["dog.cluster.upstream_rq|#envoy.response_code:200,service:front,envoy.cluster_name:backend"] == 4
    assert dog[0]["dog.listener.worker_downstream_cx_total|#envoy.worker_id:0,service:front,"
                  "envoy.listener_address:127.0.0.1_PORT"] == 8


@pytest.mark.parametrize("mode", ["cumulative", "detailed", "disjoint", "prometheusnative", "bogus"])
def test_histogram_buckets_modes_answer_as_envoy(pair, mode):
    envoy, ftproxy = pair
    query = f"/stats/prometheus?histogram_buckets={mode}&filter=" + urllib.request.quote(r"^cluster\.backend\.upstream_rq_total$")
    e, f = envoy.admin(query), ftproxy.admin(query)
    assert e == f
    assert e[0] == (200 if mode == "cumulative" else 400)


def test_histogram_buckets_summary_is_refused_not_ignored(pair):
    # Declared difference: Envoy prints summaries of the quantiles since its last flush;
    # ftproxy keeps cumulative histograms only, so it answers 400 rather than another page.
    envoy, ftproxy = pair
    assert envoy.admin("/stats/prometheus?histogram_buckets=summary")[0] == 200
    status, body = ftproxy.admin("/stats/prometheus?histogram_buckets=summary")
    assert status == 400 and "not supported yet" in body
