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
Thread affinity: main thread only; no lock.
"""

from __future__ import annotations

import logging

from . import proto
from .grpc_mux import GrpcMux, _TypeState, _WILDCARD_TYPES, checked_resources, deliver
from .subscription import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

__all__ = ["DeltaGrpcMux", "DELTA_ADS_PATH", "DELTA_TYPE_PATHS"]

log = logging.getLogger("ftproxy.xds")

DELTA_ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
DELTA_TYPE_PATHS = {
    LISTENER_TYPE: "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners",
    CLUSTER_TYPE: "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters",
    ROUTE_TYPE: "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes",
    ENDPOINT_TYPE: "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints",
}


class _DeltaState(_TypeState):
    __slots__ = ("versions", "held", "subscribed", "started")

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, str] = {}     # accepted resources' versions, by name
        self.held: dict[str, dict] = {}        # LDS/CDS: the accepted set, by name
        self.subscribed: set[str] = set()      # names subscribed on this stream
        self.started = False                   # the stream's first request for it was sent


class DeltaGrpcMux(GrpcMux):
    """The delta variant: same stream, watches and reconnects; other messages."""

    def add_watch(self, watch) -> None:
        self.types.setdefault(watch.type_url, _DeltaState())
        super().add_watch(watch)

    def _connect(self) -> None:
        for st in self.types.values():
            st.started = False
            st.subscribed = set()
        super()._connect()

    def _flush(self) -> None:
        if not self.open or self.stream is None:
            return
        for type_url, st in self.types.items():
            if st.watches and (st.dirty or not st.started):
                self._send_subscription(type_url, st)

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

    RESPONSE_MESSAGE = "DeltaDiscoveryResponse"
    decode = staticmethod(proto.decode_delta_response)

    def _answer(self, resp: proto.DeltaProtoResponse, st: _DeltaState, error: str | None) -> None:
        """ACK or NACK by the nonce alone."""
        if self.stream is not None and self.open:
            self.stream.send(proto.encode_delta_request(resp.type_url, resp.nonce, [], [], {},
                                                        self._node_once(), error))

    def _apply(self, resp: proto.DeltaProtoResponse, st: _DeltaState) -> str | None:
        decoded = checked_resources(resp, ((name, res) for name, _, res in resp.resources),
                                    lambda res: res is None, st, self.RESPONSE_MESSAGE)
        if isinstance(decoded, str):
            return decoded
        # decoded keeps the response's order minus its heartbeats: pair each with its version
        sent_versions = [v for _, v, res in resp.resources if res is not None]
        version = resp.system_version_info
        with self._batch():
            if resp.type_url in _WILDCARD_TYPES:
                held = dict(st.held)
                paths: dict[str, str] = {}
                for name, d, path in decoded:
                    held[name] = d
                    paths[name] = path
                for name in resp.removed:
                    held.pop(name, None)
                whole = [(d, paths.get(name, f'{name} (in force)')) for name, d in held.items()]
                error = deliver(st.watches, version, lambda w: whole)
                if error is None:
                    st.held = held
            else:
                by_name: dict[str, tuple[dict, str]] = {}
                for name, d, path in decoded:
                    by_name.setdefault(name, (d, path))
                error = deliver(st.watches, version,
                                lambda w: [by_name[n] for n in w.names if n in by_name])
                for name in resp.removed:
                    if any(name in w.names for w in st.watches):
                        log.warning("xds: %s %s removed by the control plane; the config in force "
                                    "stays", resp.type_url, name)
        if error is not None:
            return error
        for (name, _, _), v in zip(decoded, sent_versions):
            st.versions[name] = v
        for name in resp.removed:
            st.versions.pop(name, None)
        return None
