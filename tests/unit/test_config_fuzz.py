"""Structural fuzzing of bootstrap loading: every malformed config gets a clear error.

The bar: a malformed bootstrap is refused with a `ConfigError` whose path names a field that
exists in the config (or the object a required field is missing from) -- never a traceback
(TypeError, AttributeError, KeyError, plain ValueError, RecursionError, ...).

The campaign is deterministic (seeded `random.Random`): it starts from the bundled example
configs, perf/configs/*.yaml and a few rich bootstraps built here, applies one structural
mutation per mutant (type swaps, deleted and unknown keys, typo'd near-miss names, duplicate
or empty lists, bad enums, durations, ports, regexes, IPs, huge strings, deep nesting) and
checks each outcome with `_judge`. The failure classes it found (tracebacks from overflowing
durations, NaN timeouts, 4300+-digit integers, unencodable header strings, pathological regexes,
deep nesting, bad data sources) have one regression test each below.
"""

from __future__ import annotations

import copy
import os
import random
import re
import reprlib
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import load_bootstrap, parse_bootstrap
from proxy.config.reader import ConfigError, all_errors

ROOT = Path(__file__).resolve().parents[2]
FILE_SEEDS = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "perf" / "configs").glob("*.yaml"))

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _sa(address: str, port: int) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def _static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "0.25s", "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _sa("127.0.0.1", port)}}]}]}}


def _hdr(key: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> dict:
    return {"header": {"key": key, "value": value}, "append_action": action}


def rich_http() -> dict:
    """HCM with every route kind, matcher kind, header mutations and text/json access logs."""
    routes = [
        {"name": "exact", "match": {"path": "/healthz"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
         "response_headers_to_add": [_hdr("content-type", "text/plain")]},
        {"match": {"safe_regex": {"regex": "/api/v[0-9]+/.*"}},
         "route": {"cluster": "api", "timeout": "2.5s", "idle_timeout": "30s",
                   "regex_rewrite": {"pattern": {"regex": "^/api/(v[0-9]+)/(.*)$"},
                                     "substitution": "/\\2?version=\\1"}}},
        {"match": {"prefix": "/h", "case_sensitive": False, "headers": [
            {"name": "x-canary", "string_match": {"exact": "yes", "ignore_case": True}},
            {"name": "x-num", "range_match": {"start": 1, "end": 10}},
            {"name": "x-present", "present_match": True, "invert_match": True},
            {"name": ":method", "safe_regex_match": {"regex": "GET|HEAD"}}],
            "query_parameters": [{"name": "debug", "string_match": {"prefix": "1"}}]},
         "route": {"weighted_clusters": {"clusters": [{"name": "api", "weight": 30},
                                                      {"name": "web", "weight": 70}],
                                         "total_weight": 100}},
         "request_headers_to_add": [_hdr("x-route", "%REQ(:path)%", "APPEND_IF_EXISTS_OR_ADD"),
                                    _hdr("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%")],
         "request_headers_to_remove": ["x-debug"]},
        {"match": {"path_separated_prefix": "/psp", "grpc": {}},
         "direct_response": {"status": 404, "body": {"filename": "/dev/null"}}},
        {"match": {"path": "/bytes"},
         "direct_response": {"status": 200, "body": {"inline_bytes": "aGk="}},
         "request_headers_to_add": [{"header": {"key": "x-raw", "raw_value": "dmFs"},
                                     "keep_empty_value": True}]},
        {"match": {"prefix": "/old/"},
         "redirect": {"prefix_rewrite": "/new/", "response_code": "FOUND",
                      "host_redirect": "example.com", "port_redirect": 8443,
                      "scheme_redirect": "https", "strip_query": True}},
        {"match": {"path": "/gone"}, "redirect": {"path_redirect": "/here", "https_redirect": True}},
        {"match": {"prefix": "/web"}, "route": {
            "cluster": "web", "prefix_rewrite": "/", "host_rewrite_literal": "web.internal",
            "cluster_not_found_response_code": "NOT_FOUND",
            "upgrade_configs": [{"upgrade_type": "websocket", "enabled": True}]}},
        {"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}},
    ]
    hcm = {
        "@type": HCM_TYPE, "stat_prefix": "rich", "codec_type": "HTTP1",
        "use_remote_address": True, "server_name": "ftproxy", "via": "ftproxy",
        "stream_idle_timeout": "300s", "request_timeout": "60s", "drain_timeout": "5s",
        "delayed_close_timeout": "1s", "max_request_headers_kb": 60,
        "common_http_protocol_options": {"idle_timeout": "3600s", "max_headers_count": 100,
                                         "max_requests_per_connection": 1000,
                                         "headers_with_underscores_action": "REJECT_REQUEST"},
        "http_protocol_options": {"accept_http_10": True, "default_host_for_http_10": "x"},
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "access_log": [
            {"name": "envoy.access_loggers.file", "typed_config": {
                "@type": FILE_LOG_TYPE, "path": "/dev/null",
                "log_format": {"text_format": "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE% "
                                              "%DURATION% %UPSTREAM_HOST%\n"}}},
            {"name": "envoy.access_loggers.stdout", "typed_config": {
                "@type": STDOUT_LOG_TYPE,
                "log_format": {"json_format": {"code": "%RESPONSE_CODE%", "proto": "%PROTOCOL%",
                                               "nested": {"path": "%REQ(:PATH)%"}},
                               "omit_empty_values": True}}},
            {"name": "envoy.access_loggers.stdout"},
            {"typed_config": {"@type": STDOUT_LOG_TYPE, "log_format": {
                "text_format_source": {"inline_bytes": "JVJFU1BPTlNFX0NPREUlCg=="}}}},
        ],
        "route_config": {
            "name": "rich_route", "validate_clusters": True,
            "max_direct_response_body_size_bytes": 4096,
            "internal_only_headers": ["x-internal"],
            "response_headers_to_add": [_hdr("x-proxied-by", "ftproxy")],
            "response_headers_to_remove": ["x-powered-by"],
            "virtual_hosts": [
                {"name": "main", "domains": ["example.com", "*.example.com"],
                 "require_tls": "NONE", "routes": routes,
                 "request_headers_to_add": [{"header": {"key": "x-vh", "value": "main"},
                                             "append": False}]},
                {"name": "fallback", "domains": ["*"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}]},
            ]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True}}],
    }
    web = _static_cluster("web", 18082)
    web["typed_extension_protocol_options"] = {HPO: {
        "@type": "type.googleapis.com/" + HPO,
        "explicit_http_config": {"http_protocol_options": {}},
        "common_http_protocol_options": {"idle_timeout": "60s", "max_requests_per_connection": 10}}}
    return {
        "node": {"id": "n1", "cluster": "c1", "locality": {"region": "r", "zone": "z"},
                 "metadata": {"k": ["v", 1, {"x": None}]}},
        "admin": {"address": _sa("127.0.0.1", 9901), "access_log_path": "/dev/null"},
        "stats_flush_interval": "5s",
        "static_resources": {
            "listeners": [{
                "name": "http", "address": _sa("127.0.0.1", 10000), "stat_prefix": "http",
                "per_connection_buffer_limit_bytes": 32768, "traffic_direction": "INBOUND",
                "listener_filters_timeout": "15s",
                "drain_type": "DEFAULT",
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}],
            "clusters": [_static_cluster("api", 18081), web],
        },
    }


