"""Filesystem xDS source: a DiscoveryResponse in a YAML or JSON file, re-read on a move.

Envoy watches the file (inotify IN_MOVED_TO) and re-reads it when a file is renamed onto the
path (`mv`, `sed -i`) or a symlink on the way is swapped; an in-place write is ignored. With
`watched_directory`, a move into that directory re-reads `path`. We poll on the main thread's
1 s tick instead of inotify (portable, no extra thread): the file changed when `stat(path)`
(following symlinks) gives another (device, inode) — a rename or symlink swap yields another
inode, an in-place write keeps it — and, with `watched_directory`, also when the directory's
mtime moved (a rename into it changes it). A change is thus seen within about a second.

Stats (Envoy's, under the owner's prefix, e.g. `cluster_manager.cds.`): update_attempt per
read; update_failure when the file cannot be read or parsed; update_rejected when the
callbacks refuse its resources; update_success, version, update_time when accepted.
Thread affinity: main thread only.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml

from proxy.config.config_source import ConfigSourceConfig
from proxy.config.reader import ConfigError, all_errors

from .subscription import SubscriptionCallbacks, SubscriptionStats, decode_response

__all__ = ["FilesystemSubscription", "file_identity"]

log = logging.getLogger("ftproxy.xds")


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped link is another file
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _dir_mtime(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class FilesystemSubscription:
    """Implements `Subscription` for a `ConfigSourceConfig` file."""

    def __init__(self, source: ConfigSourceConfig, type_url: str, callbacks: SubscriptionCallbacks,
                 stats: SubscriptionStats, what: str) -> None:
        self.source = source
        self.type_url = type_url
        self.callbacks = callbacks
        self.stats = stats
        self.what = what              # "cds", "lds", "rds local_route", ... for log lines
        self._seen: tuple[Any, Any] | None = None
        self._stopped = False

    def _marker(self) -> tuple[Any, Any]:
        return file_identity(self.source.path), _dir_mtime(self.source.watched_directory)

    def start(self) -> None:
        self._seen = self._marker()
        self.refresh()

    def poll(self) -> None:
        if self._stopped:
            return
        marker = self._marker()
        if marker == self._seen:
            return
        self._seen = marker
        if marker[0] is None:
            return  # the file went away: Envoy keeps the config (nothing moved onto the path)
        self.refresh()

    def stop(self) -> None:
        self._stopped = True

    def refresh(self) -> None:
        """Read the file now and deliver it (an accepted update, a rejection or a failure)."""
        path = self.source.path
        self.stats.update_attempt.inc()
        try:
            with open(path, "rb") as fh:
                text = fh.read()
            doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
            resources, version = decode_response(doc, self.type_url, "")
        except (OSError, ValueError, yaml.YAMLError) as e:
            if isinstance(e, ConfigError):
                self._rejected(e)
                return
            self.stats.update_failure.inc()
            log.warning("%s: cannot read %s, the previous config stays: %s", self.what, path, e)
            return
        try:
            self.callbacks.on_update(resources, version)
        except ConfigError as e:
            self._rejected(e)
            return
        self.stats.accepted(version)
        log.info("%s: %s applied (version %r, %d resource(s))", self.what, path, version, len(resources))

    def _rejected(self, e: ConfigError) -> None:
        for err in all_errors(e):
            log.error("%s: update from %s rejected, the previous config stays: %s",
                      self.what, self.source.path, err)
        self.stats.update_rejected.inc()
