"""Access logging: Envoy's format strings / dictionaries, and file, stdout and stderr loggers.

Public names: `StreamInfo` (filled per request by the connection manager or tcp_proxy),
`compile_format` / `compile_json_format`, `FileSink` / `StreamSink` / `SinkRegistry`, and
`parse_access_logs` / `AccessLogConfig.create()` / `AccessLogger.log()`. Importing this
package registers the three loggers in `proxy.config.registry` (category "access_logger").
"""

from .config import (AccessLogConfig, AccessLogger, LogFormat, default_log_format,
                     parse_access_logs, parse_log_format)
from .formatter import (DEFAULT_FORMAT, JsonFormatter, TextFormatter, compile_format,
                        compile_json_format)
from .sinks import DEFAULT_SINKS, BufferedSink, FileSink, SinkRegistry, StreamSink
from .stream_info import StreamInfo

__all__ = [
    "AccessLogConfig", "AccessLogger", "LogFormat", "default_log_format", "parse_access_logs",
    "parse_log_format", "DEFAULT_FORMAT", "JsonFormatter", "TextFormatter", "compile_format",
    "compile_json_format", "DEFAULT_SINKS", "BufferedSink", "FileSink", "SinkRegistry",
    "StreamSink", "StreamInfo",
]
