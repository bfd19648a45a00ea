"""`envoy.filters.http.compressor` with the `envoy.compression.{gzip,brotli,zstd}.compressor`
libraries: responses compressed for clients that accept it, as Envoy does.

Config `envoy.extensions.filters.http.compressor.v3.Compressor`: `compressor_library` (gzip,
brotli or zstd, with their own fields: compression_libraries.py), `response_direction_config`
(`common_config`: `min_content_length` (30), `content_type` (Envoy's default list when empty),
`enabled`'s default; `disable_on_etag_header`, `remove_accept_encoding_header`,
`uncompressible_response_codes`), and the deprecated top-level spellings of those. Request
compression (`request_direction_config` enabled) is refused; as Envoy, every request counts
`request.not_compressed` then.

Several compressor filters in one chain (say gzip, br and zstd) negotiate as Envoy's do: the
first of them to see the response chooses, from the request's Accept-Encoding and the filters
whose content types admit the response, the encoding of the highest q (`*`: the first filter's
in chain order; q=0 rules one out); each filter compresses only when the choice is its own
encoding, and counts `header_compressor_used` or `header_compressor_overshadowed`.
A response is compressed when its encoding was chosen and the response has no
content-encoding, a compressible content-type, no `cache-control: no-transform`, a status not
listed as uncompressible, and a content-length (if any) of at least `min_content_length`;
then content-length goes, `content-encoding: gzip|br|zstd` comes, a strong ETag is dropped
(or, with `disable_on_etag_header`, an ETag prevents compression).
`vary: Accept-Encoding` is added to every response that could have been compressed, as Envoy.
Each body chunk is compressed and flushed (the client can decode what came so far); the last
one ends the stream (before trailers, when they end the response).
Stats `http.<prefix>.compressor.<library name>.{gzip,brotli,zstd}.*` with Envoy's names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError, Fields
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ..filter import FilterHeadersStatus, PassThroughFilter
from .compression_libraries import CompressorLibraryConfig, parse_compressor_library

__all__ = ["CompressorConfig", "parse_compressor", "CompressorFilter", "choose_encoding"]

NAME = "envoy.filters.http.compressor"
PROTO = "envoy.extensions.filters.http.compressor.v3.Compressor"

# Envoy's default compressible content types (compressor_filter.cc).
DEFAULT_TYPES = frozenset({
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript",
    "text/x-js", "application/ecmascript", "application/x-json", "application/xml",
    "application/json", "image/svg+xml", "text/xml", "application/xhtml+xml"})
_STATS = ("compressed", "not_compressed", "no_accept_header", "header_identity",
          "header_compressor_used", "header_compressor_overshadowed", "header_wildcard",
          "header_not_valid", "total_uncompressed_bytes", "total_compressed_bytes",
          "content_length_too_small", "not_compressed_etag")
_REQUEST_STATS = ("compressed", "not_compressed", "total_uncompressed_bytes",
                  "total_compressed_bytes", "content_length_too_small")


@dataclass(frozen=True, slots=True)
class CompressorConfig:
    library_name: str
    library: CompressorLibraryConfig
    min_content_length: int = 30
    content_types: frozenset[str] = DEFAULT_TYPES
    enabled: bool = True
    disable_on_etag_header: bool = False
    remove_accept_encoding_header: bool = False
    uncompressible_response_codes: frozenset[int] = frozenset()
    # Envoy names the response's own stats `response.<name>` once response_direction_config
    # is used, and without the prefix under the deprecated top-level fields.
    response_stats_prefix: str = ""


_DEPRECATED = "deprecated spelling of response_direction_config's"
COMPRESSOR = Message(PROTO, title="HTTP filter compressor", model=CompressorConfig,
                     bookkeeping=("response_stats_prefix",), fields=(
    used("compressor_library", attr="library"),
    used("response_direction_config", attr="", why="its own table"),
    used("request_direction_config", attr="", why="only disabled: request compression is refused"),
    used("content_length", attr="min_content_length", why=_DEPRECATED + " min_content_length"),
    used("content_type", attr="content_types", why=_DEPRECATED),
    used("disable_on_etag_header", why=_DEPRECATED),
    used("remove_accept_encoding_header", why=_DEPRECATED),
    used("runtime_enabled", attr="enabled", why=_DEPRECATED + " enabled"),
    refused("choose_first", "the tie-break among several compressor filters; without it the first "
                            "acceptable encoding of the highest q wins, as Envoy"),
    refused("per_route_config"),
))
RESPONSE_DIRECTION = Message(f"{PROTO}.ResponseDirectionConfig", fields=(
    used("common_config", attr="", why="its own table"),
    used("disable_on_etag_header"),
    used("remove_accept_encoding_header"),
    used("uncompressible_response_codes"),
))
REQUEST_DIRECTION = Message(f"{PROTO}.RequestDirectionConfig", fields=(
    used("common_config", attr="", why="its own table; only enabled false"),
))
COMMON = Message(f"{PROTO}.CommonDirectionConfig", fields=(
    used("enabled", why="its default_value: there is no runtime layer"),
    used("min_content_length", attr="min_content_length"),
    used("content_type", attr="content_types"),
))
LIBRARY = Message("envoy.config.core.v3.TypedExtensionConfig (compressor_library)", fields=(
    used("name", attr="library_name"),
    used("typed_config", attr="library", why="the gzip, brotli or zstd library (compression_libraries.py)"),
))


def _types(f: Fields, key: str) -> frozenset[str] | None:
    names = f.strs(key)
    return frozenset(n.split(";")[0].strip().lower() for n in names) if names else None


def parse_compressor(raw: Mapping[str, Any], path: str) -> CompressorConfig:
    f = COMPRESSOR.read(raw, path)
    lib = LIBRARY.read(f.value("compressor_library", required=True), f.at("compressor_library"))
    out: dict[str, Any] = {"library_name": lib.str("name", ""), "library": parse_compressor_library(
        lib.raw_obj("typed_config", required=True), lib.at("typed_config"))}
    # Deprecated top-level spellings first; response_direction_config overrides them.
    if f.has("content_length"):
        out["min_content_length"] = f.int("content_length", min=0)
    if (types := _types(f, "content_type")) is not None:
        out["content_types"] = types
    if f.has("runtime_enabled"):
        out["enabled"] = parse_runtime_feature_flag(f.raw_obj("runtime_enabled"), f.at("runtime_enabled"))
    for key in ("disable_on_etag_header", "remove_accept_encoding_header"):
        if f.has(key):
            out[key] = f.bool(key)
    if f.has("response_direction_config"):
        out["response_stats_prefix"] = "response."
        r = RESPONSE_DIRECTION.read(f.value("response_direction_config"), f.at("response_direction_config"))
        if r.has("common_config"):
            out.update(_common(r.value("common_config"), r.at("common_config")))
        for key in ("disable_on_etag_header", "remove_accept_encoding_header"):
            if r.has(key):
                out[key] = r.bool(key)
        codes = []
        for item, cpath in r.list("uncompressible_response_codes"):
            if isinstance(item, bool) or not isinstance(item, int) or not 200 <= item < 600:
                raise ConfigError(cpath, "must be an HTTP status code in [200, 600)")
            codes.append(item)
        out["uncompressible_response_codes"] = frozenset(codes)
    if f.has("request_direction_config"):
        q = REQUEST_DIRECTION.read(f.value("request_direction_config"), f.at("request_direction_config"))
        if q.has("common_config") and _common(q.value("common_config"), q.at("common_config")).get("enabled", True):
            raise ConfigError(q.at("common_config"), "not supported yet (request compression: set "
                                                     "enabled.default_value false, or leave it out)")
    return CompressorConfig(**out)


def _common(raw: Any, path: str) -> dict[str, Any]:
    c = COMMON.read(raw, path)
    out: dict[str, Any] = {}
    if c.has("enabled"):
        out["enabled"] = parse_runtime_feature_flag(c.raw_obj("enabled"), c.at("enabled"))
    if c.has("min_content_length"):
        out["min_content_length"] = c.int("min_content_length", min=0)
    if (types := _types(c, "content_type")) is not None:
        out["content_types"] = types
    return out


class CompressorFactory:
    def __init__(self, config: CompressorConfig, name: str) -> None:
        self.config = config

    def for_worker(self, ctx) -> WorkerCompressorFactory:
        return WorkerCompressorFactory(self.config, ctx)


class WorkerCompressorFactory:
    decoder = True
    encoder = True

    def __init__(self, config: CompressorConfig, ctx) -> None:
        self.config = config
        self.encoding = config.library.encoding
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.compressor.{config.library_name}."
                                       f"{config.library.stats_name}")
        prefixed = {"compressed", "not_compressed", "total_uncompressed_bytes", "total_compressed_bytes",
                    "content_length_too_small"}
        self.stats = {n: scope.counter(config.response_stats_prefix + n if n in prefixed else n)
                      for n in _STATS}
        self.request_stats = {n: scope.counter(f"request.{n}") for n in _REQUEST_STATS}
        self.request_not_compressed = self.request_stats["not_compressed"]
        self.remove_accept = config.remove_accept_encoding_header
        # The only compressor of its chain (the usual): it chooses the encoding alone, and a
        # stream needs no registry of its compressors.
        alone = sum(isinstance(f.config, CompressorConfig) for f in ctx.config.http_filters) == 1
        self.alone = (config,) if alone else None

    def create(self, callbacks) -> CompressorFilter:
        if self.alone is not None:
            return CompressorFilter(self, None, callbacks)
        # Envoy's CompressorRegistry: the stream's compressor filters, in chain order, so the
        # first of them to see the response chooses the encoding for all (chooseEncoding).
        info = callbacks.stream_info
        registry = info.compressors
        if registry is None:
            registry = info.compressors = _Registry()
        registry.configs.append(self.config)
        return CompressorFilter(self, registry, callbacks)


class _Registry:
    """One stream's compressor filters (their configs, in chain order) and, once the first of
    them decided, the encoding chosen and the header stat that decision counts. Thread-confined
    to the stream's worker."""

    __slots__ = ("configs", "decision")

    def __init__(self) -> None:
        self.configs: list[CompressorConfig] = []
        self.decision: tuple[str, str] | None = None


