"""Config model of `config.core.v3.ConfigSource` for LDS, CDS, RDS and EDS (xDS sources).

Job: validate where a dynamic resource comes from into an immutable `ConfigSourceConfig`:
a file (`path_config_source`: `path`, `watched_directory`; or the older `path` string), the
aggregated stream (`ads: {}`, which needs the bootstrap's `dynamic_resources.ads_config`), or
a per-type gRPC stream (`api_config_source` with `api_type: GRPC`). Both gRPC forms name one
static cluster through `grpc_services[0].envoy_grpc.cluster_name` (`ApiConfigSourceConfig`).
`api_type` GRPC is state of the world, DELTA_GRPC incremental, REST JSON polling
(`cluster_names`, `refresh_delay`, `request_timeout`); gRPC ones may pace their requests
(`rate_limit_settings`). `self` and `authorities` are refused by
their path ("not supported yet").
SDS keeps its own table (proxy/tls/secrets.py), which names the same message for secrets.

Must not: do I/O (files are read by proxy/xds/file_source.py, streams run by
proxy/xds/grpc_mux.py). Thread affinity: main thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.grpc_metadata import parse_initial_metadata
from proxy.config.reader import ConfigError

__all__ = ["ConfigSourceConfig", "ApiConfigSourceConfig", "parse_config_source",
           "parse_api_config_source", "CONFIG_SOURCE", "PATH_CONFIG_SOURCE", "API_CONFIG_SOURCE"]

_NOT_YET = "not supported yet (files, ads and api_config_source GRPC are)"


@dataclass(frozen=True, slots=True)
class ApiConfigSourceConfig:
    """A gRPC control plane (`api_config_source` GRPC or DELTA_GRPC, or the bootstrap's
    `ads_config`): a state-of-the-world (or, `delta`, incremental) stream to the static cluster
    `cluster_name` (HTTP/2, h2c)."""
    cluster_name: str
    set_node_on_first_message_only: bool = False
    delta: bool = False                   # DELTA_GRPC: incremental xDS
    rest: bool = False                    # REST: JSON DiscoveryRequests polled over HTTP/1.1
    refresh_delay: float = 1.0            # REST: between two polls
    request_timeout: float = 1.0          # REST: for one poll's answer
    # rate_limit_settings: (max_tokens, fill_rate per second) of the token bucket that paces
    # the stream's outgoing discovery requests; None: not limited.
    rate_limit: tuple[int, float] | None = None
    authority: str = ""                   # gRPC: the stream's :authority ("": the cluster's name)
    initial_metadata: tuple[tuple[bytes, bytes], ...] = ()   # gRPC: request headers added


@dataclass(frozen=True, slots=True)
class ConfigSourceConfig:
    """Where one resource type comes from. `kind` "path": `path` is re-read when a file is
    moved onto it (or, with `watched_directory`, when a file is moved into that directory);
    "ads": the bootstrap's ads_config stream; "grpc": its own stream to `api.cluster_name`.
    `initial_fetch_timeout` (seconds, 0 = none) bounds the wait for a stream's first answer."""
    path: str = ""
    watched_directory: str | None = None
    kind: str = "path"
    api: ApiConfigSourceConfig | None = None
    initial_fetch_timeout: float = 15.0


CONFIG_SOURCE = Message("envoy.config.core.v3.ConfigSource", title="Dynamic configuration",
                        model=ConfigSourceConfig, fields=(
    used("path_config_source", attr="", why="its own table"),
    used("path", attr="path", why="deprecated spelling of path_config_source.path"),
    used("resource_api_version", attr="", why="only V3 (or AUTO)"),
    used("initial_fetch_timeout", why="how long start-up waits for a gRPC source's first answer "
                                      "(a file is read at once)"),
    used("api_config_source", attr="api", why="api_type GRPC: its own table"),
    used("ads", attr="kind", why="the bootstrap's ads_config stream (AggregatedConfigSource, no fields)"),
    refused("self", "the ADS stream the resource came over: " + _NOT_YET),
    refused("authorities", "xdstp:// authorities: " + _NOT_YET),
))

