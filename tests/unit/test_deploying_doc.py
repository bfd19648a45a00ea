"""docs/deploying.md's systemd unit: what a service needs is there, and systemd accepts it.

The unit is taken from the page as written, its /opt/ftproxy/.venv/bin/proxyctl pointed at this
venv's (systemd-analyze checks that the commands exist), and `systemd-analyze verify` must
print nothing (it reports unknown keys and bad values as warnings, with exit status 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploying.md"
PROXYCTL = Path(sys.executable).parent / "proxyctl"


def unit_text() -> str:
    blocks = re.findall(r"```ini\n(.*?)```", DOC.read_text(), re.S)
    (unit,) = [b for b in blocks if "[Service]" in b]
    return unit


def settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_user_restart_reload_stop_and_install():
    unit = unit_text()
    s = settings(unit)
    assert s["Type"] == ["simple"] and s["User"] == ["ftproxy"] and s["Restart"] == ["on-failure"]
    assert "[Install]" in unit and s["WantedBy"] == ["multi-user.target"]
    pid = "--pid-file /run/ftproxy/proxyctl.pid"
    assert s["ExecStart"][0].endswith(f"proxyctl start -c /etc/ftproxy/bootstrap.yaml {pid}")
    assert s["ExecReload"] == [f"/opt/ftproxy/.venv/bin/proxyctl reload {pid}"]  # its exit status counts
    assert s["RuntimeDirectory"] == ["ftproxy"]  # /run/ftproxy for the pid file, owned by User=
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]
    assert int(s["TimeoutStopSec"][0]) > 600  # longer than the default --drain-time-s


def test_install_steps_enable_the_unit():
    text = DOC.read_text()
    for step in ("useradd --system", "make install", "/etc/systemd/system/ftproxy.service",
                 "systemctl daemon-reload", "systemctl enable --now ftproxy"):
        assert step in text, step


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(not PROXYCTL.exists(), reason="proxyctl is not installed in this venv")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = tmp_path / "ftproxy.service"
    unit.write_text(unit_text().replace("/opt/ftproxy/.venv/bin/proxyctl", str(PROXYCTL)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
