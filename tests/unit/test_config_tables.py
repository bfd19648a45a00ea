"""The declared field tables (proxy/config/fields_table.py) are honest.

- A field declared USED names the parsed model's attribute that carries it, and some runtime
  module (anything in proxy/ but the config layer's parsing modules) reads that attribute: the
  check walks the source's AST for an attribute load of that name. Declaring a field "used"
  that nothing reads fails here, naming it.
- A field declared INERT says why; no runtime code reads its attribute (else it is not inert).
- Every attribute of a parsed model is some field's carrier, or declared bookkeeping: a model
  attribute nobody declared (parsed, then silently dropped) fails.
- Every REFUSED field, present, is refused with "<path>: not supported yet" naming it; every
  declared field name is accepted as a field name (no table declares a field its parser calls
  unknown).
- The README's generated field lists are current, and its hand-written Accepted/Refused lists
  do not contradict the tables.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

import proxy.config.load  # noqa: F401  the catalogue of extensions
from proxy.config.registry import load_all
from proxy.config.fields_table import INERT, REFUSED, USED, Message, render_readme, tables
from proxy.config.reader import ConfigError, all_errors

ROOT = Path(__file__).resolve().parents[2]

load_all()  # every config module imported: fills the tables
README = ROOT / "README.md"

# The config layer: modules that parse config. Attribute reads there do not count as use.
CONFIG_LAYER = {
    "proxy/config/bootstrap.py", "proxy/config/listener.py", "proxy/config/load.py",
    "proxy/config/reader.py", "proxy/config/registry.py", "proxy/config/fields_table.py",
    "proxy/upstream/cluster_config.py", "proxy/upstream/outlier_config.py", "proxy/network/tcp_proxy_config.py",
    "proxy/access_log/config.py", "proxy/http/router_filter_config.py",
    "proxy/http/hcm_config.py", "proxy/router/config.py", "proxy/router/matchers.py",
    "proxy/router/redirect.py", "proxy/router/header_mutation.py",
    "proxy/router/per_filter_config.py", "proxy/router/retry_policy.py",
    # Filters: one module holds the config and the runtime (RUNTIME_PARTS).
    "proxy/http/filters/fault.py", "proxy/http/filters/cors.py",
    "proxy/network/filters/connection_limit.py", "proxy/network/filters/local_ratelimit.py",
    "proxy/config/stats_config.py",
}
# Runtime code that lives in a config-layer module (classes and functions by name).
RUNTIME_PARTS = {
    "proxy/access_log/config.py": {"AccessLogger", "create"},
    # The route model's request-time methods, and the matchers / rewrites / mutations.
    "proxy/router/config.py": {"choose_cluster", "rewrite_path"},
    "proxy/router/matchers.py": {"StringMatcher", "HeaderMatcher", "_in_range", "_header_value",
                                 "QueryParameterMatcher", "parse_query", "RequestView",
                                 "_is_grpc", "RouteMatch", "split_path"},
    "proxy/router/redirect.py": {"RegexRewrite", "PathRewrite", "request_scheme",
                                 "_host_port_split", "RedirectAction"},
    "proxy/router/header_mutation.py": {"_without_port", "_attr", "_start_time", "_req",
                                        "ValueFormat", "apply_mutations"},
    "proxy/router/per_filter_config.py": {"merge_levels"},
    "proxy/router/retry_policy.py": {"_tokens", "parse_retry_on", "parse_retry_grpc_on",
                                     "exponential_backoff_ms", "lower_bound_backoff_ms",
                                     "reset_interval_ms"},
    "proxy/http/filters/fault.py": {"FaultFactory", "WorkerFaultFactory", "FaultFilter"},
    "proxy/http/filters/cors.py": {"CorsFactory", "WorkerCorsFactory", "CorsFilter"},
    "proxy/network/filters/connection_limit.py": {"ConnectionLimitFactory",
                                                  "WorkerConnectionLimit", "ConnectionLimitFilter"},
    "proxy/network/filters/local_ratelimit.py": {"TokenBucket", "LocalRateLimitFactory",
                                                 "WorkerLocalRateLimit", "LocalRateLimitFilter"},
    # The stats_matcher's test and the per-name bucket choice, asked when a stat is created.
    "proxy/config/stats_config.py": {"rejects", "tag_producer", "buckets_for"},
}
# Attribute names too generic for "no runtime code reads it" to mean anything.
GENERIC = {"name", "metadata", "content_type", "address"}

ALL = tables()


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _loads(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)}


@cache
def runtime_reads() -> dict[str, set[str]]:
    """Attribute name -> runtime modules that read an attribute of that name."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        rel = _rel(path)
        tree = ast.parse(path.read_text(), rel)
        if rel in CONFIG_LAYER:
            parts = RUNTIME_PARTS.get(rel, set())
            nodes = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in parts]
        else:
            nodes = [tree]
        for node in nodes:
            for attr in _loads(node):
                out.setdefault(attr, set()).add(rel)
    return out


