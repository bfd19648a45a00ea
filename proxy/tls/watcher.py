"""Watches file-based SDS secrets (main thread) and rotates them into the TLS factories.

Each file source (secrets.py) is checked on the main thread's tick: when the file at its path
is a different file than last time (its device and inode: a rename onto the path, or a
symlink swap of a directory on the way, as Kubernetes mounts secrets) — or a file its secret
names (`certificate_chain: {filename: ...}`) was replaced the same way — the secret is read
again and validated exactly as at load. Valid: every factory using it builds new contexts
and publishes them (transport_socket.py `update_secret`); connections made from then on use
the new certificate, connections already up keep theirs, nothing is reloaded or dropped.
Invalid (unreadable, bad PEM, a key that does not match, ...): logged, counted, and the old
secret stays. An in-place write (same inode) is not a replacement and is ignored, as Envoy
ignores it (it watches for moves).

Stats (the main thread's store, as Envoy's `sds.<name>.*`): `update_attempt`,
`update_success`, `update_rejected`.
Thread affinity: main thread only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from proxy.config.reader import ConfigError

from .config import parse_secret
from .secrets import SecretSource, read_sds_file

__all__ = ["SecretWatcher"]

log = logging.getLogger("ftproxy.sds")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data link is a new file
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _files_named(message) -> list[str]:
    """Every `filename` a secret message's DataSources name."""
    out = []
    if isinstance(message, dict):
        for key, value in message.items():
            if key == "filename" and isinstance(value, str):
                out.append(value)
            else:
                out.extend(_files_named(value))
    elif isinstance(message, list):
        for value in message:
            out.extend(_files_named(value))
    return out


class _Watch:
    __slots__ = ("source", "factories", "seen", "stats")

    def __init__(self, source: SecretSource, stats) -> None:
        self.source = source
        self.factories: list = []
        self.seen: dict[str, tuple[int, int] | None] = {}
        self.stats = stats


class SecretWatcher:
    def __init__(self, factories: Iterable, store) -> None:
        """`factories`: every transport socket factory of the bootstrap (listeners' filter
        chains and clusters); those with file-based secrets are watched."""
        self.watches: dict[tuple[str, str, str], _Watch] = {}
        for factory in factories:
            for source in getattr(factory, "secret_sources", ()):
                if source.path is None:
                    continue  # static_resources.secrets: fixed for the process's life
                key = (source.path, source.name, source.kind)
                w = self.watches.get(key)
                if w is None:
                    scope = store.scope(f"sds.{source.name}")
                    stats = {n: scope.counter(n) for n in ("update_attempt", "update_success", "update_rejected")}
                    w = self.watches[key] = _Watch(source, stats)
                    self._remember(w)
                    stats["update_attempt"].value += 1
                    stats["update_success"].value += 1  # the version read at load
                w.factories.append(factory)

    def _remember(self, w: _Watch, message=None) -> None:
        if message is None:
            try:
                message, _ = read_sds_file(w.source.path, w.source.name, w.source.kind, "sds")
            except ConfigError:
                message = {}
        w.seen = {p: _identity(p) for p in (w.source.path, *_files_named(message))}

    def poll(self) -> None:
        for w in self.watches.values():
            if all(_identity(p) == ident for p, ident in w.seen.items()):
                continue
            self._reload(w)

    def _reload(self, w: _Watch) -> None:
        src = w.source
        w.stats["update_attempt"].value += 1
        try:
            message, path = read_sds_file(src.path, src.name, src.kind, f"sds_config {src.path}")
            value = parse_secret(src, message, path)
            for factory in w.factories:
                factory.update_secret(src, value)
        except (ConfigError, ValueError, OSError) as e:
            # Keep the old secret; look again only when the file is replaced once more.
            w.stats["update_rejected"].value += 1
            log.error("secret %r from %s rejected, the previous version stays: %s", src.name, src.path, e)
            self._remember(w)
            return
        w.stats["update_success"].value += 1
        log.info("secret %r from %s updated", src.name, src.path)
        self._remember(w, message)
