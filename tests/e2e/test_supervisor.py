"""End to end: `proxyctl start/status/reload/stop` and the supervisor, as real processes.

Each test writes its bootstrap (direct_response routes, a free 127.0.0.1 port, admin on port
0) and uses its own --pid-file in tmp_path and its own --base-id, so tests never share a
supervisor or a hot-restart socket. The helpers here are reused by test_reload.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cli.control import pid_alive
from tests.ports import free_port

PROXYCTL = str(Path(sys.executable).parent / "proxyctl")

pytestmark = pytest.mark.skipif(not os.path.exists(PROXYCTL), reason="proxyctl is not installed in this venv")

_base_ids = itertools.count(1)


def unique_base_id() -> int:
    return 20000 + (os.getpid() % 2000) * 50 + next(_base_ids)


def direct_config(path: Path, port: int, body: str = "A", routes: list[dict] | None = None,
                  clusters: list[dict] | None = None) -> Path:
    """A bootstrap: one HCM listener on 127.0.0.1:`port` answering `body` (direct_response)."""
    routes = routes or [{"match": {"prefix": "/"},
                         "direct_response": {"status": 200, "body": {"inline_string": body}}}]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "ingress_http",
           "route_config": {"name": "local_route",
                            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
           "static_resources": {
               "listeners": [{"name": "ingress",
                              "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                              "filter_chains": [{"filters": [{
                                  "name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm}]}]}],
               "clusters": clusters or []}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def proxyctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PROXYCTL, *args], capture_output=True, text=True, timeout=timeout)


def curl(port: int, path: str = "/", timeout: float = 10) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-m", str(timeout), "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=timeout + 5)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def admin_counters(admin: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{admin}/stats?format=json", timeout=5) as r:
        doc = json.load(r)
    return {s["name"]: s["value"] for s in doc["stats"] if "value" in s}


class Supervised:
    """`proxyctl start` in the foreground (a real supervisor) with its output in a file."""

    def __init__(self, tmp_path: Path, config: Path, port: int, *extra: str,
                 drain_time_s: float = 1.0, parent_shutdown_time_s: float = 20.0) -> None:
        self.port = port
        self.pid_file = str(tmp_path / "proxyctl.pid")
        self.base_id = unique_base_id()
        self.log_path = tmp_path / "supervisor.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROXYCTL, "start", "-c", str(config), "--pid-file", self.pid_file, "--base-id", str(self.base_id),
             "--drain-time-s", str(drain_time_s), "--parent-shutdown-time-s", str(parent_shutdown_time_s),
             "--concurrency", "1", "-l", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(lambda: "ftproxy started" in self.output() or self.proc.poll() is not None, 20):
            self.kill()
            raise AssertionError("supervisor did not start:\n" + self.output())
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited {self.proc.returncode}:\n" + self.output())

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return proxyctl(*args, "--pid-file", self.pid_file, timeout=timeout)

    def status(self) -> dict:
        r = self.ctl("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def reload(self, config: Path | None = None) -> subprocess.CompletedProcess:
        return self.ctl("reload", *(["-c", str(config)] if config else []))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Stop as a user would (SIGTERM: drain, exit, remove the pid file and socket); SIGKILL
        to the supervisor and its epochs only if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            for pid in children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def supervised():
    started: list[Supervised] = []

    def start(*args, **kw) -> Supervised:
        s = Supervised(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


# -- tests ------------------------------------------------------------------------------------------
def test_start_status_stop_round_trip(tmp_path, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port, "hello"), port)
    assert f"listener ingress on 127.0.0.1:{port}" in sup.output()
    assert curl(port) == (200, "hello")
    info = sup.status()
    assert info["supervisor_pid"] == sup.proc.pid
    assert [(e["epoch"], e["state"]) for e in info["epochs"]] == [(0, "serving")]
    assert info["epochs"][0]["config"] == str(tmp_path / "a.yaml")
    assert info["listeners"] == {"ingress": f"127.0.0.1:{port}"}
    assert info["admin"].startswith("127.0.0.1:")
    table = sup.ctl("status")
    assert table.returncode == 0 and "serving" in table.stdout and str(sup.proc.pid) in table.stdout
    assert os.path.exists(sup.pid_file) and os.path.exists(sup.pid_file + ".sock")
    r = sup.ctl("stop")
    assert r.returncode == 0, r.stderr
    assert "stopped" in r.stdout
    assert sup.proc.wait(5) == 0
    assert not os.path.exists(sup.pid_file) and not os.path.exists(sup.pid_file + ".sock")
    assert curl(port, timeout=2)[0] == 0  # nothing listens any more


def test_daemon_returns_once_serving_and_stop_ends_it(tmp_path):
    port = free_port()
    pid_file = str(tmp_path / "d.pid")
    cfg = direct_config(tmp_path / "a.yaml", port, "daemon")
    r = proxyctl("start", "-c", str(cfg), "--daemon", "--pid-file", pid_file, "--base-id", str(unique_base_id()),
                 "--drain-time-s", "1", "--concurrency", "1", timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"listener ingress on 127.0.0.1:{port}" in r.stdout
    pid = int(Path(pid_file).read_text())
    try:
        assert curl(port) == (200, "daemon")  # serving as soon as start returned
        assert proxyctl("status", "--pid-file", pid_file, "--json").returncode == 0
        s = proxyctl("stop", "--pid-file", pid_file)
        assert s.returncode == 0, s.stderr
        assert not pid_alive(pid)  # gone (or a zombie left for init to reap)
        assert "epoch 0" in Path(pid_file + ".log").read_text()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_commands_without_supervisor_exit_1_with_message(tmp_path):
    pid_file = str(tmp_path / "none.pid")
    for cmd in ("reload", "stop", "status"):
        r = proxyctl(cmd, "--pid-file", pid_file)
        assert r.returncode == 1, cmd
        assert "no ftproxy supervisor is running" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr


def test_start_with_bad_config_exits_1_naming_the_field(tmp_path):
    port = free_port()
    cfg = direct_config(tmp_path / "bad.yaml", port)
    cfg.write_text(cfg.read_text().replace("stat_prefix", "stat_prefx"))
    pid_file = str(tmp_path / "p.pid")
    r = proxyctl("start", "-c", str(cfg), "--pid-file", pid_file, "--base-id", str(unique_base_id()), timeout=30)
    assert r.returncode == 1
    assert '"stat_prefx"' in r.stderr and "typed_config" in r.stderr
    assert not os.path.exists(pid_file)


def test_second_start_on_same_pid_file_is_refused(tmp_path, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port), port)
    other = free_port()
    r = proxyctl("start", "-c", str(direct_config(tmp_path / "b.yaml", other)), "--pid-file", sup.pid_file,
                 "--base-id", str(unique_base_id()), timeout=30)
    assert r.returncode == 1
    assert "already running" in r.stderr and str(sup.proc.pid) in r.stderr
    assert curl(port)[0] == 200


def test_sighup_reloads_with_current_config(tmp_path, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port), port)
    first = sup.status()["epochs"][0]["pid"]
    sup.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: sup.status()["serving_epoch"] == 1, 20), sup.output()
    assert wait_for(lambda: not os.path.exists(f"/proc/{first}") or first not in children(sup.proc.pid))
    assert curl(port)[0] == 200


def test_sigterm_to_supervisor_drains_epochs_and_exits_0(tmp_path, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port), port)
    epoch_pid = sup.status()["epochs"][0]["pid"]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(15) == 0
    assert not os.path.exists(f"/proc/{epoch_pid}")
    assert not os.path.exists(sup.pid_file)


def test_supervisor_exits_with_status_of_its_last_epoch(tmp_path, supervised):
    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port), port)
    os.kill(sup.status()["epochs"][0]["pid"], signal.SIGKILL)
    assert sup.proc.wait(15) == 128 + signal.SIGKILL
    assert not os.path.exists(sup.pid_file + ".sock")


def test_serving_epoch_refuses_child_with_other_hot_restart_version(tmp_path, supervised):
    """A version mismatch is refused by the running epoch: a fake child speaks to its
    hot-restart socket with another version and gets the reason; the epoch keeps serving."""
    from proxy.hotrestart.channel import ChildChannel
    from proxy.hotrestart.messages import socket_address

    port = free_port()
    sup = supervised(tmp_path, direct_config(tmp_path / "a.yaml", port), port)
    ch = ChildChannel(socket_address(sup.base_id, 0), timeout=5)
    try:
        reply, fds = ch.request({"type": "hello", "version": "ftproxy.hr.0-other", "epoch": 1})
    finally:
        ch.close()
    assert reply["ok"] is False and "version mismatch" in reply["reason"] and not fds
    assert curl(port)[0] == 200
    assert sup.status()["serving_epoch"] == 0


def logged_config(tmp_path: Path, port: int, log_path: Path) -> Path:
    """direct_config with a file access log of each request's path."""
    config = direct_config(tmp_path / "c.yaml", port)
    cfg = yaml.safe_load(config.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log_path), "log_format": {"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}}}}]
    config.write_text(yaml.safe_dump(cfg))
    return config


def test_sigusr1_to_proxyctl_reopens_access_logs_in_the_epoch(tmp_path, supervised):
    """logrotate's way: rename the access log, send SIGUSR1 to the supervisor. It forwards the
    signal to its epoch, which reopens the file: later lines land in a new file at the path."""
    port = free_port()
    log_path = tmp_path / "access.log"
    sup: Supervised = supervised(tmp_path, logged_config(tmp_path, port, log_path), port)
    assert curl(port, "/before") == (200, "A")
    assert wait_for(lambda: log_path.exists() and "/before" in log_path.read_text())
    os.rename(log_path, tmp_path / "access.log.1")
    os.kill(sup.proc.pid, signal.SIGUSR1)
    assert wait_for(log_path.exists), "the epoch did not reopen its access log:\n" + sup.output()
    assert curl(port, "/after") == (200, "A")
    assert wait_for(lambda: "/after" in log_path.read_text())
    assert (tmp_path / "access.log.1").read_text().split() == ["/before"]
    assert log_path.read_text().split() == ["/after"]
    assert sup.proc.poll() is None  # SIGUSR1 did not stop anything


def test_file_flush_interval_msec_sets_when_access_logs_are_written_out(tmp_path, supervised):
    """Envoy's --file-flush-interval-msec: with a minute, a request's line is still buffered
    after twice the default interval (1 s); stopping writes it out."""
    port = free_port()
    log_path = tmp_path / "access.log"
    sup: Supervised = supervised(tmp_path, logged_config(tmp_path, port, log_path), port,
                                 "--file-flush-interval-msec", "60000")
    assert curl(port, "/held") == (200, "A")
    time.sleep(2.0)
    assert "/held" not in (log_path.read_text() if log_path.exists() else "")
    sup.kill()
    assert sup.proc.returncode == 0, sup.output()
    assert log_path.read_text().split() == ["/held"]


def test_file_flush_interval_msec_must_be_positive(tmp_path):
    r = proxyctl("start", "-c", str(direct_config(tmp_path / "c.yaml", free_port())),
                 "--pid-file", str(tmp_path / "p.pid"), "--file-flush-interval-msec", "0")
    assert r.returncode == 2 and "--file-flush-interval-msec" in r.stderr, r.stderr
