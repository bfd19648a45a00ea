"""The subscription seam: how a source of dynamic resources hands them to the code applying them.

A source (a watched file, or a gRPC stream: proxy/xds/grpc_mux.py; REST later) fetches
DiscoveryResponse-shaped updates for one type URL and calls `SubscriptionCallbacks.on_update`
with the resources as plain dicts (the `@type` key removed) and the response's `version_info`.
The callbacks validate them with the SAME validators as the static bootstrap (proxy/config/)
and apply them; a bad update raises `ConfigError` naming the field path, which the source
reports upstream (a NACK's error_detail for gRPC; a log line for files) and counts as
`update_rejected`. The callbacks keep the last good config of whatever they refuse: as Envoy,
LDS and CDS still apply the good listeners or clusters of a rejected update, RDS and EDS apply
nothing of it.

Thread affinity: main thread only — sources are polled from the main Dispatcher's tick and
call back on it; the callbacks post immutable snapshots to workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from proxy.config.reader import ConfigError, Fields, index

from ..upstream.hashing_lb import xxhash64 as xxh64  # Envoy: HashUtil::xxHash64(version_info)

__all__ = ["Subscription", "SubscriptionCallbacks", "SubscriptionStats", "decode_response",
           "LISTENER_TYPE", "CLUSTER_TYPE", "ROUTE_TYPE", "ENDPOINT_TYPE", "SECRET_TYPE"]

_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"


class SubscriptionCallbacks(Protocol):
    """Implemented by what applies one resource type (CDS, LDS, RDS, EDS). Main thread."""

    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        """The whole current set (state of the world): each resource with the path that names
        it in error messages. Raises ConfigError (or ConfigErrors) to reject the update."""


class Subscription(Protocol):
    """One source of one resource type. Main thread."""

    def start(self) -> None:
        """First fetch (a file: read at once, so the subscriber is warm when this returns)."""

    def poll(self) -> None:
        """Called on the main thread's tick: fetch again if the source says there is news."""

    def stop(self) -> None:
        """No more updates are delivered."""


class SubscriptionStats:
    """Envoy's SubscriptionStats under `<prefix>.`: update_attempt, update_success,
    update_rejected, update_failure, init_fetch_timeout (counters), version (xxHash64 of
    version_info) and update_time (ms since the epoch of the last accepted update) gauges."""

    __slots__ = ("update_attempt", "update_success", "update_rejected", "update_failure",
                 "init_fetch_timeout", "version", "update_time", "version_info")

    def __init__(self, store, prefix: str) -> None:
        for name in ("update_attempt", "update_success", "update_rejected", "update_failure",
                     "init_fetch_timeout"):
            setattr(self, name, store.counter(f"{prefix}.{name}"))
        self.version = store.gauge(f"{prefix}.version")
        self.update_time = store.gauge(f"{prefix}.update_time")
        self.version_info = ""

    def accepted(self, version_info: str, clock: Callable[[], float] = time.time) -> None:
        self.update_success.inc()
        self.version_info = version_info
        self.version.set(xxh64(version_info.encode()))
        self.update_time.set(int(clock() * 1000))


def decode_response(doc: Any, type_url: str, where: str) -> tuple[list[tuple[dict, str]], str]:
    """A DiscoveryResponse as plain data (a file's YAML/JSON) -> ([(resource, its path)],
    version_info). Every resource must carry `@type` equal to `type_url` (Envoy's check);
    the `@type` key is removed before the resource goes to the validators."""
    f = Fields(doc if doc is not None else {}, where,
               ("version_info", "resources", "type_url", "nonce", "canary", "control_plane",
                "resource_errors"))
    version = f.str("version_info", "")
    out: list[tuple[dict, str]] = []
    for item, path in f.list("resources"):
        if not isinstance(item, Mapping):
            raise ConfigError(path, f"expected an object, got {type(item).__name__}")
        got = item.get("@type")
        if got != type_url:
            raise ConfigError(index(f.at("resources"), len(out)) + ".@type",
                              f"resource type {got!r} does not match the subscription's {type_url!r}")
        out.append(({k: v for k, v in item.items() if k != "@type"}, path))
    return out, version
