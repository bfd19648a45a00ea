"""A worker's UDP sessions by downstream peer address, and their idle deadlines.

Job: the bookkeeping of Envoy's udp_proxy sessions without any I/O: one session per
downstream source address (ip, port); each datagram either way `touch`es its session; a
session with no datagram for `idle_timeout` seconds is `expire`d. Sessions are kept in order of
last activity (an OrderedDict moved-to-end on touch), so the idle sweep looks only at the
front and a touch is O(1): no timer per session.

Must not: do I/O or read a clock (times are passed in). Thread affinity: one table belongs to
one worker's listener; no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SessionTable"]

S = TypeVar("S")


class SessionTable(Generic[S]):
    __slots__ = ("idle_timeout", "_entries")

    def __init__(self, idle_timeout: float) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.idle_timeout = idle_timeout
        # peer -> [session, last activity]; least recently active first.
        self._entries: OrderedDict[Hashable, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: Hashable) -> bool:
        return peer in self._entries

    def get(self, peer: Hashable) -> S | None:
        e = self._entries.get(peer)
        return None if e is None else e[0]

    def add(self, peer: Hashable, session: S, now: float) -> None:
        if peer in self._entries:
            raise KeyError(f"a session for {peer!r} exists")
        self._entries[peer] = [session, now]

    def touch(self, peer: Hashable, now: float) -> None:
        """A datagram of `peer`'s session (either way) at `now`: its idle deadline restarts."""
        e = self._entries.get(peer)
        if e is not None:
            e[1] = now
            self._entries.move_to_end(peer)

    def remove(self, peer: Hashable) -> S | None:
        e = self._entries.pop(peer, None)
        return None if e is None else e[0]

    def expire(self, now: float) -> list[S]:
        """Remove and return the sessions idle for idle_timeout or longer at `now`."""
        out = []
        entries, timeout = self._entries, self.idle_timeout
        while entries:
            peer, e = next(iter(entries.items()))
            if e[1] + timeout > now:
                break
            del entries[peer]
            out.append(e[0])
        return out

    def next_deadline(self) -> float | None:
        """When the least recently active session expires (None: no session)."""
        if not self._entries:
            return None
        return next(iter(self._entries.values()))[1] + self.idle_timeout

    def sessions(self) -> list[S]:
        return [e[0] for e in self._entries.values()]
