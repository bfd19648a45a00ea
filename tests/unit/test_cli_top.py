"""proxyctl top's model and rendering from canned admin JSON, the admin client, and the
one-shot views (stats, config-dump, clusters) against a fake admin (a real local HTTP server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from cli.admin_client import AdminClient, AdminError, AdminUnreachable, parse_address
from cli.top import UNREACHABLE, TopModel, format_duration, parse_stats_json, poll_once, render_top
from cli.views import register_commands
from tests.ports import free_port

LST = "127.0.0.1_10000"
QUANTILES = [0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100]


def stats_json(values: dict[str, int], hists: dict[str, list[float | None]] | None = None) -> dict:
    """The shape of Envoy's /stats?format=json (as proxy/stats/render.py renders it)."""
    stats: list[dict] = [{"name": n, "value": v} for n, v in sorted(values.items())]
    if hists:
        stats.append({"histograms": {"supported_quantiles": QUANTILES, "computed_quantiles": [
            {"name": n, "values": [{"interval": None, "cumulative": v} for v in vals]}
            for n, vals in hists.items()]}})
    return {"stats": stats}


def sample(rq: int, ok: int, c4: int, c5: int, w0: int, w1: int, up_rq: int) -> dict:
    return stats_json({
        "http.ingress_http.downstream_rq_total": rq, "http.ingress_http.downstream_rq_2xx": ok,
        "http.ingress_http.downstream_rq_4xx": c4, "http.ingress_http.downstream_rq_5xx": c5,
        "http.ingress_http.downstream_rq_active": 2, "http.ingress_http.downstream_cx_active": 3,
        f"listener.{LST}.downstream_cx_total": w0 + w1, f"listener.{LST}.downstream_cx_active": 3,
        f"listener.{LST}.worker_0.downstream_cx_total": w0, f"listener.{LST}.worker_0.downstream_cx_active": 3,
        f"listener.{LST}.worker_1.downstream_cx_total": w1, f"listener.{LST}.worker_1.downstream_cx_active": 0,
        "listener.admin.downstream_cx_active": 1,
        "cluster.backend.upstream_rq_total": up_rq, "cluster.backend.upstream_rq_2xx": up_rq,
        "cluster.backend.upstream_rq_4xx": 0, "cluster.backend.upstream_rq_5xx": 0,
        "cluster.backend.upstream_cx_active": 4, "cluster.backend.upstream_rq_active": 1,
        # Envoy's external.* twins of the per-class stats (ftproxy reports them too).
        "cluster.backend.external.upstream_rq_2xx": up_rq, "cluster.backend.external.upstream_rq_5xx": 0,
        "server.uptime": 62, "server.hot_restart_epoch": 1, "server.concurrency": 2,
    }, {"cluster.backend.upstream_rq_time": [0.1, 0.2, 1.5, 2.0, 4.25, 5.0, 9.75, 9.8, 9.9, 10.0]})


SERVER_INFO = {"version": "ftproxy/0.1.0", "state": "LIVE", "uptime_current_epoch": "3725s",
               "uptime_all_epochs": "7200s",
               "command_line_options": {"concurrency": 2, "restart_epoch": 1, "config_path": "/etc/p.yaml"},
               "python": {"version": "3.14.0", "gil_enabled": False}}


def host(port: int, **health) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "stats": [{"name": "cx_active", "value": "1", "type": "GAUGE"}, {"name": "rq_total", "value": "7"}],
            "health_status": {"eds_health_status": "HEALTHY", **health}, "weight": 1}


CLUSTERS = {"cluster_statuses": [{"name": "backend", "host_statuses": [
    host(8080), host(8081, failed_active_health_check=True)]}]}


def render(view) -> str:
    console = Console(record=True, width=120)
    console.print(render_top(view, 1.0))
    return console.export_text()


