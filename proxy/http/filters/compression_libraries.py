"""The compression libraries of `envoy.filters.http.compressor` and `envoy.filters.http.decompressor`:
gzip (zlib, the standard library), brotli (`brotlicffi`) and zstd (the `compression.zstd` API),
their config tables, and one streaming encoder / decoder per message.

Compressor libraries (`envoy.extensions.compression.{gzip,brotli,zstd}.compressor.v3.*`): a
parsed config is frozen and shared; `new()` makes the per-stream encoder, whose
`compress(data, end)` returns what the client may decode so far (each chunk flushed as Envoy
does: zlib Z_SYNC_FLUSH, BROTLI_OPERATION_FLUSH, ZSTD_e_flush; the last one ends the stream).
Decompressor libraries likewise: `new()` makes a decoder whose `feed(data, end, room)` returns
the decoded bytes, or None on a corrupt stream or past `room` bytes (the bomb limit).

Bindings: brotli through `brotlicffi` (CFFI, so it keeps the GIL off on a free-threaded build;
the `brotli` package has no free-threaded wheel). zstd through the standard library's
`compression.zstd` (3.14+) or its backport `backports.zstd` (3.13). A free-threaded 3.14t built
without `_zstd` has neither (and no other binding installs there): a config naming a zstd
library is then refused at load, naming the field and why. The zstd module is imported lazily
(`zstd_api()`), so importing this module never fails and never turns the GIL on.

Thread affinity: configs are immutable and shared by workers; an encoder/decoder belongs to
one stream on one worker.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import brotlicffi

from ...config.fields_table import Message, inert, refused, used
from ...config.reader import ConfigError

__all__ = ["GzipCompressorConfig", "BrotliCompressorConfig", "ZstdCompressorConfig",
           "GzipDecompressorConfig", "BrotliDecompressorConfig", "ZstdDecompressorConfig",
           "parse_compressor_library", "parse_decompressor_library", "zstd_api", "ZSTD_MISSING"]

PREFIX = "envoy.extensions.compression."
GZIP_C = PREFIX + "gzip.compressor.v3.Gzip"
BROTLI_C = PREFIX + "brotli.compressor.v3.Brotli"
ZSTD_C = PREFIX + "zstd.compressor.v3.Zstd"
GZIP_D = PREFIX + "gzip.decompressor.v3.Gzip"
BROTLI_D = PREFIX + "brotli.decompressor.v3.Brotli"
ZSTD_D = PREFIX + "zstd.decompressor.v3.Zstd"

# Envoy's brotli and zstd decompressors stop a message inflating more than this many times
# the compressed bytes given to one decompress call (a compression bomb).
MAX_INFLATE_RATIO = 100

ZSTD_MISSING = ("no zstd binding on this interpreter: it has no compression.zstd (a free-threaded "
                "build without _zstd), and backports.zstd / zstandard have no wheel for it")


@cache
def zstd_api() -> Any:
    """The `compression.zstd` module (or `backports.zstd`, its backport), or None."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
        return zstd
    except ImportError:
        pass
    try:
        from backports import zstd  # type: ignore[import-not-found,no-redef]
        return zstd
    except ImportError:
        return None


def _need_zstd(path: str) -> Any:
    api = zstd_api()
    if api is None:
        raise ConfigError(path, f"not supported on this interpreter ({ZSTD_MISSING})")
    return api


# -- compressor libraries --------------------------------------------------------------------

_LEVELS = {"DEFAULT_COMPRESSION": -1, "BEST_SPEED": 1, "COMPRESSION_LEVEL_1": 1, "COMPRESSION_LEVEL_2": 2,
           "COMPRESSION_LEVEL_3": 3, "COMPRESSION_LEVEL_4": 4, "COMPRESSION_LEVEL_5": 5,
           "COMPRESSION_LEVEL_6": 6, "COMPRESSION_LEVEL_7": 7, "COMPRESSION_LEVEL_8": 8,
           "COMPRESSION_LEVEL_9": 9, "BEST_COMPRESSION": 9}