def _q_pairs(accept: bytes):
    """(coding, q) per Accept-Encoding token, as Envoy reads them: a token whose q-value does
    not parse is skipped; names are compared as written (Envoy's map is case-sensitive)."""
    for token in accept.decode("latin-1").split(","):
        token = token.strip()
        if not token:
            continue
        name, sep, params = token.partition(";")
        q = 1.0
        if sep:
            key, eq, value = params.partition("=")
            if eq and key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    continue
        yield name.strip(), q


def choose_encoding(accept: bytes, content_type: str | None,
                    configs: list[CompressorConfig] | tuple[CompressorConfig, ...]) -> tuple[str, str]:
    """Envoy's chooseEncoding for a stream's compressor filters: (the encoding, the header stat).
    Filters whose content types exclude the response's step aside; of several filters for one
    encoding the first counts. The acceptable encoding of the highest q wins (ties: the first
    listed); `*` picks the first registered filter's encoding; q=0 rules an encoding out."""
    allowed: dict[str, int] = {}
    for config in configs:
        if content_type and content_type not in config.content_types:
            continue
        allowed.setdefault(config.library.encoding, len(allowed))
    pairs = []
    for name, q in _q_pairs(accept):
        pairs.append((name, q))
        if q == 0:
            allowed.pop(name, None)
    if not pairs or not allowed:
        return "identity", "header_not_valid"
    choice, best = "identity", 0.0
    for name, q in pairs:
        if q > best and (name in allowed or name == "identity" or name == "*"):
            choice, best = name, q
    if best == 0:
        return "identity", "header_not_valid"
    if choice == "identity":
        return "identity", "header_identity"
    if choice == "*":
        return min(allowed, key=allowed.__getitem__), "header_wildcard"
    return choice, "header_compressor_used"


class CompressorFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("wf", "registry", "cb", "accept", "encoder")

    def __init__(self, wf: WorkerCompressorFactory, registry: _Registry | None, callbacks) -> None:
        self.wf = wf
        self.registry = registry
        self.cb = callbacks
        self.accept: bytes | None = None   # the request's Accept-Encoding
        self.encoder = None

    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        headers = head.headers
        self.accept = headers.get(b"accept-encoding")
        wf.request_not_compressed.value += 1
        if wf.remove_accept:
            headers.remove(b"accept-encoding")
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, head, end_stream: bool) -> int:
        """Envoy's decision (CompressorFilter::encodeHeaders), in its order: the stats each
        step counts depend on what came before it."""
        wf = self.wf
        config = wf.config
        headers = head.headers
        stats = wf.stats
        big_enough = config.enabled
        if big_enough:
            length = headers.get(b"content-length")
            if length is not None and not (length.isdigit() and int(length) >= config.min_content_length):
                stats["content_length_too_small"].value += 1
                big_enough = False
        # (not big enough: nothing below is counted or used, the type is not read)
        content_type = _content_type(headers.get(b"content-type")) if big_enough else None
        compressible = (big_enough and head.status not in config.uncompressible_response_codes
                        and (content_type is None or content_type in config.content_types)
                        and not _no_transform(headers.get(b"cache-control"))
                        and self._etag_allowed(headers) and headers.get(b"content-encoding") is None)
        if not end_stream and big_enough and self._chosen(content_type) and compressible:
            etag = headers.get(b"etag")
            if etag is not None and not etag.startswith(b"W/"):
                headers.remove(b"etag")  # a strong ETag no longer names these bytes
            headers.remove(b"content-length")
            headers.set(b"content-encoding", wf.encoding.encode())
            stats["compressed"].value += 1
            self.encoder = config.library.new()
        else:
            stats["not_compressed"].value += 1
            self.cb.pass_encoded_body()  # (its encode_data and encode_trailers: CONTINUE)
        if compressible:
            _add_vary(headers)  # even when this client did not accept it (caches in front)
        return FilterHeadersStatus.CONTINUE

    def _chosen(self, content_type: str | None) -> bool:
        """Whether the stream's encoding decision (made by the first compressor filter to ask)
        is this filter's encoding; counts this filter's header stat."""
        stats = self.wf.stats
        if self.accept is None:
            stats["no_accept_header"].value += 1
            return False
        registry = self.registry
        if registry is None:  # (the chain's only compressor)
            decision = choose_encoding(self.accept, content_type, self.wf.alone)
        else:
            decision = registry.decision
            if decision is None:
                decision = registry.decision = choose_encoding(self.accept, content_type, registry.configs)
        encoding, stat = decision
        mine = encoding.lower() == self.wf.encoding
        if stat == "header_compressor_used" and not mine:
            stat = "header_compressor_overshadowed"  # another filter of the chain compresses
        stats[stat].value += 1
        return mine

    def _etag_allowed(self, headers) -> bool:
        if self.wf.config.disable_on_etag_header and headers.get(b"etag") is not None:
            self.wf.stats["not_compressed_etag"].value += 1
            return False
        return True

    def encode_data(self, data: bytes, end_stream: bool):
        encoder = self.encoder
        if encoder is None:
            return 0
        stats = self.wf.stats
        stats["total_uncompressed_bytes"].value += len(data)
        out = encoder.compress(data, end_stream)
        if end_stream:
            self.encoder = None
        stats["total_compressed_bytes"].value += len(out)
        return out

    def encode_trailers(self, trailers):
        encoder = self.encoder
        if encoder is None:
            return 0
        self.encoder = None
        out = encoder.compress(b"", True)
        self.wf.stats["total_compressed_bytes"].value += len(out)
        return out


def _content_type(value: bytes | None) -> str | None:
    """The response's media type as Envoy compares it (lower-cased here: Envoy's set of
    content types is case-insensitive), None without a content-type."""
    if value is None:
        return None
    return value.split(b";")[0].strip().lower().decode("latin-1") or None


def _no_transform(cache_control: bytes | None) -> bool:
    return cache_control is not None and any(
        t.strip().lower() == b"no-transform" for t in cache_control.split(b","))


def _add_vary(headers) -> None:
    vary = headers.get(b"vary")
    if vary is None:
        headers.add(b"vary", b"Accept-Encoding")
    elif b"accept-encoding" not in vary.lower():
        headers.set(b"vary", vary + b", Accept-Encoding")


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_compressor,
    factory=CompressorFactory,
))
