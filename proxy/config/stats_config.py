"""Config model of the bootstrap's `stats_config` (`envoy.config.metrics.v3.StatsConfig`).

Job: validate `stats_tags` (tag extraction: a regex, a fixed value, or a default tag named),
`use_all_default_tags` (Envoy's default extractors, on unless false), `stats_matcher` (which stats
exist at all: `reject_all`, `inclusion_list`, `exclusion_list`) and `histogram_bucket_settings`
(bucket bounds per histogram name) into an immutable `StatsConfig`, with Envoy's errors.
`proxy.stats` reads it when the stats registry is built (main thread, at start); nothing here is
consulted per request.

Must not: do I/O. Thread affinity: main thread; the result is immutable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, ErrorCollector, Fields
from proxy.router.matchers import StringMatcher, parse_string_matcher
from proxy.stats.histogram import DEFAULT_BUCKETS
from proxy.stats.tag_extraction import TagProducer, TagSpecifier

__all__ = ["StatsConfig", "StatsMatcher", "BucketRule", "parse_stats_config"]


@dataclass(frozen=True, slots=True)
class StatsMatcher:
    """`config.metrics.v3.StatsMatcher`: `rejects(name)` says whether a stat of that (flat,
    full) name is left out of every output, as Envoy never creates it."""

    reject_all: bool = False
    inclusion_list: tuple[StringMatcher, ...] | None = None
    exclusion_list: tuple[StringMatcher, ...] | None = None

    def rejects(self, name: str) -> bool:
        if self.reject_all:
            return True
        if self.inclusion_list is not None:
            return not any(m.match(name) for m in self.inclusion_list)
        if self.exclusion_list is not None:
            return any(m.match(name) for m in self.exclusion_list)
        return False


@dataclass(frozen=True, slots=True)
class BucketRule:
    """`config.metrics.v3.HistogramBucketSettings`: histograms whose name `match`es use `buckets`."""

    match: StringMatcher
    buckets: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class StatsConfig:
    stats_tags: tuple[TagSpecifier, ...] = ()
    use_all_default_tags: bool = True
    stats_matcher: StatsMatcher | None = None
    histogram_bucket_settings: tuple[BucketRule, ...] = ()

    def tag_producer(self) -> TagProducer:
        return TagProducer(self.stats_tags, self.use_all_default_tags)

    def buckets_for(self, name: str) -> tuple[float, ...]:
        """The bucket bounds of histogram `name`: the first matching rule's, else Envoy's default."""
        for rule in self.histogram_bucket_settings:
            if rule.match.match(name):
                return rule.buckets
        return DEFAULT_BUCKETS


STATS_CONFIG = Message("envoy.config.metrics.v3.StatsConfig", model=StatsConfig, fields=(
    used("stats_tags", why="tag extraction for /stats/prometheus and the dog_statsd sink"),
    used("use_all_default_tags", True),
    used("stats_matcher"),
    used("histogram_bucket_settings"),
))
TAG_SPECIFIER = Message("envoy.config.metrics.v3.TagSpecifier", model=TagSpecifier, fields=(
    used("tag_name"),
    used("regex"),
    used("fixed_value"),
))
STATS_MATCHER = Message("envoy.config.metrics.v3.StatsMatcher", model=StatsMatcher, fields=(
    used("reject_all", False),
    used("exclusion_list"),
    used("inclusion_list"),
))
LIST_STRING_MATCHER = Message("envoy.type.matcher.v3.ListStringMatcher (stats_matcher)", fields=(
    used("patterns", attr="", why="the list of StringMatchers: their own table"),
))
HISTOGRAM_BUCKET_SETTINGS = Message("envoy.config.metrics.v3.HistogramBucketSettings", model=BucketRule,
                                    fields=(
    used("match"),
    used("buckets"),
    refused("bins", "a bin count for circllhist-based exports: ftproxy's histograms are buckets"),
))

_REGEX_MAX_BYTES = 1024   # Envoy's validation of TagSpecifier.regex


def parse_stats_config(raw: Any, path: str) -> StatsConfig:
    f = STATS_CONFIG.read(raw, path)
    errors = ErrorCollector()
    tags = tuple(t for t in (errors.run(_tag_specifier, item, ipath) for item, ipath in f.list("stats_tags"))
                 if isinstance(t, TagSpecifier))
    use_defaults = f.bool("use_all_default_tags", True)
    matcher = errors.run(_stats_matcher, f) if f.has("stats_matcher") else None
    rules = tuple(r for r in (errors.run(_bucket_rule, item, ipath)
                              for item, ipath in f.list("histogram_bucket_settings"))
                  if isinstance(r, BucketRule))
    errors.raise_if_any()
    config = StatsConfig(tags, bool(use_defaults), matcher, rules)
    try:
        config.tag_producer()
    except ValueError as e:  # a tag named without a regex that no default extractor has
        raise ConfigError(f.at("stats_tags"), str(e)) from None
    return config


def _tag_specifier(raw: Any, path: str) -> TagSpecifier:
    f = TAG_SPECIFIER.read(raw, path)
    name = f.str("tag_name", "")
    kind = f.oneof("regex", "fixed_value")
    if kind == "fixed_value":
        return TagSpecifier(name, fixed_value=f.str("fixed_value", ""))
    regex = f.str("regex", "")
    if not name:
        raise ConfigError(f.at("tag_name"), "tag_name cannot be empty")
    if regex:
        if len(regex.encode()) > _REGEX_MAX_BYTES:
            raise ConfigError(f.at("regex"), f"longer than {_REGEX_MAX_BYTES} bytes")
        try:
            re.compile(regex, re.ASCII)
        except re.error as e:
            raise ConfigError(f.at("regex"), f"Invalid regex '{regex}': {e}") from None
        return TagSpecifier(name, regex=regex)
    if not TagProducer.defaults_named(name):
        raise ConfigError(f.at("tag_name"), "No regex specified for tag specifier and no default "
                                            f"regex for name: '{name}'")
    return TagSpecifier(name)


def _string_list(raw: Any, path: str) -> tuple[StringMatcher, ...]:
    f = LIST_STRING_MATCHER.read(raw, path)
    items = f.list("patterns", required=True, min_items=1)
    errors = ErrorCollector()
    out = tuple(errors.run(parse_string_matcher, item, ipath) for item, ipath in items)
    errors.raise_if_any()
    return out


def _stats_matcher(f: Fields) -> StatsMatcher:
    m = STATS_MATCHER.read(f.value("stats_matcher"), f.at("stats_matcher"))
    kind = m.oneof("reject_all", "exclusion_list", "inclusion_list", required=True)
    if kind == "reject_all":
        return StatsMatcher(reject_all=bool(m.bool("reject_all", False)))
    lists = _string_list(m.value(kind), m.at(kind))
    return StatsMatcher(**{kind: lists})


def _bucket_rule(raw: Any, path: str) -> BucketRule:
    f = HISTOGRAM_BUCKET_SETTINGS.read(raw, path)
    match = parse_string_matcher(f.value("match", required=True), f.at("match"))
    bounds: list[float] = []
    for v, vpath in f.list("buckets"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(vpath, f"must be a number greater than 0, got {v!r}")
        if float(v) in bounds:
            raise ConfigError(vpath, f"repeated bucket {v!r}: every bucket must be unique")
        bounds.append(float(v))
    return BucketRule(match, tuple(sorted(bounds)) or DEFAULT_BUCKETS)


def stats_config_from(raw: Mapping[str, Any] | None, path: str = "stats_config") -> StatsConfig:
    return StatsConfig() if raw is None else parse_stats_config(raw, path)
