"""Stats: per-thread stores merged on read, Envoy stat names, text/JSON/Prometheus rendering.

Each thread (worker or main) gets its own `Store` from the process-wide `StatsRegistry` and
is the only writer of it; `StatsRegistry.snapshot()` merges all stores into an immutable
`StatsSnapshot` that the admin endpoints and sinks render. See `store.py` for the thread rules.
Prometheus and dog_statsd print each stat under its tag-extracted name with its tags
(`tag_extraction.py`, the bootstrap's stats_config); `/stats` keeps the flat names.
"""

from .histogram import DEFAULT_BUCKETS, SUPPORTED_QUANTILES, Histogram, HistogramSummary
from .render import extract_tags, render_json, render_prometheus, render_text
from .store import Counter, Gauge, Scope, StatsRegistry, StatsSnapshot, Store
from .tag_extraction import TagProducer, TagSpecifier

__all__ = [
    "DEFAULT_BUCKETS",
    "SUPPORTED_QUANTILES",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSummary",
    "Scope",
    "StatsRegistry",
    "StatsSnapshot",
    "Store",
    "TagProducer",
    "TagSpecifier",
    "extract_tags",
    "render_json",
    "render_prometheus",
    "render_text",
]