def _specs(status: str):
    return [pytest.param(m, s, id=f"{m.proto}.{s.name}") for m in ALL.values() for s in m.fields
            if s.status == status]


def test_the_tables_cover_every_message_ftproxy_parses_in_these_modules():
    expected = {"Bootstrap", "Admin", "Node", "Listener", "FilterChain", "Cluster", "TcpProxy",
                "Router", "FileAccessLog", "SubstitutionFormatString", "ClusterLoadAssignment",
                "ClusterLoadAssignment.Policy", "LocalityLbEndpoints", "RuntimeLayer",
                "RouteConfiguration", "VirtualHost", "Route", "RouteMatch", "HeaderMatcher",
                "QueryParameterMatcher", "StringMatcher", "RegexMatcher", "RouteAction",
                "WeightedCluster", "WeightedCluster.ClusterWeight", "RedirectAction",
                "DirectResponseAction", "FilterConfig"}
    got = {p.split("v3.", 1)[-1] for p in ALL}
    assert expected <= got, expected - got


@pytest.mark.parametrize("msg,spec", _specs(USED))
def test_a_used_field_is_read_by_runtime_code(msg: Message, spec):
    if spec.attr is None:
        assert spec.why, f"{msg.proto}.{spec.name}: a used field without a model attribute must say " \
                         "what it does (e.g. 'its own table')"
        return
    readers = runtime_reads().get(spec.attr)
    assert readers, (f"{msg.proto}.{spec.name} is declared used, but no runtime module reads "
                     f"an attribute named {spec.attr!r}: implement it, or declare it inert or refused")


@pytest.mark.parametrize("msg,spec", _specs(INERT))
def test_an_inert_field_says_why_and_nothing_reads_it(msg: Message, spec):
    assert spec.why, f"{msg.proto}.{spec.name}: inert without a reason"
    if spec.attr and spec.attr not in GENERIC:
        assert not runtime_reads().get(spec.attr), (
            f"{msg.proto}.{spec.name} is declared inert, but {sorted(runtime_reads()[spec.attr])} "
            f"read {spec.attr!r}: declare it used")


@pytest.mark.parametrize("msg", [pytest.param(m, id=m.proto) for m in ALL.values() if m.model])
def test_every_model_attribute_is_a_declared_field_or_bookkeeping(msg: Message):
    carriers = {s.attr for m in ALL.values() for s in m.fields if s.attr}
    own = {s.attr for s in msg.fields if s.attr}
    names = {f.name for f in dataclasses.fields(msg.model)}
    undeclared = names - carriers - set(msg.bookkeeping)
    assert not undeclared, (f"{msg.model.__name__} has attributes no table declares: "
                            f"{sorted(undeclared)}")
    assert own <= names | {s.attr for m in ALL.values() if m.model is None for s in m.fields}, (
        f"{msg.proto} declares attributes {sorted(own - names)} that {msg.model.__name__} lacks")