def rich_tcp() -> dict:
    """tcp_proxy with weighted clusters, a STRICT_DNS cluster with circuit breakers, json log."""
    dns = {
        "name": "dns", "type": "STRICT_DNS", "connect_timeout": "1s", "lb_policy": "LEAST_REQUEST",
        "dns_refresh_rate": "10s", "dns_lookup_family": "V4_ONLY",
        "per_connection_buffer_limit_bytes": 65536,
        "least_request_lb_config": {"choice_count": 3},
        "circuit_breakers": {"thresholds": [
            {"priority": "DEFAULT", "max_connections": 100, "max_pending_requests": 50,
             "max_requests": 200, "max_retries": 2, "track_remaining": True},
            {"priority": "HIGH", "max_connections": 10}]},
        "load_assignment": {"cluster_name": "dns", "endpoints": [{
            "priority": 0, "lb_endpoints": [
                {"endpoint": {"address": _sa("localhost", 18083), "hostname": "h1"},
                 "load_balancing_weight": 2, "health_status": "HEALTHY"},
                {"endpoint": {"address": _sa("backend.local", 18084)}}]}]},
    }
    static = _static_cluster("static", 18085)
    static["hosts"] = None
    static["common_http_protocol_options"] = {"idle_timeout": "10s"}
    tcp = {"@type": TCP_TYPE, "stat_prefix": "tcp", "idle_timeout": "60s",
           "weighted_clusters": {"clusters": [{"name": "dns", "weight": 1},
                                              {"name": "static", "weight": 3}]},
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": FILE_LOG_TYPE, "path": "/dev/null",
               "json_format": {"bytes": "%BYTES_RECEIVED%", "host": "%UPSTREAM_HOST%"}}}]}
    return {
        "admin": {"address": _sa("::1", 9902)},
        "static_resources": {
            "listeners": [
                {"name": "tcp", "address": _sa("127.0.0.1", 10001),
                 "filter_chains": [{"name": "only", "filters": [
                     {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}]},
                {"address": _sa("::1", 10002), "enable_reuse_port": False,
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                 "typed_config": {"@type": TCP_TYPE,
                                                                  "stat_prefix": "t2",
                                                                  "cluster": "static"}}]}]},
            ],
            "clusters": [dns, static],
        },
    }


