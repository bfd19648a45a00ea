"""envoy.type.matcher.v3.MetadataMatcher / ValueMatcher (proxy/router/metadata_matcher.py): Envoy
1.40's rules for a value of a stream's dynamic metadata, and config errors naming the field.
Through the proxy against real Envoy: tests/differential/cases/metadata_matchers.yaml."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from proxy.config.reader import ConfigError
from proxy.router.metadata_matcher import ABSENT, lookup, parse_metadata_matcher, parse_value_matcher

MD = {
    "auth": {"role": "admin", "level": 3, "score": 7.5, "flag": False, "none": None,
             "groups": ["dev", 2, True], "nested": {"deep": {"k": "v"}}},
    "other": {"x": "1"},
}


def m(value, path=("role",), ns="auth", invert=False):
    return parse_metadata_matcher({"filter": ns, "path": [{"key": k} for k in path],
                                   "value": value, "invert": invert}, "m")


def test_lookup_walks_objects_and_gives_absent_for_what_is_not_there():
    assert lookup(MD, "auth", ("nested", "deep", "k")) == "v"
    assert lookup(MD, "auth", ("nested",)) == {"deep": {"k": "v"}}
    assert lookup(MD, "auth", ("none",)) is None              # a null is a value
    assert lookup(MD, "nope", ("role",)) is ABSENT             # no namespace
    assert lookup(MD, "auth", ("nope",)) is ABSENT             # no key
    assert lookup(MD, "auth", ("role", "x")) is ABSENT         # a key under a scalar
    assert lookup(MD, "auth", ("groups", "0")) is ABSENT       # lists are not walked
    assert lookup(None, "auth", ("role",)) is ABSENT
    assert lookup({}, "auth", ("role",)) is ABSENT
    # frozen route metadata (MappingProxyType, tuples) reads the same
    frozen = MappingProxyType({"ns": MappingProxyType({"t": ("a", "b")})})
    assert m({"list_match": {"one_of": {"string_match": {"exact": "b"}}}}, ("t",), "ns").matches(frozen)


def test_string_match_takes_strings_only():
    assert m({"string_match": {"exact": "admin"}}).matches(MD)
    assert m({"string_match": {"prefix": "ADM", "ignore_case": True}}).matches(MD)
    assert not m({"string_match": {"exact": "3"}}, ("level",)).matches(MD)


def test_double_match_exact_and_half_open_range_on_numbers_only():
    assert m({"double_match": {"exact": 3}}, ("level",)).matches(MD)
    assert m({"double_match": {"range": {"start": 7.5, "end": 8}}}, ("score",)).matches(MD)
    assert not m({"double_match": {"range": {"start": 7, "end": 7.5}}}, ("score",)).matches(MD)
    assert not m({"double_match": {"exact": 0}}, ("flag",)).matches(MD)  # a bool is no number
    assert not m({"double_match": {"exact": 1}}, ("x",), "other").matches(MD)  # nor is "1"
    huge = {"auth": {"n": 10 ** 400}}                       # past a double: +inf, no error
    assert m({"double_match": {"range": {"start": 0, "end": 1e308}}}, ("n",)).matches(huge) is False
    assert m({"double_match": {"exact": float("inf")}}, ("n",)).matches(huge)


def test_bool_and_null_match_their_own_kind_only():
    assert m({"bool_match": False}, ("flag",)).matches(MD)
    assert not m({"bool_match": True}, ("flag",)).matches(MD)
    assert not m({"bool_match": False}, ("level",)).matches(MD)
    assert m({"null_match": {}}, ("none",)).matches(MD)
    assert not m({"null_match": {}}, ("nope",)).matches(MD)    # no value is not null
    assert not m({"null_match": {}}, ("flag",)).matches(MD)


def test_present_match_true_needs_a_value_and_false_matches_nothing():
    assert m({"present_match": True}, ("none",)).matches(MD)
    assert m({"present_match": True}, ("nested",)).matches(MD)
    assert not m({"present_match": True}, ("nope",)).matches(MD)
    assert not m({"present_match": False}, ("nope",)).matches(MD)
    assert not m({"present_match": False}, ("role",)).matches(MD)


def test_list_one_of_and_or_match():
    one_of = {"list_match": {"one_of": {"double_match": {"exact": 2}}}}
    assert m(one_of, ("groups",)).matches(MD)
    assert not m({"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}).matches(MD)  # not a list
    either = {"or_match": {"value_matchers": [{"string_match": {"exact": "x"}}, {"double_match": {"exact": 3}}]}}
    assert m(either, ("level",)).matches(MD)
    assert not m(either, ("score",)).matches(MD)


def test_invert_flips_every_result_missing_value_included():
    assert not m({"string_match": {"exact": "admin"}}, invert=True).matches(MD)
    assert m({"string_match": {"exact": "user"}}, invert=True).matches(MD)
    assert m({"string_match": {"exact": "admin"}}, ("nope",), invert=True).matches(MD)
    assert m({"present_match": False}, invert=True).matches(MD)


@pytest.mark.parametrize("raw,path,message", [
    ({"path": [{"key": "k"}], "value": {"present_match": True}}, "m.filter", "required field is missing"),
    ({"filter": "", "path": [{"key": "k"}], "value": {"present_match": True}}, "m.filter", "must not be empty"),
    ({"filter": "ns", "value": {"present_match": True}}, "m.path", "required field is missing"),
    ({"filter": "ns", "path": [{"key": ""}], "value": {"present_match": True}}, "m.path[0].key", "must not be empty"),
    ({"filter": "ns", "path": [{"key": "k"}]}, "m.value", "required field is missing"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {}}, "m.value", "one of null_match"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"bool_match": True, "present_match": True}},
     "m.value", "only one of"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"double_match": {}}}, "m.value.double_match",
     "one of range, exact"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"double_match": {"exact": "x"}}},
     "m.value.double_match.exact", "expected a number"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"or_match": {"value_matchers": [{"null_match": {}}]}}},
     "m.value.or_match.value_matchers", "at least 2"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"list_match": {}}},
     "m.value.list_match.one_of", "required field is missing"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"string_match": {"custom": {}}}},
     "m.value.string_match.custom", "not supported yet"),
    ({"filter": "ns", "path": [{"key": "k"}], "value": {"null_match": {"x": 1}}},
     "m.value.null_match", 'unknown field "x"'),
])
def test_config_errors_name_the_field(raw, path, message):
    with pytest.raises(ConfigError) as e:
        parse_metadata_matcher(raw, "m")
    assert e.value.path == path
    assert message in e.value.message


def test_a_value_matcher_is_immutable_and_shared():
    v = parse_value_matcher({"string_match": {"exact": "a"}}, "v")
    with pytest.raises(AttributeError):
        v.kind = "bool_match"  # type: ignore[misc]
