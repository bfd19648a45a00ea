"""`envoy.filters.http.decompressor` with `envoy.compression.gzip.decompressor`: gzip request
bodies (uploads) and response bodies inflated on their way through, as Envoy does.

Config `envoy.extensions.filters.http.decompressor.v3.Decompressor`: `decompressor_library`
(gzip: `window_bits`, `chunk_size` (zlib's own buffer: no effect on the bytes),
`max_inflate_ratio` (default 100)), `request_direction_config` and `response_direction_config`
(`common_config.enabled`'s default value, default on; `advertise_accept_encoding` on the
request side, default on: with response decompression on, `gzip` is appended to the request's
Accept-Encoding so the upstream may compress). A message is inflated when its outermost
content-encoding is gzip (and no `cache-control: no-transform` on a response): that coding
leaves content-encoding, content-length goes (the body's length changes).
A body inflating to more than `max_inflate_ratio` times its compressed size (a gzip bomb) ends
the stream: a request gets 400, a response is reset (declared: Envoy truncates it instead).
Stats `http.<prefix>.decompressor.<library name>.gzip.{request,response}.{decompressed,
not_decompressed,total_compressed_bytes,total_uncompressed_bytes}`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config.fields_table import Message, inert, used
from ...config.reader import ConfigError
from ...config.registry import Extension, register
from ...config.runtime_values import parse_runtime_feature_flag
from ..filter import FilterHeadersStatus, PassThroughFilter

__all__ = ["DecompressorConfig", "parse_decompressor"]

NAME = "envoy.filters.http.decompressor"
PROTO = "envoy.extensions.filters.http.decompressor.v3.Decompressor"
GZIP_PROTO = "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
_STATS = ("decompressed", "not_decompressed", "total_compressed_bytes", "total_uncompressed_bytes")


@dataclass(frozen=True, slots=True)
class DecompressorConfig:
    library_name: str
    window_bits: int = 15
    max_inflate_ratio: int = 100
    request_enabled: bool = True
    response_enabled: bool = True
    advertise_accept_encoding: bool = True


DECOMPRESSOR = Message(PROTO, title="HTTP filter decompressor", model=DecompressorConfig, fields=(
    used("decompressor_library", attr="library_name"),
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
    used("typed_config", attr="window_bits", why="envoy.extensions.compression.gzip.decompressor.v3.Gzip"),
))
GZIP = Message(GZIP_PROTO, title="Decompressor library gzip", fields=(
    used("window_bits", 15),
    inert("chunk_size", "zlib's output buffer size: the bytes are the same whatever it is"),
    used("max_inflate_ratio", 100),
))


def parse_decompressor(raw: Mapping[str, Any], path: str) -> DecompressorConfig:
    f = DECOMPRESSOR.read(raw, path)
    lib = LIBRARY.read(f.value("decompressor_library", required=True), f.at("decompressor_library"))
    typed = lib.raw_obj("typed_config", required=True)
    url = str(typed.get("@type", ""))
    if url.rsplit("/", 1)[-1] != GZIP_PROTO:
        raise ConfigError(lib.at("typed_config"), f'unsupported decompressor library "{url}"; '
                                                  f"supported: {GZIP_PROTO}")
    g = GZIP.read({k: v for k, v in typed.items() if k != "@type"}, lib.at("typed_config"))
    g.int("chunk_size", 4096, min=4096, max=65536)
    out: dict[str, Any] = dict(library_name=lib.str("name", ""),
                               window_bits=g.int("window_bits", 15, min=9, max=15),
                               max_inflate_ratio=g.int("max_inflate_ratio", 100, min=1, max=10000))
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
        scope = ctx.worker.stats.scope(f"http.{ctx.config.stat_prefix}.decompressor.{config.library_name}.gzip")
        self.stats = {d: {n: scope.counter(f"{d}.{n}") for n in _STATS} for d in ("request", "response")}

    def create(self, callbacks) -> DecompressorFilter:
        return DecompressorFilter(callbacks, self)


class _Inflate:
    __slots__ = ("z", "stats", "limit_ratio", "compressed", "inflated")

    def __init__(self, config: DecompressorConfig, stats) -> None:
        self.z = zlib.decompressobj(16 + config.window_bits)
        self.stats = stats
        self.limit_ratio = config.max_inflate_ratio
        self.compressed = self.inflated = 0

    def feed(self, data: bytes, end: bool) -> bytes | None:
        """The inflated bytes of `data`; None past max_inflate_ratio or on a corrupt stream."""
        self.compressed += len(data)
        room = self.limit_ratio * max(self.compressed, 1) - self.inflated
        try:
            out = self.z.decompress(data, room + 1)
            if end:
                out += self.z.flush()
        except zlib.error:
            return None
        self.inflated += len(out)
        if len(out) > room or self.z.unconsumed_tail:
            return None
        self.stats["total_compressed_bytes"].value += len(data)
        self.stats["total_uncompressed_bytes"].value += len(out)
        return out


def _outer_gzip(headers) -> bool:
    value = headers.get(b"content-encoding")
    return value is not None and value.rsplit(b",", 1)[-1].strip().lower() == b"gzip"


def _drop_outer_coding(headers) -> None:
    codings = [c.strip() for c in headers.get(b"content-encoding").split(b",")][:-1]
    if codings:
        headers.set(b"content-encoding", b", ".join(codings))
    else:
        headers.remove(b"content-encoding")
    headers.remove(b"content-length")


class DecompressorFilter(PassThroughFilter):
    __slots__ = ("cb", "wf", "request", "response")

    def __init__(self, callbacks, wf: WorkerDecompressorFactory) -> None:
        self.cb = callbacks
        self.wf = wf
        self.request: _Inflate | None = None
        self.response: _Inflate | None = None

    def decode_headers(self, head, end_stream: bool) -> int:
        config = self.wf.config
        headers = head.headers
        stats = self.wf.stats["request"]
        if config.request_enabled and not end_stream and _outer_gzip(headers):
            _drop_outer_coding(headers)
            self.request = _Inflate(config, stats)
            stats["decompressed"].value += 1
        else:
            stats["not_decompressed"].value += 1
        if config.response_enabled and config.advertise_accept_encoding:
            accept = headers.get(b"accept-encoding")
            if accept is None:
                headers.set(b"accept-encoding", b"gzip")
            elif b"gzip" not in accept.lower():
                headers.set(b"accept-encoding", accept + b",gzip")  # Envoy appends with ","
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
        config = self.wf.config
        headers = head.headers
        stats = self.wf.stats["response"]
        no_transform = b"no-transform" in (headers.get(b"cache-control") or b"").lower()
        if config.response_enabled and not end_stream and not no_transform and _outer_gzip(headers):
            _drop_outer_coding(headers)
            self.response = _Inflate(config, stats)
            stats["decompressed"].value += 1
        else:
            stats["not_decompressed"].value += 1
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
