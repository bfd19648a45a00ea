"""The main thread's owner of every xDS subscription.

Job: make a subscription for a `ConfigSourceConfig` — a file (`FilesystemSubscription`, read
before `subscribe` returns), a gRPC stream (a `Watch` on the `GrpcMux` — or `DeltaGrpcMux` —
of the ADS stream or of the source's own per-type stream; answers arrive later, on the main
loop) or REST polling (`RestSubscription`) — behind the same `Subscription` seam; poll files on
the main thread's tick; stop them. `wait_initial` runs the main loop at start-up until every
gRPC and REST subscription has its first answer (or its initial_fetch_timeout passed, or its
stream failed), as Envoy's init manager holds start-up.
CDS, LDS, RDS and EDS appliers are wired by the server (proxy/server/instance.py) through
`subscribe`; `configure` gives it the node, the ADS config and the cluster hosts.

Thread affinity: main thread only; no lock (nothing else touches it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from proxy.config.config_source import ApiConfigSourceConfig, ConfigSourceConfig

from .eds import EdsApplier
from .file_source import FilesystemSubscription
from .subscription import ENDPOINT_TYPE, Subscription, SubscriptionCallbacks, SubscriptionStats

USER_AGENT_NAME = "ftproxy"
USER_AGENT_VERSION = (0, 1, 0)

__all__ = ["XdsManager"]

log = logging.getLogger("ftproxy.xds")


class _Handle:
    """What `subscribe` returns: stop() ends the subscription and forgets it."""

    __slots__ = ("manager", "subscription", "stats", "first_accepted")

    def __init__(self, manager: XdsManager, subscription: Subscription, stats: SubscriptionStats) -> None:
        self.manager = manager
        self.subscription = subscription
        self.stats = stats
        self.first_accepted = False

    def stop(self) -> None:
        self.subscription.stop()
        self.manager._subscriptions.discard(self.subscription)
        self.manager._rest.discard(self.subscription)


class _Inert:
    """A subscription that never delivers (its source cannot exist)."""

    def start(self) -> None: ...
    def poll(self) -> None: ...
    def stop(self) -> None: ...


class XdsManager:
    def __init__(self, store) -> None:
        self.store = store
        self._subscriptions: set[Subscription] = set()
        self._muxes: dict[tuple[str, str], Any] = {}   # (cluster, service path) -> GrpcMux
        self._rest: set = set()                         # REST subscriptions (their first poll)
        self._dispatcher = None
        self._node = None
        self._ads: ApiConfigSourceConfig | None = None
        self._hosts: Callable[[str], list] | None = None
        self._batch = None
        self._cluster = None

    def configure(self, dispatcher, node, ads: ApiConfigSourceConfig | None,
                  hosts: Callable[[str], list], batch: Callable[[], Any] | None = None,
                  cluster: Callable[[str], Any] | None = None) -> None:
        """What gRPC sources need: the main Dispatcher, the bootstrap's node, its ads_config,
        `hosts(cluster_name)` -> [(address, port)] of a static cluster, and `batch()`, a
        context manager held around one response's deliveries (the cluster manager's: one
        publish to the workers per response), and `cluster(cluster_name)`, the cluster's
        config (connect_timeout, HTTP/2 options)."""
        self._batch = batch
        self._cluster = cluster
        self._dispatcher = dispatcher
        self._node = node
        self._ads = ads
        self._hosts = hosts

    def _mux(self, source: ConfigSourceConfig, type_url: str):
        from . import grpc_delta_mux, grpc_mux   # protobuf is imported only for gRPC sources
        from .proto import node_message
        api = self._ads if source.kind == "ads" else source.api
        if api.delta:
            cls = grpc_delta_mux.DeltaGrpcMux
            path = (grpc_delta_mux.DELTA_ADS_PATH if source.kind == "ads"
                    else grpc_delta_mux.DELTA_TYPE_PATHS[type_url])
        else:
            cls = grpc_mux.GrpcMux
            path = grpc_mux.ADS_PATH if source.kind == "ads" else grpc_mux.TYPE_PATHS[type_url]
        key = (api, path)   # one stream per control-plane config and path (its metadata too)
        mux = self._muxes.get(key)
        if mux is None:
            if self._dispatcher is None or self._hosts is None:
                raise RuntimeError("XdsManager.configure() was not called before a gRPC source")
            cluster = api.cluster_name
            node = node_message(self._node, USER_AGENT_NAME, USER_AGENT_VERSION)
            mux = cls(self._dispatcher, cluster, path, lambda: self._hosts(cluster), node, self.store,
                      api.set_node_on_first_message_only,
                      **({"batch": self._batch} if self._batch is not None else {}),
                      cluster=self._cluster(cluster) if self._cluster is not None else None,
                      rate_limit=api.rate_limit, authority=api.authority,
                      metadata=api.initial_metadata)
            self._muxes[key] = mux
        return mux

    def subscribe(self, source: ConfigSourceConfig, type_url: str, callbacks: SubscriptionCallbacks,
                  stats_prefix: str, what: str, names: tuple[str, ...] = (),
                  on_first_failed: Callable[[], None] | None = None) -> _Handle:
        """Subscribe. A file is read before this returns; a gRPC source answers later (`names`:
        the resources asked for, empty for a wildcard; `on_first_failed` when its first answer
        is refused, times out or its stream fails)."""
        stats = SubscriptionStats(self.store, stats_prefix)
        if source.kind == "path":
            sub = FilesystemSubscription(source, type_url, callbacks, stats, what)
            self._subscriptions.add(sub)
            handle = _Handle(self, sub, stats)
            before = stats.update_success.value
            sub.start()
            handle.first_accepted = stats.update_success.value > before
            if not handle.first_accepted and on_first_failed is not None:
                on_first_failed()
            return handle
        if source.kind == "rest":
            from .rest_source import RestSubscription, node_json
            cluster = source.api.cluster_name
            rest = RestSubscription(source, type_url, callbacks, stats, what, self._dispatcher,
                                    lambda: self._hosts(cluster),
                                    node_json(self._node, USER_AGENT_NAME, USER_AGENT_VERSION),
                                    names, on_first_failed)
            self._subscriptions.add(rest)
            self._rest.add(rest)
            handle = _Handle(self, rest, stats)
            rest.start()
            return handle
        from .grpc_mux import Watch
        if source.kind == "ads" and self._ads is None:
            # A pushed resource naming `ads: {}` without an ADS stream (Envoy refuses that at
            # start for the bootstrap's own sources; dynamic_resources.py does too).
            log.error("%s: an ads source needs dynamic_resources.ads_config: nothing will come", what)
            sub = _Inert()
            if on_first_failed is not None:
                on_first_failed()
            return _Handle(self, sub, stats)
        watch = Watch(self._mux(source, type_url), type_url, names, callbacks, stats, what,
                      on_first_failed)
        self._subscriptions.add(watch)
        handle = _Handle(self, watch, stats)
        watch.start(source.initial_fetch_timeout)
        return handle

    def subscribe_eds(self, cluster, on_endpoints) -> _Handle:
        """ClusterManager's `eds_subscribe`: the cluster's ClusterLoadAssignment from its
        eds_config; a first fetch that fails or is rejected still ends the warming (no hosts)."""
        eds = cluster.eds
        applier = EdsApplier(cluster.name, eds.service_name, on_endpoints)
        return self.subscribe(eds.eds_config, ENDPOINT_TYPE, applier, f"cluster.{cluster.name}",
                              f"eds {cluster.name}", names=(eds.service_name,),
                              on_first_failed=applier.on_failed_first_fetch)

    def pending_first(self) -> bool:
        """Some gRPC or REST subscription still waits for its first answer."""
        return (any(m.pending_first() for m in self._muxes.values())
                or any(not r.first_done and not r.stopped for r in self._rest))

    def wait_initial(self, timeout: float | None = None) -> bool:
        """Start-up only (not from a callback): run the main loop until every gRPC
        subscription has its first answer; each watch's initial_fetch_timeout bounds it."""
        if (not self._muxes and not self._rest) or self._dispatcher is None:
            return True
        limit = 3600.0 if timeout is None else timeout
        t0 = time.monotonic()
        done = self._dispatcher.run_until(lambda: not self.pending_first(), limit)
        log.info("xds: initial fetch %s after %.3f s", "done" if done else "not complete",
                 time.monotonic() - t0)
        return done

    def poll(self) -> None:
        for sub in list(self._subscriptions):
            try:
                sub.poll()
            except Exception:  # a bug in an applier must not stop the main loop's tick
                log.exception("xds: polling %r failed", sub)

    def stop(self) -> None:
        for sub in list(self._subscriptions):
            sub.stop()
        self._subscriptions.clear()
        for mux in self._muxes.values():
            mux.stop()
        self._muxes.clear()
        self._rest.clear()
