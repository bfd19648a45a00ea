"""Config model of the Datadog tracer (`envoy.tracers.datadog`, envoy.config.trace.v3.DatadogConfig):
spans sent as msgpack to a Datadog agent's `/v0.4/traces` through `collector_cluster`, as
Envoy 1.40's tracer (dd-trace-cpp 2.1) sends them.

Built: `collector_cluster` (required, checked at load as Envoy's checkCluster does),
`service_name` (every span's service; required and non-empty, as Envoy's proto validation
says), `collector_hostname` (the report's Host, default: the cluster's name). Refused by name:
`remote_config` (the agent's remote configuration polling).

Must not: do I/O. Thread affinity: parsed on main; immutable, shared by every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.fields_table import Message, refused, used
from ..config.reader import ConfigError
from ..config.registry import Extension, register

__all__ = ["DatadogConfig", "DATADOG_NAME", "parse_datadog"]

DATADOG_NAME = "envoy.tracers.datadog"
DATADOG_PROTO = "envoy.config.trace.v3.DatadogConfig"


@dataclass(frozen=True, slots=True)
class DatadogConfig:
    collector_cluster: str
    service_name: str
    collector_hostname: str = ""          # the report's Host ("" : the cluster's name)


DATADOG = Message(DATADOG_PROTO, title="Datadog tracer", model=DatadogConfig, fields=(
    used("collector_cluster"),
    used("service_name"),
    used("collector_hostname", ""),
    refused("remote_config", "remote configuration (polling the agent for sampling rules): "
            "the agent's rate_by_service answer is honoured, nothing more"),
))


def parse_datadog(raw: Mapping[str, Any], path: str) -> DatadogConfig:
    f = DATADOG.read(raw, path, extra=("@type",))
    cluster = f.str("collector_cluster", "") or ""
    if not cluster:
        raise ConfigError(f.at("collector_cluster"), "is required (a non-empty cluster name)")
    service = f.str("service_name", "") or ""
    if not service:
        raise ConfigError(f.at("service_name"), "is required (non-empty, as Envoy's "
                          "DatadogConfig validation says)")
    return DatadogConfig(collector_cluster=cluster, service_name=service,
                         collector_hostname=f.str("collector_hostname", "") or "")


register(Extension(category="tracer", name=DATADOG_NAME, proto=DATADOG_PROTO, parse=parse_datadog))
