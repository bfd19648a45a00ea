"""The set_metadata filter through the running proxy, seen where a differential case does not
look: access logs. `%DYNAMIC_METADATA(...)%` in a text format (strings bare, the rest compact
JSON, unset "-", `:N` truncation) and in a json_format (a lone operator keeps its type: an
object stays one, a missing key is null), as Envoy 1.40 wrote them for the same config.
(Case filter_set_metadata compares header formats, merging and stats with Envoy.)"""

from __future__ import annotations

import json
import os

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .clients import request
from .harness import ProxyUnderTest, front_proxy_config, static_cluster

SET_MD = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
TEXT = ("[%DYNAMIC_METADATA(svc)%] [%DYNAMIC_METADATA(svc:n)%] [%DYNAMIC_METADATA(svc:nope)%] "
        "[%DYNAMIC_METADATA(svc:name):2%] [%DYNAMIC_METADATA(other:deep:k)%] %REQ(:PATH)%\n")
JSON = {"all": "%DYNAMIC_METADATA(svc)%", "i": "%DYNAMIC_METADATA(svc:i)%",
        "missing": "%DYNAMIC_METADATA(svc:nope)%", "t": "%DYNAMIC_METADATA(svc:tags)%",
        "path": "%REQ(:PATH)%"}


def _filter(**config) -> dict:
    return {"name": "envoy.filters.http.set_metadata", "typed_config": {"@type": SET_MD, **config}}


def _lines(path: str) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def test_dynamic_metadata_in_text_and_json_access_logs(upstream, tmp_path):
    text_log, json_log = str(tmp_path / "text.log"), str(tmp_path / "json.log")
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    cfg = front_proxy_config(routes, [static_cluster("c1", upstream.port)], http_filters=[
        _filter(metadata=[
            {"metadata_namespace": "svc", "value": {"name": "first", "n": 1.5, "i": 3, "tags": [1, "a"]}},
            {"metadata_namespace": "other", "value": {"deep": {"k": "v"}}},
            {"metadata_namespace": "svc", "allow_overwrite": True, "value": {"tags": ["b"], "i": 4.0}}]),
        ROUTER], access_log=[
        {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": text_log,
            "log_format": {"text_format_source": {"inline_string": TEXT}}}},
        {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": json_log, "log_format": {"json_format": JSON}}}])
    p = ProxyUnderTest(cfg)
    try:
        assert request(p.port, "/logged").status == 200
        assert p.wait_for(lambda: _lines(text_log) and _lines(json_log))
        all_json = '{"i":4,"n":1.5,"name":"first","tags":[1,"a","b"]}'
        assert _lines(text_log) == [f"[{all_json}] [1.5] [-] [fi] [v] /logged"]
        assert json.loads(_lines(json_log)[0]) == {
            "all": {"i": 4, "n": 1.5, "name": "first", "tags": [1, "a", "b"]}, "i": 4,
            "missing": None, "t": [1, "a", "b"], "path": "/logged"}
        assert _lines(json_log)[0].count('"i":4,') == 2   # a number, written as Envoy writes it
    finally:
        p.stop()


def test_metadata_of_one_request_does_not_leak_into_the_next(upstream, tmp_path):
    """Lists are appended in place: the config's value must be copied into each stream."""
    text_log = str(tmp_path / "text.log")
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    cfg = front_proxy_config(routes, [static_cluster("c1", upstream.port)], http_filters=[
        _filter(metadata=[{"metadata_namespace": "svc", "value": {"tags": ["a"], "s": {"x": 1}}},
                          {"metadata_namespace": "svc", "allow_overwrite": True,
                           "value": {"tags": ["b"], "s": {"y": 2}}}]), ROUTER], access_log=[
        {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": text_log,
            "log_format": {"text_format_source": {"inline_string": "%DYNAMIC_METADATA(svc)%\n"}}}}])
    p = ProxyUnderTest(cfg)
    try:
        for _ in range(3):
            assert request(p.port, "/").status == 200
        assert p.wait_for(lambda: len(_lines(text_log)) == 3)
        assert _lines(text_log) == ['{"s":{"x":1,"y":2},"tags":["a","b"]}'] * 3
        assert p.counters()["http.ingress_http.set_metadata.overwrite_denied"] == 0
    finally:
        p.stop()


@pytest.mark.parametrize("config,field", [
    ({"metadata": [{"metadata_namespace": "ns", "typed_value": {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "x"}}]}, "typed_value"),
    ({"metadata": [{"metadata_namespace": "", "value": {"a": 1}}]}, "metadata_namespace"),
    ({"metadata": [{"value": {"a": 1}}]}, "metadata_namespace"),
    ({"metadata": [{"metadata_namespace": "ns", "value": "not a struct"}]}, "value"),
])
def test_bad_config_is_refused_naming_the_field(config, field):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", 1)], http_filters=[_filter(**config), ROUTER])
    with pytest.raises(ConfigError, match=field):
        parse_bootstrap(cfg)
