"""Load reports as Envoy's LoadStatsReporter computes them (proxy/upstream/load_report.py), and
the `cluster_manager` config that turns them on (proxy/config/cluster_manager_config.py)."""

from __future__ import annotations

import copy

import pytest

import proxy.extensions  # noqa: F401  (fills the registry)
from proxy.config.bootstrap import parse_bootstrap
from proxy.config.reader import ConfigError, ConfigErrors
from proxy.upstream.load_report import ClusterSample, HostSample, LoadReportState

Z1, Z2 = ("r", "z1", ""), ("r", "z2", "")


class Counters:
    def __init__(self) -> None:
        self.hosts = {("a", 1): [0, Z1, 0, 0, 0, 0], ("b", 2): [0, Z2, 0, 0, 0, 0],
                      ("c", 3): [1, Z1, 0, 0, 0, 0]}
        self.dropped = 0

    def bump(self, key, success=0, error=0, active=None, issued=0) -> None:
        h = self.hosts[key]
        h[2] += success
        h[3] += error
        if active is not None:
            h[4] = active
        h[5] += issued

    def sample(self, name: str):
        if name != "svc":
            return None
        return ClusterSample("", tuple(HostSample(k, *v) for k, v in self.hosts.items()), self.dropped)


def test_counts_before_the_interval_are_latched_and_deltas_reported():
    c = Counters()
    c.bump(("a", 1), success=5, issued=5)         # before the server asked: not reported
    st = LoadReportState(c.sample)
    st.on_response(["svc", "gone"], now=10.0)
    c.bump(("a", 1), success=2, error=1, issued=3)
    c.bump(("b", 2), active=1, issued=1)
    c.dropped = 4
    [r] = st.report(now=11.5)                    # "gone" does not exist: no ClusterStats
    assert r.name == "svc" and r.dropped == 4 and r.interval == 1.5
    assert [(loc.priority, loc.locality, loc.success, loc.error, loc.active, loc.issued)
            for loc in r.localities] == [(0, Z1, 2, 1, 0, 3), (0, Z2, 0, 0, 1, 1)]
    # Next interval: only the request still in progress is reported (active, nothing issued).
    [r] = st.report(now=12.0)
    assert r.interval == 0.5 and r.dropped == 0
    assert [(loc.locality, loc.active, loc.issued) for loc in r.localities] == [(Z2, 1, 0)]
    c.bump(("b", 2), success=1, active=0)
    c.bump(("c", 3), issued=1, error=1)
    [r] = st.report(now=13.0)
    assert [(loc.priority, loc.locality, loc.success, loc.error, loc.issued)
            for loc in r.localities] == [(1, Z1, 0, 1, 1)]   # z2: 1 success, 0 issued, 0 active


def test_a_cluster_named_again_keeps_its_interval_and_counts():
    c = Counters()
    st = LoadReportState(c.sample)
    st.on_response(["svc"], now=1.0)
    c.bump(("a", 1), success=1, issued=1)
    st.on_response(["svc"], now=2.0)             # a new response naming it again: no latch
    [r] = st.report(now=3.0)
    assert r.interval == 2.0 and r.localities[0].issued == 1
    st.on_response([], now=4.0)
    assert st.report(now=5.0) == []


def test_a_counter_that_went_down_is_a_new_base():
    c = Counters()
    st = LoadReportState(c.sample)
    st.on_response(["svc"], now=0.0)
    c.bump(("a", 1), success=5, issued=5)
    st.report(now=1.0)
    c.hosts[("a", 1)][2] = 1                      # a pool went away with its counts
    c.hosts[("a", 1)][5] = 1
    assert st.report(now=2.0)[0].localities == ()
    c.bump(("a", 1), success=1, issued=1)
    assert st.report(now=3.0)[0].localities[0].issued == 1


def _boot(cm, http2: bool = True) -> dict:
    lrs = {"name": "lrs", "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": "lrs", "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}
    if http2:
        lrs["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return {"static_resources": {"clusters": [lrs]}, "cluster_manager": cm}


GRPC = {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]}


def _error(raw) -> str:
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_bootstrap(raw)
    return str(e.value)


def test_load_stats_config_is_parsed():
    b = parse_bootstrap(_boot({"load_stats_config": GRPC}))
    assert b.cluster_manager.load_stats_config.cluster_name == "lrs"
    assert parse_bootstrap(_boot({})).cluster_manager.load_stats_config is None


@pytest.mark.parametrize("cm,path", [
    ({"local_cluster_name": "x"}, "cluster_manager.local_cluster_name: not supported yet"),
    ({"outlier_detection": {"event_log_path": "/tmp/x"}}, "cluster_manager.outlier_detection: not supported yet"),
    ({"upstream_bind_config": {}}, "cluster_manager.upstream_bind_config"),
    ({"enable_deferred_cluster_creation": True}, "cluster_manager.enable_deferred_cluster_creation"),
    ({"load_stats_config": {**GRPC, "api_type": "REST", "grpc_services": None, "cluster_names": ["lrs"]}},
     "cluster_manager.load_stats_config"),
    ({"load_stats_config": {**GRPC, "rate_limit_settings": {}}},
     "cluster_manager.load_stats_config.rate_limit_settings"),
    ({"load_stats_config": {**GRPC, "grpc_services": [{"envoy_grpc": {"cluster_name": "nope"}}]}},
     'cluster_manager.load_stats_config.grpc_services[0].envoy_grpc.cluster_name: unknown static cluster "nope"'),
])
def test_refusals_name_the_field(cm, path):
    cm = copy.deepcopy(cm)
    lsc = cm.get("load_stats_config")
    if isinstance(lsc, dict) and lsc.get("grpc_services") is None:
        lsc.pop("grpc_services", None)
    assert path in _error(_boot(cm))


def test_the_lrs_cluster_must_speak_http2():
    assert "must speak HTTP/2" in _error(_boot({"load_stats_config": GRPC}, http2=False))
