"""`proxyctl top`, `clusters` and `status` on an 80x24 terminal (issue 13 §9: cut headers,
no cluster rows). Each view is rendered with rich at width 80 (and height 24 for the live
screen) and checked line by line: every line fits, every header is whole, and the rows a
user needs (clusters above all) are there, also when there are more rows than lines."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cli.control import render_status
from cli.top import TopModel, render_top
from cli.views import clusters_table
from tests.unit.test_cli_top import CLUSTERS, SERVER_INFO, host, sample, stats_json, two_samples

W, H = 80, 24
TOP_HEADERS = {
    "stat_prefix": ["stat_prefix", "rq total", "rq/s", "2xx/s", "4xx/s", "5xx/s", "active rq", "active cx"],
    "cluster": ["cluster", "healthy", "rq/s", "2xx/s", "4xx/s", "5xx/s", "active rq", "p50 ms", "p99 ms"],
    "listener / worker": ["listener / worker", "active cx", "cx total", "accepted/s", "share"],
}


def screen(renderable=None, *, width: int = W, height: int = H, print_with=None) -> list[str]:
    console = Console(record=True, width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None)
    if print_with is not None:
        print_with(console)
    else:
        console.print(renderable)
    lines = console.export_text().splitlines()
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"lines wider than {width}:\n" + "\n".join(too_wide)
    return lines


def assert_headers_whole(lines: list[str], headers: list[str]) -> None:
    """The line that starts with the first header holds every header, each as written."""
    line = next((ln for ln in lines if ln.startswith(headers[0] + " ")), None)
    assert line is not None, f"no header line for {headers[0]!r}:\n" + "\n".join(lines)
    assert "…" not in line, line
    for h in headers:
        assert f" {h} " in f" {line} ", (h, line)


def busy_view(hcms: int = 1, clusters: int = 1, listeners: int = 1, workers: int = 2):
    """Two samples of a proxy with long names and big numbers."""
    def values(scale: int) -> dict:
        v = {"server.concurrency": workers, "server.hot_restart_epoch": 12, "server.uptime": 999_999}
        for i in range(hcms):
            p = f"ingress_http_with_a_long_prefix_{i}"
            v |= {f"http.{p}.downstream_rq_total": 123_456_789 * scale, f"http.{p}.downstream_rq_2xx": 98_765 * scale,
                  f"http.{p}.downstream_rq_4xx": 4 * scale, f"http.{p}.downstream_rq_5xx": 55_555 * scale,
                  f"http.{p}.downstream_rq_active": 10_000, f"http.{p}.downstream_cx_active": 20_000}
        for i in range(clusters):
            c = f"backend_service_number_{i}_in_the_eu_west_region"
            v |= {f"cluster.{c}.upstream_rq_total": 987_654_321 * scale, f"cluster.{c}.upstream_rq_2xx": 5_000 * scale,
                  f"cluster.{c}.upstream_rq_4xx": 0, f"cluster.{c}.upstream_rq_5xx": 12_345 * scale,
                  f"cluster.{c}.upstream_cx_active": 1_000, f"cluster.{c}.upstream_rq_active": 99_999,
                  f"cluster.{c}.membership_healthy": 10, f"cluster.{c}.membership_total": 12}
        for i in range(listeners):
            a = f"[2001:db8:1234:5678::{i}]_10000"
            v |= {f"listener.{a}.downstream_cx_total": 1_000_000 * scale, f"listener.{a}.downstream_cx_active": 50_000}
            for w in range(workers):
                v |= {f"listener.{a}.worker_{w}.downstream_cx_total": 1_000_000 * scale // workers,
                      f"listener.{a}.worker_{w}.downstream_cx_active": 50_000 // workers}
        return v
    hist = {f"cluster.backend_service_number_{i}_in_the_eu_west_region.upstream_rq_time":
            [1, 2, 3, 4, 5, 6, 12_345.5, 20_000, 30_000, 60_000] for i in range(clusters)}
    model = TopModel("[2001:db8:1234:5678::1]:9901")
    model.update(stats_json(values(1), hist), SERVER_INFO, None, now=100.0)
    return model.update(stats_json(values(2), hist), SERVER_INFO, None, now=101.0)


def test_top_fits_80x24_with_whole_headers_and_every_row():
    lines = screen(render_top(two_samples().view(), 1.0, W, H))
    assert len(lines) <= H
    for headers in TOP_HEADERS.values():
        assert_headers_whole(lines, headers)
    cluster = next(line for line in lines if line.split()[:1] == ["backend"])
    assert cluster.split() == ["backend", "1/2", "10.0", "10.0", "0.0", "0.0", "1", "1.50", "9.75"]
    assert any(line.split()[:2] == ["ingress_http", "30"] for line in lines)
    assert sum(line.split()[0] in ("worker_0", "worker_1") for line in lines if line.split()) == 2
    assert lines[-1].startswith("q: quit")


def test_top_with_long_names_and_big_numbers_still_fits_with_whole_headers():
    lines = screen(render_top(busy_view(), 1.0, W, H))
    assert len(lines) <= H
    for headers in TOP_HEADERS.values():
        assert_headers_whole(lines, headers)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("cluster "))
    row = lines[at + 1].split()
    assert row[0].startswith("backend_serv") and row[1:] == [
        "10/12", "987.7M", "5,000", "0.0", "12.3k", "99999", "3.00", "12.3k"]


def test_top_with_more_rows_than_lines_keeps_rows_of_every_section():
    lines = screen(render_top(busy_view(hcms=12, clusters=15, listeners=3, workers=8), 1.0, W, H))
    assert len(lines) == H
    for headers in TOP_HEADERS.values():
        assert_headers_whole(lines, headers)
    sections = ("ingress_http_with", "backend_serv", "[2001:db8")
    for prefix in sections:
        assert any(line.startswith(prefix) for line in lines), prefix
    more = [line.split() for line in lines if line.startswith("… ")]
    assert len(more) == 3  # each section says how many rows it could not show
    assert lines[-1].startswith("q: quit")


def test_top_unreachable_header_is_cut_not_wrapped():
    model = two_samples()
    view = model.mark_unreachable("connection refused by 127.0.0.1:9901 " + "x" * 100, now=110.0)
    lines = screen(render_top(view, 1.0, W, H))
    assert lines[2].startswith("admin unreachable") and lines[2].endswith("…")
    assert len(lines) <= H and any(line.split()[:1] == ["backend"] for line in lines)


def test_clusters_fits_80_columns_with_whole_headers_and_host_rows():
    data = {"cluster_statuses": CLUSTERS["cluster_statuses"] + [
        {"name": "a_cluster_with_a_rather_long_name", "host_statuses": [
            host(18080 + i, failed_outlier_check=(i == 1)) for i in range(3)]},
        {"name": "empty", "host_statuses": []}]}
    lines = screen(clusters_table(data, W))
    assert_headers_whole(lines, ["cluster / host", "health", "cx_active", "rq_total", "rq_error"])
    assert [line.split()[0] for line in lines if line.startswith("  127.0.0.1:")] == [
        "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082"]
    assert "failed_active_hc" in next(line for line in lines if "127.0.0.1:8081" in line)
    assert "failed_outlier_check" in next(line for line in lines if "127.0.0.1:18081" in line)
    assert any(line.startswith("a_cluster_with_a_rather") for line in lines)
    assert any("(no hosts)" in line for line in lines)
    wide = screen(clusters_table(data, 140), width=140)  # a wide terminal gets every column
    assert_headers_whole(wide, ["cluster / host", "health", "weight", "cx_active", "cx_total", "rq_active",
                                "rq_total", "rq_success", "rq_error"])


def test_status_fits_80_columns_and_shows_the_whole_config_path():
    now = time.time()
    config = "/home/someone/projects/ftproxy/examples/a-front-proxy-with-a-long-name.yaml"
    info = {"supervisor_pid": 12345, "started": now - 3725, "serving_epoch": 1, "admin": "127.0.0.1:9901",
            "listeners": {"ingress": "127.0.0.1:10000", "tcp": "[2001:db8::1]:10001"},
            "epochs": [{"epoch": 0, "pid": 12346, "state": "draining", "started": now - 3725, "config": config},
                       {"epoch": 1, "pid": 4194304, "state": "serving", "started": now - 65, "config": config}]}
    lines = screen(print_with=lambda console: render_status(info, console))
    assert_headers_whole(lines, ["epoch", "pid", "state", "uptime", "config"])
    assert_headers_whole(lines, ["listener", "address"])
    rows = [line for line in lines if line.split()[:1] in (["0"], ["1"])]
    assert [r.split()[:3] for r in rows] == [["0", "12346", "draining"], ["1", "4194304", "serving"]]
    text = "".join(line.strip() for line in lines)
    assert text.count(config) == 2  # folded over lines, never cut
    assert any(line.split() == ["tcp", "[2001:db8::1]:10001"] for line in lines)
