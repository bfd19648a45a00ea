"""The gRPC-JSON transcoder's mapping without sockets: google.api.http templates
(proxy/grpc/http_template.py), the method table, request messages from path, query and body,
reply messages printed as Envoy prints them (proxy/grpc/json_transcoding.py), and the filter's
config (refused fields name themselves). The differential case filter_grpc_json_transcoder
holds the same behaviour against real Envoy; expected strings here come from it."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.config.reader import ConfigError
from proxy.grpc.http_template import TemplateError, parse_template, split_path, unescape_reserved
from proxy.grpc.transcoding_types import NotMapped, PrintOptions, SetupError, TranscodeError
from proxy.http.filters.grpc_json_transcoder import parse_grpc_json_transcoder
from tests.bookstore_proto import descriptor_set


def _transcoding(**kw):
    from proxy.grpc.json_transcoding import Transcoding
    args = dict(services=("bookstore.Bookstore",), auto_mapping=False, ignored_query_parameters=frozenset(),
                ignore_unknown_query_parameters=False, print_options=PrintOptions())
    args.update(kw)
    return Transcoding(descriptor_set(True), **args)


@pytest.fixture(scope="module")
def t():
    return _transcoding()


# -- templates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["shelves", "/a/**/b", "/a/{x", "/a/x{y}", "/a/{1x}", "/a/", "/a:"])
def test_what_is_not_a_template_is_refused(text):
    with pytest.raises(TemplateError):
        parse_template(text)


def test_variables_over_several_segments_and_the_rest_of_the_path():
    tpl = parse_template("/v1/{title=titles/*}/{series_name=**}")
    assert tpl.match(*split_path("/v1/titles/dune/a/b/c", frozenset())) == (
        ("title", "titles/dune"), ("series_name", "a/b/c"))
    assert tpl.match(*split_path("/v1/books/dune/a", frozenset())) is None


def test_a_verb_is_one_only_when_a_template_declares_it():
    tpl = parse_template("/books/{id}:archive")
    assert tpl.match(*split_path("/books/5:archive", frozenset({"archive"}))) == (("id", "5"),)
    plain = parse_template("/books/{id}")
    assert plain.match(*split_path("/books/5:burn", frozenset({"archive"}))) == (("id", "5:burn"),)
    assert plain.match(*split_path("/books/5:archive", frozenset({"archive"}))) is None


def test_a_trailing_slash_is_no_segment():
    assert split_path("/shelves/3/", frozenset()) == (["shelves", "3"], "")


def test_reserved_characters_stay_escaped():
    assert unescape_reserved("a%20b%2Fc%3A%7E") == "a b%2Fc%3A~"


# -- requests ------------------------------------------------------------------------------------------

def test_the_more_literal_template_wins():
    from proxy.grpc.json_transcoding import Transcoding  # noqa: F401
    t = _transcoding()
    assert t.lookup(b"GET", b"/shelves/3/books/42").method.grpc_path == b"/bookstore.Bookstore/GetBook"
    assert t.lookup(b"POST", b"/books/5:archive").method.grpc_path == b"/bookstore.Bookstore/Archive"


@pytest.mark.parametrize("method, path", [
    (b"GET", b"/other"), (b"POST", b"/shelves/3/books/42"), (b"GET", b"/shelves/3/books/42?nosuch=1"),
    (b"GET", b"/shelves/3/books/42?meta.nosuch=1"), (b"POST", b"/bookstore.Bookstore/NoRule"),
])
def test_what_no_rule_maps_is_not_mapped(t, method, path):
    with pytest.raises(NotMapped):
        t.lookup(method, path)


def test_ignored_and_unknown_query_parameters_when_asked():
    t = _transcoding(ignored_query_parameters=frozenset({"api_key"}), ignore_unknown_query_parameters=True,
                     auto_mapping=True)
    m = t.lookup(b"GET", b"/shelves/1/books/2?api_key=x&nosuch=1&title=kept")
    assert ("title", "kept") in m.bindings and not any(k == "api_key" for k, _ in m.bindings)
    assert t.lookup(b"POST", b"/bookstore.Bookstore/NoRule").body == "*"


def _request(t, method, path, body=b""):
    m = t.lookup(method, path)
    msg = m.method.request_class()
    msg.ParseFromString(t.request_message(m, body))
    return msg


def test_path_query_and_body_make_the_message(t):
    msg = _request(t, b"POST", b"/shelves/7/books?tags=q&meta.flag=yes",
                   b'{"title": "Dune", "tags": ["b"], "seriesName": "s", "nosuch": 1}')
    assert (msg.shelf, msg.title, list(msg.tags), msg.series_name, msg.meta.flag) == (7, "Dune", ["b", "q"], "s", True)
    msg = _request(t, b"PATCH", b"/books/5/meta", b'{"note": "n"}')
    assert (msg.id, msg.meta.note) == (5, "n")
    assert _request(t, b"GET", b"/shelves/3/books/42?kind=2").kind == 2


@pytest.mark.parametrize("path, words", [
    (b"/shelves/abc/books/2", 'shelf: invalid value "abc" for type TYPE_INT64'),
    (b"/shelves/99999999999999999999/books/1", 'shelf: invalid value "99999999999999999999" for type TYPE_INT64'),
    (b"/shelves/1/books/2?kind=POEM", 'kind: invalid value "POEM" for type type.googleapis.com/bookstore.Kind'),
    (b"/shelves/1/books/2?meta=1", 'meta: invalid value "1" for type type.googleapis.com/bookstore.Meta'),
    (b"/shelves/1/books/2?meta.flag=maybe", 'meta.flag: invalid value "maybe" for type TYPE_BOOL'),
])
def test_values_that_do_not_fit_say_so_in_envoys_words(t, path, words):
    with pytest.raises(TranscodeError) as e:
        _request(t, b"GET", path)
    assert e.value.message == words and e.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("body", [b'{"title": ', b'{"id": "abc"}', b'["x"]'])
def test_a_body_that_is_not_the_message_is_refused(t, body):
    with pytest.raises(TranscodeError):
        _request(t, b"POST", b"/shelves/1/books", body)


# -- replies -------------------------------------------------------------------------------------------

def _reply(t, **fields):
    m = t.lookup(b"GET", b"/shelves/1/books/2").method
    return t.response_json(m, m.response_class(**fields).SerializeToString())


def test_reply_json_is_compact_in_field_order_with_cpp_escapes(t):
    out = _reply(t, series_name="s", id=42, title="<é&>\u2028", price=100.0)
    assert out == '{"id":"42","title":"\\u003cé&\\u003e\\u2028","price":100,"seriesName":"s"}'.encode()


def test_print_options():
    t = _transcoding(print_options=PrintOptions(True, True, True, True))
    m = t.lookup(b"GET", b"/shelves/1/books/2").method
    out = t.response_json(m, m.response_class(id=42, shelf=3, kind=2).SerializeToString())
    assert out == (b'{\n "id": "42",\n "title": "",\n "author": "",\n "tags": [],\n "kind": 2,\n'
                   b' "shelf": "3",\n "price": 0,\n "series_name": ""\n}\n')


# -- setup and config ------------------------------------------------------------------------------------

def test_a_service_not_in_the_descriptor_is_a_setup_error():
    with pytest.raises(SetupError, match="could not find 'bookstore.Nope'"):
        _transcoding(services=("bookstore.Nope",))


def _config(**extra):
    raw = {"proto_descriptor_bin": base64.b64encode(descriptor_set(False)).decode(),
           "services": ["bookstore.Bookstore"]}
    raw.update(extra)
    return parse_grpc_json_transcoder(raw, "f")


def test_config_reads_the_descriptor_inline():
    cfg = _config(match_incoming_request_route=True)
    assert cfg.match_incoming_request_route
    assert cfg.transcoding.lookup(b"DELETE", b"/books/8").method.grpc_path == b"/bookstore.Bookstore/DeleteBook"


@pytest.mark.parametrize("field, value", [
    ("convert_grpc_status", True), ("request_validation_options", {"reject_unknown_method": True}),
    ("max_request_body_size", 10), ("url_unescape_spec", "ALL_CHARACTERS"),
    ("print_options", {"stream_newline_delimited": True}), ("case_insensitive_enum_parsing", True),
])
def test_fields_not_built_are_refused_by_name(field, value):
    with pytest.raises(ConfigError) as e:
        _config(**{field: value})
    assert field.split(".")[0] in str(e.value) or "stream_newline_delimited" in str(e.value)


def test_a_descriptor_is_required_and_must_be_base64():
    with pytest.raises(ConfigError):
        parse_grpc_json_transcoder({"services": ["bookstore.Bookstore"]}, "f")
    with pytest.raises(ConfigError, match="base64"):
        _config(proto_descriptor_bin="!!!")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_grpc_json_transcoder({"proto_descriptor": "/nonexistent.pb", "services": []}, "f")


def test_reply_json_round_trips_through_json(t):
    assert json.loads(_reply(t, tags=["a"], meta={"note": "x"})) == {"tags": ["a"], "meta": {"note": "x"}}
