"""SafeRegex: RE2-subset regex search in linear time (differential against `re.search`)."""

from __future__ import annotations

import re

import pytest

from proxy.admin.safe_regex import MAX_PROGRAM_SIZE, SafeRegex, SafeRegexError

NAMES = [
    "",
    "server.live",
    "server.uptime",
    "cluster.backend.upstream_rq_200",
    "cluster.backend.upstream_rq_503",
    "cluster.backend.upstream_rq_retry",
    "cluster.backend.upstream_cx_active",
    "cluster.Backend_2.upstream_rq_time",
    "http.ingress_http.downstream_rq_2xx",
    "http.ingress_http.user_agent.ios.downstream_cx_total",
    "listener.127.0.0.1_10000.downstream_cx_total",
    "listener.[__1]_443.ssl.cipher.ECDHE-RSA-AES128-GCM-SHA256",
    "listener_manager.worker_3.listener_added",
    "vhost.vh-1.vcluster.other.upstream_rq_5xx",
    "UPPER.CASE.Stat",
    "a" * 40,
    "aaaaab",
    "x y\tz",
]

PATTERNS = [
    # literals and escapes
    "rq_2", "server.live", r"server\.live", "upstream_rq_200", "nope", "", r"\[__1\]",
    # dot, classes, categories, negation
    "rq_.0", r"rq_\d\d\d", r"rq_\d+$", r"_\dxx", r"[0-9]{3}$", "[^a-z_.]", r"[^.]+\.[^.]+",
    r"\w+\.\w+", r"\W", r"\s", r"\S+", r"\D", "[A-Z]", "[a-c0-2_]+x", "[-.]", r"[\]]",
    # alternation and groups
    "rq_200|rq_503", "(rq|cx)_(active|total)", "(?:upstream|downstream)_rq", "a|b|c",
    "(?P<name>worker)_[0-9]", "(x|y|)z", "(((a)))b",
    # anchors and word boundaries
    "^cluster", "^server.*e$", r"\Acluster\.backend", r"total\Z", "^$", "^", "$",
    r"\blive\b", r"\bive\b", r"\brq_2", r"\Brq", r"\Bive", r"\Blive", r"\bworker_\d\b", "^(cluster|http)\\.[^.]+\\.upstream_rq_(2|5)",
    # repeats, bounded and lazy
    "a{3}", "a{2,5}b", "a{40}", "a{41}", "a{0,2}", "(ab){1,}", "a+?b", "a*?", "(a|b)*c",
    "(a+)+$", "x*", ".*", "^.*$", ".+_rq_.+", "cluster..*?rq_2..",
    r"(\d{1,3}\.){3}\d{1,3}", "(_[0-9]+){2}",
    # flags: case-insensitive (global and scoped), dotall, multiline
    "(?i)upper", "(?i)SERVER\\.LIVE", "(?i)[a-c]ACKEND", "(?i)[^a-z.]", "(?i:STAT)$",
    "(?i)backend_\\d", "(?s).", "(?m)^server", "(?m)live$", "(?i)rq_[A-Z]xx",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_search_agrees_with_re_on_stat_names(pattern):
    rx = SafeRegex.compile(pattern)
    for name in NAMES:
        assert rx.search(name) == bool(re.search(pattern, name)), (pattern, name)


# Exponential for `re` on long names, so compared only on short ones.
PATHOLOGICAL = ["(.|.)*!", "(a*)*b", "(a|aa)*c", "(x+x+)+y"]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_patterns_agree_with_re_on_short_names(pattern):
    rx = SafeRegex.compile(pattern)
    for name in [n for n in NAMES if len(n) <= 16] + ["aab", "aaac", "xxy", "xy", "a!"]:
        assert rx.search(name) == bool(re.search(pattern, name)), (pattern, name)


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("(?s)a.b", "a\nb", True),
    ("a.b", "a\nb", False),
    ("(?m)^b", "a\nb", True),
    ("^b", "a\nb", False),
    # RE2 (not Python): `$` without m matches only at the very end, not before a final newline.
    ("a$", "a\n", False),
    ("(?m)a$", "a\n", True),
])
def test_newline_semantics_follow_re2(pattern, text, expected):
    assert SafeRegex.compile(pattern).search(text) is expected


