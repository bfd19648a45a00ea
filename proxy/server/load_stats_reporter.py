"""The LoadReportingService client (`cluster_manager.load_stats_config`), as Envoy's
LoadStatsReporter: one bidirectional `envoy.service.load_stats.v3.LoadReportingService/
StreamLoadStats` call from the main thread over the gRPC client xDS uses (GrpcStream, HTTP/2).

- At once (and on every new stream) a LoadStatsRequest with the node (client feature
  `envoy.lrs.supports_send_all_clusters`) and, once a server has answered before, the stats of
  the clusters it named.
- Each LoadStatsResponse names the clusters to report (or `send_all_clusters`) and the
  `load_reporting_interval`; the interval restarts then, and after each report.
- Every interval: a LoadStatsRequest with the node and one ClusterStats per named cluster that
  exists (proxy/upstream/load_report.py computes them), with each host's numbers too when the
  server asked for `report_endpoint_granularity`.
- The LRS cluster's `upstream_cx_*` / `upstream_rq_*` stats count as Envoy's gRPC client, whose
  stream goes through the cluster's router, charges them (proxy/stats/grpc_client_stats.py:
  a connection per stream, `upstream_rq_total` once connected, `upstream_cx_connect_fail`,
  the response's `upstream_rq_<code>`/`_<class>xx` on its headers).
- The stream ends (any reason) -> `load_reporter.errors` (not for a grpc-status OK) and a new
  stream after 5 s (`load_reporter.retries`). Envoy's counters are named from its side:
  `load_reporter.requests` counts the responses received, `load_reporter.responses` the
  requests sent.

The counters of a cluster's hosts are read from the workers' pools (`sample`, as the admin's
/clusters reads them): single int reads of objects the workers own.

Thread affinity: main thread only. Must not: block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..stats.grpc_client_stats import GrpcClientStats
from ..upstream.load_report import ClusterReport, ClusterSample, HostSample, LoadReportState
from ..xds.grpc_stream import GrpcStream
from ..xds.proto import DecodeError, node_message
from ..xds.xds_manager import USER_AGENT_NAME, USER_AGENT_VERSION

from envoy.service.load_stats.v3 import lrs_pb2  # noqa: E402  (after proxy.xds.proto: the backend)

__all__ = ["LoadStatsReporter", "RETRY_DELAY", "encode_request", "sample_cluster"]

log = logging.getLogger("ftproxy.load_reporter")

PATH = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
RETRY_DELAY = 5.0          # seconds: Envoy's RETRY_DELAY_MS
SEND_ALL_FEATURE = "envoy.lrs.supports_send_all_clusters"


def encode_request(node: Any, reports: Iterable[ClusterReport]) -> bytes:
    req = lrs_pb2.LoadStatsRequest()
    req.node.CopyFrom(node)
    for r in reports:
        cs = req.cluster_stats.add()
        cs.cluster_name = r.name
        if r.service_name:
            cs.cluster_service_name = r.service_name
        for loc in r.localities:
            ls = cs.upstream_locality_stats.add()
            region, zone, sub_zone = loc.locality
            if region:
                ls.locality.region = region
            if zone:
                ls.locality.zone = zone
            if sub_zone:
                ls.locality.sub_zone = sub_zone
            ls.priority = loc.priority
            ls.total_successful_requests = loc.success
            ls.total_error_requests = loc.error
            ls.total_requests_in_progress = loc.active
            ls.total_issued_requests = loc.issued
            for ep in loc.endpoints:
                es = ls.upstream_endpoint_stats.add()
                es.address.socket_address.address, es.address.socket_address.port_value = ep.key
                es.total_successful_requests = ep.success
                es.total_error_requests = ep.error
                es.total_requests_in_progress = ep.active
                es.total_issued_requests = ep.issued
        cs.total_dropped_requests = r.dropped
        micros = int(r.interval * 1_000_000)
        cs.load_report_interval.seconds, nanos_micros = divmod(micros, 1_000_000)
        cs.load_report_interval.nanos = nanos_micros * 1000
    return req.SerializeToString()


def sample_cluster(snapshot, workers) -> ClusterSample:
    """A cluster's per-host counters summed over the workers' pools. Its drops: Envoy counts
    only requests refused by the runtime's `upstream.maintenance_mode.<cluster>` (none here:
    ftproxy has no maintenance mode); "no healthy upstream" answers are not drops."""
    hosts = []
    name = snapshot.name
    wcs = [wc for wc in (w.clusters.get(name) for w in list(workers)) if wc is not None]
    for h in snapshot.hosts:
        success = error = active = issued = 0
        for wc in wcs:
            for pool in wc.host_pools(h.key):
                success += pool.rq_success
                error += pool.rq_error
                active += pool.active_requests
                issued += pool.rq_total
        hosts.append(HostSample(h.key, h.priority, h.locality, success, error, active, issued))
    raw = getattr(snapshot.config, "raw", None) or {}
    eds = raw.get("eds_cluster_config") if isinstance(raw, dict) else None
    service = eds.get("service_name", "") if isinstance(eds, dict) else ""
    return ClusterSample(service if isinstance(service, str) else "", tuple(hosts), 0)


class LoadStatsReporter:
    def __init__(self, dispatcher, cluster_name: str, node, store,
                 hosts: Callable[[str], list[tuple[str, int]]], cluster_config: Callable[[str], Any],
                 sample: Callable[[str], ClusterSample | None], cluster_names: Callable[[], Iterable[str]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.cluster_name = cluster_name
        self.node = node_message(node, USER_AGENT_NAME, USER_AGENT_VERSION)
        self.node.client_features.append(SEND_ALL_FEATURE)
        self._hosts, self._cluster_config = hosts, cluster_config
        self._cluster_names = cluster_names
        self._clock = clock
        self.state = LoadReportState(sample)
        self.response = None            # the last LoadStatsResponse (Envoy's message_)
        self.stream: GrpcStream | None = None
        self._opened = False
        self.host_index = 0
        self.stopped = False
        self.c_requests = store.counter("load_reporter.requests")
        self.c_responses = store.counter("load_reporter.responses")
        self.c_errors = store.counter("load_reporter.errors")
        self.c_retries = store.counter("load_reporter.retries")
        # The LRS cluster's stats, as Envoy's gRPC client (a stream through the cluster's
        # router) charges them.
        self._cluster_stats = GrpcClientStats(store, cluster_name)
        self._retry = dispatcher.create_timer(self._on_retry)
        self._report_timer = dispatcher.create_timer(self._send)

    def start(self) -> None:
        self._establish()

    def stop(self) -> None:
        self.stopped = True
        self._retry.disable()
        self._report_timer.disable()
        if self.stream is not None:
            self.stream.reset("shutting down")
            self.stream = None

    # -- the stream ------------------------------------------------------------------------
    def _on_retry(self) -> None:
        self.c_retries.inc()
        self._establish()

    def _establish(self) -> None:
        if self.stopped:
            return
        hosts = self._hosts(self.cluster_name)
        if not hosts:
            log.warning("load reporter: cluster %s has no host", self.cluster_name)
            self._failure()
            return
        address = hosts[self.host_index % len(hosts)]
        self.host_index += 1
        cluster = self._cluster_config(self.cluster_name)
        self.stream = GrpcStream(self.dispatcher, address, self.cluster_name, PATH,
                                 self._on_open, self._on_message, self._on_close,
                                 http2=getattr(cluster, "http2", None),
                                 connect_timeout=getattr(cluster, "connect_timeout", None),
                                 stats=self._cluster_stats.call(),
                                 transport=getattr(cluster, "transport_socket", None))
        self._opened = False
        self._send()

    def _on_open(self) -> None:
        self._opened = True

    def _send(self) -> None:
        """Envoy's sendLoadStatsRequest: the stats of the tracked clusters (none before a first
        response), then a new interval when a response set one."""
        if self.stream is None or self.stopped:
            return
        granular = self.response is not None and self.response.report_endpoint_granularity
        reports = self.state.report(self._clock(), endpoints=granular)
        self.stream.send(encode_request(self.node, reports))
        self.c_responses.inc()
        if self.response is not None:
            self._start_period()

    def _on_message(self, data: bytes) -> None:
        msg = lrs_pb2.LoadStatsResponse()
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            log.warning("load reporter: a malformed LoadStatsResponse: %s", e)
            if self.stream is not None:
                self.stream.reset(f"malformed LoadStatsResponse: {e}")
            return
        log.debug("load reporter: new epoch: clusters %s, send_all %s, interval %s",
                  list(msg.clusters), msg.send_all_clusters, msg.load_reporting_interval)
        self.response = msg
        self._start_period()
        self.c_requests.inc()

    def _start_period(self) -> None:
        msg = self.response
        names = list(self._cluster_names()) if msg.send_all_clusters else list(msg.clusters)
        self.state.on_response(names, self._clock())
        d = msg.load_reporting_interval
        # Envoy: a 0 interval re-arms at once; 1 ms keeps main from spinning.
        self._report_timer.enable(max(0.001, d.seconds + d.nanos / 1e9))

    def _on_close(self, status: int | None, message: str) -> None:
        self.stream = None
        self._report_timer.disable()
        if self.stopped:
            return
        if status == 0:
            log.debug("load reporter: stream closed gracefully: %s", message)
            self._retry.enable(RETRY_DELAY)
            return
        log.warning("load reporter: stream to %s closed: %s, %s; retrying in %.0f s",
                    self.cluster_name, status, message, RETRY_DELAY)
        self._failure()

    def _failure(self) -> None:
        self.c_errors.inc()
        self._retry.enable(RETRY_DELAY)