API_CONFIG_SOURCE = Message("envoy.config.core.v3.ApiConfigSource", fields=(
    used("api_type", attr="delta", why="GRPC (state of the world), DELTA_GRPC (incremental) or "
                                        "REST (JSON polling)"),
    used("transport_api_version", attr="", why="V3 (AUTO means V3)"),
    used("grpc_services", attr="cluster_name", why="one envoy_grpc service: its cluster_name"),
    used("set_node_on_first_message_only", why="the node goes only in a stream's first request"),
    used("cluster_names", attr="cluster_name", why="REST: the one cluster polled"),
    used("refresh_delay", why="REST: between two polls"),
    used("request_timeout", why="REST: for one poll's answer"),
    used("rate_limit_settings", attr="rate_limit", why="gRPC: a token bucket on the stream's "
                                                       "outgoing discovery requests"),
    refused("config_validators", _NOT_YET),
))

GRPC_SERVICE = Message("envoy.config.core.v3.GrpcService (xDS)", fields=(
    used("envoy_grpc", attr="cluster_name", why="the static cluster the stream goes to"),
    refused("google_grpc", "the Google C++ gRPC client: ftproxy speaks gRPC over its own HTTP/2 "
                           "client (use envoy_grpc)"),
    refused("timeout", "a deadline for a streaming xDS call: " + _NOT_YET),
    used("initial_metadata", attr="initial_metadata", why="request headers of the xDS stream "
                                                          "(e.g. a control plane's credentials)"),
    refused("retry_policy", _NOT_YET),
))

RATE_LIMIT_SETTINGS = Message("envoy.config.core.v3.RateLimitSettings", fields=(
    used("max_tokens", attr="", why="the bucket's size (default 100)"),
    used("fill_rate", attr="", why="tokens per second (default 10)"),
))

