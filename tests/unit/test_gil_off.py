"""On a free-threaded build, importing everything ftproxy ships leaves the GIL off.

CPython 3.13t/3.14t silently re-enables the GIL for the whole process when it imports an
extension module that does not declare free-threading support (`Py_mod_gil`), so one
dependency or one new C extension would turn the workers back into turn-takers without an
error. This test imports, in a fresh interpreter (pytest and its plugins must not decide the
answer), every module under `proxy/` and `cli/` (found by walking the packages, so a new
module is covered without editing this file) plus the third-party modules they run on, one
at a time, and names the first import after which `sys._is_gil_enabled()` is True.

On a GIL build there is nothing to check and the test is skipped, unless
FTPROXY_REQUIRE_FREE_THREADED=1 (`make test-314t` sets it): then a GIL build is a failure, so a
mis-built venv cannot pass as "free-threaded" by skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

THIRD_PARTY = ("httptools", "h11", "h2", "OpenSSL", "yaml", "rich", "click", "brotlicffi")
# Left out of the walk, deliberately: the Lua filter's runtime imports lupa, whose C modules do
# not declare free-threading support, so importing it turns the GIL back on (measured on
# 3.14t). It is the optional extra `ftproxy[lua]`, imported only when a config uses the Lua
# filter, which then logs that the GIL came back (and /server_info says so). Every other
# module, proxy.http.filters.lua (its config) included, must keep the GIL off.
EXCLUDED = ("proxy.http.filters.lua_runtime",)

# Runs in the child interpreter: prints one JSON object.
_CHILD = r"""
import importlib, json, pkgutil, sys
third_party, excluded = %r, %r
report = {"imported": [], "gil_enabled_after": None, "errors": []}

def check(name):
    report["imported"].append(name)
    if sys._is_gil_enabled() and report["gil_enabled_after"] is None:
        report["gil_enabled_after"] = name

report["gil_at_start"] = sys._is_gil_enabled()
for name in third_party:
    importlib.import_module(name)
    check(name)
for pkg_name in ("proxy", "cli"):
    pkg = importlib.import_module(pkg_name)
    check(pkg_name)
    def onerror(name):
        report["errors"].append(name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + ".", onerror=onerror):
        if info.name in excluded:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:
            report["errors"].append("%%s: %%r" %% (info.name, e))
            continue
        check(info.name)
report["gil_at_end"] = sys._is_gil_enabled()
print(json.dumps(report))
""" % (THIRD_PARTY, EXCLUDED)


def _free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _import_everything() -> dict:
    # Without PYTHON_GIL: PYTHON_GIL=0 would force the GIL off whatever is imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=120, cwd=repo)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_interpreter_is_free_threaded_when_required():
    if os.environ.get("FTPROXY_REQUIRE_FREE_THREADED") == "1":
        assert _free_threaded_build(), (
            f"{sys.executable} is not a free-threaded build: {sys.version}")


@pytest.mark.skipif(not _free_threaded_build(), reason="GIL build: nothing to check")
def test_importing_every_shipped_module_leaves_the_gil_off():
    report = _import_everything()
    assert not report["errors"], f"modules that failed to import: {report['errors']}"
    # Sanity: the walk found the packages' modules, not just the top-level names.
    assert any(n.startswith("proxy.http.") for n in report["imported"]), report["imported"]
    assert any(n.startswith("cli.") for n in report["imported"]), report["imported"]
    assert not report["gil_at_start"], (
        "the GIL was enabled before any import (PYTHON_GIL=1 or -X gil=1?)")
    assert report["gil_enabled_after"] is None, (
        f"the GIL was re-enabled after importing {report['gil_enabled_after']!r}")
    assert not report["gil_at_end"]
    assert not set(EXCLUDED) & set(report["imported"]), "an excluded module was imported"
