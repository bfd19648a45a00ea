"""A small stdlib HTTP client for ftproxy's (Envoy-compatible) admin API.

Job: GET one admin path with a timeout and return its body as text or decoded JSON. An admin
that cannot be reached (refused, timed out, reset mid-reply) raises `AdminUnreachable` naming
the address, so commands print one clear line instead of a traceback; an admin that answers
with a non-2xx status raises `AdminError` carrying the status and the admin's message.

Must not: retry, sleep or cache (callers such as `proxyctl top` own their retry policy), or
import the proxy. Thread affinity: an `AdminClient` holds only immutable settings and opens a
new connection per request, so one instance may be used from any thread.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

__all__ = ["AdminClient", "AdminError", "AdminUnreachable", "DEFAULT_ADMIN", "parse_address"]

DEFAULT_ADMIN = "127.0.0.1:9901"
# An admin that has not answered within 2 s is treated as gone: `top` polls every second and
# must not freeze its display behind a hung (e.g. draining) process.
DEFAULT_TIMEOUT_S = 2.0


class AdminUnreachable(Exception):
    """The admin could not be reached or dropped the connection before a full reply."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"admin at {address} unreachable: {reason}")
        self.address = address
        self.reason = reason


class AdminError(Exception):
    """The admin answered with a non-2xx status (e.g. 400 for an invalid filter regex)."""

    def __init__(self, address: str, path: str, status: int, body: str) -> None:
        message = body.strip() or http.client.responses.get(status, "")
        super().__init__(f"admin at {address} answered {status} for {path}: {message}")
        self.status = status
        self.body = body


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT" (also "[::1]:PORT" and bare ":PORT") -> (host, port); ValueError if bad."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


@dataclass(frozen=True, slots=True)
class AdminClient:
    address: str = DEFAULT_ADMIN
    timeout: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parse_address(self.address)  # fail at construction on a malformed --admin value

    def request(self, path: str, params: Mapping[str, str | None] | None = None,
                method: str = "GET") -> tuple[int, str]:
        """One request; returns (status, body text) for any status the admin answers with."""
        host, port = parse_address(self.address)
        target = path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            target += ("&" if "?" in path else "?") + urlencode(query)
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request(method, target, headers={"accept": "*/*"})
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", errors="replace")
            return resp.status, body
        except (OSError, http.client.HTTPException) as e:  # socket.timeout is an OSError
            raise AdminUnreachable(self.address, _reason(e)) from e
        finally:
            conn.close()

    def get_text(self, path: str, params: Mapping[str, str | None] | None = None) -> str:
        status, body = self.request(path, params)
        if not 200 <= status < 300:
            raise AdminError(self.address, path, status, body)
        return body

    def get_json(self, path: str, params: Mapping[str, str | None] | None = None) -> Any:
        body = self.get_text(path, params)
        try:
            return json.loads(body)
        except json.JSONDecodeError as e:
            raise AdminError(self.address, path, 200, f"response is not JSON ({e})") from e


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the proxy running, and is --admin right?)"
    if isinstance(e, http.client.RemoteDisconnected | ConnectionResetError):
        return "connection closed before a reply"
    return str(e) or type(e).__name__