@pytest.mark.parametrize(("pattern", "construct"), [
    (r"(a)\1", "backreference"),
    (r"(?P<x>a)(?P=x)", "backreference"),
    ("(?=a)", "lookahead"),
    ("a(?!b)", "lookahead"),
    ("(?<=a)b", "lookbehind"),
    ("(?<!a)b", "lookbehind"),
    ("(a)(?(1)b|c)", "conditional"),
    ("a*+", "possessive"),
    ("(?>ab)", "atomic"),
    ("(?x)a b", "verbose"),
    ("(?a)\\w", "ascii"),
])
def test_constructs_re2_does_not_support_are_refused_by_name(pattern, construct):
    with pytest.raises(SafeRegexError, match=f"unsupported by RE2: .*{construct}"):
        SafeRegex.compile(pattern)


@pytest.mark.parametrize("pattern", [
    "(a{1000}){1000}",          # expands to 10^6 instructions
    "x" * (MAX_PROGRAM_SIZE + 1),
    "[ab]{600}c{600}",
    "((){1000}){1000}",         # emits nothing, but the expansion itself is refused
    "(?:(?:(?:){1000}){1000}){1000}",
])
def test_oversized_programs_are_refused(pattern):
    with pytest.raises(SafeRegexError, match="too large"):
        SafeRegex.compile(pattern)


def test_repeat_count_above_re2_limit_is_refused():
    with pytest.raises(SafeRegexError, match="bad repetition"):
        SafeRegex.compile("a{1001}")


@pytest.mark.parametrize("pattern", ["(", "[a-", "a{2,1}", "*a", "\\"])
def test_syntax_errors_raise_safe_regex_error_which_is_a_value_error(pattern):
    with pytest.raises(ValueError):
        SafeRegex.compile(pattern)
    with pytest.raises(SafeRegexError):
        SafeRegex.compile(pattern)


def test_overlong_and_deeply_nested_patterns_are_refused():
    with pytest.raises(SafeRegexError, match="too long"):
        SafeRegex.compile("a?" * 5000)
    with pytest.raises(SafeRegexError, match="nested"):
        SafeRegex.compile("(" * 2000 + ")" * 2000)


@pytest.mark.parametrize("pattern", [*PATHOLOGICAL, "(a+)+$b"])
def test_pathological_patterns_do_bounded_work_on_long_names(pattern):
    name = "a" * 5000 if "x" not in pattern else "x" * 5000
    rx = SafeRegex.compile(pattern)
    found, steps = rx.search_steps(name)
    assert found is False
    # Each instruction is visited at most once per text position: linear, no backtracking.
    assert 0 < steps <= len(rx.program) * (len(name) + 1)


def test_anchored_pattern_stops_at_first_mismatch():
    rx = SafeRegex.compile("^cluster")
    found, steps = rx.search_steps("x" + "a" * 5000)
    assert found is False and steps <= 2 * len(rx.program)


def test_plain_literal_uses_substring_search():
    rx = SafeRegex.compile("upstream_rq")
    assert rx.literal == "upstream_rq"
    assert rx.search_steps("cluster.b.upstream_rq_200") == (True, 0)


def test_compiled_regex_is_immutable():
    rx = SafeRegex.compile("a+")
    with pytest.raises(AttributeError):
        rx.pattern = "b"  # type: ignore[misc]
    assert isinstance(rx.program, tuple) and all(isinstance(i, tuple) for i in rx.program)


def test_budgeted_search_raises_once_total_work_exceeds_budget():
    rx = SafeRegex.compile("(a|b)*c")
    steps = rx.search_steps("ab" * 10)[1]
    searcher = rx.budgeted(2 * steps)
    assert searcher.search("ab" * 10) is False and searcher.search("ab" * 10) is False
    with pytest.raises(SafeRegexError, match="too expensive"):
        searcher.search("ab" * 10)
