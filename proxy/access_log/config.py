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
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.reader import ConfigError, Fields, join
from proxy.config.registry import Extension, register, resolve

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

_SUBSTITUTION_FIELDS = ("text_format", "json_format", "text_format_source", "omit_empty_values",
                        "content_type", "formatters", "json_format_options")
_DATA_SOURCE_FIELDS = ("inline_string", "inline_bytes", "filename", "environment_variable",
                       "watched_directory")


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
    f = Fields(raw, path, _DATA_SOURCE_FIELDS)
    which = f.oneof("inline_string", "inline_bytes", "filename", "environment_variable",
                    required=True)
    if which == "inline_string":
        return f.str("inline_string")
    if which == "inline_bytes":
        try:
            return base64.b64decode(f.str("inline_bytes"), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input; UnicodeDecodeError
            raise ConfigError(f.at("inline_bytes"), f"invalid base64 UTF-8 text: {e}") from None
    raise ConfigError(f.at(which), "not supported yet for access log formats (use inline_string)")


def parse_log_format(raw: Any, path: str) -> LogFormat:
    """An `envoy.config.core.v3.SubstitutionFormatString` at `path`."""
    f = Fields(raw, path, _SUBSTITUTION_FIELDS)
    if f.has("formatters") and f.list("formatters"):
        raise ConfigError(f.at("formatters"), "formatter extensions are not supported yet")
    omit = f.bool("omit_empty_values", False)
    content_type = f.str("content_type")
    sort = False
    opts = f.obj("json_format_options", ("sort_properties",))
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
        self._sink.write(self._format(info))

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

    def create(self, sinks: SinkRegistry | None = None) -> AccessLogger:
        """Acquire the shared sink (opening the file the first time) and return a logger.
        OSError from opening the file propagates (the caller reports it with the config path)."""
        registry = DEFAULT_SINKS if sinks is None else sinks
        if self.logger == FILE_LOGGER:
            sink = registry.acquire_file(self.target)
        else:
            sink = registry.acquire_stream(self.target)
        return AccessLogger(self, sink, registry)


# -- typed_config parsers -----------------------------------------------------------------------
_LEGACY_FORMATS = ("format", "json_format", "typed_json_format", "log_format")


def _parse_file(raw: Mapping[str, Any], path: str) -> AccessLogConfig:
    f = Fields(raw, path, ("path", *_LEGACY_FORMATS))
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
        f = Fields(raw, path, ("log_format",))
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
        _ext, config = resolve("access_logger", item, path, extra_fields=("filter",))
        if item.get("filter") is not None:
            raise ConfigError(join(path, "filter"), "access log filters are not supported yet")
        out.append(config)
    return tuple(out)
