"""Config parsing and registration of Envoy's file / stdout / stderr access loggers.

Job: validate `envoy.extensions.access_loggers.file.v3.FileAccessLog`,
`...stream.v3.StdoutAccessLog` and `...stream.v3.StderrAccessLog` (including the
`log_format` SubstitutionFormatString and the deprecated `format` / `json_format` /
`typed_json_format` fields) into frozen `AccessLogConfig` objects whose format strings are
already compiled, and register the three extensions in `proxy.config.registry` (category
"access_logger"). `parse_access_logs` resolves a list of `access_log` entries (HCM,
tcp_proxy, listener, admin). `AccessLogConfig.create()` acquires the shared sink and
returns an `AccessLogger` whose `log(info)` formats and buffers one line.

Thread affinity: parsing and registration run on the main thread (config load / xDS);
configs are immutable and may be shared; an AccessLogger may be called from any worker
(its formatter is immutable and its sink is thread-safe). Must not: open files while
parsing (only `create()` touches the file system).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import ConfigError, join
from proxy.config.registry import Extension, register, resolve

from .filters import parse_log_filter
from .formatter import (DEFAULT_FORMAT, JsonFormatter, TextFormatter, compile_format,
                        compile_json_format)
from .sinks import DEFAULT_SINKS, BufferedSink, SinkRegistry
from .stream_info import StreamInfo

__all__ = ["LogFormat", "AccessLogConfig", "AccessLogger", "parse_log_format",
           "parse_access_logs", "default_log_format", "FILE_LOGGER", "STDOUT_LOGGER",
           "STDERR_LOGGER"]

FILE_LOGGER = "envoy.access_loggers.file"
STDOUT_LOGGER = "envoy.access_loggers.stdout"
STDERR_LOGGER = "envoy.access_loggers.stderr"



@dataclass(frozen=True, slots=True)
class LogFormat:
    """A compiled SubstitutionFormatString. `source` is the format text, or the format
    dictionary as canonical JSON (for equality between config versions)."""

    kind: str                       # "text" or "json"
    source: str
    omit_empty_values: bool = False
    content_type: str | None = None
    formatter: TextFormatter | JsonFormatter = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def format(self, info: StreamInfo) -> str:
        return self.formatter.format(info)


# -- declared fields (proxy.config.fields_table) -----------------------------------------

SUBSTITUTION_FORMAT = Message("envoy.config.core.v3.SubstitutionFormatString", title="Access log formats",
                              model=LogFormat, bookkeeping=("kind", "source", "omit_empty_values"),
                              fields=(
    used("text_format", attr="formatter"),
    used("json_format", attr="formatter"),
    used("text_format_source", attr="formatter"),
    used("omit_empty_values", False, attr="formatter"),
    used("json_format_options", attr="formatter"),
    inert("content_type", "Envoy uses it for local reply bodies, not access logs",
          attr="content_type"),
    refused("formatters", "formatter extensions"),
))

JSON_FORMAT_OPTIONS = Message("envoy.config.core.v3.JsonFormatOptions", fields=(
    used("sort_properties", False, attr="formatter"),
))

FORMAT_DATA_SOURCE = Message("envoy.config.core.v3.DataSource (access log format)", fields=(
    used("inline_string", attr="formatter"),
    used("inline_bytes", attr="formatter"),
    refused("filename", "use inline_string"),
    refused("environment_variable", "use inline_string"),
    refused("watched_directory", "use inline_string"),
))


def default_log_format() -> LogFormat:
    return LogFormat("text", DEFAULT_FORMAT, formatter=compile_format(DEFAULT_FORMAT, ""))


def _text_format(text: str, path: str, omit: bool = False,
                 content_type: str | None = None) -> LogFormat:
    return LogFormat("text", text, omit, content_type,
                     compile_format(text, path, omit_empty_values=omit))


def _json_format(mapping: Any, path: str, omit: bool = False, content_type: str | None = None,
                 sort_properties: bool = False) -> LogFormat:
    fmt = compile_json_format(mapping, path, omit, sort_properties=sort_properties)
    source = json.dumps(mapping, sort_keys=sort_properties, separators=(",", ":"))
    return LogFormat("json", source, omit, content_type, fmt)


def _data_source_text(raw: Any, path: str) -> str:
    f = FORMAT_DATA_SOURCE.read(raw, path)
    which = f.oneof("inline_string", "inline_bytes", required=True)
    if which == "inline_string":
        return f.str("inline_string")
    try:  # inline_bytes
        return base64.b64decode(f.str("inline_bytes"), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input; UnicodeDecodeError
        raise ConfigError(f.at("inline_bytes"), f"invalid base64 UTF-8 text: {e}") from None


def parse_log_format(raw: Any, path: str) -> LogFormat:
    """An `envoy.config.core.v3.SubstitutionFormatString` at `path`."""
    f = SUBSTITUTION_FORMAT.read(raw, path)
    omit = f.bool("omit_empty_values", False)
    content_type = f.str("content_type")
    sort = False
    opts = (JSON_FORMAT_OPTIONS.read(f.value("json_format_options"), f.at("json_format_options"))
            if f.has("json_format_options") else None)
    if opts is not None:
        sort = opts.bool("sort_properties", False)
    which = f.oneof("text_format", "json_format", "text_format_source", required=True)
    if which == "json_format":
        return _json_format(f.raw_obj("json_format"), f.at("json_format"), omit, content_type, sort)
    if opts is not None:
        raise ConfigError(f.at("json_format_options"), "only applies to json_format")
    if which == "text_format":
        return _text_format(f.str("text_format"), f.at("text_format"), omit, content_type)
    tpath = f.at("text_format_source")
    text = _data_source_text(f.value("text_format_source"), tpath)
    return _text_format(text, join(tpath, "inline_string"), omit, content_type)


class AccessLogger:
    """One configured logger bound to its (shared) sink. `log` may be called from any worker."""

    __slots__ = ("config", "_format", "_sink", "_registry")

    def __init__(self, config: AccessLogConfig, sink: BufferedSink, registry: SinkRegistry) -> None:
        self.config = config
        self._format = config.log_format.formatter.format
        self._sink = sink
        self._registry = registry

    def log(self, info: StreamInfo) -> None:
        log_filter = self.config.log_filter
        if log_filter is not None and not log_filter.passes(info):
            return
        self._sink.write(self._format(info))

    def for_worker(self, worker) -> AccessLogger:
        """The logger a worker logs through: this one (its sink is thread-safe); a gRPC
        logger gives each worker its own (grpc_log.py)."""
        return self

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        """Release the sink (closed when its last logger is closed). Idempotent."""
        sink, self._sink = self._sink, _CLOSED_SINK
        if sink is not _CLOSED_SINK:
            self._registry.release(sink)

    def __repr__(self) -> str:
        return f"AccessLogger({self.config.logger}, {self.config.target})"


class _ClosedSink:
    def write(self, line: str) -> None:
        pass

    def flush(self) -> None:
        pass


_CLOSED_SINK: Any = _ClosedSink()


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """A parsed access logger. `target` is the file path, or "stdout" / "stderr"."""

    logger: str                     # Envoy extension name
    target: str
    log_format: LogFormat
    log_filter: Any = None          # filters.LogFilter: only requests it passes are logged

    def create(self, sinks: SinkRegistry | None = None, grpc_logs: Any = None) -> AccessLogger:
        """Acquire the shared sink (opening the file the first time) and return a logger.
        OSError from opening the file propagates (the caller reports it with the config path).
        (`grpc_logs`: the server's gRPC access-log service, for gRPC loggers' `create`.)"""
        registry = DEFAULT_SINKS if sinks is None else sinks
        if self.logger == FILE_LOGGER:
            sink = registry.acquire_file(self.target)
        else:
            sink = registry.acquire_stream(self.target)
        return AccessLogger(self, sink, registry)


# -- typed_config parsers -----------------------------------------------------------------------
_LEGACY_FORMATS = ("format", "json_format", "typed_json_format", "log_format")

FILE_ACCESS_LOG = Message("envoy.extensions.access_loggers.file.v3.FileAccessLog",
                          title="File access log", model=AccessLogConfig,
                          bookkeeping=("logger",), fields=(
    used("path", attr="target"),
    used("log_format"),
    used("format", attr="log_format", why="deprecated spelling"),
    used("json_format", attr="log_format", why="deprecated spelling"),
    used("typed_json_format", attr="log_format", why="deprecated spelling"),
))

STREAM_ACCESS_LOG = Message("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                            title="stdout / stderr access log", fields=(
    used("log_format"),
))

ACCESS_LOG = Message("envoy.config.accesslog.v3.AccessLog", fields=(
    used("name", attr="logger"),
    used("typed_config", attr="", why="the logger's own table"),
    used("filter", attr="log_filter"),
))


def _parse_file(raw: Mapping[str, Any], path: str) -> AccessLogConfig:
    f = FILE_ACCESS_LOG.read(raw, path)
    file_path = f.str("path", required=True)
    if not file_path:
        raise ConfigError(f.at("path"), "must not be empty")
    which = f.oneof(*_LEGACY_FORMATS)
    if which == "log_format":
        fmt = parse_log_format(f.value("log_format"), f.at("log_format"))
    elif which == "format":
        text = f.str("format")
        fmt = _text_format(text, f.at("format")) if text else default_log_format()
    elif which in ("json_format", "typed_json_format"):
        fmt = _json_format(f.raw_obj(which), f.at(which))
    else:
        fmt = default_log_format()
    return AccessLogConfig(FILE_LOGGER, file_path, fmt)


def _stream_parser(logger: str, target: str):
    def parse(raw: Mapping[str, Any], path: str) -> AccessLogConfig:
        f = STREAM_ACCESS_LOG.read(raw, path)
        if f.has("log_format"):
            fmt = parse_log_format(f.value("log_format"), f.at("log_format"))
        else:
            fmt = default_log_format()
        return AccessLogConfig(logger, target, fmt)
    return parse


register(Extension("access_logger", FILE_LOGGER,
                   "envoy.extensions.access_loggers.file.v3.FileAccessLog", _parse_file,
                   aliases=("envoy.file_access_log",)))
register(Extension("access_logger", STDOUT_LOGGER,
                   "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                   _stream_parser(STDOUT_LOGGER, "stdout"), empty_config_ok=True))
register(Extension("access_logger", STDERR_LOGGER,
                   "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                   _stream_parser(STDERR_LOGGER, "stderr"), empty_config_ok=True))


def parse_access_logs(items: list[tuple[Any, str]]) -> tuple[AccessLogConfig, ...]:
    """`access_log: [{name, typed_config, filter}]` items as (value, path) pairs
    (what `Fields.list("access_log")` returns)."""
    out = []
    for item, path in items:
        a = ACCESS_LOG.read(item, path)
        log_filter = parse_log_filter(a.value("filter"), a.at("filter")) if a.has("filter") else None
        _ext, config = resolve("access_logger", {k: v for k, v in item.items() if k != "filter"}, path)
        out.append(dataclasses.replace(config, log_filter=log_filter) if log_filter else config)
    return tuple(out)
