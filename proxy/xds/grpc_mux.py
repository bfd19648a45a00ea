"""State-of-the-world xDS over one gRPC stream (Envoy's GrpcMuxImpl): the ADS stream shared by
every `ads: {}` source, or one per-type stream for an `api_config_source` GRPC.

Protocol, as Envoy speaks it:
- Per type URL one DiscoveryRequest state: the resource names (LDS and CDS: wildcard, no
  names; RDS and EDS: the union of the watches' names), the last accepted `version_info`, the
  last received nonce. A request goes out when a type is first watched or its names change
  (batched to the end of the loop iteration, so a CDS push that adds many EDS clusters makes
  one EDS request) and after each response.
- The node goes in every request, or only in a stream's first one with
  `set_node_on_first_message_only`.
- A response is decoded (proxy/xds/proto.py) and each resource's `@type` checked against the
  response's type URL; each watch then gets the resources it asked for (a wildcard watch all
  of them, even none; a named watch only when the response holds one of its names) and
  validates and applies them through the same callbacks as a file's. If every watch accepts,
  the ACK carries the response's version_info and nonce; if any refuses, the NACK carries the
  last accepted version, the nonce and `error_detail` {code 13 INTERNAL, message: the
  field-path errors} — what was refused keeps its last good config (LDS and CDS still apply
  the good resources of the push, as Envoy) — and every watch of the type counts the
  rejection (Envoy's onConfigUpdateFailed on all of them; a warming one stops waiting).
- TTL (`Resource.ttl` in the `Resource` wrapper): an accepted resource with a TTL must be sent
  again (or refreshed by a heartbeat: a wrapper without a resource) within it; one sent
  without a TTL clears it. When it passes, the resource is removed as Envoy's mux removes it:
  every watch of the type gets the expired names as removed resources (version ""): LDS and
  CDS drop those listeners and clusters; RDS, EDS and SDS keep what they hold (Envoy ignores
  the removal of a named resource) and count the update. A heartbeat refreshes the TTL as
  Envoy's unified mux does (the legacy GrpcMuxImpl drops heartbeats before its TTL
  bookkeeping, which this does not copy). TTLs are taken from accepted responses only.
- `rate_limit_settings` (max_tokens, fill_rate): requests wait in a queue for a token of the
  stream's bucket, as Envoy's request queue (`control_plane.pending_requests` gauge,
  `control_plane.rate_limit_enforced` counting each wait); a request goes with the type's
  state at the time it is sent. A new stream drops the queue (it asks afresh).
- When the stream closes, `control_plane.connected_state` goes to 0 and a new stream is tried
  after a jittered exponential backoff (Envoy's: 500 ms base, 30 s cap, full jitter); its
  first request for each type carries the last accepted version and an empty nonce. Every
  config in force stays in force meanwhile.

Stats (main store): `control_plane.connected_state`, `control_plane.pending_requests`
(gauges), `control_plane.rate_limit_enforced` (counter), and through each watch its
subscription's stats (`listener_manager.lds.*`, `cluster_manager.cds.*`, ...).
Thread affinity: main thread only; no lock.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy.config.reader import ConfigError, all_errors
from proxy.stats.grpc_client_stats import GrpcClientStats

from . import proto
from .grpc_stream import GrpcStream
from .token_bucket import TokenBucket
from .subscription import (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
                           SubscriptionCallbacks, SubscriptionStats)

__all__ = ["GrpcMux", "Watch", "ADS_PATH", "TYPE_PATHS", "fail_all"]

log = logging.getLogger("ftproxy.xds")

ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
TYPE_PATHS = {
    LISTENER_TYPE: "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
    CLUSTER_TYPE: "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
    ROUTE_TYPE: "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
    ENDPOINT_TYPE: "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
    SECRET_TYPE: "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
}
_WILDCARD_TYPES = (LISTENER_TYPE, CLUSTER_TYPE)
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


class Watch:
    """One subscriber of one type: `names` (empty for a wildcard), its callbacks and stats.
    `first_done` once a first answer was applied or refused (or its initial fetch timed out)."""

    __slots__ = ("mux", "type_url", "names", "callbacks", "stats", "what", "first_done",
                 "on_first_failed", "_timer")

    def __init__(self, mux: GrpcMux, type_url: str, names: tuple[str, ...],
                 callbacks: SubscriptionCallbacks, stats: SubscriptionStats, what: str,
                 on_first_failed: Callable[[], None] | None) -> None:
        self.mux = mux
        self.type_url = type_url
        self.names = names
        self.callbacks = callbacks
        self.stats = stats
        self.what = what
        self.first_done = False
        self.on_first_failed = on_first_failed
        self._timer = None

    # `Subscription` (proxy/xds/subscription.py)
    def start(self, initial_fetch_timeout: float = 0.0) -> None:
        self.stats.update_attempt.inc()
        self.mux.add_watch(self)
        if initial_fetch_timeout > 0:
            self._timer = self.mux.dispatcher.call_later(initial_fetch_timeout, self._fetch_timeout)

    def poll(self) -> None:
        pass   # a stream pushes

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.disable()
            self._timer = None
        self.mux.remove_watch(self)

    def _fetch_timeout(self) -> None:
        self._timer = None
        if not self.first_done:
            self.stats.init_fetch_timeout.inc()
            log.warning("%s: no answer from the control plane within initial_fetch_timeout", self.what)
            self._first(False)

    def _first(self, ok: bool) -> None:
        if self.first_done:
            return
        self.first_done = True
        if self._timer is not None:
            self._timer.disable()
            self._timer = None
        if not ok and self.on_first_failed is not None:
            self.on_first_failed()

    def failed(self, counter: str) -> None:
        """onConfigUpdateFailed: `update_rejected` or `update_failure` (a stream that failed);
        a first fetch ends there (Envoy lets start-up go on)."""
        getattr(self.stats, counter).inc()
        self.stats.update_attempt.inc()
        self._first(False)

    def deliver(self, resources: list[tuple[dict, str]], version_info: str) -> ConfigError | None:
        """Apply; the error when refused (stats counted as Envoy's GrpcSubscriptionImpl)."""
        self.stats.update_attempt.inc()
        try:
            self.callbacks.on_update(resources, version_info)
        except ConfigError as e:
            self.stats.update_rejected.inc()
            for err in all_errors(e):
                log.error("%s: update %r rejected, the previous config stays: %s",
                          self.what, version_info, err)
            self._first(False)
            return e
        self.stats.accepted(version_info)
        log.info("%s: version %r applied (%d resource(s))", self.what, version_info, len(resources))
        self._first(True)
        return None


class _TypeState:
    __slots__ = ("watches", "version_info", "nonce", "sent_names", "dirty", "ttl", "last")

    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self.version_info = ""
        self.nonce = ""
        self.sent_names: tuple[str, ...] | None = None
        self.dirty = False
        self.ttl: dict[str, float] = {}          # resource name -> monotonic deadline (Resource.ttl)
        self.last: list[tuple[dict, str]] = []   # SotW LDS/CDS: the last accepted set (TTL expiry)

    def names(self, type_url: str) -> tuple[str, ...]:
        if type_url in _WILDCARD_TYPES:
            return ()
        return tuple(sorted({n for w in self.watches for n in w.names}))


class GrpcMux:
    """One SotW stream to the cluster `cluster_name` (`path`: ADS or a per-type service).
    `hosts()` gives the cluster's current (address, port) list; `node` is the Node message."""

    def __init__(self, dispatcher, cluster_name: str, path: str, hosts: Callable[[], list],
                 node: Any, store, set_node_on_first_message_only: bool = False,
                 rand: Callable[[], float] = random.random,
                 batch: Callable[[], Any] = contextlib.nullcontext, cluster: Any = None,
                 rate_limit: tuple[int, float] | None = None, authority: str = "",
                 metadata: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.dispatcher = dispatcher
        self.cluster_name = cluster_name
        self.authority = authority or cluster_name   # the stream's :authority
        self.metadata = metadata                     # the GrpcService's initial_metadata
        self.path = path
        self._hosts = hosts
        self.node = node
        self.node_first_only = set_node_on_first_message_only
        self.connected_state = store.gauge("control_plane.connected_state")
        # The xDS cluster's upstream_* stats, as Envoy's gRPC client charges them per stream.
        self.cluster_stats = GrpcClientStats(store, cluster_name)
        self._rand = rand
        self._batch = batch        # around one response's deliveries (the cluster manager's)
        self.cluster = cluster     # the xDS cluster's config: connect_timeout, http2 (windows, keepalive)
        self.types: dict[str, _TypeState] = {}    # in subscription order
        self.stream: GrpcStream | None = None
        self.open = False
        self.sent_node = False
        self.attempt = 0                          # failed attempts since the last good answer
        self.host_index = 0
        self.stopped = False
        self._flush_queued = False
        self._retry = dispatcher.create_timer(self._connect)
        self._ttl_timer = dispatcher.create_timer(self._expire)
        self._clock = time.monotonic
        # rate_limit_settings: requests wait in `_queue` for a token (Envoy's request queue).
        self._bucket = TokenBucket(*rate_limit) if rate_limit is not None else None
        self._queue: deque[Callable[[], None]] = deque()
        self._drain_timer = dispatcher.create_timer(self._drain)
        self.rate_limit_enforced = store.counter("control_plane.rate_limit_enforced")
        self.pending_requests = store.gauge("control_plane.pending_requests")

    # -- watches --------------------------------------------------------------------------------
    def add_watch(self, watch: Watch) -> None:
        st = self.types.setdefault(watch.type_url, _TypeState())
        st.watches.append(watch)
        st.dirty = True
        if self.stream is None and not self._retry.enabled:
            self._connect()
        self._queue_flush()

    def remove_watch(self, watch: Watch) -> None:
        st = self.types.get(watch.type_url)
        if st is None or watch not in st.watches:
            return
        st.watches.remove(watch)
        if st.watches and st.names(watch.type_url) != st.sent_names:
            st.dirty = True
            self._queue_flush()

    def pending_first(self) -> bool:
        return any(not w.first_done for st in self.types.values() for w in st.watches)

    # -- the stream -----------------------------------------------------------------------------
    def _connect(self) -> None:
        if self.stopped or self.stream is not None:
            return
        hosts = self._hosts()
        if not hosts:
            log.warning("xds: cluster %s has no host to reach the control plane", self.cluster_name)
            self._schedule_retry()
            return
        address = hosts[self.host_index % len(hosts)]
        self.host_index += 1
        self.sent_node = False
        self._queue.clear()          # requests of the old stream (the new one asks afresh)
        self.pending_requests.set(0)
        for st in self.types.values():
            st.nonce = ""            # a new stream: nonces of the old one mean nothing
            st.sent_names = None
            st.dirty = bool(st.watches)
        self.stream = GrpcStream(self.dispatcher, address, self.authority, self.path,
                                 self._on_open, self._on_message, self._on_close,
                                 http2=getattr(self.cluster, "http2", None),
                                 connect_timeout=getattr(self.cluster, "connect_timeout", None),
                                 metadata=self.metadata, stats=self.cluster_stats.call(),
                                 transport=getattr(self.cluster, "transport_socket", None))

    def _on_open(self) -> None:
        self.open = True
        self.connected_state.set(1)
        log.info("xds: stream to %s open", self.cluster_name)
        self._flush()

    def _on_close(self, status: int | None, message: str) -> None:
        self.stream = None
        self.open = False
        self.connected_state.set(0)
        for st in self.types.values():
            for w in list(st.watches):
                w.failed("update_failure")
        log.warning("xds: stream to %s closed (%s%s); config in force stays", self.cluster_name,
                    f"grpc-status {status}, " if status is not None else "", message)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self.stopped:
            return
        cap = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** min(self.attempt, 16)))
        self.attempt += 1
        delay = max(0.001, self._rand() * cap)
        self._retry.enable(delay)

    def stop(self) -> None:
        self.stopped = True
        self._retry.disable()
        self._ttl_timer.disable()
        self._drain_timer.disable()
        self._queue.clear()
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.open = False
        self.connected_state.set(0)

    # -- requests -------------------------------------------------------------------------------
    def _queue_flush(self) -> None:
        if not self._flush_queued:
            self._flush_queued = True
            self.dispatcher.defer(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_queued = False
        self._flush()

    def _flush(self) -> None:
        if not self.open or self.stream is None:
            return
        for type_url, st in self.types.items():
            if st.dirty and st.watches:
                self._send(type_url, st, None)

    def _enqueue(self, send: Callable[[], None]) -> None:
        """A request to send: at once, or (rate_limit_settings) when the bucket has a token."""
        if self._bucket is None:
            send()
            return
        self._queue.append(send)
        self._drain()

    def _drain(self) -> None:
        """Send queued requests while tokens last (Envoy's drainRequests); the rest wait for
        the next token (`control_plane.rate_limit_enforced` counts each wait)."""
        assert self._bucket is not None
        while self._queue:
            if self.stream is None or not self.open:
                self._queue.clear()       # no stream: a new one asks afresh
                break
            if not self._bucket.consume():
                self.rate_limit_enforced.inc()
                if not self._drain_timer.enabled:
                    self._drain_timer.enable(self._bucket.next_token())
                break
            self._queue.popleft()()
        self.pending_requests.set(len(self._queue))

    def _send(self, type_url: str, st: _TypeState, error: str | None) -> None:
        """Queue the type's request; what it says (names, version, nonce) is read when it goes."""
        st.dirty = False
        self._enqueue(lambda: self._send_now(type_url, st, error))

    def _send_now(self, type_url: str, st: _TypeState, error: str | None) -> None:
        if self.stream is None or not self.open:
            return
        names = st.names(type_url)
        node = None
        if not (self.node_first_only and self.sent_node):
            node = self.node
            self.sent_node = True
        data = proto.encode_request(type_url, st.version_info, st.nonce, list(names), node, error)
        st.sent_names = names
        st.dirty = False
        assert self.stream is not None
        self.stream.send(data)

    # -- responses ------------------------------------------------------------------------------
    def _on_message(self, data: bytes) -> None:
        try:
            resp = proto.decode_response(data)
        except proto.DecodeError as e:
            log.error("xds: undecodable DiscoveryResponse from %s: %s", self.cluster_name, e)
            if self.stream is not None:   # as Envoy's gRPC client: the stream ends, and is retried
                self.stream.reset("undecodable DiscoveryResponse")
            return
        st = self.types.get(resp.type_url)
        if st is None or not st.watches:
            log.warning("xds: ignoring the message for type URL %s as it has no current "
                        "subscribers", resp.type_url)
            return
        self.attempt = 0
        st.nonce = resp.nonce
        try:
            error = self._apply(resp, st)
        except Exception as e:  # a bug past validation: NACK it, keep the stream and the loop
            log.exception("xds: applying %s %r failed", resp.type_url, resp.version_info)
            error = f"internal error applying the update: {type(e).__name__}: {e}"
        if error is None:
            st.version_info = resp.version_info   # what a new stream's first request names
        if self.stream is not None and self.open:
            self._send(resp.type_url, st, error)

    def _apply(self, resp: proto.ProtoResponse, st: _TypeState) -> str | None:
        """Deliver to the watches; the NACK's message, or None to ACK."""
        where = "resources"
        decoded: list[tuple[dict, str]] = []
        ttls: dict[str, float | None] = {}   # name -> its TTL (None: none, which clears one)
        try:
            for i, res in enumerate(resp.resources):
                info = proto.wrapper_info(res)
                if info is not None and not info[2]:
                    ttls[info[0]] = info[1]   # a heartbeat: refreshes the TTL, nothing to apply
                    continue
                path = f"{where}[{i}]"
                d = proto.resource_to_dict(res)
                got = d.pop("@type", None)
                if got != resp.type_url:
                    raise ConfigError(path, f"{got} does not match the message-wide type URL "
                                            f"{resp.type_url} in DiscoveryResponse")
                decoded.append((d, path))
                name = (info[0] if info is not None else "") or _resource_name(d, resp.type_url)
                if name:
                    ttls[name] = info[1] if info is not None else None
        except (ConfigError, ValueError) as e:
            message = str(e)
            for w in list(st.watches):
                w.failed("update_rejected")
            log.error("xds: %s response %r refused: %s", resp.type_url, resp.version_info, message)
            return message
        by_name = {}
        for item in decoded:
            name = _resource_name(item[0], resp.type_url)
            if name is not None and name not in by_name:   # a repeated name: the first counts
                by_name[name] = item
        errors: list[str] = []
        refused: list[Watch] = []
        with self._batch():
            for w in list(st.watches):
                if not w.names:
                    got = decoded
                else:
                    got = [by_name[n] for n in w.names if n in by_name]
                    if not got:
                        continue
                e = w.deliver(got, resp.version_info)
                if e is not None:
                    errors.extend(str(x) for x in all_errors(e))
                    refused.append(w)
        if errors:
            fail_all(st.watches, refused)
            return "\n".join(errors)
        if resp.type_url in _WILDCARD_TYPES:
            st.last = decoded
            names = {_resource_name(d, resp.type_url) for d, _ in decoded}
            for gone in [n for n in st.ttl if n not in names and n not in ttls]:
                del st.ttl[gone]   # absent from a LDS/CDS state of the world: removed
        self._set_ttls(st, ttls)
        return None

    # -- TTL (Resource.ttl) ---------------------------------------------------------------------
    def _set_ttls(self, st: _TypeState, ttls: dict[str, float | None]) -> None:
        """An accepted response's TTLs: a resource (or heartbeat) with one is due again within
        it, one without clears it (Envoy's TtlManager add/clear)."""
        now = self._clock()
        for name, ttl in ttls.items():
            if ttl is None:
                st.ttl.pop(name, None)
            else:
                st.ttl[name] = now + ttl
        self._arm_ttl()

    def _arm_ttl(self) -> None:
        due = [d for st in self.types.values() for d in st.ttl.values()]
        if not due:
            self._ttl_timer.disable()
            return
        self._ttl_timer.enable(max(0.0, min(due) - self._clock()))

    def _expire(self) -> None:
        """Resources whose TTL passed without a refresh are removed as Envoy's mux removes them:
        every watch of the type gets them as removed resources (version ""). LDS and CDS drop
        those listeners and clusters; RDS, EDS and SDS keep what they have (Envoy ignores a
        removal of a named resource) but still count the update."""
        now = self._clock()
        for type_url, st in self.types.items():
            expired = {n for n, d in st.ttl.items() if d <= now}
            if not expired:
                continue
            for n in expired:
                del st.ttl[n]
            log.warning("xds: %s %s expired (TTL passed without a refresh)", type_url,
                        ", ".join(sorted(expired)))
            self._remove_expired(type_url, st, expired)
        self._arm_ttl()

    def _remove_expired(self, type_url: str, st: _TypeState, expired: set[str]) -> None:
        with self._batch():
            if type_url in _WILDCARD_TYPES:
                st.last = [item for item in st.last if _resource_name(item[0], type_url) not in expired]
                for w in list(st.watches):
                    w.deliver(st.last, "")
            else:
                for w in list(st.watches):
                    w.stats.update_attempt.inc()
                    w.stats.accepted("")


def fail_all(watches: list, refused: list) -> None:
    """A refused response fails every watch of its type, as Envoy's mux calls
    onConfigUpdateFailed(UpdateRejected) on all of them (which also ends their warming)."""
    for w in list(watches):
        if w not in refused:
            w.failed("update_rejected")


def _resource_name(d: dict, type_url: str) -> str | None:
    key = "cluster_name" if type_url == ENDPOINT_TYPE else "name"
    v = d.get(key)
    return v if isinstance(v, str) else None
