"""The secret providers (main thread): every SDS secret a TLS factory names, from a file or
from xDS, rotated into the factories using it — one `SecretProvider` per (source, name, kind),
shared by every factory naming it.

`SecretWatcher.track(factories)` registers the TLS factories of the bootstrap's listeners and
clusters, of each LDS listener and each CDS cluster (`untrack` when they go); a factory with an
xDS secret gets an `XdsSecretProvider` (proxy/xds/sds.py, made by the `xds` callable given
here), a file secret a `FileSecretProvider`. A provider that has a value hands it to a factory
added later at once. `cold(factories)`: the xDS providers those factories still wait for
(a listener warms on them, proxy/server/dynamic_listeners.py).

File sources:
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
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from proxy.config.reader import ConfigError

from .secrets import SecretSource, read_sds_file

__all__ = ["SecretWatcher", "SecretProvider", "FileSecretProvider"]

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


class SecretProvider(Protocol):
    """One secret (name, kind) from one source; main thread."""

    first_done: bool   # a first value came, or the first fetch failed (warming ends either way)

    def add(self, factory: Any, source: SecretSource) -> None:
        """`factory` uses the secret as `source` says (a combined validation context merges it
        into its own default): it gets the current value now, if there is one, and each new one."""

    def remove(self, factory: Any) -> None: ...

    def poll(self) -> None:
        """The main thread's tick (a file source looks for a replaced file)."""

    def stop(self) -> None: ...


def apply_secret(users: list, message, path: str) -> None:
    """A new version of a secret's message: parsed for every user's source first (all or none
    are changed when it is invalid), then installed into each factory. Raises ConfigError."""
    from .config import parse_secret  # (cryptography: imported once a secret arrives, not at start-up)
    values = [(factory, src, parse_secret(src, message, path)) for factory, src in users]
    for factory, src, value in values:
        try:
            factory.update_secret(src, value)
        except ValueError as e:   # OpenSSL refused it (a key that does not match the certificate)
            raise ConfigError(path, str(e)) from None


class FileSecretProvider:
    """A secret in an SDS file, re-read when the file (or a file it names) is replaced."""

    __slots__ = ("source", "users", "seen", "stats", "first_done")

    def __init__(self, source: SecretSource, store) -> None:
        self.source = source
        self.users: list = []
        scope = store.scope(f"sds.{source.name}")
        self.stats = {n: scope.counter(n) for n in ("update_attempt", "update_success", "update_rejected")}
        self.seen: dict[str, tuple[int, int] | None] = {}
        self.first_done = True    # read when the config was parsed
        self._remember()
        self.stats["update_attempt"].value += 1
        self.stats["update_success"].value += 1  # the version read at load

    def add(self, factory, source: SecretSource) -> None:
        self.users.append((factory, source))

    def remove(self, factory) -> None:
        self.users = [(f, s) for f, s in self.users if f is not factory]

    def stop(self) -> None:
        pass

    def _remember(self, message=None) -> None:
        if message is None:
            try:
                message, _ = read_sds_file(self.source.path, self.source.name, self.source.kind, "sds")
            except ConfigError:
                message = {}
        self.seen = {p: _identity(p) for p in (self.source.path, *_files_named(message))}

    def poll(self) -> None:
        if all(_identity(p) == ident for p, ident in self.seen.items()):
            return
        self._reload()

    def _reload(self) -> None:
        src = self.source
        self.stats["update_attempt"].value += 1
        try:
            message, path = read_sds_file(src.path, src.name, src.kind, f"sds_config {src.path}")
            apply_secret(self.users, message, path)
        except (ConfigError, ValueError, OSError) as e:
            # Keep the old secret; look again only when the file is replaced once more.
            self.stats["update_rejected"].value += 1
            log.error("secret %r from %s rejected, the previous version stays: %s", src.name, src.path, e)
            self._remember()
            return
        self.stats["update_success"].value += 1
        log.info("secret %r from %s updated", src.name, src.path)
        self._remember(message)


class SecretWatcher:
    def __init__(self, factories: Iterable, store,
                 xds: Callable[[SecretSource], SecretProvider] | None = None) -> None:
        """`factories`: the bootstrap's transport socket factories (listeners' filter chains
        and clusters); `xds(source)` makes the provider of an xDS secret (None: none allowed)."""
        self.store = store
        self.providers: dict[tuple, SecretProvider] = {}
        self._xds = xds
        self.track(factories)

    @staticmethod
    def _key(source: SecretSource) -> tuple:
        if source.config_source is not None:
            return ("xds", source.config_source, source.name, source.kind)
        return ("file", source.path, source.name, source.kind)

    def track(self, factories: Iterable) -> None:
        for factory in factories:
            for source in getattr(factory, "secret_sources", ()):
                if source.path is None and source.config_source is None:
                    continue  # static_resources.secrets: fixed for the process's life
                key = self._key(source)
                provider = self.providers.get(key)
                if provider is None:
                    if source.config_source is not None:
                        if self._xds is None:
                            raise RuntimeError("an xDS secret source, but no xDS provider is wired")
                        provider = self._xds(source)
                    else:
                        provider = FileSecretProvider(source, self.store)
                    self.providers[key] = provider
                provider.add(factory, source)

    def untrack(self, factories: Iterable) -> None:
        for factory in factories:
            for source in getattr(factory, "secret_sources", ()):
                provider = self.providers.get(self._key(source))
                if provider is not None:
                    provider.remove(factory)

    def cold(self, factories: Iterable) -> list:
        """The providers of these factories' xDS secrets still waiting for a first answer."""
        out = []
        for factory in factories:
            for source in getattr(factory, "secret_sources", ()):
                provider = self.providers.get(self._key(source))
                if provider is not None and not provider.first_done and provider not in out:
                    out.append(provider)
        return out

    def poll(self) -> None:
        for provider in list(self.providers.values()):
            provider.poll()

    def stop(self) -> None:
        for provider in self.providers.values():
            provider.stop()
