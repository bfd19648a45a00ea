"""`envoy.filters.http.decompressor` with the `envoy.compression.{gzip,brotli,zstd}.decompressor`
libraries: request bodies (uploads) and response bodies decoded on their way through, as Envoy
does.

Config `envoy.extensions.filters.http.decompressor.v3.Decompressor`: `decompressor_library`
(gzip: `window_bits`, `max_inflate_ratio` (default 100); brotli; zstd; `chunk_size`, the
library's own buffer, has no effect on the bytes: compression_libraries.py),
`request_direction_config` and `response_direction_config` (`common_config.enabled`'s default
value, default on; `advertise_accept_encoding` on the request side, default on: with response
decompression on, the library's encoding (`gzip`, `br`, `zstd`) is appended to the request's
Accept-Encoding so the upstream may compress: the header's tokens trimmed, any already naming
it dropped, joined with "," as Envoy rewrites it). A message with a body is decoded when the
first coding listed in its content-encoding is the library's, as Envoy decides (and no
`cache-control: no-transform` on a response): that coding leaves content-encoding,
content-length goes (the body's length changes). A headers-only message counts no stat.
A body inflating to more than `max_inflate_ratio` times its compressed size (100 for brotli and
zstd, Envoy's fixed ratio there) or not decoding ends the stream: a request gets 400, a
response is reset (declared: Envoy truncates it instead).
Stats `http.<prefix>.decompressor.<library name>.<gzip|brotli|zstd>.{request,response}.{decompressed,
not_decompressed,total_compressed_bytes,total_uncompressed_bytes}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, inert, used
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ..filter import FilterHeadersStatus, PassThroughFilter
from .compression_libraries import DecompressorLibraryConfig, parse_decompressor_library

__all__ = ["DecompressorConfig", "parse_decompressor"]

NAME = "envoy.filters.http.decompressor"
PROTO = "envoy.extensions.filters.http.decompressor.v3.Decompressor"
_STATS = ("decompressed", "not_decompressed", "total_compressed_bytes", "total_uncompressed_bytes")


@dataclass(frozen=True, slots=True)
class DecompressorConfig:
    library_name: str
    library: DecompressorLibraryConfig
    request_enabled: bool = True
    response_enabled: bool = True
    advertise_accept_encoding: bool = True


DECOMPRESSOR = Message(PROTO, title="HTTP filter decompressor", model=DecompressorConfig, fields=(
    used("decompressor_library", attr="", why="its own table"),
    used("request_direction_config", attr="request_enabled"),
    used("response_direction_config", attr="response_enabled"),
))
REQUEST_DIRECTION = Message(f"{PROTO}.RequestDirectionConfig", fields=(
    used("common_config", attr="request_enabled"),
    used("advertise_accept_encoding", True),
))
RESPONSE_DIRECTION = Message(f"{PROTO}.ResponseDirectionConfig", fields=(
    used("common_config", attr="response_enabled"),
))
COMMON = Message(f"{PROTO}.CommonDirectionConfig", fields=(
    used("enabled", attr="request_enabled", why="its default_value: there is no runtime layer"),
    inert("ignore_no_transform_header", "a request's no-transform is never honoured by Envoy's filter either"),
))
LIBRARY = Message("envoy.config.core.v3.TypedExtensionConfig (decompressor_library)", fields=(
    used("name", attr="library_name"),
    used("typed_config", attr="library", why="the gzip, brotli or zstd library (compression_libraries.py)"),
))


def parse_decompressor(raw: Mapping[str, Any], path: str) -> DecompressorConfig:
    f = DECOMPRESSOR.read(raw, path)
    lib = LIBRARY.read(f.value("decompressor_library", required=True), f.at("decompressor_library"))
    out: dict[str, Any] = dict(library_name=lib.str("name", ""), library=parse_decompressor_library(
        lib.raw_obj("typed_config", required=True), lib.at("typed_config")))
    for key, table, attr in (("request_direction_config", REQUEST_DIRECTION, "request_enabled"),
                             ("response_direction_config", RESPONSE_DIRECTION, "response_enabled")):
        if f.has(key):
            d = table.read(f.value(key), f.at(key))
            if d.has("common_config"):
                c = COMMON.read(d.value("common_config"), d.at("common_config"))
                c.bool("ignore_no_transform_header", False)
                if c.has("enabled"):
                    out[attr] = parse_runtime_feature_flag(c.raw_obj("enabled"), c.at("enabled"))
            if key == "request_direction_config":
                out["advertise_accept_encoding"] = d.bool("advertise_accept_encoding", True)
    return DecompressorConfig(**out)


class DecompressorFactory:
    def __init__(self, config: DecompressorConfig, name: str) -> None:
        self.config = config

    def for_worker(self, ctx) -> WorkerDecompressorFactory:
        return WorkerDecompressorFactory(self.config, ctx)


class WorkerDecompressorFactory:
    decoder = True
    encoder = True

    def __init__(self, config: DecompressorConfig, ctx) -> None:
        self.config = config
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.decompressor.{config.library_name}."
                                       f"{config.library.stats_name}")
        self.encoding = config.library.encoding.encode()
        self.advertise = config.response_enabled and config.advertise_accept_encoding
        self.stats = {d: {n: scope.counter(f"{d}.{n}") for n in _STATS} for d in ("request", "response")}

    def create(self, callbacks) -> DecompressorFilter:
        return DecompressorFilter(callbacks, self)


class _Inflate:
    __slots__ = ("decoder", "stats", "limit_ratio", "compressed", "inflated")

    def __init__(self, config: DecompressorConfig, stats) -> None:
        self.decoder = config.library.new()
        self.stats = stats
        self.limit_ratio = config.library.max_inflate_ratio
        self.compressed = self.inflated = 0

    def feed(self, data: bytes, end: bool) -> bytes | None:
        """The decoded bytes of `data`; None past max_inflate_ratio or on a corrupt stream."""
        self.compressed += len(data)
        room = self.limit_ratio * max(self.compressed, 1) - self.inflated
        out = self.decoder.feed(data, end, room)
        if out is None:
            return None
        self.inflated += len(out)
        self.stats["total_compressed_bytes"].value += len(data)
        self.stats["total_uncompressed_bytes"].value += len(out)
        return out


def _outer_is(headers, encoding: bytes) -> bool:
    """Whether the first coding listed in content-encoding is the library's (case-insensitive),
    as Envoy's decompressor decides."""
    value = headers.get(b"content-encoding")
    return value is not None and value.split(b",", 1)[0].strip().lower() == encoding


