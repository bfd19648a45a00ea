"""Secrets by name (Envoy's SDS, without a control plane): `static_resources.secrets`, and
file-based SDS (`sds_config` with a `path_config_source`, or the older `path`).

Parse time: `parse_bootstrap` opens a `SecretScope` (`secret_scope(...)`) holding the static
secrets' raw messages and the node; while it is open, a TLS context's
`tls_certificate_sds_secret_configs` / `validation_context_sds_secret_config` /
`combined_validation_context` resolve through `resolve()` to the raw `Secret` message
(`tls_certificate` or `validation_context`) that config.py then validates as if it had been
written inline, plus a `SecretSource` saying where it came from. A file-based source is read
at once (its first version must be valid: Envoy would wait for it, ftproxy refuses to start
without it, naming the field).

An xDS source (`sds_config: {ads: {}}` or an `api_config_source` GRPC/DELTA_GRPC) resolves to
no message: the context holds a placeholder (None) for that secret, the factory using it is
not ready (handshakes fail, Envoy's "secrets not ready") and a listener using it warms, until
the secret arrives from the stream (proxy/xds/sds.py).

Run time: the main thread's `SecretWatcher` (watcher.py) re-reads a file source when the file
at its path is replaced (rename onto it, or a symlink swap of its directory, as Kubernetes
does; an in-place write is ignored, as Envoy ignores it) and hands the new value to the
transport socket factories that use it.
Must not: touch sockets.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.config.config_source import parse_config_source
from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, Fields, join

__all__ = ["SecretSource", "SecretScope", "secret_scope", "resolve", "read_sds_file", "SECRET_TYPE",
           "merge_validation"]

SECRET_TYPE = "envoy.extensions.transport_sockets.tls.v3.Secret"
_XDS = "not supported yet for secrets (files, ads and api_config_source GRPC/DELTA_GRPC are)"

SECRET = Message(SECRET_TYPE, title="Secrets", fields=(
    used("name", attr="", why="what SdsSecretConfig.name refers to"),
    used("tls_certificate", attr="", why="its own table (TlsCertificate)"),
    used("validation_context", attr="", why="its own table (CertificateValidationContext)"),
    refused("session_ticket_keys", "session_ticket_keys are refused"),
    refused("generic_secret", "no filter here reads generic secrets"),
))

SDS_SECRET_CONFIG = Message("envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig", fields=(
    used("name", attr="", why="the secret's name"),
    used("sds_config", attr="", why="absent: a static secret; a file: watched"),
))

CONFIG_SOURCE = Message("envoy.config.core.v3.ConfigSource (SDS)", fields=(
    used("path_config_source", attr="", why="a file holding the secret, watched"),
    used("path", attr="", why="deprecated spelling of path_config_source.path"),
    used("resource_api_version", attr="", why="only V3"),
    used("initial_fetch_timeout", attr="", why="xDS: how long a listener warms for the secret "
                                               "(a file source is read at once)"),
    used("api_config_source", attr="", why="xDS: api_type GRPC or DELTA_GRPC (proxy/xds/sds.py)"),
    used("ads", attr="", why="xDS: the bootstrap's ads_config stream (proxy/xds/sds.py)"),
    refused("self", _XDS),
    refused("authorities", _XDS),
))

PATH_CONFIG_SOURCE = Message("envoy.config.core.v3.PathConfigSource", fields=(
    used("path", attr="", why="replaced by a rename or a symlink swap, as Envoy watches it"),
    refused("watched_directory", "the file's own replacement is watched"),
))


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a TLS context's certificate or validation context came from."""
    name: str
    kind: str                          # "tls_certificate" or "validation_context"
    path: str | None = None            # file SDS; None: static_resources.secrets or xDS
    # xDS SDS (`ads: {}` or an api_config_source): the ConfigSourceConfig it is fetched from;
    # its value arrives later (proxy/xds/sds.py), the TLS context waits for it.
    config_source: Any = None
    # combined_validation_context: the default context the secret is merged into.
    default: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(slots=True)
class SecretScope:
    """What TLS configs may refer to while a bootstrap is parsed."""
    static: dict[str, tuple[Mapping[str, Any], str]]   # name -> (Secret message, its path)
    node_id: str = ""
    node_cluster: str = ""


_SCOPE: contextvars.ContextVar[SecretScope | None] = contextvars.ContextVar("ftproxy_secret_scope",
                                                                           default=None)


@contextmanager
def secret_scope(scope: SecretScope) -> Iterator[SecretScope]:
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def parse_static_secrets(items: list[tuple[Any, str]]) -> dict[str, tuple[Mapping[str, Any], str]]:
    """`static_resources.secrets`: name -> (message, path); checked for shape and duplicates
    here, their content when a TLS context uses them (and, unused, by `check_unused`)."""
    out: dict[str, tuple[Mapping[str, Any], str]] = {}
    for item, path in items:
        s = SECRET.read(item, path)
        name = s.str("name", required=True)
        if not name:
            raise ConfigError(s.at("name"), "must not be empty")
        if name in out:
            raise ConfigError(s.at("name"), f'duplicate secret name "{name}" (also at {out[name][1]})')
        s.oneof("tls_certificate", "validation_context", required=True)
        out[name] = (item, path)
    return out


