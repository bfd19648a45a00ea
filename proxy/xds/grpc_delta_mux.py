"""Incremental (delta) xDS over one gRPC stream (Envoy's NewGrpcMuxImpl with
DeltaSubscriptionState): `api_type: DELTA_GRPC` for ads_config (DeltaAggregatedResources) or
an api_config_source (Delta{Listeners,Clusters,Routes,Endpoints}).

What differs from state of the world (grpc_mux.py, whose stream, watches, backoff and stats
this reuses):
- Requests subscribe and unsubscribe names (`resource_names_subscribe/_unsubscribe`; LDS and
  CDS are wildcards: an empty first subscription), and ACK or NACK a response by its nonce
  alone (no version_info); a NACK carries error_detail (code 13, the field-path errors).
- A response holds only what changed (`resources`, each with its name and version) and what
  was removed (`removed_resources`). ftproxy keeps, per type, the accepted resources by name
  and their versions. LDS and CDS appliers still get the whole set (the accepted one with this
  response's changes and removals applied), so a delta push is validated and applied exactly
  as the same state pushed whole: a refused push changes neither the set nor the versions.
  RDS and EDS watches get the resources of their names found in the response.
- A new stream's first request for a type names every resource held with its version
  (`initial_resource_versions`), so the server sends only what changed meanwhile.
- The subscription's `version` stat follows `system_version_info`.
- TTLs (`Resource.ttl`, refreshed by heartbeats: a resource entry without a resource) expire
  as in grpc_mux.py; an expired name is also forgotten from the versions held.
Thread affinity: main thread only; no lock.
"""

from __future__ import annotations

import logging

from proxy.config.reader import ConfigError, all_errors

from . import proto
from .grpc_mux import GrpcMux, _TypeState, _WILDCARD_TYPES, _resource_name, fail_all
from .subscription import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE

__all__ = ["DeltaGrpcMux", "DELTA_ADS_PATH", "DELTA_TYPE_PATHS"]

log = logging.getLogger("ftproxy.xds")

DELTA_ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
DELTA_TYPE_PATHS = {
    LISTENER_TYPE: "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners",
    CLUSTER_TYPE: "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters",
    ROUTE_TYPE: "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes",
    ENDPOINT_TYPE: "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints",
    SECRET_TYPE: "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
}


class _DeltaState(_TypeState):
    __slots__ = ("versions", "held", "subscribed", "started", "queued")

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, str] = {}     # accepted resources' versions, by name
        self.held: dict[str, dict] = {}        # LDS/CDS: the accepted set, by name
        self.subscribed: set[str] = set()      # names subscribed on this stream
        self.started = False                   # the stream's first request for it was sent
        self.queued = False                    # its subscription request waits for a token