def _drop_outer_coding(headers) -> None:
    rest = headers.get(b"content-encoding").partition(b",")[2].strip()
    if rest:
        headers.set(b"content-encoding", rest)
    else:
        headers.remove(b"content-encoding")
    headers.remove(b"content-length")


def _advertised(accept: bytes, encoding: bytes) -> bytes:
    """Accept-Encoding with the library's coding advertised as Envoy rewrites it: the tokens
    trimmed, any naming this coding (as written, q-value or not) dropped, the coding appended,
    joined with ","."""
    tokens = [t.strip() for t in accept.split(b",")]
    kept = [t for t in tokens if t and t.split(b";", 1)[0].strip() != encoding]
    return b",".join([*kept, encoding])


class DecompressorFilter(PassThroughFilter):
    keeps_request_content_type = True  # (filter.py: no gRPC snapshot needed for it)
    __slots__ = ("cb", "wf", "request", "response")

    def __init__(self, callbacks, wf: WorkerDecompressorFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.request: _Inflate | None = None
        self.response: _Inflate | None = None

    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        headers = head.headers
        if wf.advertise:
            accept = headers.get(b"accept-encoding")
            if accept is None:
                headers.add(b"accept-encoding", wf.encoding)
            else:
                headers.set(b"accept-encoding", _advertised(accept, wf.encoding))
        if end_stream:
            return FilterHeadersStatus.CONTINUE  # a headers-only request counts nothing, as Envoy
        config = wf.config
        stats = wf.stats["request"]
        if config.request_enabled and _outer_is(headers, self.wf.encoding):
            _drop_outer_coding(headers)
            self.request = _Inflate(config, stats)
            stats["decompressed"].value += 1
        else:
            stats["not_decompressed"].value += 1
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool):
        inflate = self.request
        if inflate is None:
            return 0
        out = inflate.feed(data, end_stream)
        if out is None:
            self.request = None
            self.cb.send_local_reply(400, b"Bad Request", None, "decompression_failed")
            return 3  # STOP_ITERATION_NO_BUFFER: the stream ended with the local reply
        return out

    def encode_headers(self, head, end_stream: bool) -> int:
        if end_stream:
            return FilterHeadersStatus.CONTINUE  # a headers-only response counts nothing, as Envoy
        wf = self.wf
        config = wf.config
        headers = head.headers
        stats = wf.stats["response"]
        if (config.response_enabled and _outer_is(headers, wf.encoding)
                and b"no-transform" not in (headers.get(b"cache-control") or b"").lower()):
            _drop_outer_coding(headers)
            self.response = _Inflate(config, stats)
            stats["decompressed"].value += 1
        else:
            stats["not_decompressed"].value += 1
            self.cb.pass_encoded_body()  # (its encode_data: CONTINUE)
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool):
        inflate = self.response
        if inflate is None:
            return 0
        out = inflate.feed(data, end_stream)
        if out is None:
            self.response = None
            self.cb.stream_info.response_code_details = "decompression_failed"
            self.cb.reset("decompression_failed")
            return 3
        return out


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_decompressor,
    factory=DecompressorFactory,
))
