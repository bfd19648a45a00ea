"""Guards for every e2e test: it never touches the user's proxy, and leaves nothing behind.

- `XDG_RUNTIME_DIR` points to a directory of the test's own, so a `proxyctl` command that
  forgot `--pid-file` cannot reach the user's supervisor (the default pid file is
  `$XDG_RUNTIME_DIR/ftproxy/proxyctl.pid`); after the test that directory must hold no
  `ftproxy/` at all: tests always pass their own `--pid-file` (and `--base-id`).
- After the test (its own fixtures have stopped what they started): no process whose command
  line names the test's tmp_path is still running (supervisors, epochs, daemons), and no pid
  file or Unix socket is left in tmp_path. Stragglers are killed so one failure does not
  cascade into the next test.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

# A supervisor stopped with SIGTERM drains its epochs first (the tests use drain times of 1 to
# 10 s): wait that long for processes to go before calling them left behind.
_GONE_TIMEOUT_S = 15.0


def _processes_naming(text: str) -> list[tuple[int, str]]:
    """Live processes (zombies excluded) whose command line contains `text`."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append((int(entry.name), cmdline.strip()))
    return found


def _leftover_files(root: Path) -> list[str]:
    out = []
    for path in root.rglob("*"):
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if path.suffix == ".pid" or stat.S_ISSOCK(mode):
            out.append(str(path.relative_to(root)))
    return sorted(out)


@pytest.fixture(autouse=True)
def leaves_nothing_behind(tmp_path, tmp_path_factory, monkeypatch):
    runtime = tmp_path_factory.mktemp("xdg-runtime")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield
    problems = []
    if (runtime / "ftproxy").exists():
        problems.append(f"a command used the default pid file directory {runtime / 'ftproxy'} "
                        "(pass --pid-file under tmp_path)")
    deadline = time.monotonic() + _GONE_TIMEOUT_S
    while (procs := _processes_naming(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.1)
    if procs:
        problems.append("processes left running: " + "; ".join(f"pid {p}: {c}" for p, c in procs))
        for pid, _ in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    files = _leftover_files(tmp_path)
    if files:
        problems.append(f"pid files or sockets left in {tmp_path}: {files}")
    assert not problems, "\n".join(problems)
