"""The header_mutation filter's pure parts: its config (errors naming the path, what is refused)
and Envoy 1.40's query parameter rewrite (proxy/http/filters/header_mutation_query.py).
What the filter does to requests and responses, in which order, is compared with real Envoy
by tests/differential/cases/filter_header_mutation.yaml."""

from __future__ import annotations

import pytest

from proxy.config.reader import ConfigError, all_errors
from proxy.http.filters.header_mutation_filter import (parse_header_mutation,
                                                       parse_header_mutation_per_route)
from proxy.http.filters.header_mutation_query import (apply_query_mutations, parse_query,
                                                      render_query)
from proxy.http.headers import Headers, RequestHead, ResponseHead
from proxy.router import parse_route_configuration
from proxy.router.header_mutation import apply_mutations


def error(raw, parse=parse_header_mutation) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw, "f")
    return "; ".join(str(x) for x in all_errors(e.value))


class Info:
    downstream_remote_address = "127.0.0.1:5000"

    def __init__(self, request_headers=None, response_headers=None):
        self.request_headers = request_headers
        self.response_headers = response_headers


def test_query_is_decoded_sorted_and_written_back_unencoded():
    path = b"/p?b=two%20words&a=1&z&y=%41%2b+&c=%zz&a=2"
    assert parse_query(path) == {b"b": [b"two words"], b"a": [b"1", b"2"], b"z": [b""],
                                 b"y": [b"A++"], b"c": [b"%zz"]}
    assert render_query(path, parse_query(path)) == b"/p?a=1&a=2&b=two words&c=%zz&y=A++&z="


def test_query_without_parameters_left_loses_its_question_mark():
    cfg = parse_header_mutation({"mutations": {"query_parameter_mutations": [{"remove": "a"}]}}, "f")
    assert apply_query_mutations(b"/p?a=1", cfg.mutations.query_parameter_mutations, None) == b"/p"
    assert apply_query_mutations(b"/p?", cfg.mutations.query_parameter_mutations, None) == b"/p"


def test_query_append_actions():
    def run(action, path):
        cfg = parse_header_mutation({"mutations": {"query_parameter_mutations": [
            {"append": {"record": {"key": "k", "value": "v%REQ(x)%"}, "action": action}}]}}, "f")
        head = RequestHead(b"GET", path, b"h", b"http", Headers([(b"x", b"1")]))
        return apply_query_mutations(path, cfg.mutations.query_parameter_mutations, Info(head))

    assert run("APPEND_IF_EXISTS_OR_ADD", b"/?k=0") == b"/?k=0&k=v1"
    assert run("ADD_IF_ABSENT", b"/?k=0") == b"/?k=0"
    assert run("ADD_IF_ABSENT", b"/") == b"/?k=v1"
    assert run("OVERWRITE_IF_EXISTS", b"/") == b"/"
    assert run("OVERWRITE_IF_EXISTS", b"/?k=0&k=2") == b"/?k=v1"
    assert run("OVERWRITE_IF_EXISTS_OR_ADD", b"/") == b"/?k=v1"


def test_resp_operator_reads_the_response_head_and_is_empty_before_it():
    cfg = parse_header_mutation({"mutations": {"response_mutations": [
        {"append": {"header": {"key": "x-type", "value": "t=%RESP(content-type)%"}}},
        {"append": {"header": {"key": "x-none", "value": "%RESP(content-type)%"}}}]}}, "f")
    resp = ResponseHead(200, Headers([(b"content-type", b"text/plain")]))
    apply_mutations(cfg.mutations.response_mutations[:1], resp.headers, Info(None, resp))
    assert resp.headers.get(b"x-type") == b"t=text/plain"
    h = Headers()
    apply_mutations(cfg.mutations.response_mutations[1:], h, Info(None, None))
    assert not h.has(b"x-none")  # empty, and no keep_empty_value


def test_route_tables_take_resp_and_append_beside_a_default_append_action():
    """As Envoy 1.40 (tests/differential/cases/header_mutation.yaml, /resp-op): %RESP()% in
    a route table's header values, and `append` with `append_action` at its default."""
    rc = parse_route_configuration({"name": "rc", "response_headers_to_add": [
        {"header": {"key": "x", "value": "%RESP(a)%"}},
        {"header": {"key": "y", "value": "1"}, "append": False,
         "append_action": "APPEND_IF_EXISTS_OR_ADD"}], "virtual_hosts": [
        {"name": "vh", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}, "rc")
    x, y = rc.virtual_hosts[0].routes[0].response_mutations
    resp = ResponseHead(200, Headers([(b"a", b"from-the-response"), (b"y", b"old")]))
    apply_mutations((x, y), resp.headers, Info(None, resp))
    assert resp.headers.get(b"x") == b"from-the-response"
    assert resp.headers.get_all(b"y") == [b"1"]  # append: false overwrote, append_action as default
    with pytest.raises(ConfigError, match="both append and append_action are set"):
        parse_route_configuration({"name": "rc", "response_headers_to_add": [
            {"header": {"key": "y", "value": "1"}, "append": True,
             "append_action": "OVERWRITE_IF_EXISTS"}], "virtual_hosts": []}, "rc")


def test_config_errors_name_the_field():
    assert "f.mutations.request_mutations[0].remove_on_match: not supported yet" in error(
        {"mutations": {"request_mutations": [{"remove_on_match": {"key_matcher": {"exact": "x"}}}]}})
    assert "f.mutations.request_mutations[0]: only one of remove, append" in error(
        {"mutations": {"request_mutations": [{"remove": "x", "append": {"header": {"key": "a", "value": "b"}}}]}})
    assert "f.mutations.response_mutations[0]: one of remove, append is required" in error(
        {"mutations": {"response_mutations": [{}]}})
    assert "may not be modified" in error(
        {"mutations": {"request_mutations": [{"append": {"header": {"key": ":path", "value": "/x"}}}]}})
    assert "may not be modified" in error({"mutations": {"request_mutations": [{"remove": "host"}]}})
    assert "f.mutations.query_parameter_mutations[0].append.record.value: only a string value" in error(
        {"mutations": {"query_parameter_mutations": [{"append": {"record": {"key": "k", "value": 1}}}]}})
    assert "f.mutations.query_parameter_mutations[0].append: no record" in error(
        {"mutations": {"query_parameter_mutations": [{"append": {"action": "ADD_IF_ABSENT"}}]}})
    assert "f.mutations.query_parameter_mutations[0].append.entry: not supported yet" in error(
        {"mutations": {"query_parameter_mutations": [{"append": {"entry": {"key": "k", "value": "dg=="}}}]}})
    assert "f.mutations.query_parameter_mutations[0]: one of append, remove" in error(
        {"mutations": {"query_parameter_mutations": [{}]}})
    assert "unsupported header value operator %UPSTREAM_HOST%" in error(
        {"mutations": {"response_trailers_mutations": [
            {"append": {"header": {"key": "a", "value": "%UPSTREAM_HOST%"}}}]}})
    assert 'f.mutations: unknown field "request_mutationz"' in error({"mutations": {"request_mutationz": []}},
                                                   parse_header_mutation_per_route)
