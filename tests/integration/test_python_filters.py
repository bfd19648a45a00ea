"""HTTP filters written in Python (`ftproxy.filters.http.python`) through the running proxy:
the two shipped examples (examples/python_filters: an API-key check, asking a key service
without blocking the worker, and a response rewriter), a filter that raises (its stream
ends, the worker serves on), and the config errors that name the field."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from tests.ports import free_port

from .servers import DecidingService

ROOT = Path(__file__).resolve().parents[2]
FILTERS = str(ROOT / "examples" / "python_filters")
TYPE = "type.googleapis.com/ftproxy.extensions.filters.http.python.v1.PythonFilter"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _filter(module: str, cls: str, config, path: str = FILTERS) -> dict:
    return {"name": "ftproxy.filters.http.python",
            "typed_config": {"@type": TYPE, "path": path, "module": module, "class": cls, "config": config}}


def _proxy(filters: list[dict], clusters: list[dict]) -> ProxyUnderTest:
    return ProxyUnderTest(front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                                             clusters, http_filters=[*filters, ROUTER]))


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def _key_service() -> DecidingService:
    """GET /keys/<key>: 200 for `good-key`, 404 for any other."""
    return DecidingService(lambda path, headers: (200 if path == "/keys/good-key" else 404, [], b""))


def test_the_api_key_check_and_the_rewriter_examples(upstream):
    keys = _key_service()
    p = _proxy([_filter("api_key_check", "ApiKeyCheck", {"keys": ["demo-key"], "verify_cluster": "keys"}),
                _filter("response_rewriter", "ResponseRewriter",
                        {"replace": {"service1": "the first service"}, "content_types": ["application/json"]})],
               [static_cluster("app", upstream.port), static_cluster("keys", keys.port)])
    try:
        status, headers, body = _get(p.port, "/echo")
        assert (status, body) == (401, b"missing API key\n")
        assert headers["www-authenticate"] == "ApiKey header=x-api-key"
        status, headers, body = _get(p.port, "/echo", {"x-api-key": "demo-key"})
        assert status == 200
        seen = json.loads(body)
        assert seen["server"] == "the first service"           # rewritten on the way back
        assert int(headers["content-length"]) == len(body)      # and its length with it
        assert headers["x-rewritten-by"] == "ftproxy-python"
        assert "x-api-key" not in seen["headers"]              # the key is not forwarded
        # A key not in `keys`: the key service is asked (the worker goes on meanwhile).
        assert _get(p.port, "/echo", {"x-api-key": "good-key"})[0] == 200
        assert _get(p.port, "/echo", {"x-api-key": "bad key/.."})[0] == 403
        assert [path for path, _ in keys.requests] == ["/keys/good-key", "/keys/bad%20key%2F.."]
        assert len(upstream.requests) == 2
    finally:
        p.stop()
        keys.close()


def test_an_unreachable_key_service_is_503(upstream):
    p = _proxy([_filter("api_key_check", "ApiKeyCheck", {"verify_cluster": "keys", "timeout": 0.5})],
               [static_cluster("app", upstream.port), static_cluster("keys", free_port())])
    try:
        status, _, body = _get(p.port, "/echo", {"x-api-key": "any"})
        assert (status, body) == (503, b"key service unavailable\n")
    finally:
        p.stop()


BOOM = '''
from proxy.http.filter import PassThroughFilter

class Boom(PassThroughFilter):
    def __init__(self, callbacks, config):
        self.cb = callbacks

    def decode_headers(self, head, end_stream):
        if head.path == b"/boom":
            raise RuntimeError("filter bug")
        return 0

    def encode_headers(self, head, end_stream):
        if self.cb.request_head.path == b"/boom-late":
            raise KeyError("late bug")
        return 0
'''


def test_a_filter_that_raises_ends_its_stream_not_the_worker(upstream, tmp_path):
    (tmp_path / "boom_filter.py").write_text(BOOM)
    p = _proxy([_filter("boom_filter", "Boom", {}, str(tmp_path))], [static_cluster("app", upstream.port)])
    try:
        assert _get(p.port, "/boom")[0] == 500
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            _get(p.port, "/boom-late")   # raised mid-response: the stream is reset
        for _ in range(3):
            assert _get(p.port, "/fine")[0] == 200
        assert p.counters()["http.ingress_http.python_filter.errors"] == 2
    finally:
        p.stop()


@pytest.mark.parametrize("typed,where", [
    ({"module": "no_such_module_here", "class": "X"}, "typed_config.module: cannot import 'no_such_module_here'"),
    ({"module": "api_key_check", "class": "Nope"}, "typed_config.class: module 'api_key_check' has no class 'Nope'"),
    ({"module": "api_key_check", "class": "ApiKeyCheck", "config": {"keys": "x"}},
     "typed_config.config: ApiKeyCheck.parse_config: ValueError: keys must be a list"),
    ({"module": "api_key_check", "class": "ApiKeyCheck", "config": [1]},
     "typed_config.config: ApiKeyCheck.parse_config: AttributeError"),
    ({"module": "api_key_check", "class": "ApiKeyCheck", "path": "a\0b"}, "typed_config.path: not a usable directory"),
    ({"module": "api_key_check", "class": "ApiKeyCheck", "bogus": 1}, 'typed_config: unknown field "bogus"'),
])
def test_config_errors_name_the_field(typed, where):
    flt = {"name": "ftproxy.filters.http.python", "typed_config": {"@type": TYPE, "path": FILTERS, **typed}}
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                             [static_cluster("app", 1)], http_filters=[flt, ROUTER])
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_bootstrap(cfg)
