"""Sans-I/O HTTP/1.1 message parsers behind one interface: `fast` (httptools/llhttp, the hot
path) and `h11` (the strict pure-Python reference, used as a test oracle and fallback). The
connection manager does not call them directly: http1_server.Http1ServerCodec (the
ServerCodec of protocol.py) wraps a server parser, and codec_client.UpstreamHttpConnection a
client one.

Server parser (downstream): `feed(bytes) -> list[event]` (b"" = EOF), `resume()`,
`encode_response_head(...)`, `encode_body`, `encode_end`, `encode_whole_response`,
`response_must_close`, and `head_in_progress`: after a feed, True while a request head has
begun (its first byte came) and is not complete (no RequestHeaders for it yet): the
connection manager times a request from its first byte, as Envoy does (request_timeout,
request_headers_timeout).
Client parser (upstream): `encode_request_head(...)`, `encode_body`, `encode_end`,
`feed(bytes) -> list[event]`. Both raise `CodecError` for input they refuse.

Thread affinity: a codec belongs to one connection on one worker. Must not: do I/O.
"""

from __future__ import annotations

from typing import Literal

from .errors import CodecError
from .events import Data, Event, Informational, MessageComplete, RequestHeaders, ResponseHeaders

__all__ = ["make_server_codec", "make_client_codec", "CodecError", "Data", "Event",
           "Informational", "MessageComplete", "RequestHeaders", "ResponseHeaders"]


def make_server_codec(impl: Literal["fast", "h11"] = "fast", *, max_request_headers_kb: int = 60,
                      max_headers_count: int = 100,
                      response_fields: tuple[tuple[bytes, bytes], ...] = ()):
    """`response_fields`: written on every response head, replacing same-named fields."""
    if impl == "fast":
        from .http1_fast import FastServerCodec
        return FastServerCodec(max_request_headers_kb, max_headers_count, response_fields)
    if impl == "h11":
        from .http1_h11 import H11ServerCodec
        return H11ServerCodec(max_request_headers_kb, max_headers_count, response_fields)
    raise ValueError(f"unknown HTTP/1 codec {impl!r} (expected 'fast' or 'h11')")


def make_client_codec(impl: Literal["fast", "h11"] = "fast", *,
                      max_response_headers_kb: int = 60, max_headers_count: int = 100):
    if impl == "fast":
        from .http1_fast_client import FastClientCodec
        return FastClientCodec(max_response_headers_kb, max_headers_count)
    if impl == "h11":
        from .http1_h11 import H11ClientCodec
        return H11ClientCodec(max_response_headers_kb, max_headers_count)
    raise ValueError(f"unknown HTTP/1 codec {impl!r} (expected 'fast' or 'h11')")
