"""The token bucket pacing a control-plane stream's outgoing discovery requests
(`rate_limit_settings`, Envoy's TokenBucketImpl): `max_tokens` tokens, full at the start,
refilled at `fill_rate` per second; each request takes one.

Pure logic, no I/O; the clock is injected. Thread affinity: the main thread's GrpcMux.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    __slots__ = ("max_tokens", "fill_rate", "tokens", "_last", "_clock")

    def __init__(self, max_tokens: int, fill_rate: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tokens = max_tokens
        self.fill_rate = fill_rate
        self.tokens = float(max_tokens)
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(float(self.max_tokens), self.tokens + (now - self._last) * self.fill_rate)
        self._last = now

    def consume(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def next_token(self) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.fill_rate