class DeltaGrpcMux(GrpcMux):
    """The delta variant: same stream, watches and reconnects; other messages."""

    def add_watch(self, watch) -> None:
        self.types.setdefault(watch.type_url, _DeltaState())
        super().add_watch(watch)

    def _connect(self) -> None:
        for st in self.types.values():
            st.started = False
            st.queued = False
            st.subscribed = set()
        super()._connect()

    def _flush(self) -> None:
        if not self.open or self.stream is None:
            return
        for type_url, st in self.types.items():
            if st.watches and (st.dirty or not st.started) and not st.queued:
                st.queued = True
                self._enqueue(lambda type_url=type_url, st=st: self._send_queued(type_url, st))

    def _send_queued(self, type_url: str, st: _DeltaState) -> None:
        st.queued = False
        if self.open and self.stream is not None and st.watches:
            self._send_subscription(type_url, st)

    def _node_once(self):
        if self.node_first_only and self.sent_node:
            return None
        self.sent_node = True
        return self.node

    def _send_subscription(self, type_url: str, st: _DeltaState) -> None:
        wanted = set(st.names(type_url))
        initial: dict[str, str] = {}
        if not st.started:
            initial = dict(st.versions)
            subscribe, unsubscribe = sorted(wanted), []
        else:
            subscribe, unsubscribe = sorted(wanted - st.subscribed), sorted(st.subscribed - wanted)
            if not subscribe and not unsubscribe:
                st.dirty = False
                return
        data = proto.encode_delta_request(type_url, "", subscribe, unsubscribe, initial,
                                          self._node_once(), None)
        st.subscribed = wanted
        st.started = True
        st.dirty = False
        st.sent_names = tuple(sorted(wanted))
        assert self.stream is not None
        self.stream.send(data)

    def _on_message(self, data: bytes) -> None:
        try:
            resp = proto.decode_delta_response(data)
        except proto.DecodeError as e:
            log.error("xds: undecodable DeltaDiscoveryResponse from %s: %s", self.cluster_name, e)
            if self.stream is not None:   # as Envoy's gRPC client: the stream ends, and is retried
                self.stream.reset("undecodable DeltaDiscoveryResponse")
            return
        st = self.types.get(resp.type_url)
        if st is None or not st.watches:
            log.warning("xds: ignoring the message for type URL %s as it has no current "
                        "subscribers", resp.type_url)
            return
        self.attempt = 0
        try:
            error = self._apply_delta(resp, st)
        except Exception as e:  # a bug past validation: NACK it, keep the stream and the loop
            log.exception("xds: applying %s %r failed", resp.type_url, resp.system_version_info)
            error = f"internal error applying the update: {type(e).__name__}: {e}"
        if self.stream is not None and self.open:
            type_url, nonce = resp.type_url, resp.nonce
            self._enqueue(lambda: self._send_ack(type_url, nonce, error))

    def _send_ack(self, type_url: str, nonce: str, error: str | None) -> None:
        if self.stream is not None and self.open:
            self.stream.send(proto.encode_delta_request(type_url, nonce, [], [], {},
                                                        self._node_once(), error))

    def _apply_delta(self, resp: proto.DeltaProtoResponse, st: _DeltaState) -> str | None:
        decoded: list[tuple[str, str, dict, str]] = []   # (name, version, resource, path)
        try:
            for i, (name, version, res) in enumerate(resp.resources):
                if res is None:
                    continue   # a heartbeat (TTL refresh): nothing to apply
                path = f"resources[{i}]"
                d = proto.resource_to_dict(res)
                got = d.pop("@type", None)
                if got != resp.type_url:
                    raise ConfigError(path, f"{got} does not match the message-wide type URL "
                                            f"{resp.type_url} in DeltaDiscoveryResponse")
                own = _resource_name(d, resp.type_url)
                if own is not None and name and own != name:
                    raise ConfigError(path, f'resource "{own}" is sent under the name "{name}"')
                decoded.append((name or own or "", version, d, path))
        except (ConfigError, ValueError) as e:
            for w in list(st.watches):
                w.failed("update_rejected")
            log.error("xds: %s delta response %r refused: %s", resp.type_url,
                      resp.system_version_info, e)
            return str(e)
        errors: list[str] = []
        refused: list = []
        version = resp.system_version_info
        with self._batch():
            if resp.type_url in _WILDCARD_TYPES:
                held = dict(st.held)
                paths: dict[str, str] = {}
                for name, _, d, path in decoded:
                    held[name] = d
                    paths[name] = path
                for name in resp.removed:
                    held.pop(name, None)
                whole = [(d, paths.get(name, f'{name} (in force)')) for name, d in held.items()]
                for w in list(st.watches):
                    e = w.deliver(whole, version)
                    if e is not None:
                        errors.extend(str(x) for x in all_errors(e))
                        refused.append(w)
                if not errors:
                    st.held = held
            else:
                by_name: dict[str, tuple[dict, str]] = {}
                for name, _, d, path in decoded:
                    by_name.setdefault(name, (d, path))
                for w in list(st.watches):
                    got = [by_name[n] for n in w.names if n in by_name]
                    if not got:
                        continue
                    e = w.deliver(got, version)
                    if e is not None:
                        errors.extend(str(x) for x in all_errors(e))
                        refused.append(w)
                for name in resp.removed:
                    if any(name in w.names for w in st.watches):
                        log.warning("xds: %s %s removed by the control plane; the config in force "
                                    "stays", resp.type_url, name)
        if errors:
            fail_all(st.watches, refused)
            return "\n".join(errors)
        for name, v, _, _ in decoded:
            st.versions[name] = v
        for name in resp.removed:
            st.versions.pop(name, None)
            st.ttl.pop(name, None)
        # TTLs: every resource of the response, heartbeats (no resource) included, sets its
        # TTL or clears it (Envoy's DeltaSubscriptionState::addResourceState).
        self._set_ttls(st, {name: resp.ttls.get(name) for name, _, _ in resp.resources if name})
        return None

    def _remove_expired(self, type_url: str, st: _DeltaState, expired: set[str]) -> None:
        """As Envoy's delta expiry: the names are waiting for the server again (not named in a
        new stream's initial_resource_versions) and every watch gets them as removed."""
        for n in expired:
            st.versions.pop(n, None)
        with self._batch():
            if type_url in _WILDCARD_TYPES:
                held = {n: d for n, d in st.held.items() if n not in expired}
                whole = [(d, f"{n} (in force)") for n, d in held.items()]
                for w in list(st.watches):
                    w.deliver(whole, "")
                st.held = held
            else:
                for w in list(st.watches):
                    w.stats.update_attempt.inc()
                    w.stats.accepted("")
