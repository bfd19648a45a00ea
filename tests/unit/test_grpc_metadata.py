"""A gRPC service's initial_metadata, read once for every gRPC client (proxy/config/grpc_metadata.py):
what it accepts, and the field path its refusals name."""

from __future__ import annotations

import pytest

from proxy.config.config_source import parse_api_config_source
from proxy.config.reader import ConfigError


def _ads(metadata, authority=None) -> dict:
    envoy_grpc = {"cluster_name": "xds"}
    if authority is not None:
        envoy_grpc["authority"] = authority
    return {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": envoy_grpc, "initial_metadata": metadata}]}


def test_xds_initial_metadata_and_authority_are_read():
    api = parse_api_config_source(_ads([{"key": "authorization", "value": "Bearer a"},
                                        {"key": "x-empty"}], "cp.test"), "ads_config", True)
    assert api.initial_metadata == ((b"authorization", b"Bearer a"), (b"x-empty", b""))
    assert api.authority == "cp.test"


@pytest.mark.parametrize("item, where", [
    ({"key": "Authorization", "value": "x"}, "initial_metadata[0].key"),
    ({"key": ":path", "value": "x"}, "initial_metadata[0].key"),
    ({"key": "x-a b", "value": "x"}, "initial_metadata[0].key"),
    ({"key": "x-a", "value": "bad\r\nx-injected: 1"}, "initial_metadata[0].value"),
    ({"key": "x-a", "raw_value": "eA=="}, "initial_metadata[0].raw_value"),
])
def test_bad_initial_metadata_is_refused_naming_the_field(item, where):
    with pytest.raises(ConfigError) as e:
        parse_api_config_source(_ads([item]), "ads_config", True)
    assert where in str(e.value)