def _file_seeds() -> dict[str, dict]:
    return {p.relative_to(ROOT).as_posix(): yaml.safe_load(p.read_text()) for p in FILE_SEEDS}


SEEDS: dict[str, dict] = {**_file_seeds(), "rich_http": rich_http(), "rich_tcp": rich_tcp()}


# -- mutations ----------------------------------------------------------------------------

Token = str | int


def _nodes(tree: Any) -> list[tuple[tuple[Token, ...], Any]]:
    """Every node of the tree with its path (iterative: mutants may be deep)."""
    out, stack = [], [((), tree)]
    while stack:
        path, node = stack.pop()
        out.append((path, node))
        if isinstance(node, Mapping):
            stack.extend((path + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((path + (i,), v) for i, v in enumerate(node))
    out.sort(key=lambda pv: repr(pv[0]))   # independent of traversal details
    return out


def _get(tree: Any, path: tuple[Token, ...]) -> Any:
    for t in path:
        tree = tree[t]
    return tree


def _path_str(path: tuple[Token, ...]) -> str:
    out = ""
    for t in path:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else str(t))
    return out


def _deep(depth: int, kind: str) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = [v] if kind == "list" else {"a": v}
    return v


_GARBAGE: list[Any] = [
    None, 0, 1, -1, -(2**31), 2**31, 2**64, 10**30, 10**400, 0.5, -2.5, 1e308, float("nan"),
    float("inf"), True, False, "", "x", "garbage", " ", "\u20ac\u00e9", "\x00", "%", "%%%",
    "9" * 5000, "x" * 100_000, [], [None], [1, "a", {}], {}, {"a": 1}, {"value": None},
    {"value": "x"}, {"seconds": "x"}, [[[]]], {"": {"": [None]}}, {1: "int key"},
]
_BAD_DURATIONS = ["1", "1x", "-1s", "1.5.s", "s", "", "1e3s", "0x10s", "1 s", "1ms", "1h",
                  "9" * 400 + "s", "-0.1s", {"seconds": -1}, {"seconds": "x"},
                  {"seconds": 10**400}, {"nanos": 1.5}, {"minutes": 1}, -5, 10**400, "nan s"]
_BAD_PORTS = [-1, 65536, 70000, 2**32, "80", "http", 80.5, "-1", "65536", "9" * 5000]
_BAD_REGEXES = ["(", "[a-", "*", "a{2,1}", "(?P<x>a)(?P<x>b)", "\\", "a{99999999999}",
                "(" * 500 + ")" * 500, "(?<!a+)b", "\\p{L}", "\\9"]
_BAD_IPS = ["", "256.0.0.1", "1.2.3", "::g", "localhost", "127.0.0.1:80", "[::1]", " 127.0.0.1",
            "1.2.3.4/24", "\u20ac", "0" * 5000]
_BAD_STRINGS = ["", "\u20ac\u00e9\U0001f600", "a\x00b", "a\r\nb", ":authority", "host",
                "x" * 100_000, "%UNKNOWN%", "%REQ()%", "%REQ(x):99999999999999999999%",
                "%REQ(x):" + "9" * 5000 + "%", "%", "/\u20ac", "x-\u20ac", "\ud800"]
_BASE64_BAD = ["!!!", "\u20ac\u20ac", "YQ", "a" * 5]
_WORDS = ["name", "type", "cluster", "timeout", "prefix", "path", "value", "address",
          "port_value", "typed_config", "filters", "routes", "match", "route", "@type"]


def _typos(key: str, rng: random.Random) -> list[str]:
    out = [key + "s", key.upper(), key.replace("_", "-"), "_" + key, key[:-1] or "k"]
    if len(key) > 2:
        i = rng.randrange(len(key) - 1)
        out.append(key[:i] + key[i + 1] + key[i] + key[i + 2:])
    return [t for t in out if t != key]


def _context_values(key: Any) -> list[Any]:
    k = str(key).lower()
    vals: list[Any] = []
    if any(w in k for w in ("timeout", "interval", "rate", "duration")):
        vals += _BAD_DURATIONS
    if "port" in k:
        vals += _BAD_PORTS
    if "regex" in k or k == "pattern":
        vals += _BAD_REGEXES + [{"regex": r} for r in _BAD_REGEXES]
    if k == "address":
        vals += _BAD_IPS
    if k in ("type", "lb_policy", "codec_type", "priority", "response_code", "append_action",
             "require_tls", "health_status", "dns_lookup_family", "traffic_direction",
             "headers_with_underscores_action", "cluster_not_found_response_code", "protocol"):
        vals += ["NOPE", "round-robin", "ROUND_ROBIN ", "", 99, -1, "static", "EDS", "HTTP2"]
    if k in ("key", "name", "cluster", "value", "prefix", "path", "domains", "inline_string",
             "stat_prefix", "text_format", "cluster_header", "header_name", "host_rewrite_literal",
             "prefix_rewrite", "substitution", "upgrade_type", "filename", "exact"):
        vals += _BAD_STRINGS
    if k in ("inline_bytes", "raw_value"):
        vals += _BASE64_BAD
    if k == "@type":
        vals += ["", "type.googleapis.com/", "type.googleapis.com/xds.type.v3.TypedStruct",
                 ROUTER_TYPE, HCM_TYPE, TCP_TYPE, FILE_LOG_TYPE, 5]
    if k in ("status", "weight", "total_weight", "max_connections", "choice_count",
             "max_request_headers_kb", "load_balancing_weight", "start", "end"):
        vals += [-1, 0, 99, 600, 2**32, 10**400, "9" * 5000, "1.5"]
    return vals


Mutation = tuple[str, tuple[Token, ...], Any]   # (operator, path, new value or key)


def mutate(tree: dict, rng: random.Random) -> Mutation:
    """Apply one mutation to `tree` in place; returns what was done (for messages)."""
    nodes = _nodes(tree)
    path, node = rng.choice(nodes)
    parent = _get(tree, path[:-1]) if path else None
    key = path[-1] if path else None
    op = rng.choices(["replace", "context", "delete", "unknown_key", "typo_key", "dup_item",
                      "empty", "deep", "huge"],
                     weights=[30, 25, 12, 5, 8, 5, 6, 3, 3])[0]
    if op == "context" and (parent is None or not _context_values(key)):
        op = "replace"
    if op in ("delete",) and not isinstance(parent, dict):
        op = "replace"
    if op in ("unknown_key", "typo_key") and not isinstance(node, dict):
        if isinstance(parent, dict):
            node, path = parent, path[:-1]
        else:
            op = "replace"
    if op == "dup_item" and not isinstance(node, list):
        op = "empty"
    if parent is None and op in ("replace", "context", "empty", "deep", "huge"):
        op = "unknown_key"   # keep the root an object: top-level non-objects are load_bootstrap's job

    def put(value: Any) -> Mutation:
        parent[key] = value
        return (op, path, value)

    if op == "replace":
        return put(copy.deepcopy(rng.choice(_GARBAGE)))
    if op == "context":
        return put(copy.deepcopy(rng.choice(_context_values(key))))
    if op == "delete":
        del parent[key]
        return (op, path, None)
    if op == "unknown_key":
        new = rng.choice(["bogus", "x", "", "@type", "typed_config", "name", "1"] + _WORDS)
        if new in node:
            new = new + "_x"
        node[new] = copy.deepcopy(rng.choice(_GARBAGE[:20]))
        return (op, path, new)
    if op == "typo_key":
        if not node:
            node["nmae"] = "x"
            return (op, path, "nmae")
        k = rng.choice(sorted(map(str, node)))
        typo = rng.choice(_typos(k, rng))
        if typo in node:
            return (op, path, f"{k}->{typo} (no-op)")
        node[typo] = node.pop(k) if k in node else None
        return (op, path, f"{k}->{typo}")
    if op == "dup_item":
        if node:
            item = rng.choice(node)
            try:
                node.append(copy.deepcopy(item))
            except RecursionError:   # an earlier step put a deep value there
                node.append(item)
        else:
            node.append(None)
        return (op, path, len(node))
    if op == "empty":
        return put([] if isinstance(node, list) or rng.random() < 0.5 else {})
    if op == "deep":
        return put(_deep(rng.choice([200, 1500, 5000]), rng.choice(["list", "dict"])))
    return put(rng.choice(["x" * 1_000_000, "9" * 100_000, list(range(20_000)),
                           {f"k{i}": i for i in range(5000)}]))


# -- the oracle -------------------------------------------------------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlevel = 3
_SHORT.maxlist = _SHORT.maxdict = 4


def short(v: Any) -> str:
    try:
        return _SHORT.repr(v)
    except RecursionError:
        return "<deep>"


_SEG = re.compile(r'\[(\d+)\]|\["([^"]*)"\]')


def _resolve(node: Any, rest: str) -> list[Any]:
    """Nodes reached by the JSON-path suffix `rest` (keys may themselves contain dots)."""
    if rest == "":
        return [node]
    if rest[0] == "[":
        m = _SEG.match(rest)
        if m is None:
            return []
        if m.group(1) is not None:
            i = int(m.group(1))
            return _resolve(node[i], rest[m.end():]) if isinstance(node, list) and i < len(node) else []
        k = m.group(2)
        return _resolve(node[k], rest[m.end():]) if isinstance(node, Mapping) and k in node else []
    if rest[0] == ".":
        rest = rest[1:]
    out: list[Any] = []
    if isinstance(node, Mapping):
        for k in node:
            if isinstance(k, str) and k and rest.startswith(k) and rest[len(k):][:1] in ("", ".", "["):
                out += _resolve(node[k], rest[len(k):])
    return out


def path_ok(tree: Any, path: str) -> bool:
    """`path` names a node of `tree`, or a field missing from an object of `tree`."""
    if _resolve(tree, path):
        return True
    m = re.fullmatch(r"(.*?)\.?([A-Za-z_@][\w@]*)", path)
    if m is None:
        return False
    parents = _resolve(tree, m.group(1))
    return any(isinstance(p, Mapping) and p.get(m.group(2)) is None for p in parents)


def _where(exc: BaseException) -> str:
    """`file:function` of the innermost project frame of the traceback (stable across edits)."""
    frames = traceback.extract_tb(exc.__traceback__)
    proj = [f for f in frames if "/proxy/" in f.filename.replace("\\", "/")]
    f = (proj or frames or [None])[-1]
    if f is None:
        return "?"
    rel = f.filename.replace("\\", "/").split("/proxy/", 1)[-1]
    return f"proxy/{rel}:{f.name}"


def _line(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/proxy/" in f.filename]
    return f"{frames[-1].filename.split('/proxy/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"


def classify(load: Callable[[Any], Any], tree: Any) -> tuple[str, tuple[str, str] | None]:
    """("ok" | "config_error" | "failed", None or (failure class, detail)) of `load(tree)`."""
    try:
        load(tree)
    except ConfigError as e:
        for err in all_errors(e):  # each error of a list must name a real path, not only the first
            if not isinstance(err.path, str) or not err.message:
                return "failed", ("config-error-malformed", f"path={err.path!r} message={err.message!r}")
            if not path_ok(tree, err.path):
                template = re.sub(r"\[\d+\]", "[*]", err.path)
                return "failed", (f"bad-path {template}", short(str(err)))
        return "config_error", None
    except Exception as e:  # noqa: BLE001 - the point is to catch everything else
        return "failed", (f"{type(e).__name__} at {_where(e)}", f"{short(str(e))} ({_line(e)})")
    return "ok", None


def judge(load: Callable[[Any], Any], tree: Any) -> tuple[str, str] | None:
    """None if `load(tree)` succeeds or raises a good ConfigError; else (class key, detail)."""
    return classify(load, tree)[1]


# 1,200 mutants in the suite (~8 s); FTPROXY_FUZZ_MUTANTS=20000 for a longer campaign.
N_MUTANTS = int(os.environ.get("FTPROXY_FUZZ_MUTANTS", "1200"))
CAMPAIGN_SEED = 20240601


def describe(steps: list[Mutation]) -> str:
    return "; then ".join(f"{op} at {_path_str(path) or '<root>'} -> {short(value)}"
                          for op, path, value in steps)


def run_campaign(load: Callable[[Any], Any], n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Failures by class (with up to 3 described examples each) and outcome counts."""
    rng = random.Random(seed)
    names = sorted(SEEDS)
    failures: dict[str, list[str]] = {}
    stats = {"mutants": 0, "ok": 0, "config_error": 0, "failed": 0}
    old_limit = sys.getrecursionlimit()
    for i in range(n):
        seed_name = names[i % len(names)]
        tree = copy.deepcopy(SEEDS[seed_name])
        steps = [mutate(tree, rng)]
        if rng.random() < 0.15:           # sometimes stack a second mutation
            steps.append(mutate(tree, rng))
        stats["mutants"] += 1
        kind, outcome = classify(load, tree)
        sys.setrecursionlimit(old_limit)
        stats[kind] += 1
        if outcome is None:
            continue
        cls, detail = outcome
        examples = failures.setdefault(cls, [])
        if len(examples) < 3:
            examples.append(f"seed={seed} mutant#{i} base={seed_name} {describe(steps)}: {detail}")
    return failures, stats


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_config_loads_cleanly(name):
    b = parse_bootstrap(copy.deepcopy(SEEDS[name]))
    assert b.listeners and b.clusters


def test_there_are_file_seeds_and_rich_seeds():
    assert len(FILE_SEEDS) >= 4, FILE_SEEDS
    assert {"rich_http", "rich_tcp"} <= set(SEEDS)


def test_oracle_flags_a_loader_raising_type_error():
    def bad(tree):
        return tree["static_resources"]["clusters"] + 1   # TypeError
    outcome = judge(bad, copy.deepcopy(SEEDS["rich_tcp"]))
    assert outcome is not None and outcome[0].startswith("TypeError")


def test_oracle_flags_a_config_error_naming_a_path_not_in_the_config():
    def bad(tree):
        raise ConfigError("static_resources.clusters[7].lb_policy", "nope")
    outcome = judge(bad, copy.deepcopy(SEEDS["rich_tcp"]))
    assert outcome is not None and outcome[0].startswith("bad-path")


def test_oracle_accepts_existing_paths_dotted_keys_and_missing_fields():
    tree = copy.deepcopy(SEEDS["rich_http"])
    assert path_ok(tree, "static_resources.clusters[1].typed_extension_protocol_options."
                         f"{HPO}.common_http_protocol_options.idle_timeout")
    assert path_ok(tree, 'static_resources.listeners[0].filter_chains[0].filters[0]'
                         '.typed_config["@type"]')
    assert path_ok(tree, "static_resources.clusters[0].health_checks")   # missing field
    assert not path_ok(tree, "static_resources.clusters[0].load_assignment.nope.deeper")
    assert not path_ok(tree, "static_resources.clusters[9]")

    def good(t):
        raise ConfigError("static_resources.clusters[0].name", "required field is missing")
    assert judge(good, tree) is None


def test_oracle_flags_recursion_error_and_key_error():
    def deep(t):
        def f(n):
            return f(n + 1)
        return f(0)
    assert judge(deep, {})[0].startswith("RecursionError")
    assert judge(lambda t: t["nope"], {})[0].startswith("KeyError")


def test_campaign_finds_only_config_errors():
    failures, stats = run_campaign(parse_bootstrap, N_MUTANTS, CAMPAIGN_SEED)
    assert not failures, "config-loading failure classes:\n" + "\n".join(
        f"{cls}:\n    " + "\n    ".join(ex) for cls, ex in sorted(failures.items()))
    # The campaign must exercise both sides of the oracle.
    assert stats["mutants"] == N_MUTANTS
    assert stats["config_error"] >= N_MUTANTS // 3, stats
    assert stats["ok"] >= 50, stats


def test_campaign_through_yaml_files_finds_only_config_errors(tmp_path):
    """A smaller campaign through `load_bootstrap` on files (YAML decode + load)."""
    counter = iter(range(10**9))

    def via_file(tree):
        p = tmp_path / f"m{next(counter)}.yaml"
        try:
            text = yaml.safe_dump(tree)
        except (RecursionError, yaml.YAMLError):
            pytest.skip("unreachable")  # never hit: deep values are excluded below
        p.write_text(text, encoding="utf-8")
        return load_bootstrap(str(p))

    rng = random.Random(CAMPAIGN_SEED + 1)
    names = sorted(SEEDS)
    bad: dict[str, str] = {}
    for i in range(150):
        tree = copy.deepcopy(SEEDS[names[i % len(names)]])
        op, path, value = mutate(tree, rng)
        if op in ("deep", "huge"):
            continue
        outcome = judge(via_file, tree)
        if outcome:
            bad.setdefault(outcome[0], f"seed={CAMPAIGN_SEED + 1} mutant#{i} {op} at "
                                       f"{_path_str(path)} -> {short(value)}: {outcome[1]}")
    assert not bad, bad


# -- regression tests: one per failure class the campaign found (all fixed) ------------------
# Each asserts the right behaviour: a ConfigError naming the offending field.

LISTENER0 = "static_resources.listeners[0]"
HCM_AT = f"{LISTENER0}.filter_chains[0].filters[0].typed_config"
VH0 = f"{HCM_AT}.route_config.virtual_hosts[0]"
ROUTE0 = f"{VH0}.routes[0]"


def minimal_http(route: dict | None = None, *, vhost: dict | None = None,
                 route_config: dict | None = None, hcm: dict | None = None,
                 cluster: dict | None = None) -> dict:
    """A small valid HTTP bootstrap; the keyword dicts are merged into its parts."""
    r = {"match": {"prefix": "/"}, "route": {"cluster": "c"}, **(route or {})}
    vh = {"name": "vh", "domains": ["*"], "routes": [r], **(vhost or {})}
    rc = {"name": "rc", "virtual_hosts": [vh], **(route_config or {})}
    h = {"@type": HCM_TYPE, "stat_prefix": "s", "route_config": rc, **(hcm or {})}
    c = {**_static_cluster("c", 18080), **(cluster or {})}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": _sa("127.0.0.1", 10000), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": h}]}]}],
        "clusters": [c]}}


def config_error_of(load: Callable[[], Any]) -> ConfigError:
    """The ConfigError `load()` raises; any other outcome fails with a one-line message
    (pytest's rendering of a RecursionError traceback takes minutes)."""
    failure = "no error raised"
    try:
        load()
    except ConfigError as e:
        return e
    except Exception as e:  # noqa: BLE001
        failure = f"{type(e).__name__} at {_line(e)}: {short(str(e))}"
    pytest.fail(failure, pytrace=False)


def assert_config_error_at(tree: Any, path: str) -> None:
    e = config_error_of(lambda: parse_bootstrap(tree))
    assert e.path == path, short(str(e))


@pytest.mark.parametrize("value", [10**400, {"seconds": 10**400}], ids=["int", "seconds"])
def test_duration_too_large_for_a_float_is_a_config_error(value):
    assert_config_error_at(minimal_http(cluster={"connect_timeout": value}),
                           "static_resources.clusters[0].connect_timeout")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "9" * 400 + "s"],
                         ids=["nan", "inf", "400-digit-seconds"])
def test_non_finite_route_timeout_is_a_config_error(value):
    assert_config_error_at(minimal_http({"route": {"cluster": "c", "timeout": value}}),
                           f"{ROUTE0}.route.timeout")


def test_integer_string_over_4300_digits_is_a_config_error():
    tree = minimal_http(cluster={"per_connection_buffer_limit_bytes": "9" * 5000})
    assert_config_error_at(tree, "static_resources.clusters[0].per_connection_buffer_limit_bytes")


_HUGE_LEN = "9" * 5000


@pytest.mark.parametrize("where", ["header_value", "access_log_text_format"])
def test_format_length_over_4300_digits_is_a_config_error(where):
    fmt = f"%REQ(x):{_HUGE_LEN}%"
    if where == "header_value":
        tree = minimal_http({"request_headers_to_add": [{"header": {"key": "x-a", "value": fmt}}]})
        path = f"{ROUTE0}.request_headers_to_add[0].header.value"
    else:
        tree = minimal_http(hcm={"access_log": [{"typed_config": {
            "@type": STDOUT_LOG_TYPE, "log_format": {"text_format": fmt}}}]})
        path = f"{HCM_AT}.access_log[0].typed_config.log_format.text_format"
    assert_config_error_at(tree, path)


_ENCODING_CASES = {
    # id: (tree, path of the bad string)
    "header_key": (minimal_http({"request_headers_to_add": [{"header": {"key": "x-\u20ac",
                                                                         "value": "v"}}]}),
                   f"{ROUTE0}.request_headers_to_add[0].header.key"),
    "remove_header": (minimal_http({"response_headers_to_remove": ["x-\u20ac"]}),
                      f"{ROUTE0}.response_headers_to_remove[0]"),
    "cluster_header": (minimal_http({"route": {"cluster_header": "x-\u20ac"}}),
                       f"{ROUTE0}.route.cluster_header"),
    "weighted_header_name": (minimal_http({"route": {"weighted_clusters": {
        "clusters": [{"name": "c", "weight": 1}], "header_name": "x-\u20ac"}}}),
        f"{ROUTE0}.route.weighted_clusters.header_name"),
    "host_rewrite_literal": (minimal_http({"route": {"cluster": "c",
                                                     "host_rewrite_literal": "\u20ac"}}),
                             f"{ROUTE0}.route.host_rewrite_literal"),
    "internal_only_headers": (minimal_http(route_config={"internal_only_headers": ["x-\u20ac"]}),
                              f"{HCM_AT}.route_config.internal_only_headers[0]"),
    # A lone surrogate: what JSON "\ud800" decodes to.
    "direct_response_surrogate": (minimal_http({"route": None, "direct_response": {
        "status": 200, "body": {"inline_string": "\ud800"}}}),
        f"{ROUTE0}.direct_response.body.inline_string"),
}


@pytest.mark.parametrize("case", sorted(_ENCODING_CASES))
def test_unencodable_string_is_a_config_error(case):
    tree, path = _ENCODING_CASES[case]
    assert_config_error_at(copy.deepcopy(tree), path)


def test_non_latin1_route_prefix_loads():
    """Unlike a header string, a route prefix may hold any text (matched on the decoded path)."""
    boot = parse_bootstrap(minimal_http({"match": {"prefix": "/\u20ac"}}))
    assert boot is not None


@pytest.mark.parametrize("regex", ["a{99999999999}", "(" * 1000 + ")" * 1000],
                         ids=["huge-repeat", "deep-groups"])
def test_pathological_regex_is_a_config_error(regex):
    tree = minimal_http({"match": {"safe_regex": {"regex": regex}}})
    assert_config_error_at(tree, f"{ROUTE0}.match.safe_regex.regex")


def test_huge_max_direct_response_body_size_is_a_config_error():
    tree = minimal_http({"route": None, "direct_response": {
        "status": 200, "body": {"filename": "/dev/null"}}},
        route_config={"max_direct_response_body_size_bytes": 2**64})
    assert_config_error_at(tree, f"{HCM_AT}.route_config.max_direct_response_body_size_bytes")


@pytest.mark.parametrize("where", ["node_metadata", "layered_runtime", "json_format"])
def test_deeply_nested_value_is_a_config_error(where):
    tree = minimal_http()
    deep = _deep(3000, "dict")
    if where == "node_metadata":
        tree["node"] = {"metadata": deep}
        path = "node.metadata"
    elif where == "layered_runtime":
        tree["layered_runtime"] = deep
        path = "layered_runtime"
    else:
        hcm = _get(tree, ("static_resources", "listeners", 0, "filter_chains", 0, "filters", 0,
                          "typed_config"))
        hcm["access_log"] = [{"typed_config": {"@type": STDOUT_LOG_TYPE,
                                               "log_format": {"json_format": deep}}}]
        path = f"{HCM_AT}.access_log[0].typed_config.log_format.json_format"
    e = config_error_of(lambda: parse_bootstrap(tree))
    assert e.path.startswith(path), short(str(e))


@pytest.mark.parametrize("name,text", [
    ("deep.json", '{"node": {"metadata": {"k": ' + "[" * 100_000 + "]" * 100_000 + "}}}"),
    ("deep.yaml", "node: {metadata: {k: " + "[" * 3000 + "]" * 3000 + "}}"),
    ("bigint.json", '{"stats_flush_interval": ' + "9" * 5000 + "}"),
], ids=["deep-json", "deep-yaml", "bigint-json"])
def test_pathological_config_file_is_a_config_error(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    e = config_error_of(lambda: load_bootstrap(str(p)))
    assert str(p) in str(e), short(str(e))


@pytest.mark.parametrize("name,text", [
    ("dup.yaml", "admin: {}\nstatic_resources: {}\nadmin: {}\n"),
    ("dup-nested.yaml", "static_resources:\n  clusters: []\n  clusters: []\n"),
    ("dup.json", '{"admin": {}, "admin": {}}'),
], ids=["yaml", "yaml-nested", "json"])
def test_duplicate_key_in_a_config_file_is_a_config_error(tmp_path, name, text):
    """A key given twice (a pasted second `clusters:`) is refused, not silently replaced."""
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    e = config_error_of(lambda: load_bootstrap(str(p)))
    assert str(p) in str(e) and "duplicate key" in str(e), short(str(e))


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    """YAML merge keys (`<<: {...}`) are not duplicates: an explicit key overrides them."""
    text = yaml.safe_dump(minimal_http())
    cluster_line = "  - connect_timeout: 0.25s\n"
    assert cluster_line in text, text
    p = tmp_path / "merge.yaml"
    p.write_text(text.replace(cluster_line, "  - <<: {connect_timeout: 1s}\n    connect_timeout: 0.25s\n"),
                 encoding="utf-8")
    assert load_bootstrap(str(p)).clusters[0].connect_timeout == 0.25


@pytest.mark.parametrize("case", ["access_log_inline_bytes", "direct_response_nul_filename"])
def test_data_source_value_errors_are_config_errors(case):
    if case == "access_log_inline_bytes":
        tree = minimal_http(hcm={"access_log": [{"typed_config": {
            "@type": STDOUT_LOG_TYPE,
            "log_format": {"text_format_source": {"inline_bytes": "\u20ac\u20ac"}}}}]})
        path = f"{HCM_AT}.access_log[0].typed_config.log_format.text_format_source.inline_bytes"
    else:
        tree = minimal_http({"route": None, "direct_response": {
            "status": 200, "body": {"filename": "a\x00b"}}})
        path = f"{ROUTE0}.direct_response.body.filename"
    assert_config_error_at(tree, path)


@pytest.mark.parametrize("field,value", [("connect_timeout", float("nan")),
                                         ("dns_refresh_rate", float("inf"))])
def test_non_finite_cluster_duration_is_a_config_error(field, value):
    assert_config_error_at(minimal_http(cluster={field: value}),
                           f"static_resources.clusters[0].{field}")
