"""Dynamic metadata without sockets: set_metadata's merge (Envoy's StructUtil::update, the
example of Envoy's set_metadata docs) and %DYNAMIC_METADATA%'s rendering (protobuf's JSON of a
Value: integral doubles without a fraction, object keys sorted, strings bare at the top)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.access_log.metadata_format import dynamic_metadata_getter, metadata_json
from proxy.config.reader import ConfigError
from proxy.http.filters.set_metadata import merge_struct


def test_merge_replaces_scalars_and_other_kinds_appends_lists_and_recurses_into_objects():
    ns = {"myint": 1, "mylist": ["a"], "mykey": ["val"], "mytags": {"tag0": 1}, "flag": True}
    new = {"myint": 2, "mylist": ["b", "c"], "mykey": 1, "mytags": {"tag1": 1}, "flag": 0}
    merge_struct(ns, new)
    assert ns == {"myint": 2, "mylist": ["a", "b", "c"], "mykey": 1,
                  "mytags": {"tag0": 1, "tag1": 1}, "flag": 0}   # bool and number: two kinds
    ns["mylist"].append("z")
    assert new["mylist"] == ["b", "c"]       # what was merged in was copied


def test_metadata_renders_as_protobuf_json():
    assert metadata_json({"b": [1.0, 2.5, None], "a": {"t": True}}) == '{"a":{"t":true},"b":[1,2.5,null]}'
    info = SimpleNamespace(dynamic_metadata={"ns": {"s": "text", "n": 3.0, "o": {"k": "v"}, "z": None}})
    assert dynamic_metadata_getter("ns:s", "p")(info) == "text"
    assert dynamic_metadata_getter("ns:n", "p")(info) == "3"
    assert dynamic_metadata_getter("ns:o", "p")(info) == '{"k":"v"}'
    assert dynamic_metadata_getter("ns:o:k", "p")(info) == "v"
    for unset in ("ns:z", "ns:missing", "ns:s:under_a_string", "other"):
        assert dynamic_metadata_getter(unset, "p")(info) is None
    assert dynamic_metadata_getter("ns", "p")(SimpleNamespace()) is None


@pytest.mark.parametrize("arg", [None, "", ":key"])
def test_a_missing_namespace_is_a_config_error(arg):
    with pytest.raises(ConfigError):
        dynamic_metadata_getter(arg, "p")
