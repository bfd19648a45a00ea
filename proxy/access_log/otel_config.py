"""Config of Envoy's OpenTelemetry access logger, `envoy.access_loggers.open_telemetry`
(`envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig`): OTLP log
records exported over gRPC (`opentelemetry.proto.collector.logs.v1.LogsService/Export`), with
`body` and `attributes` as format strings (every `string_value` in them is an access-log
format; as Envoy, only string values, key-value lists and arrays are allowed there) and
`resource_attributes` as given.

The transport is `common_config` (deprecated in Envoy 1.40, still honoured) or the top-level
`grpc_service` / `log_name` / `buffer_flush_interval` / `buffer_size_bytes`; exactly one
gRPC service, as Envoy insists. `OtelSinkConfig` is one exporter's parameters: loggers with
equal ones share it. `OtelAccessLogConfig.create(grpc_logs=...)` binds a logger to the
server's grpc_log.GrpcAccessLogService (runtime: otel_log.py).

Thread affinity: main thread; the objects are immutable and shared.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.grpc.protobuf_wire import length_delimited, string, varint
from proxy.config.reader import ConfigError, join
from proxy.config.registry import Extension, register

from .formatter import compile_format
from .grpc_config import (DEFAULT_BUFFER_SIZE_BYTES, DEFAULT_FLUSH_INTERVAL, _buffer_size,
                          _parse_common, _parse_grpc_service)

__all__ = ["OtelSinkConfig", "OtelAccessLogConfig", "OTEL_LOGGER", "OTEL_PROTO", "encode_any_value"]

OTEL_LOGGER = "envoy.access_loggers.open_telemetry"
OTEL_PROTO = "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"


@dataclass(frozen=True, slots=True)
class OtelSinkConfig:
    """One OTLP logs exporter's parameters (hashable: the service's key)."""

    log_name: str
    cluster_name: str
    authority: str = ""
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES
    disable_builtin_labels: bool = False
    resource_attributes: bytes = b""     # KeyValue fields (Resource.attributes), encoded
    stat_prefix: str = ""


@dataclass(frozen=True, slots=True)
class OtelAccessLogConfig:
    logger: str
    stream: OtelSinkConfig
    body: Any = None                 # compiled AnyValue template (otel_log.py renders it)
    attributes: tuple = ()           # ((key, template), ...)
    log_filter: Any = None

    def create(self, sinks: Any = None, grpc_logs: Any = None):
        if grpc_logs is None:
            raise RuntimeError(f"{self.logger}: an OpenTelemetry access logger needs the "
                               "server's GrpcAccessLogService")
        return grpc_logs.logger(self)


OTEL = Message(OTEL_PROTO, title="OpenTelemetry access log", model=OtelAccessLogConfig,
               bookkeeping=("logger",), fields=(
    used("common_config", attr="stream", why="deprecated in Envoy 1.40, still honoured"),
    used("grpc_service", attr="stream"),
    used("log_name", attr="stream"),
    used("buffer_flush_interval", attr="stream"),
    used("buffer_size_bytes", attr="stream"),
    used("disable_builtin_labels", False, attr="stream"),
    used("resource_attributes", attr="stream"),
    used("body"),
    used("attributes"),
    used("stat_prefix", "", attr="stream"),
    refused("http_service", "OTLP over gRPC only"),
    refused("formatters", "formatter extensions"),
    refused("filter_state_objects_to_log", "filter state is not logged"),
    refused("custom_tags", "no custom tags in log records"),
    refused("resource_detectors", "only the built-in labels and resource_attributes"),
))

_ANY_KINDS = ("string_value", "bool_value", "int_value", "double_value", "array_value",
              "kvlist_value", "bytes_value")


def _only(raw: Any, path: str) -> tuple[str, Any]:
    """The one set member of an AnyValue object."""
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "expected an AnyValue object")
    unknown = [k for k in raw if k not in _ANY_KINDS]
    if unknown:
        raise ConfigError(join(path, unknown[0]), f"unknown AnyValue member (one of {', '.join(_ANY_KINDS)})")
    set_ = [k for k in raw if raw[k] is not None]
    if len(set_) != 1:
        raise ConfigError(path, f"exactly one of {', '.join(_ANY_KINDS)} is required")
    return set_[0], raw[set_[0]]


def _values(raw: Any, path: str, key: str) -> list[tuple[Any, str]]:
    if not isinstance(raw, Mapping) or set(raw) - {key}:
        raise ConfigError(path, f"expected an object with `{key}`")
    items = raw.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(join(path, key), "expected a list")
    return [(v, f"{join(path, key)}[{i}]") for i, v in enumerate(items)]


def _key_value(raw: Any, path: str) -> tuple[str, Any, str]:
    if not isinstance(raw, Mapping) or set(raw) - {"key", "value"}:
        raise ConfigError(path, "expected a KeyValue {key, value}")
    key = raw.get("key")
    if not isinstance(key, str):
        raise ConfigError(join(path, "key"), "expected a string")
    return key, raw.get("value") or {}, join(path, "value")


def compile_template(raw: Any, path: str) -> tuple:
    """An AnyValue whose strings are format strings: ("s", formatter) | ("kv", ((key, node),
    ...)) | ("arr", (node, ...)). Other kinds are refused, as Envoy refuses them."""
    kind, value = _only(raw, path)
    at = join(path, kind)
    if kind == "string_value":
        if not isinstance(value, str):
            raise ConfigError(at, "expected a string")
        return ("s", compile_format(value, at))
    if kind == "kvlist_value":
        out = []
        for item, ipath in _values(value, at, "values"):
            key, v, vpath = _key_value(item, ipath)
            out.append((key, compile_template(v, vpath)))
        return ("kv", tuple(out))
    if kind == "array_value":
        return ("arr", tuple(compile_template(v, p) for v, p in _values(value, at, "values")))
    raise ConfigError(at, "only string values, key-value lists and arrays are supported in "
                          "OpenTelemetry access log formats (as Envoy)")


def encode_any_value(raw: Any, path: str) -> bytes:
    """A literal AnyValue (resource attributes), encoded."""
    kind, value = _only(raw, path)
    at = join(path, kind)
    if kind == "string_value":
        return length_delimited(1, str(value).encode("utf-8", "replace"))
    if kind == "bool_value":
        return b"\x10" + (b"\x01" if value in (True, "true") else b"\x00")
    if kind == "int_value":
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise ConfigError(at, "expected an integer") from None
        return b"\x18" + varint(n & 0xFFFFFFFFFFFFFFFF)
    if kind == "double_value":
        try:
            return b"\x21" + struct.pack("<d", float(value))
        except (TypeError, ValueError):
            raise ConfigError(at, "expected a number") from None
    if kind == "bytes_value":
        try:
            return length_delimited(7, base64.b64decode(str(value), validate=True))
        except (binascii.Error, ValueError):
            raise ConfigError(at, "expected base64") from None
    if kind == "array_value":
        return length_delimited(5, b"".join(length_delimited(1, encode_any_value(v, p))
                                            for v, p in _values(value, at, "values")))
    return length_delimited(6, encode_key_values(value, at))


def encode_key_values(raw: Any, path: str) -> bytes:
    """A KeyValueList's `values` as repeated field-1 KeyValues (literal values)."""
    out = []
    for item, ipath in _values(raw, path, "values"):
        key, v, vpath = _key_value(item, ipath)
        out.append(length_delimited(1, string(1, key) + length_delimited(2, encode_any_value(v, vpath))))
    return b"".join(out)