_STRATEGIES = {"DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY, "FILTERED": zlib.Z_FILTERED,
               "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY, "RLE": zlib.Z_RLE, "FIXED": zlib.Z_FIXED}
# Envoy's DEFAULT encoder mode is BROTLI_DEFAULT_MODE, which is GENERIC.
_BROTLI_MODES = {"DEFAULT": brotlicffi.BrotliEncoderMode.GENERIC,
                 "GENERIC": brotlicffi.BrotliEncoderMode.GENERIC,
                 "TEXT": brotlicffi.BrotliEncoderMode.TEXT, "FONT": brotlicffi.BrotliEncoderMode.FONT}
_ZSTD_STRATEGIES = ("DEFAULT", "FAST", "DFAST", "GREEDY", "LAZY", "LAZY2", "BTLAZY2", "BTOPT",
                    "BTULTRA", "BTULTRA2")


class _GzipEncoder:
    __slots__ = ("z",)

    def __init__(self, z) -> None:
        self.z = z

    def compress(self, data: bytes, end: bool) -> bytes:
        z = self.z
        return z.compress(data) + z.flush(zlib.Z_FINISH if end else zlib.Z_SYNC_FLUSH)


class _BrotliEncoder:
    __slots__ = ("b",)

    def __init__(self, b) -> None:
        self.b = b

    def compress(self, data: bytes, end: bool) -> bytes:
        b = self.b
        return b.process(data) + (b.finish() if end else b.flush())


class _ZstdEncoder:
    __slots__ = ("z", "cont", "flush", "end")

    def __init__(self, z, api) -> None:
        self.z = z
        self.cont = api.ZstdCompressor.CONTINUE       # ZSTD_e_continue
        self.flush = api.ZstdCompressor.FLUSH_BLOCK   # ZSTD_e_flush
        self.end = api.ZstdCompressor.FLUSH_FRAME     # ZSTD_e_end

    def compress(self, data: bytes, end: bool) -> bytes:
        z = self.z
        if end:
            # As Envoy: the data first, then the frame's end with no input, so the frame never
            # declares a content size (zstd would, given the data and the end in one call).
            return z.compress(data, self.cont) + z.compress(b"", self.end)
        return z.compress(data, self.flush)


@dataclass(frozen=True, slots=True)
class GzipCompressorConfig:
    level: int = -1
    strategy: int = zlib.Z_DEFAULT_STRATEGY
    memory_level: int = 5
    window_bits: int = 12
    encoding = "gzip"
    stats_name = "gzip"

    def new(self) -> _GzipEncoder:
        return _GzipEncoder(zlib.compressobj(self.level, zlib.DEFLATED, 16 + self.window_bits,
                                             self.memory_level, self.strategy))


@dataclass(frozen=True, slots=True)
class BrotliCompressorConfig:
    quality: int = 3
    window_bits: int = 18
    input_block_bits: int = 24
    encoder_mode: Any = brotlicffi.BrotliEncoderMode.GENERIC
    encoding = "br"
    stats_name = "brotli"

    def new(self) -> _BrotliEncoder:
        return _BrotliEncoder(brotlicffi.Compressor(mode=self.encoder_mode, quality=self.quality,
                                                    lgwin=self.window_bits, lgblock=self.input_block_bits))


@dataclass(frozen=True, slots=True)
class ZstdCompressorConfig:
    compression_level: int = 3
    enable_checksum: bool = False
    strategy: int = 0   # 0: zstd's own choice for the level
    encoding = "zstd"
    stats_name = "zstd"

    def new(self) -> _ZstdEncoder:
        api = zstd_api()
        p = api.CompressionParameter
        options = {p.compression_level: self.compression_level,
                   p.checksum_flag: int(self.enable_checksum)}
        if self.strategy:
            options[p.strategy] = self.strategy
        return _ZstdEncoder(api.ZstdCompressor(options=options), api)


CompressorLibraryConfig = GzipCompressorConfig | BrotliCompressorConfig | ZstdCompressorConfig

_CHUNK = "the library's output buffer size: the bytes sent are the same whatever it is"
GZIP = Message(GZIP_C, title="Compressor library gzip", model=GzipCompressorConfig, fields=(
    used("compression_level", "DEFAULT_COMPRESSION", attr="level"),
    used("compression_strategy", "DEFAULT_STRATEGY", attr="strategy"),
    used("memory_level", 5),
    used("window_bits", 12),
    inert("chunk_size", _CHUNK.replace("the library's", "zlib's")),
))
BROTLI = Message(BROTLI_C, title="Compressor library brotli", model=BrotliCompressorConfig, fields=(
    used("quality", 3),
    used("encoder_mode", "DEFAULT"),
    used("window_bits", 18),
    used("input_block_bits", 24),
    inert("chunk_size", _CHUNK),
    refused("disable_literal_context_modeling", "brotlicffi does not expose that encoder parameter",
            default=False),
))
ZSTD = Message(ZSTD_C, title="Compressor library zstd", model=ZstdCompressorConfig, fields=(
    used("compression_level", 3),
    used("enable_checksum", False),
    used("strategy", "DEFAULT"),
    refused("dictionary", "zstd dictionaries"),
    inert("chunk_size", _CHUNK),
))


def _typed(typed: Any, path: str, known: dict[str, Message], what: str) -> tuple[str, Any]:
    if not isinstance(typed, dict):
        raise ConfigError(path, "must be an object with @type")
    url = str(typed.get("@type", ""))
    proto = url.rsplit("/", 1)[-1]
    if proto not in known:
        raise ConfigError(path, f'unsupported {what} library "{url}"; supported: {", ".join(known)}')
    return proto, known[proto].read({k: v for k, v in typed.items() if k != "@type"}, path)


def parse_compressor_library(typed: Any, path: str) -> CompressorLibraryConfig:
    """The compressor library of a `compressor_library.typed_config` at `path`."""
    proto, g = _typed(typed, path, {GZIP_C: GZIP, BROTLI_C: BROTLI, ZSTD_C: ZSTD}, "compressor")
    if proto == GZIP_C:
        g.int("chunk_size", 4096, min=4096, max=65536)
        return GzipCompressorConfig(
            level=_LEVELS[g.enum("compression_level", tuple(_LEVELS), "DEFAULT_COMPRESSION")],
            strategy=_STRATEGIES[g.enum("compression_strategy", tuple(_STRATEGIES), "DEFAULT_STRATEGY")],
            memory_level=g.int("memory_level", 5, min=1, max=9),
            window_bits=g.int("window_bits", 12, min=9, max=15))
    if proto == BROTLI_C:
        g.int("chunk_size", 4096, min=4096, max=65536)
        return BrotliCompressorConfig(
            quality=g.int("quality", 3, min=0, max=11),
            window_bits=g.int("window_bits", 18, min=10, max=24),
            input_block_bits=g.int("input_block_bits", 24, min=16, max=24),
            encoder_mode=_BROTLI_MODES[g.enum("encoder_mode", tuple(_BROTLI_MODES), "DEFAULT")])
    _need_zstd(path)
    g.int("chunk_size", 4096, min=4096, max=65536)
    level = g.int("compression_level", 0, min=0, max=22)
    return ZstdCompressorConfig(
        compression_level=level or 3,  # 0: zstd's default level, 3
        enable_checksum=g.bool("enable_checksum", False),
        strategy=_ZSTD_STRATEGIES.index(g.enum("strategy", _ZSTD_STRATEGIES, "DEFAULT")))


# -- decompressor libraries ------------------------------------------------------------------

class _GzipDecoder:
    __slots__ = ("z",)

    def __init__(self, window_bits: int) -> None:
        self.z = zlib.decompressobj(16 + window_bits)

    def feed(self, data: bytes, end: bool, room: int) -> bytes | None:
        try:
            out = self.z.decompress(data, room + 1)
            if end and not self.z.unconsumed_tail:
                out += self.z.flush()
        except zlib.error:
            return None
        if len(out) > room or self.z.unconsumed_tail:
            return None
        return out


class _BrotliDecoder:
    __slots__ = ("b",)

    def __init__(self) -> None:
        self.b = brotlicffi.Decompressor()

    def feed(self, data: bytes, end: bool, room: int) -> bytes | None:
        b = self.b
        try:
            out = b.process(data, output_buffer_limit=room + 1)
            # brotlicffi 1.2 may stop with output still inside the decoder: drain it.
            while len(out) <= room:
                more = b.process(b"", output_buffer_limit=room + 1 - len(out))
                if not more:
                    break
                out += more
        except brotlicffi.error:
            return None
        if len(out) > room or not b.can_accept_more_data():
            return None  # more output than the ratio allows (some still inside the decoder)
        return out


class _ZstdDecoder:
    __slots__ = ("z", "error")

    def __init__(self, api) -> None:
        self.z = api.ZstdDecompressor()
        self.error = api.ZstdError

    def feed(self, data: bytes, end: bool, room: int) -> bytes | None:
        z = self.z
        try:
            out = z.decompress(data, room + 1) if not z.eof else b""
        except (self.error, EOFError):
            return None
        if len(out) > room or (not z.eof and not z.needs_input):
            return None
        return out


@dataclass(frozen=True, slots=True)
class GzipDecompressorConfig:
    window_bits: int = 15
    max_inflate_ratio: int = 100
    encoding = "gzip"
    stats_name = "gzip"

    def new(self) -> _GzipDecoder:
        return _GzipDecoder(self.window_bits)


@dataclass(frozen=True, slots=True)
class BrotliDecompressorConfig:
    encoding = "br"
    stats_name = "brotli"
    max_inflate_ratio = MAX_INFLATE_RATIO

    def new(self) -> _BrotliDecoder:
        return _BrotliDecoder()


@dataclass(frozen=True, slots=True)
class ZstdDecompressorConfig:
    encoding = "zstd"
    stats_name = "zstd"
    max_inflate_ratio = MAX_INFLATE_RATIO

    def new(self) -> _ZstdDecoder:
        return _ZstdDecoder(zstd_api())


DecompressorLibraryConfig = GzipDecompressorConfig | BrotliDecompressorConfig | ZstdDecompressorConfig

GZIP_DEC = Message(GZIP_D, title="Decompressor library gzip", model=GzipDecompressorConfig, fields=(
    used("window_bits", 15),
    inert("chunk_size", "zlib's output buffer size: the bytes are the same whatever it is"),
    used("max_inflate_ratio", 100),
))
BROTLI_DEC = Message(BROTLI_D, title="Decompressor library brotli", fields=(
    inert("disable_ring_buffer_reallocation", "the decoder's memory strategy: the bytes are the same"),
    inert("chunk_size", _CHUNK.replace("sent", "decoded")),
))
ZSTD_DEC = Message(ZSTD_D, title="Decompressor library zstd", fields=(
    refused("dictionaries", "zstd dictionaries"),
    inert("chunk_size", _CHUNK.replace("sent", "decoded")),
))


def parse_decompressor_library(typed: Any, path: str) -> DecompressorLibraryConfig:
    """The decompressor library of a `decompressor_library.typed_config` at `path`."""
    proto, g = _typed(typed, path, {GZIP_D: GZIP_DEC, BROTLI_D: BROTLI_DEC, ZSTD_D: ZSTD_DEC},
                      "decompressor")
    g.int("chunk_size", 4096, min=4096, max=65536)
    if proto == GZIP_D:
        return GzipDecompressorConfig(window_bits=g.int("window_bits", 15, min=9, max=15),
                                      max_inflate_ratio=g.int("max_inflate_ratio", 100, min=1, max=10000))
    if proto == BROTLI_D:
        g.bool("disable_ring_buffer_reallocation", False)
        return BrotliDecompressorConfig()
    _need_zstd(path)
    return ZstdDecompressorConfig()