@pytest.mark.parametrize("msg,spec", [p for p in _specs(REFUSED) if not p.values[1].only_default])
def test_a_refused_field_is_refused_by_path(msg: Message, spec):
    with pytest.raises(ConfigError) as e:
        msg.read({spec.name: {"x": 1}}, "p")
    assert any(err.path == f"p.{spec.name}" and err.message.startswith("not supported yet")
               for err in all_errors(e.value)), str(e.value)


@pytest.mark.parametrize("msg", [pytest.param(m, id=m.proto) for m in ALL.values()])
def test_every_declared_name_is_a_field_name_of_the_message(msg: Message):
    for spec in msg.fields:
        try:
            msg.read({spec.name: None}, "p")
        except ConfigError as e:  # pragma: no cover - the failure message
            pytest.fail(f"{msg.proto}.{spec.name}: {e}")


def test_refusals_of_several_fields_and_typos_come_together():
    cluster = ALL["envoy.config.cluster.v3.Cluster"]
    with pytest.raises(ConfigError) as e:
        cluster.read({"upstream_bind_config": {"a": 1}, "alt_stat_name": "x", "conect_timeout": "1s"}, "c")
    assert [str(x) for x in all_errors(e.value)] == [
        'c: unknown field "conect_timeout" (did you mean "connect_timeout"?)',
        "c.alt_stat_name: not supported yet",
        "c.upstream_bind_config: not supported yet",
    ]


def test_a_refused_field_left_at_its_proto3_default_is_not_refused():
    listener = ALL["envoy.config.listener.v3.Listener"]
    f = listener.read({"transparent": False, "listener_filters": [], "socket_options": []}, "l")
    assert f.path == "l"


# -- the README -------------------------------------------------------------------------------

def test_readme_field_lists_are_generated_from_the_tables():
    text = README.read_text()
    assert "<!-- fields: " in text
    assert render_readme(text) == text, (
        "README.md's field lists are stale: run `.venv/bin/python -m proxy.config.fields_table README.md`")


def test_readme_names_every_table_once():
    text = README.read_text()
    named = re.findall(r"<!-- fields: (.+?) -->", text)
    assert sorted(named) == sorted(ALL), set(ALL) ^ set(named)


# Hand-written paragraphs of "Supported configuration" and the tables they speak for.
_PARAGRAPHS = {
    "Bootstrap": ("Bootstrap", "Admin", "StaticResources", "Node", "Locality", "LayeredRuntime",
                  "RuntimeLayer", "OverloadManager"),
    "Listeners": ("Listener", "FilterChain", "FilterChainMatch", "CidrRange", "ListenerFilter",
                  "Address", "SocketAddress"),
    "Listener filters": ("TlsInspector", "HttpInspector", "ProxyProtocol", "OriginalDst"),
    "Clusters": ("Cluster", "ClusterLoadAssignment", "Policy", "LocalityLbEndpoints",
                 "LbEndpoint", "Endpoint", "CircuitBreakers", "Thresholds", "CommonLbConfig",
                 "Percent (healthy_panic_threshold)", "RetryBudget", "Percent (retry_budget)",
                 "LeastRequestLbConfig", "HttpProtocolOptions", "ExplicitHttpConfig",
                 "Http1ProtocolOptions (upstream)", "Http2ProtocolOptions (upstream)",
                 "HttpProtocolOptions (upstream)",
                 "Address (upstream)", "SocketAddress (upstream)"),
    "TCP proxy": ("TcpProxy", "TcpProxy.WeightedCluster", "TcpProxy.WeightedCluster.ClusterWeight"),
    "UDP proxy": ("UdpProxyConfig", "Matcher (UDP proxy)", "Matcher.OnMatch (UDP proxy)"),
    "Routes": ("RouteConfiguration", "VirtualHost", "Route", "RouteMatch", "HeaderMatcher",
               "QueryParameterMatcher", "StringMatcher", "RouteAction", "RouteAction.UpgradeConfig",
               "WeightedCluster", "WeightedCluster.ClusterWeight", "RedirectAction",
               "DirectResponseAction", "DataSource (direct response body)", "FilterConfig",
               "RetryPolicy", "RetryPolicy.RetryBackOff", "RetryPolicy.RateLimitedRetryBackOff",
               "RetryPolicy.ResetHeader", "TypedExtensionConfig (retry_host_predicate)"),
    "Access logs": ("AccessLog", "FileAccessLog", "StdoutAccessLog", "SubstitutionFormatString",
                    "JsonFormatOptions",
                    "DataSource (access log format)"),
}


