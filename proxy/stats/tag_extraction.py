"""Envoy's tag extraction: a stat's flat name -> (tag-extracted name, tags).

Job: `TagProducer` turns `cluster.backend.upstream_rq_200` into
(`cluster.upstream_rq`, [(`envoy.response_code`, `200`), (`envoy.cluster_name`, `backend`)]) the
way Envoy's `Stats::TagProducerImpl` does (source/common/stats/tag_producer_impl.cc and
tag_extractor_impl.cc): the bootstrap's `stats_config.stats_tags` (a regex, a fixed value, or a
default tag's name) after Envoy's default extractors (`use_all_default_tags`, default on;
source/common/config/well_known_names.cc). What the Prometheus exposition and the dog_statsd
sink print; `/stats` keeps the flat names.

The rules, as Envoy's:
- Extractors run in this order: those without a prefix token (their first literal word) in
  insertion order, then those whose prefix is the name's first token. Defaults are inserted
  first (every regex one, then every tokenized one), then the configured `stats_tags`.
- Each extractor matches against the whole original name. A regex's group 1 is cut out of the
  name; its group 2 (or group 1 when there is none) is the value. A tokenized pattern
  (`cluster.$.**`: `*` one token, `**` one or more, `$` the value) cuts the value's token and
  the dot after it (before it, for the last token). A fixed value cuts nothing.
- When several extractors share a tag name, the first that matches wins.
- `envoy.listener_address` does not tag the value `admin` (Envoy's negative match).

The default list is Envoy 1.40's: the regexes are those of its binary, and
tests/differential/test_tag_extraction_envoy.py checks the result against every stat real Envoy
makes for a bootstrap with rbac, rate limits, connection_limit, proxy_protocol, TLS both ways,
virtual clusters and route stat prefixes. Not seen there, so their names and places in the
order are inferred from the binary: health_check `.name.`, scoped_rds, sds, ssl.certificate,
google_grpc, dynamo, mongo, thrift, redis, dns_filter, clientssl.

Thread affinity: a `TagProducer` is immutable but for its result cache, a dict shared by the
threads that render (admin, main): a single-key get / set of a dict is atomic on GIL and
free-threaded CPython and the values are immutable tuples, so two threads racing on one name
only compute it twice. Never called on a worker's request path: tags are computed when stats
are exported (the admin's Prometheus page, a sink's flush).
Must not: do I/O, or import threading/time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TAG_NAMES",
    "TagSpecifier",
    "TagProducer",
    "default_tag_producer",
    "tag_value_is_default",
]

Tags = tuple[tuple[str, str], ...]

_EXPANSIONS = {
    # IPv4 or IPv6 address, then the port after an underscore.
    "<ADDRESS>": r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    "<CIPHER>": r"[\w-]+",
    "<TLS_VERSION>": r"TLSv\d\.\d",
    "<TAG_VALUE>": r"[^\.]+",
    # RE2's [\w-\.]: a route name may hold dots.
    "<ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
    "<SCOPED_ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
    "<PROXY_PROTOCOL_VERSION>": r"\d",
    "<LISTENER_OR_CLUSTER_WITH_NAME>": r"(?:(?:listener|cluster)\..*?)",
}


def _expand(regex: str) -> str:
    for k, v in _EXPANSIONS.items():
        regex = regex.replace(k, v)
    return regex


# (tag name, regex, substr (a cheap pre-check: the name must contain it), negative match).
_DEFAULT_REGEXES: tuple[tuple[str, str, str, str], ...] = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    ("envoy.dynamo_partition_id",
     r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
     ".dynamodb.table.", ""),
    ("envoy.dynamo_operation",
     r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
     ".dynamodb.", ""),
    ("envoy.dynamo_table", r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
     ".dynamodb.", ""),
    ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.ssl_curve", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$", ".ssl.curves.", ""),
    ("envoy.ssl_sigalg", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$", ".ssl.sigalgs.", ""),
    ("envoy.ssl_version", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
     ".ssl.versions.", ""),
    # Envoy 1.40 names this one `cipher_suite` (no `envoy.` prefix: its SSL_CIPHER_SUITE).
    ("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.tls_certificate", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
     ".ssl.certificate.", ""),
    ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
    ("envoy.worker_id",
     r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)"
     r"\.worker_((\d+)\.)", "", ""),
    ("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    ("envoy.rds_route_config", r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$", ".rds.", ""),
    ("envoy.scoped_rds_config",
     r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$", ".scoped_rds.", ""),
    ("envoy.rbac_policy_name",
     r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)"
     r"(allowed|shadow_allowed|denied|shadow_denied)$", ".rbac.", ""),
    ("envoy.rbac_http_prefix", r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?", ".rbac.", ""),
    ("envoy.health_check_name", r"^cluster\.<TAG_VALUE>\.health_check(\.name\.(<TAG_VALUE>))\..+",
     ".health_check.name.", ""),
    # The prefix before the version: the label order Envoy 1.40 prints.
    ("envoy.proxy_protocol_prefix", r"^proxy_proto\.((<TAG_VALUE>)\.).+$", "", ""),
    ("envoy.proxy_protocol_version",
     r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$", "", ""),
    ("envoy.xds_resource_name", r"^sds\.((<TAG_VALUE>)\.).+", "", ""),
)

_DEFAULT_TOKENS: tuple[tuple[str, str], ...] = (
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    ("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
    ("envoy.connection_limit_prefix", "connection_limit.$.**"),
    ("envoy.rbac_prefix", "$.rbac.**"),
    ("envoy.google_grpc_client_prefix", "grpc.$.**"),
)

DEFAULT_TAG_NAMES: frozenset[str] = frozenset(
    [n for n, *_ in _DEFAULT_REGEXES] + [n for n, _ in _DEFAULT_TOKENS])


def tag_value_is_default(name: str) -> bool:
    """Whether `name` is one of Envoy's default tag names (a stats_tags entry may name one
    without a regex to get Envoy's)."""
    return name in DEFAULT_TAG_NAMES


