"""`proxyctl start` on an address that is taken says which one: the listener's or the admin's.

The test holds a listening socket on a free port, points the bootstrap's listener (or admin)
at it, and reads the error `proxyctl start` prints before it exits 1. Before, both said
"epoch 0 could not start: [Errno 98] Address already in use" and nothing else.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_supervisor import PROXYCTL, direct_config, proxyctl, unique_base_id
from tests.integration.servers import free_port

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
