"""HTTP header containers shared by codecs, the connection manager, router and filters.

`Headers` is an ordered multi-map of (name, value) byte pairs with lower-case names; a list
of ~10 pairs is faster to scan than a dict is to build, and keeps duplicates and order.
`RequestHead` / `ResponseHead` carry the pseudo-header values (method, path, authority,
status) next to the regular headers, so that HTTP/1 and HTTP/2 look the same above the codec.

Thread affinity: owned by the stream (one worker). Must not: do I/O or validation (the codec
validated the bytes already).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["Headers", "RequestHead", "ResponseHead", "HOP_BY_HOP", "append_via"]

# The connection-specific fields Envoy strips (RFC 9110 §7.6.1's, less `trailer` and
# `proxy-authenticate`, which Envoy 1.40 passes on both ways: case http1_trailers; `te` keeps
# "trailers" where the request filters say so).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
})


class Headers:
    """`fields` is the list itself, in order: the hot path reads it directly."""

    __slots__ = ("fields",)

    def __init__(self, items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.fields: list[tuple[bytes, bytes]] = list(items)

    @classmethod
    def adopt(cls, items: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap `items` without copying; the caller gives up the list (codec events)."""
        h = cls.__new__(cls)
        h.fields = items
        return h

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.fields:
            if k == name:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.fields if k == name]

    def get_str(self, name: str) -> str | None:
        """First value as text (latin-1), for access logs and matchers."""
        v = self.get(name.encode("latin-1"))
        return None if v is None else v.decode("latin-1")

    def has(self, name: bytes) -> bool:
        for k, _ in self.fields:
            if k == name:
                return True
        return False

    def add(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every value of `name` with one `value` (kept at the first position)."""
        items = self.fields
        i = 0
        n = len(items)
        while i < n:
            if items[i][0] == name:
                items[i] = (name, value)
                # Later duplicates are rare: rebuild the list only when there is one.
                for j in range(i + 1, n):
                    if items[j][0] == name:
                        self.fields = items[: i + 1] + [kv for kv in items[i + 1:] if kv[0] != name]
                        break
                return
            i += 1
        items.append((name, value))

    def set_default(self, name: bytes, value: bytes) -> None:
        for k, _ in self.fields:
            if k == name:
                return
        self.fields.append((name, value))

    def remove(self, name: bytes) -> bool:
        before = len(self.fields)
        self.fields = [kv for kv in self.fields if kv[0] != name]
        return len(self.fields) != before

    def remove_many(self, names: frozenset[bytes] | set[bytes]) -> None:
        self.fields = [kv for kv in self.fields if kv[0] not in names]

    def items(self) -> list[tuple[bytes, bytes]]:
        return self.fields

    def copy(self) -> Headers:
        return Headers(self.fields)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Headers({self.fields!r})"


class RequestHead:
    """A request's start line and headers. `path` is the full request target (with query).
    `tls`: the downstream connection's TlsInfo when it is TLS (route match `tls_context`);
    `dynamic_metadata`: the stream's (stream.ActiveStream keeps it here: route match
    `dynamic_metadata`), None until a filter writes some."""

    tls = None
    dynamic_metadata = None

    def __init__(self, method: bytes, path: bytes, authority: bytes, scheme: bytes,
                 headers: Headers, http_version: bytes = b"1.1") -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.http_version = http_version
        self._path_str: str | None = None
        self._host_str: str | None = None

    # Text views, decoded once per request for the router.
    @property
    def path_str(self) -> str:
        s = self._path_str
        if s is None:
            s = self._path_str = self.path.decode("latin-1")
        return s

    @property
    def host_str(self) -> str:
        s = self._host_str
        if s is None:
            s = self._host_str = self.authority.decode("latin-1").lower()
        return s

    def set_path(self, path: bytes) -> None:
        self.path = path
        self._path_str = None

    def set_authority(self, authority: bytes) -> None:
        self.authority = authority
        self._host_str = None

    def get_str(self, name: str) -> str | None:
        """Header or pseudo-header (`:method`, `:path`, `:authority`, `:scheme`) as text."""
        if name[:1] == ":":
            if name == ":path":
                return self.path_str or None  # (a CONNECT has none)
            if name == ":method":
                v = self.method
            elif name == ":authority":
                v = self.authority
            elif name == ":scheme":
                v = self.scheme
            else:
                return None
            return v.decode("latin-1")
        if name == "host":
            return self.authority.decode("latin-1")
        return self.headers.get_str(name)


class ResponseHead:
    def __init__(self, status: int, headers: Headers, reason: bytes = b"",
                 http_version: bytes = b"1.1") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.http_version = http_version

    def get_str(self, name: str) -> str | None:
        if name == ":status":
            return str(self.status)
        return self.headers.get_str(name)


def append_via(headers: Headers, via: bytes) -> None:
    """Append our `via` entry (HCM `via`) after any the message already carries."""
    current = headers.get(b"via")
    headers.set(b"via", current + b", " + via if current else via)
