"""`proxyctl validate -c FILE` against `envoy --mode validate -c FILE`, over configs/*.yaml.

proxyctl runs in-process (click's CliRunner on `cli.main.main`, the same code path as the
installed script, without a 0.2-0.5 s interpreter start per file; one test checks the installed
script answers as the in-process one does); Envoy runs as the real binary.

Each file is a bootstrap given as it is to both tools, with its expectations in leading
comment lines:
  # envoy: accepts | refuses      what real Envoy 1.40 answers (checked, so the corpus stays true)
  # field: NAME                   a field (or value) Envoy's message names; ftproxy's must name it
                                  too. Compared case-insensitively, underscores ignored
                                  (Envoy's constraint errors write `StatPrefix` for `stat_prefix`).
  # expected_difference: WHY      ftproxy is known to answer differently (accepts a config Envoy
                                  refuses, refuses one Envoy accepts, or names another field);
                                  the test fails once it no longer differs.
A config Envoy refuses must not load in ftproxy. A config Envoy accepts must load in ftproxy,
or be refused as "not supported" (ftproxy refuses, by name, what it does not implement).
Adding a case = adding a file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.lua_support import LUA_IN_PROCESS_SKIP

from .cases import CONFIGS_DIR
from .proxies import envoy_binary, proxyctl_binary


def _meta(path: Path) -> dict[str, str]:
    meta = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*([a-z_]+):\s*(.*)$", line)
        if m:
            meta[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith("#"):
            break
    return meta


def _run(cmd: list[str]) -> tuple[bool, str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return out.returncode == 0, out.stdout + out.stderr


def _proxyctl_validate(path: Path) -> tuple[bool, str]:
    from click.testing import CliRunner

    from cli.main import main

    result = CliRunner().invoke(main, ["validate", "-c", str(path)])
    try:
        text = result.stdout + result.stderr  # click >= 8.2: both kept apart
    except ValueError:
        text = result.output  # older click: stderr mixed into output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code == 0, text


def _squash(text: str) -> str:
    return re.sub(r"[\s_]+", "", text).lower()


def _differences(path: Path, meta: dict[str, str]) -> list[str]:
    envoy_ok, envoy_msg = _run([envoy_binary(), "--mode", "validate", "-c", str(path),
                                "-l", "critical"])
    ftp_ok, ftp_msg = _proxyctl_validate(path)
    want = meta.get("envoy")
    assert want in ("accepts", "refuses"), (
        f"{path.name}: say '# envoy: accepts' or '# envoy: refuses'")
    assert envoy_ok == (want == "accepts"), (
        f"{path.name}: real Envoy {'accepts' if envoy_ok else 'refuses'} it, "
        f"the file says {want}:\n{envoy_msg[-2000:]}")
    field = meta.get("field")
    if field and not envoy_ok:
        assert _squash(field) in _squash(envoy_msg), (
            f"{path.name}: Envoy's message does not name {field!r}; fix the file:\n"
            f"{envoy_msg[-2000:]}")
    problems = []
    if not envoy_ok and ftp_ok:
        problems.append(f"Envoy refuses it, ftproxy accepts it (Envoy: {_tail(envoy_msg)})")
    elif not envoy_ok and field and _squash(field) not in _squash(ftp_msg):
        problems.append(f"both refuse it, but ftproxy's message does not name {field!r}: "
                        f"{_tail(ftp_msg)}")
    elif envoy_ok and not ftp_ok and "not supported" not in ftp_msg:
        problems.append(f"Envoy accepts it, ftproxy refuses it: {_tail(ftp_msg)}")
    return problems


def _tail(msg: str) -> str:
    """The error itself: what follows "initializing configuration '...':", without the
    config dump Envoy appends."""
    msg = " ".join(msg.split())
    msg = re.split(r"initializing configuration '[^']*':", msg)[-1]
    return re.split(r"goo\.gle/debug|: \{\"", msg)[0][:400]


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_validate_agrees_with_real_envoy(path):
    if ("filters.http.lua.v3" in path.read_text() or "cluster_specifiers.lua.v3" in path.read_text()) and LUA_IN_PROCESS_SKIP:
        pytest.skip(LUA_IN_PROCESS_SKIP)  # (proxyctl runs in-process here)
    meta = _meta(path)
    problems = _differences(path, meta)
    if "expected_difference" in meta:
        assert problems, (f"{path.name}: the expected difference is gone, remove its "
                          f"'# expected_difference:' line ({meta['expected_difference']})")
    else:
        assert not problems, f"{path.name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", ["valid_front_proxy", "unknown_cluster_field"])
def test_installed_proxyctl_answers_as_in_process(name):
    path = CONFIGS_DIR / f"{name}.yaml"
    ok, msg = _run([proxyctl_binary(), "validate", "-c", str(path)])
    in_ok, in_msg = _proxyctl_validate(path)
    assert (ok, msg.strip()) == (in_ok, in_msg.strip())
