"""The xDS subscription seam without sockets: decoding a DiscoveryResponse, Envoy's version
hash, and the filesystem source's move detection (a rename re-reads, an in-place write not)."""

from __future__ import annotations

import os

import pytest
import yaml

from proxy.config.config_source import ConfigSourceConfig, parse_config_source
from proxy.config.reader import ConfigError
from proxy.stats.store import StatsRegistry
from proxy.xds.file_source import FilesystemSubscription
from proxy.xds.subscription import CLUSTER_TYPE, SubscriptionStats, decode_response
from proxy.upstream.hashing_lb import xxhash64 as xxh64


def test_version_gauge_is_envoys_xxhash64():
    # Read from real Envoy 1.40's cluster_manager.cds.version for these version_info values.
    assert xxh64(b"") == 17241709254077376921
    assert xxh64(b"v2") == 17234765554138278603
    assert xxh64(b"r2") == 8003343158660992332


def test_decode_strips_type_and_refuses_another_type_by_path():
    doc = {"version_info": "7", "resources": [{"@type": CLUSTER_TYPE, "name": "a"}]}
    assert decode_response(doc, CLUSTER_TYPE, "") == ([({"name": "a"}, "resources[0]")], "7")
    doc["resources"].append({"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"})
    with pytest.raises(ConfigError) as e:
        decode_response(doc, CLUSTER_TYPE, "")
    assert str(e.value).startswith("resources[1].@type: resource type")
    with pytest.raises(ConfigError, match="unknown field"):
        decode_response({"resourcez": []}, CLUSTER_TYPE, "")


def test_config_source_files_grpc_and_ads_and_refusals_by_path():
    assert parse_config_source({"path": "/a"}, "x") == ConfigSourceConfig("/a")
    assert parse_config_source({"path_config_source": {"path": "/a", "watched_directory": {"path": "/d"}}},
                               "x") == ConfigSourceConfig("/a", "/d")
    grpc = {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    got = parse_config_source({"api_config_source": grpc, "initial_fetch_timeout": "2.500s"}, "x")
    assert (got.kind, got.api.cluster_name, got.initial_fetch_timeout) == ("grpc", "xds", 2.5)
    assert parse_config_source({"ads": {}}, "x").kind == "ads"
    with pytest.raises(ConfigError, match=r"^x\.api_config_source\.grpc_services: api_type REST takes cluster_names"):
        parse_config_source({"api_config_source": {**grpc, "api_type": "REST"}}, "x")
    rest = parse_config_source({"api_config_source": {"api_type": "REST", "cluster_names": ["r"],
                                                      "refresh_delay": "0.5s"}}, "x")
    assert (rest.kind, rest.api.cluster_name, rest.api.refresh_delay, rest.api.request_timeout) == \
        ("rest", "r", 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"^x\.api_config_source\.refresh_delay: only for api_type REST"):
        parse_config_source({"api_config_source": {**grpc, "refresh_delay": "1s"}}, "x")
    with pytest.raises(ConfigError, match=r"^x\.api_config_source\.transport_api_version: V2 is not"):
        parse_config_source({"api_config_source": {**grpc, "transport_api_version": "V2"}}, "x")
    with pytest.raises(ConfigError, match=r"^x\.api_config_source\.api_type: .* must be of non-aggregated"):
        parse_config_source({"api_config_source": {**grpc, "api_type": "AGGREGATED_GRPC"}}, "x")
    with pytest.raises(ConfigError, match=r"^x\.api_config_source\.grpc_services\[0\]\.google_grpc: not supported"):
        parse_config_source({"api_config_source": {**grpc, "grpc_services": [
            {"google_grpc": {"target_uri": "a", "stat_prefix": "b"}}]}}, "x")
    with pytest.raises(ConfigError, match=r"^x\.self: not supported yet"):
        parse_config_source({"self": {}}, "x")
    with pytest.raises(ConfigError, match="V2 is not supported"):
        parse_config_source({"path": "/a", "resource_api_version": "V2"}, "x")


class Recorder:
    def __init__(self) -> None:
        self.updates = []
        self.refuse = False

    def on_update(self, resources, version_info):
        if self.refuse:
            raise ConfigError("resources[0].name", "refused")
        self.updates.append((resources, version_info))


def test_file_source_rereads_on_a_rename_only(tmp_path):
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump({"version_info": "1", "resources": []}))
    store = StatsRegistry().new_store("main")
    rec = Recorder()
    sub = FilesystemSubscription(ConfigSourceConfig(str(path)), CLUSTER_TYPE, rec,
                                 SubscriptionStats(store, "cds"), "cds")
    sub.start()
    assert [v for _, v in rec.updates] == ["1"]
    path.write_text(yaml.safe_dump({"version_info": "2", "resources": []}))  # in place
    sub.poll()
    assert [v for _, v in rec.updates] == ["1"]
    tmp = tmp_path / "new.yaml"
    tmp.write_text(yaml.safe_dump({"version_info": "3", "resources": []}))
    os.replace(tmp, path)
    sub.poll()
    sub.poll()  # nothing moved since: no second read
    assert [v for _, v in rec.updates] == ["1", "3"]
    rec.refuse = True
    tmp.write_text(yaml.safe_dump({"version_info": "4", "resources": []}))
    os.replace(tmp, path)
    sub.poll()
    tmp.write_text("resources: [")  # not YAML
    os.replace(tmp, path)
    sub.poll()
    c = {k: v.value for k, v in (("attempt", sub.stats.update_attempt), ("success", sub.stats.update_success),
                                 ("rejected", sub.stats.update_rejected), ("failure", sub.stats.update_failure))}
    assert c == {"attempt": 4, "success": 2, "rejected": 1, "failure": 1}
    assert sub.stats.version_info == "3"
