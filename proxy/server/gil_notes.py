"""What re-enabled the GIL on a free-threaded build (an optional extension's C module, such as
lupa for the Lua filter), for the start-up log and /server_info's `python.gil_reenabled_by`.

Thread affinity: `note` is called at import time on the main thread (config load); readers copy.
"""

from __future__ import annotations

__all__ = ["note", "reasons"]

_REASONS: list[str] = []


def note(reason: str) -> None:
    if reason not in _REASONS:
        _REASONS.append(reason)


def reasons() -> tuple[str, ...]:
    return tuple(_REASONS)
