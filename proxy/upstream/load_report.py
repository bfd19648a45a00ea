"""Load reports as Envoy's LoadStatsReporter computes them, without I/O.

`LoadReportState` holds the clusters a LoadReportingService (LRS) server asked for (by name, or
all with `send_all_clusters`), each with the start of its current report interval, and the
per-host counters at the last report ("latched", as Envoy's counters latch). `report(now)`
turns the counters sampled now into one `ClusterReport` per tracked cluster that exists:
- per (priority, locality) of the cluster's hosts (priorities in order, localities in the
  order the hosts list them): the
  successful, error and issued requests since the last report (deltas of the cumulative
  per-host counters rq_success, rq_error, rq_total) and the requests in progress (rq_active,
  a gauge); a host with all four zero adds nothing, and a locality is reported only when
  something was issued or is in progress (Envoy 1.40, report_load_when_rq_active_is_non_zero);
- the requests dropped since the last report (Envoy's upstream_rq_dropped: requests refused
  by maintenance mode);
- the measured interval (`now` less the interval's start), which then restarts.
`on_response` is Envoy's startLoadReportPeriod: clusters tracked already keep their start and
counters; a newly named one starts now, its counters latched (what came before is not reported).

Counters are sums over the workers' connection pools; when a pool goes away its counts go with
it, so a sum that went down is taken as a new base (that interval reports nothing for the host).

Thread affinity: main thread (one LoadStatsReporter owns one). Must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["HostSample", "ClusterSample", "EndpointReport", "LocalityReport", "ClusterReport", "LoadReportState"]


@dataclass(frozen=True, slots=True)
class HostSample:
    """One host's counters now: success, error and issued are cumulative, active a gauge."""
    key: tuple[str, int]
    priority: int
    locality: tuple[str, str, str]      # (region, zone, sub_zone)
    success: int
    error: int
    active: int
    issued: int


@dataclass(frozen=True, slots=True)
class ClusterSample:
    service_name: str                   # EDS service_name when set explicitly, else ""
    hosts: tuple[HostSample, ...]
    dropped: int                        # cumulative


@dataclass(frozen=True, slots=True)
class EndpointReport:
    """One host's numbers (`report_endpoint_granularity`)."""
    key: tuple[str, int]
    success: int
    error: int
    active: int
    issued: int


@dataclass(frozen=True, slots=True)
class LocalityReport:
    priority: int
    locality: tuple[str, str, str]
    success: int
    error: int
    active: int
    issued: int
    endpoints: tuple[EndpointReport, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterReport:
    name: str
    service_name: str
    localities: tuple[LocalityReport, ...]
    dropped: int
    interval: float                     # seconds


class LoadReportState:
    def __init__(self, sample: Callable[[str], ClusterSample | None]) -> None:
        self._sample = sample                  # a cluster's counters now (None: no such cluster)
        self.tracked: dict[str, float] = {}    # cluster -> start of its report interval
        self._hosts: dict[tuple[str, tuple[str, int]], tuple[int, int, int]] = {}
        self._dropped: dict[str, int] = {}

    def on_response(self, names: Iterable[str], now: float) -> None:
        """A (new) interval for the clusters `names` (the response's, or every cluster)."""
        old = self.tracked
        self.tracked = {}
        for name in names:
            if name in self.tracked:
                continue
            if name in old:
                self.tracked[name] = old[name]
                continue
            self.tracked[name] = now
            s = self._sample(name)
            if s is not None:                  # latch: earlier requests are not reported
                self._latch(name, s)

    def _latch(self, name: str, s: ClusterSample) -> None:
        for h in s.hosts:
            self._hosts[(name, h.key)] = (h.success, h.error, h.issued)
        self._dropped[name] = s.dropped

    def report(self, now: float, endpoints: bool = False) -> list[ClusterReport]:
        """The tracked clusters' reports; `endpoints` (the server's report_endpoint_granularity):
        each locality also lists its hosts that had something to report."""
        out = []
        for name, start in list(self.tracked.items()):
            s = self._sample(name)
            if s is None:
                continue                       # Envoy: "Cluster ... does not exist"
            groups: dict[tuple[int, tuple[str, str, str]], list] = {}
            for h in s.hosts:
                key = (name, h.key)
                b_success, b_error, b_issued = self._hosts.get(key, (0, 0, 0))
                success = _delta_one(b_success, h.success)
                error = _delta_one(b_error, h.error)
                issued = _delta_one(b_issued, h.issued)
                self._hosts[key] = (h.success, h.error, h.issued)
                g = groups.setdefault((h.priority, h.locality), [0, 0, 0, 0, []])
                if success + error + h.active + issued:
                    g[0] += success
                    g[1] += error
                    g[2] += h.active
                    g[3] += issued
                    if endpoints:
                        g[4].append(EndpointReport(h.key, success, error, h.active, issued))
            # Priority levels in order, localities in the order the hosts list them.
            localities = tuple(LocalityReport(prio, loc, *g[:4], tuple(g[4])) for (prio, loc), g in
                               sorted(groups.items(), key=lambda item: item[0][0]) if g[3] or g[2])
            dropped = _delta_one(self._dropped.get(name, 0), s.dropped)
            self._dropped[name] = s.dropped
            out.append(ClusterReport(name, s.service_name, localities, dropped, max(0.0, now - start)))
            self.tracked[name] = now
        return out


def _delta_one(before: int, total: int) -> int:
    """What a cumulative counter gained since `before`; a sum that went down (a pool gone) is
    a new base: what is above zero then is counted."""
    return total - before if total >= before else 0
