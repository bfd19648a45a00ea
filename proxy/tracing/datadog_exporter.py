"""Datadog span export: workers batch finished spans and post them to the main thread, which
sends them to the Datadog agent as Envoy 1.40's tracer (dd-trace-cpp 2.1) does.

- Workers hand finished spans over in batches (exporter.SpanBatcher, shared with Zipkin).
- Main (`DatadogExporter`): every FLUSH_INTERVAL (dd-trace-cpp's flush interval, 2 s) the spans
  gathered are one `POST /v0.4/traces` (msgpack: an array of trace chunks, datadog.py) to a
  host of `collector_cluster`, with Host `collector_hostname` (default: the cluster's name),
  `Content-Type: application/msgpack`, `Datadog-Meta-Lang`, `Datadog-Meta-Lang-Version`,
  `Datadog-Meta-Tracer-Version` and `X-Datadog-Trace-Count`, within REQUEST_TIMEOUT (2 s).
  One report is out at a time (Envoy's may overlap); spans gathered meanwhile wait for the
  next tick, at most MAX_PENDING_SPANS of them (past it the pending spans are dropped and
  counted as a failed report, as the Zipkin exporter does; dd-trace-cpp's buffer has no
  bound).
- The agent's answer: a 200's JSON `rate_by_service` ({"service:<s>,env:<e>": rate}, the
  `service:,env:` key the default) becomes the sampling rates the workers read
  (`rates`, an immutable datadog.AgentRates replaced whole); an answer that does not parse
  changes nothing.
- Stats (Envoy's names, `tracing.datadog.*`): `reports_sent` (answered 200),
  `reports_dropped` (answered anything else; no host in the cluster counts here, as Envoy's
  async client answers 503), `reports_failed` (no answer: connection failed, reset or timed
  out), `reports_skipped_no_cluster`.

Thread affinity: `batcher_for` on any worker (under `_batchers_lock`); `rates` is read by
workers (an attribute read of an immutable object); everything else on main.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import uuid

from .. import __version__
from . import exporter as common
from .datadog import AgentRates, Process, encode_traces

__all__ = ["DatadogExporter", "TRACES_PATH", "FLUSH_INTERVAL"]

log = logging.getLogger("ftproxy.tracing")

TRACES_PATH = b"/v0.4/traces"
FLUSH_INTERVAL = 2.0
REQUEST_TIMEOUT = 2.0
MAX_PENDING_SPANS = common.MAX_PENDING_SPANS
DEFAULT_KEY = "service:,env:"
TRACER_VERSION = f"ftproxy/{__version__}"


def parse_rates(body: bytes) -> AgentRates | None:
    """The agent's `rate_by_service`, None when the answer is not one (dd-trace-cpp logs it
    and keeps its rates)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    rates = doc.get("rate_by_service")
    if rates is None:
        return AgentRates()
    if not isinstance(rates, dict):
        return None
    out = {}
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return None
        out[key] = float(value)
    return AgentRates(out, out.get(DEFAULT_KEY))


class DatadogExporter:
    def __init__(self, config, local, main, store, clusters) -> None:
        """`local`: this process's node (node_id and zone tags); `main`: the main Dispatcher;
        `store`: the main stats store; `clusters()`: the cluster snapshots (main thread)."""
        self.config = config
        self.main = main
        self.clusters = clusters
        self.rates = AgentRates()
        self.process = Process(service=config.service_name, version=f"ftproxy {__version__}",
                               runtime_id=str(uuid.uuid4()), process_id=os.getpid(),
                               node_id=local.node_id, zone=local.zone)
        scope = store.scope("tracing.datadog")
        for name in ("reports_sent", "reports_dropped", "reports_failed",
                     "reports_skipped_no_cluster"):
            setattr(self, name, scope.counter(name))
        host = (config.collector_hostname or config.collector_cluster).encode("latin-1")
        self.head = (b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/msgpack\r\n"
                     b"datadog-meta-lang: python\r\ndatadog-meta-lang-version: %s\r\n"
                     b"datadog-meta-tracer-version: %s\r\n" % (
                         TRACES_PATH, host, platform.python_version().encode(),
                         TRACER_VERSION.encode()))
        self.pending: list = []
        self.in_flight: common.CollectorPost | None = None
        self._next_host = 0
        self._timer = None
        self._batchers_lock = threading.Lock()  # guards _batchers (registered from workers)
        self._batchers: dict[int, common.SpanBatcher] = {}

    def batcher_for(self, worker) -> common.SpanBatcher:
        with self._batchers_lock:
            b = self._batchers.get(id(worker))
            if b is None:
                b = self._batchers[id(worker)] = common.SpanBatcher(self, worker.dispatcher)
            return b

    # -- main thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._timer = self.main.create_timer(self._on_timer)
        self._timer.enable(FLUSH_INTERVAL)

    def receive(self, spans: list) -> None:
        pending = self.pending
        pending.extend(spans)
        if len(pending) > MAX_PENDING_SPANS:
            self.pending = []
            self.reports_failed.inc()

    def _on_timer(self) -> None:
        try:
            if self.in_flight is None:
                self.flush()
        finally:
            self._timer.enable(FLUSH_INTERVAL)

    def flush(self) -> None:
        spans, self.pending = self.pending, []
        if not spans:
            return
        cluster = self.clusters().get(self.config.collector_cluster)
        if cluster is None:
            self.reports_skipped_no_cluster.inc()
            return
        hosts = cluster.lb_hosts or cluster.hosts
        if not hosts:
            self.reports_dropped.inc()
            return
        try:
            body, count = encode_traces(spans, self.process)
        except Exception:  # a bug here must not stop the main loop
            log.exception("datadog: a report failed to encode")
            return
        host = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        request = self.head + (b"x-datadog-trace-count: %d\r\ncontent-length: %d\r\n"
                               b"connection: close\r\n\r\n" % (count, len(body))) + body
        post = self.in_flight = common.CollectorPost(self, (host.address, host.port), request,
                                                     REQUEST_TIMEOUT, read_body=True)
        post.start()

    def report_done(self, post, status: int | None) -> None:
        if self.in_flight is post:
            self.in_flight = None
        if status is None:
            self.reports_failed.inc()
            return
        if status != 200:
            self.reports_dropped.inc()
            return
        self.reports_sent.inc()
        rates = parse_rates(post.body())
        if rates is None:
            log.debug("datadog agent: an answer without valid rate_by_service")
            return
        if rates.default is None and self.rates.default is not None:
            # dd-trace-cpp keeps its default rate when an answer has none.
            rates = AgentRates(rates.by_key, self.rates.default)
        self.rates = rates

    def close(self) -> None:
        if self._timer is not None:
            self._timer.disable()
        if self.in_flight is not None:
            self.in_flight.abort()