def _parse(raw: Mapping[str, Any], path: str) -> OtelAccessLogConfig:
    f = OTEL.read(raw, path, extra=("@type",))
    common_service = f.has("common_config") and isinstance(f.raw_obj("common_config"), Mapping) \
        and f.raw_obj("common_config").get("grpc_service") is not None
    if int(common_service) + int(f.has("grpc_service")) != 1:
        raise ConfigError(f.path, "exactly one transport is required: grpc_service or "
                                  "common_config.grpc_service (http_service: not supported yet)")
    if f.has("common_config") and not common_service:
        raise ConfigError(f.at("common_config"), "with a top-level grpc_service, set log_name "
                                                 "and buffer_* at the top level too")
    if common_service:
        c = _parse_common(f.raw_obj("common_config"), f.at("common_config"), "otel")
        log_name, cluster, authority, metadata = c.log_name, c.cluster_name, c.authority, c.initial_metadata
        interval, size = c.flush_interval, c.buffer_size_bytes
    else:
        cluster, authority, metadata = _parse_grpc_service(f.raw_obj("grpc_service"), f.at("grpc_service"))
        log_name = f.str("log_name", "") or ""
        interval = f.duration("buffer_flush_interval", DEFAULT_FLUSH_INTERVAL)
        if interval <= 0:
            raise ConfigError(f.at("buffer_flush_interval"), "must be greater than 0")
        size = _buffer_size(f)
    resource = (encode_key_values(f.raw_obj("resource_attributes"), f.at("resource_attributes"))
                if f.has("resource_attributes") else b"")
    sink = OtelSinkConfig(log_name, cluster, authority, metadata, interval, size,
                          f.bool("disable_builtin_labels", False), resource,
                          f.str("stat_prefix", "") or "")
    body = compile_template(f.value("body"), f.at("body")) if f.has("body") else None
    attributes = ()
    if f.has("attributes"):
        attributes = tuple((key, compile_template(v, vpath)) for key, v, vpath in (
            _key_value(item, ipath)
            for item, ipath in _values(f.raw_obj("attributes"), f.at("attributes"), "values")))
    return OtelAccessLogConfig(OTEL_LOGGER, sink, body, attributes)


register(Extension("access_logger", OTEL_LOGGER, OTEL_PROTO, _parse))
