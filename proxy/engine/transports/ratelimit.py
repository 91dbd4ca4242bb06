"""At most N calls per rolling window per connection, shared by every caller; calls wait, never fail."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from proxy.config.settings import RATE_LIMIT_WINDOW_S


class RateLimiter:
    def __init__(
        self,
        per_window: int,
        window_s: float = RATE_LIMIT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        waited = 0.0
        # The lock keeps callers in arrival order, so no one starves behind later arrivals.
        async with self._lock:
            while True:
                now = self._clock()
                while self._sent and now - self._sent[0] >= self.window_s:
                    self._sent.popleft()
                if len(self._sent) < self.per_window:
                    self._sent.append(now)
                    return waited
                delay = self._sent[0] + self.window_s - now
                await self._sleep(delay)
                waited += delay


class RateLimiters:
    """One limiter per connection id, re-made when the connection's limit changes."""

    def __init__(self, window_s: float = RATE_LIMIT_WINDOW_S) -> None:
        self.window_s = window_s
        self._limiters: dict[str, RateLimiter] = {}

    def get(self, connection_id: str, per_window: int | None) -> RateLimiter | None:
        if not per_window:
            return None
        limiter = self._limiters.get(connection_id)
        if limiter is None or limiter.per_window != per_window:
            limiter = self._limiters[connection_id] = RateLimiter(per_window, self.window_s)
        return limiter