def _paragraph(text: str, title: str) -> str:
    m = re.search(rf"^\*\*{re.escape(title)}\.\*\*(.*?)(?=^<details>|^\*\*|^## |\Z)", text, re.S | re.M)
    assert m, f"README has no **{title}.** paragraph"
    return m.group(1)


def _key(proto: str) -> str:
    return proto.split("v3.", 1)[-1]   # "Cluster", "ClusterLoadAssignment.Policy", "Address (upstream)"


def _statuses(short_names: tuple[str, ...], field: str) -> set[str]:
    """How the paragraph's tables treat `field`: "accepted" (used or inert), "refused", or
    both (refused unless at its default)."""
    out = set()
    for proto, m in ALL.items():
        key = _key(proto)
        if any(key == s or key.endswith("." + s) for s in short_names):
            for spec in m.fields:
                if spec.name == field and spec.only_default:
                    out |= {"accepted", "refused"}   # accepted at its default, refused otherwise
                elif spec.name == field:
                    out.add("refused" if spec.status == REFUSED else "accepted")
    return out


@pytest.mark.parametrize("title", sorted(_PARAGRAPHS))
def test_readme_prose_does_not_contradict_the_tables(title):
    para = _paragraph(README.read_text(), title)
    head, _, refused_part = para.partition("Refused:")
    problems = []
    for part, want in ((head, "accepted"), (refused_part, "refused")):
        for name in re.findall(r"`([a-z_][a-z0-9_.]*)`", part):
            field = name.rsplit(".", 1)[-1]
            got = _statuses(_PARAGRAPHS[title], field)
            if got and want not in got:
                problems.append(f"`{name}` is written as {want}, but the tables say {sorted(got)}")
    assert not problems, f"README **{title}.**: " + "; ".join(problems)


# Modules whose objects are opened through a declared table (Message.read), never with an
# ad-hoc list of allowed names that no table, README list or test would see.
TABLED_MODULES = ["proxy/config/bootstrap.py", "proxy/config/listener.py",
                  "proxy/upstream/cluster_config.py", "proxy/upstream/outlier_config.py", "proxy/network/tcp_proxy_config.py",
                  "proxy/access_log/config.py", "proxy/http/router_filter_config.py",
                  "proxy/http/filters/fault.py", "proxy/http/filters/cors.py",
                  "proxy/network/filters/connection_limit.py",
                  "proxy/network/filters/local_ratelimit.py", "proxy/router/config.py",
                  "proxy/router/matchers.py", "proxy/router/redirect.py",
                  "proxy/router/header_mutation.py", "proxy/router/per_filter_config.py",
                  "proxy/router/retry_policy.py"]


@pytest.mark.parametrize("module", TABLED_MODULES)
def test_config_objects_are_opened_through_their_table(module):
    tree = ast.parse((ROOT / module).read_text(), module)
    ad_hoc = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        if name == "Fields" or (name in ("obj", "objs") and isinstance(fn, ast.Attribute)):
            ad_hoc.append(f"{module}:{node.lineno} {name}(...)")
    assert not ad_hoc, "objects opened without a declared table: " + ", ".join(ad_hoc)
