"""%START_TIME% rendering for access logs: Envoy's default form and its strftime extensions.

Job: `compile_start_time(fmt)` returns a function from an epoch float to the text of
%START_TIME% (no argument: Envoy's 2026-11-25T22:14:26.123Z) or %START_TIME(fmt)% (strftime
plus Envoy's %s, %f, %1f..%9f, %E1S..%E9S, %E1f..%E9f); `format_start_time(t)` is the default
form, uncached. Times are UTC.

Thread affinity: the compiled functions may be shared by all workers; the default one keeps a
per-second memo of immutable tuples, which any interleaving leaves correct. Must not: do I/O
or read clocks (times come from the StreamInfo).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["compile_start_time", "format_start_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _split_time(t: float) -> tuple[datetime, int]:
    """(UTC datetime at whole seconds, microseconds). An epoch float carries ~0.2 us at
    today's magnitude, so we round to microseconds before truncating to the wanted digits
    (1700000000.123 is stored as ...0.12299990654 and must still log ".123")."""
    sec, us = divmod(round(t * 1_000_000), 1_000_000)
    return _EPOCH + timedelta(seconds=sec), us


def _default_start_time() -> Callable[[float], str]:
    """Envoy's default START_TIME: 2026-11-25T22:14:26.123Z.

    Like Envoy's CachedTimeFormatter, the text up to the whole second is memoised: `memo[0]`
    holds an immutable (second, text) tuple. Workers may race to replace it; any reader sees
    either tuple whole and checks its second, so a race only costs a recomputation."""
    memo: list[tuple[int, str]] = [(-1, "")]

    def render(t: float) -> str:
        sec, us = divmod(round(t * 1_000_000), 1_000_000)
        cached_sec, prefix = memo[0]
        if cached_sec != sec:
            prefix = (_EPOCH + timedelta(seconds=sec)).isoformat()[:19]
            memo[0] = (sec, prefix)
        return f"{prefix}.{us // 1000:03d}Z"
    return render


def format_start_time(t: float) -> str:
    """Envoy's default START_TIME: 2026-11-25T22:14:26.123Z (uncached)."""
    dt, us = _split_time(t)
    return f"{dt.isoformat()[:19]}.{us // 1000:03d}Z"


_TIME_TOKEN_RE = re.compile(r"%(%|s|f|[1-9]f|E[1-9]S|E[1-9]f)")


def _compile_time_format(fmt: str) -> Callable[[float], str]:
    """strftime plus Envoy's %s (epoch seconds), %f (= %9f) and %1f..%9f (fraction digits),
    %E1S..%E9S (seconds with a fraction) and %E1f..%E9f."""
    parts: list[Any] = []   # str (strftime text) or (kind, digits)
    pos = 0
    special = False
    for m in _TIME_TOKEN_RE.finditer(fmt):
        tok = m.group(1)
        if tok == "%":
            continue  # strftime handles "%%"
        parts.append(fmt[pos:m.start()])
        if tok == "s":
            parts.append(("s", 0))
        elif tok == "f":
            parts.append(("f", 9))
        elif tok.startswith("E") and tok.endswith("S"):
            parts.append(("S", int(tok[1])))
        elif tok.startswith("E"):
            parts.append(("f", int(tok[1])))
        else:
            parts.append(("f", int(tok[0])))
        pos = m.end()
        special = True
    parts.append(fmt[pos:])
    if not special:
        def plain(t: float) -> str:
            return _split_time(t)[0].strftime(fmt)
        return plain
    steps = tuple(p for p in parts if p != "")

    def render(t: float) -> str:
        dt, us = _split_time(t)
        out = []
        for p in steps:
            if p.__class__ is str:
                out.append(dt.strftime(p))
            else:
                kind, digits = p
                if kind == "s":
                    out.append(str(int((dt - _EPOCH).total_seconds())))
                elif kind == "f":
                    out.append(f"{us * 1000:09d}"[:digits])
                else:
                    out.append(f"{dt.second:02d}.{f'{us * 1000:09d}'[:digits]}")
        return "".join(out)
    return render


def compile_start_time(fmt: str | None) -> Callable[[float], str]:
    """The renderer for %START_TIME% (`fmt` None or empty) or %START_TIME(fmt)%."""
    return _compile_time_format(fmt) if fmt else _default_start_time()
