"""A gRPC service's `initial_metadata` (envoy.config.core.v3.GrpcService): request headers
every call or stream of that service carries, after the call's own. One reader for the gRPC
clients that honour it: xDS streams, the gRPC access logs, the metrics service sink and the
tracers' collectors.

Must not: import other proxy layers than proxy.config.
"""

from __future__ import annotations

from .fields_table import Message, refused, used
from .reader import ConfigError, Fields

__all__ = ["INITIAL_METADATA", "parse_initial_metadata"]

INITIAL_METADATA = Message("envoy.config.core.v3.HeaderValue (gRPC initial_metadata)", fields=(
    used("key", attr="", why="a request header of the gRPC call"),
    used("value", attr="", why="its value"),
    refused("raw_value", "use value"),
))

_NAME_BAD = set(" \t\r\n\0")


def parse_initial_metadata(g: Fields) -> tuple[tuple[bytes, bytes], ...]:
    """The `initial_metadata` of the GrpcService `g`: (name, value) pairs, names lower-case."""
    out = []
    for item, path in g.list("initial_metadata"):
        m = INITIAL_METADATA.read(item, path)
        key = m.str("key", required=True)
        if not key or key.lower() != key or key.startswith(":") or not key.isascii() \
                or _NAME_BAD & set(key):
            raise ConfigError(m.at("key"), "must be a non-empty lower-case header name")
        value = m.str("value", "") or ""
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(m.at("value"), "header values may not contain CR, LF or NUL")
        out.append((key.encode("ascii"), value.encode("latin-1", "replace")))
    return tuple(out)
