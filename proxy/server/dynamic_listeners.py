"""LDS listeners at run time: bound on the main thread, handed to the workers by `post()`.

Added: its sockets are bound (a bind failure rejects that listener, naming its address) and
each worker gets its ActiveListener. Modified (a different config): on the same address the
listen sockets are kept and each worker swaps its ActiveListener in one posted call (stop the
old, start the new: no accept queue is dropped); on a new address new sockets are bound and
the old ones closed. Connections the old listener accepted keep their old filter chains and
drain over the drain time (Envoy's listener drain, --drain-time-s and --drain-strategy: each
starts draining — `connection: close`, HTTP/2 GOAWAY — at a moment drawn uniformly over its
first 90%, or at once with `immediate`; those still open at its end are closed). When only the filter
chains changed (Envoy's in-place filter chain update), only the connections of the chains
that changed or went drain (listener_in_place_updated, total_filter_chains_draining).
Removed: the workers stop accepting on it, its sockets close, its connections drain the same
way (total_listeners_draining).

Warming (Envoy's listener warming): a listener whose HTTP connection managers take their routes
from a control plane (RDS over gRPC) that has not answered yet, or whose TLS contexts name a
secret from a control plane (SDS over xDS, proxy/xds/sds.py) that has not come yet, is bound (not listening:
connections are refused, as Envoy's) but not handed to the workers: it waits in `warming` — a listener it replaces keeps serving meanwhile — until every
such route or secret subscription has had its first answer (or it failed, or its initial_fetch_timeout
passed), checked every 10 ms on the main loop. A newer update of a warming listener replaces it;
removing it drops it. File-sourced routes are read when subscribed: nothing to wait for.

Stats (main store, Envoy's): listener_manager.listener_added, listener_modified,
listener_removed, listener_in_place_updated, total_listeners_active, total_listeners_warming,
total_listeners_draining, total_filter_chains_draining.
Thread affinity: main thread only (implements proxy/xds/lds.py `ListenerTarget`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..config.bootstrap import overlaps
from ..config.listener import address_string
from ..config.reader import ConfigError, join
from ..network.listener import BACKLOG

__all__ = ["DynamicListeners", "LdsListener", "listener_transports"]

log = logging.getLogger("ftproxy.lds")


def kept_chains(old, new) -> frozenset | None:
    """Envoy's in-place filter chain update: when two versions of a listener differ only in
    their filter chains, the indexes of `old`'s chains that `new` still has unchanged (their
    connections need not drain); None when anything else differs (a full replacement)."""
    if old.raw is None or new.raw is None:
        return None
    chains = ("filter_chains", "default_filter_chain")
    if {k: v for k, v in old.raw.items() if k not in chains} != \
            {k: v for k, v in new.raw.items() if k not in chains}:
        return None
    if old.raw.get("default_filter_chain") != new.raw.get("default_filter_chain"):
        return frozenset()   # the default chain changed: every chain's connections drain
    new_chains = new.raw.get("filter_chains") or []
    return frozenset(i for i, chain in enumerate(old.raw.get("filter_chains") or []) if chain in new_chains)


def listener_transports(lc) -> list:
    """The transport socket factories of a listener's filter chains (default chain included)."""
    chains = list(lc.filter_chains)
    default = getattr(lc, "default_filter_chain", None)
    if default is not None and default not in chains:
        chains.append(default)
    return [fc.transport_socket for fc in chains]


@dataclass(frozen=True, slots=True)
class LdsListener:
    config: Any               # ListenerConfig
    sockets: tuple            # its listen sockets (owned by main; workers register them)
    version_info: str
    last_updated: float


@dataclass(slots=True)
class _Warming:
    entry: LdsListener
    same_socket: bool         # shares the listen sockets of the listener it replaces
    cold: list                # route subscriptions (Watch) still waiting for a first answer


