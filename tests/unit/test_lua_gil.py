"""On a free-threaded build, a config using the Lua filter imports lupa, which turns the GIL
back on: the start-up log warns and /server_info names it (`python.gil_reenabled_by`). Run in a
fresh interpreter (the test process may have imported lupa already). Without a Lua filter in the
config, lupa is not imported at all and the GIL stays off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("lupa", reason="the Lua filter needs lupa: pip install 'ftproxy[lua]'")  # (the package only)

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, logging, sys, urllib.request
logging.basicConfig(level=logging.WARNING)
from tests.integration.harness import ProxyUnderTest, front_proxy_config, static_cluster
lua = %r
filters = [{"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
if lua:
    filters.insert(0, {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(h) end"}}})
gil_before = sys._is_gil_enabled()
proxy = ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                                          [static_cluster("app", 1)], http_filters=filters))
try:
    info = json.loads(urllib.request.urlopen(
        "http://127.0.0.1:%%d/server_info" %% proxy.admin_port, timeout=5).read())
finally:
    proxy.stop()
print(json.dumps({"before": gil_before, "after": sys._is_gil_enabled(),
                  "lupa": "lupa" in sys.modules, "python": info["python"]}))
"""


def _run(lua: bool) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    out = subprocess.run([sys.executable, "-c", _CHILD % (lua,)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="GIL build: nothing comes back")
def test_lua_config_brings_the_gil_back_and_says_so():
    report, stderr = _run(True)
    assert report["before"] is False and report["after"] is True
    assert "re-enabled the GIL" in stderr
    assert report["python"]["gil_enabled"] is True
    assert report["python"]["gil_reenabled_by"] == ["lupa (envoy.filters.http.lua)"]


def test_without_a_lua_filter_lupa_is_not_imported():
    report, stderr = _run(False)
    assert report["lupa"] is False
    assert report["python"]["gil_reenabled_by"] == []
    assert "re-enabled the GIL" not in stderr
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert report["after"] is False


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="GIL build: the Lua tests ran in the test process itself")
def test_the_lua_filter_tests_pass_in_their_own_interpreter():
    """On a free-threaded build the tests that load lupa skip in the shared test process
    (tests/lua_support.py); here they run, in an interpreter of their own, where the GIL
    coming back harms no other test."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    env["FTPROXY_LUA_IN_PROCESS"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/integration/test_lua_filter.py",
                          "tests/integration/test_lua_cluster_specifier.py",
                          "tests/integration/test_envoy_examples.py::test_lua_cluster_specifier_example",
                          "tests/integration/test_envoy_examples.py::test_lua_example",
                          "tests/integration/test_envoy_examples.py::test_every_vendored_example_loads_unchanged",
                          "tests/differential/test_validate.py::test_validate_agrees_with_real_envoy",
                          "-k", "lua"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    progress = out.stdout.split("[", 1)[0]  # one character per test: "." passed, "s" skipped
    assert progress.count(".") >= 15 and "s" not in progress, out.stdout[-500:]
