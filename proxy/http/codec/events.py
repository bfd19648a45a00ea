"""Events produced by the HTTP/1.1 codecs (bytes in, events out).

Small value classes: cheap to build on the hot path, compared by value in tests.
Header lists are `list[tuple[bytes, bytes]]` with lower-case names, in wire order.

Thread affinity: none (plain values, owned by whoever received them). Must not: validate
or do I/O; the codec that built an event already validated it.
"""

from __future__ import annotations

__all__ = ["RequestHeaders", "ResponseHeaders", "Informational", "Data", "MessageComplete",
           "END_OF_MESSAGE", "Event"]

HeaderList = list[tuple[bytes, bytes]]


class _Event:
    # Plain classes, not slotted: CPython 3.13 builds a plain class whose __init__ sets every
    # field inline (CALL_ALLOC_AND_ENTER_INIT); a slotted one goes through type_call.
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self._fields)

    def __hash__(self) -> int:  # events hold lists; they are values, not keys
        raise TypeError(f"unhashable type: {type(self).__name__}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self._fields)
        return f"{type(self).__name__}({fields})"


class RequestHeaders(_Event):
    """A request head. `upgrade` is the Upgrade value when the request asks to switch
    protocols (Connection: upgrade + Upgrade), b"CONNECT" for a CONNECT request: either way
    what follows an accepting answer (101, a 2xx to CONNECT) is a tunnel."""

    _fields = ("method", "target", "http_version", "headers", "keep_alive", "upgrade",
               "expect_continue", "content_length", "chunked")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, headers: HeaderList,
                 keep_alive: bool, upgrade: bytes | None, expect_continue: bool,
                 content_length: int | None, chunked: bool) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.content_length = content_length
        self.chunked = chunked


class ResponseHeaders(_Event):
    _fields = ("status", "reason", "http_version", "headers", "keep_alive", "content_length",
               "chunked")

    def __init__(self, status: int, reason: bytes, http_version: bytes, headers: HeaderList,
                 keep_alive: bool, content_length: int | None, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked


class Informational(_Event):
    """A 1xx response other than 101 (client side only); the final response follows."""

    _fields = ("status", "headers")

    def __init__(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = headers


class Data(_Event):
    _fields = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class MessageComplete(_Event):
    _fields = ("trailers",)

    def __init__(self, trailers: HeaderList | None = None) -> None:
        self.trailers = trailers


# The end of a message without trailers: one shared instance (events are never mutated).
END_OF_MESSAGE = MessageComplete(None)

Event = RequestHeaders | ResponseHeaders | Informational | Data | MessageComplete
