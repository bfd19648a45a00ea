"""The Lua cluster specifier plugin (`envoy.router.cluster_specifier_plugin.lua`) through the
running proxy: `envoy_on_route(route_handle)` picks the upstream by the request's headers (inline
and named plugins, on each worker's own Lua state); a script error, a yield, or an answer that
is not a string sends the request to `default_cluster`; a name that is no cluster gets 503; and
the config errors name the field. On a free-threaded build these tests load lupa, so they run in
their own interpreter there (tests/unit/test_lua_gil.py)."""

from __future__ import annotations

import http.client
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError, ConfigErrors
from tests.lua_support import LUA_IN_PROCESS_SKIP

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

pytestmark = pytest.mark.skipif(LUA_IN_PROCESS_SKIP is not None, reason=LUA_IN_PROCESS_SKIP or "")

LUA_CS = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"

SCRIPT = """
function envoy_on_route(route_handle)
  local which = route_handle:headers():get("x-pick")
  if which == "blue" then return "blue" end
  if which == "ghost" then return "no_such_cluster" end
  if which == "error" then error("asked to fail") end
  if which == "table" then return {} end
  if which == "nothing" then return nil end
  if which == "number" then return 7 end
  if which == "yield" then coroutine.yield() end
  if which == "path" then return route_handle:headers():get(":path"):sub(2) end
  if which == "joined" then
    if route_handle:headers():get("x-multi") == "a,b" then return "blue" end
    return "green"
  end
  if which == "cluster" then return route_handle:getCluster("blue") end
  return "green"
end
"""


def _plugin(code: str = SCRIPT, default: str = "green") -> dict:
    return {"extension": {"name": "envoy.router.cluster_specifier_plugin.lua",
                          "typed_config": {"@type": LUA_CS, "source_code": {"inline_string": code},
                                           "default_cluster": default}}}


@pytest.fixture
def upstreams():
    ups = {name: EchoUpstream(name) for name in ("green", "blue", "7")}
    yield ups
    for up in ups.values():
        up.close()


def _config(upstreams, route_action: dict, **route_config) -> dict:
    config = front_proxy_config([{"match": {"prefix": "/"}, "route": route_action}],
                                [static_cluster(n, up.port) for n, up in upstreams.items()])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"].update(route_config)
    return config


def _get(port: int, headers: dict, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.getheader("x-upstream") or ""
    finally:
        conn.close()


def test_the_script_picks_the_cluster_by_header(upstreams):
    proxy = ProxyUnderTest(_config(upstreams, {"inline_cluster_specifier_plugin": _plugin()}))
    try:
        assert _get(proxy.port, {}) == (200, "green")
        assert _get(proxy.port, {"x-pick": "blue"}) == (200, "blue")
        assert _get(proxy.port, {"x-pick": "path"}, "/blue") == (200, "blue")
        assert _get(proxy.port, {"x-pick": "number"}) == (200, "7")   # Lua's number coercion
        assert _get(proxy.port, {"x-pick": "joined", "x-multi": "a"}) == (200, "green")
    finally:
        proxy.stop()


def test_every_value_of_a_header_joined_by_comma(upstreams):
    proxy = ProxyUnderTest(_config(upstreams, {"inline_cluster_specifier_plugin": _plugin()}))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.putrequest("GET", "/")
        conn.putheader("x-pick", "joined")
        conn.putheader("x-multi", "a")
        conn.putheader("x-multi", "b")
        conn.endheaders()
        r = conn.getresponse()
        assert (r.status, r.getheader("x-upstream")) == (200, "blue")
        conn.close()
    finally:
        proxy.stop()


def test_a_cluster_that_does_not_exist_gets_503(upstreams):
    proxy = ProxyUnderTest(_config(upstreams, {"inline_cluster_specifier_plugin": _plugin()}))
    try:
        assert _get(proxy.port, {"x-pick": "ghost"}) == (503, "")
    finally:
        proxy.stop()


@pytest.mark.parametrize("pick,logged", [
    ("error", "asked to fail, use default cluster"),
    ("table", "return value is not string, use default cluster"),
    ("nothing", "return value is not string, use default cluster"),
    ("yield", "use default cluster"),
    ("cluster", "use default cluster"),   # getCluster() is not provided (README)
])
def test_a_failing_script_sends_the_request_to_the_default_cluster(upstreams, caplog, pick, logged):
    proxy = ProxyUnderTest(_config(upstreams, {"inline_cluster_specifier_plugin": _plugin(default="blue")}))
    try:
        with caplog.at_level(logging.ERROR, logger="ftproxy.lua"):
            assert _get(proxy.port, {"x-pick": pick}) == (200, "blue")
        assert any(logged in r.getMessage() and "script log:" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert _get(proxy.port, {}) == (200, "green")   # the worker's state is still good
    finally:
        proxy.stop()


def test_a_named_plugin_from_the_route_configuration(upstreams):
    proxy = ProxyUnderTest(_config(upstreams, {"cluster_specifier_plugin": "picker"},
                                   cluster_specifier_plugins=[
                                       {"extension": {**_plugin()["extension"], "name": "picker"}}]))
    try:
        assert _get(proxy.port, {"x-pick": "blue"}) == (200, "blue")
        assert _get(proxy.port, {}) == (200, "green")
    finally:
        proxy.stop()


def test_each_worker_runs_the_script_on_its_own_state(upstreams):
    proxy = ProxyUnderTest(_config(upstreams, {"inline_cluster_specifier_plugin": _plugin()}),
                           concurrency=2)
    try:
        picks = ["blue", "green", "number", "error"] * 10
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda p: _get(proxy.port, {"x-pick": p}), picks))
        want = {"blue": "blue", "green": "green", "number": "7", "error": "green"}
        assert got == [(200, want[p]) for p in picks]
    finally:
        proxy.stop()


def _errors(upstreams, route_action: dict, **route_config) -> str:
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_bootstrap(_config(upstreams, route_action, **route_config))
    return str(e.value)


def test_config_errors_name_the_field(upstreams):
    inline = "route.inline_cluster_specifier_plugin"
    msg = _errors(upstreams, {"inline_cluster_specifier_plugin": _plugin("function other() end")})
    assert f"{inline}.extension.typed_config.source_code" in msg and "envoy_on_route() function not found" in msg
    msg = _errors(upstreams, {"inline_cluster_specifier_plugin": _plugin("function envoy_on_route(")})
    assert "source_code" in msg and "script load error" in msg
    msg = _errors(upstreams, {"cluster_specifier_plugin": "absent"})
    assert "route.cluster_specifier_plugin" in msg and "unknown cluster specifier plugin 'absent'" in msg
    msg = _errors(upstreams, {"inline_cluster_specifier_plugin": {**_plugin(), "is_optional": True}})
    assert f"{inline}.is_optional: not supported yet" in msg
    msg = _errors(upstreams, {"cluster": "green", "inline_cluster_specifier_plugin": _plugin()})
    assert "inline_cluster_specifier_plugin" in msg
