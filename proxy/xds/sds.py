"""SDS over xDS: one secret by name from the ADS stream or an api_config_source (GRPC or
DELTA_GRPC), type URL `envoy.extensions.transport_sockets.tls.v3.Secret` (Envoy's
SdsApi / TlsCertificateSdsApi / CertificateValidationContextSdsApi).

`XdsSecretProvider` is the xDS `SecretProvider` (proxy/tls/watcher.py) and the subscription's
callbacks: it subscribes to its name when made; each response holding the secret is validated
with the same table and validators as a static or file secret (`Secret`, then the
`tls_certificate` or `validation_context` it must hold, parsed for every factory using it,
each with its own combined default) and installed into the factories
(`update_secret`): new handshakes use it, connections already up keep theirs. A bad secret is
refused (NACK naming the field path) and the previous value stays. Until its first value
the factories are not ready (handshakes fail: "Secret is not supplied by SDS") and a listener
using it warms; `first_done` ends the warming (a value, a refused first push, a failed stream
or the initial_fetch_timeout, as Envoy's init target).
A removal (delta `removed_resources`) keeps the secret in force, as Envoy's SdsApi does.

Stats: `sds.<name>.*` (SubscriptionStats: update_attempt, update_success, update_rejected, ...).
Thread affinity: main thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config.reader import ConfigError, join
from proxy.tls.secrets import SECRET, SecretSource
from proxy.tls.watcher import apply_secret

from .subscription import SECRET_TYPE

__all__ = ["XdsSecretProvider"]

log = logging.getLogger("ftproxy.sds")


class XdsSecretProvider:
    """One secret (`source.name`, `source.kind`) from `source.config_source`."""

    __slots__ = ("name", "kind", "users", "message", "handle")

    def __init__(self, source: SecretSource, subscribe: Callable[..., Any]) -> None:
        """`subscribe`: XdsManager.subscribe."""
        self.name = source.name
        self.kind = source.kind
        self.users: list = []
        self.message: tuple[Mapping[str, Any], str] | None = None   # the kind's message, its path
        self.handle = subscribe(source.config_source, SECRET_TYPE, self, f"sds.{source.name}",
                                f"sds {source.name}", names=(source.name,))

    @property
    def first_done(self) -> bool:
        if self.message is not None:
            return True
        return getattr(self.handle.subscription, "first_done", True)

    # -- SecretProvider --------------------------------------------------------------------------
    def add(self, factory, source: SecretSource) -> None:
        self.users.append((factory, source))
        if self.message is not None:
            try:
                apply_secret([(factory, source)], *self.message)
            except ConfigError as e:   # valid for the others; not with this one's default
                log.error("sds %s: the secret in force does not fit a new user: %s", self.name, e)

    def remove(self, factory) -> None:
        self.users = [(f, s) for f, s in self.users if f is not factory]

    def poll(self) -> None:
        pass   # the stream pushes

    def stop(self) -> None:
        self.handle.stop()

    # -- SubscriptionCallbacks -------------------------------------------------------------------
    def on_update(self, resources: Sequence[tuple[Mapping[str, Any], str]], version_info: str) -> None:
        found = None
        for raw, path in resources:
            if raw.get("name") == self.name:
                found = (raw, path)
                break
        if found is None:
            return   # the mux delivers only responses naming it; nothing to change
        raw, path = found
        SECRET.read(raw, path)
        message = raw.get(self.kind)
        if message is None:
            raise ConfigError(path, f'secret "{self.name}" holds no {self.kind}')
        apply_secret(self.users, message, join(path, self.kind))
        first = self.message is None
        self.message = (message, join(path, self.kind))
        log.info("sds %s: %s %s (version %r)", self.name, self.kind,
                 "arrived" if first else "rotated", version_info)
