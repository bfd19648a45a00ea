"""`envoy.config.core.v3.DataSource`: the one reader of its bytes for every place that takes
one (TLS material, Lua scripts, direct response bodies, access log formats).

Each place declares its own table (a `Message` titled "envoy.config.core.v3.DataSource (<where>)")
saying which sources it honours and which it refuses (e.g. `watched_directory`); `read` refuses
those with the table's reason before any is read. Files and environment variables are read at
load, so an error names the field: `cannot read 'x.pem': No such file or directory`.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from .fields_table import Message
from .reader import ConfigError

__all__ = ["read_data_source", "SOURCES"]

SOURCES = ("filename", "inline_bytes", "inline_string", "environment_variable")


def read_data_source(table: Message, raw: Any, path: str, max_bytes: int | None = None) -> bytes:
    """The DataSource's bytes at `path`, read through `table`. `max_bytes`: a file is read up
    to one byte past it, so a caller can refuse an oversized one without reading it whole."""
    d = table.read(raw, path)
    kind = d.oneof(*SOURCES, required=True)
    value = d.str(kind)
    where = d.at(kind)
    if kind == "inline_string":
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" in a JSON file
            raise ConfigError(where, "not valid Unicode text") from None
    if kind == "inline_bytes":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(where, "not valid base64") from None
    if kind == "environment_variable":
        env = os.environ.get(value)
        if env is None:
            raise ConfigError(where, f"environment variable {value!r} is not set")
        return env.encode()
    try:
        with open(value, "rb") as fh:
            return fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except ValueError as e:  # an embedded NUL in the file name
        raise ConfigError(where, f"invalid file name: {e}") from None
    except OSError as e:
        raise ConfigError(where, f"cannot read {value!r}: {e.strerror or e}") from None
