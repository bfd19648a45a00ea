"""proxy/stats/grpc_client_stats.py and server_stats.py: what a call's life charges, and the
certificate-expiry gauge's rule (no sockets: the integration tests compare with Envoy)."""

from __future__ import annotations

from proxy.stats.grpc_client_stats import GrpcClientStats
from proxy.stats.server_stats import NO_CERTIFICATE_DAYS, ServerStats, first_expiry_days
from proxy.stats.store import StatsRegistry


def _values(store) -> dict[str, int]:
    counters, gauges, _ = store.tables()
    return {**{n: c.value for n, c in counters}, **{n: g.value for n, g in gauges}}


def test_a_call_that_connects_answers_and_ends():
    store = StatsRegistry().new_store("main")
    call = GrpcClientStats(store, "als").call()
    call.on_sent(100)                 # the preface, before the connection is up
    call.on_connected()
    call.on_sent(20)
    call.on_received(9)
    call.on_response(b"200")
    call.on_end()
    call.on_end()                     # idempotent
    v = {k[len("cluster.als."):]: x for k, x in _values(store).items()}
    assert v == {"upstream_cx_total": 1, "upstream_cx_http2_total": 1, "upstream_rq_pending_total": 1,
                 "upstream_rq_total": 1, "upstream_cx_tx_bytes_total": 120,
                 "upstream_cx_rx_bytes_total": 9, "upstream_rq_completed": 1, "upstream_rq_2xx": 1,
                 "upstream_rq_200": 1, "upstream_cx_destroy": 1, "upstream_cx_active": 0,
                 "upstream_rq_pending_active": 0, "upstream_rq_active": 0}


def test_a_call_whose_connection_fails_is_a_local_503_and_sent_nothing():
    store = StatsRegistry().new_store("main")
    call = GrpcClientStats(store, "ms").call()
    call.on_sent(50)
    call.on_end()
    v = {k[len("cluster.ms."):]: x for k, x in _values(store).items() if x}
    assert v == {"upstream_cx_total": 1, "upstream_cx_http2_total": 1, "upstream_rq_pending_total": 1,
                 "upstream_cx_connect_fail": 1, "upstream_rq_pending_failure_eject": 1,
                 "upstream_rq_completed": 1, "upstream_rq_5xx": 1, "upstream_rq_503": 1,
                 "upstream_cx_destroy": 1}


def test_first_certificate_expiry_is_the_fewest_days_of_any_certificate():
    assert first_expiry_days([]) == NO_CERTIFICATE_DAYS == 2**32 - 1
    certs = [{"ca_cert": [{"days_until_expiration": "300"}], "cert_chain": []},
             {"ca_cert": [], "cert_chain": [{"days_until_expiration": "12"}]}]
    assert first_expiry_days(certs) == 12
    store = StatsRegistry().new_store("main")
    stats = ServerStats(store)
    stats.refresh(certs)
    stats.initialized(0.25)
    v = _values(store)
    assert v["server.days_until_first_cert_expiring"] == 12
    assert v["server.memory_physical_size"] > 0 and v["server.memory_allocated"] > 0
    _, _, histograms = store.tables()
    assert dict(histograms)["server.initialization_time_ms"].count == 1