def two_samples() -> TopModel:
    model = TopModel("127.0.0.1:9901")
    model.update(sample(10, 8, 1, 1, 6, 4, 9), SERVER_INFO, CLUSTERS, now=100.0)
    model.update(sample(30, 24, 3, 3, 16, 6, 29), SERVER_INFO, CLUSTERS, now=102.0)
    return model


def test_two_samples_give_per_second_rates_per_hcm_and_cluster():
    view = two_samples().view()
    (hcm,) = view.hcms
    assert (hcm.prefix, hcm.rq_total, hcm.rq_per_s) == ("ingress_http", 30, 10.0)
    assert (hcm.rq_2xx_per_s, hcm.rq_4xx_per_s, hcm.rq_5xx_per_s) == (8.0, 1.0, 1.0)
    assert (hcm.rq_active, hcm.cx_active) == (2, 3)
    (cl,) = view.clusters
    assert (cl.name, cl.rq_total, cl.rq_per_s, cl.rq_2xx_per_s, cl.cx_active, cl.rq_active) == (
        "backend", 29, 10.0, 10.0, 4, 1)


def test_external_category_stats_are_no_cluster_of_their_own():
    view = two_samples().view()
    assert [c.name for c in view.clusters] == ["backend"]  # not also "backend.external"


def test_rendered_rows_show_rates_totals_and_latency():
    text = render(two_samples().view())
    hcm_line = next(line for line in text.splitlines() if "ingress_http" in line)
    assert hcm_line.split()[1:8] == ["30", "10.0", "8.0", "1.0", "1.0", "2", "3"]
    cluster_line = next(line for line in text.splitlines() if line.split()[:1] == ["backend"])
    assert cluster_line.split() == [
        "backend", "1/2", "29", "10.0", "10.0", "0.0", "0.0", "4", "1", "1.50", "4.25", "9.75"]


def test_first_sample_has_totals_but_no_rates():
    model = TopModel()
    view = model.update(sample(10, 8, 1, 1, 6, 4, 9), SERVER_INFO, CLUSTERS, now=5.0)
    assert view.hcms[0].rq_total == 10 and view.hcms[0].rq_per_s is None
    assert "ingress_http" in render(view)


def test_upstream_latency_quantiles_come_from_computed_quantiles():
    (cl,) = two_samples().view().clusters
    assert (cl.p50_ms, cl.p90_ms, cl.p99_ms) == (1.5, 4.25, 9.75)


def test_host_health_counts_failed_active_health_check_as_unhealthy():
    (cl,) = two_samples().view().clusters
    assert (cl.hosts_healthy, cl.hosts_total) == (1, 2)


def test_workers_show_connections_rates_and_share_of_accepted():
    view = two_samples().view()
    w0, w1 = view.workers
    assert (w0.worker, w0.cx_total, w0.cx_active, w0.cx_per_s) == (0, 16, 3, 5.0)
    assert (w1.worker, w1.cx_total, w1.cx_active, w1.cx_per_s) == (1, 6, 0, 1.0)
    assert w0.share == pytest.approx(16 / 22) and w1.share == pytest.approx(6 / 22)
    text = render(view)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(LST))  # the listener, then its workers
    assert lines[at + 1].split()[0] == "worker_0" and lines[at + 1].endswith("73%")
    assert lines[at + 2].split()[0] == "worker_1" and lines[at + 2].endswith("27%")


def test_listener_rows_exclude_worker_stats_and_the_admin_listener():
    (lst,) = two_samples().view().listeners
    assert (lst.address, lst.cx_total, lst.cx_active, lst.cx_per_s) == (LST, 22, 3, 6.0)