class DynamicListeners:
    def __init__(self, server) -> None:
        self.server = server
        self.entries: dict[str, LdsListener] = server.lds_listeners
        self.warming: dict[str, _Warming] = server.lds_warming
        self._static = {lc.name for lc in server.bootstrap.listeners}
        self._stats = server.main_store
        self._timer = None
        self._refresh_gauge()

    # -- ListenerTarget ------------------------------------------------------------------------
    def is_static(self, name: str) -> bool:
        return name in self._static

    def dynamic_names(self) -> set[str]:
        return set(self.entries) | set(self.warming)

    def cluster_names(self) -> set[str]:
        cm = self.server.cluster_manager
        return set(cm.states()) if cm is not None else set()

    def cluster_configs(self) -> list:
        cm = self.server.cluster_manager
        return [state.config for state in cm.states().values()] if cm is not None else []

    def add_or_update(self, lc, version_info: str, path: str) -> None:
        old = self.entries.get(lc.name)
        pending = self.warming.get(lc.name)
        if pending is not None:
            if pending.entry.config.raw == lc.raw:
                return   # the same listener is already warming
            self._drop_warming(lc.name)
        elif old is not None and old.config.raw == lc.raw:
            return  # the same listener: nothing to do (Envoy compares the config's hash)
        self._check_address(lc, path)
        same_socket = old is not None and (old.config.address, old.config.port, old.config.enable_reuse_port) \
            == (lc.address, lc.port, lc.enable_reuse_port)
        if same_socket:
            socks = list(old.sockets)
        else:
            try:
                # After a hot restart, the previous epoch's sockets for this address if it has them.
                socks = self.server._take_or_bind(lc, listen=False)   # listen() when active
            except OSError as e:
                raise ConfigError(join(path, "address"), str(e)) from None
        factory = self.server.listener_factory(lc)
        entry = LdsListener(lc, tuple(socks), version_info, time.time())
        self._stats.counter("listener_manager.listener_modified" if old is not None or pending is not None
                            else "listener_manager.listener_added").inc()
        watcher = self.server.secret_watcher
        if watcher is not None:
            watcher.track(listener_transports(lc))
        cold = self._cold_routes(lc) + (watcher.cold(listener_transports(lc)) if watcher is not None else [])
        if cold:
            self.warming[lc.name] = _Warming(entry, same_socket, cold)
            self._refresh_gauge()
            log.info("lds: listener %s warming until its routes and secrets arrive", lc.name)
            self._arm()
            return
        self._activate(entry, factory, same_socket)

    def remove(self, name: str) -> None:
        if name in self.warming:
            self._drop_warming(name)
            self._refresh_gauge()
            if name not in self.entries:
                self._stats.counter("listener_manager.listener_removed").inc()
                return
        old = self.entries.pop(name)
        self.server.listen_sockets.pop(name, None)
        self.server.listener_addresses.pop(name, None)
        self._stats.counter("listener_manager.listener_removed").inc()
        self._refresh_gauge()
        log.info("lds: listener %s removed", name)
        self._stop_on_workers(old, close_sockets=True)

    # -- internals -------------------------------------------------------------------------------
    def _activate(self, entry: LdsListener, factory, same_socket: bool) -> None:
        lc, socks = entry.config, list(entry.sockets)
        for sock in socks:   # bound when added; accepting from now (again: harmless)
            sock.listen(lc.tcp_backlog_size or BACKLOG)
        old = self.entries.get(lc.name)
        # Bookkeeping first: what the workers then do is already counted when it shows.
        self.entries[lc.name] = entry
        self.server.listen_sockets[lc.name] = socks
        self.server.listener_addresses[lc.name] = socks[0].getsockname()[:2]
        self._refresh_gauge()
        log.info("lds: listener %s %s on %s", lc.name, "modified" if old is not None else "added",
                 address_string(*socks[0].getsockname()[:2]))
        if old is not None:
            keep = kept_chains(old.config, lc) if same_socket else None
            if keep is not None:
                # Envoy's in-place filter chain update: only the connections of the chains
                # that changed or went drain; the others carry on.
                self._stats.counter("listener_manager.listener_in_place_updated").inc()
            self._stop_on_workers(old, close_sockets=not same_socket, keep_chains=keep or frozenset(),
                                  in_place=keep is not None)
        self.server._post_listener(lc, socks, factory)

    def _cold_routes(self, lc) -> list:
        """The route subscriptions of `lc`'s HTTP connection managers still waiting for their
        first answer (gRPC sources only: a file is read when subscribed)."""
        cold = []
        for chain in lc.filter_chains:
            hcm = chain.filters[-1].config
            rds = getattr(hcm, "rds", None)
            if rds is None:
                continue
            provider = self.server.rds_providers.get((rds.config_source, rds.route_config_name,
                                                      hcm.stat_prefix))
            sub = getattr(getattr(provider, "subscription", None), "subscription", None)
            if sub is not None and getattr(sub, "first_done", True) is False:
                cold.append(sub)
        return cold

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.server.main.create_timer(self._check_warming)
        if not self._timer.enabled:
            self._timer.enable(0.01)

    def _check_warming(self) -> None:
        for name, w in list(self.warming.items()):
            w.cold = [sub for sub in w.cold if not sub.first_done]
            if not w.cold:
                del self.warming[name]
                log.info("lds: listener %s warmed", name)
                # Built again: its HCMs take the route tables that arrived meanwhile (the
                # subscriptions exist already and are shared, nothing is subscribed twice).
                self._activate(w.entry, self.server.listener_factory(w.entry.config), w.same_socket)
        if self.warming:
            self._timer.enable(0.01)

    def _untrack(self, lc) -> None:
        if self.server.secret_watcher is not None:
            self.server.secret_watcher.untrack(listener_transports(lc))

    def _drop_warming(self, name: str) -> None:
        w = self.warming.pop(name)
        self._untrack(w.entry.config)
        if not w.same_socket:
            for sock in w.entry.sockets:
                sock.close()

    def _stop_on_workers(self, old: LdsListener, close_sockets: bool,
                         keep_chains: frozenset = frozenset(), in_place: bool = False) -> None:
        """The workers stop `old` and drain its connections over the drain time (Envoy's
        listener drain: --drain-time-s, --drain-strategy), except those of `keep_chains`."""
        name = old.config.name
        self._untrack(old.config)   # its connections keep the secrets they were made with
        opts = self.server.options
        drain_time = opts.drain_time_s
        gradual = getattr(opts, "drain_strategy", "gradual") == "gradual"
        for w in self.server.workers:
            w.post(lambda w=w: w.remove_listener(name, close_sockets, drain_time, gradual, keep_chains))
        if drain_time > 0:
            gauge = "listener_manager.total_filter_chains_draining" if in_place else \
                "listener_manager.total_listeners_draining"
            count = len(old.config.filter_chains) - len(keep_chains) if in_place else 1
            self._stats.gauge(gauge).inc(count)
            self.server.main.call_later(drain_time, lambda: self._stats.gauge(gauge).dec(count))
        if close_sockets and not old.config.enable_reuse_port:
            # A shared socket is registered in every worker: close it once all stopped.
            left = [len(self.server.workers)]

            def one_done() -> None:
                left[0] -= 1
                if left[0] == 0:
                    for s in old.sockets:
                        s.close()
            for w in self.server.workers:
                w.post(lambda: self.server.main.post(one_done))

    def _check_address(self, lc, path: str) -> None:
        if lc.port == 0:
            return
        taken = [(o.name, o.address, o.port) for o in self.server.bootstrap.listeners]
        taken += [(e.config.name, e.config.address, e.config.port) for e in self.entries.values()]
        taken += [(w.entry.config.name, w.entry.config.address, w.entry.config.port)
                  for w in self.warming.values()]
        admin = self.server.bootstrap.admin
        if admin is not None:
            taken.append(("admin", admin.address, self.server.admin.port if self.server.admin else admin.port))
        for other, address, port in taken:
            if other != lc.name and port == lc.port and overlaps(address, lc.address):
                raise ConfigError(join(path, "address"), f"{address_string(lc.address, lc.port)} is also "
                                                         f'listener "{other}"\'s address: both cannot bind')

    def _refresh_gauge(self) -> None:
        self._stats.gauge("listener_manager.total_listeners_active").set(
            len(self._static) + len(self.entries))
        self._stats.gauge("listener_manager.total_listeners_warming").set(len(self.warming))
