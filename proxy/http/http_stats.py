"""Per-worker stat handles for one HTTP connection manager (`http.<stat_prefix>.*`).

Resolved once per worker per HCM so that the request path only does `c.value += 1`.
Names are Envoy's. Thread affinity: owned by one worker (its Store).
"""

from __future__ import annotations

__all__ = ["HcmStats"]

_COUNTERS = (
    "downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_http2_total",
    "downstream_cx_destroy",
    "downstream_cx_destroy_remote", "downstream_cx_destroy_local", "downstream_cx_protocol_error",
    "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total", "downstream_cx_idle_timeout",
    "downstream_cx_drain_close", "downstream_cx_upgrades_total", "downstream_rq_total",
    "downstream_rq_http1_total", "downstream_rq_http2_total", "downstream_rq_completed", "downstream_rq_1xx", "downstream_rq_2xx",
    "downstream_rq_3xx", "downstream_rq_4xx", "downstream_rq_5xx", "downstream_rq_timeout",
    "downstream_rq_idle_timeout", "downstream_rq_header_timeout", "downstream_rq_max_duration_reached", "downstream_rq_too_large", "downstream_rq_rx_reset",
    "downstream_rq_tx_reset", "downstream_rq_ws_on_non_ws_route", "downstream_rq_non_relative_path",
    "downstream_rq_rejected_via_ip_detection",
    "no_route", "no_cluster", "rq_redirect", "rq_direct_response", "rq_total", "rs_too_large",
    "downstream_rq_failed_path_normalization", "downstream_rq_redirected_with_normalized_path",
    # the router's internal redirects passed through, by reason (redirect_follow.py)
    "passthrough_internal_redirect_bad_location", "passthrough_internal_redirect_unsafe_scheme",
    "passthrough_internal_redirect_too_many_redirects", "passthrough_internal_redirect_no_route",
    "passthrough_internal_redirect_predicate",
)
_GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_cx_http2_active",
           "downstream_rq_active",
           "downstream_cx_upgrades_active")


class HcmStats:
    __slots__ = _COUNTERS + _GAUGES + ("rq_class", "downstream_rq_time", "downstream_cx_length_ms",
                                       "listener_rq", "by_protocol", "underscores")

    def __init__(self, store, stat_prefix: str, listener_stat_prefix: str | None = None) -> None:
        scope = store.scope(f"http.{stat_prefix}")
        for name in _COUNTERS:
            setattr(self, name, scope.counter(name))
        for name in _GAUGES:
            setattr(self, name, scope.gauge(name))
        # index by status // 100
        self.rq_class = (None, self.downstream_rq_1xx, self.downstream_rq_2xx, self.downstream_rq_3xx,
                         self.downstream_rq_4xx, self.downstream_rq_5xx)
        self.downstream_rq_time = scope.histogram("downstream_rq_time", "ms")
        # Envoy's per-listener HTTP stats, listener.<listener prefix>.http.<prefix>.*:
        # [0] downstream_rq_completed, then by status // 100 (None without a listener prefix).
        self.listener_rq = None
        if listener_stat_prefix is not None:
            lscope = store.scope(f"listener.{listener_stat_prefix}.http.{stat_prefix}")
            self.listener_rq = tuple(lscope.counter(n) for n in (
                "downstream_rq_completed", "downstream_rq_1xx", "downstream_rq_2xx",
                "downstream_rq_3xx", "downstream_rq_4xx", "downstream_rq_5xx"))
        self.downstream_cx_length_ms = scope.histogram("downstream_cx_length_ms", "ms")
        # A codec's protocol (ServerCodec.protocol) -> its (connections total, connections
        # active, requests total), counted once the first bytes made the codec (as Envoy:
        # a connection that sends nothing is no HTTP/1 connection).
        # Headers with underscores are the codec's stats in Envoy, shared by every HCM:
        # http1.* / http2.* (requests rejected, headers dropped), by the codec's protocol.
        self.underscores = {
            proto: (store.counter(f"{codec}.requests_rejected_with_underscores_in_headers"),
                    store.counter(f"{codec}.dropped_headers_with_underscores"))
            for proto, codec in (("HTTP/1.1", "http1"), ("HTTP/2", "http2"))}
        self.by_protocol = {"HTTP/1.1": (self.downstream_cx_http1_total,
                                         self.downstream_cx_http1_active,
                                         self.downstream_rq_http1_total),
                            "HTTP/2": (self.downstream_cx_http2_total,
                                       self.downstream_cx_http2_active,
                                       self.downstream_rq_http2_total)}
