"""`proxyctl start` on an address that is taken says which one: the listener's or the admin's.

The test holds a listening socket on a free port, points the bootstrap's listener (or admin)
at it, and reads the error `proxyctl start` prints before it exits 1. Before, both said
"epoch 0 could not start: [Errno 98] Address already in use" and nothing else. The same for
`proxyctl reload` onto such a config: exit 1 with the reason (what makes systemd's
`ExecReload=proxyctl reload` report a failed reload), and the old epoch keeps serving.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_supervisor import PROXYCTL, curl, direct_config, proxyctl, supervised, unique_base_id
from tests.ports import free_port

__all__ = ["supervised"]  # the fixture, imported for pytest

pytestmark = pytest.mark.skipif(not os.path.exists(PROXYCTL), reason="proxyctl is not installed in this venv")


@pytest.fixture
def taken_port():
    """A port someone else listens on (no SO_REUSEPORT, so the proxy's bind fails)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _start(tmp_path: Path, cfg: Path):
    pid_file = tmp_path / "p.pid"
    r = proxyctl("start", "-c", str(cfg), "--pid-file", str(pid_file), "--base-id", str(unique_base_id()),
                 "--concurrency", "1", timeout=30)
    assert not pid_file.exists()
    return r


def test_listener_port_in_use_names_the_listener_address(tmp_path, taken_port):
    cfg = direct_config(tmp_path / "a.yaml", taken_port)
    r = _start(tmp_path, cfg)
    assert r.returncode == 1
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"127.0.0.1:{taken_port}" in error, r.stderr
    assert "listener" in error and "Address already in use" in error
    assert "Traceback" not in r.stderr


def test_admin_port_in_use_names_the_admin_address(tmp_path, taken_port):
    cfg = direct_config(tmp_path / "a.yaml", free_port())
    doc = yaml.safe_load(cfg.read_text())
    doc["admin"]["address"]["socket_address"]["port_value"] = taken_port
    cfg.write_text(yaml.safe_dump(doc))
    r = _start(tmp_path, cfg)
    assert r.returncode == 1
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"admin address 127.0.0.1:{taken_port}" in error, r.stderr
    assert "Address already in use" in error
    assert "Traceback" not in r.stderr


def test_reload_onto_a_taken_port_exits_1_naming_it_and_the_old_epoch_serves(tmp_path, taken_port, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port, "old"), port)
    new = direct_config(tmp_path / "b.yaml", port, "new")
    doc = yaml.safe_load(new.read_text())
    second = {**doc["static_resources"]["listeners"][0], "name": "second"}
    second["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": taken_port}}
    doc["static_resources"]["listeners"].append(second)
    new.write_text(yaml.safe_dump(doc))
    r = sup.reload(new)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("reload failed: ") and f"127.0.0.1:{taken_port}" in r.stderr, r.stderr
    assert "Address already in use" in r.stderr
    assert curl(port) == (200, "old")
    assert [(e["epoch"], e["state"]) for e in sup.status()["epochs"]] == [(0, "serving")]
