"""Errors raised by the HTTP/1.1 codecs.

`CodecError` means "the peer sent bytes we will not interpret": the caller answers with
`status` (downstream) or fails the upstream request with it (502), and closes the
connection; nothing already parsed from the bad message is forwarded. `details` is an Envoy
style `%RESPONSE_CODE_DETAILS%` value. `parsed` holds the events a server codec produced from
the same feed before it met the bad bytes: whole pipelined requests before a bad one are
answered first, as Envoy does (it parses one request at a time).

Thread affinity: none. Must not: carry I/O objects or parser state.
"""

from __future__ import annotations

__all__ = ["CodecError"]


class CodecError(Exception):
    __slots__ = ("status", "details", "message", "parsed")

    def __init__(self, status: int, details: str, message: str) -> None:
        super().__init__(f"{status} {details}: {message}")
        self.status = status
        self.details = details
        self.message = message
        self.parsed: list = []

    def __repr__(self) -> str:
        return f"CodecError({self.status}, {self.details!r}, {self.message!r})"
