"""Config model of `config.core.v3.ConfigSource` for LDS, CDS, RDS and EDS (xDS sources).

Job: validate where a dynamic resource comes from into an immutable `ConfigSourceConfig`.
Only files are supported so far: `path_config_source` (`path`, `watched_directory`) or the
older `path` string. A control plane (`api_config_source`, `ads`, `self`, `authorities`) is
refused by its path ("not supported yet"): the gRPC/REST transports come later and plug into
the same subscription seam (proxy/xds/subscription.py). SDS keeps its own table
(proxy/tls/secrets.py), which names the same message for secrets.

Must not: do I/O (the file is read by proxy/xds/file_source.py). Thread affinity: main thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, inert, refused, used
from proxy.config.reader import ConfigError

__all__ = ["ConfigSourceConfig", "parse_config_source", "CONFIG_SOURCE", "PATH_CONFIG_SOURCE"]

_CONTROL_PLANE = "a control plane: only file sources (path_config_source) so far"


@dataclass(frozen=True, slots=True)
class ConfigSourceConfig:
    """A file source: `path` is re-read when a file is moved onto it (or, with
    `watched_directory`, when a file is moved into that directory)."""
    path: str
    watched_directory: str | None = None


CONFIG_SOURCE = Message("envoy.config.core.v3.ConfigSource", title="Dynamic configuration",
                        model=ConfigSourceConfig, fields=(
    used("path_config_source", attr="", why="its own table"),
    used("path", attr="path", why="deprecated spelling of path_config_source.path"),
    used("resource_api_version", attr="", why="only V3 (or AUTO)"),
    inert("initial_fetch_timeout", "a file source is read at once, when subscribed: nothing "
                                   "waits for a fetch"),
    refused("api_config_source", _CONTROL_PLANE),
    refused("ads", _CONTROL_PLANE),
    refused("self", _CONTROL_PLANE),
    refused("authorities", _CONTROL_PLANE),
))

PATH_CONFIG_SOURCE = Message("envoy.config.core.v3.PathConfigSource (LDS, CDS, RDS, EDS)", fields=(
    used("path", attr="path", why="re-read when a file is moved onto it (rename, symlink swap); "
                                  "in-place writes are ignored, as Envoy ignores them"),
    used("watched_directory", attr="watched_directory",
         why="its `path`: re-read when a file is moved into the directory"),
))

WATCHED_DIRECTORY = Message("envoy.config.core.v3.WatchedDirectory", fields=(
    used("path", attr="", why="the directory watched"),
))


def parse_config_source(raw: Any, path: str) -> ConfigSourceConfig:
    """A ConfigSource at `path`; refuses every source but a file, naming the field."""
    s = CONFIG_SOURCE.read(raw, path)
    version = s.enum("resource_api_version", ("AUTO", "V2", "V3"), "AUTO")
    if version == "V2":
        raise ConfigError(s.at("resource_api_version"), "V2 is not supported (Envoy removed it)")
    s.duration("initial_fetch_timeout")
    which = s.oneof("path_config_source", "path")
    if which is None:
        raise ConfigError(path, "a config source is required: path_config_source (a control "
                                "plane, api_config_source or ads, is not supported yet)")
    if which == "path":
        file_path = s.str("path")
        watched = None
    else:
        p = PATH_CONFIG_SOURCE.read(s.value("path_config_source"), s.at("path_config_source"))
        file_path = p.str("path", required=True)
        watched = None
        if p.has("watched_directory"):
            w = WATCHED_DIRECTORY.read(p.value("watched_directory"), p.at("watched_directory"))
            watched = w.str("path", required=True)
            if not watched:
                raise ConfigError(w.at("path"), "must not be empty")
    if not file_path:
        raise ConfigError(path, "the config file path must not be empty")
    return ConfigSourceConfig(file_path, watched)
