"""The shipped example configs: they validate, stay on loopback, point at the demo upstreams,
show what the README says they show; and the demo's "what to try" lines derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.demo import HTTP_SERVICES, TCP_ECHO_PORT, default_config_path, describe_config
from cli.main import main as proxyctl
from proxy.config.load import load_bootstrap, validate
from proxy.http.hcm_config import HcmConfig
from proxy.network.tcp_proxy_config import TcpProxyConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FRONT_PROXY = EXAMPLES / "front-proxy.yaml"
TCP_PROXY = EXAMPLES / "tcp-proxy.yaml"
PYTHON_FILTERS = EXAMPLES / "python-filters.yaml"
ALL_EXAMPLES = [FRONT_PROXY, TCP_PROXY, PYTHON_FILTERS]


def _hcm(bootstrap) -> HcmConfig:
    cfg = bootstrap.listeners[0].filter_chains[0].filters[-1].config
    assert isinstance(cfg, HcmConfig)
    return cfg


def _routes(bootstrap) -> list:
    return [r for vh in _hcm(bootstrap).route_config.virtual_hosts for r in vh.routes]


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_example_passes_validate_with_exit_code_0(path):
    code, message = validate(str(path))
    assert code == 0, message


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_proxyctl_validate_exits_0_on_example(path):
    result = CliRunner().invoke(proxyctl, ["validate", "-c", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_example_listens_and_connects_only_on_127_0_0_1(path):
    b = load_bootstrap(str(path))
    addresses = [lis.address for lis in b.listeners]
    addresses += [ep.address for c in b.clusters for ep in c.endpoints]
    assert b.admin is not None
    addresses.append(b.admin.address)
    assert addresses and set(addresses) == {"127.0.0.1"}


def test_front_proxy_clusters_point_at_the_demo_http_upstreams():
    b = load_bootstrap(str(FRONT_PROXY))
    got = {c.name: [(ep.address, ep.port) for ep in c.endpoints] for c in b.clusters}
    assert got == {name: [("127.0.0.1", port)] for name, port in HTTP_SERVICES}
    assert {c.type for c in b.clusters} == {"STATIC"}
    assert {c.lb_policy for c in b.clusters} == {"ROUND_ROBIN"}


def test_tcp_proxy_example_pipes_10001_to_the_demo_echo_server():
    b = load_bootstrap(str(TCP_PROXY))
    (lis,) = b.listeners
    assert (lis.address, lis.port) == ("127.0.0.1", 10001)
    tcp = lis.filter_chains[0].filters[-1].config
    assert isinstance(tcp, TcpProxyConfig)
    (cluster,) = b.clusters
    assert tcp.cluster == cluster.name
    assert [(ep.address, ep.port) for ep in cluster.endpoints] == [("127.0.0.1", TCP_ECHO_PORT)]
    assert (b.admin.address, b.admin.port) == ("127.0.0.1", 9902)


def test_front_proxy_listener_and_admin_use_the_documented_ports():
    b = load_bootstrap(str(FRONT_PROXY))
    assert [(lis.address, lis.port) for lis in b.listeners] == [("127.0.0.1", 10000)]
    assert (b.admin.address, b.admin.port) == ("127.0.0.1", 9901)


def test_front_proxy_hcm_is_an_edge_proxy_with_stdout_access_log_and_websocket():
    hcm = _hcm(load_bootstrap(str(FRONT_PROXY)))
    assert hcm.stat_prefix == "ingress_http"
    assert hcm.codec_type == "AUTO"
    assert hcm.use_remote_address is True
    assert [u.upgrade_type for u in hcm.upgrade_configs] == ["websocket"]
    assert [log.target for log in hcm.access_logs] == ["stdout"]
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]


def test_front_proxy_routes_show_each_route_kind():
    routes = _routes(load_bootstrap(str(FRONT_PROXY)))
    by_prefix = {r.match.value: r for r in routes}
    assert by_prefix["/healthz"].direct_response.status == 200
    assert by_prefix["/old/"].redirect.response_code == 302
    assert by_prefix["/split"].action.weighted_clusters == (("service1", 75), ("service2", 25))
    assert by_prefix["/service/1"].action.cluster == "service1"
    assert by_prefix["/service/2"].action.cluster == "service2"
    assert by_prefix["/service/2"].action.prefix_rewrite == "/api"
    assert any(m.name == b"x-route" for m in by_prefix["/service/1"].request_mutations)
    assert any(m.name == b"x-proxied-by" for m in by_prefix["/service/1"].response_mutations)


def test_demo_default_config_is_the_bundled_front_proxy():
    assert default_config_path() == FRONT_PROXY


def test_describe_config_gives_a_curl_line_per_route_and_the_admin_url():
    lines = describe_config(load_bootstrap(str(FRONT_PROXY)))
    text = "\n".join(lines)
    for path in ("/healthz", "/old/hello", "/split/hello", "/service/1/hello",
                 "/service/2/hello"):
        assert f"curl -i http://127.0.0.1:10000{path} " in text
    assert "http://127.0.0.1:9901/" in text
    assert len([line for line in lines if "curl" in line]) == 5


def test_describe_config_uses_the_real_ports_it_is_given():
    lines = describe_config(load_bootstrap(str(FRONT_PROXY)), {"ingress": 23456}, 34567)
    text = "\n".join(lines)
    assert "http://127.0.0.1:23456/healthz" in text and ":10000" not in text
    assert "http://127.0.0.1:34567/" in text and ":9901" not in text


def test_describe_config_gives_a_telnet_line_for_a_tcp_proxy_listener():
    lines = describe_config(load_bootstrap(str(TCP_PROXY)))
    assert any("telnet://127.0.0.1:10001" in line and "echo_service" in line for line in lines)