# -- extractors --------------------------------------------------------------------------

def _regex_prefix(regex: str) -> str:
    """Envoy's extractRegexPrefix: `^word\\.` (or `^word(?=\\.)`, or `^word$`) -> `word`."""
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        c = regex[i]
        if not (c.isascii() and (c.isalnum() or c == "_")):
            if i > 1:
                last = i == len(regex) - 1
                rest = regex[i:]
                if (not last and (rest.startswith("\\.") or rest.startswith("(?=\\."))) or (last and c == "$"):
                    return regex[1:i]
            return ""
    return ""


class _Extractor:
    __slots__ = ("name", "prefix", "shared_name")

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix
        self.shared_name = False   # another extractor has this tag name (first match wins)

    def extract(self, name: str, tokens: list[str], tags: list[tuple[str, str]],
                cuts: list[tuple[int, int]]) -> bool:
        raise NotImplementedError


class _RegexExtractor(_Extractor):
    """A default (Envoy's RE2 extractor: an empty group 1 is no match, an empty group 2 means
    group 1, and a `negative` value is not tagged) or a configured regex (`std`: Envoy's
    std::regex extractor, which takes group 2 whenever the regex has one, even empty)."""

    __slots__ = ("regex", "substr", "negative", "std")

    def __init__(self, name: str, regex: str, substr: str = "", negative: str = "",
                 std: bool = False) -> None:
        super().__init__(name, _regex_prefix(regex))
        self.regex = re.compile(regex, re.ASCII)  # \d, \w as RE2 and ECMAScript read them
        self.substr = substr
        self.negative = negative
        self.std = std

    def extract(self, name, tokens, tags, cuts):  # type: ignore[no-untyped-def]
        if self.substr and self.substr not in name:
            return False
        m = self.regex.search(name)
        groups = self.regex.groups
        if m is None or groups < 1:
            return False
        remove = m.group(1) or ""
        if self.std:
            value = (m.group(2) or "") if groups >= 2 else remove
        else:
            if groups < 2 or not remove:   # RE2::PartialMatch with two outputs needs two groups
                return False
            value = m.group(2) or remove
            if self.negative and value == self.negative:
                return False
        start, end = m.span(1) if m.group(1) is not None else (0, 0)
        tags.append((self.name, value))
        cuts.append((start, end))
        return True


class _TokensExtractor(_Extractor):
    """Envoy's TagExtractorTokensImpl (a port of its searchTags)."""

    __slots__ = ("tokens", "match_index")

    def __init__(self, name: str, pattern: str) -> None:
        tokens = pattern.split(".")
        first = tokens[0]
        super().__init__(name, first if first not in ("$", "*", "**") else "")
        self.tokens = tokens
        self.match_index = tokens.index("$")

    def extract(self, name, tokens, tags, cuts):  # type: ignore[no-untyped-def]
        out = [0, len(tokens)]          # Envoy's out-parameters: start (a char index), match index
        if not self._search(tokens, 0, 0, 0, out):
            return False
        start, idx = out
        value = tokens[idx]
        end = start + len(value)
        if idx < len(tokens) - 1:
            end += 1          # "ab." at the start or "cd." in the middle
        elif start > 0:
            start -= 1        # ".ef" at the end
        tags.append((self.name, value))
        cuts.append((start, end))
        return True

    def _search(self, inp: list[str], ii: int, pi: int, ci: int, out: list[int]) -> bool:
        pattern = self.tokens
        while ii < len(inp) and pi < len(pattern):
            if pi == self.match_index:
                out[0], out[1] = ci, ii
            else:
                expected = pattern[pi]
                if expected == "**":
                    if pi == len(pattern) - 1:
                        return True           # a final ** takes every remaining token (one or more)
                    pi += 1
                    while ii < len(inp):      # the rest of the pattern anywhere further on
                        if self._search(inp, ii, pi, ci, out):
                            return True
                        ci += len(inp[ii]) + 1
                        ii += 1
                    return False
                if expected != "*" and expected != inp[ii]:
                    return False
                ci += len(inp[ii]) + 1
            ii += 1
            pi += 1
        return pi == len(pattern) and ii == len(inp)


