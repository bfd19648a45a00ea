"""The main thread's owner of every xDS subscription.

Job: make a subscription for a `ConfigSourceConfig` (files only so far: `FilesystemSubscription`;
a later transport adds gRPC/REST here, behind the same `Subscription` seam), start it, poll
all of them on the main thread's tick, stop them. CDS, LDS, RDS and EDS appliers are wired by
the server (proxy/server/instance.py) through `subscribe`.

Thread affinity: main thread only; no lock (nothing else touches it).
"""

from __future__ import annotations

import logging

from proxy.config.config_source import ConfigSourceConfig

from .eds import EdsApplier
from .file_source import FilesystemSubscription
from .subscription import ENDPOINT_TYPE, Subscription, SubscriptionCallbacks, SubscriptionStats

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


class XdsManager:
    def __init__(self, store) -> None:
        self.store = store
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, source: ConfigSourceConfig, type_url: str, callbacks: SubscriptionCallbacks,
                  stats_prefix: str, what: str) -> _Handle:
        """Subscribe and fetch once now (a file is read before this returns)."""
        stats = SubscriptionStats(self.store, stats_prefix)
        sub = FilesystemSubscription(source, type_url, callbacks, stats, what)
        self._subscriptions.add(sub)
        handle = _Handle(self, sub, stats)
        before = stats.update_success.value
        sub.start()
        handle.first_accepted = stats.update_success.value > before
        return handle

    def subscribe_eds(self, cluster, on_endpoints) -> _Handle:
        """ClusterManager's `eds_subscribe`: the cluster's ClusterLoadAssignment from its
        eds_config; a first fetch that fails or is rejected still ends the warming (no hosts)."""
        eds = cluster.eds
        applier = EdsApplier(cluster.name, eds.service_name, on_endpoints)
        handle = self.subscribe(eds.eds_config, ENDPOINT_TYPE, applier, f"cluster.{cluster.name}",
                                f"eds {cluster.name}")
        if not handle.first_accepted:
            applier.on_failed_first_fetch()
        return handle

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
