"""HostOutlierMonitor: what workers report about one upstream host (Envoy's DetectorHostMonitor,
worker half).

Job: count a host's consecutive failures across all workers, as Envoy's atomics do, and tell
main the moment one of them reaches its threshold (`notify(key, kind)`, which posts to main:
consecutive ejections do not wait for the interval); and count each worker's requests and
successes for the success-rate and failure-percentage detectors, which main harvests on its
interval timer.

What counts (Envoy's router and putResult):
- a response status (`put_http_code`; for a gRPC request whose answer carries grpc-status in
  its headers, that status mapped by `grpc_http_status`): 5xx counts toward consecutive_5xx, 502/503/504 also
  toward consecutive_gateway_failure; anything else resets both;
- a connect failure or reset (`put_connect_failed`) and a timeout (`put_timeout`): local-origin
  failures. Without split_external_local_origin_errors they count as a 503 and a 504
  response; with it, toward consecutive_local_origin_failure and the local-origin success rate;
- a connection that got a stream (`put_connect_success`): with the split on, a local-origin
  success (resets consecutive_local_origin_failure); else nothing;
- a TCP proxy connection made (`put_connect_success_final`): a local-origin success with the
  split, else a success like a 200. The TCP proxy reports connect failures and timeouts too.

Thread affinity: any worker; main calls `reset` and `harvest`. `lock` (one per host) guards
the three consecutive counters and is held for a compare-and-add, never across a call out;
a success reads them without it first (a stale zero is the same as the success having come
first) and takes it only to clear a non-zero counter. The request counts are per worker
(`buckets[worker index]`, a list only that worker writes; main only reads them), so the
common path takes no lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .outlier_config import OutlierDetectionConfig
from .outlier_detector import (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE,
                               CONSECUTIVE_LOCAL_ORIGIN_FAILURE, Sample)

__all__ = ["HostOutlierMonitor", "grpc_http_status"]

# Envoy's Grpc::Utility::grpcToHttpStatus: a grpc-status in a response's headers (a
# trailers-only answer to a gRPC request) is judged as this HTTP status.
_GRPC_TO_HTTP = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)


def grpc_http_status(value: bytes) -> int:
    """The HTTP status outlier detection counts for a grpc-status header value (500 if not
    a known code)."""
    v = value.strip()
    if v.isdigit() and int(v) < len(_GRPC_TO_HTTP):
        return _GRPC_TO_HTTP[int(v)]
    return 500

Notify = Callable[[tuple, str], None]


class HostOutlierMonitor:
    __slots__ = ("key", "lock", "consecutive_5xx", "consecutive_gateway_failure",
                 "consecutive_local_origin_failure", "split", "track_rates", "buckets",
                 "_t5xx", "_tgw", "_tlo", "_notify", "_seen")

    def __init__(self, key: tuple, config: OutlierDetectionConfig, notify: Notify) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0
        self.split = config.split_external_local_origin_errors
        # Set by main: the cluster has enough hosts for a success-rate or failure-percentage
        # run (else Envoy's detectors return at once and the counts would go unread).
        self.track_rates = False
        # worker index -> [total, success, local_total, local_success], monotonic.
        self.buckets: dict[int, list[int]] = {}
        self._t5xx = config.consecutive_5xx
        self._tgw = config.consecutive_gateway_failure
        self._tlo = config.consecutive_local_origin_failure
        self._notify = notify
        self._seen = (0, 0, 0, 0)   # main: the sums at the last harvest

    # -- workers -----------------------------------------------------------------------------
    def _bucket(self, worker: int) -> list[int]:
        b = self.buckets.get(worker)
        if b is None:
            b = self.buckets.setdefault(worker, [0, 0, 0, 0])
        return b

    def put_http_code(self, status: int, worker: int) -> None:
        if self.track_rates:
            b = self._bucket(worker)
            b[0] += 1
            if status < 500:
                b[1] += 1
        if status >= 500:
            self._failure_5xx(status)
        elif self.consecutive_5xx or self.consecutive_gateway_failure:
            with self.lock:
                self.consecutive_5xx = self.consecutive_gateway_failure = 0

    def put_connect_failed(self, worker: int) -> None:
        if self.split:
            self._local_failure(worker)
        else:
            self.put_http_code(503, worker)

    def put_timeout(self, worker: int) -> None:
        if self.split:
            self._local_failure(worker)
        else:
            self.put_http_code(504, worker)

    def put_connect_success(self, worker: int) -> None:
        if not self.split:
            return
        if self.track_rates:
            b = self._bucket(worker)
            b[2] += 1
            b[3] += 1
        if self.consecutive_local_origin_failure:
            with self.lock:
                self.consecutive_local_origin_failure = 0

    def put_connect_success_final(self, worker: int) -> None:
        """A connection that is the whole transaction (TCP proxy): a 200 without the split,
        a local-origin success with it."""
        if self.split:
            self.put_connect_success(worker)
        else:
            self.put_http_code(200, worker)

    def _failure_5xx(self, status: int) -> None:
        fired = []
        with self.lock:
            if 502 <= status <= 504:
                self.consecutive_gateway_failure += 1
                if self.consecutive_gateway_failure == self._tgw:
                    fired.append(CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.consecutive_gateway_failure = 0
            self.consecutive_5xx += 1
            if self.consecutive_5xx == self._t5xx:
                fired.append(CONSECUTIVE_5XX)
        for kind in fired:
            self._notify(self.key, kind)

    def _local_failure(self, worker: int) -> None:
        if self.track_rates:
            self._bucket(worker)[2] += 1
        with self.lock:
            self.consecutive_local_origin_failure += 1
            fired = self.consecutive_local_origin_failure == self._tlo
        if fired:
            self._notify(self.key, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    # -- main -------------------------------------------------------------------------------------
    def reset(self, kinds: tuple[str, ...]) -> None:
        with self.lock:
            for kind in kinds:
                setattr(self, kind, 0)

    def harvest(self) -> Sample:
        """Main, on the interval: the requests since the previous harvest, over all workers."""
        sums = [0, 0, 0, 0]
        for b in list(self.buckets.values()):
            for i in range(4):
                sums[i] += b[i]
        last = self._seen
        self._seen = tuple(sums)
        return Sample(sums[0] - last[0], sums[1] - last[1], sums[2] - last[2], sums[3] - last[3])