def test_header_shows_version_epoch_uptime_gil_concurrency_and_state():
    view = two_samples().view()
    h = view.header
    assert (h.version, h.state, h.epoch, h.concurrency, h.gil_enabled) == ("ftproxy/0.1.0", "LIVE", 1, 2, False)
    assert (h.uptime, h.uptime_all) == ("1h02m05s", "2h00m00s")
    first, second = render(view).splitlines()[:2]
    for part in ("ftproxy/0.1.0", "state LIVE", "epoch 1", "uptime 1h02m05s"):
        assert part in first
    for part in ("concurrency 2", "GIL disabled", "python 3.14.0", "admin 127.0.0.1:9901"):
        assert part in second


def test_header_falls_back_to_server_stats_without_server_info():
    model = TopModel()
    h = model.update(sample(1, 1, 0, 0, 1, 0, 1), None, None, now=1.0).header
    assert (h.epoch, h.concurrency, h.uptime) == (1, 2, "1m02s")


def test_unreachable_admin_keeps_last_data_and_flags_header():
    model = two_samples()
    view = model.mark_unreachable("connection refused", now=107.0)
    assert view.hcms == two_samples().view().hcms and view.clusters[0].rq_total == 29
    text = render(view)
    assert UNREACHABLE in text and "5s old" in text and "ingress_http" in text


def test_rates_resume_after_the_admin_comes_back():
    model = two_samples()
    model.mark_unreachable("timed out", now=103.0)
    view = model.update(sample(40, 34, 3, 3, 20, 6, 39), SERVER_INFO, CLUSTERS, now=104.0)
    assert view.header.error is None and view.hcms[0].rq_per_s == 5.0


def test_counter_that_went_down_counts_as_a_reset_to_zero():
    model = two_samples()  # a hot restart replaced the process: counters restart
    view = model.update(sample(4, 4, 0, 0, 2, 2, 4), SERVER_INFO, CLUSTERS, now=104.0)
    assert view.hcms[0].rq_per_s == 2.0 and view.clusters[0].rq_per_s == 2.0


def test_parse_stats_json_maps_quantiles_and_skips_non_numeric_values():
    values, hists = parse_stats_json(stats_json({"a.b": 3}, {"h": [None] * 10}))
    assert values == {"a.b": 3} and hists == {"h": {q: None for q in map(float, QUANTILES)}}


@pytest.mark.parametrize("raw,shown", [("0s", "0s"), ("59s", "59s"), ("61s", "1m01s"), (90061, "1d01h01m"),
                                       ("weird", "weird")])
def test_format_duration(raw, shown):
    assert format_duration(raw) == shown


# ---------------------------------------------------------------- admin client and one-shot views


class _FakeAdmin(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        path = self.path.split("?")[0]
        if "filter=%28" in self.path:
            code, body = 400, b"Invalid re2 regex\n"
        elif path == "/stats" and "format=json" in self.path:
            code, body = 200, json.dumps(sample(5, 5, 0, 0, 3, 2, 5)).encode()
        elif path == "/stats":
            code, body = 200, b"cluster.backend.upstream_rq_total: 5\n"
        elif path == "/server_info":
            code, body = 200, json.dumps(SERVER_INFO).encode()
        elif path == "/clusters":
            code, body = 200, json.dumps(CLUSTERS).encode()
        elif path == "/config_dump":
            code, body = 200, b'{"configs": [{"@type": "x"}]}'
        else:
            code, body = 404, b"invalid path"
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_admin():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAdmin)
    httpd.paths = []
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    port = free_port()  # nothing listens there
    return port


def _cli() -> click.Group:
    group = click.Group("proxyctl")
    register_commands(group)
    return group


def _addr(httpd) -> str:
    return f"127.0.0.1:{httpd.server_address[1]}"


def test_register_commands_adds_top_stats_config_dump_clusters():
    assert {"top", "stats", "config-dump", "clusters"} <= set(_cli().commands)


def test_client_raises_unreachable_naming_the_address():
    addr = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(AdminUnreachable, match=f"admin at {addr} unreachable: connection refused"):
        AdminClient(addr, timeout=1).get_json("/stats")


