"""Histogram samples kept for statsd sinks (proxy/stats/histogram.py SampledHistogram, the
registry's `snapshot(take_samples=True)`): only when asked for, taken once, bounded, lossless
while a worker records."""

from __future__ import annotations

import threading

from proxy.stats import StatsRegistry
from proxy.stats.histogram import MAX_SAMPLES, Histogram, SampledHistogram


def test_without_a_statsd_sink_histograms_keep_no_samples():
    reg = StatsRegistry()
    h = reg.new_store("w").histogram("cluster.c.upstream_rq_time")
    assert type(h) is Histogram     # the request path's record() is the plain one
    h.record(3.0)
    assert reg.snapshot(take_samples=True).samples == {}


def test_samples_are_taken_once_and_aliases_get_them_under_both_names():
    reg = StatsRegistry(keep_samples=True)
    store = reg.new_store("w")
    h = store.histogram("cluster.c.upstream_rq_time")
    store.alias("cluster.c.external.upstream_rq_time", h)
    assert type(h) is SampledHistogram
    for v in (1.5, 7.0):
        h.record(v)
    assert reg.snapshot().samples == {}          # the admin's reads take nothing
    snap = reg.snapshot(take_samples=True)
    assert dict(snap.samples) == {"cluster.c.upstream_rq_time": (1.5, 7.0),
                                  "cluster.c.external.upstream_rq_time": (1.5, 7.0)}
    assert snap.histograms["cluster.c.upstream_rq_time"].count == 2   # buckets as before
    assert reg.snapshot(take_samples=True).samples == {}


def test_rejected_histograms_send_no_samples():
    reg = StatsRegistry(keep_samples=True, rejects=lambda name: name.startswith("http."))
    reg.new_store("w").histogram("http.x.downstream_rq_time").record(1.0)
    assert reg.snapshot(take_samples=True).samples == {}


def test_at_most_max_samples_wait_the_oldest_go():
    h = SampledHistogram()
    for v in range(MAX_SAMPLES + 5):
        h.record(float(v))
    taken = h.take_samples()
    assert len(taken) == MAX_SAMPLES and taken[0] == 5.0 and h.count == MAX_SAMPLES + 5


def test_no_sample_is_lost_or_taken_twice_while_a_worker_records():
    reg = StatsRegistry(keep_samples=True)
    h = reg.new_store("worker").histogram("h")
    n = 10_000
    done = threading.Event()

    def worker() -> None:
        for v in range(n):
            h.record(float(v))
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    taken: list[float] = []
    while not done.is_set():
        taken.extend(reg.snapshot(take_samples=True).samples.get("h", ()))
    t.join()
    taken.extend(reg.snapshot(take_samples=True).samples.get("h", ()))
    assert taken == [float(v) for v in range(n)]