def resolve(raw: Any, path: str, kind: str) -> tuple[Mapping[str, Any] | None, str, SecretSource]:
    """An `SdsSecretConfig` at `path` -> (the secret's `kind` message, its path, source); an
    xDS source has no message yet: (None, path, source) — its value comes from the stream."""
    c = SDS_SECRET_CONFIG.read(raw, path)
    name = c.str("name", required=True)
    if not name:
        raise ConfigError(c.at("name"), "must not be empty")
    if not c.has("sds_config"):
        scope = _SCOPE.get()
        secret = scope.static.get(name) if scope is not None else None
        if secret is None:
            what = "Unknown static secret" if kind == "tls_certificate" else \
                "Unknown static certificate validation context"
            raise ConfigError(c.at("name"), f"{what}: {name}")
        message, spath = secret
        if message.get(kind) is None:
            raise ConfigError(c.at("name"), f'secret "{name}" (at {spath}) holds no {kind}')
        return message[kind], join(spath, kind), SecretSource(name, kind)
    xds = _xds_source(c.value("sds_config"), c.at("sds_config"))
    if xds is not None:
        return None, c.at("sds_config"), SecretSource(name, kind, config_source=xds)
    file_path = _file_source(c.value("sds_config"), c.at("sds_config"))
    message, mpath = read_sds_file(file_path, name, kind, c.at("sds_config"))
    return message, mpath, SecretSource(name, kind, file_path)


def _xds_source(raw: Any, path: str):
    """The ConfigSourceConfig of an `ads: {}` or `api_config_source` (GRPC, DELTA_GRPC) secret
    source, validated by the same table as every other xDS source; None for a file."""
    if not isinstance(raw, Mapping) or not ("ads" in raw or "api_config_source" in raw):
        return None
    CONFIG_SOURCE.read(raw, path)   # refuses the fields this table refuses, by path
    source = parse_config_source(raw, path)
    if source.kind == "rest":
        raise ConfigError(join(path, "api_config_source.api_type"),
                          "REST is not supported for secrets yet (GRPC and DELTA_GRPC are)")
    return source


def _file_source(raw: Any, path: str) -> str:
    s = CONFIG_SOURCE.read(raw, path)
    version = s.enum("resource_api_version", ("AUTO", "V2", "V3"), "AUTO")
    if version == "V2":
        raise ConfigError(s.at("resource_api_version"), "V2 is not supported (Envoy removed it)")
    s.duration("initial_fetch_timeout")
    which = s.oneof("path_config_source", "path")
    if which is None:
        raise ConfigError(path, "not supported yet (only a file: path_config_source; dynamic secrets "
                                "from a control plane come with xDS)")
    scope = _SCOPE.get()
    if scope is not None and not (scope.node_id and scope.node_cluster):
        # Envoy: a file-based SDS subscription needs the node's id and cluster.
        raise ConfigError(path, "a file-based sds_config needs node.id and node.cluster in the bootstrap")
    if which == "path":
        file_path = s.str("path")
    else:
        p = PATH_CONFIG_SOURCE.read(s.value("path_config_source"), s.at("path_config_source"))
        file_path = p.str("path", required=True)
    if not file_path:
        raise ConfigError(path, "the secret file path must not be empty")
    return file_path


def read_sds_file(file_path: str, name: str, kind: str, where: str) -> tuple[Mapping[str, Any], str]:
    """The `kind` message of secret `name` in an SDS file (a DiscoveryResponse in YAML or
    JSON: `resources: [{"@type": ...Secret, name, tls_certificate | validation_context}]`)."""
    try:
        with open(file_path, "rb") as fh:
            doc = yaml.safe_load(fh.read())
    except OSError as e:
        raise ConfigError(where, f"cannot read the secret file {file_path!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(where, f"the secret file {file_path!r} is not YAML/JSON: {e}") from None
    base = f"{file_path}"
    f = Fields(doc, base, ("resources", "version_info", "type_url", "nonce", "control_plane", "canary"))
    found = None
    for item, ipath in f.list("resources"):
        r = Fields(item, ipath, ("@type", *SECRET.names))
        url = r.str("@type", "")
        if url and url.rsplit("/", 1)[-1] != SECRET_TYPE:
            raise ConfigError(join(ipath, "@type"), f'expected "{SECRET_TYPE}", got "{url}"')
        if r.str("name", "") == name:
            found = ({k: v for k, v in item.items() if k != "@type"}, ipath)
    if found is None:
        raise ConfigError(where, f'the secret file {file_path!r} has no secret named "{name}"')
    message, mpath = found
    SECRET.read(message, mpath)
    if message.get(kind) is None:
        raise ConfigError(mpath, f'secret "{name}" holds no {kind}')
    return message[kind], join(mpath, kind)


def merge_validation(default: Mapping[str, Any], dynamic: Mapping[str, Any]) -> dict[str, Any]:
    """combined_validation_context: the dynamic context merged into the default one as
    protobuf's MergeFrom does (set scalars replace, repeated fields append, messages merge)."""
    out = copy.deepcopy(dict(default))
    for key, value in dynamic.items():
        have = out.get(key)
        if isinstance(value, list) and isinstance(have, list):
            out[key] = have + copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(have, Mapping):
            out[key] = merge_validation(have, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
