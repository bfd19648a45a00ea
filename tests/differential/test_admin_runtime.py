"""Admin `/runtime`, `/runtime_modify`, `/memory`, `/init_dump` and `/contention` against real
Envoy 1.40, one bootstrap (three runtime layers: two static, one admin) through both.

Compared: `/runtime`'s JSON whole (layers in order, each key's per-layer values and final
value); `/init_dump` ({} once started); `/memory`'s keys, each a decimal string;
`/runtime_modify` without parameters (400 and Envoy's usage text); the status of
`/contention`. Declared differences (README): `/runtime_modify` with parameters is refused
(503) because ftproxy reads runtime keys at start-up; `/memory`'s values are the process's own
(/proc), the tcmalloc-only ones 0; `/contention`'s text."""

from __future__ import annotations

import json

import pytest

from .proxies import BootstrapProcess, PortReservation

RUNTIME = {"layers": [
    {"name": "static_layer_0", "static_layer": {
        "overload": {"global_downstream_max_connections": 50000},
        "envoy.resource_limits.listener.l1.connection_limit": 7}},
    {"name": "second", "static_layer": {"overload.global_downstream_max_connections": 100}},
    {"name": "admin_layer_x", "admin_layer": {}},
]}


class _Proc(BootstrapProcess):
    def __init__(self, kind: str, tmp_path) -> None:
        ports = PortReservation()
        admin_port = ports.take()
        ports.release()
        super().__init__(kind, {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "layered_runtime": RUNTIME, "static_resources": {}}, admin_port, tmp_path / f"{kind}.json")

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        return self.admin(path, method)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    procs = {k: _Proc(k, tmp_path_factory.mktemp(k)) for k in ("envoy", "ftproxy")}
    yield procs
    for p in procs.values():
        p.stop()


def test_runtime_layers_and_entries_agree(both):
    got = {k: p.get("/runtime") for k, p in both.items()}
    assert got["envoy"][0] == got["ftproxy"][0] == 200
    envoy, ours = (json.loads(got[k][1]) for k in ("envoy", "ftproxy"))
    assert ours == envoy
    assert ours["entries"]["overload.global_downstream_max_connections"] == {
        "layer_values": ["50000", "100", ""], "final_value": "100"}


def test_runtime_modify_usage_agrees_and_overrides_are_refused(both):
    for p in both.values():
        assert p.get("/runtime_modify", "GET")[0] == 405
    envoy, ours = (both[k].get("/runtime_modify", "POST") for k in ("envoy", "ftproxy"))
    assert ours == envoy and ours[0] == 400
    status, body = both["ftproxy"].get("/runtime_modify?foo=bar", "POST")
    assert status == 503 and "start-up" in body
    assert "foo" not in json.loads(both["ftproxy"].get("/runtime")[1])["entries"]


def test_memory_init_dump_and_contention_agree_in_shape(both):
    envoy, ours = (json.loads(both[k].get("/memory")[1]) for k in ("envoy", "ftproxy"))
    assert set(ours) == set(envoy)
    assert all(isinstance(v, str) and v.isdigit() for v in ours.values()), ours
    assert int(ours["total_physical_bytes"]) > 10 * 1024 * 1024   # a Python process's RSS
    assert 0 < int(ours["allocated"]) <= int(ours["total_physical_bytes"])
    assert [json.loads(both[k].get("/init_dump")[1]) for k in ("envoy", "ftproxy")] == [{}, {}]
    assert both["envoy"].get("/contention")[0] == both["ftproxy"].get("/contention")[0] == 200