class _FixedExtractor(_Extractor):
    __slots__ = ("value",)

    def __init__(self, name: str, value: str) -> None:
        super().__init__(name, _regex_prefix(value))  # as Envoy: the value goes where a regex would
        self.value = value

    def extract(self, name, tokens, tags, cuts):  # type: ignore[no-untyped-def]
        tags.append((self.name, self.value))
        return True


# -- the producer ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TagSpecifier:
    """`config.metrics.v3.TagSpecifier`: `regex` (Envoy's std::regex, ECMAScript: compiled with
    Python's re) or `fixed_value`; neither: the default extractors of that name."""

    tag_name: str
    regex: str | None = None
    fixed_value: str | None = None


_CACHE_LIMIT = 200_000
# Stats Envoy creates before it reads the bootstrap's stats_config (its access-log file
# manager's): they never carry a tag, not even a fixed one.
_UNTAGGED_PREFIXES = ("filesystem.",)   # names cached; past it, results are computed each time (bounded memory)


class TagProducer:
    """Tag extraction as configured. Build once (main thread, at config load); `produce()` from
    any thread that exports stats."""

    def __init__(self, specifiers: Iterable[TagSpecifier] = (), use_all_default_tags: bool = True) -> None:
        extractors: list[_Extractor] = []
        if use_all_default_tags:
            extractors += [_RegexExtractor(n, _expand(rx), sub, neg) for n, rx, sub, neg in _DEFAULT_REGEXES]
            extractors += [_TokensExtractor(n, p) for n, p in _DEFAULT_TOKENS]
        for spec in specifiers:
            if spec.fixed_value is not None:
                extractors.append(_FixedExtractor(spec.tag_name, spec.fixed_value))
            elif spec.regex:
                extractors.append(_RegexExtractor(spec.tag_name, spec.regex, std=True))
            else:
                found = self.defaults_named(spec.tag_name)
                if not found:
                    raise ValueError(f"No regex specified for tag specifier and no default regex "
                                     f"for name: '{spec.tag_name}'")
                extractors += found
        seen: dict[str, _Extractor] = {}
        for e in extractors:
            if e.name in seen:
                e.shared_name = True
                seen[e.name].shared_name = True
            else:
                seen[e.name] = e
        self._without_prefix = tuple(e for e in extractors if not e.prefix)
        by_prefix: dict[str, list[_Extractor]] = {}
        for e in extractors:
            if e.prefix:
                by_prefix.setdefault(e.prefix, []).append(e)
        self._by_prefix = {k: tuple(v) for k, v in by_prefix.items()}
        self.fixed_tags: Tags = tuple((e.name, e.value) for e in extractors if isinstance(e, _FixedExtractor))
        self._cache: dict[str, tuple[str, Tags]] = {}

    @staticmethod
    def defaults_named(tag_name: str) -> list[_Extractor]:
        return ([_RegexExtractor(n, _expand(rx), sub, neg) for n, rx, sub, neg in _DEFAULT_REGEXES if n == tag_name]
                + [_TokensExtractor(n, p) for n, p in _DEFAULT_TOKENS if n == tag_name])

    def produce(self, name: str) -> tuple[str, Tags]:
        """(tag-extracted name, ((tag name, value), ...)) in Envoy's order."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        result = (name, ()) if name.startswith(_UNTAGGED_PREFIXES) else self._produce(name)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[name] = result
        return result

    def _produce(self, name: str) -> tuple[str, Tags]:
        tags: list[tuple[str, str]] = []
        cuts: list[tuple[int, int]] = []
        tokens = name.split(".")
        dup: set[str] = set()
        dot = name.find(".")
        extractors = self._without_prefix
        if dot >= 0:
            extractors = extractors + self._by_prefix.get(name[:dot], ())
        for e in extractors:
            if e.shared_name and e.name in dup:
                continue
            if e.extract(name, tokens, tags, cuts) and e.shared_name:
                dup.add(e.name)
        if not cuts:
            return name, tuple(tags)
        keep = bytearray(b"\x01") * len(name)
        for start, end in cuts:
            keep[start:end] = bytes(end - start)
        return "".join(ch for ch, k in zip(name, keep) if k), tuple(tags)


# Built at import (start-up, main thread): the producer of a registry made without a stats_config.
_DEFAULT = TagProducer()


def default_tag_producer() -> TagProducer:
    """The producer of a bootstrap without `stats_config` (Envoy's default extractors only)."""
    return _DEFAULT
