"""`proxyctl start --daemon --log-file L`: log rotation the logrotate way.

Rename L, send SIGUSR1 to the supervisor: from then on every line, the supervisor's and the
epochs' (an epoch's stdout access log, a new epoch's start-up log, the old epoch's exit),
lands in a new file at L, and nothing more in the renamed one.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

from cli.control import pid_alive
from tests.e2e.test_supervisor import PROXYCTL, curl, direct_config, proxyctl, unique_base_id, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.skipif(not os.path.exists(PROXYCTL), reason="proxyctl is not installed in this venv")


def stdout_access_log_config(path: Path, port: int) -> Path:
    cfg_path = direct_config(path, port)
    cfg = yaml.safe_load(cfg_path.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"text_format_source": {"inline_string": "access %REQ(:PATH)%\n"}}}}]
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def test_sigusr1_reopens_the_daemon_log_file_for_supervisor_and_epochs(tmp_path):
    port = free_port()
    pid_file = tmp_path / "d.pid"
    log = tmp_path / "ftproxy.log"
    rotated = tmp_path / "ftproxy.log.1"
    cfg = stdout_access_log_config(tmp_path / "a.yaml", port)
    r = proxyctl("start", "-c", str(cfg), "--daemon", "--pid-file", str(pid_file), "--log-file", str(log),
                 "--base-id", str(unique_base_id()), "--drain-time-s", "1", "--parent-shutdown-time-s", "2",
                 "--concurrency", "1", timeout=30)
    assert r.returncode == 0, r.stderr
    pid = int(pid_file.read_text())
    try:
        assert curl(port, "/before")[0] == 200
        assert wait_for(lambda: "access /before" in log.read_text()), log.read_text()
        os.rename(log, rotated)
        os.kill(pid, signal.SIGUSR1)
        assert wait_for(log.exists), "the supervisor did not reopen its log file"
        assert curl(port, "/after")[0] == 200  # epoch 0's stdout
        assert wait_for(lambda: "access /after" in log.read_text()), log.read_text()
        reload = proxyctl("reload", "--pid-file", str(pid_file))  # a new epoch, and the old one exits
        assert reload.returncode == 0, reload.stderr
        epoch1 = reload.stdout.split("pid ")[1].rstrip(")\n")
        assert wait_for(lambda: f"[{epoch1}][MainThread][INFO] ftproxy" in log.read_text()), log.read_text()
        assert wait_for(lambda: "epoch 0 (pid" in log.read_text() and "exited" in log.read_text(), 15)
        stop = proxyctl("stop", "--pid-file", str(pid_file))
        assert stop.returncode == 0, stop.stderr
    finally:
        if pid_alive(pid):
            proxyctl("stop", "--pid-file", str(pid_file), "--timeout", "20")
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    new, old = log.read_text(), rotated.read_text()
    assert "access /before" in old and "access /before" not in new
    assert "access /after" in new and "access /after" not in old
    assert "reopened the log file" in new and "stopping" in new
    assert f"[{epoch1}]" not in old and "stopping" not in old

