"""proxy/upstream/cluster_stats.py: a cluster's per-response stats (plain, external.*, internal.*)
outlive the ClusterStats that charged them, as Envoy's do across a cluster update."""

from __future__ import annotations

from proxy.stats.store import Store
from proxy.upstream.cluster_stats import ClusterStats


class _Pool:
    rq_success = rq_error = 0


def _counters(store: Store) -> dict[str, int]:
    return {name: c.value for name, c in store.tables()[0] if name.startswith("cluster.c.")}


def test_a_rebuilt_cluster_goes_on_counting_in_the_same_stats():
    store = Store("worker_0")
    first = ClusterStats(store, "c")
    first.record_response(200, _Pool())
    first.record_response(503, _Pool(), internal=True)
    second = ClusterStats(store, "c")          # a CDS update rebuilds the worker's cluster
    second.record_response(200, _Pool())
    first.record_response(200, _Pool())        # a request still on the old one ends
    c = _counters(store)
    assert c["cluster.c.upstream_rq_200"] == 3 and c["cluster.c.external.upstream_rq_200"] == 3
    assert c["cluster.c.upstream_rq_2xx"] == 3 and c["cluster.c.upstream_rq_5xx"] == 1
    assert c["cluster.c.internal.upstream_rq_503"] == 1 and c["cluster.c.upstream_rq_completed"] == 4
    assert "cluster.c.internal.upstream_rq_200" not in c   # a half appears at its first charge
