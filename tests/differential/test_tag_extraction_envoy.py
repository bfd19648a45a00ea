"""Tag extraction against real Envoy 1.40, stat by stat, for every stat Envoy itself creates.

Real Envoy runs a bootstrap with many stat families (an HTTP connection manager with rbac (rules
and shadow rules with stat prefixes), local rate limit, virtual clusters and a route stat_prefix;
a TCP chain with network rbac, connection_limit, local rate limit and tcp_proxy; a listener with
proxy_protocol; a TLS listener (ssl.ciphers / versions / curves / sigalgs / certificate stats)
whose tcp_proxy goes to a cluster over TLS back to that listener; a health-checked cluster) and a `stats_config` adding a fixed tag and a regex.
Its flat stats (`/stats?format=json`, names and values) are fed to ftproxy's renderer with
ftproxy's TagProducer for the same stats_config; the Prometheus text that comes out must be
Envoy's own `/stats/prometheus` for counters and gauges, byte for byte, and for histograms the
same families with the same label sets. This checks the default extractors (regexes, tokenized
patterns, their order, first-match-per-name) on names ftproxy does not create itself.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from proxy.config.stats_config import parse_stats_config
from proxy.stats.histogram import HistogramSummary
from proxy.stats.render import render_prometheus
from proxy.stats.store import StatsSnapshot
from tests.integration.harness import EchoUpstream
from tests.tls_certs import CertAuthority

from .proxies import PortReservation, envoy_binary

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
STATS_CONFIGS = {
    # Envoy's defaults, a fixed tag and a regex.
    "defaults": {"stats_tags": [{"tag_name": "dc", "fixed_value": "eu-1"},
                                {"tag_name": "kind", "regex": r"^cluster\.\w+\.upstream_((cx|rq))_"}]},
    # No defaults: two default tags asked for by name (both HCM-prefix extractors), a regex.
    "chosen": {"use_all_default_tags": False,
               "stats_tags": [{"tag_name": "envoy.http_conn_manager_prefix"},
                              {"tag_name": "envoy.response_code"},
                              {"tag_name": "lst", "regex": r"^listener\.((\w+)\.)"}]},
}
NEEDLES = {
    "defaults": ('envoy_rbac_prefix="net"', 'envoy_rbac_http_prefix="rules_"', 'envoy_connection_limit_prefix="cl"',
                 'envoy_local_network_ratelimit_prefix="net_rl"', 'envoy_local_http_ratelimit_prefix="http_rl"',
                 'envoy_tcp_prefix="tcp_stats"', 'envoy_virtual_cluster="vc_api"', 'envoy_route="all_routes"',
                 'envoy_listener_address="tcp_listener"', 'dc="eu-1"', 'kind="rq"',
                 'envoy_ssl_cipher="', 'cipher_suite="', 'envoy_ssl_version="TLSv1.2"',
                 'envoy_ssl_curve="X25519"', 'envoy_ssl_sigalg="'),
    "chosen": ('envoy_http_conn_manager_prefix="ingress_http"', 'envoy_response_code="200"',
               'lst="tcp_listener"', 'envoy_cluster_backend_upstream_rq{envoy_response_code="200"}'),
}


def _bootstrap(admin: int, http_port: int, tcp_port: int, pp_port: int, upstream: int,
               tls_port: int, cert: str, key: str, stats_config: dict) -> dict:
    def addr(port):
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    rbac_policy = {"policies": {"allow-all": {"permissions": [{"any": True}], "principals": [{"any": True}]}}}
    http_filters = [
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", **rbac_policy}, "rules_stat_prefix": "rules_",
            "shadow_rules": {"action": "DENY", **rbac_policy}, "shadow_rules_stat_prefix": "shadow_"}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "http_rl",
            "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100}, "runtime_key": "rl_enforced"}}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]
    route_config = {"virtual_hosts": [{
        "name": "vh_main", "domains": ["*"],
        "virtual_clusters": [{"name": "vc_api", "headers": [{"name": ":path", "string_match": {"prefix": "/api"}}]}],
        "routes": [{"match": {"prefix": "/tls"}, "route": {"cluster": "tls_loop"}},
                   {"match": {"prefix": "/"}, "stat_prefix": "all_routes", "route": {"cluster": "backend"}}],
    }]}
    tcp_filters = [
        {"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "net.", "rules": {"action": "ALLOW", **rbac_policy}}},
        {"name": "envoy.filters.network.connection_limit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            "stat_prefix": "cl", "max_connections": 100}},
        {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "net_rl",
            "token_bucket": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1s"}}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp_stats", "cluster": "backend"}},
    ]
    return {
        "admin": {"address": addr(admin)},
        "stats_config": stats_config,
        "static_resources": {
            "listeners": [
                {"name": "http", "address": addr(http_port), "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {"@type": HCM, "stat_prefix": "ingress_http", "route_config": route_config,
                                     "http_filters": http_filters}}]}]},
                {"name": "tcp", "stat_prefix": "tcp_listener", "address": addr(tcp_port),
                 "filter_chains": [{"filters": tcp_filters}]},
                {"name": "pp", "address": addr(pp_port),
                 "listener_filters": [{"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
                     "stat_prefix": "pp_in"}}],
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                     "stat_prefix": "pp_tcp", "cluster": "backend"}}]}]},
                {"name": "tls", "address": addr(tls_port), "filter_chains": [{
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": cert},
                                                                     "private_key": {"filename": key}}]}}},
                    "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tls_tcp", "cluster": "backend"}}]}]},
            ],
            "clusters": [{
                "name": "backend", "connect_timeout": "1s", "type": "STATIC",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": addr(upstream)}}]}]},
                "health_checks": [{"timeout": "1s", "interval": "0.2s", "unhealthy_threshold": 1,
                                   "healthy_threshold": 1, "http_health_check": {"path": "/health"}}],
            }, {
                "name": "tls_loop", "connect_timeout": "1s", "type": "STATIC",
                "load_assignment": {"cluster_name": "tls_loop", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": addr(tls_port)}}]}]},
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost"}},
            }],
        },
    }


@pytest.fixture(scope="module", params=sorted(STATS_CONFIGS))
def envoy(request, tmp_path_factory):
    upstream = EchoUpstream("backend")
    ports = PortReservation()
    admin, http_port, tcp_port, pp_port, tls_port = (ports.take() for _ in range(5))
    tmp = tmp_path_factory.mktemp("tags")
    cert, key = CertAuthority().issue_files(tmp, "server", ["localhost"])
    path = tmp / "envoy.json"
    path.write_text(json.dumps(_bootstrap(admin, http_port, tcp_port, pp_port, upstream.port,
                                          tls_port, str(cert), str(key), STATS_CONFIGS[request.param])))
    ports.release()
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1", "-l", "error",
                             "--disable-hot-restart"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def get(p: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{p}", timeout=5) as r:
            return r.read().decode()

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get("/ready").strip() == "LIVE":
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        for target in ("/api/x", "/status/404", "/web", "/tls/x"):
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
            c.request("GET", target)
            c.getresponse().read()
            c.close()
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as s:
            s.sendall(b"GET /tcp HTTP/1.0\r\n\r\n")
            s.recv(65536)
        with socket.create_connection(("127.0.0.1", pp_port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 10.0.0.1 10.0.0.2 1111 2222\r\nGET /pp HTTP/1.0\r\n\r\n")
            s.recv(65536)
        time.sleep(0.5)
        # One read: the values of /stats?format=json and /stats/prometheus must agree.
        for _ in range(20):
            flat, prom = get("/stats?format=json"), get("/stats/prometheus")
            if flat == get("/stats?format=json"):
                break
        yield request.param, json.loads(flat), prom
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.close()


def _split(prom: str) -> tuple[str, list[str]]:
    """Envoy's page: (the counters and gauges part, the histogram families' lines)."""
    lines = prom.splitlines(keepends=True)
    first_hist = next((i for i, line in enumerate(lines) if line.startswith("# TYPE ") and line.endswith(" histogram\n")),
                      len(lines))
    return "".join(lines[:first_hist]), lines[first_hist:]


def test_every_envoy_stat_gets_envoys_tags(envoy):
    config, flat, prom = envoy
    values = {s["name"]: s["value"] for s in flat["stats"] if "name" in s and isinstance(s.get("value"), int)}
    hist_names = [h["name"] for s in flat["stats"] if "histograms" in s
                  for h in s["histograms"]["computed_quantiles"]]
    expected_values, expected_hists = _split(prom)
    # Which flat names are counters and which gauges: Envoy's page says, by family.
    kinds = dict(re.findall(r"^# TYPE (\S+) (counter|gauge)$", expected_values, re.M))
    producer = parse_stats_config(STATS_CONFIGS[config], "stats_config").tag_producer()
    counters, gauges = {}, {}
    for name, v in values.items():
        pname = "envoy_" + re.sub(r"[^a-zA-Z0-9_]", "_", producer.produce(name)[0])
        (gauges if kinds.get(pname) == "gauge" else counters)[name] = v
    snap = StatsSnapshot(counters=counters, gauges=gauges, histograms={}, tag_producer=producer)
    ours = render_prometheus(snap)

    def admin_masked(text: str) -> str:
        # The admin's own stats move between the two reads (each read is a request).
        return re.sub(r'^(\S*(admin|server_total_connections)\S*) \d+$', r"\1 N", text, flags=re.M)

    assert admin_masked(ours) == admin_masked(expected_values)
    # Not vacuous: families of the extractors this bootstrap exercises.
    for needle in NEEDLES[config]:
        assert needle in ours, needle
    # Histograms: the same families in the same order, each with the same label sets.
    hsnap = StatsSnapshot(counters={}, gauges={}, tag_producer=producer,
                          histograms={n: HistogramSummary.empty() for n in hist_names})
    ours_h = render_prometheus(hsnap).splitlines(keepends=True)

    def shape(lines):
        return [re.sub(r"\} \S+$", "}", line.rstrip("\n")) for line in lines]

    assert shape(ours_h) == shape(expected_hists)
