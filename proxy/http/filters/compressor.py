"""`envoy.filters.http.compressor` with `envoy.compression.gzip.compressor`: responses gzipped
for clients that accept it, as Envoy does.

Config `envoy.extensions.filters.http.compressor.v3.Compressor`: `compressor_library` (the
gzip library: `compression_level`, `compression_strategy`, `memory_level`, `window_bits`,
`chunk_size`; zlib from the standard library, so the bytes are Envoy's own for the same
settings), `response_direction_config` (`common_config`: `min_content_length` (30),
`content_type` (Envoy's default list when empty), `enabled`'s default; `disable_on_etag_header`,
`remove_accept_encoding_header`, `uncompressible_response_codes`), and the deprecated
top-level spellings of those. Request compression (`request_direction_config` enabled) is
refused; as Envoy, every request counts `request.not_compressed` then.

A response is compressed when the request accepts gzip (or `*`) with a non-zero q, and the
response has no content-encoding, a compressible content-type, no `cache-control:
no-transform`, a status not listed as uncompressible, and a content-length (if any) of at
least `min_content_length`; then content-length goes, `content-encoding: gzip` comes, a strong
ETag becomes weak (or, with `disable_on_etag_header`, an ETag prevents compression).
`vary: Accept-Encoding` is added to every response that could have been compressed, as Envoy.
Each body chunk is deflated and sync-flushed (the client gets what came so far); the last
one finishes the gzip stream (before trailers, when they end the response).
Stats `http.<prefix>.compressor.<library name>.gzip.*` with Envoy's names.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, inert, refused, used
from ...config.reader import ConfigError, Fields
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ..filter import FilterHeadersStatus, PassThroughFilter

__all__ = ["CompressorConfig", "parse_compressor", "CompressorFilter"]

NAME = "envoy.filters.http.compressor"
PROTO = "envoy.extensions.filters.http.compressor.v3.Compressor"
GZIP_PROTO = "envoy.extensions.compression.gzip.compressor.v3.Gzip"

# Envoy's default compressible content types (compressor_filter.cc).
DEFAULT_TYPES = frozenset({
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript",
    "text/x-js", "application/ecmascript", "application/x-json", "application/xml",
    "application/json", "image/svg+xml", "text/xml", "application/xhtml+xml"})
_LEVELS = {"DEFAULT_COMPRESSION": -1, "BEST_SPEED": 1, "COMPRESSION_LEVEL_1": 1, "COMPRESSION_LEVEL_2": 2,
           "COMPRESSION_LEVEL_3": 3, "COMPRESSION_LEVEL_4": 4, "COMPRESSION_LEVEL_5": 5,
           "COMPRESSION_LEVEL_6": 6, "COMPRESSION_LEVEL_7": 7, "COMPRESSION_LEVEL_8": 8,
           "COMPRESSION_LEVEL_9": 9, "BEST_COMPRESSION": 9}
_STRATEGIES = {"DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY, "FILTERED": zlib.Z_FILTERED,
               "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY, "RLE": zlib.Z_RLE, "FIXED": zlib.Z_FIXED}
_STATS = ("compressed", "not_compressed", "no_accept_header", "header_identity",
          "header_compressor_used", "header_compressor_overshadowed", "header_wildcard",
          "header_not_valid", "total_uncompressed_bytes", "total_compressed_bytes",
          "content_length_too_small", "not_compressed_etag")
_REQUEST_STATS = ("compressed", "not_compressed", "total_uncompressed_bytes",
                  "total_compressed_bytes", "content_length_too_small")


@dataclass(frozen=True, slots=True)
class GzipConfig:
    level: int = -1
    strategy: int = zlib.Z_DEFAULT_STRATEGY
    memory_level: int = 5
    window_bits: int = 12

    def compressor(self):
        return zlib.compressobj(self.level, zlib.DEFLATED, 16 + self.window_bits, self.memory_level,
                                self.strategy)


@dataclass(frozen=True, slots=True)
class CompressorConfig:
    library_name: str
    gzip: GzipConfig
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
    used("compressor_library", attr="gzip"),
    used("response_direction_config", attr="", why="its own table"),
    used("request_direction_config", attr="", why="only disabled: request compression is refused"),
    used("content_length", attr="min_content_length", why=_DEPRECATED + " min_content_length"),
    used("content_type", attr="content_types", why=_DEPRECATED),
    used("disable_on_etag_header", why=_DEPRECATED),
    used("remove_accept_encoding_header", why=_DEPRECATED),
    used("runtime_enabled", attr="enabled", why=_DEPRECATED + " enabled"),
    refused("choose_first", "one compressor filter per chain"),
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
    used("typed_config", attr="gzip", why="envoy.extensions.compression.gzip.compressor.v3.Gzip"),
))
GZIP = Message(GZIP_PROTO, title="Compressor library gzip", model=GzipConfig, fields=(
    used("compression_level", "DEFAULT_COMPRESSION", attr="level"),
    used("compression_strategy", "DEFAULT_STRATEGY", attr="strategy"),
    used("memory_level", 5),
    used("window_bits", 12),
    inert("chunk_size", "zlib's output buffer size: the bytes sent are the same whatever it is"),
))


def _gzip(raw: Any, path: str) -> GzipConfig:
    lib = LIBRARY.read(raw, path)
    typed = lib.raw_obj("typed_config", required=True)
    url = str(typed.get("@type", ""))
    if url.rsplit("/", 1)[-1] != GZIP_PROTO:
        raise ConfigError(lib.at("typed_config"), f'unsupported compressor library "{url}"; '
                                                  f"supported: {GZIP_PROTO}")
    g = GZIP.read({k: v for k, v in typed.items() if k != "@type"}, lib.at("typed_config"))
    g.int("chunk_size", 4096, min=4096, max=65536)
    return GzipConfig(
        level=_LEVELS[g.enum("compression_level", tuple(_LEVELS), "DEFAULT_COMPRESSION")],
        strategy=_STRATEGIES[g.enum("compression_strategy", tuple(_STRATEGIES), "DEFAULT_STRATEGY")],
        memory_level=g.int("memory_level", 5, min=1, max=9),
        window_bits=g.int("window_bits", 12, min=9, max=15),
    )


def _types(f: Fields, key: str) -> frozenset[str] | None:
    names = f.strs(key)
    return frozenset(n.split(";")[0].strip().lower() for n in names) if names else None


def parse_compressor(raw: Mapping[str, Any], path: str) -> CompressorConfig:
    f = COMPRESSOR.read(raw, path)
    name = LIBRARY.read(f.value("compressor_library", required=True), f.at("compressor_library")).str("name", "")
    out: dict[str, Any] = {"library_name": name, "gzip": _gzip(f.value("compressor_library"),
                                                               f.at("compressor_library"))}
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
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.compressor.{config.library_name}.gzip")
        prefixed = {"compressed", "not_compressed", "total_uncompressed_bytes", "total_compressed_bytes",
                    "content_length_too_small"}
        self.stats = {n: scope.counter(config.response_stats_prefix + n if n in prefixed else n)
                      for n in _STATS}
        self.request_stats = {n: scope.counter(f"request.{n}") for n in _REQUEST_STATS}

    def create(self, callbacks) -> CompressorFilter:
        return CompressorFilter(self)


def _encoding_stat(accept: bytes, content_type_ok: bool) -> str:
    """Envoy's choice (chooseEncoding) for one gzip compressor, as the header stat it counts:
    header_compressor_used (gzip has the highest q of what is acceptable), header_wildcard
    (`*` has it), header_identity (identity has it), else header_not_valid (nothing with a
    non-zero q, or a content-type this filter does not compress). Ties keep the first."""
    pairs = []
    gzip_allowed = content_type_ok
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
                    continue  # an unparsable q-value: the token is skipped
        name = name.strip().lower()
        pairs.append((name, q))
        if q == 0 and name == "gzip":
            gzip_allowed = False
    if not pairs or not gzip_allowed:
        return "header_not_valid"
    choice, best = "identity", 0.0
    for name, q in pairs:
        if name in ("gzip", "identity", "*") and q > best:
            choice, best = name, q
    if best == 0:
        return "header_not_valid"
    return {"identity": "header_identity", "*": "header_wildcard"}.get(choice, "header_compressor_used")


class CompressorFilter(PassThroughFilter):
    __slots__ = ("wf", "accept", "deflate")

    def __init__(self, wf: WorkerCompressorFactory) -> None:
        self.wf = wf
        self.accept: bytes | None = None   # the request's Accept-Encoding
        self.deflate = None

    def decode_headers(self, head, end_stream: bool) -> int:
        headers = head.headers
        self.accept = headers.get(b"accept-encoding")
        self.wf.request_stats["not_compressed"].value += 1
        if self.wf.config.remove_accept_encoding_header:
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
        content_type_ok = self._content_type_ok(headers.get(b"content-type"))
        compressible = (big_enough and head.status not in config.uncompressible_response_codes
                        and content_type_ok and not _no_transform(headers.get(b"cache-control"))
                        and self._etag_allowed(headers) and headers.get(b"content-encoding") is None)
        if not end_stream and self._accepts(big_enough, content_type_ok) and compressible:
            etag = headers.get(b"etag")
            if etag is not None and not etag.startswith(b"W/"):
                headers.remove(b"etag")  # a strong ETag no longer names these bytes
            headers.remove(b"content-length")
            headers.set(b"content-encoding", b"gzip")
            stats["compressed"].value += 1
            self.deflate = config.gzip.compressor()
        else:
            stats["not_compressed"].value += 1
        if compressible:
            _add_vary(headers)  # even when this client did not accept it (caches in front)
        return FilterHeadersStatus.CONTINUE

    def _accepts(self, maybe: bool, content_type_ok: bool) -> bool:
        if not maybe:
            return False  # (no header stat either, as Envoy)
        stats = self.wf.stats
        if self.accept is None:
            stats["no_accept_header"].value += 1
            return False
        stat = _encoding_stat(self.accept, content_type_ok)
        stats[stat].value += 1
        return stat in ("header_compressor_used", "header_wildcard")

    def _etag_allowed(self, headers) -> bool:
        if self.wf.config.disable_on_etag_header and headers.get(b"etag") is not None:
            self.wf.stats["not_compressed_etag"].value += 1
            return False
        return True

    def _content_type_ok(self, value: bytes | None) -> bool:
        if value is None:
            return True  # (Envoy compresses a response without a content-type)
        return value.split(b";")[0].strip().lower().decode("latin-1") in self.wf.config.content_types

    def encode_data(self, data: bytes, end_stream: bool):
        deflate = self.deflate
        if deflate is None:
            return 0
        stats = self.wf.stats
        stats["total_uncompressed_bytes"].value += len(data)
        out = deflate.compress(data) + deflate.flush(zlib.Z_FINISH if end_stream else zlib.Z_SYNC_FLUSH)
        if end_stream:
            self.deflate = None
        stats["total_compressed_bytes"].value += len(out)
        return out

    def encode_trailers(self, trailers):
        deflate = self.deflate
        if deflate is None:
            return 0
        self.deflate = None
        out = deflate.flush(zlib.Z_FINISH)
        self.wf.stats["total_compressed_bytes"].value += len(out)
        return out


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
