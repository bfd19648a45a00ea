"""Access-log filters through the running proxy: each request's line is written or not as the
log's `filter` says (status code, duration, headers, response flags, gRPC status, runtime
sampling by x-request-id, and/or, log type), and what is refused at load."""

from __future__ import annotations

import http.client
import time

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest, front_proxy_config, static_cluster

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _proxy(upstream, tmp_path, filters: dict[str, dict]) -> tuple[ProxyUnderTest, dict]:
    """One file access log per filter (named by the dict's keys); each line is the path."""
    logs, access_log = {}, []
    for name, flt in filters.items():
        path = tmp_path / f"{name}.log"
        logs[name] = path
        access_log.append({"name": "envoy.access_loggers.file", "filter": flt, "typed_config": {
            "@type": FILE_LOG, "path": str(path),
            "log_format": {"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}}}})
    routes = [{"match": {"prefix": "/direct/"}, "direct_response": {"status": 404}},
              {"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]
    return ProxyUnderTest(front_proxy_config(routes, [static_cluster("c1", upstream.port)],
                                             access_log=access_log)), logs


def _get(port: int, path: str, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def _lines(p, path, settle: float = 0.3) -> list[str]:
    time.sleep(settle)
    return path.read_text().splitlines() if path.exists() else []


def _cmp(op: str, value: int) -> dict:
    return {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "k"}}}


def test_each_filter_kind_selects_its_requests(upstream, tmp_path):
    p, logs = _proxy(upstream, tmp_path, {
        "errors": {"status_code_filter": _cmp("GE", 400)},
        "slow": {"duration_filter": _cmp("GE", 200)},
        "tagged": {"header_filter": {"header": {"name": "x-log-me", "present_match": True}}},
        "flagged": {"response_flag_filter": {"flags": ["NR"]}},
        "any_flag": {"response_flag_filter": {}},
        "grpc_unimplemented": {"grpc_status_filter": {"statuses": ["UNIMPLEMENTED"]}},
        "both": {"and_filter": {"filters": [{"status_code_filter": _cmp("EQ", 200)},
                                            {"header_filter": {"header": {"name": "x-log-me",
                                                                          "present_match": True}}}]}},
        "either": {"or_filter": {"filters": [{"status_code_filter": _cmp("EQ", 503)},
                                             {"header_filter": {"header": {"name": "x-log-me",
                                                                           "present_match": True}}}]}},
        "never_traced": {"traceable_filter": {}},
        "not_hc": {"not_health_check_filter": {}},
        "end_of_stream": {"log_type_filter": {"types": ["DOWNSTREAM_END"]}},
        "none_sampled": {"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 0}}},
        "all_sampled": {"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 100}}},
    })
    try:
        assert _get(p.port, "/ok") == 200
        assert _get(p.port, "/tagged", {"x-log-me": "1"}) == 200
        assert _get(p.port, "/direct/x") == 404
        assert _get(p.port, "/delay/0.3") == 200
        assert _get(p.port, "/status/503") == 503
        everyone = ["/ok", "/tagged", "/direct/x", "/delay/0.3", "/status/503"]
        expected = {
            "errors": ["/direct/x", "/status/503"],
            "slow": ["/delay/0.3"],
            "tagged": ["/tagged"],
            "flagged": [],                      # every request had a route (no NR)
            "any_flag": [],
            "grpc_unimplemented": ["/direct/x"],  # 404 maps to UNIMPLEMENTED
            "both": ["/tagged"],
            "either": ["/tagged", "/status/503"],
            "never_traced": [],
            "not_hc": everyone,
            "end_of_stream": everyone,
            "none_sampled": [],
            "all_sampled": everyone,
        }
        # Each file is written out on its own flush: wait for each one's lines (one log
        # complete says nothing of another's under load), then a while for lines a log must
        # not get.
        for name, want in expected.items():
            if want:
                p.wait_for(lambda: _lines(p, logs[name], 0) == want, 10)
        time.sleep(0.5)
        assert {name: _lines(p, logs[name], 0) for name in expected} == expected
    finally:
        p.stop()


def test_runtime_sampling_follows_the_request_id(upstream, tmp_path):
    """Without use_independent_randomness the x-request-id decides (its first 32 bits modulo
    the denominator), so the same id is always sampled alike, as in Envoy."""
    p, logs = _proxy(upstream, tmp_path, {"half": {"runtime_filter": {
        "runtime_key": "k", "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"}}}})
    try:
        ids = {"00000001-0000-4000-8000-000000000000": True,    # 1 % 100 < 50
               "00000063-0000-4000-8000-000000000000": False,   # 99 % 100 >= 50
               "0000002a-0000-4000-8000-000000000000": True}    # 42
        for rid in ids:
            assert _get(p.port, "/" + rid, {"x-request-id": rid}) == 200
        expected = ["/" + rid for rid, sampled in ids.items() if sampled]
        assert p.wait_for(lambda: _lines(p, logs["half"], 0) == expected)
        time.sleep(0.5)
        assert _lines(p, logs["half"], 0) == expected
    finally:
        p.stop()


@pytest.mark.parametrize("flt,where", [
    ({"extension_filter": {"name": "x"}}, "filter.extension_filter: not supported yet"),
    ({"metadata_filter": {"matcher": {"filter": "ns", "path": [{"key": "k"}]}}},
     "filter.metadata_filter.matcher.value: required field is missing"),
    ({"response_flag_filter": {"flags": ["XX"]}}, "unknown response flag 'XX'"),
    ({"and_filter": {"filters": [{"traceable_filter": {}}]}}, "must have at least 2 item(s)"),
])
def test_what_is_refused(upstream, tmp_path, flt, where):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                             [static_cluster("c1", upstream.port)], access_log=[{
        "name": "envoy.access_loggers.file", "filter": flt,
        "typed_config": {"@type": FILE_LOG, "path": str(tmp_path / "x.log")}}])
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(cfg)
