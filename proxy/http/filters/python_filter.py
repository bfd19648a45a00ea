"""`ftproxy.filters.http.python`: an HTTP filter written in Python, against the interface the
built-in filters use (proxy/http/filter.py), named in the config by module and class.

Config (`@type: type.googleapis.com/ftproxy.extensions.filters.http.python.v1.PythonFilter`):
- `module`: the module to import (dotted), `class`: the filter class in it;
- `path` (optional): a directory put first on the import path for it (relative paths from the
  working directory ftproxy starts in), so a filter can live beside its config;
- `config` (optional, any JSON/YAML value, default `{}`): handed to the class.

The class (see examples/python_filters/):
- `parse_config(config)` (optional static/class method): called once at load on the main
  thread; returns what every stream's filter gets (make it immutable: workers share it). An
  exception it raises is a config error at `<path>.config`;
- `__init__(self, callbacks, config)`: one filter per stream, on its worker;
- `decode_headers/decode_data/decode_trailers`, `encode_headers/encode_data/encode_trailers`,
  `on_destroy`, returning the statuses of proxy/http/filter.py. Subclass
  `proxy.http.filter.PassThroughFilter` and override what it needs: the filter takes part in
  the request (response) side only when it overrides a decode_* (encode_*) method.
The callbacks are the stream's (FilterCallbacks): `send_local_reply`, `continue_decoding`,
`continue_encoding`, `http_call` (a whole request to a cluster, answered later on the same
worker), `route`, `per_filter_config`, the buffers, `dispatcher` (timers).

An exception a filter raises is the stream's, not the worker's: the stream ends (with 500,
details `python_filter_error`, if it raised on the request side; reset if on the response
side), `http.<prefix>.python_filter.errors` counts it, the worker serves on (logged once per
filter, method and exception type).
No per-route config (refused by the registry: there is no per-route proto).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config.fields_table import Message, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ..filter import FilterHeadersStatus, PassThroughFilter

__all__ = ["PythonFilterConfig", "parse_python_filter"]

log = logging.getLogger("ftproxy.python_filter")

NAME = "ftproxy.filters.http.python"
PROTO = "ftproxy.extensions.filters.http.python.v1.PythonFilter"
_DECODE = ("decode_headers", "decode_data", "decode_trailers")
_ENCODE = ("encode_headers", "encode_data", "encode_trailers")


@dataclass(frozen=True, slots=True)
class PythonFilterConfig:
    module: str
    cls: type
    config: Any = None
    path: str = ""


PYTHON_FILTER = Message(PROTO, title="HTTP filter python (ftproxy)", model=PythonFilterConfig,
                        bookkeeping=("module", "path"), fields=(
    used("module", attr="cls", why="imported at load"),
    used("class", attr="cls"),
    used("path", attr="cls", why="where the module is imported from"),
    used("config", why="parsed by the class's parse_config"),
))


def _overrides(cls: type, names: tuple[str, ...]) -> bool:
    return any(getattr(cls, n, None) is not getattr(PassThroughFilter, n) for n in names)


def parse_python_filter(raw: Mapping[str, Any], path: str) -> PythonFilterConfig:
    f = PYTHON_FILTER.read(raw, path)
    module_name = f.str("module", required=True)
    class_name = f.str("class", required=True)
    where = f.str("path", "") or ""
    if where:
        try:
            directory = str(Path(where).resolve())
            is_dir = Path(directory).is_dir()
        except (OSError, ValueError) as e:
            raise ConfigError(f.at("path"), f"not a usable directory: {e}") from None
        if not is_dir:
            raise ConfigError(f.at("path"), f"not a directory: {where!r}")
        if directory not in sys.path:
            sys.path.insert(0, directory)  # main thread, at load: before any worker runs
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module's own error at import
        raise ConfigError(f.at("module"), f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f.at("class"), f"module {module_name!r} has no class {class_name!r}")
    for name in ("decode_headers", "decode_data", "decode_trailers", "encode_headers",
                 "encode_data", "encode_trailers", "on_destroy"):
        if not callable(getattr(cls, name, None)):
            raise ConfigError(f.at("class"), f"{class_name} has no {name}(); subclass "
                              "proxy.http.filter.PassThroughFilter")
    config = f.raw.get("config", {})
    parse = getattr(cls, "parse_config", None)
    if parse is not None:
        try:
            config = parse(config)
        except Exception as e:  # whatever the user's code raises about its config
            raise ConfigError(f.at("config"), f"{class_name}.parse_config: {type(e).__name__}: {e}") from None
    return PythonFilterConfig(module_name, cls, config, where)


class PythonFilterFactory:
    def __init__(self, config: PythonFilterConfig, name: str) -> None:
        self.config = config
        self.name = name

    def for_worker(self, ctx) -> WorkerPythonFilter:
        return WorkerPythonFilter(self, ctx)


class WorkerPythonFilter:
    def __init__(self, factory: PythonFilterFactory, ctx) -> None:
        cfg = factory.config
        self.name = factory.name
        self.cls = cfg.cls
        self.user_config = cfg.config
        self.decoder = _overrides(cfg.cls, _DECODE)
        self.encoder = _overrides(cfg.cls, _ENCODE)
        self.errors = ctx.worker.stats.counter(f"http.{ctx.config.stat_prefix}.python_filter.errors")
        self.logged: set[str] = set()

    def create(self, callbacks) -> Guarded:
        return Guarded(self, callbacks)


class Guarded:
    """The user's filter behind a guard: an exception in it ends its stream with 500, never
    the worker. (One frame per call: the price of running code we did not write.)"""

    __slots__ = ("wf", "cb", "inner")

    def __init__(self, wf: WorkerPythonFilter, callbacks) -> None:
        self.wf = wf
        self.cb = callbacks
        self.inner = None
        try:
            self.inner = wf.cls(callbacks, wf.user_config)
        except Exception as e:
            self._failed("__init__", e)

    def _failed(self, where: str, e: Exception) -> int:
        wf = self.wf
        wf.errors.value += 1
        key = f"{where}:{type(e).__name__}"
        if key not in wf.logged:
            wf.logged.add(key)
            log.error("python filter %s.%s raised in %s: %r (its stream ends)",
                      wf.cls.__module__, wf.cls.__qualname__, where, e, exc_info=e)
        self.inner = None
        if where.startswith("encode"):
            self.cb.reset("python_filter_error")  # mid-response: the stream is reset
        else:
            self.cb.send_local_reply(500, b"", None, "python_filter_error")
        return FilterHeadersStatus.STOP_ITERATION

    def _call(self, name: str, *args) -> int:
        inner = self.inner
        if inner is None:
            return 0  # (it failed: its stream is ending; let our own reply through)
        try:
            return getattr(inner, name)(*args)
        except Exception as e:
            return self._failed(name, e)

    def decode_headers(self, head, end_stream: bool) -> int:
        return self._call("decode_headers", head, end_stream)

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        return self._call("decode_data", data, end_stream)

    def decode_trailers(self, trailers) -> int:
        return self._call("decode_trailers", trailers)

    def encode_headers(self, head, end_stream: bool) -> int:
        return self._call("encode_headers", head, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        return self._call("encode_data", data, end_stream)

    def encode_trailers(self, trailers) -> int:
        return self._call("encode_trailers", trailers)

    def on_destroy(self) -> None:
        inner = self.inner
        if inner is not None:
            try:
                inner.on_destroy()
            except Exception as e:  # the stream is over: log and count only
                self.wf.errors.value += 1
                log.error("python filter %s raised in on_destroy: %r", self.wf.cls.__qualname__, e)


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_python_filter,
    factory=PythonFilterFactory,
))