ENVOY_GRPC = Message("envoy.config.core.v3.GrpcService.EnvoyGrpc (xDS)", fields=(
    used("cluster_name", why="a static cluster (HTTP/2) defined in the bootstrap"),
    used("authority", attr="authority", why="the stream's :authority (default: the cluster's name)"),
    refused("retry_policy", _NOT_YET),
    refused("max_receive_message_length", _NOT_YET),
    refused("skip_envoy_headers", _NOT_YET),
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


def parse_api_config_source(raw: Any, path: str, aggregated: bool) -> ApiConfigSourceConfig:
    """An ApiConfigSource at `path` (`aggregated`: the bootstrap's ads_config): `api_type`
    GRPC or DELTA_GRPC (Envoy refuses the AGGREGATED_* types in both places), V3 or AUTO
    (which means V3 now), one envoy_grpc service."""
    a = API_CONFIG_SOURCE.read(raw, path)
    types = ("DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", "REST", "GRPC", "DELTA_GRPC",
             "AGGREGATED_GRPC", "AGGREGATED_DELTA_GRPC")
    api_type = a.enum("api_type", types, "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE")
    if api_type in ("AGGREGATED_GRPC", "AGGREGATED_DELTA_GRPC"):
        # Envoy 1.40 refuses them in both places (ads_config says GRPC or DELTA_GRPC).
        raise ConfigError(a.at("api_type"), "envoy.config.core.v3.ApiConfigSource type must be of "
                                            "non-aggregated gRPC")
    if api_type == "REST" and aggregated:
        raise ConfigError(a.at("api_type"), "ads_config must be GRPC or DELTA_GRPC (ADS is a gRPC stream)")
    if api_type not in ("GRPC", "DELTA_GRPC", "REST"):
        raise ConfigError(a.at("api_type"), f"must be GRPC, DELTA_GRPC or REST, got {api_type}")
    version = a.enum("transport_api_version", ("AUTO", "V2", "V3"), "AUTO")
    if version == "V2":
        raise ConfigError(a.at("transport_api_version"), "V2 is not supported (Envoy removed it)")
    if api_type == "REST":
        return _rest(a)
    for rest_only in ("cluster_names", "refresh_delay", "request_timeout"):
        if a.has(rest_only):
            raise ConfigError(a.at(rest_only), f"only for api_type REST, not {api_type}")
    services = a.list("grpc_services", required=True, min_items=1)
    if len(services) != 1:
        raise ConfigError(a.at("grpc_services"), f"exactly one gRPC service is supported, got {len(services)}")
    raw_service, spath = services[0]
    g = GRPC_SERVICE.read(raw_service, spath)
    e = ENVOY_GRPC.read(g.value("envoy_grpc", required=True), g.at("envoy_grpc"))
    cluster = e.str("cluster_name", required=True)
    if not cluster:
        raise ConfigError(e.at("cluster_name"), "must not be empty")
    rate_limit = None
    if a.has("rate_limit_settings"):
        r = RATE_LIMIT_SETTINGS.read(a.value("rate_limit_settings"), a.at("rate_limit_settings"))
        tokens = r.int("max_tokens", 100, min=0, max=2**32 - 1)
        fill = r.float("fill_rate", 10.0)
        if not fill > 0 or fill == float("inf"):   # PGV: gt 0; Envoy refuses NaN and Inf
            raise ConfigError(r.at("fill_rate"), f"must be a finite number greater than 0, got {fill}")
        rate_limit = (tokens, fill)
    return ApiConfigSourceConfig(cluster, bool(a.bool("set_node_on_first_message_only", False)),
                                 delta=api_type == "DELTA_GRPC", rate_limit=rate_limit,
                                 authority=e.str("authority", "") or "",
                                 initial_metadata=parse_initial_metadata(g))


def _rest(a) -> ApiConfigSourceConfig:
    """REST-JSON polling: one of `cluster_names`, `refresh_delay` (1 s), `request_timeout` (1 s)."""
    if a.has("grpc_services"):
        raise ConfigError(a.at("grpc_services"), "api_type REST takes cluster_names, not grpc_services")
    if a.has("rate_limit_settings"):
        raise ConfigError(a.at("rate_limit_settings"), "only for gRPC api types: REST polls every "
                                                       "refresh_delay")
    names = a.strs("cluster_names", required=True, min_items=1)
    if len(names) != 1:
        raise ConfigError(a.at("cluster_names"), f"exactly one cluster is supported, got {len(names)}")
    if not names[0]:
        raise ConfigError(a.at("cluster_names") + "[0]", "must not be empty")
    refresh = a.duration("refresh_delay", 1.0)
    timeout = a.duration("request_timeout", 1.0)
    if refresh <= 0:
        raise ConfigError(a.at("refresh_delay"), "must be greater than 0")
    return ApiConfigSourceConfig(names[0], rest=True, refresh_delay=refresh,
                                 request_timeout=timeout if timeout > 0 else 1.0)


def parse_config_source(raw: Any, path: str) -> ConfigSourceConfig:
    """A ConfigSource at `path`: a file, `ads: {}` or a GRPC api_config_source; refuses every
    other source, naming the field."""
    s = CONFIG_SOURCE.read(raw, path)
    version = s.enum("resource_api_version", ("AUTO", "V2", "V3"), "AUTO")
    if version == "V2":
        raise ConfigError(s.at("resource_api_version"), "V2 is not supported (Envoy removed it)")
    fetch_timeout = s.duration("initial_fetch_timeout", 15.0)
    which = s.oneof("path_config_source", "path", "ads", "api_config_source")
    if which is None:
        raise ConfigError(path, "a config source is required: path_config_source, ads or "
                                "api_config_source")
    if which == "ads":
        if not isinstance(s.value("ads"), dict) or s.value("ads"):
            raise ConfigError(s.at("ads"), "must be an empty object (ads: {})")
        return ConfigSourceConfig(kind="ads", initial_fetch_timeout=fetch_timeout)
    if which == "api_config_source":
        api = parse_api_config_source(s.value("api_config_source"), s.at("api_config_source"), False)
        return ConfigSourceConfig(kind="rest" if api.rest else "grpc", api=api,
                                  initial_fetch_timeout=fetch_timeout)
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
    return ConfigSourceConfig(file_path, watched, initial_fetch_timeout=fetch_timeout)
