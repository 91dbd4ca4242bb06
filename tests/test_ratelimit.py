from __future__ import annotations

import asyncio
import time

import httpx

from proxy.engine import CallContext, Engine
from proxy.ratelimit import RateLimiter, RateLimiters
from proxy.transports.live import PacedTransport
from tests.test_retry import connection


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_calls_over_the_limit_wait_for_the_rolling_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 60.0, clock=clock, sleep=clock.sleep)
    assert await limiter.acquire() == 0
    clock.now += 10
    assert await limiter.acquire() == 0
    waited = await limiter.acquire()  # third call inside the minute waits until the first leaves the window
    assert waited == 50.0 and clock.sleeps == [50.0]
    assert await limiter.acquire() == 10.0  # the second call's slot frees 10 s later


async def test_limit_is_shared_by_every_caller_of_a_connection() -> None:
    limiters = RateLimiters(window_s=0.3)
    seen = set()
    for _ in range(3):
        limiter = limiters.get("ec_1", 2)
        assert limiter is not None
        seen.add(id(limiter))
    assert len(seen) == 1
    assert limiters.get("ec_1", None) is None


async def test_engine_call_waits_rather_than_fails_when_over_the_limit() -> None:
    answer = httpx.MockTransport(lambda r: httpx.Response(200, json={"reply": "ok"}))
    engine = Engine(PacedTransport(answer, RateLimiters(0.4)))
    conn = connection(rateLimit=2)
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.call(conn, CallContext(input={"m": str(i)})) for i in range(3)))
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    assert elapsed >= 0.35  # the third call waited for the window
    assert max(r.attempts[0].waited_ms for r in results) >= 350
