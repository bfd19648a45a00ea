"""LDS listeners at run time: bound on the main thread, handed to the workers by `post()`.

Added: its sockets are bound (a bind failure rejects that listener, naming its address) and
each worker gets its ActiveListener. Modified (a different config): on the same address the
listen sockets are kept and each worker swaps its ActiveListener in one posted call (stop the
old, start the new: no accept queue is dropped); on a new address new sockets are bound and
the old ones closed. Connections the old listener accepted keep their old filter chains and
finish (they are not reset). Removed: the workers stop accepting on it, its sockets close, its
connections finish.

Stats (main store, Envoy's): listener_manager.listener_added, listener_modified,
listener_removed, total_listeners_active.
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

__all__ = ["DynamicListeners", "LdsListener"]

log = logging.getLogger("ftproxy.lds")


@dataclass(frozen=True, slots=True)
class LdsListener:
    config: Any               # ListenerConfig
    sockets: tuple            # its listen sockets (owned by main; workers register them)
    version_info: str
    last_updated: float


class DynamicListeners:
    def __init__(self, server) -> None:
        self.server = server
        self.entries: dict[str, LdsListener] = server.lds_listeners
        self._static = {lc.name for lc in server.bootstrap.listeners}
        self._stats = server.main_store
        self._refresh_gauge()

    # -- ListenerTarget ------------------------------------------------------------------------
    def is_static(self, name: str) -> bool:
        return name in self._static

    def dynamic_names(self) -> set[str]:
        return set(self.entries)

    def cluster_names(self) -> set[str]:
        cm = self.server.cluster_manager
        return set(cm.states()) if cm is not None else set()

    def add_or_update(self, lc, version_info: str, path: str) -> None:
        old = self.entries.get(lc.name)
        if old is not None and old.config.raw == lc.raw:
            return  # the same listener: nothing to do (Envoy compares the config's hash)
        self._check_address(lc, path)
        same_socket = old is not None and (old.config.address, old.config.port, old.config.enable_reuse_port) \
            == (lc.address, lc.port, lc.enable_reuse_port)
        if same_socket:
            socks = list(old.sockets)
        else:
            try:
                # After a hot restart, the previous epoch's sockets for this address if it has them.
                socks = self.server._take_or_bind(lc)
            except OSError as e:
                raise ConfigError(join(path, "address"), str(e)) from None
        factory = self.server.listener_factory(lc)
        # Bookkeeping first: what the workers then do is already counted when it shows.
        self.entries[lc.name] = LdsListener(lc, tuple(socks), version_info, time.time())
        self.server.listen_sockets[lc.name] = socks
        self.server.listener_addresses[lc.name] = socks[0].getsockname()[:2]
        self._stats.counter("listener_manager.listener_modified" if old is not None
                            else "listener_manager.listener_added").inc()
        self._refresh_gauge()
        log.info("lds: listener %s %s on %s", lc.name, "modified" if old is not None else "added",
                 address_string(*socks[0].getsockname()[:2]))
        if old is not None:
            self._stop_on_workers(old, close_sockets=not same_socket)
        self.server._post_listener(lc, socks, factory)

    def remove(self, name: str) -> None:
        old = self.entries.pop(name)
        self.server.listen_sockets.pop(name, None)
        self.server.listener_addresses.pop(name, None)
        self._stats.counter("listener_manager.listener_removed").inc()
        self._refresh_gauge()
        log.info("lds: listener %s removed", name)
        self._stop_on_workers(old, close_sockets=True)

    # -- internals -------------------------------------------------------------------------------
    def _stop_on_workers(self, old: LdsListener, close_sockets: bool) -> None:
        name = old.config.name
        for w in self.server.workers:
            w.post(lambda w=w: w.remove_listener(name, close_sockets))
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
