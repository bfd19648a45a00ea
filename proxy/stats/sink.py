"""The stats sink seam: what the server's flush timer calls on each configured stats sink, and
what a sink that talks to a cluster is given at start.

Contract (main thread only): `flush(snapshot)` every `stats_flush_interval` with the merged
StatsSnapshot (immutable); it must not block (UDP sends, or bytes queued on a main-thread
connection). `close()` once at shutdown. A sink that needs the server (a gRPC stream to a
cluster) also has `start(context)`, called once on main before the first flush.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["StatsSink", "ConnectedSink", "SinkContext", "SAMPLE_SINKS"]

# Sinks that send every histogram sample (Envoy's onHistogramComplete): with one configured,
# the stats registry's histograms keep their samples for the flush (StatsSnapshot.samples).
SAMPLE_SINKS = frozenset({"envoy.stat_sinks.statsd", "envoy.stat_sinks.dog_statsd"})


class StatsSink(Protocol):
    def flush(self, snapshot: Any) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may use of the server, all main-thread objects: the main Dispatcher, the
    main stats store, the bootstrap's node, a cluster's hosts ((address, port) list) and its
    parsed config (or None), and the wall clock."""

    dispatcher: Any
    store: Any
    node: Any
    cluster_hosts: Callable[[str], list[tuple[str, int]]]
    cluster_config: Callable[[str], Any]
    wall_clock: Callable[[], float]


class ConnectedSink(StatsSink, Protocol):
    def start(self, context: SinkContext) -> None: ...