def test_client_raises_admin_error_with_status_on_non_2xx(fake_admin):
    with pytest.raises(AdminError, match="404") as e:
        AdminClient(_addr(fake_admin)).get_text("/nope")
    assert e.value.status == 404


@pytest.mark.parametrize("bad", ["9901", "host:", "host:99999", "h:x"])
def test_parse_address_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_stats_command_passes_filter_and_prints_text(fake_admin):
    res = CliRunner().invoke(_cli(), ["stats", "--admin", _addr(fake_admin), "--filter", "^cluster\\."])
    assert res.exit_code == 0 and res.output == "cluster.backend.upstream_rq_total: 5\n"
    assert fake_admin.paths[-1] == "/stats?filter=%5Ecluster%5C."


def test_stats_command_json_pretty_prints_admin_json(fake_admin):
    res = CliRunner().invoke(_cli(), ["stats", "--admin", _addr(fake_admin), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["stats"][0]["name"].startswith("cluster.")
    assert "format=json" in fake_admin.paths[-1]


def test_stats_command_reports_admin_error_without_traceback(fake_admin):
    res = CliRunner().invoke(_cli(), ["stats", "--admin", _addr(fake_admin), "--filter", "("])
    assert res.exit_code == 1 and "answered 400" in res.output and "Traceback" not in res.output


def test_unreachable_admin_is_one_line_and_exit_1():
    res = CliRunner().invoke(_cli(), ["config-dump", "--admin", f"127.0.0.1:{_closed_port()}"])
    assert res.exit_code == 1 and "unreachable" in res.output and res.exception.__class__ is SystemExit


def test_config_dump_prints_json(fake_admin):
    res = CliRunner().invoke(_cli(), ["config-dump", "--admin", _addr(fake_admin)])
    assert res.exit_code == 0 and json.loads(res.output) == {"configs": [{"@type": "x"}]}


def test_clusters_command_shows_one_row_per_host_with_health(fake_admin):
    res = CliRunner().invoke(_cli(), ["clusters", "--admin", _addr(fake_admin)])
    assert res.exit_code == 0
    rows = [line for line in res.output.splitlines() if "127.0.0.1:808" in line]
    assert len(rows) == 2 and "healthy" in rows[0] and "failed_active_hc" in rows[1]  # Envoy's flag name


def test_bad_admin_option_is_a_usage_error():
    res = CliRunner().invoke(_cli(), ["clusters", "--admin", "nocolon"])
    assert res.exit_code == 2 and "HOST:PORT" in res.output


def test_poll_once_keeps_data_when_the_admin_goes_away(fake_admin):
    model = TopModel(_addr(fake_admin))
    client = AdminClient(_addr(fake_admin), timeout=1)
    assert poll_once(client, model, 1.0).hcms[0].rq_total == 5
    fake_admin.shutdown()
    fake_admin.server_close()
    view = poll_once(client, model, 2.0)
    assert view.header.error.startswith(UNREACHABLE) and view.hcms[0].rq_total == 5


def test_header_shows_the_control_plane_state_and_xds_updates():
    model = TopModel()
    values = {"control_plane.connected_state": 0, "listener_manager.lds.update_success": 2,
              "cluster_manager.cds.update_success": 3, "cluster_manager.cds.update_rejected": 1,
              "http.ingress.rds.local_route.update_success": 4, "cluster.svc.update_rejected": 2,
              "listener_manager.total_listeners_warming": 1}
    view = model.update(stats_json(values), None, None, now=1.0)
    x = view.header.xds
    assert (x.connected, x.accepted, x.rejected, x.warming_listeners) == (False, 9, 3, 1)
    text = render(view)
    for part in ("xDS", "control plane disconnected", "updates 9 applied 3 rejected",
                 "warming 1 listener(s) 0 cluster(s)"):
        assert part in text
    assert TopModel().update(stats_json({"server.uptime": 1}), None, None, now=1.0).header.xds is None
